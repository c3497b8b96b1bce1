"""The mosaic stage on a real Dask LocalCluster with worker processes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic_predictions import LEGEND, PROVENANCE, ThreeScenes

from pipeline.completion import open_mosaic
from pipeline.mosaic import MosaicOptions, build_mosaic

distributed = pytest.importorskip("distributed")


def test_mosaic_on_local_cluster_matches_local_scheduler(tmp_path: Path) -> None:
    scenes = ThreeScenes(tmp_path / "predictions")
    options = MosaicOptions(chunk_px=32, overview_min_px=16)
    local_url = build_mosaic(scenes.urls, str(tmp_path / "local.zarr"), legend=LEGEND, provenance=PROVENANCE, options=options)

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            with distributed.get_task_stream(client) as stream:
                cluster_url = build_mosaic(scenes.urls, str(tmp_path / "cluster.zarr"), legend=LEGEND,
                                           provenance=PROVENANCE, options=options, client=client)
            worker_addresses = set(client.scheduler_info()["workers"])
    composite_tasks = [task for task in stream.data if "composite_stack" in str(task["key"])]

    # 96 x 80 pixels in 32-px blocks: one composite task per block, run on
    # the worker processes, each holding one block of every observation
    assert len(composite_tasks) == 9
    assert {task["worker"] for task in composite_tasks} <= worker_addresses
    for level in range(4):
        local = open_mosaic(local_url, level=level).load()
        cluster = open_mosaic(cluster_url, level=level).load()
        for name in local.data_vars:
            np.testing.assert_array_equal(cluster[name].values, local[name].values, err_msg=f"{name} level {level}")
