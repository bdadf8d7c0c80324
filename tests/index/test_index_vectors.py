"""Vector search against brute force, approximate recall, and adding precomputed embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medvl.errors import CaseIndexError
from medvl.index.build import add_embeddings
from medvl.index.case_index import CaseIndex
from medvl.index.vectors import ApproxParams, approx_search, build_approx, exact_search, normalize_rows


def _clustered(n: int, d: int, seed: int = 0, centres: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = normalize_rows(rng.normal(size=(centres, d)))
    return normalize_rows(c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, d)) / np.sqrt(d) * 4)


def test_exact_search_in_blocks_equals_full_sort() -> None:
    x = _clustered(1000, 24)
    q = _clustered(7, 24, seed=1)
    s, i = exact_search(x, q, 10, block=97)  # blocks that do not divide N
    full = q @ x.T
    ref = np.argsort(-full, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(i, ref)
    np.testing.assert_allclose(s, np.take_along_axis(full, ref, axis=1), rtol=1e-5)
    _, i2 = exact_search(x, q, 5000)
    assert i2.shape == (7, 1000)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_at_10_on_clustered_data(kind: str) -> None:
    pytest.importorskip("faiss")
    x = _clustered(4000, 32)
    q = x[:50] + 0.01
    _, exact = exact_search(x, q, 10)
    index = build_approx(x, ApproxParams(kind=kind, nprobe=8))
    _, approx = approx_search(index, q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.9


def _cases(ids: range) -> list[dict]:
    return [{"study_id": f"s{i}", "image": f"/data/s{i}.png", "report": f"report {i}", "labels": {"edema": i % 2}}
            for i in ids]


def test_add_embeddings_incrementally_with_ivf_extension(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    x = _clustered(3000, 16, seed=2)
    cfg = {"approximate": "always", "kind": "ivf", "nprobe": 64, "progress": False}
    add_embeddings(tmp_path, x[:2000], x[:2000], _cases(range(2000)), model_info={"fingerprint": "f"}, config=cfg)
    index = add_embeddings(tmp_path, x[2000:], x[2000:], _cases(range(2000, 3000)),
                           model_info={"fingerprint": "f"}, config=cfg)
    assert len(index) == 3000
    entry = index.info["approximate"]["image"]
    assert entry["count"] == 3000 and entry["trained_count"] == 2000  # extended, not retrained
    hits = index.search_vector(x[2500], k=3)
    assert hits[0].study_id == "s2500" and hits[0].labels == {"edema": 0}
    exact = index.search_vector(x[2500], k=3, exact=True)
    assert hits[0].study_id == exact[0].study_id


def test_add_embeddings_refuses_bad_input(tmp_path: Path) -> None:
    x = _clustered(10, 8)
    with pytest.raises(CaseIndexError, match="disagree"):
        add_embeddings(tmp_path, x, x[:5], _cases(range(10)))
    with pytest.raises(CaseIndexError, match="patient"):
        add_embeddings(tmp_path, x[:1], x[:1], [{**_cases(range(1))[0], "patient_id": "P1"}])
    add_embeddings(tmp_path, x, x, _cases(range(10)), model_info={"fingerprint": "a"})
    with pytest.raises(CaseIndexError, match="already indexed"):
        add_embeddings(tmp_path, x[:2], x[:2], _cases(range(2)), model_info={"fingerprint": "a"})
    with pytest.raises(CaseIndexError, match="another model"):
        add_embeddings(tmp_path, x[:1], x[:1], _cases(range(50, 51)), model_info={"fingerprint": "b"})
    assert len(CaseIndex.open(tmp_path)) == 10
