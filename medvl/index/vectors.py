"""Vector search: exact (numpy, the default) and approximate (FAISS IVF or HNSW).

Vectors are unit-norm float32 rows, so the inner product is the cosine similarity.
Exact search streams the matrix in blocks (it may be a read-only memory map of a
``.npy`` file), so memory stays bounded at any corpus size. FAISS is optional: it is
imported only when an approximate index is built or opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medvl.errors import CaseIndexError

APPROX_KINDS = ("ivf", "hnsw")


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Unit-norm float32 rows (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row, best first: ``(scores (Q, k), indices (Q, k))``."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        idx = np.tile(np.arange(scores.shape[1]), (scores.shape[0], 1))
    part = np.take_along_axis(scores, idx, axis=1)
    order = np.lexsort((idx, -part), axis=1)  # score descending, then row ascending (stable)
    idx = np.take_along_axis(idx, order, axis=1)
    return np.take_along_axis(scores, idx, axis=1), idx


def exact_search(
    vectors: np.ndarray, queries: np.ndarray, k: int, *, block: int = 131072
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search, streaming ``vectors`` in row blocks.

    Args:
        vectors: ``(N, D)`` float32 (array or memory map).
        queries: ``(Q, D)`` float32.
        k: hits per query.
        block: rows of ``vectors`` scored at once (bounds memory to ``Q x block`` floats).

    Returns:
        ``(scores, indices)``, each ``(Q, min(k, N))``, best first.
    """
    q = np.asarray(queries, dtype=np.float32)
    n = vectors.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
    best_s: np.ndarray | None = None
    best_i: np.ndarray | None = None
    for lo in range(0, n, block):
        s = np.asarray(vectors[lo : lo + block], dtype=np.float32) @ q.T  # (b, Q)
        s_k, i_k = _topk_rows(s.T, k)
        i_k = i_k + lo
        if best_s is None:
            best_s, best_i = s_k, i_k
        else:
            cat_s = np.concatenate([best_s, s_k], axis=1)
            cat_i = np.concatenate([best_i, i_k], axis=1)
            top_s, pos = _topk_rows(cat_s, k)
            best_s, best_i = top_s, np.take_along_axis(cat_i, pos, axis=1)
    assert best_s is not None and best_i is not None
    return best_s, best_i.astype(np.int64)


@dataclass
class ApproxParams:
    """Settings of an approximate index.

    Attributes:
        kind: ``ivf`` (inverted lists over k-means cells) or ``hnsw`` (graph).
        nlist: IVF cells; ``0`` picks ``4 * sqrt(N)`` (4000 cells at 1M vectors: FAISS's
            usual range is 4-16 sqrt(N)). ``sqrt(N)`` cells train 10x faster but, at 1M
            clustered vectors, reached only 0.74 recall@10 at nprobe 32 against 0.96 with
            ``4 * sqrt(N)`` (``benchmarks/index``).
        nprobe: IVF cells visited per query.
        train_size: IVF k-means training sample (rows; at least 39 per cell are used).
        hnsw_m: HNSW neighbours per node.
        ef_construction, ef_search: HNSW beam widths at build and query time.
    """

    kind: str = "ivf"
    nlist: int = 0
    nprobe: int = 32
    train_size: int = 50_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64


def build_approx(vectors: np.ndarray, params: ApproxParams, seed: int = 0) -> Any:
    """Build a FAISS inner-product index over ``vectors``.

    Raises:
        CaseIndexError: faiss is not installed or ``params.kind`` is unknown.
    """
    try:
        import faiss
    except ImportError:
        raise CaseIndexError("approximate search needs the 'faiss-cpu' package", field="index.approximate",
                             expected="pip install faiss-cpu, or exact search") from None
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if params.kind == "hnsw":
        hnsw = faiss.IndexHNSWFlat(d, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = params.ef_construction
        hnsw.hnsw.efSearch = params.ef_search
        hnsw.add(x)
        return hnsw
    if params.kind == "ivf":
        nlist = params.nlist or max(1, int(np.rint(4 * np.sqrt(n))))
        nlist = min(nlist, max(1, n // 39))  # faiss wants >= 39 training points per cell
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        m = max(params.train_size, 39 * nlist)
        sample = x if n <= m else x[np.sort(rng.choice(n, m, replace=False))]
        index.train(sample)
        index.add(x)
        index.nprobe = min(params.nprobe, nlist)
        return index
    raise CaseIndexError(f"unknown approximate index {params.kind!r}", field="index.approximate",
                         expected=" or ".join(APPROX_KINDS))


def approx_search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search a FAISS index; ``-1`` slots (fewer than ``k`` found) are dropped per row."""
    s, i = index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
    return s, i.astype(np.int64)


def write_approx(index: Any, path: Path) -> None:
    """Write a FAISS index file."""
    import faiss

    faiss.write_index(index, str(path))


def read_approx(path: Path, params: ApproxParams | None = None) -> Any:
    """Read a FAISS index file (memory-mapped when faiss allows) and apply query-time settings."""
    import faiss

    index = faiss.read_index(str(path))
    if params is not None:
        set_query_params(index, params)
    return index


def set_query_params(index: Any, params: ApproxParams) -> None:
    """Apply ``nprobe`` / ``ef_search`` to an opened index."""
    import faiss

    if isinstance(index, faiss.IndexIVF):
        index.nprobe = min(params.nprobe, index.nlist)
    elif hasattr(index, "hnsw"):
        index.hnsw.efSearch = params.ef_search
