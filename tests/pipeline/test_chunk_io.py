"""Direct whole-chunk reads and writes of local Zarr v3 arrays, checked against zarr itself."""

import os

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, TransposeCodec, ZstdCodec

from pipeline import stores
from pipeline.chunk_io import chunk_access

COMPRESSORS = {
    "blosc bitshuffle": stores.stage_compressors(),
    "blosc noshuffle": (BloscCodec(cname="lz4", shuffle="noshuffle"),),
    "zstd": (ZstdCodec(level=1),),
    "none": None,
}


def _array(tmp_path, compressors, shape=(3, 50, 70), chunks=(3, 16, 16), dtype="int16", fill_value=-7):
    return zarr.create_array(tmp_path / "a.zarr", shape=shape, chunks=chunks, dtype=dtype,
                             compressors=compressors, fill_value=fill_value)


@pytest.mark.parametrize("codec", sorted(COMPRESSORS))
def test_reads_chunks_that_zarr_wrote(tmp_path, codec):
    array = _array(tmp_path, COMPRESSORS[codec])
    values = np.random.default_rng(0).integers(-100, 10000, size=array.shape).astype(np.int16)
    array[:, :, :48] = values[:, :, :48]  # chunk column 4 (x 64 to 70) is never written
    access = chunk_access(array)
    assert access is not None

    for row in range(4):
        for col in range(5):
            expected = np.asarray(array[:, row * 16: (row + 1) * 16, col * 16: (col + 1) * 16])
            got = access.read((0, row, col))
            assert got.shape == expected.shape
            assert np.array_equal(got, expected), (row, col)
    assert (access.read((0, 3, 4)) == -7).all()


@pytest.mark.parametrize("codec", sorted(COMPRESSORS))
def test_zarr_reads_regions_written_here(tmp_path, codec):
    array = _array(tmp_path, COMPRESSORS[codec])
    values = np.random.default_rng(1).integers(-100, 10000, size=array.shape).astype(np.int16)
    access = chunk_access(array)

    # Two regions: one of whole chunks inside, one that ends at the array's far edges.
    access.write_region((0, 0, 0), values[:, :32, :48])
    access.write_region((0, 32, 48), values[:, 32:, 48:])

    reopened = zarr.open_array(tmp_path / "a.zarr", mode="r")
    assert np.array_equal(reopened[:, :32, :48], values[:, :32, :48])
    assert np.array_equal(reopened[:, 32:, 48:], values[:, 32:, 48:])
    assert (reopened[:, 32:, :48] == -7).all()


def test_writes_leave_no_temporary_files(tmp_path):
    array = _array(tmp_path, COMPRESSORS["blosc bitshuffle"])
    chunk_access(array).write_region((0, 16, 16), np.ones((3, 32, 32), np.int16))
    names = [name for _, _, files in os.walk(tmp_path / "a.zarr") for name in files]
    assert not [name for name in names if name.endswith(".partial")]
    assert sorted(name for name in names if name != "zarr.json") == ["1", "1", "2", "2"]


def test_misaligned_region_is_rejected(tmp_path):
    access = chunk_access(_array(tmp_path, None))
    with pytest.raises(ValueError, match="not aligned to chunks of 16"):
        access.write_region((0, 8, 0), np.zeros((3, 16, 16), np.int16))
    with pytest.raises(ValueError, match="not aligned"):
        access.write_region((0, 0, 0), np.zeros((3, 20, 16), np.int16))


def test_wrong_dtype_is_rejected(tmp_path):
    access = chunk_access(_array(tmp_path, None))
    with pytest.raises(ValueError, match="takes int16"):
        access.write((0, 0, 0), np.zeros((3, 16, 16), np.float32))


def test_truncated_uncompressed_chunk_is_an_error(tmp_path):
    array = _array(tmp_path, None)
    array[:, :16, :16] = 1
    path = tmp_path / "a.zarr" / "c" / "0" / "0" / "0"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated: it contains 100 bytes"):
        chunk_access(array).read((0, 0, 0))


def test_other_layouts_are_left_to_zarr(tmp_path):
    sharded = zarr.create_array(tmp_path / "s.zarr", shape=(64, 64), chunks=(16, 16), shards=(32, 32), dtype="uint8")
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=(8, 8), chunks=(4, 4), dtype="uint8")
    transposed = zarr.create_array(tmp_path / "t.zarr", shape=(8, 8), chunks=(4, 4), dtype="uint8",
                                   filters=(TransposeCodec(order=(1, 0)),))
    big_endian = zarr.create_array(tmp_path / "b.zarr", shape=(8, 8), chunks=(4, 4), dtype="int16",
                                   serializer=BytesCodec(endian="big"))
    version_2 = zarr.create_array(tmp_path / "v2.zarr", shape=(8, 8), chunks=(4, 4), dtype="uint8", zarr_format=2)
    for array in (sharded, in_memory, transposed, big_endian, version_2):
        assert chunk_access(array) is None, array
