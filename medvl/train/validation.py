"""Validation during training: image <-> report retrieval on the val split.

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
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, texts: Sequence[str], ks: Iterable[int] = RECALL_KS
) -> dict[str, float]:
    """Image->report (``i2t``) and report->image (``t2i``) recall@k and their mean.

    Studies whose prepared reports are identical count as correct answers for each
    other (normal studies often share a report word for word).

    Args:
        image_embeds: ``(N, D)`` image embeddings of the N studies.
        text_embeds: ``(N, D)`` report embeddings, same order.
        texts: the N report texts that were embedded.
    """
    img = F.normalize(image_embeds.float(), dim=-1)
    txt = F.normalize(text_embeds.float(), dim=-1)
    sim = img @ txt.T  # (N images, N reports)
    ids = {t: i for i, t in enumerate(dict.fromkeys(texts))}
    code = torch.tensor([ids[t] for t in texts])
    same = code[:, None] == code[None, :]  # (N, N) report i is a right answer for study j
    out: dict[str, float] = {}
    i2t, t2i = retrieval_ranks(sim, same), retrieval_ranks(sim.T, same)
    for k in ks:
        out[f"i2t_R@{k}"] = recall_at(i2t, k)
        out[f"t2i_R@{k}"] = recall_at(t2i, k)
    out["mean_recall"] = sum(v for v in out.values()) / len(out)
    out["i2t_mean_rank"] = float(i2t.float().mean())
    out["n"] = float(len(texts))
    return out


@torch.no_grad()
def embed_split(
    model: torch.nn.Module,
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
    model: torch.nn.Module,
    batches: Iterable[dict[str, Any]],
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on a split; ``{}`` when the split is empty."""
    was_training = model.training
    model.eval()
    try:
        img, txt, texts = embed_split(model, batches, device, autocast)
    finally:
        model.train(was_training)
    if not texts:
        return {}
    return retrieval_metrics(img, txt, texts)
