"""Run manifest: which stages ran and which blocks are finished, for resuming a job.

The manifest is one JSON file, ``<root>/manifest.json``. Workers never rewrite
it: a worker that finishes a block writes a small marker file of its own,
``<root>/manifest.d/<stage>/<observation>/<block_id>.json``, right after its
region write, so any number of workers can finish at once without a lock.
The driver gathers the markers into ``manifest.json`` with :meth:`Manifest.save`.
Local paths and fsspec URLs (``s3://...``) both work. A local write goes to
a temporary name first and is then renamed into place. On object stores a
write is a single PUT, which is atomic there.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from typing import Any

import fsspec

from pipeline.layout import MANIFEST_NAME

logger = logging.getLogger(__name__)

MARKERS_DIR = "manifest.d"


def _filesystem(url: str, storage_options: dict[str, Any] | None) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path


def _write_atomic(fs: fsspec.AbstractFileSystem, path: str, text: str) -> None:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols:
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        with fs.open(partial, "w") as handle:
            handle.write(text)
        fs.mv(partial, path)
    else:
        fs.pipe_file(path, text.encode())


def _check_name(kind: str, value: str) -> None:
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{kind} {value!r} is not a valid manifest name; use a non-empty name without '/'")


class Manifest:
    """The run manifest of one output root.

    Parameters
    ----------
    url
        URL or path of ``manifest.json``; markers live beside it.
    storage_options
        fsspec options for object stores (credentials, endpoint).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.storage_options = dict(storage_options or {})
        self._fs, self._path = _filesystem(url, storage_options)
        self._root = posixpath.dirname(self._path)
        self.stages: dict[str, dict[str, Any]] = {}
        self.done: dict[str, set[str]] = {}
        self.blocks: dict[str, dict[str, set[str]]] = {}

    @classmethod
    def open(cls, root: str, storage_options: dict[str, Any] | None = None) -> Manifest:
        """Load the manifest of an output root (``<root>/manifest.json``)."""
        return cls.load(root.rstrip("/") + "/" + MANIFEST_NAME, storage_options)

    @classmethod
    def load(cls, url: str, storage_options: dict[str, Any] | None = None) -> Manifest:
        """Read ``manifest.json`` (if present) and every block marker beside it.

        A missing manifest gives an empty one; a manifest that is not valid
        JSON raises ``ValueError`` naming the file.
        """
        manifest = cls(url, storage_options)
        fs, path = manifest._fs, manifest._path

        if fs.exists(path):
            try:
                content = json.loads(fs.cat_file(path))
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"run manifest {url!r} is not valid JSON ({error}); "
                    "delete it to start the job from scratch"
                ) from error
            manifest.stages = dict(content.get("stages", {}))
            for stage, observations in content.get("done", {}).items():
                manifest.done.setdefault(stage, set()).update(observations)
            for stage, observations in content.get("blocks", {}).items():
                for observation, block_ids in observations.items():
                    manifest.blocks.setdefault(stage, {}).setdefault(observation, set()).update(block_ids)

        markers = posixpath.join(manifest._root, MARKERS_DIR)
        if fs.exists(markers):
            for marker in fs.find(markers):
                if not marker.endswith(".json"):
                    continue
                relative = posixpath.relpath(marker, markers)
                parts = relative.split("/")
                if len(parts) != 3:
                    continue
                stage, observation, name = parts
                manifest.blocks.setdefault(stage, {}).setdefault(observation, set()).add(name[: -len(".json")])
        return manifest

    def _marker_path(self, stage: str, observation: str, block_id: str) -> str:
        return posixpath.join(self._root, MARKERS_DIR, stage, observation, f"{block_id}.json")

    def mark_block_done(self, stage: str, observation: str, block_id: str, **info: Any) -> None:
        """Record that a block is finished by writing its marker file.

        Safe to call from many workers at once; ``info`` (JSON-serialisable)
        is stored in the marker.
        """
        for kind, value in (("stage", stage), ("observation", observation), ("block id", block_id)):
            _check_name(kind, value)
        _write_atomic(self._fs, self._marker_path(stage, observation, block_id), json.dumps(info, sort_keys=True))
        self.blocks.setdefault(stage, {}).setdefault(observation, set()).add(block_id)

    def is_done(self, stage: str, observation: str, block_id: str | None = None) -> bool:
        """Return whether a stage finished an observation, or one block of it when ``block_id`` is given."""
        if block_id is None:
            return observation in self.done.get(stage, set())
        return block_id in self.blocks.get(stage, {}).get(observation, set())

    def mark_done(self, stage: str, observation: str) -> None:
        """Record that a stage finished an observation, and save the manifest (driver only)."""
        _check_name("stage", stage)
        self.done.setdefault(stage, set()).add(observation)
        self.save()

    def record_plan(self, plan: dict[str, Any], provenance: dict[str, Any]) -> None:
        """Store the run plan and provenance (software versions, checkpoints, items), and save."""
        self.stages.setdefault("plan", {}).update({"plan": plan, "provenance": provenance})
        self.save()

    def done_blocks(self, stage: str, observation: str) -> set[str]:
        """Return the ids of the finished blocks of one stage and observation."""
        return set(self.blocks.get(stage, {}).get(observation, set()))

    def set_stage(self, stage: str, **info: Any) -> None:
        """Store JSON-serialisable facts about a stage (status, versions, checkpoints)."""
        _check_name("stage", stage)
        self.stages.setdefault(stage, {}).update(info)

    def save(self) -> None:
        """Write ``manifest.json``: the records of this object merged with those already stored.

        Blocks and finished stages are merged as unions, so two drivers' saves
        do not drop each other's records; stage facts of this object win.
        """
        stored = Manifest.load(self.url, self.storage_options)
        for stage, observations in stored.done.items():
            self.done.setdefault(stage, set()).update(observations)
        for stage, observations in stored.blocks.items():
            for observation, block_ids in observations.items():
                self.blocks.setdefault(stage, {}).setdefault(observation, set()).update(block_ids)
        self.stages = {**stored.stages, **self.stages}
        content = {
            "stages": self.stages,
            "done": {stage: sorted(observations) for stage, observations in sorted(self.done.items())},
            "blocks": {
                stage: {observation: sorted(ids) for observation, ids in sorted(observations.items())}
                for stage, observations in sorted(self.blocks.items())
            },
        }
        _write_atomic(self._fs, self._path, json.dumps(content, indent=1, sort_keys=True))
        logger.debug("wrote run manifest %s", self.url)
