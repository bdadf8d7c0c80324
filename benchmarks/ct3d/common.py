"""What every part of the CT benchmark shares: the corpus, the data section, the arms.

The corpus is the synthetic chest CT of ``medvl synth`` (``medvl/data/synth/ct.py``)
rendered directly on a small grid, so the model sees the volume at its rendered
resolution and nothing is lost to resampling:

* 64 x 64 voxels in-plane over a 34-40 cm field of view (5.3-6.3 mm pixels) and 32
  axial slices over 25-30 cm (7.8-9.4 mm): a nodule (10-28 mm across) covers 2-5
  pixels in-plane and 1-3 slices; consolidation, atelectasis bands, effusions and
  pneumothoraces cover tens to hundreds of voxels.
* the lung window (-1350..150 HU), in which a solid nodule (~35 HU) sits ~0.6 above
  aerated lung (~-820 HU), effusion (~12 HU) likewise, and pneumothorax (-995 HU) ~0.1
  below it (noise ~0.01); ``visibility.py`` measures these contrasts on the model grid.

Four arms share the data, the text tower, the loss, the optimizer and the number of
optimizer steps; only the image tower differs:

* ``slices-mean`` / ``slices-max`` / ``slices-attention``: the same 2D ResNet-10 on
  every slice, pooled over slices by mean, max or a learned query (RadCLIP-style);
* ``native-3d``: MONAI's 3D ResNet-10 of the same width on the whole volume.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:  # run as a script as well as with -m
    sys.path.insert(0, str(REPO))

#: Rendered CT grid (x, y, z) and the model grid (D, H, W): the same voxels.
CT_SIZE = (64, 64, 32)
IMAGE_SIZE = [32, 64, 64]
WIDTH = 16

_SLICES = {"name": "resnet10", "in_channels": 1, "image_size": 64, "width": WIDTH, "volume": "slices",
           "slice_chunk": 32}
ARMS: dict[str, dict[str, Any]] = {
    "slices-mean": _SLICES | {"slice_pooling": "mean"},
    "slices-max": _SLICES | {"slice_pooling": "max"},
    "slices-attention": _SLICES | {"slice_pooling": "attention"},
    "native-3d": {"name": "resnet10-3d", "in_channels": 1, "image_size": 64, "width": WIDTH, "volume": "native"},
}

TEXT: dict[str, Any] = {"name": "bert", "hidden_size": 128, "num_layers": 2, "num_heads": 4,
                        "intermediate_size": 256, "max_length": 96}


def data_section(manifest: Path | str, cache: Path | str | None, batch_size: int) -> dict[str, Any]:
    """The ``data`` section every arm uses."""
    return {"manifest": str(manifest), "dims": 3, "image_size": list(IMAGE_SIZE), "window": "lung",
            "in_channels": 1, "batch_size": batch_size, "num_workers": 0, "max_words": 64,
            "augment": False, "drop_last": True, "cache_dir": None if cache is None else str(cache)}


def experiment(arm: str, manifest: Path | str, cache: Path | str | None, *, seed: int, steps: int,
               batch_size: int, lr: float) -> dict[str, Any]:
    """A full experiment config for one arm (train on ``train``, last model kept)."""
    return {
        "seed": seed,
        "data": data_section(manifest, cache, batch_size),
        "model": {"embed_dim": 64, "image": copy.deepcopy(ARMS[arm]), "text": copy.deepcopy(TEXT)},
        "loss": {"terms": {"instance": {"weight": 1.0}}},
        "train": {"max_steps": steps, "lr": lr, "weight_decay": 0.05, "warmup_ratio": 0.05,
                  # no validation: every arm keeps its last model (same steps, no selection effect)
                  "val_every_epoch": 0, "log_every": 1, "progress": False},
    }


def make_corpus(work: Path, n_ct: int, seed: int) -> Path:
    """Generate the CT corpus once; reuse it when the parameters match."""
    from medvl.data.synth import generate_corpus

    corpus = work / "corpus"
    params = {"n_cxr": 0, "n_ct": n_ct, "seed": seed, "ct_size": list(CT_SIZE)}
    stamp, manifest = corpus / "ct3d_params.json", corpus / "manifest.jsonl"
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        print(f"[ct3d] reusing corpus {corpus}", flush=True)
        return manifest
    print(f"[ct3d] generating corpus {params}", flush=True)
    manifest = Path(generate_corpus(corpus, n_cxr=0, n_ct=n_ct, seed=seed, ct_size=CT_SIZE, workers=1,
                                    progress=False))
    stamp.write_text(json.dumps(params))
    return manifest


def machine() -> dict[str, Any]:
    """Where the benchmark ran: platform, cores, threads, versions."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
