"""The inference stage between object-store URLs: a real S3-compatible server on 127.0.0.1.

Local stores are read and written chunk by chunk outside zarr; object stores
go through zarr. Both must give the same bytes.
"""

from __future__ import annotations

import fsspec
import numpy as np
import xarray as xr
from inference_support import TinyViTCard, scene_values, write_cube

from pipeline import layout, stores
from pipeline.completion import is_complete
from pipeline.inference import InferenceOptions, run_inference

OPTIONS = InferenceOptions(overlap_px=8, block_px=64, chunk_px=32, batch_size=4)


def _read(url: str) -> dict[str, np.ndarray]:
    store = stores.zarr_store(url, "r", storage_options=stores.storage_options_from_env(url))
    with xr.open_zarr(store, mask_and_scale=False, consolidated=False) as dataset:
        return {name: dataset[name].values for name in dataset.data_vars}


def test_s3_stores_match_local_bytes(cluster_client, s3_bucket, tmp_path):
    values = scene_values(100, 75, seed=5)
    values[:, 70:, :30] = layout.REFLECTANCE_FILL
    local_cube = write_cube(tmp_path / "obs-1.zarr", values, chunk_px=32)
    remote_cube = f"s3://{s3_bucket}/inputs/obs-1.zarr"
    filesystem = fsspec.filesystem("s3", **stores.storage_options_from_env(remote_cube))
    filesystem.put(local_cube + "/", remote_cube.removeprefix("s3://"), recursive=True)

    local_url = str(tmp_path / "predictions" / "obs-1.zarr")
    remote_url = f"s3://{s3_bucket}/predictions/obs-1.zarr"
    local = run_inference(cluster_client, local_cube, local_url, [TinyViTCard()], OPTIONS)
    remote = run_inference(cluster_client, remote_cube, remote_url, [TinyViTCard()], OPTIONS)

    assert remote.blocks_done == local.blocks_done == 4
    assert is_complete(remote_url)
    expected, got = _read(local_url), _read(remote_url)
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name
