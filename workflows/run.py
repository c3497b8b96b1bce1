"""The regional mapping workflow: search, plan, ingest, infer, mosaic.

Each stage is a Dask workload on the job's cluster and records itself in the
run manifest, so ``fleximo run JOB --resume`` continues a stopped job and a
finished stage is not run twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import distributed
import fsspec

from cluster import load_profile, start_cluster
from pipeline import layout
from pipeline.exports import export_cogs, write_quicklooks
from pipeline.inference import run_inference
from pipeline.ingest import load_observation, write_input_cube
from pipeline.reading import check_scenes
from pipeline.completion import is_complete
from pipeline.manifest import MARKERS_DIR, Manifest
from pipeline.mosaic import MosaicOptions, build_mosaic
from pipeline.stac_output import write_output_item
from pipeline.stores import is_remote, join_url, storage_options_from_env
from workflows.jobspec import JobError, JobSpec
from workflows.plan import ObservationPlan, RunPlan, inference_options, make_plan

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
"""Callback ``(stage, done, total)`` that the CLI turns into progress bars."""

STAGES = ("ingest", "infer", "mosaic")


@dataclasses.dataclass
class RunSummary:
    """Summary of a finished run, for the closing message and for tests."""

    job: str
    scenes: int
    observations: int
    area_km2: float
    tiles: int
    tiles_skipped: int
    stage_seconds: dict[str, float]
    outputs: dict[str, str]
    seeded_random_products: list[str]
    skipped_stages: list[str]
    """Stages not run because the run stopped early (``stop_after``)."""
    resumed_stages: list[str] = dataclasses.field(default_factory=list)
    """Stages found complete from an earlier run and not run again."""

    @property
    def tiles_per_second(self) -> float:
        seconds = self.stage_seconds.get("infer", 0.0)
        return self.tiles / seconds if seconds > 0 else 0.0


def provenance(plan: RunPlan) -> dict[str, Any]:
    """Return the provenance attributes recorded in the output store."""
    return {
        "software": {
            "fleximo-pipeline": version("fleximo-pipeline"),
            "torch": version("torch"),
            "dask": version("dask"),
            "xarray": version("xarray"),
            "zarr": version("zarr"),
            "python": platform.python_version(),
        },
        "models": {
            product: {
                "card": card.name,
                "fingerprint": card.fingerprint(),
                "weights": str(card.weights),
                "card_path": str(plan.card_paths[product]),
            }
            for product, card in plan.cards.items()
        },
        "input_items": sorted(scene.item_id for obs in plan.observations for scene in obs.scenes),
        "job": json.loads(plan.job.model_dump_json()),
    }


def seeded_random_products(plan: RunPlan) -> list[str]:
    """Return the products whose model has seeded-random weights, not trained ones."""
    return [product for product, card in plan.cards.items() if str(card.weights) == "seeded-random"]


def _forget_previous_run(output_root: str) -> None:
    """Remove what an earlier run left in the output root, before a run that does not resume.

    Only the names this pipeline writes are removed (manifest, block markers,
    input cubes, predictions, mosaic, exports, STAC Item), so nothing of the
    earlier run can pass for a result of this one.
    """
    fs, root = fsspec.core.url_to_fs(output_root, **storage_options_from_env(output_root))
    names = (
        layout.MANIFEST_NAME, MARKERS_DIR, layout.INPUTS_DIR, layout.PREDICTIONS_DIR,
        layout.MOSAIC_NAME, "exports", "mosaic.stac.json",
    )
    for name in names:
        path = f"{root.rstrip('/')}/{name}"
        if fs.exists(path):
            logger.info("no resume: removing %s of the earlier run", path)
            fs.rm(path, recursive=True)


def _check_resumable(manifest: Manifest, plan: RunPlan) -> None:
    """Reject resuming into an output root that contains a run with another plan."""
    recorded = manifest.stages.get("plan", {})
    if not plan.job.resume or "plan" not in recorded:
        return
    previous = recorded["plan"]
    current = json.loads(json.dumps(plan.summary()))
    previous_models = recorded.get("provenance", {}).get("models", {})
    current_models = provenance(plan)["models"]
    same_models = {p: m.get("fingerprint") for p, m in previous_models.items()} == {
        p: m["fingerprint"] for p, m in current_models.items()
    }
    if previous.get("grid") != current["grid"] or previous.get("observations") != current["observations"] or not same_models:
        raise JobError(
            f"output {plan.job.output_root!r} contains a run with a different plan (grid, scenes, tiling or "
            "models changed); choose another output, or rerun with --no-resume to overwrite it"
        )
    # The precision changes the predictions, but not the plan. A manifest
    # without it counts as float32, the default before "auto".
    tiling = recorded.get("provenance", {}).get("job", {}).get("tiling", {})
    written_in = tiling.get("precision", "float32")
    if written_in != plan.job.tiling.precision:
        raise JobError(
            f"output {plan.job.output_root!r} contains a run with tiling.precision {written_in!r}, but this job sets "
            f"{plan.job.tiling.precision!r}; set tiling.precision: {written_in} to resume it, choose another output, "
            "or rerun with --no-resume to overwrite it"
        )


def _cube_usable(plan: RunPlan, manifest: Manifest, observation: ObservationPlan) -> bool:
    """Return whether an ingested observation needs no new input cube: its cube is complete, or no stage reads it."""
    if is_complete(plan.cube_url(observation)):
        return True
    if manifest.is_done("infer", observation.observation_id) and is_complete(plan.prediction_url(observation)):
        # Its predictions are complete, so the deleted cube is not needed.
        return True
    logger.info("ingest: %s is in the manifest, but its input cube %s is missing or incomplete; writing it again",
                observation.observation_id, plan.cube_url(observation))
    return False


def _ingest(
    plan: RunPlan, client: distributed.Client, manifest: Manifest, progress: Progress | None
) -> tuple[list[ObservationPlan], list[ObservationPlan]]:
    """Write the input cube of every observation.

    Returns the observations that have a cube, and those of them whose cube
    this run wrote (the others were done by an earlier run).

    With ``on_error: skip`` a scene whose assets cannot be read is left out and
    recorded in the manifest; an observation left with no scene is dropped.
    """
    on_error = "skip" if plan.job.on_error == "skip" else "raise"
    ingested: list[ObservationPlan] = []
    written: list[ObservationPlan] = []
    skipped_records: list[dict[str, str]] = []
    total = len(plan.observations)

    for index, observation in enumerate(plan.observations):
        if plan.job.resume and manifest.is_done("ingest", observation.observation_id) and _cube_usable(
            plan, manifest, observation
        ):
            logger.info("ingest: %s already done, skipped", observation.observation_id)
            ingested.append(observation)
        else:
            kept, skipped = check_scenes(observation.scenes, on_error=on_error)
            for record in skipped:
                logger.warning("ingest: scene %s skipped: %s (%s)", record.item_id, record.reason, record.href)
                skipped_records.append(record.to_dict())
            if kept:
                observation = dataclasses.replace(observation, scenes=tuple(kept))
                dataset = load_observation(observation.scenes, plan.geobox, chunk_px=plan.job.tiling.block_px)
                write_input_cube(dataset, plan.cube_url(observation), client=client)
                manifest.mark_done("ingest", observation.observation_id)
                ingested.append(observation)
                written.append(observation)
            else:
                logger.warning("ingest: observation %s dropped: none of its scenes could be read", observation.observation_id)
        if progress:
            progress("ingest", index + 1, total)

    if skipped_records:
        manifest.set_stage("ingest", skipped_scenes=skipped_records)
        manifest.save()
    if not ingested:
        raise RuntimeError(
            f"no observation of job {plan.job.name!r} could be read; the run manifest lists the skipped scenes"
        )
    return ingested, written


def _infer(
    plan: RunPlan,
    observations: list[ObservationPlan],
    client: distributed.Client,
    manifest: Manifest,
    progress: Progress | None,
) -> tuple[int, int]:
    options = inference_options(plan.job)
    tiles_run = tiles_skipped = 0
    for observation in observations:
        prediction_url = plan.prediction_url(observation)
        if plan.job.resume and manifest.is_done("infer", observation.observation_id):
            if is_complete(prediction_url):
                logger.info("infer: %s already done, skipped", observation.observation_id)
                continue
            # NOTE: blocks that the manifest lists as done are still skipped
            # where the store has their variables, so chunks deleted by hand
            # are not rewritten. A run with --no-resume rewrites them.
            logger.info("infer: %s is in the manifest, but its prediction store %s is not complete; resuming",
                        observation.observation_id, prediction_url)

        def report(done: int, total: int, _obs: str = observation.observation_id) -> None:
            if progress:
                progress(f"infer {_obs}", done, total)

        result = run_inference(
            client,
            plan.cube_url(observation),
            prediction_url,
            [plan.card_paths[product] for product in plan.cards],
            options,
            manifest_url=plan.job.output_root if plan.job.resume else None,
            progress=report,
        )
        tiles_run += result.tiles_run
        tiles_skipped += result.tiles_skipped
        manifest.mark_done("infer", observation.observation_id)
    return tiles_run, tiles_skipped


def _existing_outputs(plan: RunPlan) -> dict[str, str]:
    """Return the output paths a finished earlier run left, for the summary."""
    outputs = {"mosaic": plan.mosaic_url}
    if "://" not in plan.job.output_root:
        root = Path(plan.job.output_root)
        if (root / "mosaic.stac.json").is_file():
            outputs["stac_item"] = str(root / "mosaic.stac.json")
        for path in sorted((root / "exports").glob("*")):
            outputs[path.stem + ("_cog" if path.suffix == ".tif" else "")] = str(path)
    return outputs


def _mosaic(plan: RunPlan, observations: list[ObservationPlan], client: distributed.Client) -> dict[str, str]:
    job = plan.job
    legend = plan.cards["landcover"].classes if "landcover" in plan.cards else []
    options = MosaicOptions(method=job.mosaic.method, cloud_threshold_pct=job.mosaic.cloud_threshold_pct)
    build_mosaic(
        [plan.prediction_url(observation) for observation in observations],
        plan.mosaic_url,
        legend=legend,
        provenance=provenance(plan),
        options=options,
        client=client,
    )
    outputs = {"mosaic": plan.mosaic_url}
    outputs.update(_exports(plan, observations))
    return outputs


def _missing_exports(plan: RunPlan) -> list[str]:
    """Return what the job exports next to a finished mosaic but the output folder lacks.

    The STAC Item lists the exports of the run that wrote it, so a file
    deleted since then, or an export kind the job now requests, shows here.
    """
    job = plan.job
    if is_remote(job.output_root):
        return []
    root = Path(job.output_root)
    item_path = root / "mosaic.stac.json"
    if not item_path.is_file():
        return [str(item_path)]
    try:
        assets = json.loads(item_path.read_text())["assets"]
    except (ValueError, KeyError, TypeError):
        return [str(item_path)]
    hrefs = [str(asset.get("href", "")) for asset in assets.values() if isinstance(asset, dict)]
    missing = [href for href in hrefs if "://" not in href and not (root / href).exists()]
    if job.mosaic.export_cog and not any(href.endswith(".tif") for href in hrefs):
        missing.append("COG exports")
    if job.mosaic.quicklook and not any(href.endswith(".png") for href in hrefs):
        missing.append("quicklooks")
    return missing


def _exports(plan: RunPlan, observations: list[ObservationPlan]) -> dict[str, str]:
    """Write the COG and quicklook exports of the mosaic and its STAC Item, and return their paths."""
    job = plan.job
    outputs: dict[str, str] = {}
    exports: dict[str, Path] = {}
    if "://" in job.output_root:
        logger.warning("COG and quicklook exports are written locally only; skipped for %s", job.output_root)
    else:
        export_dir = Path(job.output_root) / "exports"
        if job.mosaic.export_cog:
            exports.update(export_cogs(plan.mosaic_url, export_dir))
        if job.mosaic.quicklook:
            exports.update(write_quicklooks(plan.mosaic_url, export_dir))
        item_path = Path(job.output_root) / "mosaic.stac.json"
        input_items = [scene.item_id for obs in observations for scene in obs.scenes]
        write_output_item(plan.mosaic_url, item_path, input_items=input_items, exports=exports)
        outputs["stac_item"] = str(item_path)
    outputs.update({name: str(path) for name, path in exports.items()})
    return outputs


def run_job(
    job: JobSpec,
    *,
    plan: RunPlan | None = None,
    stop_after: str | None = None,
    client: distributed.Client | None = None,
    progress: Progress | None = None,
    on_cluster: Callable[[distributed.Client], None] | None = None,
) -> RunSummary:
    """Run a job from search to mosaic and return its summary.

    Parameters
    ----------
    job
        The validated job.
    plan
        A plan made earlier with :func:`workflows.plan.make_plan`; made here when ``None``.
    stop_after
        Stop after this stage (``"ingest"``, ``"infer"``), leaving a resumable run.
    client
        An existing Dask client; by default the job's cluster profile is started
        and closed again at the end.
    progress
        Callback ``(stage, done, total)``.
    on_cluster
        Called with the client once the cluster is up (the CLI prints the dashboard address).
    """
    if stop_after is not None and stop_after not in STAGES:
        raise ValueError(f"stop_after={stop_after!r} is not a stage; expected one of {', '.join(STAGES)}")
    plan = plan or make_plan(job)
    if client is None:
        with start_cluster(load_profile(job.cluster)) as own_client:
            return run_job(job, plan=plan, stop_after=stop_after, client=own_client, progress=progress, on_cluster=on_cluster)
    if on_cluster:
        on_cluster(client)

    if not job.resume:
        _forget_previous_run(job.output_root)
    manifest = Manifest.open(job.output_root)
    _check_resumable(manifest, plan)
    manifest.record_plan(plan.summary(), provenance(plan))
    for product in seeded_random_products(plan):
        logger.warning(
            "product %s uses seeded-random weights (card %s): the map shows the pipeline working, "
            "not real classes; pass a trained checkpoint's card for a real map",
            product, plan.cards[product].name,
        )

    seconds: dict[str, float] = {}
    skipped: list[str] = []
    stopped: list[str] = []
    tiles = tiles_skipped = 0
    outputs: dict[str, str] = {"inputs": join_url(job.output_root, layout.INPUTS_DIR)}

    start = time.perf_counter()
    observations, written = _ingest(plan, client, manifest, progress)
    seconds["ingest"] = time.perf_counter() - start

    if stop_after != "ingest":
        start = time.perf_counter()
        tiles, tiles_skipped = _infer(plan, observations, client, manifest, progress)
        seconds["infer"] = time.perf_counter() - start
        outputs["predictions"] = join_url(job.output_root, layout.PREDICTIONS_DIR)

    if stop_after is None:
        start = time.perf_counter()
        nothing_new = tiles == 0 and not written
        if job.resume and nothing_new and manifest.is_done("mosaic", "all") and is_complete(plan.mosaic_url):
            logger.info("mosaic: %s already complete, skipped", plan.mosaic_url)
            skipped.append("mosaic")
            missing = _missing_exports(plan)
            if missing:
                logger.info("exports: %s missing, so the exports are written again", ", ".join(missing))
                _exports(plan, observations)
            outputs.update(_existing_outputs(plan))
        else:
            outputs.update(_mosaic(plan, observations, client))
            manifest.mark_done("mosaic", "all")
        seconds["mosaic"] = time.perf_counter() - start
    else:
        stopped = [stage for stage in STAGES if STAGES.index(stage) > STAGES.index(stop_after)]

    return RunSummary(
        job=job.name,
        scenes=sum(len(obs.scenes) for obs in observations),
        observations=len(observations),
        area_km2=plan.area_km2,
        tiles=tiles,
        tiles_skipped=tiles_skipped,
        stage_seconds=seconds,
        outputs=outputs,
        seeded_random_products=seeded_random_products(plan),
        skipped_stages=stopped,
        resumed_stages=skipped,
    )
