"""Split embeddings moved to :mod:`medvl.inference.embedding` (round 2); these names stay importable."""

from medvl.inference.embedding import (
    Embeddings,
    embed_batches,
    embed_images,
    embed_split,
    embed_texts,
    model_device,
    split_batches,
)

__all__ = ["Embeddings", "embed_batches", "embed_images", "embed_split", "embed_texts", "model_device",
           "split_batches"]
