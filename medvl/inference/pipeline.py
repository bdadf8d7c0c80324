"""``medvl.load(dir)`` -> :class:`Pipeline`: a saved model as a complete inference unit.

The pipeline holds the model, the preprocessing it was trained with
(``preprocessing.json``), and, when the directory has them, its calibration and
training-data profile. Every caller that turns one file into a model answer (eval,
index, viewer, ``medvl embed``) goes through it, so there is one copy of "preprocess a
file as training did" and one copy of zero-shot scoring.
"""

from __future__ import annotations

import difflib
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from medvl.errors import ConfigError, ModelError
from medvl.inference.calibration import Calibration
from medvl.inference.heatmap import Heatmap
from medvl.inference.ood import OODResult, TrainingProfile
from medvl.inference.preprocessing import Preprocessing
from medvl.inference.prompts import PromptSet
from medvl.inference.result import ClassifyResult
from medvl.inference.zeroshot import ZeroShotRule

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
                 data: DataConfig | Mapping[str, Any] | None = None, override_preprocessing: bool = False,
                 model_config: Mapping[str, Any] | None = None, calibration: Calibration | None = None,
                 profile: TrainingProfile | None = None, reference: np.ndarray | None = None,
                 provenance: dict[str, Any] | None = None) -> None:
        self.model = model
        self.preprocessing = preprocessing
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.model_config: dict[str, Any] = dict(model_config or {})
        self.calibration = calibration
        self.profile = profile
        self.reference = reference
        self.provenance = provenance
        self.rule = ZeroShotRule.from_config(self.model_config.get("zeroshot"))
        self._prompts: dict[tuple[str, str], tuple[list[str], list[np.ndarray], list[np.ndarray]]] = {}
        self._lock = threading.Lock()  # the viewer calls from several threads
        self._model_id: str | None = None
        self._features: Any = None  # FeatureModel once fitted; False when the directory has none
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

    def read(self, image: ImageInput, *, frame: int | None = None) -> MedicalImage:
        """Read a path with the preprocessing's reader options (a :class:`MedicalImage` passes through).

        Args:
            image: a path or a read image.
            frame: one frame of a multi-frame file (``read_image``'s ``frame``), for a path.

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

        return read_image(Path(image), frame=frame, **self.data_config.io.as_kwargs())

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


    # -- zero-shot -------------------------------------------------------------------
    def prompt_set(self, image: Any = None, prompts: str | None = None, *, modality: str | None = None) -> PromptSet:
        """The prompt set ``classify`` uses.

        Order: ``prompts`` when given; the model directory's own (``config.json``'s
        ``zeroshot.prompts``); the built-in set written for the modalities the model was
        trained on; the one for the image's modality (or ``modality``, e.g. a split's);
        ``cxr`` for 2D, ``ct`` for 3D models.
        """
        from medvl.inference.prompts import BUILTIN, load_prompt_set

        name = prompts or self.rule.prompts
        if name:
            return load_prompt_set(name)
        candidates: list[str] = []
        if self.profile is not None:
            candidates += [m for m in self.profile.modalities if m not in ("", "OT")]
        image_modality = str(getattr(image, "modality", "") or "") if image is not None else ""
        if image_modality:
            candidates.append(image_modality)
        if modality:
            candidates.append(modality)
        for mod in candidates:
            for ps_name in BUILTIN:
                ps = load_prompt_set(ps_name)
                if mod.upper() in ps.modalities:
                    return ps
        return load_prompt_set("cxr" if self.dims == 2 else "ct")

    def prompt_embeddings(self, ps: PromptSet) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
        """``(findings, positive, negative)`` prompt embeddings of a prompt set, computed once."""
        key = (ps.name, json.dumps([ps.positive, ps.negative], sort_keys=True))
        with self._lock:
            cached = self._prompts.get(key)
        if cached is None:
            names = ps.findings
            pos = [self.embed_texts(ps.positive[f]) for f in names]
            neg = [self.embed_texts(ps.negative[f]) for f in names]
            cached = (names, pos, neg)
            with self._lock:
                self._prompts[key] = cached
        return cached

    def zeroshot(self, image_embeddings: np.ndarray, ps: PromptSet, *, scoring: str | None = None,
                 ensemble: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(findings, logits (N, K), scores (N, K))`` of unit-norm image embeddings: the one
        zero-shot implementation (eval, index, viewer and ``classify`` call it)."""
        from medvl.inference.zeroshot import model_logit_bias, model_logit_scale, scoring_rule, zeroshot_logits

        scoring = scoring or self.rule.scoring
        ensemble = ensemble or self.rule.ensemble
        names, pos, neg = self.prompt_embeddings(ps)
        logits = zeroshot_logits(np.asarray(image_embeddings, np.float32), pos, neg, scoring=scoring,
                                 ensemble=ensemble, logit_scale=model_logit_scale(self.model),
                                 logit_bias=model_logit_bias(self.model))
        return names, logits, np.asarray(scoring_rule(scoring).to_score(logits), dtype=np.float64)

    def classify(self, image: ImageInput, findings: Sequence[str] | None = None, *, prompts: str | None = None,
                 scoring: str | None = None, ensemble: str | None = None) -> ClassifyResult:
        """Zero-shot finding scores of one image, calibrated when the model directory can.

        Args:
            image: a path (DICOM file, series folder, NIfTI, PNG) or a ``MedicalImage``.
            findings: finding names of the prompt set to score (default: all of them).
            prompts: a prompt set name or YAML path (default: see :meth:`prompt_set`).
            scoring, ensemble: override the model directory's rule (the calibration then
                no longer applies and the scores come back marked uncalibrated).

        Raises:
            ImageReadError: unreadable file, or a 3D volume given to a 2D model (or the reverse).
            ConfigError: an unknown finding name (with a suggestion).
        """
        img = self.read(image)
        x = self.prepare(img)
        emb, feats = self._encode_prepared(x[None])
        ps = self.prompt_set(img, prompts)
        names, logits, scores = self.zeroshot(emb, ps, scoring=scoring, ensemble=ensemble)
        wanted = list(names) if findings is None else self._check_findings(findings, names)
        used_scoring, used_ensemble = scoring or self.rule.scoring, ensemble or self.rule.ensemble
        cal = self.calibration
        usable = cal is not None and cal.matches(used_scoring, used_ensemble, ps.name)
        out: dict[str, float] = {}
        raw: dict[str, float] = {}
        calibrated: list[str] = []
        for f in wanted:
            j = names.index(f)
            raw[f] = float(scores[0, j])
            if usable and cal is not None and f in cal.findings:
                out[f] = float(cal.findings[f].apply(logits[0, j : j + 1])[0])
                calibrated.append(f)
            else:
                out[f] = raw[f]
        ood = self._check_read(img, emb[0], None if feats is None else feats[0])
        return ClassifyResult(scores=out, calibrated=bool(out) and len(calibrated) == len(out), ood=ood.ood,
                              ood_reason=ood.reason, calibrated_findings=calibrated, raw_scores=raw,
                              scoring=used_scoring, ensemble=used_ensemble, prompt_set=ps.name,
                              ood_details=ood.details)

    @staticmethod
    def _check_findings(findings: Sequence[str], names: list[str]) -> list[str]:
        if isinstance(findings, str):
            findings = [findings]
        for f in findings:
            if f not in names:
                close = difflib.get_close_matches(f, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown finding {f!r}{hint}", field="findings",
                                  expected="one of " + ", ".join(names))
        return list(findings)

    # -- heatmaps --------------------------------------------------------------------
    @property
    def training(self) -> dict[str, Any] | None:
        """``config.json``'s ``"training"`` record (loss, whether the local heads were trained)."""
        rec = self.model_config.get("training")
        return dict(rec) if isinstance(rec, Mapping) else None

    def heatmap(self, image: ImageInput, phrase: str, *, method: str = "auto") -> Heatmap:
        """Where ``phrase`` finds its evidence in ``image``, over the image region (no padding).

        Args:
            image: a path or a ``MedicalImage``.
            phrase: any text, e.g. ``"left pleural effusion"``.
            method: ``auto`` (``local`` when the model directory records trained local
                heads, else the CAM-style global-head map), ``local`` or ``cam``.

        Returns:
            a :class:`Heatmap`; ``array`` is None (with ``reason``) when the request cannot be met honestly.
        """
        from medvl.inference.heatmap import choose_method, heatmap_on_input, minmax

        chosen, reason = choose_method(self.training, method)
        if chosen is None:
            return Heatmap(None, None, reason)
        img = self.read(image)
        x = self.prepare(img)
        try:
            heat = heatmap_on_input(self.model, x, self.prepare_text(phrase), method=chosen, spatial_dims=self.dims,
                                    normalize=False)
        except ModelError as exc:
            return Heatmap(None, None, f"no heatmap: {exc.message}")
        region, box = self._image_region(img, tuple(heat.shape))
        return Heatmap(minmax(heat[region]), chosen, reason, box)

    def _image_region(
        self, image: Any, shape: tuple[int, ...]
    ) -> tuple[tuple[slice, ...], tuple[int, int, int, int] | None]:
        """Where the image lies on the model-input grid, and (2D) which part of the source it covers."""
        array = np.asarray(image.array)
        spatial = array.shape[: self.dims] if not image.is_color else array.shape[:2]
        ones = np.ones((1, *spatial), dtype=np.float32)
        valid = self._transform.grid(ones, image.spacing if self.dims == 3 else None)[0] >= 0.5
        if valid.shape != shape or not valid.any():
            return tuple(slice(None) for _ in shape), None
        idx = np.nonzero(valid)
        region = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
        box: tuple[int, int, int, int] | None = None
        if self.dims == 2:
            rows, cols = spatial
            box = (0, rows, 0, cols)
            if self.data_config.fit == "crop":
                h, w = self.data_config.spatial_size
                scale = max(h / rows, w / cols)
                fh, fw = max(h, int(rows * scale)), max(w, int(cols * scale))
                top, left = fh // 2 - h // 2, fw // 2 - w // 2  # MONAI's centre crop
                box = (round(top / scale), round((top + h) / scale), round(left / scale), round((left + w) / scale))
        return region, box

    # -- out-of-distribution guard ---------------------------------------------------
    def check_image(self, image: ImageInput) -> OODResult:
        """Whether an image is outside what the model was trained on, and why.

        Unreadable files raise; a file the model cannot take (a volume given to a 2D
        model) is reported as out of distribution without running the model.
        """
        from medvl.inference.ood import spatial_dims

        img = self.read(image)
        if spatial_dims(img) != self.dims:
            return self._check_read(img, None)
        emb, feats = self._encode_prepared(self.prepare(img)[None])
        return self._check_read(img, emb[0], None if feats is None else feats[0])

    def _check_read(self, img: Any, embedding: np.ndarray | None, features: np.ndarray | None = None) -> OODResult:
        from medvl.inference.ood import K_NEIGHBOURS, check_image, neighbour_similarity

        sim = None
        if embedding is not None and self.reference is not None and len(self.reference):
            k = int((self.profile.embedding or {}).get("k", K_NEIGHBOURS)) if self.profile else K_NEIGHBOURS
            sim = float(neighbour_similarity(embedding[None], self.reference, k)[0])
        dist = None
        fm = self._feature_model()
        if features is not None and fm is not None:
            dist = float(fm.distance(features[None])[0])
        return check_image(img, model_dims=self.dims, profile=self.profile, similarity=sim, feature_distance=dist)

    def _feature_model(self) -> Any:
        """The training images' feature distribution (fitted once, on first use), or None."""
        from medvl.inference.ood import FeatureModel, TrainingProfile

        if self._features is None and self.model_dir is not None and self.profile is not None \
                and self.profile.features:
            with self._lock:
                if self._features is None:
                    ref = TrainingProfile.load_features(self.model_dir)
                    self._features = FeatureModel(ref) if ref is not None and len(ref) > 1 else False
        return self._features or None

    def check_text(self, text: str) -> OODResult:
        """Whether at least half of a free-text query's content words occur in the training reports.

        The query is judged as the model reads it: prepared like the training reports
        (:meth:`prepare_text`: abbreviation expansion, word budget, case), since the
        vocabulary was collected from reports prepared that way ("PTX" is checked as
        "pneumothorax" when the model was trained with abbreviations expanded).
        """
        from medvl.errors import ReportError
        from medvl.inference.ood import check_text

        try:
            prepared = self.prepare_text(text)
        except ReportError:  # empty or blank: nothing to compare, flagged below as having no content words
            prepared = ""
        return check_text(prepared, self.profile)

    def image_similarity_to_training(self, embeddings: np.ndarray) -> np.ndarray | None:
        """Mean similarity ``(N,)`` of image embeddings to their nearest training images (None without a reference)."""
        from medvl.inference.ood import K_NEIGHBOURS, neighbour_similarity

        if self.reference is None or not len(self.reference):
            return None
        k = int((self.profile.embedding or {}).get("k", K_NEIGHBOURS)) if self.profile else K_NEIGHBOURS
        return neighbour_similarity(np.asarray(embeddings, np.float32), self.reference, k)

    # -- identity --------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """A short hash of the model's config and weights (the id indexes and ``medvl embed`` record)."""
        if self._model_id is None:
            from medvl.inference.embedding import model_fingerprint

            self._model_id = model_fingerprint(self.model)
        return self._model_id

    def _embed_prepared(self, batch: Any) -> np.ndarray:
        from medvl.inference.embedding import embed_images

        return embed_images(self.model, batch)

    def _encode_prepared(self, batch: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Embeddings and image features of a prepared batch (one forward pass)."""
        from medvl.inference.embedding import embed_images_and_features

        return embed_images_and_features(self.model, batch)

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

    config = read_config(p)  # a clear error for a folder that is not a model, before the preprocessing check
    preprocessing = Preprocessing.load(p)
    calibration = Calibration.load(p)
    profile, reference = TrainingProfile.load(p)
    provenance = _read_json(p / "provenance.json")
    from medvl.models import MedVLModel

    model = MedVLModel.from_pretrained(p, map_location=device)
    return Pipeline(model, preprocessing, model_dir=p, data=data, override_preprocessing=override_preprocessing,
                    model_config=config, calibration=calibration, profile=profile, reference=reference,
                    provenance=provenance)


def _read_json(path: Path) -> dict[str, Any] | None:
    from medvl.errors import CheckpointError

    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"unreadable file: {exc}", path=path) from None
    return data if isinstance(data, dict) else None
