"""One optimizer step's forward and backward, with a feature cache for accumulation.

Gradient accumulation in contrastive training must not shrink the set of negatives:
summing the losses of four micro-batches of 32 is *not* the loss of one batch of 128,
because each micro-batch only contrasts against its own 31 others. Following the
gradient-cache idea (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size
under Memory Limited Setup"), one step here runs in three passes:

1. embed every micro-batch **without** autograd and keep the embeddings (cheap: ``(B, D)``
   plus local tokens);
2. compute the loss over the concatenated embeddings of the whole effective batch and
   back-propagate it to those cached embeddings only;
3. re-run each micro-batch **with** autograd and back-propagate the cached gradient of
   its embeddings into the towers (``sum(output * cached_grad)`` has exactly that
   gradient). The random state recorded in pass 1 is restored for each re-run, so
   dropout masks match and the result equals the gradient of the big batch.

Peak activation memory is that of one micro-batch; the cost is one extra forward pass.
With ``accum_steps == 1`` the plain forward/backward path is used instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from medvl.models.outputs import EncoderOutput

# EncoderOutput fields that carry gradient back to the towers.
DIFF_FIELDS = ("embeds", "local_embeds", "attention")


@dataclass
class MicroBatch:
    """One micro-batch moved to the device and tokenized.

    Attributes:
        image: ``(B, C, H, W)`` or ``(B, C, D, H, W)``.
        tokens: the model's tokenizer output (``input_ids``, ``attention_mask``, ...).
        labels: ``(B, K)`` finding labels or None.
        study_id: the batch's study ids (for error messages).
        index: ``(B,)`` dataset positions.
    """

    image: torch.Tensor
    tokens: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    study_id: list[str]
    index: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.image.shape[0])


@dataclass
class StepLoss:
    """The loss of one optimizer step, before any gradient is computed.

    The engine checks ``terms`` for non-finite values on every rank *before* calling
    ``backward``, so a bad step leaves weights and optimizer state untouched.
    """

    terms: dict[str, torch.Tensor]
    backward: Callable[[], None] = field(repr=False)


class RandState:
    """The CPU and (if used) CUDA generator state, to replay a forward pass exactly."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from the recorded state, then return the generators to where they were."""
        cpu_now = torch.get_rng_state()
        cuda_now = torch.cuda.get_rng_state(self.device) if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:
            torch.set_rng_state(cpu_now)
            if cuda_now is not None:
                torch.cuda.set_rng_state(cuda_now, self.device)


def encode_pair(model: Any, mb: MicroBatch) -> tuple[EncoderOutput, EncoderOutput]:
    """Both towers on one micro-batch."""
    return model.encode_image(mb.image), model.encode_text(**mb.tokens)


def _as_float(out: EncoderOutput) -> EncoderOutput:
    """Differentiable fields in float32: losses run in full precision under autocast."""
    changes = {
        name: getattr(out, name).float()
        for name in DIFF_FIELDS
        if isinstance(getattr(out, name), torch.Tensor) and getattr(out, name).is_floating_point()
    }
    return replace(out, **changes)


def _pad_tokens(t: torch.Tensor, n: int, value: Any) -> torch.Tensor:
    """Pad dim 1 of ``(B, N, ...)`` to ``n``."""
    extra = n - t.shape[1]
    if extra == 0:
        return t
    pad = [0, 0] * (t.ndim - 2) + [0, extra]
    return F.pad(t, pad, value=value)


def concat_outputs(outs: Sequence[EncoderOutput]) -> EncoderOutput:
    """Concatenate micro-batch outputs along the batch, padding local tokens to a common N.

    Text micro-batches are padded to their own longest report, so ``N`` differs between
    them; padded positions get ``local_mask`` False and zero attention.
    """
    first = outs[0]
    kw: dict[str, Any] = {"embeds": torch.cat([o.embeds for o in outs]), "grid": first.grid}
    if first.local_embeds is not None:
        # every micro-batch of one tower has the same fields as the first
        local = [_present(o.local_embeds) for o in outs]
        n = max(t.shape[1] for t in local)
        kw["local_embeds"] = torch.cat([_pad_tokens(t, n, 0.0) for t in local])
        if first.local_mask is not None:
            kw["local_mask"] = torch.cat([_pad_tokens(_present(o.local_mask), n, False) for o in outs])
        if first.attention is not None:
            kw["attention"] = torch.cat([_pad_tokens(_present(o.attention), n, 0.0) for o in outs])
    if first.words is not None:
        kw["words"] = [w for o in outs for w in (o.words or [[]] * o.embeds.shape[0])]
    return EncoderOutput(**kw)


def _present(t: torch.Tensor | None) -> torch.Tensor:
    if t is None:
        raise ValueError("micro-batch outputs differ in their fields")
    return t


def _cached_leaves(out: EncoderOutput) -> EncoderOutput:
    """A copy whose differentiable fields are fresh float32 leaves that collect gradient."""
    changes: dict[str, Any] = {}
    for name in DIFF_FIELDS:
        t = getattr(out, name)
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            changes[name] = t.detach().float().requires_grad_(True)
    return replace(out, **changes)


def _surrogate(out: EncoderOutput, cached: EncoderOutput, start: int) -> torch.Tensor:
    """``sum(output * cached_grad)`` over the differentiable fields of one micro-batch.

    Its gradient with respect to the tower parameters is the cached gradient pushed
    through the towers (a vector-Jacobian product).
    """
    total = out.embeds.new_zeros((), dtype=torch.float32)
    b = out.embeds.shape[0]
    for name in DIFF_FIELDS:
        t, leaf = getattr(out, name), getattr(cached, name)
        if not isinstance(t, torch.Tensor) or not t.requires_grad or leaf is None or leaf.grad is None:
            continue  # e.g. a frozen tower: nothing to push back
        g = leaf.grad[start:start + b]
        if t.ndim >= 2 and name != "embeds":
            g = g[:, : t.shape[1]]  # drop the padding added by concat_outputs
        total = total + (t.float() * g).sum()
    return total


def _labels(mbs: Sequence[MicroBatch]) -> torch.Tensor | None:
    labels = [mb.labels for mb in mbs]
    if any(t is None for t in labels):
        return None
    return torch.cat([t for t in labels if t is not None])


def contrastive_step(
    model: Any,
    loss_fn: torch.nn.Module,
    micro_batches: Sequence[MicroBatch],
    *,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    scale: Callable[[torch.Tensor], torch.Tensor] = lambda loss: loss,
    epoch: int = 0,
) -> StepLoss:
    """Forward one optimizer step; the returned ``backward`` fills ``.grad`` of all parameters.

    Args:
        model: a dual encoder (``encode_image``, ``encode_text``, ``logit_scale``).
        loss_fn: an ``AlignmentLoss``; returns named terms and the total under ``loss``.
        micro_batches: the non-empty micro-batches of this step on this rank.
        autocast: factory of the mixed-precision context (``contextlib.nullcontext`` in fp32).
        scale: the loss scaler's ``scale`` (fp16) or identity.
        epoch: passed to the loss (some terms start later in training).
    """
    logit_scale = getattr(model, "logit_scale", None)
    if len(micro_batches) == 1:
        mb = micro_batches[0]
        with autocast():
            img, txt = encode_pair(model, mb)
        terms = loss_fn(_as_float(img), _as_float(txt), logit_scale=logit_scale,
                        labels=mb.labels, epoch=epoch)
        return StepLoss(terms, lambda: scale(terms["loss"]).backward())

    # Pass 1: embed every micro-batch without autograd, remembering the random state.
    states, imgs, txts = [], [], []
    for mb in micro_batches:
        states.append(RandState(mb.image.device))
        with torch.no_grad(), autocast():
            img, txt = encode_pair(model, mb)
        imgs.append(img)
        txts.append(txt)
    img_all = _cached_leaves(concat_outputs(imgs))
    txt_all = _cached_leaves(concat_outputs(txts))
    del imgs, txts
    # Pass 2: the loss over the whole effective batch.
    terms = loss_fn(img_all, txt_all, logit_scale=logit_scale, labels=_labels(micro_batches), epoch=epoch)

    def backward() -> None:
        # Gradient reaches the cached embeddings, logit_scale and the loss's own parameters.
        scale(terms["loss"]).backward()
        # Pass 3: push the cached gradient through the towers, one micro-batch at a time.
        start = 0
        for mb, state in zip(micro_batches, states, strict=True):
            with state.replay(), autocast():
                img, txt = encode_pair(model, mb)
            surrogate = _surrogate(img, img_all, start) + _surrogate(txt, txt_all, start)
            if surrogate.requires_grad:
                surrogate.backward()
            start += mb.size

    return StepLoss(terms, backward)

