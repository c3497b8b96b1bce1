"""The fleximo command: catalog build, search, cluster show, errors and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CROP_DIR = PROJECT_ROOT.parent / "shared" / "data" / "s2" / "T18SVG_20160112_L1C_crop"
needs_crop = pytest.mark.skipif(not CROP_DIR.is_dir(), reason=f"real Sentinel-2 crop not found at {CROP_DIR}")


def fleximo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workflows", *args], capture_output=True, text=True, timeout=timeout, cwd=PROJECT_ROOT
    )


def test_help_lists_commands():
    result = fleximo("--help")
    assert result.returncode == 0, result.stderr
    for command in ("run", "search", "catalog", "inspect", "quicklook", "export-cog", "cluster"):
        assert command in result.stdout


@needs_crop
def test_catalog_build_then_search(tmp_path):
    built = fleximo(
        "catalog", "build", str(CROP_DIR), "--out", str(tmp_path / "cat"),
        "--sensor", "sentinel-2a", "--collection", "sentinel-2-l1c",
    )
    # L1C files do not carry their processing baseline: the builder requires the offset.
    assert built.returncode == 1
    assert "radiometric offset" in built.stderr
    assert "--offset 0 " in built.stderr
    assert "Traceback" not in built.stderr

    built = fleximo(
        "catalog", "build", str(CROP_DIR), "--out", str(tmp_path / "cat"),
        "--sensor", "sentinel-2a", "--collection", "sentinel-2-l1c", "--datetime", "2016-01-12", "--offset", "0",
    )
    assert built.returncode == 0, built.stderr
    assert "wrote 1 item(s)" in built.stdout

    found = fleximo("search", str(tmp_path / "cat"), "--datetime", "2016-01-01/2016-01-31")
    assert found.returncode == 0, found.stderr
    assert "2016-01-12" in found.stdout
    assert "sentinel-2a" in found.stdout.lower()

    empty = fleximo("search", str(tmp_path / "cat"), "--datetime", "2020-01-01/2020-01-31")
    assert empty.returncode == 0, empty.stderr
    assert "2016-01-12" not in empty.stdout


def test_cluster_show_local():
    result = fleximo("cluster", "show", "local")
    assert result.returncode == 0, result.stderr
    assert "worker" in result.stdout.lower()


def test_cluster_show_slurm_script():
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (the slurm extra) is not installed")
    result = fleximo("cluster", "show", "slurm-gpu")
    assert result.returncode == 0, result.stderr
    assert "#SBATCH" in result.stdout
    assert "GPU" in result.stdout


def test_unknown_cluster_profile_is_clear():
    result = fleximo("cluster", "show", "no-such-profile")
    assert result.returncode == 1
    assert "no-such-profile" in result.stderr


def test_missing_job_file_is_one_line(tmp_path):
    result = fleximo("run", str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: job file")
    assert "Traceback" not in result.stderr


def test_inspect_missing_store(tmp_path):
    result = fleximo("inspect", str(tmp_path / "nothing.zarr"))
    assert result.returncode == 1
    assert "nothing.zarr" in result.stderr
    assert "Traceback" not in result.stderr


def test_inspect_store_without_crs(tmp_path):
    import numpy as np
    import xarray as xr

    store = tmp_path / "plain.zarr"
    values = np.zeros((4, 5), "uint8")
    xr.Dataset({"a": (("y", "x"), values)}, coords={"y": np.arange(4.0), "x": np.arange(5.0)}).to_zarr(
        store, zarr_format=3, consolidated=False
    )

    result = fleximo("inspect", str(store))

    assert result.returncode == 1
    assert f"error: store '{store}' has no CRS" in result.stderr
    assert "inspect reads fleximo's input cubes, prediction stores and mosaics" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_root_that_is_a_file_rejected(tmp_path):
    plain_file = tmp_path / "plain_file"
    plain_file.write_text("not a folder")
    job = PROJECT_ROOT / "workflows" / "jobs" / "demo_s2_18svg.yaml"

    result = fleximo("run", str(job), "--output", str(plain_file / "out"))

    assert result.returncode == 1
    assert f"error: output root '{plain_file / 'out'}' cannot be created: '{plain_file}' is not a writable folder" in result.stderr
    assert plain_file.read_text() == "not a folder"


def test_quicklook_missing_store_writes_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "workflows", "quicklook", "nothing.zarr"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "no store at 'nothing.zarr'" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["fleximo", "-v", "run", "job.yaml"], "aborted; the same command run again resumes from the finished blocks"),
        (["fleximo", "inspect", "store.zarr"], "aborted\n"),
    ],
)
def test_interrupt_exits_130_with_resume_hint(monkeypatch, capsys, argv, expected):
    import click

    from workflows import cli

    def interrupted(**_):
        raise click.exceptions.Abort()

    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(cli.cli, "main", interrupted)

    with pytest.raises(SystemExit) as exit_info:
        cli.main()

    assert exit_info.value.code == 130
    assert capsys.readouterr().err.startswith(expected)
