"""Gathering embeddings across ranks with gradients, for distributed negatives.

Under ``torchrun`` each rank holds only its slice of the global batch. Contrastive
terms want every other rank's samples as negatives, so the embeddings are gathered
with :func:`gather_with_grad`. Its backward pass sums the incoming gradients over
ranks and hands each rank the part that belongs to its own rows. With the usual DDP
averaging of parameter gradients this reproduces, exactly, the gradients of one
process that saw the whole batch (see ``docs/losses.md`` for the derivation and the
test in ``tests/losses/test_distributed.py``).

Ranks may hold different numbers of samples (a smaller last batch, a skipped study);
tensors are padded to the largest rank for the collective and unpadded afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist

# Elements per all-reduce bucket of average_gradients (25M float32 = 100 MB; DDP's
# default bucket is 25 MB; larger buckets mean fewer calls, the memory cost is one bucket).
_BUCKET_NUMEL = 25_000_000


def is_distributed() -> bool:
    """True when a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks, 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank, 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def gather_sizes(n: int, device: torch.device) -> list[int]:
    """All ranks' local batch sizes, in rank order (one small collective)."""
    if not is_distributed():
        return [n]
    mine = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    return [int(t.item()) for t in out]


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0; ranks may differ in length."""
    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad])
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns this rank's slice of the rank-summed gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return _all_gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        # Every rank's loss may depend on every rank's rows; the gradient of a row is
        # the sum of what all ranks computed for it.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping the autograd graph.

    This rank's rows stay connected to ``x``; the rows of other ranks carry their
    gradients back to those ranks in the backward pass (each rank must call backward,
    as DDP training does). Without a process group this returns ``x`` unchanged.

    Args:
        x: ``(b, ...)`` local tensor; the trailing shape must agree across ranks.
        sizes: every rank's ``b`` from :func:`gather_sizes`, to save a collective when
            several tensors of one batch are gathered.

    Returns:
        ``(sum(sizes), ...)`` in rank order.
    """
    if not is_distributed():
        return x
    if sizes is None:
        sizes = gather_sizes(x.shape[0], x.device)
    if x.requires_grad:
        return _GatherWithGrad.apply(x, sizes)
    return _all_gather_padded(x, sizes)


def gather_tokens(
    tokens: torch.Tensor, mask: torch.Tensor, sizes: list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather ``(b, L, D)`` local tokens and their ``(b, L)`` mask from every rank.

    Ranks may pad their batches to different lengths ``L`` (the longest report on
    each rank); tokens are padded with masked-out zeros to the longest over ranks
    first. Gradients flow back as in :func:`gather_with_grad`.

    Returns:
        ``(tokens (sum(sizes), L_max, D), mask (sum(sizes), L_max))``; unchanged
        without a process group.
    """
    if not is_distributed():
        return tokens, mask
    longest = torch.tensor([tokens.shape[1]], dtype=torch.long, device=tokens.device)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    extra = int(longest.item()) - tokens.shape[1]
    if extra:
        tokens = torch.cat([tokens, tokens.new_zeros(tokens.shape[0], extra, tokens.shape[2])], dim=1)
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)
    if sizes is None:
        sizes = gather_sizes(tokens.shape[0], tokens.device)
    return gather_with_grad(tokens, sizes), gather_with_grad(mask, sizes)


def pair_cross_entropies(
    words: torch.Tensor,
    word_valid: torch.Tensor,
    regions: torch.Tensor,
    region_valid: torch.Tensor,
    scores: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    scale: float,
    gather: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Report-to-image and image-to-report cross entropies of token-level pair scores.

    The shared skeleton of the token terms whose negatives are the batch's other pairs
    (GLoRIA's local term, FILIP). ``scores(words, wv, regions, rv)`` returns two
    ``(reports, images)`` score matrices: the one read per report (over images) and the
    one read per image (over reports); both may be the same tensor. With ``gather``
    under ``torchrun``, this rank's reports are scored against every rank's images and
    every rank's reports against this rank's images (tokens gathered with gradients),
    and each rank returns its share of the global mean, so the loss equals one process
    with the whole batch.

    Returns:
        ``(report_to_image, image_to_report)`` mean cross entropies (shares under DDP).
    """
    import torch.nn.functional as F

    b = words.shape[0]
    if gather and is_distributed():
        sizes = gather_sizes(b, words.device)
        offset, total = sum(sizes[: rank()]), sum(sizes)
        all_words, all_wv = gather_tokens(words, word_valid, sizes)
        all_regions, all_rv = gather_tokens(regions, region_valid, sizes)
        per_report, _ = scores(words, word_valid, all_regions, all_rv)  # (b, B)
        _, per_image = scores(all_words, all_wv, regions, region_valid)  # (B, b)
        target = torch.arange(offset, offset + b, device=words.device)
        share = world_size() / total
        t2i = F.cross_entropy(scale * per_report, target, reduction="sum") * share
        i2t = F.cross_entropy(scale * per_image.T, target, reduction="sum") * share
        return t2i, i2t
    per_report, per_image = scores(words, word_valid, regions, region_valid)
    target = torch.arange(b, device=words.device)
    return F.cross_entropy(scale * per_report, target), F.cross_entropy(scale * per_image.T, target)


def batch_mean(per_sample: torch.Tensor) -> torch.Tensor:
    """Mean of a per-sample loss over the *global* batch, as this rank's share.

    Without a process group this is ``per_sample.mean()``. Under ``torchrun`` it is
    ``sum(per_sample) * world_size / global_batch``: the mean over ranks of these
    shares (what DDP's gradient averaging optimises) is then exactly the mean over all
    samples, even when ranks hold different numbers of samples.
    """
    if not is_distributed():
        return per_sample.mean()
    total = sum(gather_sizes(per_sample.shape[0], per_sample.device))
    return per_sample.sum() * (dist.get_world_size() / total)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks (no gradient); identity when not distributed."""
    if is_distributed():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average ``.grad`` over ranks after ``backward``, as one process with the whole batch would have it.

    The one gradient all-reduce of medvl: the training engine calls it on every trained
    parameter (model and loss) after the last micro-batch, and code that drives the
    losses in its own loop calls it on ``loss.parameters()`` when the loss is not
    wrapped in DDP with the model (without it each rank would update its own copy of
    the prototypes and the copies would drift apart).

    * A parameter that got a gradient on at least one rank is averaged over all ranks;
      a rank that produced none for it (an empty batch) counts zeros, as DDP does.
    * A parameter that got no gradient on *any* rank (prototypes frozen in the first
      epochs, a ``logit_scale`` that no term uses) keeps ``grad = None`` everywhere, so
      the optimiser skips it exactly as in one process. A zero-filled gradient would
      not be the same: AdamW would still apply weight decay to it and advance its step
      count.

    Gradients travel in flat buckets per dtype and device (one all-reduce per bucket
    of up to ``_BUCKET_NUMEL`` elements). Every rank must call this with the same
    parameters in the same order.
    """
    if not is_distributed():
        return
    params: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    for p in parameters:
        if p.requires_grad and id(p) not in seen:  # a tied parameter is reduced once
            seen.add(id(p))
            params.append(p)
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)  # did any rank produce a gradient?
    world = dist.get_world_size()
    groups: dict[tuple[torch.dtype, torch.device], list[torch.nn.Parameter]] = {}
    for p, any_rank in zip(params, has.tolist(), strict=True):
        if not any_rank:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in groups.values():
        bucket: list[torch.Tensor] = []  # the parameters' .grad tensors
        numel = 0
        for i, p in enumerate(group):
            assert p.grad is not None  # grouped above: this rank has one
            bucket.append(p.grad)
            numel += p.numel()
            if numel >= _BUCKET_NUMEL or i == len(group) - 1:
                flat = torch.cat([g.reshape(-1) for g in bucket])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                flat /= world
                offset = 0
                for g in bucket:
                    n = g.numel()
                    g.copy_(flat[offset : offset + n].view_as(g))
                    offset += n
                bucket, numel = [], 0
