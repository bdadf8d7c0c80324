"""``medvl embed``: Parquet rows equal the pipeline's embeddings; resume, skipped records, sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.data import get_testdata_file

import medvl
from medvl.cli import main
from medvl.data.manifest import read_manifest, resolve_path, write_manifest
from medvl.errors import ConfigError
from medvl.inference import export
from medvl.inference.export import embed_items, folder_items, manifest_items


@pytest.fixture(scope="module")
def pipe(trained: Path) -> medvl.Pipeline:
    return medvl.load(trained / "run" / "model")


@pytest.fixture
def small_manifest(trained: Path, tmp_path: Path) -> Path:
    """The test split with one image deleted and one CT row (a 3D study for a 2D model)."""
    src = trained / "corpus" / "manifest.jsonl"
    rows = [r for r in read_manifest(src, split="test") if r.dims == 2][:9]
    payload = []
    for r in rows:
        d = r.to_json()
        img = resolve_path(src, r.image)
        shutil.copy(img, tmp_path / img.name)
        d["image"] = img.name
        d["annotations"] = []
        payload.append(d)
    (tmp_path / payload[3]["image"]).unlink()  # unreadable study
    ct = dict(payload[0], study_id="CT-1", dims=3, modality="CT")
    write_manifest(tmp_path / "m.jsonl", [*payload, ct])
    return tmp_path / "m.jsonl"


def test_rows_are_the_pipelines_embeddings_and_failures_are_recorded_without_paths(pipe, small_manifest, tmp_path):
    out = tmp_path / "emb"
    assert main(["embed", "--model", str(pipe.model_dir), "--manifest", str(small_manifest), "--what",
                 "image,report", "--out", str(out), "--no-progress"]) == 0
    table = pq.read_table(out).to_pylist()
    rows = read_manifest(small_manifest)
    assert [r["item_id"] for r in table] == [r.study_id for r in rows if r.study_id not in (rows[3].study_id, "CT-1")]
    by_id = {r.study_id: r for r in rows}
    paths = [resolve_path(small_manifest, by_id[r["item_id"]].image) for r in table]
    want = pipe.embed_images(paths)
    np.testing.assert_allclose(np.array([r["image_embedding"] for r in table]), want, atol=1e-5)
    from medvl.data.text import prepare_text

    texts = [prepare_text(by_id[r["item_id"]].report, pipe.data_config, np.random.default_rng(0), sample=False)
             for r in table]
    np.testing.assert_allclose(np.array([r["report_embedding"] for r in table]),
                               pipe.embed_texts(texts, prepared=True), atol=1e-5)
    assert {r["model_id"] for r in table} == {pipe.model_id} and {r["split"] for r in table} == {"test"}
    skipped = [json.loads(line) for line in (out / "_skipped.jsonl").read_text().splitlines()]
    assert {s["item_id"] for s in skipped} == {rows[3].study_id, "CT-1"}
    assert any("3D study" in s["error"] for s in skipped)
    everything = "".join(p.read_text(errors="ignore") for p in out.iterdir() if p.suffix != ".parquet")
    everything += str(pq.read_table(out).to_pydict())
    assert str(tmp_path) not in everything  # no path reaches an output


def test_an_interrupted_run_resumes_after_its_last_shard(pipe, small_manifest, tmp_path, monkeypatch):
    items = manifest_items(small_manifest, None, 2)
    out = tmp_path / "emb"
    real = export._embed_chunk
    calls = []

    def flaky(p, chunk, *a, **kw):
        calls.append([i.item_id for i in chunk])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(p, chunk, *a, **kw)

    monkeypatch.setattr(export, "_embed_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        embed_items(pipe, items, out, shard_size=3, progress=False)
    assert len(list(out.glob("part-*.parquet"))) == 2
    with pytest.raises(ConfigError, match="--resume"):
        embed_items(pipe, items, out, shard_size=3, progress=False)
    calls.clear()
    meta = embed_items(pipe, items, out, shard_size=3, progress=False, resume=True)
    assert calls[0][0] == items[6].item_id  # starts after the two finished shards
    ids = pq.read_table(out).column("item_id").to_pylist()
    assert len(ids) == len(set(ids)) == 8 and meta["n_written"] == 8 and meta["n_skipped"] == 2
    full = tmp_path / "full"
    monkeypatch.setattr(export, "_embed_chunk", real)
    embed_items(pipe, items, full, progress=False)
    a, b = pq.read_table(out).to_pandas(), pq.read_table(full).to_pandas()
    np.testing.assert_allclose(np.stack(a["image_embedding"]), np.stack(b["image_embedding"]), atol=1e-6)


def test_resume_refuses_another_model(pipe, small_manifest, tmp_path):
    out = tmp_path / "emb"
    (out).mkdir()
    (out / export.META_NAME).write_text(json.dumps({"model_id": "someone-else", "what": ["image"]}))
    with pytest.raises(ConfigError, match="another model"):
        embed_items(pipe, manifest_items(small_manifest, None, 2), out, resume=True, progress=False)


def test_a_folder_of_dicoms_is_keyed_by_instance_uid(pipe, tmp_path):
    import pydicom

    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    for name in ("RG1_UNCR.dcm", "CT_small.dcm"):
        shutil.copy(get_testdata_file(name, download=False), folder / "sub" / name)
    (folder / "notes.txt").write_text("not an image")
    items = folder_items(folder, 2)
    assert len(items) == 2
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm", download=False), stop_before_pixels=True)
    rg1 = next(i for i in items if i.path.name == "RG1_UNCR.dcm")
    assert rg1.item_id == ds.SOPInstanceUID and rg1.series_uid == ds.SeriesInstanceUID
    assert rg1.study_id == ds.StudyInstanceUID
    out = tmp_path / "emb"
    assert main(["embed", "--model", str(pipe.model_dir), "--folder", str(folder), "--out", str(out),
                 "--no-progress"]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 2 and table.column("split").to_pylist() == [None, None]
    assert main(["embed", "--model", str(pipe.model_dir), "--folder", str(folder), "--out", str(out),
                 "--what", "report"]) == 2  # reports need a manifest


def test_files_sharing_a_sop_instance_uid_are_separate_rows_and_resume_keeps_both(pipe, tmp_path):
    """pydicom's RG1_J2KI and RG1_UNCI are one instance stored twice (same SOP Instance UID):
    each file is a row with its own key, and a resume does not take the second for done."""
    import pydicom

    folder = tmp_path / "incoming"
    folder.mkdir()
    names = ("RG1_J2KI.dcm", "RG1_UNCI.dcm")
    uids = set()
    for name in names:
        src = get_testdata_file(name, download=False)
        uids.add(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
        shutil.copy(src, folder / name)
    assert len(uids) == 1
    uid = uids.pop()
    items = folder_items(folder, 2)
    assert [i.path.name for i in items] == list(names)
    assert items[0].item_id == uid and items[1].item_id.startswith(uid + "~") and len({i.item_id for i in items}) == 2
    assert [i.instance_uid for i in items] == [uid, uid]
    assert [i.item_id for i in folder_items(folder, 2)] == [i.item_id for i in items]  # stable across runs
    out = tmp_path / "emb"
    embed_items(pipe, items[:1], out, progress=False)  # an interrupted run that finished the first file
    meta = embed_items(pipe, folder_items(folder, 2), out, progress=False, resume=True)
    table = pq.read_table(out)
    assert meta["n_written"] == 2 and sorted(table.column("item_id").to_pylist()) == sorted(i.item_id for i in items)
    assert table.column("instance_uid").to_pylist() == [uid, uid]
    assert "incoming" not in json.dumps(table.to_pydict(), default=str)  # the path hash, not the path
