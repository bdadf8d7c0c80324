"""Preprocessing cache: hits equal fresh decodes; file or config changes miss."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from test_dataset_helpers import make_corpus_2d, reader_under_test, write_dicom_2d

from medvl.data import build_dataset
from medvl.data.cache import PreprocessCache


class CountingReader:
    def __init__(self) -> None:
        self.calls = 0
        self.read = reader_under_test()

    def __call__(self, path):
        self.calls += 1
        return self.read(path)


def _cfg(tmp_path, **kw):
    return {"dims": 2, "image_size": 16, "cache_dir": str(tmp_path / "cache"), **kw}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cache_hit_equals_fresh_decode(tmp_path, dtype) -> None:
    manifest = make_corpus_2d(tmp_path, n=3)
    fresh = build_dataset({"dims": 2, "image_size": 16}, manifest, "train", reader=reader_under_test())
    reader = CountingReader()
    cached = build_dataset(_cfg(tmp_path, cache_dtype=dtype), manifest, "train", reader=reader)
    first = [cached[i]["image"] for i in range(3)]
    assert reader.calls == 3 and cached.cache.misses == 3
    second = [cached[i]["image"] for i in range(3)]
    assert reader.calls == 3 and cached.cache.hits == 3  # no decode on the second pass
    for i in range(3):
        expected = fresh[i]["image"].numpy().astype(dtype).astype(np.float32)
        np.testing.assert_array_equal(first[i].numpy(), expected)
        np.testing.assert_array_equal(second[i].numpy(), expected)


def test_hit_is_memory_mapped_and_shared_across_datasets(tmp_path) -> None:
    manifest = make_corpus_2d(tmp_path, n=1)
    build_dataset(_cfg(tmp_path), manifest, "train", reader=reader_under_test())[0]
    reader = CountingReader()
    other = build_dataset(_cfg(tmp_path), manifest, "train", reader=reader)
    other.load_image(0)
    assert reader.calls == 0 and other.cache.hits == 1
    entry = other.cache.load(other.cache.key(other.image_path(0)))
    assert isinstance(entry, np.memmap)


def test_repeated_channels_are_stored_once(tmp_path) -> None:
    manifest = make_corpus_2d(tmp_path, n=1)
    ds = build_dataset(_cfg(tmp_path, in_channels=3), manifest, "train")
    item = ds[0]["image"]
    assert item.shape == (3, 16, 16)
    entry = ds.cache.load(ds.cache.key(ds.image_path(0)))
    assert entry.shape == (1, 16, 16)
    np.testing.assert_array_equal(item.numpy(), np.repeat(np.asarray(entry), 3, axis=0))


def test_changed_file_or_config_is_a_miss(tmp_path) -> None:
    manifest = make_corpus_2d(tmp_path, n=1)
    reader = CountingReader()
    ds = build_dataset(_cfg(tmp_path), manifest, "train", reader=reader)
    before = ds[0]["image"].clone()
    # rewrite the image with other pixels and a later mtime
    path = tmp_path / "img" / "s0.dcm"
    write_dicom_2d(path, np.full((40, 30), 3000), window=(2000, 4000))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = ds[0]["image"]
    assert reader.calls == 2 and not np.array_equal(before.numpy(), after.numpy())
    other = build_dataset(_cfg(tmp_path, image_size=8), manifest, "train", reader=reader)
    assert other[0]["image"].shape[-1] == 8 and reader.calls == 3


def test_damaged_entry_is_recomputed(tmp_path) -> None:
    cache = PreprocessCache(tmp_path / "c", "sig")
    src = tmp_path / "img.bin"
    src.write_bytes(b"x")
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    cache.get_or_compute(src, lambda: value)
    entry = cache.entry_path(cache.key(src))
    entry.write_bytes(entry.read_bytes()[:20])  # truncated by a crash
    got = cache.get_or_compute(src, lambda: value)
    np.testing.assert_array_equal(got, value)
    np.testing.assert_array_equal(cache.load(cache.key(src)), value)
    assert not [p for p in entry.parent.iterdir() if p.name.endswith(".tmp")]


def test_series_folder_key_tracks_its_files(tmp_path) -> None:
    cache = PreprocessCache(tmp_path / "c", "sig")
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"a")
    k1 = cache.key(series)
    (series / "2.dcm").write_bytes(b"b")
    assert cache.key(series) != k1


def test_concurrent_writers_leave_one_valid_entry(tmp_path) -> None:
    import multiprocessing as mp

    src = tmp_path / "img.bin"
    src.write_bytes(b"x")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "c"), str(src))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    cache = PreprocessCache(tmp_path / "c", "sig")
    np.testing.assert_array_equal(cache.load(cache.key(src)), _value())
    folder = cache.entry_path(cache.key(src)).parent
    assert [p.name for p in folder.iterdir()] == [cache.entry_path(cache.key(src)).name]


def _value() -> np.ndarray:
    return np.linspace(0, 1, 256 * 256, dtype=np.float32).reshape(1, 256, 256)


def _writer(root: str, src: str) -> None:
    cache = PreprocessCache(root, "sig")
    for _ in range(20):
        cache.store(cache.key(src), _value())
        got = cache.load(cache.key(src))
        assert got is not None and got.shape == (1, 256, 256)


def test_content_keys_survive_a_copy_and_stat_keys_do_not(tmp_path) -> None:
    import shutil

    a = tmp_path / "a" / "img.dcm"
    a.parent.mkdir()
    a.write_bytes(b"same bytes")
    b = tmp_path / "b" / "img.dcm"
    b.parent.mkdir()
    shutil.copy(a, b)
    content = PreprocessCache(tmp_path / "c", "sig", key_mode="content")
    stat = PreprocessCache(tmp_path / "c", "sig")
    assert content.key(a) == content.key(b)
    assert stat.key(a) != stat.key(b)
    b.write_bytes(b"other bytes")
    assert content.key(a) != content.key(b)


def test_content_key_via_config(tmp_path) -> None:
    manifest = make_corpus_2d(tmp_path, n=1)
    reader = CountingReader()
    ds = build_dataset(_cfg(tmp_path, cache_key="content"), manifest, "train", reader=reader)
    ds[0]
    path = tmp_path / "img" / "s0.dcm"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    ds[0]
    assert reader.calls == 1 and ds.cache.hits == 1
