"""On-disk cache of a frozen text tower's report features.

When the text tower is frozen (``model.text.freeze: true`` and no LoRA), a report's
tower output never changes during training, so it is computed once and read back in
later epochs; only the projection heads run. Entries are keyed by a fingerprint of
the tower (its config and the bytes of its weights) and the SHA-256 of the report's
tokens (the ids and word boundaries the tower sees, i.e. the text after tokenisation
and truncation), so a different tower or an edited report never hits a stale entry.
Keying by tokens lets the cache sit behind ``encode_text(**model.tokenize(texts))``,
the path the training engine takes, as well as ``embed_texts``.

What is cached is the unprojected :class:`~medvl.models.text_base.TextFeatures` of
one report (pooled feature, word features, CLS attention, words), one safetensors
file per report under ``<dir>/<tower fingerprint>/<hash[:2]>/<hash>.safetensors``.
"""

from __future__ import annotations

import hashlib
import json
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from medvl.atomic import atomic_path
from medvl.errors import ModelError
from medvl.models.text_base import TextEncoder, TextFeatures


def tower_fingerprint(tower: TextEncoder) -> str:
    """SHA-256 (first 16 hex digits) of the tower's config, tokenizer vocabulary and weights."""
    from medvl.config import to_dict

    h = hashlib.sha256()
    h.update(json.dumps(to_dict(tower.cfg), sort_keys=True, default=str).encode())
    h.update(str(len(tower.tokenizer)).encode())
    for name, t in sorted(tower.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def token_key(ids: torch.Tensor, word_ids: torch.Tensor) -> str:
    """SHA-256 of one report's real token ids and word ids (1-D, padding removed)."""
    h = hashlib.sha256(ids.to(torch.int64).cpu().numpy().tobytes())
    h.update(word_ids.to(torch.int64).cpu().numpy().tobytes())
    return h.hexdigest()


class TextFeatureCache:
    """Read-through cache of a frozen text tower's features.

    Args:
        directory: cache root (shared by several towers; each gets a subfolder).
        tower: the frozen text tower.
        memory_items: entries also kept in RAM (later epochs skip the disk).

    Raises:
        ModelError: the tower is trainable (its features would go stale).
    """

    def __init__(self, directory: str | PathLike[str], tower: TextEncoder, *, memory_items: int = 200_000) -> None:
        if any(p.requires_grad for p in tower.parameters()):
            raise ModelError(
                "the text feature cache needs a frozen text tower", field="model.text.cache_dir",
                expected="model.text.freeze: true and lora_rank: 0",
            )
        self.tower = tower
        self.fingerprint = tower_fingerprint(tower)
        self.root = Path(directory) / self.fingerprint
        self.memory_items = memory_items
        self._memory: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def _read(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                entry: dict[str, Any] = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open is not a dict
                entry["words"] = json.loads((fh.metadata() or {}).get("words", "[]"))
        except Exception:  # noqa: BLE001 - a torn or foreign file is recomputed, not fatal
            return None
        self._remember(key, entry)
        return entry

    def _remember(self, key: str, entry: dict[str, Any]) -> None:
        if len(self._memory) < self.memory_items:
            self._memory[key] = entry

    def _write(self, key: str, entry: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in entry.items() if isinstance(v, torch.Tensor)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"words": json.dumps(entry["words"])})
        self._remember(key, entry)

    @torch.no_grad()
    def features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        word_ids: torch.Tensor | None = None,
    ) -> TextFeatures:
        """Tower features of a token batch: cached rows read back, the rest computed and stored.

        Args:
            input_ids: ``(B, L)`` from ``tokenize``.
            attention_mask: ``(B, L)``.
            word_ids: ``(B, L)``; recovered as the tower does when omitted.
        """
        self.tower.check_ids(input_ids, attention_mask)
        if word_ids is None:
            word_ids = self.tower.fallback_word_ids(input_ids, attention_mask)
        real = attention_mask.bool()
        keys = [token_key(input_ids[b][real[b]], word_ids[b][real[b]]) for b in range(len(input_ids))]
        entries: list[dict[str, Any] | None] = [self._read(k) for k in keys]
        todo = [i for i, e in enumerate(entries) if e is None]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            sel = torch.tensor(todo, device=input_ids.device)
            feats = self.tower(input_ids=input_ids[sel], attention_mask=attention_mask[sel],
                               word_ids=word_ids[sel])
            for row, i in enumerate(todo):
                n = int(feats.mask[row].sum())
                entry = {
                    "pooled": feats.pooled[row].float().cpu(),
                    "tokens": feats.tokens[row, :n].float().cpu(),
                    "words": feats.words[row],
                }
                if feats.attention is not None:
                    entry["attention"] = feats.attention[row, :n].float().cpu()
                self._write(keys[i], entry)
                entries[i] = entry
        return _collate([e for e in entries if e is not None], input_ids.device)


def _collate(entries: list[dict[str, Any]], device: torch.device | str) -> TextFeatures:
    width = max([1, *(e["tokens"].shape[0] for e in entries)])
    dim = entries[0]["pooled"].shape[0]
    b = len(entries)
    tokens = torch.zeros(b, width, dim)
    mask = torch.zeros(b, width, dtype=torch.bool)
    with_attn = all("attention" in e for e in entries)
    attention = torch.zeros(b, width) if with_attn else None
    for i, e in enumerate(entries):
        n = e["tokens"].shape[0]
        tokens[i, :n] = e["tokens"]
        mask[i, :n] = True
        if attention is not None:
            attention[i, :n] = e["attention"]
    return TextFeatures(
        pooled=torch.stack([e["pooled"] for e in entries]).to(device),
        tokens=tokens.to(device), mask=mask.to(device), words=[list(e["words"]) for e in entries],
        attention=None if attention is None else attention.to(device),
    )
