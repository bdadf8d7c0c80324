"""The ``index`` section of an experiment config."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medvl.errors import ConfigError
from medvl.index.vectors import ApproxParams


@dataclass
class IndexConfig:
    """Settings of :func:`medvl.index.build_index` and of searches.

    Attributes:
        approximate: ``auto`` builds a FAISS index when faiss is installed and the index
            holds at least ``approximate_min_vectors`` cases; ``never`` keeps exact
            search only; ``always`` builds one at any size (needs faiss).
        approximate_min_vectors: corpus size from which ``auto`` builds FAISS.
        kind: FAISS index type, ``ivf`` or ``hnsw``.
        nlist: IVF cells (0: ``4 * sqrt(N)``).
        nprobe: IVF cells visited per query.
        hnsw_m, ef_construction, ef_search: HNSW graph settings.
        batch_size: studies embedded per batch (``null``: the data section's).
        keep_versions: index versions kept on disk (the current one included); older
            ones are deleted after a successful write.
        progress: show a progress bar while embedding.
    """

    approximate: Literal["auto", "never", "always"] = "auto"
    approximate_min_vectors: int = 50_000
    kind: Literal["ivf", "hnsw"] = "ivf"
    nlist: int = 0
    nprobe: int = 32
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 64
    batch_size: int | None = None
    keep_versions: int = 2
    progress: bool = True

    def validate(self) -> None:
        if self.keep_versions < 1:
            raise ConfigError("must keep at least the current version", field="index.keep_versions", expected=">= 1")
        if self.approximate_min_vectors < 1:
            raise ConfigError("must be >= 1", field="index.approximate_min_vectors")
        if self.nprobe < 1 or self.ef_search < 1 or self.hnsw_m < 2:
            raise ConfigError("search settings must be positive", field="index.nprobe")

    @property
    def approx_params(self) -> ApproxParams:
        return ApproxParams(kind=self.kind, nlist=self.nlist, nprobe=self.nprobe, hnsw_m=self.hnsw_m,
                            ef_construction=self.ef_construction, ef_search=self.ef_search)
