"""The mosaic stage on object storage: a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from synthetic_predictions import LEGEND, PROVENANCE, ThreeScenes

from pipeline.completion import clear_complete, is_complete, open_mosaic
from pipeline.exports import export_cogs
from pipeline.mosaic import MosaicOptions, build_mosaic, describe_mosaic


def test_mosaic_on_s3_round_trips(s3_bucket: str, tmp_path: Path) -> None:
    scenes = ThreeScenes(tmp_path / "predictions")
    url = f"s3://{s3_bucket}/run/mosaic.zarr"
    assert not is_complete(url)

    build_mosaic(scenes.urls, url, legend=LEGEND, provenance=PROVENANCE, options=MosaicOptions(chunk_px=48, overview_min_px=48))

    assert is_complete(url)
    landcover = open_mosaic(url)["landcover"].values
    clear = ~scenes.cloudy_everywhere
    np.testing.assert_array_equal(landcover[clear], scenes.truth[clear])
    assert open_mosaic(url, level=1)["landcover"].shape == (48, 40)
    assert describe_mosaic(url)["grid"]["shape"] == [96, 80]

    cogs = export_cogs(url, tmp_path / "exports")
    with rasterio.open(cogs["landcover_cog"]) as source:
        assert source.transform == scenes.geobox.affine
        np.testing.assert_array_equal(source.read(1), landcover)

    clear_complete(url)
    assert not is_complete(url)
