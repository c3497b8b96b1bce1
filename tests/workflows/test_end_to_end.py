"""The regional mapping job end to end on the real Sentinel-2 crop.

A local cluster profile with two worker processes runs search, plan, ingest,
inference (tiny FlexiMo models) and mosaic on the 1020 x 1020 px crop of
tile 18SVG, then the outputs are checked against the input grid.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
import zarr
from click.testing import CliRunner
from PIL import Image

from catalog import build_local_catalog
from pipeline import layout
from pipeline.completion import clear_complete, is_complete
from pipeline.stores import open_dataset
from workflows.cli import cli
from workflows.jobspec import JobError, JobSpec, load_job
from workflows.plan import make_plan
from workflows.run import run_job

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CROP_DIR = PROJECT_ROOT.parent / "shared" / "data" / "s2" / "T18SVG_20160112_L1C_crop"

pytestmark = pytest.mark.skipif(not CROP_DIR.is_dir(), reason=f"real Sentinel-2 crop not found at {CROP_DIR}")


def write_job(folder: Path, output: Path, **changes) -> Path:
    """Write a job over the real crop with tiny models and a two-worker local cluster."""
    cluster_file = folder / "cluster.yaml"
    cluster_file.write_text(
        yaml.safe_dump({"kind": "local", "n_workers": 2, "threads_per_worker": 1, "memory_limit": "3GB"})
    )
    job = {
        "name": "e2e_crop",
        "time": {"start": "2016-01-01", "end": "2016-01-31"},
        "sources": [
            {
                "kind": "rasters",
                "rasters": str(CROP_DIR),
                "sensor": "sentinel-2a",
                "collection": "sentinel-2-l1c",
                "datetime": "2016-01-12",
                "offset": 0.0,
            }
        ],
        "products": {
            "landcover": {"card": "builtin:tiny_landcover_seeded"},
            "cloud": {"card": "builtin:demo_cloud_tiny_seeded"},
        },
        "grid": {"resolution_m": 10},
        "tiling": {"block_px": 512, "batch_size": 8},
        "output": str(output),
        "cluster": str(cluster_file),
        **changes,
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def store_digest(url: str) -> str:
    """Hash every chunk file and metadata document of a Zarr store, in path order."""
    digest = hashlib.sha256()
    root = Path(url)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def layer_bytes(url: str) -> dict[str, bytes]:
    """Return the decoded bytes of every data variable of a store."""
    dataset = open_dataset(url)
    return {name: np.asarray(dataset[name].values).tobytes() for name in sorted(dataset.data_vars)}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    job = load_job(write_job(folder, folder / "out"))
    summary = run_job(job)
    return job, summary


def test_run_summary(finished_run):
    job, summary = finished_run
    assert summary.scenes == 1
    assert summary.observations == 1
    assert summary.area_km2 == pytest.approx(1020 * 1020 * 100 / 1e6)
    assert summary.tiles > 0
    assert set(summary.stage_seconds) == {"ingest", "infer", "mosaic"}
    assert summary.seeded_random_products == ["landcover", "cloud"]


def test_mosaic_grid_equals_input_grid(finished_run):
    job, summary = finished_run
    mosaic = xr.open_zarr(summary.outputs["mosaic"], decode_coords="all")
    with rasterio.open(CROP_DIR / "B04.tif") as source:
        assert mosaic.rio.crs == source.crs
        assert mosaic.rio.transform() == source.transform
        assert mosaic.rio.shape == source.shape


def test_every_pixel_covered(finished_run):
    job, summary = finished_run
    mosaic = open_dataset(summary.outputs["mosaic"])
    landcover = mosaic[layout.LANDCOVER_VAR].values
    cloud = mosaic[layout.CLOUD_PROBABILITY_VAR].values
    observed = mosaic[layout.CLEAR_OBSERVATIONS_VAR].values
    assert landcover.shape == (1020, 1020)

    # Every pixel with valid input gets a cloud value. The crop's only nodata
    # is a few DN 0 (Sentinel-2's nodata value) in B10, a band neither model
    # card uses, so every pixel is covered.
    cube = open_dataset(str(next((Path(job.output_root) / layout.INPUTS_DIR).glob("*.zarr"))))
    valid = (cube[layout.REFLECTANCE_VAR].values != layout.REFLECTANCE_FILL).all(axis=0)
    assert valid.mean() > 0.99
    assert (cloud != layout.PROBABILITY_FILL).all()
    assert (cloud <= 100).all()
    # Land cover is nodata exactly where no observation was clear.
    assert ((landcover == layout.LANDCOVER_NODATA) == (observed == 0)).all()
    classes = np.unique(landcover[landcover != layout.LANDCOVER_NODATA])
    assert set(classes.tolist()) <= set(range(10))


def test_provenance_attributes(finished_run):
    job, summary = finished_run
    mosaic = xr.open_zarr(summary.outputs["mosaic"])
    provenance = mosaic.attrs["provenance"]
    assert provenance["input_items"] == ["T18SVG_20160112_L1C_crop_20160112"] or len(provenance["input_items"]) == 1
    assert set(provenance["models"]) == {"landcover", "cloud"}
    for model in provenance["models"].values():
        assert model["weights"] == "seeded-random"
        assert len(model["fingerprint"]) >= 16
    assert provenance["software"]["fleximo-pipeline"]
    assert provenance["job"]["name"] == "e2e_crop"


def test_manifest_records_stages(finished_run):
    job, summary = finished_run
    manifest = json.loads((Path(job.output_root) / layout.MANIFEST_NAME).read_text())
    observation = make_plan(job).observations[0].observation_id
    assert observation in manifest["done"]["ingest"]
    assert observation in manifest["done"]["infer"]
    assert "all" in manifest["done"]["mosaic"]
    assert manifest["stages"]["plan"]["provenance"]["models"]["landcover"]["fingerprint"]


def test_exports_and_quicklooks(finished_run):
    job, summary = finished_run
    outputs = {name: Path(path) for name, path in summary.outputs.items()}
    cogs = [path for path in outputs.values() if path.suffix == ".tif"]
    pngs = [path for path in outputs.values() if path.suffix == ".png"]
    assert len(cogs) >= 2
    assert len(pngs) >= 2
    with rasterio.open(CROP_DIR / "B04.tif") as source:
        for path in cogs:
            with rasterio.open(path) as cog:
                assert cog.crs == source.crs
                assert cog.transform == source.transform
    for path in pngs:
        with Image.open(path) as image:
            assert image.width >= 256
            assert image.height >= 256
    item = json.loads(Path(summary.outputs["stac_item"]).read_text())
    assert item["type"] == "Feature"


def test_stop_after_ingest_then_resume(finished_run, tmp_path):
    job_path = write_job(tmp_path, tmp_path / "out")
    first = run_job(load_job(job_path), stop_after="ingest")
    assert first.skipped_stages == ["infer", "mosaic"]
    assert not (tmp_path / "out" / layout.MOSAIC_NAME).exists()

    resumed = run_job(load_job(job_path))
    assert resumed.stage_seconds["infer"] > 0

    reference_job, reference = finished_run
    assert layer_bytes(resumed.outputs["mosaic"]) == layer_bytes(reference.outputs["mosaic"])
    observation = make_plan(load_job(job_path)).observations[0].cube_name
    for stage_dir in (layout.PREDICTIONS_DIR,):
        ours = Path(resumed.outputs["inputs"]).parent / stage_dir / observation
        theirs = Path(reference.outputs["inputs"]).parent / stage_dir / observation
        assert layer_bytes(str(ours)) == layer_bytes(str(theirs))


def test_cli_dry_run_and_inspect(finished_run, tmp_path):
    job_path = write_job(tmp_path, tmp_path / "out")
    fleximo = [sys.executable, "-m", "workflows"]
    dry = subprocess.run([*fleximo, "-q", "run", str(job_path), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "EPSG:32618" in dry.stdout
    assert "104.0 km²" in dry.stdout
    assert "p=16" in dry.stdout
    assert "blocks of 512 px, batches of 8, precision auto" in dry.stdout
    assert not (tmp_path / "out" / layout.INPUTS_DIR).exists()

    job, summary = finished_run
    inspect = subprocess.run([*fleximo, "inspect", summary.outputs["mosaic"]], capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0, inspect.stderr
    assert "EPSG:32618" in inspect.stdout
    assert "complete    True" in inspect.stdout
    assert "10 m, 1020 x 1020 px" in inspect.stdout
    assert "%" in inspect.stdout

    prediction = next(Path(summary.outputs["predictions"]).glob("*.zarr"))
    inspect = subprocess.run([*fleximo, "inspect", str(prediction)], capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0, inspect.stderr
    assert "complete    True" in inspect.stdout
    assert "land cover class shares:" in inspect.stdout
    # The prediction store names the model cards it was predicted with, and the precision they ran in.
    cards = [line for line in inspect.stdout.splitlines() if line.startswith("  model card  ")]
    assert len(cards) == 2
    assert all(re.search(r" \([0-9a-f]{12}, float32\)$", line) for line in cards)


def test_cli_inspect_rejects_non_stores(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.zarr").write_text("not a store")
    zarr.open_group(tmp_path / "v2.zarr", mode="w", zarr_format=2)
    zarr.create_array(tmp_path / "array.zarr", shape=(2,), dtype="uint8")
    cases = {
        "empty": (1, "no store at"),
        "file.zarr": (2, "is a file, not a Zarr store; pass the folder of a mosaic"),
        "v2.zarr": (2, "is a Zarr format 2 store, and the pipeline reads Zarr v3"),
        "array.zarr": (2, "is a Zarr array, not a group; pass the folder of a mosaic"),
    }
    for name, (exit_code, message) in cases.items():
        result = CliRunner().invoke(cli, ["inspect", str(tmp_path / name)])
        assert result.exit_code == exit_code, name
        output = " ".join(result.output.split()) or str(result.exception)
        assert message in output, name


def test_cli_bad_job_exits_nonzero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "sources": [], "products": {}, "output": str(tmp_path / "o")}))
    result = subprocess.run(
        [sys.executable, "-m", "workflows", "run", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "sources" in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.fixture
def broken_catalog(tmp_path) -> tuple[Path, Path]:
    """A local catalog of a copy of the real crop whose B03 file is then cut short,
    as an interrupted download leaves it. Returns the catalog folder and the broken file."""
    folder = tmp_path / "T18SVG_20160112_L1C_crop"
    folder.mkdir()
    for path in CROP_DIR.glob("*.tif"):
        (folder / path.name).write_bytes(path.read_bytes())
    build_local_catalog(
        [folder], tmp_path / "catalog", sensor="sentinel-2a", collection="sentinel-2-l1c", datetime="2016-01-12", offset=0.0
    )
    broken = folder / "B03.tif"
    broken.write_bytes(broken.read_bytes()[:300])
    return tmp_path / "catalog", broken


def catalog_job(tmp_path: Path, catalog_dir: Path, **changes) -> JobSpec:
    source = {"kind": "catalog", "catalog": str(catalog_dir), "collections": ["sentinel-2-l1c"]}
    return load_job(write_job(tmp_path, tmp_path / "out", sources=[source], **changes))


def test_unreadable_asset_fails_naming_it(tmp_path, broken_catalog):
    catalog_dir, broken = broken_catalog
    with pytest.raises(Exception, match=re.escape(str(broken))):
        run_job(catalog_job(tmp_path, catalog_dir))
    assert not (tmp_path / "out" / layout.MOSAIC_NAME).exists()


def test_unreadable_asset_skipped_when_allowed(tmp_path, broken_catalog):
    catalog_dir, broken = broken_catalog
    with pytest.raises(RuntimeError, match=r"no observation of job 'e2e_crop' could be read"):
        run_job(catalog_job(tmp_path, catalog_dir, on_error="skip"))
    manifest = json.loads((tmp_path / "out" / layout.MANIFEST_NAME).read_text())
    skipped = manifest["stages"]["ingest"]["skipped_scenes"]
    assert len(skipped) == 1
    assert skipped[0]["href"].endswith("B03.tif")
    assert not (tmp_path / "out" / layout.MOSAIC_NAME).exists()


def copy_run(finished_run, folder: Path) -> Path:
    """Copy the finished run's output root into ``folder`` and return the copy."""
    job, summary = finished_run
    target = folder / "out"
    shutil.copytree(job.output_root, target)
    return target


def test_resume_skips_finished_run(finished_run, tmp_path):
    output = copy_run(finished_run, tmp_path)
    summary = run_job(load_job(write_job(tmp_path, output)))
    assert summary.tiles == 0
    assert summary.resumed_stages == ["mosaic"]
    assert is_complete(summary.outputs["mosaic"])
    assert Path(summary.outputs["landcover_quicklook"]).is_file()


def test_resume_rewrites_deleted_export(finished_run, tmp_path):
    output = copy_run(finished_run, tmp_path)
    cog = output / "exports" / "landcover.tif"
    cog.unlink()

    summary = run_job(load_job(write_job(tmp_path, output)))

    assert summary.tiles == 0
    assert summary.resumed_stages == ["mosaic"]
    assert cog.is_file()
    assert summary.outputs["landcover_cog"] == str(cog)


def observation_name(output: Path, tmp_path: Path) -> str:
    """Return the store name of the job's only observation, for the run copied to ``output``."""
    return make_plan(load_job(write_job(tmp_path, output))).observations[0].cube_name


def assert_same_predictions(finished_run, output: Path, observation: str) -> None:
    """Check that the predictions in ``output`` have the bytes of the finished run's."""
    reference_job, _ = finished_run
    ours = output / layout.PREDICTIONS_DIR / observation
    theirs = Path(reference_job.output_root) / layout.PREDICTIONS_DIR / observation
    assert layer_bytes(str(ours)) == layer_bytes(str(theirs))


def test_resume_completes_incomplete_prediction_store(finished_run, tmp_path):
    output = copy_run(finished_run, tmp_path)
    observation = observation_name(output, tmp_path)
    predictions = output / layout.PREDICTIONS_DIR / observation
    clear_complete(str(predictions))

    run_job(load_job(write_job(tmp_path, output)))

    assert is_complete(str(predictions))
    assert_same_predictions(finished_run, output, observation)


@pytest.mark.parametrize(
    ("deleted", "rewritten"),
    [(("predictions", "mosaic"), "predictions"), (("cube", "predictions"), "cube")],
    ids=["prediction-store", "input-cube"],
)
def test_resume_rewrites_deleted_store(finished_run, tmp_path, deleted, rewritten):
    output = copy_run(finished_run, tmp_path)
    observation = observation_name(output, tmp_path)
    folders = {
        "cube": output / layout.INPUTS_DIR / observation,
        "predictions": output / layout.PREDICTIONS_DIR / observation,
        "mosaic": output / layout.MOSAIC_NAME,
    }
    for name in deleted:
        shutil.rmtree(folders[name])

    summary = run_job(load_job(write_job(tmp_path, output)))

    assert summary.tiles > 0
    assert is_complete(str(folders[rewritten]))
    assert_same_predictions(finished_run, output, observation)


def test_resume_skips_unneeded_input_cube(finished_run, tmp_path):
    output = copy_run(finished_run, tmp_path)
    cube = output / layout.INPUTS_DIR / observation_name(output, tmp_path)
    shutil.rmtree(cube)

    summary = run_job(load_job(write_job(tmp_path, output)))

    assert summary.tiles == 0
    assert not cube.exists()


def test_resume_with_other_precision_rejected(finished_run, tmp_path):
    output = copy_run(finished_run, tmp_path)
    job = load_job(write_job(tmp_path, output, tiling={"block_px": 512, "batch_size": 8, "precision": "float32"}))

    with pytest.raises(JobError, match="tiling.precision 'auto', but this job sets 'float32'; set tiling.precision: auto"):
        run_job(job)


def test_no_resume_forgets_earlier_run(finished_run, tmp_path):
    output = copy_run(finished_run, tmp_path)
    job_path = write_job(tmp_path, output, grid={"resolution_m": 20}, resume=False)

    run_job(load_job(job_path), stop_after="ingest")
    manifest = json.loads((output / layout.MANIFEST_NAME).read_text())
    assert "infer" not in manifest.get("done", {})
    assert "mosaic" not in manifest.get("done", {})
    assert not is_complete(str(output / layout.MOSAIC_NAME))

    resumed = load_job(job_path).model_copy(update={"resume": True})
    summary = run_job(resumed)
    assert summary.tiles > 0
    mosaic = open_dataset(summary.outputs["mosaic"])
    assert mosaic[layout.LANDCOVER_VAR].shape == (510, 510)
    assert is_complete(summary.outputs["mosaic"])
