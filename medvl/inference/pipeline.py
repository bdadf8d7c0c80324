"""``medvl.load(dir)`` -> :class:`Pipeline`: a saved model as a complete inference unit.

The pipeline holds the model, the preprocessing it was trained with
(``preprocessing.json``), and, when the directory has them, its calibration and
training-data profile. Every caller that turns one file into a model answer (eval,
index, viewer, ``medvl embed``) goes through it, so there is one copy of "preprocess a
file as training did" and one copy of zero-shot scoring.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from medvl.errors import ConfigError, ModelError
from medvl.inference.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

    from medvl.data.config import DataConfig
    from medvl.io.image import MedicalImage
    from medvl.models.model import MedVLModel

log = logging.getLogger(__name__)

#: what the pipeline accepts as an image: a path (DICOM file, series folder, NIfTI, PNG) or a read image
ImageInput = Union[str, "PathLike[str]", "MedicalImage"]


class Pipeline:
    """A loaded model directory: model + preprocessing (+ calibration, + OOD profile).

    Build it with :func:`load`. Methods take an image as a path (DICOM file, DICOM series
    folder, NIfTI, PNG/JPEG) or a :class:`~medvl.io.MedicalImage`.

    Attributes:
        model: the :class:`~medvl.models.MedVLModel` (eval mode).
        preprocessing: the model's :class:`Preprocessing`.
        data_config: the ``data`` section inputs are prepared with (the preprocessing,
            plus any explicit, logged override).
        model_dir: the directory loaded (``None`` for a pipeline built in memory).
    """

    def __init__(self, model: MedVLModel, preprocessing: Preprocessing, *, model_dir: str | Path | None = None,
                 data: DataConfig | Mapping[str, Any] | None = None, override_preprocessing: bool = False) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.model_dir = Path(model_dir) if model_dir is not None else None
        source = str(self.model_dir / "preprocessing.json") if self.model_dir else "preprocessing.json"
        self.data_config = preprocessing.apply_to(data, override=override_preprocessing, source=source)
        from medvl.data.transforms import ModelInputTransform

        self._transform = ModelInputTransform(self.data_config)
        if hasattr(model, "eval"):
            model.eval()

    # -- images ----------------------------------------------------------------------
    @property
    def dims(self) -> int:
        """2 for a radiograph model, 3 for a volume model."""
        return int(self.data_config.dims)

    def read(self, image: ImageInput) -> MedicalImage:
        """Read a path with the preprocessing's reader options (a :class:`MedicalImage` passes through).

        Raises:
            ImageReadError: the file cannot be read.
        """
        from medvl.io.image import MedicalImage

        if isinstance(image, MedicalImage):
            return image
        if not isinstance(image, (str, PathLike)):
            raise ConfigError(f"image is a {type(image).__name__}", field="image",
                              expected="a path (DICOM file, series folder, NIfTI, PNG) or a MedicalImage")
        from medvl.io import read_image

        return read_image(Path(image), **self.data_config.io.as_kwargs())

    def prepare(self, image: ImageInput) -> torch.Tensor:
        """The model input of one image, float32 ``(C, *image_size)``: the one preprocessing path.

        Same reader options, windows, orientation, grid and normalisation as training
        (no augmentation, no cache).

        Raises:
            ImageReadError: unreadable file, or an image whose dimensionality does not fit the model.
        """
        import torch

        x = self._transform(self.read(image))
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    # -- embeddings ------------------------------------------------------------------
    def embed_images(self, images: Sequence[ImageInput], *, batch_size: int = 16) -> np.ndarray:
        """Unit-norm global embeddings ``(N, D)`` of images, prepared as training did."""
        import torch

        from medvl.inference.embedding import embed_images

        if isinstance(images, (str, PathLike)) or not isinstance(images, Sequence):
            raise ConfigError("images must be a list", field="images", expected="a list of paths or MedicalImages")
        parts = []
        for lo in range(0, len(images), batch_size):
            batch = torch.stack([self.prepare(im) for im in images[lo:lo + batch_size]])
            parts.append(embed_images(self.model, batch))
        if not parts:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.concatenate(parts)

    def embed_texts(self, texts: Sequence[str], *, prepared: bool = False) -> np.ndarray:
        """Unit-norm global embeddings ``(N, D)`` of texts.

        Args:
            texts: reports, queries or prompts.
            prepared: the texts are already prepared (a dataset's report texts); by
                default each goes through the text preprocessing (abbreviations, word
                budget, case) as report texts did in training.

        Raises:
            ReportError: an empty text.
        """
        from medvl.inference.embedding import embed_texts

        if isinstance(texts, str):
            raise ConfigError("texts must be a list", field="texts", expected="a list of strings")
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        return embed_texts(self.model, [t if prepared else self.prepare_text(t) for t in texts])

    def prepare_text(self, text: str) -> str:
        """A query or prompt prepared as report texts were in training."""
        from medvl.data.text import prepare_query

        return prepare_query(text, self.data_config)

    @property
    def embed_dim(self) -> int:
        """Size of the shared embedding space."""
        cfg = getattr(self.model, "config", None) or {}
        return int(cfg.get("embed_dim", 0)) if isinstance(cfg, Mapping) else 0


def load(path: str | PathLike[str], *, device: str = "cpu", data: DataConfig | Mapping[str, Any] | None = None,
         override_preprocessing: bool = False) -> Pipeline:
    """Load a model directory as a :class:`Pipeline`, with no network.

    Args:
        path: a folder written by ``medvl train`` or ``save_pretrained`` (with ``preprocessing.json``).
        device: where the model runs (``"cpu"``, ``"cuda"``...).
        data: explicit ``data`` settings; one that contradicts the saved preprocessing is a
            :class:`ConfigError` naming the field unless ``override_preprocessing``.
        override_preprocessing: use the explicit settings anyway (each override is logged).

    Raises:
        ModelError: the folder does not exist. CheckpointError: not a model directory, or no
            ``preprocessing.json`` (the message says how to add it).
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelError("model folder does not exist", path=p, expected="a folder written by `medvl train`")
    from medvl.models.saving import read_config

    read_config(p)  # a clear error for a folder that is not a model, before the preprocessing check
    preprocessing = Preprocessing.load(p)
    from medvl.models import MedVLModel

    model = MedVLModel.from_pretrained(p, map_location=device)
    return Pipeline(model, preprocessing, model_dir=p, data=data, override_preprocessing=override_preprocessing)
