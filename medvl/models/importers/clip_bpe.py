"""OpenAI's CLIP BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``) as a transformers tokenizer.

OpenAI's ``simple_tokenizer.py`` builds its vocabulary from the merges file alone:
the 256 byte symbols of ``bytes_to_unicode`` (printable bytes keep their character,
the others are shifted to 256 + n), the same symbols with the end-of-word marker
``</w>``, one entry per merge (the first 49152 - 256 - 2 merge lines after the header),
then ``<|startoftext|>`` and ``<|endoftext|>``. transformers' ``CLIPTokenizer`` reads
exactly that as ``vocab.json`` + ``merges.txt``; writing them lets CheXzero (which
ships the file) be imported without the network.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from medvl.errors import CheckpointError
from medvl.models.importers.base import tokenizer_dir

BPE_NAME = "bpe_simple_vocab_16e6.txt.gz"
_MERGES = 49152 - 256 - 2  # merges OpenAI keeps


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of GPT-2 / CLIP BPE."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return {b: table[b] for b in printable + [b for b in range(256) if b not in printable]}


def convert_bpe(bpe_path: Path, out: Path, *, max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` for a CLIP BPE file.

    Raises:
        CheckpointError: the file is unreadable or holds no merges.
    """
    try:
        if str(bpe_path).endswith(".gz"):
            with gzip.open(bpe_path) as f:
                raw = f.read()
        else:
            raw = Path(bpe_path).read_bytes()
        lines = raw.decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise CheckpointError(f"cannot read the BPE vocabulary: {exc}", path=bpe_path) from None
    merges = [tuple(line.split()) for line in lines[1:_MERGES + 1] if line.strip()]
    if not merges or any(len(m) != 2 for m in merges):
        raise CheckpointError("not a BPE merges file", path=bpe_path,
                              expected=f"OpenAI's {BPE_NAME}: a header line, then 'a b' merges")
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), "utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    "utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
              "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "do_lower_case": True}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), "utf-8")
    return out


def clip_tokenizer_dir(tokenizer: Path | None, *, source: Path, workdir: Path) -> Path:
    """A CLIP tokenizer directory: ``tokenizer`` itself, or converted from a BPE file.

    Looked for, in order: ``tokenizer`` (a directory, or a BPE ``.txt.gz``), tokenizer
    files or ``bpe_simple_vocab_16e6.txt.gz`` next to ``source``.

    Raises:
        CheckpointError: none found.
    """
    candidates = [Path(tokenizer)] if tokenizer else []
    candidates += [source.parent, source.parent / BPE_NAME]
    for cand in candidates:
        if cand.is_file() and cand.name.endswith((".txt.gz", ".txt")):
            return convert_bpe(cand, workdir / "clip-tokenizer")
        if cand.is_dir():
            try:
                return tokenizer_dir(cand, what="CLIP text tower")
            except CheckpointError:
                continue
    raise CheckpointError(
        "no CLIP tokenizer", path=tokenizer or source, field="--tokenizer",
        expected=f"a Hugging Face CLIP tokenizer directory or OpenAI's {BPE_NAME} "
        "(in the CLIP and CheXzero repositories)",
    )
