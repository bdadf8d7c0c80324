"""Small fakes of the data, model and loss rooms, shaped as docs/contracts.md says.

They let the engine be tested on its own, in seconds: a learnable toy problem (image
= class pattern + noise, report = the class's sentence), a two-tower model with local
tokens and a learnable ``logit_scale``, and a symmetric InfoNCE loss plus a token term
that gathers negatives across ranks with gradients.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medvl.models.outputs import EncoderOutput
from medvl.train import Components

SENTENCES = [
    "no acute cardiopulmonary process",
    "small left pleural effusion",
    "right lower lobe consolidation concerning for pneumonia",
    "cardiomegaly with mild pulmonary edema",
]
K = len(SENTENCES)


class FakeStudies(Dataset):
    """``n`` studies of a split; unreadable ones return None and are recorded in ``skipped``."""

    def __init__(self, split: str, n: int, *, unreadable=(), nan_studies=(), seed: int = 0) -> None:
        self.split = split
        self.ids = [f"{split}{i:03d}" for i in range(n)]
        self.unreadable = set(unreadable)
        self.nan_studies = set(nan_studies)
        self.seed = seed + {"train": 0, "val": 1, "test": 2}[split] * 7919
        self.skipped: list[dict[str, Any]] = []
        g = torch.Generator().manual_seed(1234)
        self.patterns = torch.randn(K, 1, 8, 8, generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        sid = self.ids[i]
        if sid in self.unreadable:
            self.skipped.append({"study_id": sid, "path": f"{sid}.dcm", "error": "unreadable pixel data"})
            return None
        cls = (i * 7 + self.seed) % K
        g = torch.Generator().manual_seed(self.seed * 100_000 + i)
        image = self.patterns[cls] + 0.5 * torch.randn(1, 8, 8, generator=g)
        if sid in self.nan_studies:
            image = torch.full_like(image, float("nan"))
        labels = torch.full((K,), float("nan"))
        labels[cls] = 1.0
        return {"image": image, "text": SENTENCES[cls] + f" study {i % 3}", "labels": labels,
                "study_id": sid, "patient_id": f"p{sid}", "index": i}


def collate(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Drops unreadable studies; an all-unreadable batch comes out empty (B = 0)."""
    ok = [s for s in samples if s is not None]
    if not ok:
        return {"image": torch.zeros(0, 1, 8, 8), "text": [], "labels": torch.zeros(0, K),
                "study_id": [], "patient_id": [], "index": torch.zeros(0, dtype=torch.long)}
    return {
        "image": torch.stack([s["image"] for s in ok]),
        "text": [s["text"] for s in ok],
        "labels": torch.stack([s["labels"] for s in ok]),
        "study_id": [s["study_id"] for s in ok],
        "patient_id": [s["patient_id"] for s in ok],
        "index": torch.tensor([s["index"] for s in ok], dtype=torch.long),
    }


def build_dataloader(data_cfg: dict[str, Any], manifest_path: str, split: str, *, shuffle: bool,
                     distributed: bool = False, seed: int = 0) -> DataLoader:
    n = int(data_cfg.get(f"n_{split}", 0))
    ds = FakeStudies(split, n, unreadable=data_cfg.get("unreadable", ()),
                     nan_studies=data_cfg.get("nan_studies", ()))
    return DataLoader(ds, batch_size=int(data_cfg.get("batch_size", 4)), shuffle=shuffle, collate_fn=collate,
                      num_workers=int(data_cfg.get("num_workers", 0)), drop_last=bool(data_cfg.get("drop_last", False)))


class FakeModel(nn.Module):
    """Two tiny towers with global and local outputs, as ``MedVLModel`` has."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        hidden, dim = int(config.get("hidden", 16)), int(config.get("dim", 8))
        p = float(config.get("dropout", 0.0))
        self.vocab = 64
        self.image_body = nn.Sequential(nn.Linear(64, hidden), nn.GELU(), nn.Dropout(p))
        self.image_proj = nn.Linear(hidden, dim)
        self.patch_proj = nn.Linear(16, dim)
        self.word_embed = nn.Embedding(self.vocab, hidden)
        self.text_drop = nn.Dropout(p)
        self.text_proj = nn.Linear(hidden, dim)
        self.word_proj = nn.Linear(hidden, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        words = [t.split() for t in texts]
        n = max(len(w) for w in words)
        ids = torch.zeros(len(texts), n, dtype=torch.long)
        mask = torch.zeros(len(texts), n, dtype=torch.long)
        for i, ws in enumerate(words):
            for j, w in enumerate(ws):
                ids[i, j] = 1 + sum(map(ord, w)) % (self.vocab - 1)
                mask[i, j] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def encode_image(self, image: torch.Tensor) -> EncoderOutput:
        b = image.shape[0]
        h = self.image_body(image.reshape(b, -1))
        patches = image.reshape(b, 2, 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(b, 4, 16)  # (B, 4, 16)
        return EncoderOutput(embeds=self.image_proj(h), local_embeds=self.patch_proj(patches),
                             local_mask=torch.ones(b, 4, dtype=torch.bool), grid=(2, 2),
                             attention=torch.softmax(patches.mean(-1), dim=-1))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> EncoderOutput:
        h = self.text_drop(self.word_embed(input_ids))  # (B, N, H)
        m = attention_mask.unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return EncoderOutput(embeds=self.text_proj(pooled), local_embeds=self.word_proj(h),
                             local_mask=attention_mask.bool())

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_model

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self.config))
        save_model(self, str(path / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> FakeModel:
        from safetensors.torch import load_model

        path = Path(path)
        model = cls(json.loads((path / "config.json").read_text()))
        load_model(model, str(path / "model.safetensors"))
        return model


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the gradient over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]
    return x, 0


class FakeLoss(nn.Module):
    """Symmetric InfoNCE over gathered negatives (open_clip's local-loss form) plus a token term.

    The token term has its own learnable weight, so a loss with parameters is covered.
    Both terms are means over this rank's rows; averaging over ranks gives the global mean.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.token_weight = float(config.get("token_weight", 0.1))
        self.token_temperature = nn.Parameter(torch.tensor(0.0))

    def forward(self, image: EncoderOutput, text: EncoderOutput, *, logit_scale: torch.Tensor,
                labels: torch.Tensor | None = None, epoch: int = 0) -> dict[str, torch.Tensor]:
        img = F.normalize(image.embeds, dim=-1)
        txt = F.normalize(text.embeds, dim=-1)
        all_img, offset = gather(img)
        all_txt, _ = gather(txt)
        scale = logit_scale.exp().clamp(max=100)
        target = torch.arange(img.shape[0]) + offset
        instance = 0.5 * (F.cross_entropy(scale * img @ all_txt.T, target)
                          + F.cross_entropy(scale * txt @ all_img.T, target))
        # token term: each image patch / word towards its partner's global embedding
        w = image.attention if image.attention is not None else image.local_mask.float()
        patch = (F.normalize(image.local_embeds, dim=-1) * txt[:, None]).sum(-1)  # (B, N)
        word = (F.normalize(text.local_embeds, dim=-1) * img[:, None]).sum(-1)
        wm = text.local_mask.float()
        tok = -(patch * w).sum(1).mean() - ((word * wm).sum(1) / wm.sum(1)).mean()
        token = tok * self.token_temperature.exp()
        return {"instance_loss": instance, "token_loss": self.token_weight * token,
                "loss": instance + self.token_weight * token}


def components() -> Components:
    return Components(build_model=FakeModel, build_loss=lambda cfg, model: FakeLoss(cfg),
                      build_dataloader=build_dataloader, raw_sections=("data", "model", "loss"))


def tiny_config(**train: Any) -> dict[str, Any]:
    """A config for the fakes: 24 train and 8 val studies, batch 4, two epochs."""
    return {
        "seed": 3,
        "data": {"manifest": "fake.jsonl", "batch_size": 4, "n_train": 24, "n_val": 8},
        "model": {"hidden": 16, "dim": 8, "dropout": 0.0},
        "loss": {"token_weight": 0.1},
        "train": {"epochs": 2, "lr": 1e-2, "warmup_steps": 2, "log_every": 1, "progress": False, **train},
    }


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}
