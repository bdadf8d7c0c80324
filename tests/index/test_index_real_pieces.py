"""The case index with the real data loader and a tiny MedVLModel saved to and loaded from disk."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

TINY = {
    "embed_dim": 16,
    "image": {"name": "resnet10", "width": 8, "in_channels": 1, "image_size": 64},
    "text": {"name": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
             "intermediate_size": 64, "max_length": 32},
}
DATA2D = {"dims": 2, "image_size": 64, "batch_size": 8}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvl.data.synth import generate_corpus

    return generate_corpus(tmp_path_factory.mktemp("corpus"), n_cxr=16, n_ct=2, seed=5, image_size=64,
                           ct_size=(32, 32, 24), compressed_fraction=0.5, ct_dicom_fraction=0.0)


def test_query_by_file_finds_the_same_study_with_a_reloaded_model(corpus: Path, tmp_path: Path) -> None:
    from medvl.data.manifest import read_manifest, resolve_path
    from medvl.index import CaseIndex, build_index
    from medvl.models import MedVLModel, build_model

    torch.manual_seed(0)
    model = build_model(copy.deepcopy(TINY)).eval()
    model.save_pretrained(tmp_path / "model")
    build_index(model, corpus, tmp_path / "idx", data_cfg=DATA2D, config={"progress": False})

    # What the viewer does: load both from disk, query with an image file.
    reloaded = MedVLModel.from_pretrained(tmp_path / "model").eval()
    index = CaseIndex.open(tmp_path / "idx")
    rows = [r for r in read_manifest(corpus) if r.dims == 2]
    assert len(index) == len(rows)  # CT rows left out by data.dims
    for row in rows[:3]:
        hits = index.search_image(reloaded, resolve_path(corpus, row.image), k=3)
        assert hits[0].study_id == row.study_id
        assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        assert hits[0].report_text == row.report_text
    # a read image goes through the same one preprocessing path (Pipeline.prepare with the
    # preprocessing the index recorded) as a file does
    from medvl.io import read_image

    img = read_image(resolve_path(corpus, rows[1].image))
    top = index.search_image(reloaded, img, k=1)[0]
    assert top.study_id == rows[1].study_id and top.score == pytest.approx(1.0, abs=1e-4)
    np = pytest.importorskip("numpy")
    np.testing.assert_allclose(index.load_query_image(resolve_path(corpus, rows[1].image)),
                               index.recorded_pipeline().prepare(img).numpy())
    text_hits = index.search_text(reloaded, "Right pleural effusion.", k=4, against="report")
    assert len(text_hits) == 4 and text_hits[0].score >= text_hits[-1].score


def test_approximate_index_on_small_corpus_agrees_with_exact(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    from medvl.index import build_index

    torch.manual_seed(1)
    from medvl.models import build_model

    model = build_model(copy.deepcopy(TINY)).eval()
    index = build_index(model, corpus, tmp_path / "idx", data_cfg=DATA2D,
                        config={"progress": False, "approximate": "always", "kind": "hnsw"})
    assert set(index.info["approximate"]) == {"image", "report"}
    q = index.vector(index.study_ids()[2])
    approx = index.search_vector(q, k=5)
    exact = index.search_vector(q, k=5, exact=True)
    # HNSW on 16 vectors visits them all: same hits as exact search.
    assert [h.study_id for h in approx] == [h.study_id for h in exact]
