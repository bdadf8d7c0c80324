"""Small, transparent fakes of a MedVLModel and of data batches for eval and index tests.

The fake model lives in a "concept space": finding f has a fixed unit direction e_f.
An image is a ``(1, 3, 3)`` tensor whose 9 pixels are the presence (0/1) of the 9
findings of ``finding_names()`` (pixel p stands for finding p, row-major). Its global
embedding is ``base + sum_f pixel_f * e_f``; its local token at pixel p is
``pixel_p * e_p`` (grid ``(3, 3)``). A text mentioning finding f's name adds ``e_f``,
or subtracts it when negated ("no ..."). So a model with ``noise=0`` is a perfect
zero-shot classifier and retriever, and ``scramble=True`` makes the image tower
unrelated to the text tower (a model that learnt nothing).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from medvl.findings import finding_names
from medvl.models.outputs import EncoderOutput

NAMES = {
    "cardiomegaly": ["cardiomegaly", "enlarged cardiac", "heart is enlarged", "heart size is increased"],
    "pleural_effusion": ["effusion", "pleural fluid", "costophrenic angle"],
    "pneumothorax": ["pneumothorax", "pleural line"],
    "consolidation": ["consolidation", "airspace"],
    "nodule": ["nodule", "nodular"],
    "atelectasis": ["atelectasis"],
    "edema": ["edema", "congestion"],
    "support_device": ["support device", "support line", "tube"],
    "no_finding": ["no acute", "normal chest", "lungs are clear and the heart"],
}
NEGATION = re.compile(r"^(no|there is no|without)\b|no evidence|is normal|are sharp|are clear|within normal|is seen\.?$")


class FakeModel(torch.nn.Module):
    """Concept-space dual encoder (see the module docstring)."""

    def __init__(self, dim: int = 16, *, noise: float = 0.0, scramble: bool = False, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        k = len(finding_names())
        dirs = torch.nn.functional.normalize(torch.randn(k + 1, dim, generator=g), dim=-1)
        self.register_buffer("dirs", dirs[:k])  # (K, D)
        self.register_buffer("base", dirs[k] * 0.5)
        img = dirs[:k]
        if scramble:
            img = torch.nn.functional.normalize(torch.randn(k, dim, generator=g), dim=-1)
        self.register_buffer("img_dirs", img)
        self.noise = noise
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
        self.dummy = torch.nn.Linear(1, 1)  # gives the model a parameter and a device
        torch.nn.init.zeros_(self.dummy.weight)  # deterministic, so equal seeds give equal fingerprints
        torch.nn.init.zeros_(self.dummy.bias)
        self.config = {"name": "fake", "dim": dim, "noise": noise, "scramble": scramble, "seed": seed}
        self.image_calls = 0

    def encode_image(self, image: torch.Tensor) -> EncoderOutput:
        self.image_calls += 1
        b = image.shape[0]
        if image.ndim == 4 and tuple(image.shape[-2:]) != (3, 3):
            # A larger picture: each of the 3x3 cells is one finding's pixel.
            image = torch.nn.functional.adaptive_avg_pool2d(image.float(), (3, 3))
        pix = image.reshape(b, -1)[:, : self.dirs.shape[0]].float()  # (B, K)
        embeds = self.base + pix @ self.img_dirs
        if self.noise:
            g = torch.Generator().manual_seed(int(image.sum().item() * 1000) % (2**31))
            embeds = embeds + self.noise * torch.randn(embeds.shape, generator=g)
        local = pix[:, :, None] * self.img_dirs[None]  # (B, 9, D)
        return EncoderOutput(embeds=embeds, local_embeds=local,
                             local_mask=torch.ones(b, local.shape[1], dtype=torch.bool), grid=(3, 3))

    def _text_vec(self, text: str) -> torch.Tensor:
        v = self.base.clone()
        for sentence in re.split(r"[.\n]", text.lower()):
            s = sentence.strip()
            if not s:
                continue
            negated = bool(NEGATION.search(s))
            for j, f in enumerate(finding_names()):
                if any(n in s for n in NAMES[f]):
                    # "No acute process" affirms no_finding; only "abnormal" negates it.
                    neg = "abnormal" in s if f == "no_finding" else negated
                    v = v + (-1.0 if neg else 1.0) * self.dirs[j]
        return v

    def embed_texts(self, texts: list[str]) -> EncoderOutput:
        return EncoderOutput(embeds=torch.stack([self._text_vec(t) for t in texts]))


def label_image(labels: dict[str, int]) -> torch.Tensor:
    """The ``(1, 3, 3)`` image of a label mapping (present findings are 1)."""
    pix = torch.zeros(9)
    for j, f in enumerate(finding_names()):
        if labels.get(f) == 1:
            pix[j] = 1.0
    return pix.reshape(1, 3, 3)


def report_for(labels: dict[str, int]) -> str:
    """A report naming the present findings (or a normal report)."""
    present = [NAMES[f][0] for f in finding_names() if labels.get(f) == 1 and f != "no_finding"]
    return ". ".join(f"There is {p}" for p in present) + "." if present else "No acute cardiopulmonary process."


def make_rows(n: int, seed: int = 0, split: str = "test", prefix: str = "s") -> list[dict[str, Any]]:
    """Manifest rows with random labels (each finding present with probability 0.3)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        labels = {f: int(rng.random() < 0.3) for f in finding_names() if f != "no_finding"}
        labels["no_finding"] = int(not any(labels.values()))
        rows.append({
            "study_id": f"{prefix}{i:04d}", "patient_id": f"p{prefix}{i:04d}", "split": split,
            "modality": "CR", "dims": 2, "image": f"img/{prefix}{i:04d}.png",
            "report": {"findings": report_for(labels)}, "labels": labels,
        })
    return rows


def batches_for(rows: list[dict[str, Any]], batch_size: int = 8) -> list[dict[str, Any]]:
    """Batches in the data contract's layout for manifest rows."""
    out = []
    names = finding_names()
    for lo in range(0, len(rows), batch_size):
        chunk = rows[lo : lo + batch_size]
        labels = torch.tensor(
            [[float(r["labels"].get(f, np.nan)) for f in names] for r in chunk], dtype=torch.float32
        )
        out.append({
            "image": torch.stack([label_image(r["labels"]) for r in chunk]),
            "text": [r["report"]["findings"] for r in chunk],
            "labels": labels,
            "study_id": [r["study_id"] for r in chunk],
            "patient_id": [r["patient_id"] for r in chunk],
            "index": torch.arange(lo, lo + len(chunk)),
        })
    return out


class FakeDataset:
    """Stands in for the data room's dataset: only its ``skipped`` records are read."""

    def __init__(self) -> None:
        self.skipped: list[dict[str, str]] = []


def fake_split_batches(data_cfg: Any, manifest_path: Any, split: str | None, batch_size: int = 8) -> tuple[Any, list[Any]]:
    """Drop-in for ``medvl.inference.embedding.split_batches`` that reads the manifest's rows.

    A row whose image path contains ``broken`` is skipped and recorded, as the data
    room does with an unreadable study.
    """
    from medvl.data.manifest import read_manifest

    rows = [r.to_json() for r in read_manifest(manifest_path, split=split)]
    ds = FakeDataset()
    good = []
    for r in rows:
        if "broken" in r["image"]:
            ds.skipped.append({"study_id": r["study_id"], "path": r["image"], "error": "ImageReadError: broken"})
        else:
            good.append(r)
    return iter(batches_for(good, batch_size)), [ds]
