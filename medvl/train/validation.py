"""Validation during training: image <-> report retrieval on the val split.

Under torchrun every rank embeds its share of the split and the embeddings are
gathered, so validation time falls with the number of processes.

The engine does not import ``medvl.eval`` (a lower room never imports a peer that sits
beside it), so the two small pure functions it needs live here; they follow the same
conventions as ``medvl.eval.metrics`` (1-based ranks, ties counted against the query).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

RECALL_KS = (1, 5, 10)


def metric_names(ks: Iterable[int] = RECALL_KS) -> list[str]:
    """Names of the values :func:`retrieval_metrics` returns (for checking ``train.monitor``)."""
    return [f"{d}_R@{k}" for k in ks for d in ("i2t", "t2i")] + ["mean_recall", "i2t_mean_rank", "n"]


def retrieval_ranks(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """1-based rank of the best-scored relevant item for each query.

    A non-relevant item that scores the same as the best relevant one ranks ahead of it,
    so a model that scores everything equally gets the worst rank, not the best.

    Args:
        scores: ``(Q, G)`` similarities, higher is closer.
        relevant: ``(Q, G)`` bool, True where a gallery item is a correct answer.

    Returns:
        ``(Q,)`` long ranks; 0 for a query with no relevant item.
    """
    if scores.ndim != 2 or relevant.shape != scores.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} must be the same (Q, G)")
    rel = relevant.bool()
    best = torch.where(rel, scores, torch.full_like(scores, -torch.inf)).amax(dim=1)  # (Q,)
    ahead = ((~rel) & (scores >= best[:, None])).sum(dim=1)
    return torch.where(rel.any(dim=1), ahead + 1, torch.zeros_like(ahead))


def recall_at(ranks: torch.Tensor, k: int) -> float:
    """Fraction of queries (with a relevant item) whose rank is at most ``k``."""
    r = ranks[ranks > 0]
    return float((r <= k).float().mean()) if r.numel() else float("nan")


def retrieval_metrics(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, texts: Sequence[str], ks: Iterable[int] = RECALL_KS,
    *, chunk: int = 1024,
) -> dict[str, float]:
    """Image->report (``i2t``) and report->image (``t2i``) recall@k and their mean.

    Studies whose prepared reports are identical count as correct answers for each
    other (normal studies often share a report word for word).

    Args:
        image_embeds: ``(N, D)`` image embeddings of the N studies.
        text_embeds: ``(N, D)`` report embeddings, same order.
        texts: the N report texts that were embedded.
        ks: the k of recall@k.
        chunk: queries scored at once (bounds memory for large splits).
    """
    img = F.normalize(image_embeds.float(), dim=-1)
    txt = F.normalize(text_embeds.float(), dim=-1)
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    code = torch.tensor([ids[t] for t in texts])

    def ranks(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        # A block of queries at a time keeps memory at chunk x N, not N x N.
        out = []
        for lo in range(0, queries.shape[0], chunk):
            sim = queries[lo:lo + chunk] @ gallery.T  # (chunk, N)
            same = code[lo:lo + chunk, None] == code[None, :]  # identical report = right answer
            out.append(retrieval_ranks(sim, same))
        return torch.cat(out)

    out: dict[str, float] = {}
    i2t, t2i = ranks(img, txt), ranks(txt, img)
    for k in ks:
        out[f"i2t_R@{k}"] = recall_at(i2t, k)
        out[f"t2i_R@{k}"] = recall_at(t2i, k)
    out["mean_recall"] = sum(v for v in out.values()) / len(out)
    out["i2t_mean_rank"] = float(i2t.float().mean())
    out["n"] = float(len(texts))
    return out


@torch.no_grad()
def embed_split(
    model: Any,  # a dual encoder module: encode_image, encode_text, tokenize
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Global image and report embeddings of every study the loader yields (empty batches skipped)."""
    imgs, txts, texts = [], [], []
    for batch in batches:
        if len(batch["text"]) == 0:
            continue
        with autocast():
            img = model.encode_image(batch["image"].to(device, non_blocking=True))
            tok = {k: v.to(device) for k, v in model.tokenize(list(batch["text"])).items()}
            txt = model.encode_text(**tok)
        imgs.append(img.embeds.float().cpu())
        txts.append(txt.embeds.float().cpu())
        texts.extend(batch["text"])
    if not texts:
        return torch.empty(0, 0), torch.empty(0, 0), []
    return torch.cat(imgs), torch.cat(txts), texts


def validate(
    model: Any,  # a dual encoder module
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    gather: Callable[[Any], list[Any]] = lambda local: [local],
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on a split; ``{}`` when the split is empty.

    Args:
        model: the dual encoder (put in eval mode for the pass, then restored).
        batches: this process's share of the split.
        device: where the model runs.
        autocast: mixed-precision context factory.
        gather: collects every rank's ``(image_embeds, text_embeds, texts)`` (identity in
            one process); metrics are computed over the whole split on every rank.
    """
    was_training = model.training
    model.eval()
    try:
        local = embed_split(model, batches, device, autocast)
    finally:
        model.train(was_training)
    parts = [p for p in gather(local) if p[2]]
    if not parts:
        return {}
    img = torch.cat([p[0] for p in parts])
    txt = torch.cat([p[1] for p in parts])
    texts = [t for p in parts for t in p[2]]
    return retrieval_metrics(img, txt, texts)
