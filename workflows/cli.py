"""The ``fleximo`` command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from workflows.jobspec import JobError

logger = logging.getLogger("workflows.cli")


def _configure_logging(verbose: int) -> None:
    import dask
    import distributed  # noqa: F401  (installs its own handlers on import; quieted below)

    if verbose < 0:
        level = logging.WARNING
    elif verbose == 0:
        level = logging.INFO
    else:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Dask's own lifecycle messages are detail for -v; worker processes read
    # the level from dask's config, which they inherit from this process.
    third_party_level = logging.INFO if verbose > 0 else logging.WARNING
    dask.config.set({"logging.distributed": logging.getLevelName(third_party_level).lower()})
    for noisy in ("distributed", "rasterio", "botocore", "urllib3", "fsspec", "s3fs", "asyncio", "numba"):
        logger_ = logging.getLogger(noisy)
        logger_.setLevel(third_party_level)
        for handler in list(logger_.handlers):
            logger_.removeHandler(handler)


class _Bars:
    """tqdm progress bars, one per stage, fed by the workflow's progress callback."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            # The first report starts the bar at its count, so tqdm's rate
            # covers only the steps after it, not a step done in no time.
            unit = "block" if stage.startswith("infer") else "observation"
            bar = self._tqdm(total=total, initial=done, desc=stage, unit=unit, file=sys.stderr, dynamic_ncols=True)
            self._bars[stage] = bar
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More detail in the log (-v: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
@click.version_option(package_name="fleximo-pipeline")
def cli(verbose: int, quiet: bool) -> None:
    """Regional land-cover and cloud mapping with FlexiMo on Dask."""
    _configure_logging(-1 if quiet else verbose)


@cli.command()
@click.argument("job_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the plan (scenes, area, tiles, patch sizes) and stop.")
@click.option("--resume/--no-resume", default=None, help="Skip stages and blocks a previous run finished (default: the job's 'resume').")
@click.option("--cluster", "cluster_profile", default=None, help="Cluster profile name or YAML path; overrides the job's.")
@click.option("--output", default=None, help="Output root (folder or s3:// URL); overrides the job's.")
@click.option("--stop-after", type=click.Choice(["ingest", "infer"]), default=None, help="Stop after this stage.")
def run(job_file: Path, dry_run: bool, resume: bool | None, cluster_profile: str | None, output: str | None, stop_after: str | None) -> None:
    """Run the regional mapping job in JOB_FILE."""
    from workflows.jobspec import load_job
    from workflows.plan import format_plan, make_plan
    from workflows.run import run_job

    from cluster import load_profile

    job = load_job(job_file, resume=resume, cluster=cluster_profile, output=output)
    load_profile(job.cluster)
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="fleximo-dry-run-") as scratch:
            click.echo(format_plan(make_plan(job, catalog_root=Path(scratch))))
        return
    _check_output_root(job.output_root)
    plan = make_plan(job)
    click.echo(format_plan(plan))

    def show_dashboard(client: Any) -> None:
        if "dashboard" in client.scheduler_info().get("services", {}):
            click.echo(f"Dask dashboard: {client.dashboard_link}", err=True)

    summary = run_job(job, plan=plan, stop_after=stop_after, progress=_Bars(), on_cluster=show_dashboard)
    click.echo("")
    click.echo(f"{'stopped after ' + stop_after if stop_after else 'done'}: {summary.job}")
    click.echo(f"  scenes        {summary.scenes} in {summary.observations} observation(s), {summary.area_km2:.1f} km²")
    click.echo(f"  tiles         {summary.tiles} run, {summary.tiles_skipped} skipped (nodata), {summary.tiles_per_second:.2f} tiles/s")
    click.echo("  stage time    " + ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in summary.stage_seconds.items()))
    if summary.skipped_stages:
        click.echo(f"  not run       {', '.join(summary.skipped_stages)} (continue with --resume)")
    if summary.resumed_stages:
        click.echo(f"  already done  {', '.join(summary.resumed_stages)} (from an earlier run)")
    for product in summary.seeded_random_products:
        click.echo(f"  NOTE          {product} used seeded-random weights: structure, not real classes")
    # Paths start in the column of the lines above, or further right for a longer name.
    width = max([13, *(len(name) for name in summary.outputs)])
    for name, path in summary.outputs.items():
        click.echo(f"  {name:<{width}} {path}")


def _check_output_root(output_root: str) -> None:
    """Reject a local output root whose nearest existing folder cannot be written."""
    if "://" in output_root:
        return
    folder = Path(output_root)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        # A plain error, not click's usage error: the root often comes from the job file.
        raise ValueError(
            f"output root {output_root!r} cannot be created: {str(folder)!r} is not a writable folder; "
            "set 'output' in the job file or pass --output with a writable folder or an s3:// URL"
        )


@cli.command()
@click.argument("source")
@click.option("--collection", "collections", multiple=True, help="Collection id; repeat for several.")
@click.option("--bbox", type=float, nargs=4, default=None, help="west south east north, EPSG:4326 degrees.")
@click.option("--datetime", "datetime_range", default=None, help="STAC interval, e.g. 2024-06-01/2024-06-30.")
@click.option("--max-cloud", type=float, default=None, help="Maximum scene cloud cover, percent.")
@click.option("--limit", type=int, default=None, help="Maximum number of scenes.")
@click.option("--sortby", default=None, help="e.g. +properties.eo:cloud_cover or -properties.datetime.")
def search(source: str, collections: tuple[str, ...], bbox: tuple[float, float, float, float] | None, datetime_range: str | None, max_cloud: float | None, limit: int | None, sortby: str | None) -> None:
    """Search SOURCE (STAC API URL, preset name or local catalog folder) and list scenes."""
    from catalog import format_scene_table, search_items

    items = search_items(
        source, collections=list(collections) or None, bbox=bbox, datetime=datetime_range,
        max_cloud_cover=max_cloud, limit=limit, sortby=sortby,
    )
    click.echo(format_scene_table(items))


@cli.group("catalog")
def catalog_group() -> None:
    """Build local STAC catalogs."""


@catalog_group.command("build")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Catalog folder to write.")
@click.option("--sensor", default=None, help="Sensor when it cannot be read from the files, e.g. sentinel-2a.")
@click.option("--collection", default="local", show_default=True, help="Collection id of the items.")
@click.option("--datetime", "acquired", default=None, help="Acquisition time (YYYY-MM-DD or RFC 3339) when the file names lack it.")
@click.option("--offset", type=float, default=None, help="Reflectance offset of the files (Sentinel-2: 0 before baseline 04.00, -0.1 from it).")
@click.option("--scale", type=float, default=None, help="Reflectance scale of the files (stored value x scale + offset), for sensors other than Sentinel-2.")
@click.option("--gaofen", is_flag=True, help="SOURCES are GF-1/GF-2 Level-1A delivery folders.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None, help="Gaofen radiometric calibration coefficients (JSON).")
def catalog_build(sources: tuple[Path, ...], out_dir: Path, sensor: str | None, collection: str, acquired: str | None, offset: float | None, scale: float | None, gaofen: bool, calibration: Path | None) -> None:
    """Turn local rasters (or Gaofen deliveries) into a local STAC catalog."""
    from catalog import build_gaofen_items, build_local_catalog, read_calibration

    if gaofen:
        coefficients = read_calibration(calibration) if calibration else None
        items = build_gaofen_items(list(sources), out_dir, calibration=coefficients)
    else:
        if calibration:
            raise click.UsageError("--calibration applies to Gaofen deliveries; add --gaofen")
        items = build_local_catalog(
            list(sources), out_dir, sensor=sensor, collection=collection, datetime=acquired, offset=offset, scale=scale
        )
    click.echo(f"wrote {len(items)} item(s) to {out_dir}")
    for item in items:
        click.echo(f"  {item.id}")


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect(store: str, as_json: bool) -> None:
    """Show the layers, grid, class shares and provenance of an output STORE."""
    from pipeline.mosaic import describe_mosaic
    from pipeline.stores import MissingGridError

    _require_store(store)
    try:
        info = describe_mosaic(store)
    except MissingGridError:
        raise ValueError(
            f"store {store!r} has no CRS (no 'spatial_ref' coordinate with 'crs_wkt'), so it was not written by "
            "fleximo; inspect reads fleximo's input cubes, prediction stores and mosaics"
        ) from None
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(_format_inspect(store, info))


def _format_inspect(store: str, info: dict[str, Any]) -> str:
    lines = [f"store {store}", f"  complete    {info.get('complete')}"]
    grid = info.get("grid", {})
    resolution = grid.get("resolution_m")
    if isinstance(resolution, (list, tuple)):
        resolution = f"{resolution[0]:g}" if len(set(resolution)) == 1 else " x ".join(f"{value:g}" for value in resolution)
    height, width = grid.get("shape", [None, None])
    lines.append(f"  grid        {grid.get('crs')}, {resolution} m, {width} x {height} px (width x height)")
    lines.append(f"  bounds      {grid.get('bounds')}")
    lines.append(f"  layers      {', '.join(info.get('layers', []))}")
    shares = info.get("class_shares_pct", {})
    if shares:
        lines.append("  land cover class shares:")
        for name, share in shares.items():
            lines.append(f"    {name:<24} {share:6.2f} %")
    provenance = info.get("provenance", {})
    if provenance:
        models = provenance.get("models", {})
        for product, model in models.items():
            lines.append(f"  model       {product}: {model.get('card')} ({model.get('weights')}, {str(model.get('fingerprint'))[:12]})")
        items = provenance.get("input_items", [])
        lines.append(f"  inputs      {len(items)} item(s): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
    precisions = info.get("precisions", {})
    for name, fingerprint in info.get("cards", {}).items():
        ran_in = ", ".join(precisions.get(name, []))
        lines.append(f"  model card  {name} ({str(fingerprint)[:12]}{', ' + ran_in if ran_in else ''})")
    return "\n".join(lines)


@cli.command()
@click.argument("store")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder for the PNGs (default: beside the store).")
def quicklook(store: str, out_dir: Path | None) -> None:
    """Write quicklook PNGs of the land cover (with legend) and cloud probability."""
    from pipeline.exports import write_quicklooks

    _require_store(store)
    out_dir = out_dir or _default_export_dir(store)
    for name, path in write_quicklooks(store, out_dir).items():
        click.echo(f"{name}: {path}")


@cli.command("export-cog")
@click.argument("store")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder for the COGs (default: beside the store).")
def export_cog(store: str, out_dir: Path | None) -> None:
    """Export the land cover and cloud probability as Cloud-Optimized GeoTIFFs."""
    from pipeline.exports import export_cogs

    _require_store(store)
    out_dir = out_dir or _default_export_dir(store)
    for name, path in export_cogs(store, out_dir).items():
        click.echo(f"{name}: {path}")


def _require_store(store: str) -> None:
    """Reject a local path that is no Zarr v3 store of the pipeline, before anything is written."""
    if "://" in store:
        return
    from pipeline.stores import open_v3_group

    fix = "pass the folder of a mosaic, prediction store or input cube, e.g. outputs/<job>/mosaic.zarr"
    try:
        open_v3_group(store, "store", fix)
    except ValueError as error:
        raise click.UsageError(str(error)) from error


def _default_export_dir(store: str) -> Path:
    if "://" in store:
        raise click.UsageError(f"store {store!r} is remote; pass --out with a local folder for the exports")
    return Path(store).resolve().parent / "exports"


@cli.group("cluster")
def cluster_group() -> None:
    """Inspect cluster profiles."""


@cluster_group.command("show")
@click.argument("profile")
def cluster_show(profile: str) -> None:
    """Print what PROFILE would start (SLURM script, Kubernetes spec or local layout)."""
    from cluster import describe_profile, load_profile

    click.echo(describe_profile(load_profile(profile)))


def _register_optional_commands() -> None:
    """Add the training commands, which live in their own modules."""
    try:
        from workflows import finetune
    except ImportError as error:
        logger.debug("finetune commands unavailable: %s", error)
        return
    register = getattr(finetune, "register", None)
    if register is not None:
        register(cli)


def main() -> None:
    """Entry point: run the CLI, turning expected errors into one-line messages and exit code 1."""
    _register_optional_commands()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        command = next((argument for argument in sys.argv[1:] if not argument.startswith("-")), None)
        if command == "run":
            click.echo("aborted; the same command run again resumes from the finished blocks "
                       "(unless the job sets resume: false)", err=True)
        else:
            click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except (JobError, ValueError, FileNotFoundError, KeyError, RuntimeError, OSError) as error:
        logger.debug("failure", exc_info=True)
        message = str(error).strip() or type(error).__name__
        click.echo(f"error: {message}", err=True)
        sys.exit(1)
