"""Job file validation: each bad field gives a clear error and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workflows.jobspec import JobError, JobSpec, load_job, parse_job
from workflows.plan import inference_options

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_JOB = PROJECT_ROOT / "workflows" / "jobs" / "demo_s2_18svg.yaml"


def _valid_job(tmp_path: Path) -> dict:
    return {
        "name": "test_job",
        "area": {"bbox": [-75.8, 37.6, -75.6, 37.8]},
        "time": {"start": "2016-01-01", "end": "2016-01-31"},
        "sources": [{"kind": "catalog", "catalog": str(tmp_path / "catalog"), "max_cloud_cover": 20}],
        "products": {"landcover": {"card": "builtin:demo_landcover_vitb_seeded"}},
        "output": str(tmp_path / "out"),
    }


def test_demo_job_validates():
    job = load_job(DEMO_JOB)
    assert isinstance(job, JobSpec)
    assert job.name == "demo_s2_18svg"
    assert job.sources[0].kind == "rasters"
    assert job.products.landcover is not None
    assert job.cluster == "local"


def test_every_example_job_validates():
    jobs = sorted((PROJECT_ROOT / "workflows" / "jobs").glob("*.yaml"))
    assert jobs, "no example jobs found"
    for path in jobs:
        if path.name.startswith("finetune"):
            continue
        assert load_job(path).name


def test_valid_job_defaults(tmp_path):
    job = parse_job(_valid_job(tmp_path))
    assert job.tiling.block_px == 1024
    assert job.tiling.precision == "auto"
    assert job.mosaic.method == "clear-weighted"
    assert job.resume is True
    assert job.on_error == "fail"


def test_landcover_without_probabilities_with_least_cloudy(tmp_path):
    data = {**_valid_job(tmp_path), "mosaic": {"method": "least-cloudy"}}
    data["products"] = {"landcover": {"card": "builtin:demo_landcover_vitb_seeded", "probabilities": False}}

    job = parse_job(data)

    assert inference_options(job).class_probabilities is False
    assert inference_options(parse_job(_valid_job(tmp_path))).class_probabilities is True


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"area": {"bbox": [500000, 4100000, 510000, 4110000]}}, r"area\.bbox: .*outside EPSG:4326 degrees"),
        ({"area": {"bbox": [-75.6, 37.6, -75.8, 37.8]}}, r"area\.bbox: .*inverted"),
        ({"area": {}}, r"area: give exactly one of 'bbox' or 'geojson'"),
        ({"time": {"start": "2016-02-01", "end": "2016-01-01"}}, r"time: time range ends \(2016-01-01\) before it starts"),
        ({"time": {"start": "yesterday", "end": "2016-01-01"}}, r"time\.start: .*'yesterday'"),
        ({"sources": []}, r"sources: .*at least 1"),
        ({"sources": [{"kind": "ftp", "catalog": "x"}]}, r"sources\.0: .*'ftp'"),
        ({"sources": [{"kind": "catalog", "catalog": "x", "max_cloud_cover": 150}]}, r"max_cloud_cover: .*less than or equal to 100"),
        ({"products": {}}, r"products: no product requested"),
        ({"tiling": {"block_px": 10}}, r"tiling\.block_px: .*greater than or equal to 64"),
        ({"tiling": {"precision": "float16"}}, r"tiling\.precision: .*'float16'"),
        ({"tiling": {"overlap": 32}}, r"tiling\.overlap: unknown field"),
        ({"mosaic": {"method": "median"}}, r"mosaic\.method: .*'median'"),
        ({"name": "my job!"}, r"name: .*pattern"),
        ({"on_error": "ignore"}, r"on_error: .*'ignore'"),
        (
            {"products": {"landcover": {"card": "builtin:demo_landcover_vitb_seeded", "probabilities": False}}},
            r"products\.landcover\.probabilities is false, but mosaic\.method 'clear-weighted'.*'least-cloudy'",
        ),
    ],
)
def test_bad_field_is_named(tmp_path, change, match):
    data = {**_valid_job(tmp_path), **change}
    with pytest.raises(JobError, match=match):
        parse_job(data)
    assert not (tmp_path / "out").exists()


def test_missing_field_is_named(tmp_path):
    data = _valid_job(tmp_path)
    del data["output"]
    with pytest.raises(JobError, match=r"output: required field is missing"):
        parse_job(data)


def test_missing_job_file(tmp_path):
    with pytest.raises(JobError, match=r"job file .*nope\.yaml.* not found"):
        load_job(tmp_path / "nope.yaml")


def test_job_file_not_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(JobError, match=r"is not valid YAML"):
        load_job(path)


def test_job_file_not_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(JobError, match=r"expected a YAML mapping"):
        load_job(path)


def test_overrides_replace_fields(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_valid_job(tmp_path)))
    job = load_job(path, cluster="address.yaml", resume=False, output=None)
    assert job.cluster == "address.yaml"
    assert job.resume is False
    assert job.output == str(tmp_path / "out")


def test_relative_output_is_taken_from_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = parse_job({**_valid_job(tmp_path), "output": "outputs/run1"}, base_dir=Path("/elsewhere"))
    assert job.output_root == str(tmp_path / "outputs" / "run1")


def test_geojson_area(tmp_path):
    geojson = tmp_path / "aoi.geojson"
    ring = [[-75.8, 37.6], [-75.6, 37.6], [-75.6, 37.8], [-75.8, 37.6]]
    geojson.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
        f'"geometry": {{"type": "Polygon", "coordinates": [{ring}]}}}}]}}'
    )
    job = parse_job({**_valid_job(tmp_path), "area": {"geojson": "aoi.geojson"}}, base_dir=tmp_path)
    geometry = job.area.geometry(job.base_dir)
    assert geometry["type"] == "Polygon"
    assert geometry["coordinates"][0][0] == [-75.8, 37.6]
