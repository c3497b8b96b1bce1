"""Tests of the run manifest: block markers, merging saves, resuming."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor

import pytest

from pipeline.manifest import Manifest


def _mark(url: str, block_id: str) -> None:
    Manifest(url).mark_block_done("infer", "obs-1", block_id, tiles_run=3)


def test_missing_manifest_is_empty(tmp_path):
    manifest = Manifest.load(str(tmp_path / "manifest.json"))
    assert not manifest.is_done("infer", "obs-1", "r0000c0000")
    assert not manifest.is_done("ingest", "obs-1")
    assert manifest.done_blocks("infer", "obs-1") == set()


def test_markers_from_many_processes(tmp_path):
    url = str(tmp_path / "manifest.json")
    block_ids = [f"r{row:04d}c0000" for row in range(24)]
    with ProcessPoolExecutor(max_workers=4) as pool:
        list(pool.map(_mark, [url] * len(block_ids), block_ids))

    manifest = Manifest.load(url)
    assert manifest.done_blocks("infer", "obs-1") == set(block_ids)
    assert not list(tmp_path.rglob("*.partial"))
    marker = json.loads((tmp_path / "manifest.d" / "infer" / "obs-1" / "r0003c0000.json").read_text())
    assert marker == {"tiles_run": 3}


def test_save_gathers_markers_and_keeps_other_records(tmp_path):
    root = str(tmp_path)
    first = Manifest.open(root)
    first.record_plan({"job": "demo"}, {"software": {"torch": "2.13"}})
    first.mark_done("ingest", "obs-1")

    # A second driver object that never saw the first's records saves too.
    second = Manifest.open(root)
    second.mark_block_done("infer", "obs-1", "r0000c0001")
    second.set_stage("infer", status="running")
    second.save()

    content = json.loads((tmp_path / "manifest.json").read_text())
    assert content["done"] == {"ingest": ["obs-1"]}
    assert content["blocks"] == {"infer": {"obs-1": ["r0000c0001"]}}
    assert content["stages"]["plan"]["plan"] == {"job": "demo"}
    assert content["stages"]["infer"] == {"status": "running"}

    reloaded = Manifest.open(root)
    assert reloaded.is_done("ingest", "obs-1")
    assert reloaded.is_done("infer", "obs-1", "r0000c0001")
    assert not reloaded.is_done("infer", "obs-1", "r0000c0002")


def test_invalid_manifest_rejected(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON .*delete it"):
        Manifest.open(str(tmp_path))


@pytest.mark.parametrize(("stage", "observation", "block_id"), [("", "o", "b"), ("infer", "a/b", "b"), ("infer", "o", "..")])
def test_bad_names_rejected(tmp_path, stage, observation, block_id):
    manifest = Manifest.open(str(tmp_path))
    with pytest.raises(ValueError, match="is not a valid manifest name"):
        manifest.mark_block_done(stage, observation, block_id)
