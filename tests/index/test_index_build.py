"""Case index: build, search, incremental and atomic updates, privacy, bad input."""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from medvl_fakes import FakeModel, label_image, make_rows

from medvl.data.manifest import write_manifest
from medvl.errors import CaseIndexError
from medvl.index import CaseIndex, build_index, storage

CFG = {"progress": False}


def _manifest(tmp_path: Path, rows: list[dict], name: str = "manifest.jsonl") -> Path:
    path = tmp_path / name
    write_manifest(path, rows)
    return path


def test_build_then_search_text_and_image(tmp_path: Path, fake_loader: None) -> None:
    rows = make_rows(40, seed=3)
    manifest = _manifest(tmp_path, rows)
    model = FakeModel()
    index = build_index(model, manifest, tmp_path / "idx", config=CFG)
    assert len(index) == 40 and index.dim == 16
    assert index.study_ids() == [r["study_id"] for r in rows]

    hits = index.search_text(model, "There is pneumothorax.", k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    # The best image match for "pneumothorax" is a case labelled with it.
    assert hits[0].labels["pneumothorax"] == 1
    assert hits[0].image_path == str((tmp_path / rows[0]["image"]).parent / Path(hits[0].image_path).name)
    assert "FINDINGS:" in hits[0].report_text

    # An indexed image finds its own study first (score 1 up to float error).
    probe = rows[7]
    top = index.search_image(model, label_image(probe["labels"]), k=3)
    assert top[0].score == pytest.approx(1.0, abs=1e-5)
    assert probe["labels"] == top[0].labels


def test_exact_search_matches_brute_force(tmp_path: Path, fake_loader: None) -> None:
    manifest = _manifest(tmp_path, make_rows(30, seed=4))
    model = FakeModel(noise=0.2)
    index = build_index(model, manifest, tmp_path / "idx", config=CFG)
    q = np.random.default_rng(0).normal(size=16).astype(np.float32)
    for against in ("image", "report"):
        hits = index.search_vector(q, k=7, against=against)
        vecs = np.load(index.version_dir / f"{against}.npy").astype(np.float64)
        sims = vecs @ (q / np.linalg.norm(q))
        ref = np.argsort(-sims, kind="stable")[:7]
        # Same scores in the same order (identical reports tie, so compare scores, not ids).
        np.testing.assert_allclose([h.score for h in hits], sims[ref], atol=1e-5)
        if against == "image":  # image embeddings carry noise, hence no ties
            assert [h.study_id for h in hits] == [index.study_ids()[i] for i in ref]


def test_incremental_add_embeds_only_new_studies(tmp_path: Path, fake_loader: None) -> None:
    rows = make_rows(30, seed=5)
    model = FakeModel()
    idx = tmp_path / "idx"
    build_index(model, _manifest(tmp_path, rows[:20], "a.jsonl"), idx, config=CFG)
    model.image_calls = 0
    index = build_index(model, _manifest(tmp_path, rows, "b.jsonl"), idx, config=CFG)
    assert len(index) == 30
    assert index.study_ids() == [r["study_id"] for r in rows]
    # 10 new studies in batches of 8 -> 2 image batches, not 4 for all 30.
    assert model.image_calls == 2
    info = json.loads((index.version_dir / "index.json").read_text())
    assert [h["added"] for h in info["history"]] == [20, 10]
    # Nothing new: no new version.
    before = storage.current_dir(idx)
    build_index(model, _manifest(tmp_path, rows, "b.jsonl"), idx, config=CFG)
    assert storage.current_dir(idx) == before


def test_interrupted_build_leaves_old_index_usable(tmp_path: Path, fake_loader: None) -> None:
    rows = make_rows(24, seed=6)
    model = FakeModel()
    idx = tmp_path / "idx"
    build_index(model, _manifest(tmp_path, rows[:16], "a.jsonl"), idx, config=CFG)

    class Boom(RuntimeError):
        pass

    def crash(*a, **k):
        raise Boom("killed mid-build")

    # Crash after the vectors are written but before the new version is switched in.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(storage, "write_info", crash)
        with pytest.raises(Boom):
            build_index(model, _manifest(tmp_path, rows, "b.jsonl"), idx, config=CFG)
    index = CaseIndex.open(idx)
    assert len(index) == 16
    assert index.search_text(model, "There is edema.", k=3)
    assert not list(idx.glob(".tmp-*"))  # staging cleaned up

    # A crash while switching CURRENT also leaves the old version live.
    import medvl.index.storage as st

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(st, "write_text_atomic", crash)
        with pytest.raises(Boom):
            build_index(model, _manifest(tmp_path, rows, "b.jsonl"), idx, config=CFG)
    assert len(CaseIndex.open(idx)) == 16
    # And the next build succeeds.
    assert len(build_index(model, _manifest(tmp_path, rows, "b.jsonl"), idx, config=CFG)) == 24


def test_open_index_keeps_its_version_during_an_update(tmp_path: Path, fake_loader: None) -> None:
    rows = make_rows(20, seed=7)
    model = FakeModel()
    idx = tmp_path / "idx"
    first = build_index(model, _manifest(tmp_path, rows[:10], "a.jsonl"), idx, config=CFG)
    build_index(model, _manifest(tmp_path, rows, "b.jsonl"), idx, config=CFG)
    assert len(first) == 10 and len(first.search_text(model, "There is nodule.", k=20)) == 10
    assert len(CaseIndex.open(idx)) == 20


def test_index_stores_no_patient_identifier(tmp_path: Path, fake_loader: None) -> None:
    rows = make_rows(12, seed=8)
    for r in rows:
        r["patient_id"] = f"PATIENT-{r['study_id']}-XYZ"
    index = build_index(FakeModel(), _manifest(tmp_path, rows), tmp_path / "idx", config=CFG)
    blob = b"".join(p.read_bytes() for p in index.version_dir.iterdir())
    assert b"PATIENT-" not in blob
    cols = [c[1] for c in sqlite3.connect(index.version_dir / "cases.sqlite").execute("PRAGMA table_info(cases)")]
    assert "patient_id" not in cols


def test_unreadable_studies_are_skipped_and_recorded(tmp_path: Path, fake_loader: None) -> None:
    rows = make_rows(10, seed=9)
    rows[3]["image"] = "img/broken.png"
    index = build_index(FakeModel(), _manifest(tmp_path, rows), tmp_path / "idx", config=CFG)
    assert len(index) == 9 and rows[3]["study_id"] not in index.study_ids()
    history = json.loads((index.version_dir / "index.json").read_text())["history"]
    assert history[-1]["skipped"][0]["study_id"] == rows[3]["study_id"]


def test_other_model_is_refused(tmp_path: Path, fake_loader: None) -> None:
    manifest = _manifest(tmp_path, make_rows(10, seed=10))
    index = build_index(FakeModel(seed=0), manifest, tmp_path / "idx", config=CFG)
    other = FakeModel(seed=1)
    with pytest.raises(CaseIndexError, match="model"):
        index.search_text(other, "There is edema.")
    with pytest.raises(CaseIndexError, match="another model"):
        build_index(other, manifest, tmp_path / "idx", config=CFG)
    assert len(build_index(other, manifest, tmp_path / "idx", config=CFG, rebuild=True)) == 10


def test_bad_queries_and_missing_index_raise_case_index_error(tmp_path: Path, fake_loader: None) -> None:
    with pytest.raises(CaseIndexError, match="no case index"):
        CaseIndex.open(tmp_path / "nothing")
    index = build_index(FakeModel(), _manifest(tmp_path, make_rows(5)), tmp_path / "idx", config=CFG)
    with pytest.raises(CaseIndexError, match="dimension"):
        index.search_vector(np.ones(7), k=3)
    with pytest.raises(CaseIndexError, match="empty"):
        index.search_text(FakeModel(), "  ")
    with pytest.raises(CaseIndexError, match="against"):
        index.search_vector(np.ones(16), against="labels")
    with pytest.raises(CaseIndexError, match="not in the index"):
        index.get("nope")
    (tmp_path / "idx" / "CURRENT").write_text("v999999\n")
    with pytest.raises(CaseIndexError, match="CURRENT"):
        CaseIndex.open(tmp_path / "idx")


def test_unreadable_new_studies_leave_the_index_unchanged(tmp_path: Path, fake_loader: None) -> None:
    rows = make_rows(8, seed=13)
    idx = tmp_path / "idx"
    build_index(FakeModel(), _manifest(tmp_path, rows, "a.jsonl"), idx, config=CFG)
    before = storage.current_dir(idx)
    broken = make_rows(2, seed=14, prefix="x")
    for r in broken:
        r["image"] = "img/broken.png"
    index = build_index(FakeModel(), _manifest(tmp_path, rows + broken, "b.jsonl"), idx, config=CFG)
    assert storage.current_dir(idx) == before and len(index) == 8


def test_rows_of_other_dims_are_not_indexed(tmp_path: Path, fake_loader: None) -> None:
    rows = make_rows(6, seed=15)
    rows[0]["dims"], rows[0]["modality"] = 3, "CT"
    index = build_index(FakeModel(), _manifest(tmp_path, rows), tmp_path / "idx", config=CFG)
    assert rows[0]["study_id"] not in index.study_ids() and len(index) == 5


def test_concurrent_searches_from_threads(tmp_path: Path, fake_loader: None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rows = make_rows(30, seed=16)
    model = FakeModel()
    index = build_index(model, _manifest(tmp_path, rows), tmp_path / "idx", config=CFG)
    queries = [label_image(r["labels"]) for r in rows]
    with ThreadPoolExecutor(4) as pool:
        tops = list(pool.map(lambda q: index.search_image(model, q, k=1)[0].study_id, queries))
    serial = [index.search_image(model, q, k=1)[0].study_id for q in queries]
    assert tops == serial
