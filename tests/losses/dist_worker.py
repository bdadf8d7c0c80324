"""Worker for test_losses_distributed.py, launched by ``torch.distributed.run``.

Each case builds the same global batch on every rank (fixed seed), pushes it
through a tiny shared projection model, and computes the alignment loss twice:

* ``ref``: before any process group exists, on the whole batch in one process;
* ``dist``: under gloo with this rank's slice only, the model wrapped in DDP (which
  averages parameter gradients over ranks) and loss parameters averaged with
  :func:`medvl.losses.distributed.average_gradients`.

Both results are saved to ``<out>/rank<r>.pt`` for the test to compare. Ranks hold
unequal slices on purpose (3 and 5 samples), as a smaller last batch would; one case
leaves rank 0 with an empty batch (every study of its slice skipped), which must
still take part in the collectives and leave rank 1 with the one-process result.

The ``engine`` cases drive the model without DDP, as ``medvl.train`` does: every
parameter (model and loss) goes through ``average_gradients``, then one AdamW step
with weight decay. With prototypes frozen (epoch 0) and a fixed temperature, no rank
produces a gradient for the prototypes or ``logit_scale``: they must keep
``grad = None`` and the step must leave them where one process leaves them.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from medvl.losses import build_loss
from medvl.losses.distributed import average_gradients
from medvl.models.outputs import EncoderOutput

B, D_IN, D, K, N, T = 8, 6, 4, 3, 5, 4
SPLITS = (3, 5)
ALL_TERMS = {
    "instance": {"local_loss": True},
    "token": {"weight": 0.5, "attention": "learned", "num_heads": 2},
    "prototype": {"weight": 0.5, "num_prototypes": 7, "freeze_epochs": 0},
}

CASES: dict[str, dict] = {
    "full": {"terms": {"instance": {}}},
    "local": {"terms": {"instance": {"local_loss": True, "image_to_text_weight": 0.75,
                                     "text_to_image_weight": 0.25}}},
    "soft": {"terms": {"instance": {"soft_targets": True, "label_smoothing": 0.1,
                                    "label_temperature": 0.5}}},
    "soft_local": {"terms": {"instance": {"soft_targets": True, "local_loss": True,
                                          "label_temperature": 0.5}}},
}
EXTRA_CASES: dict[str, dict] = {
    "all_terms": {"terms": ALL_TERMS},
    "all_terms_empty_rank": {"terms": ALL_TERMS, "splits": (0, 8)},
    "gloria": {"terms": {"gloria": {"similarity_scale": 2.0, "aggregation": "mean"}}},
    "filip": {"terms": {"filip": {"temperature": 0.5, "text_to_image_weight": 0.75}}},
    "engine_frozen_prototypes": {
        "terms": {"instance": {"temperature": 0.1},
                  "token": {"weight": 0.5},
                  "prototype": {"weight": 0.5, "num_prototypes": 7, "freeze_epochs": 1}},
        "engine": True, "epoch": 0,
    },
    "engine_frozen_prototypes_empty_rank": {
        "terms": {"instance": {"temperature": 0.1},
                  "prototype": {"weight": 0.5, "num_prototypes": 7, "freeze_epochs": 1}},
        "engine": True, "epoch": 0, "splits": (0, 8),
    },
    "engine_prototypes_training": {
        "terms": {"instance": {}, "prototype": {"weight": 0.5, "num_prototypes": 7, "freeze_epochs": 1}},
        "engine": True, "epoch": 1,
    },
}


class Towers(nn.Module):
    """Linear global and local projections standing in for the two encoders."""

    def __init__(self) -> None:
        super().__init__()
        self.img = nn.Linear(D_IN, D)
        self.txt = nn.Linear(D_IN, D)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, xi, xt, li, lt, mi, mt, ai, at):
        image = EncoderOutput(self.img(xi), self.img(li), mi, (N,), ai)
        text = EncoderOutput(self.txt(xt), self.txt(lt), mt, None, at)
        return image, text


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    labels = torch.randint(-1, 2, (B, K), generator=g).double()
    labels[torch.rand(B, K, generator=g) < 0.3] = float("nan")
    labels[:2] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # two identical reports
    mt = torch.ones(B, T, dtype=torch.bool)
    mt[:3, -1] = False  # rank 0's reports are shorter: its batch is padded to T - 1 words
    mt[5, 1:] = False
    return {
        "xi": torch.randn(B, D_IN, generator=g, dtype=torch.float64),
        "xt": torch.randn(B, D_IN, generator=g, dtype=torch.float64),
        "li": torch.randn(B, N, D_IN, generator=g, dtype=torch.float64),
        "lt": torch.randn(B, T, D_IN, generator=g, dtype=torch.float64),
        "mi": torch.ones(B, N, dtype=torch.bool),
        "mt": mt,
        "ai": torch.rand(B, N, generator=g, dtype=torch.float64),
        "at": torch.rand(B, T, generator=g, dtype=torch.float64),
        "labels": labels,
    }


def run(model: nn.Module, loss: nn.Module, batch: dict, rows: slice, *, ddp: bool, case: dict) -> dict:
    if case.get("engine"):
        return run_engine_style(model, loss, batch, rows, ddp=ddp, epoch=case["epoch"])
    part = {k: v[rows] for k, v in batch.items()}
    # Like a collate function, pad the words only to the longest report of this slice.
    longest = int(part["mt"].sum(dim=1).max()) if part["mt"].shape[0] else 1
    part.update(lt=part["lt"][:, :longest], mt=part["mt"][:, :longest], at=part["at"][:, :longest])
    # As docs/losses.md advises: when no term uses logit_scale, DDP must be told that
    # a parameter goes unused, or it never reduces the bucket holding it.
    net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=not loss.uses_logit_scale) \
        if ddp else model
    image, text = net(part["xi"], part["xt"], part["li"], part["lt"], part["mi"], part["mt"],
                      part["ai"], part["at"])
    out = loss(image, text, logit_scale=model.logit_scale, labels=part["labels"], epoch=1)
    out["loss"].backward()
    if ddp:
        average_gradients(loss.parameters())
    grads = {f"model.{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads.update({f"loss.{n}": p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None})
    return {"values": {k: v.detach().clone() for k, v in out.items()}, "grads": grads}


def run_engine_style(model: nn.Module, loss: nn.Module, batch: dict, rows: slice, *, ddp: bool,
                     epoch: int) -> dict:
    """One training step as medvl.train takes it: no DDP wrapper, average_gradients, AdamW."""
    part = {k: v[rows] for k, v in batch.items()}
    longest = int(part["mt"].sum(dim=1).max()) if part["mt"].shape[0] else 1
    part.update(lt=part["lt"][:, :longest], mt=part["mt"][:, :longest], at=part["at"][:, :longest])
    params = list(model.parameters()) + list(loss.parameters())
    # Matrices decayed, as medvl.train.optim does; a large decay makes a wrong step visible.
    decay = [p for p in params if p.ndim >= 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.5},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                                  lr=0.05)
    image, text = model(part["xi"], part["xt"], part["li"], part["lt"], part["mi"], part["mt"],
                        part["ai"], part["at"])
    out = loss(image, text, logit_scale=model.logit_scale, labels=part["labels"], epoch=epoch)
    out["loss"].backward()
    if ddp:
        average_gradients(params)
    grads = {f"model.{n}": p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    grads.update({f"loss.{n}": p.grad.clone() for n, p in loss.named_parameters() if p.grad is not None})
    optimizer.step()
    after = {f"model.{n}": p.detach().clone() for n, p in model.named_parameters()}
    after.update({f"loss.{n}": p.detach().clone() for n, p in loss.named_parameters()})
    return {"values": {k: v.detach().clone() for k, v in out.items()}, "grads": grads, "params": after}


def main(out_dir: str, cases: dict[str, dict]) -> None:
    torch.manual_seed(0)
    batch = make_batch()
    models, losses, results = {}, {}, {}
    for name, case in cases.items():
        torch.manual_seed(0)
        model = Towers().double()
        loss = build_loss({"terms": case["terms"]}, embed_dim=D).double()
        models[name], losses[name] = model, loss
        ref_model, ref_loss = copy.deepcopy(model), copy.deepcopy(loss)
        results[name] = {"ref": run(ref_model, ref_loss, batch, slice(0, B), ddp=False, case=case)}

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for name, case in cases.items():
        splits = case.get("splits", SPLITS)
        start = sum(splits[:rank])
        rows = slice(start, start + splits[rank])
        results[name]["dist"] = run(models[name], losses[name], batch, rows, ddp=True, case=case)
    torch.save({"rank": rank, "world": dist.get_world_size(), "results": results},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    chosen = dict(CASES)
    if "--all-terms" in sys.argv:
        chosen.update(EXTRA_CASES)
    main(sys.argv[1], chosen)
