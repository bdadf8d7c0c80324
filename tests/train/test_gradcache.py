"""The feature cache gives the gradient of the whole effective batch."""

from __future__ import annotations

import contextlib

import torch
from train_fakes import FakeLoss, FakeModel, FakeStudies, collate

from medvl.models.outputs import EncoderOutput
from medvl.train.gradcache import MicroBatch, concat_outputs, contrastive_step


def _micro(model: FakeModel, batch: dict) -> MicroBatch:
    return MicroBatch(image=batch["image"], tokens=model.tokenize(batch["text"]), labels=batch["labels"],
                      study_id=batch["study_id"])


def _batches(sizes: list[int]) -> list[dict]:
    ds = FakeStudies("train", sum(sizes))
    out, start = [], 0
    for n in sizes:
        out.append(collate([ds[i] for i in range(start, start + n)]))
        start += n
    return out


def _grads(model: torch.nn.Module, loss_fn: torch.nn.Module) -> dict[str, torch.Tensor]:
    named = list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]
    return {n: p.grad.clone() for n, p in named}


def _reference(model, loss_fn, micro: list[MicroBatch]) -> tuple[float, dict[str, torch.Tensor]]:
    """Plain autograd through every micro-batch at once, towers called in the cache's order."""
    imgs, txts = [], []
    for mb in micro:
        imgs.append(model.encode_image(mb.image))
        txts.append(model.encode_text(**mb.tokens))
    terms = loss_fn(concat_outputs(imgs), concat_outputs(txts), logit_scale=model.logit_scale)
    terms["loss"].backward()
    return float(terms["loss"].detach()), _grads(model, loss_fn)


def test_cached_gradient_equals_full_batch_gradient_with_dropout() -> None:
    torch.manual_seed(0)
    model = FakeModel({"hidden": 16, "dim": 8, "dropout": 0.4})
    loss_fn = FakeLoss({"token_weight": 0.5})
    # different report lengths per micro-batch exercise the padding of local tokens
    micro = [_micro(model, b) for b in _batches([3, 4, 2])]
    assert len({mb.tokens["input_ids"].shape[1] for mb in micro}) > 1

    torch.manual_seed(11)
    step = contrastive_step(model, loss_fn, micro, autocast=contextlib.nullcontext)
    step.backward()
    got_loss, got = float(step.terms["loss"].detach()), _grads(model, loss_fn)

    model.zero_grad()
    loss_fn.zero_grad()
    torch.manual_seed(11)  # same dropout masks as the cache's first pass
    ref_loss, ref = _reference(model, loss_fn, micro)

    assert got_loss == ref_loss
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)
    assert got["logit_scale"].abs() > 0 and got["loss.token_temperature"].abs() > 0


def test_without_replaying_the_random_state_the_gradient_would_differ() -> None:
    """Guards the test above: with dropout, a second forward on fresh masks is not the same."""
    torch.manual_seed(0)
    model = FakeModel({"hidden": 16, "dim": 8, "dropout": 0.4})
    loss_fn = FakeLoss({})
    micro = [_micro(model, b) for b in _batches([3, 3])]
    torch.manual_seed(11)
    _, a = _reference(model, loss_fn, micro)
    model.zero_grad()
    loss_fn.zero_grad()
    torch.manual_seed(12)
    _, b = _reference(model, loss_fn, micro)
    assert not torch.allclose(a["image_proj.weight"], b["image_proj.weight"])


def test_concat_pads_local_tokens_and_masks() -> None:
    a = EncoderOutput(embeds=torch.ones(2, 3), local_embeds=torch.ones(2, 4, 3),
                      local_mask=torch.ones(2, 4, dtype=torch.bool), words=[["a"], ["b"]])
    b = EncoderOutput(embeds=torch.zeros(1, 3), local_embeds=torch.ones(1, 6, 3),
                      local_mask=torch.ones(1, 6, dtype=torch.bool), words=[["c"]])
    c = concat_outputs([a, b])
    assert c.embeds.shape == (3, 3) and c.local_embeds.shape == (3, 6, 3)
    assert c.local_mask.tolist() == [[True] * 4 + [False] * 2] * 2 + [[True] * 6]
    assert c.local_embeds[:2, 4:].abs().sum() == 0
    assert c.words == [["a"], ["b"], ["c"]]


def test_a_frozen_tower_gets_no_gradient_and_the_other_still_trains() -> None:
    torch.manual_seed(0)
    model = FakeModel({"hidden": 16, "dim": 8})
    loss_fn = FakeLoss({})
    for module in (model.word_embed, model.text_proj, model.word_proj):
        module.requires_grad_(False)
    micro = [_micro(model, b) for b in _batches([3, 3])]
    contrastive_step(model, loss_fn, micro, autocast=contextlib.nullcontext).backward()
    assert model.text_proj.weight.grad is None
    assert model.image_proj.weight.grad is not None and model.image_proj.weight.grad.abs().sum() > 0
