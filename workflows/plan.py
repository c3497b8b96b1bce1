"""Search and plan stages: find the scenes and decide what the run will do.

The plan is computed before any pixel is read, printed by ``fleximo run
--dry-run``, and recorded in the run manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catalog import build_local_catalog, describe_item, search_items
from catalog.scene import SceneDescription
from pipeline import layout
from pipeline.grid import plan_grid
from pipeline.ingest import group_observations
from pipeline.model import ModelCard, load_card
from pipeline.stores import join_url
from pipeline.inference import InferenceOptions
from pipeline.tiling import choose_patch_size, tile_grid
from workflows.jobspec import CatalogSource, JobError, JobSpec, RasterSource
from workflows.resolve import resolve_card_path, resolve_raster_folder

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ObservationPlan:
    """One observation (scenes of one sensor and day merged) and its per-product tiling."""

    observation_id: str
    scenes: tuple[SceneDescription, ...]
    gsd_m: float
    patch_size: dict[str, int]
    tile_px: dict[str, int]
    tiles: dict[str, int]

    @property
    def cube_name(self) -> str:
        return f"{self.observation_id}.zarr"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything a run will do, decided before it reads a pixel."""

    job: JobSpec
    geobox: Any
    observations: tuple[ObservationPlan, ...]
    cards: dict[str, ModelCard]
    card_paths: dict[str, Path]

    @property
    def area_km2(self) -> float:
        height, width = self.geobox.shape
        resolution = abs(self.geobox.resolution.x)
        return height * width * resolution * resolution / 1e6

    def cube_url(self, observation: ObservationPlan) -> str:
        return join_url(self.job.output_root, layout.INPUTS_DIR, observation.cube_name)

    def prediction_url(self, observation: ObservationPlan) -> str:
        return join_url(self.job.output_root, layout.PREDICTIONS_DIR, observation.cube_name)

    @property
    def mosaic_url(self) -> str:
        return join_url(self.job.output_root, layout.MOSAIC_NAME)

    def summary(self) -> dict[str, Any]:
        """Return the plan as plain JSON-serialisable data."""
        height, width = self.geobox.shape
        return {
            "job": self.job.name,
            "grid": {
                "crs": str(self.geobox.crs),
                "resolution_m": abs(self.geobox.resolution.x),
                "shape": [height, width],
                "transform": list(self.geobox.transform)[:6],
            },
            "area_km2": round(self.area_km2, 3),
            "products": {product: card.name for product, card in self.cards.items()},
            "observations": [
                {
                    "id": obs.observation_id,
                    "items": [scene.item_id for scene in obs.scenes],
                    "sensor": f"{obs.scenes[0].platform}/{obs.scenes[0].instrument}",
                    "gsd_m": obs.gsd_m,
                    "patch_size": obs.patch_size,
                    "tile_px": obs.tile_px,
                    "tiles": obs.tiles,
                }
                for obs in self.observations
            ],
        }


def find_scenes(job: JobSpec, *, catalog_root: Path | None = None) -> list[SceneDescription]:
    """Search every source of the job and describe each item found.

    Local rasters are turned into a catalog under ``catalog_root`` (default:
    ``<output>/catalog``, or a folder in the current directory for remote outputs).

    Raises
    ------
    JobError
        When no scene matches, naming the sources and filters.
    """
    datetime_range = job.time.as_stac_interval() if job.time else None
    bbox = job.area.bbox if job.area else None
    intersects = job.area.geometry(job.base_dir) if job.area and job.area.geojson else None
    scenes: dict[str, SceneDescription] = {}

    for source in job.sources:
        if isinstance(source, RasterSource):
            folder = resolve_raster_folder(source.rasters, job.base_dir)
            if catalog_root is not None:
                catalog_dir = catalog_root / source.collection
            elif "://" in job.output_root:
                catalog_dir = Path(".fleximo-catalogs") / job.name / source.collection
            else:
                catalog_dir = Path(job.output_root) / "catalog" / source.collection
            build_local_catalog(
                [folder], catalog_dir, sensor=source.sensor, collection=source.collection,
                datetime=source.datetime, offset=source.offset, scale=source.scale,
            )
            location = str(catalog_dir)
            collections: Sequence[str] | None = [source.collection]
            max_cloud = None
            limit = None
        else:
            assert isinstance(source, CatalogSource)
            location = source.catalog
            collections = list(source.collections) or None
            max_cloud = source.max_cloud_cover
            limit = source.limit

        items = search_items(
            location,
            collections=collections,
            bbox=bbox,
            intersects=intersects,
            datetime=datetime_range,
            max_cloud_cover=max_cloud,
            limit=limit,
        )
        logger.info("source %s: %d item(s)", location, len(items))
        for item in items:
            scene = describe_item(item, bands=list(source.bands) if source.bands else None)
            scenes.setdefault(scene.item_id, scene)

    if not scenes:
        sources = ", ".join(getattr(s, "catalog", None) or getattr(s, "rasters") for s in job.sources)
        raise JobError(
            f"no scene matches job {job.name!r} (sources: {sources}; time: {datetime_range}; bbox: {bbox}); "
            "widen the time range or area, or raise max_cloud_cover"
        )
    return sorted(scenes.values(), key=lambda scene: (scene.datetime_utc, scene.item_id))


def load_cards(job: JobSpec) -> tuple[dict[str, ModelCard], dict[str, Path]]:
    """Load the model card of every requested product."""
    cards: dict[str, ModelCard] = {}
    paths: dict[str, Path] = {}
    for product in ("landcover", "cloud"):
        spec = getattr(job.products, product)
        if spec is None:
            continue
        path = resolve_card_path(spec.card, job.base_dir)
        card = load_card(path)
        if card.task != product:
            raise JobError(
                f"products.{product}.card {spec.card!r} is a {card.task!r} model; "
                f"give a card whose task is {product!r}"
            )
        cards[product] = card
        paths[product] = path
    return cards, paths


def inference_options(job: JobSpec) -> InferenceOptions:
    """Return the inference stage's options for the job's tiling section and land-cover product."""
    tiling = job.tiling
    return InferenceOptions(
        overlap_px=tiling.overlap_px,
        overlap_fraction=tiling.overlap_fraction,
        block_px=tiling.block_px,
        batch_size=tiling.batch_size,
        precision=tiling.precision,
        patch_size_override=tiling.patch_size,
        class_probabilities=job.products.landcover is None or job.products.landcover.probabilities,
    )


def make_plan(job: JobSpec, *, catalog_root: Path | None = None) -> RunPlan:
    """Search, then decide the grid, observations, patch sizes and tiles.

    ``catalog_root`` is where local rasters are catalogued (see :func:`find_scenes`);
    a dry run passes a temporary folder so that it writes nothing to the output.
    """
    cards, card_paths = load_cards(job)
    scenes = find_scenes(job, catalog_root=catalog_root)
    for scene in scenes:
        if not scene.map_projected:
            logger.info("scene %s is not map-projected: it is placed on the grid through its RPCs", scene.item_id)

    geobox = plan_grid(
        scenes,
        bbox_lonlat=job.area.bbox if job.area else None,
        crs=job.grid.crs,
        resolution_m=job.grid.resolution_m,
    )
    height, width = geobox.shape
    grid_resolution_m = abs(geobox.resolution.x)
    options = inference_options(job)

    observations = []
    for observation_id, members in sorted(group_observations(scenes).items()):
        gsd_m = max(min(scene.finest_gsd_m for scene in members), grid_resolution_m)
        patch_size: dict[str, int] = {}
        tile_px: dict[str, int] = {}
        tiles: dict[str, int] = {}
        for product, card in cards.items():
            patch = choose_patch_size(
                card.reference_gsd_m, card.reference_patch_size, gsd_m, override=job.tiling.patch_size
            )
            patch_size[product] = patch
            tile_px[product] = patch * card.token_grid
            overlap_px = options.overlap_for(tile_px[product])
            tiles[product] = len(tile_grid(height, width, tile_px[product], overlap_px))
            logger.info(
                "observation %s, %s: GSD %.1f m -> patch size %d, tiles of %d px",
                observation_id, product, gsd_m, patch, tile_px[product],
            )
        observations.append(
            ObservationPlan(observation_id, tuple(members), gsd_m, patch_size, tile_px, tiles)
        )
    return RunPlan(job, geobox, tuple(observations), cards, card_paths)


def format_plan(plan: RunPlan) -> str:
    """Render the plan as the readable text ``--dry-run`` prints."""
    summary = plan.summary()
    grid = summary["grid"]
    lines = [
        f"job {summary['job']}",
        f"  grid        {grid['crs']}, {grid['resolution_m']:g} m, {grid['shape'][1]} x {grid['shape'][0]} px, "
        f"{summary['area_km2']:.1f} km²",
        f"  products    " + ", ".join(f"{product}: {name}" for product, name in summary["products"].items()),
        f"  output      {plan.job.output_root}",
        f"  cluster     {plan.job.cluster}",
        f"  tiling      blocks of {plan.job.tiling.block_px} px, batches of {plan.job.tiling.batch_size}, "
        f"precision {plan.job.tiling.precision}",
        f"  observations ({len(summary['observations'])}):",
    ]
    for obs in summary["observations"]:
        per_product = "; ".join(
            f"{product} p={obs['patch_size'][product]} tile={obs['tile_px'][product]} px tiles={obs['tiles'][product]}"
            for product in obs["patch_size"]
        )
        lines.append(f"    {obs['id']}  {obs['sensor']}  GSD {obs['gsd_m']:g} m  {len(obs['items'])} item(s)  {per_product}")
    return "\n".join(lines)
