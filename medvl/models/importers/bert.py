"""BERT-family text towers from any of the forms they ship in.

* a Hugging Face directory transformers knows (BioClinicalBERT, PubMedBERT, RoBERTa...);
* CXR-BERT (``model_type: cxr-bert``, a ``BertForMaskedLM`` subclass behind remote
  code): its config is a ``BertConfig`` plus ``projection_size``, its weights carry the
  BERT encoder under ``bert.``; only those are read, no remote code runs;
* the BERT weights inside another checkpoint (open_clip's ``text.transformer.``,
  MedCLIP's ``text_model.model.``), whose architecture is read off the tensor shapes
  (heads: hidden / 64, as every released BERT base and large) unless a config is given.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from medvl.errors import CheckpointError
from medvl.models.importers.base import (
    from_pretrained,
    hf_from_state,
    load_state,
    read_json,
    take,
)

#: config.json keys that are not BertConfig fields (remote-code classes add them)
_NOT_BERT = ("auto_map", "architectures", "model_type", "projection_size", "_name_or_path",
             "transformers_version", "torch_dtype", "dtype")


def bert_config_from_state(state: dict[str, torch.Tensor], *, source: Path,
                           config: dict[str, Any] | None = None) -> Any:
    """A ``BertConfig`` for the BERT weights ``state`` (keys without a prefix).

    Args:
        state: BertModel weights.
        source: named in errors.
        config: known config fields (a BERT ``config.json``); checked against the shapes.

    Raises:
        CheckpointError: the weights are not a BERT encoder, or contradict ``config``.
    """
    from transformers import BertConfig

    try:
        vocab, hidden = state["embeddings.word_embeddings.weight"].shape
        max_pos = state["embeddings.position_embeddings.weight"].shape[0]
        type_vocab = state["embeddings.token_type_embeddings.weight"].shape[0]
        intermediate = state["encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"not BERT weights: {exc.args[0]} is missing", path=source,
                              expected="a BERT encoder (embeddings.*, encoder.layer.N.*)") from None
    layers = len({int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    inferred = {"vocab_size": int(vocab), "hidden_size": int(hidden),
                "num_hidden_layers": layers, "intermediate_size": int(intermediate),
                "max_position_embeddings": int(max_pos), "type_vocab_size": int(type_vocab)}
    fields = {k: v for k, v in (config or {}).items() if k not in _NOT_BERT}
    for key, value in inferred.items():
        if key in fields and int(fields[key]) != value:
            raise CheckpointError(f"config says {key}={fields[key]}, the weights {value}",
                                  path=source, field=key)
    fields.update(inferred)
    fields.setdefault("num_attention_heads", max(1, int(hidden) // 64))
    return BertConfig(**fields)


def load_bert_weights(state: dict[str, torch.Tensor], *, source: Path, what: str,
                      config: dict[str, Any] | None = None) -> Any:
    """A ``BertModel`` (no pooler) holding ``state``; the NSP pooler, if any, is dropped."""
    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    bert_config = bert_config_from_state(state, source=source, config=config)
    return hf_from_state("BertModel", bert_config, state, source=source, what=what,
                         add_pooling_layer=False)


def load_text_directory(directory: Path) -> Any:
    """The encoder of a local BERT-family directory, with no remote code.

    Raises:
        CheckpointError: no config, a decoder model, weights that do not load.
    """
    directory = Path(directory)
    config = read_json(directory / "config.json", what="text model config")
    model_type = str(config.get("model_type", ""))
    archs = " ".join(config.get("architectures") or [])
    if model_type == "cxr-bert" or (config.get("auto_map") and "Bert" in archs):
        weights = _weights_file(directory)
        state = load_state(weights)
        bert = take(state, "bert.") or state
        return load_bert_weights(bert, source=weights, what="BERT encoder of " + (model_type or archs),
                                 config=config)
    import transformers

    from medvl.models.text_bert import is_decoder_only

    try:
        auto_config = transformers.AutoConfig.from_pretrained(str(directory))
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds
        raise CheckpointError(f"transformers cannot read the config: {type(exc).__name__}",
                              path=directory, expected="a BERT-family model directory") from None
    if is_decoder_only(auto_config) or getattr(auto_config, "is_decoder", False):
        raise CheckpointError("this is a decoder model", path=directory,
                              expected="a BERT-family encoder")
    kwargs = {"add_pooling_layer": False} if model_type in ("bert", "roberta", "xlm-roberta") else {}
    return from_pretrained(transformers.AutoModel, directory, source=directory,
                           what="text encoder", **kwargs)


def _weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError("no weights file", path=directory,
                          expected="model.safetensors or pytorch_model.bin")
