"""Observations: the scenes of one sensor and collection taken in one satellite pass.

Tiles of one pass are merged into one observation on the job grid. Scenes of
different passes, products or sensors stay separate observations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta

from catalog.scene import SceneDescription

# Scenes of one platform and collection closer in time than this belong to one
# pass. Tiles along one orbit are seconds to minutes apart, and the next orbit
# over the same area comes about 100 minutes later (Sentinel-2's orbit period).
SAME_PASS_GAP = timedelta(minutes=30)

_UNSAFE_ID_CHARS = re.compile(r"[^a-z0-9._-]+")


def observation_id_of(scenes: Sequence[SceneDescription]) -> str:
    """Return the observation id of scenes from one pass.

    Format ``<platform>_<YYYYMMDD>_<HHMMSS>_<collection>`` from the earliest
    scene's UTC time, lower-case and safe as a file name and a URL path part.
    """
    first = min(scenes, key=lambda scene: (scene.datetime_utc, scene.item_id))
    stamp = first.datetime_utc.strftime("%Y%m%d_%H%M%S")
    raw = f"{first.platform}_{stamp}_{first.collection}".lower()
    return _UNSAFE_ID_CHARS.sub("-", raw)


def group_observations(scenes: Sequence[SceneDescription]) -> dict[str, list[SceneDescription]]:
    """Group scenes into observations: same platform, instrument, collection and pass.

    Scenes of one group that are less than :data:`SAME_PASS_GAP` apart (chained)
    form one pass. Within an observation, scenes are ordered by time then item
    id, and that order decides which scene wins where tiles overlap.

    Returns
    -------
    dict
        Observation id (see :func:`observation_id_of`) to its scenes, ordered by id.
    """
    by_sensor: dict[tuple[str, str, str], list[SceneDescription]] = {}
    for scene in scenes:
        by_sensor.setdefault((scene.platform, scene.instrument, scene.collection), []).append(scene)

    observations: dict[str, list[SceneDescription]] = {}
    for members in by_sensor.values():
        members.sort(key=lambda scene: (scene.datetime_utc, scene.item_id))
        current = [members[0]]
        for scene in members[1:]:
            if scene.datetime_utc - current[-1].datetime_utc > SAME_PASS_GAP:
                observations[observation_id_of(current)] = current
                current = []
            current.append(scene)
        observations[observation_id_of(current)] = current

    return dict(sorted(observations.items()))
