"""Ingest throughput and peak memory for scenes of growing size.

For each size S (pixels per side on the 10 m grid) the script writes a
synthetic Sentinel-2-like scene as Cloud-Optimized GeoTIFFs (uint16,
DEFLATE, nodata 0): four 10 m bands of S x S, two 20 m bands of S/2 x S/2 and
one 60 m band of S/6 x S/6, in EPSG:32633. Then, in a fresh Python process
per size, it plans the grid, loads the scene with
:func:`pipeline.ingest.load_observation` (1024 px blocks, bilinear) and writes
it with :func:`pipeline.ingest.write_input_cube` to a local Zarr store, on
dask's threaded scheduler with ``--threads`` threads. A thread samples the
process's resident set size (RSS) every 20 ms.

Reported per size: wall seconds, CPU seconds (user + system, all threads),
throughput in MB/s of the written cube (int16 bands x S x S x 2 bytes,
uncompressed) and of the source pixels read (uint16, uncompressed), peak RSS,
and peak RSS above the RSS measured after imports. Peak memory above baseline
should stay flat as S grows, because each task holds one block.

``--compare odc-stac`` runs the same scene through ``odc.stac.load`` (pystac
items with the projection and raster extensions, the same grid, 1024 px
chunks, bilinear, stored values uint16 without scale/offset or merging) and
``to_zarr``, as the reference a user of odc-stac would write.

    .venv/bin/python benchmarks/ingest.py --sizes 1020 2040 4080 --threads 2 --compare odc-stac
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BANDS = (  # name, centre wavelength in µm, GSD in m
    ("B02", 0.49, 10.0),
    ("B03", 0.56, 10.0),
    ("B04", 0.665, 10.0),
    ("B08", 0.842, 10.0),
    ("B11", 1.61, 20.0),
    ("B12", 2.19, 20.0),
    ("B01", 0.443, 60.0),
)
ORIGIN = (500_040.0, 5_300_040.0)  # upper-left corner, EPSG:32633, a multiple of 60 m
EPSG = 32633


def write_scene(folder: Path, size_px: int) -> None:
    """Write the synthetic scene's band COGs into ``folder``."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(size_px)
    for name, _, gsd_m in BANDS:
        side = int(size_px * 10 / gsd_m)
        rows, columns = np.mgrid[0:side, 0:side].astype(np.float32)
        field = 1500 + 800 * np.sin(rows / 37.0) * np.cos(columns / 53.0)
        values = (field + rng.normal(0, 60, (side, side))).clip(1, 10000).astype(np.uint16)
        profile = {
            "driver": "COG",
            "width": side,
            "height": side,
            "count": 1,
            "dtype": "uint16",
            "crs": f"EPSG:{EPSG}",
            "transform": from_origin(*ORIGIN, gsd_m, gsd_m),
            "nodata": 0,
            "compress": "DEFLATE",
            "blocksize": 512,
        }
        with rasterio.open(folder / f"{name}.tif", "w", **profile) as dst:
            dst.write(values, 1)


def scene_description(folder: Path, size_px: int):
    """Describe the synthetic scene as the catalog would."""
    import shapely.geometry
    from odc.geo.geom import box

    from catalog.scene import BandInfo, SceneDescription

    extent = box(ORIGIN[0], ORIGIN[1] - size_px * 10, ORIGIN[0] + size_px * 10, ORIGIN[1], f"EPSG:{EPSG}")
    footprint = extent.to_crs("EPSG:4326")
    bands = tuple(
        BandInfo(
            name=name,
            asset_key=name,
            href=str(folder / f"{name}.tif"),
            wavelength_um=wavelength_um,
            gsd_m=gsd_m,
            scale=1e-4,
            offset=-0.1,
            nodata=0,
        )
        for name, wavelength_um, gsd_m in BANDS
    )
    return SceneDescription(
        item_id=f"synthetic-{size_px}",
        collection="synthetic",
        platform="sentinel-2a",
        instrument="msi",
        datetime_utc=datetime(2024, 6, 1, 10, 30, tzinfo=timezone.utc),
        bbox_lonlat=footprint.boundingbox.bbox,
        geometry_json=json.dumps(shapely.geometry.mapping(footprint.geom)),
        epsg=EPSG,
        bands=bands,
    )


def stac_items(folder: Path, size_px: int) -> list:
    """Return the synthetic scene as a list of one pystac Item with projection and raster metadata per asset."""
    import pystac

    scene = scene_description(folder, size_px)
    item = pystac.Item(
        id=scene.item_id,
        geometry=json.loads(scene.geometry_json),
        bbox=list(scene.bbox_lonlat),
        datetime=scene.datetime_utc,
        properties={"proj:epsg": EPSG},
        stac_extensions=[
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
        ],
    )
    for name, _, gsd_m in BANDS:
        side = int(size_px * 10 / gsd_m)
        transform = [gsd_m, 0.0, ORIGIN[0], 0.0, -gsd_m, ORIGIN[1], 0.0, 0.0, 1.0]
        extra = {
            "proj:epsg": EPSG,
            "proj:shape": [side, side],
            "proj:transform": transform,
            "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 1e-4, "offset": -0.1}],
        }
        item.add_asset(name, pystac.Asset(href=str(folder / f"{name}.tif"), media_type=pystac.MediaType.COG, roles=["data"], extra_fields=extra))
    return [item]


def rss_mib() -> float:
    """Resident set size of this process in MiB, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmRSS not found in /proc/self/status; this script needs Linux")


def ingest_pipeline(folder: Path, size_px: int) -> tuple:
    from pipeline.grid import plan_grid
    from pipeline.ingest import load_observation, write_input_cube

    geobox = plan_grid([scene_description(folder, size_px)])
    ds = load_observation([scene_description(folder, size_px)], geobox, chunk_px=1024)
    write_input_cube(ds, str(folder / "cube.zarr"))
    return geobox.shape.yx


def ingest_odc_stac(folder: Path, size_px: int) -> tuple:
    import odc.stac

    from pipeline.grid import plan_grid

    geobox = plan_grid([scene_description(folder, size_px)])
    ds = odc.stac.load(
        stac_items(folder, size_px),
        bands=[name for name, _, _ in BANDS],
        geobox=geobox,
        chunks={"x": 1024, "y": 1024},
        resampling="bilinear",
    )
    ds.to_zarr(str(folder / "odc.zarr"), mode="w", zarr_format=3, consolidated=False)
    return geobox.shape.yx


def measure(folder: Path, size_px: int, threads: int, tool: str) -> dict:
    """Ingest the scene in ``folder`` in this process with ``tool`` and return the measurements."""
    import resource

    import dask

    import pipeline.ingest  # noqa: F401  (imports before the baseline RSS)

    if tool == "odc-stac":
        import odc.stac  # noqa: F401

    baseline = rss_mib()
    peak = baseline
    sampling = True

    def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_mib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=threads):
        shape = (ingest_odc_stac if tool == "odc-stac" else ingest_pipeline)(folder, size_px)
    seconds = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    sampling = False
    sampler.join()

    if shape != (size_px, size_px):
        raise RuntimeError(f"planned grid {shape} differs from the scene's {size_px} px")
    cpu_seconds = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    cube_mb = len(BANDS) * size_px * size_px * 2 / 1e6
    source_mb = sum((size_px * 10 / gsd_m) ** 2 * 2 for _, _, gsd_m in BANDS) / 1e6
    return {
        "tool": tool,
        "size_px": size_px,
        "bands": len(BANDS),
        "threads": threads,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 2),
        "cube_mb_per_s": round(cube_mb / seconds, 1),
        "source_mb_per_s": round(source_mb / seconds, 1),
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": round(peak, 1),
        "peak_above_baseline_mib": round(peak - baseline, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1020, 2040, 4080], help="scene sides in 10 m pixels (multiples of 6)")
    parser.add_argument("--threads", type=int, default=2, help="dask threads")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size; the fastest is reported")
    parser.add_argument("--compare", choices=["odc-stac"], nargs="*", default=[], help="also run these tools on the same scenes")
    parser.add_argument("--results", type=Path, default=None, help="append JSON lines here")
    parser.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tool", default="fleximo-pipeline", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure is not None:
        print(json.dumps(measure(args.measure, args.sizes[0], args.threads, args.tool)))
        return

    rows = []
    for size_px in args.sizes:
        if size_px % 6:
            parser.error(f"--sizes must be multiples of 6 so the 60 m band tiles the grid, got {size_px}")
        for tool in ["fleximo-pipeline", *args.compare]:
            runs = []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as folder:
                    write_scene(Path(folder), size_px)
                    command = [
                        sys.executable, __file__, "--measure", folder, "--sizes", str(size_px),
                        "--threads", str(args.threads), "--tool", tool,
                    ]
                    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=PROJECT_ROOT).stdout
                    runs.append(json.loads(output.strip().splitlines()[-1]))
            best = min(runs, key=lambda run: run["seconds"])
            best["peak_above_baseline_mib"] = max(run["peak_above_baseline_mib"] for run in runs)
            best["machine"] = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
            rows.append(best)
            if args.results is not None:
                with args.results.open("a") as handle:
                    handle.write(json.dumps(best) + "\n")

    print("| tool | size (px) | bands | seconds | CPU s | cube MB/s | source MB/s | peak RSS (MiB) | above baseline (MiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['tool']} | {row['size_px']} | {row['bands']} | {row['seconds']} | {row['cpu_seconds']} | "
            f"{row['cube_mb_per_s']} | {row['source_mb_per_s']} | {row['peak_rss_mib']} | {row['peak_above_baseline_mib']} |"
        )


if __name__ == "__main__":
    main()
