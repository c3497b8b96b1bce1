"""Reading and checking the per-observation prediction stores that a mosaic combines."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr.errors
from odc.geo.geobox import GeoBox

from pipeline import layout
from pipeline.stores import MissingGridError, grid_of, open_dataset

logger = logging.getLogger(__name__)

_REQUIRED_VARS = (
    layout.LANDCOVER_VAR,
    layout.LANDCOVER_CONFIDENCE_VAR,
)


@dataclasses.dataclass(frozen=True)
class PredictionInputs:
    """The prediction stores of one job, opened lazily and in observation order.

    Attributes
    ----------
    geobox
        The job grid shared by every store.
    coords
        ``y``, ``x`` and ``spatial_ref`` coordinates of the job grid, as stored
        in the first prediction store.
    probabilities, landcover, confidence, cloud
        One dask array per observation: ``(C, H, W)`` for probabilities,
        ``(H, W)`` for the others; ``cloud`` is all 255 (unknown) for an
        observation without a cloud layer. ``probabilities`` is empty when
        they were not asked for.
    class_ids
        Class id of each probability plane.
    observations
        Attributes of each prediction store (observation id, datetime, item
        ids, model cards), in observation order.
    """

    geobox: GeoBox
    coords: dict[str, xr.DataArray]
    probabilities: tuple[da.Array, ...]
    landcover: tuple[da.Array, ...]
    confidence: tuple[da.Array, ...]
    cloud: tuple[da.Array, ...]
    class_ids: tuple[int, ...]
    observations: tuple[dict[str, Any], ...]

    @property
    def item_ids(self) -> list[str]:
        """Sorted ids of every input STAC item."""
        ids: set[str] = set()
        for observation in self.observations:
            ids.update(str(item_id) for item_id in observation.get("item_ids", []))
        return sorted(ids)

    @property
    def datetime_range(self) -> tuple[str, str]:
        """First and last acquisition time of the observations, ISO 8601 UTC."""
        times = sorted(observation["datetime"] for observation in self.observations)
        return times[0], times[-1]


def geobox_of(dataset: xr.Dataset, url: str) -> GeoBox:
    """Return the grid of the store at ``url``; raise ``ValueError`` naming the store if it has none."""
    try:
        return grid_of(dataset)
    except MissingGridError as error:
        raise MissingGridError(f"store {url!r}: {error}") from None
    except ValueError as error:
        raise ValueError(f"store {url!r}: {error}") from None


def _parse_datetime(value: Any, url: str) -> str:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"prediction store {url!r} has datetime {value!r}; expected an ISO 8601 UTC time"
        ) from None
    return parsed.isoformat().replace("+00:00", "Z")


def input_cube_url(prediction_url: str) -> str | None:
    """Return the input cube beside ``<root>/predictions/<id>.zarr``, or ``None`` for another layout."""
    parent, _, name = prediction_url.rstrip("/").rpartition("/")
    root, _, folder = parent.rpartition("/")
    if folder != layout.PREDICTIONS_DIR or not root:
        return None
    return f"{root}/{layout.INPUTS_DIR}/{name}"


def _observation_attrs(dataset: xr.Dataset, url: str) -> dict[str, Any]:
    """Collect the observation id, time, item ids and model cards of a prediction store.

    A prediction store that lacks the observation attributes borrows them
    from its input cube (``<root>/inputs/<id>.zarr``), which the ingest
    stage writes with ``observation_id``, ``datetime`` and ``item_ids``.
    """
    attrs = dict(dataset.attrs)
    cube_url = input_cube_url(url)
    if "datetime" not in attrs and cube_url is not None:
        try:
            cube_attrs = open_dataset(cube_url).attrs
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            cube_attrs = {}
        for key in ("observation_id", "datetime", "item_ids", "platform", "instrument"):
            if key in cube_attrs:
                attrs.setdefault(key, cube_attrs[key])
        logger.info("prediction store %s has no observation attributes; read them from %s", url, cube_url)
    if "datetime" not in attrs:
        raise ValueError(
            f"prediction store {url!r} has no datetime attribute, and neither has an input cube at "
            f"{cube_url!r}; rerun the ingest and inference stages to rewrite them"
        )

    cards = {}
    for name, variable in dataset.data_vars.items():
        if "card" in variable.attrs:
            cards[name] = {"card": variable.attrs["card"], "fingerprint": variable.attrs.get("fingerprint")}
    if cards:
        attrs.setdefault("cards", cards)
    return attrs


def _open_one(url: str, probabilities: bool) -> xr.Dataset:
    dataset = open_dataset(url, mask_and_scale=False)
    missing = [name for name in _REQUIRED_VARS if name not in dataset]
    if missing:
        raise ValueError(
            f"prediction store {url!r} lacks {missing}; variables present: {sorted(dataset.data_vars)}"
        )
    if probabilities and layout.LANDCOVER_PROBABILITY_VAR not in dataset:
        raise ValueError(
            f"prediction store {url!r} has no {layout.LANDCOVER_PROBABILITY_VAR!r} (inference ran without class "
            "probabilities); composite it with method 'least-cloudy', or rerun inference with class probabilities"
        )
    for name in (*_REQUIRED_VARS, layout.LANDCOVER_PROBABILITY_VAR, layout.CLOUD_PROBABILITY_VAR):
        if name in dataset and dataset[name].dtype != np.uint8:
            raise ValueError(f"prediction store {url!r}: {name} is {dataset[name].dtype}; expected uint8")
    return dataset


def open_predictions(
    urls: Sequence[str], *, legend_ids: Sequence[int], probabilities: bool = True
) -> PredictionInputs:
    """Open the prediction stores of a job and check that they fit together.

    Parameters
    ----------
    urls
        Prediction store locations, in any order.
    legend_ids
        Class ids of the legend; a store's probability planes, or else the
        classes its land-cover layer names, must match them.
    probabilities
        Whether to open the class probabilities, which every store must then have.

    Raises
    ------
    ValueError
        If ``urls`` is empty, a store lacks a variable or attribute, the stores
        are on different grids, or the class planes do not match the legend.
    """
    if isinstance(urls, str) or len(urls) == 0:
        raise ValueError(f"prediction_urls is {urls!r}; expected a non-empty list of prediction store URLs")

    opened = []
    for url in urls:
        dataset = _open_one(str(url), probabilities)
        attrs = _observation_attrs(dataset, str(url))
        default_id = str(url).rstrip("/").rsplit("/", 1)[-1].removesuffix(".zarr")
        observation_id = str(attrs.get("observation_id", default_id))
        when = _parse_datetime(attrs["datetime"], str(url))
        opened.append((when, observation_id, str(url), dataset, attrs))
    opened.sort(key=lambda entry: (entry[0], entry[1]))

    reference_url = opened[0][2]
    reference = opened[0][3]
    geobox = geobox_of(reference, reference_url)
    class_ids = _class_ids(reference, reference_url, legend_ids, probabilities)

    planes, landcover, confidence, cloud, observations = [], [], [], [], []
    for when, observation_id, url, dataset, attrs in opened:
        other = geobox_of(dataset, url)
        if other != geobox:
            raise ValueError(
                f"prediction store {url!r} is on grid {other!r}, but {reference_url!r} is on {geobox!r}; "
                "every prediction of a job must be on the job grid"
            )
        if _class_ids(dataset, url, legend_ids, probabilities) != class_ids:
            raise ValueError(f"prediction store {url!r} orders its classes differently from {reference_url!r}")

        if probabilities:
            planes.append(dataset[layout.LANDCOVER_PROBABILITY_VAR].transpose(..., "y", "x").data)
        landcover.append(dataset[layout.LANDCOVER_VAR].data)
        confidence.append(dataset[layout.LANDCOVER_CONFIDENCE_VAR].data)
        if layout.CLOUD_PROBABILITY_VAR in dataset:
            cloud.append(dataset[layout.CLOUD_PROBABILITY_VAR].data)
        else:
            logger.info("observation %s has no cloud layer; its valid pixels count as clear", observation_id)
            cloud.append(da.full(landcover[-1].shape, layout.PROBABILITY_FILL, dtype=np.uint8, chunks=landcover[-1].chunks))
        observations.append({**attrs, "observation_id": observation_id, "datetime": when})

    coords = {name: reference.coords[name].variable.to_base_variable() for name in ("y", "x", "spatial_ref")}
    return PredictionInputs(
        geobox=geobox,
        coords={name: xr.DataArray(variable) for name, variable in coords.items()},
        probabilities=tuple(planes),
        landcover=tuple(landcover),
        confidence=tuple(confidence),
        cloud=tuple(cloud),
        class_ids=class_ids,
        observations=tuple(observations),
    )


def _class_ids(dataset: xr.Dataset, url: str, legend_ids: Sequence[int], probabilities: bool) -> tuple[int, ...]:
    if not probabilities:
        names = dataset[layout.LANDCOVER_VAR].attrs.get("classes")
        if names is not None and len(names) != len(legend_ids):
            raise ValueError(
                f"prediction store {url!r} has {len(names)} classes {list(names)}, but the legend has "
                f"{len(legend_ids)}; pass the legend of the model that made the predictions"
            )
        return tuple(int(value) for value in legend_ids)
    probability = dataset[layout.LANDCOVER_PROBABILITY_VAR]
    class_dim = next(dim for dim in probability.dims if dim not in ("y", "x"))
    n_planes = probability.sizes[class_dim]
    if class_dim in dataset.coords and np.issubdtype(dataset[class_dim].dtype, np.integer):
        class_ids = tuple(int(value) for value in dataset[class_dim].values)
    else:
        class_ids = tuple(int(value) for value in legend_ids)
    if len(class_ids) != n_planes or sorted(class_ids) != sorted(int(value) for value in legend_ids):
        raise ValueError(
            f"prediction store {url!r} has {n_planes} class planes with ids {list(class_ids)}, but the "
            f"legend has ids {sorted(legend_ids)}; pass the legend of the model that made the predictions"
        )
    return class_ids
