"""Writing an imported model: weights, config with the zero-shot rule, card, provenance."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from medvl.models.importers.base import Imported, sha256


def provenance(imported: Imported, *, fmt: str, licence: str | None, name: str | None,
               hub_name: str | None) -> dict[str, Any]:
    """The ``provenance.json`` record of an import.

    ``source`` names the weight files by file name and SHA-256 only: their location on
    this machine is not recorded (it can name people or servers).
    """
    files = [f"{p.name} (sha256 {sha256(p)})" for p in imported.source_files if Path(p).is_file()]
    try:
        version = metadata.version("medvl")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "name": name or imported.name,
        "format": fmt,
        "source": "; ".join(files) or "not recorded",
        "hub_name": hub_name or imported.hub_name,
        "licence": licence or "not stated at import: check the source model's licence or terms of use",
        "conversion": f"{imported.conversion} Imported with medvl {version}.",
        "notes": list(imported.notes),
    }


def write_imported(imported: Imported, out: Path, *, fmt: str, licence: str | None = None,
                   name: str | None = None, hub_name: str | None = None) -> Path:
    """Write ``imported`` to the (new, empty) directory ``out``."""
    model = imported.model
    model.zeroshot = imported.zeroshot
    model.provenance = provenance(imported, fmt=fmt, licence=licence, name=name, hub_name=hub_name)
    record = model.provenance
    card = {
        "title": f"{record['name']} (imported)",
        "training_data": "as released by the source model; medvl did not train it (see provenance.json)",
        "intended_use": "research use only; not a medical device. Use is governed by the source model's "
                        f"licence: {record['licence']}",
        "limitations": "; ".join(imported.notes) or "see the source model's card",
        "source_format": fmt,
        "source_files": record["source"],
        "hub_name": record["hub_name"] or "not recorded",
        "licence": record["licence"],
        "conversion": record["conversion"],
        "zero_shot_rule": (imported.zeroshot or {}).get("scoring", "none (towers not aligned)"),
    }
    model.save_pretrained(out, card=card, preprocessing=preprocessing(imported),
                          training={"loss": None, "local_heads_trained": False,
                                    "local_heads": "copies of the source's global projections"})
    return out


def preprocessing(imported: Imported) -> Any:
    """The source's preprocessing as a ``medvl.inference.Preprocessing``.

    The image is read and windowed as medvl always does (file window, MONOCHROME1
    inverted, grey), then mapped to the source's input: channels repeated to
    ``in_channels``, fitted to its grid (``fit``, ``resample``) and normalised with its
    ``mean``/``std``.
    """
    from medvl.config import from_dict
    from medvl.inference.preprocessing import (
        ImagePreprocessing,
        Preprocessing,
        TextPreprocessing,
    )

    image = from_dict(ImagePreprocessing, {"dims": 2, **imported.image}, where="image")
    text = from_dict(TextPreprocessing, dict(imported.text), where="text")
    out = Preprocessing(image=image, text=text)
    out.data_config()  # cross-field checks (one mean/std per channel...)
    return out
