"""A tiny real setup for the viewer tests: synthetic corpus, untrained tiny model, index."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ViewerData:
    """A tiny real setup: synthetic corpus, untrained tiny model, index built with it."""

    manifest: Path
    model_dir: Path
    index_dir: Path


#: Tiny model section (hidden 32, two layers), as the model room's tests use.
TINY_MODEL = {
    "embed_dim": 16,
    "image": {"name": "resnet10", "width": 8, "in_channels": 1, "image_size": 64},
    "text": {"name": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
             "intermediate_size": 64, "max_length": 32},
}


def save_model(model, model_dir: Path, data: dict) -> None:
    """Save an (untrained) model as a complete model directory: weights and its preprocessing."""
    from medvl.inference.preprocessing import Preprocessing

    model.save_pretrained(model_dir)
    Preprocessing.from_data_config(data).save(model_dir)


def load(model_dir: Path):
    import medvl

    return medvl.load(model_dir)


def build_viewer_data(root: Path, n_cxr: int = 10) -> ViewerData:
    """Generate ``n_cxr`` synthetic radiographs, save a tiny model and index them with it."""
    import torch

    from medvl.data.synth import generate_corpus
    from medvl.index import build_index
    from medvl.models import build_model

    manifest = generate_corpus(root / "corpus", n_cxr=n_cxr, n_ct=0, seed=0, image_size=64)
    torch.manual_seed(0)
    model = build_model(copy.deepcopy(TINY_MODEL)).eval()
    save_model(model, root / "model", {"dims": 2, "image_size": 64})
    build_index(load(root / "model"), manifest, root / "index", data_cfg={"batch_size": 5},
                config={"progress": False}, model_dir=root / "model")
    return ViewerData(manifest, root / "model", root / "index")


def build_viewer_data_3d(root: Path, n_ct: int = 3) -> ViewerData:
    """``n_ct`` synthetic chest CTs (NIfTI and a DICOM series), a tiny native-3D model, its index."""
    import torch

    from medvl.data.synth import generate_corpus
    from medvl.index import build_index
    from medvl.models import build_model

    manifest = generate_corpus(root / "corpus", n_cxr=0, n_ct=n_ct, seed=0, ct_size=(32, 32, 24),
                               ct_dicom_fraction=0.34)
    cfg = copy.deepcopy(TINY_MODEL)
    cfg["image"] = {"name": "resnet10-3d", "width": 8, "in_channels": 1, "volume": "native"}
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    save_model(model, root / "model", {"dims": 3, "image_size": [32, 32, 32]})
    build_index(load(root / "model"), manifest, root / "index", data_cfg={"batch_size": 3},
                config={"progress": False}, model_dir=root / "model")
    return ViewerData(manifest, root / "model", root / "index")
