"""The index keeps image paths relative to a corpus root that can move.

Before, it stored absolute paths: moving a corpus broke its index, and a folder named
after a person (``/home/jdoe/...``, ``Doe_Jane/``) was written into ``cases.sqlite``.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from medvl_fakes import FakeModel, make_rows

from medvl.data.manifest import write_manifest
from medvl.index import CaseIndex, build_index

CFG = {"progress": False}
NAME = "Doe_Jane"  # stands for any identifying folder name above the corpus


def _corpus(base: Path, n: int = 12) -> tuple[Path, list[dict]]:
    corpus = base / NAME / "corpus"
    rows = make_rows(n, seed=1)
    for r in rows:
        (corpus / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        (corpus / r["image"]).write_bytes(b"png")
    write_manifest(corpus / "manifest.jsonl", rows)
    return corpus, rows


def _stored_images(index_root: Path) -> list[str]:
    version = CaseIndex.open(index_root).version_dir
    with sqlite3.connect(version / "cases.sqlite") as conn:
        return [r[0] for r in conn.execute("SELECT image FROM cases ORDER BY position")]


def test_no_absolute_path_or_folder_name_is_stored(tmp_path: Path, fake_loader: None) -> None:
    corpus, rows = _corpus(tmp_path)
    root = tmp_path / NAME / "runs" / "index"
    build_index(FakeModel(), corpus / "manifest.jsonl", root, config=CFG)
    assert _stored_images(root) == [r["image"] for r in rows]  # as the manifest has them, relative
    for f in root.rglob("*"):
        if f.is_file():
            assert str(tmp_path).encode() not in f.read_bytes(), f
            assert NAME.encode() not in f.read_bytes(), f


def test_corpus_moved_with_its_index_still_resolves(tmp_path: Path, fake_loader: None) -> None:
    corpus, rows = _corpus(tmp_path / "a")
    build_index(FakeModel(), corpus / "manifest.jsonl", tmp_path / "a" / NAME / "index", config=CFG)
    shutil.move(tmp_path / "a", tmp_path / "b")  # the whole project folder moves
    index = CaseIndex.open(tmp_path / "b" / NAME / "index")
    hit = index.get(rows[3]["study_id"])
    assert Path(hit.image_path).resolve() == (tmp_path / "b" / NAME / "corpus" / rows[3]["image"]).resolve()
    assert Path(hit.image_path).is_file() and hit.image_ref == rows[3]["image"]


def test_corpus_moved_alone_is_found_with_corpus_root(tmp_path: Path, fake_loader: None) -> None:
    corpus, rows = _corpus(tmp_path)
    build_index(FakeModel(), corpus / "manifest.jsonl", tmp_path / "index", config=CFG)
    moved = tmp_path / "archive" / "corpus"
    moved.parent.mkdir()
    shutil.move(corpus, moved)
    assert not Path(CaseIndex.open(tmp_path / "index").get(rows[0]["study_id"]).image_path).exists()
    index = CaseIndex.open(tmp_path / "index", corpus_root=moved)
    assert all(Path(index.get(r["study_id"]).image_path).is_file() for r in rows)


def test_extending_from_another_manifest_keeps_one_corpus_root(tmp_path: Path, fake_loader: None) -> None:
    corpus, rows = _corpus(tmp_path)
    more = make_rows(4, seed=2, prefix="t")
    extra = corpus / "extra"
    for r in more:
        (extra / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        (extra / r["image"]).write_bytes(b"png")
    write_manifest(extra / "more.jsonl", more)
    build_index(FakeModel(), corpus / "manifest.jsonl", tmp_path / "index", config=CFG)
    index = build_index(FakeModel(), extra / "more.jsonl", tmp_path / "index", config=CFG)
    assert _stored_images(tmp_path / "index")[-4:] == [f"extra/{r['image']}" for r in more]
    assert all(Path(index.get(r["study_id"]).image_path).is_file() for r in rows + more)
    assert [h["manifest"] for h in index.info["history"]] == ["manifest.jsonl", "extra/more.jsonl"]
