"""Out-of-distribution guard: is this input like what the model was trained on?

The model directory records what the model saw (``training_profile.json``: modalities,
body parts, 2D/3D, photometric kinds, pixel-spacing range, physical size range, study
count, the training reports' vocabulary) and a reference distribution in embedding space
(``ood_reference.safetensors``: image embeddings of training studies, and a threshold on
the mean cosine similarity to the ``k`` nearest of them, set on the validation split; and
the same studies' image features, with a threshold on the Mahalanobis distance to them).

:func:`check_image` flags an input outside it, with the first reason that applies, in
the order the checks are listed below; ``details`` carries every check's outcome:

1. ``dims``: a volume given to a 2D model or a radiograph to a 3D one (needs no profile);
2. ``modality``: a DICOM modality the model never saw (``CT`` to a CR/DX model). Files
   that record no modality (PNG, NIfTI: read as ``OT``) are not judged by this check;
3. ``body_part``: a DICOM Body Part Examined the model never saw;
4. ``photometric``: colour given to a model trained on greyscale (or the reverse);
5. ``spacing``: a pixel spacing (from the header) outside half to twice the training range;
6. ``size``: a physical size (the longest side in mm: pixels times header spacing) outside
   half to twice the training range: a 2 cm MR patch or a 2 m whole-body scan given to a
   chest model. Sizes in pixels are not compared: the model resamples every image to its
   own grid, so a 3,000-pixel film and a 512-pixel one of the same chest are alike to it;
7. ``embedding``: far from every training image (below the validation threshold);
8. ``features``: unlike the training images in the model's image features (the input of
   its global image head, before the projection): Mahalanobis distance to their mean,
   with a Ledoit-Wolf shrunk covariance, above what 99 % of validation images stay under.
   The projection of a contrastive model trained on a narrow corpus keeps few directions
   (the demo model's: an effective rank of about 3), so unlike images can land near
   training ones in the shared space (check 7) while their features still tell them apart.

The header checks (5, 6) judge only files whose header gives a spacing (DICOM pixel
spacing, NIfTI affine); PNG/JPEG and DICOM files without one are left to the others.

:func:`check_text` flags a free-text query most of whose content words (half or more)
never occur in the training reports. What the guard does **not** promise: an input that passes is not
known to be in distribution (a chest film with an unusual artefact can embed close to
training images), and a flagged input is not necessarily unusable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from medvl.atomic import atomic_path, write_text_atomic
from medvl.errors import CheckpointError

PROFILE_NAME = "training_profile.json"
REFERENCE_NAME = "ood_reference.safetensors"
FORMAT = "medvl-training-profile"
#: 2: ``extent_mm`` (physical size range); 3: ``features`` (the image-feature check). Older files load
#: with those unset
FORMAT_VERSION = 3
#: the embedding check compares an image with the mean similarity to this many nearest training images
K_NEIGHBOURS = 5
#: the share of validation images the embedding threshold may flag
VAL_QUANTILE = 0.01
#: a vocabulary word must occur in at least this many training reports (one-off words, names, stay out)
MIN_REPORTS_PER_WORD = 2
#: a text query is flagged when fewer than this share of its content words occur in the training reports
MIN_KNOWN_SHARE = 0.5
#: the spacing and size checks allow this factor below the smallest and above the largest training value
SPACING_FACTOR = 2.0
#: Body Part Examined spellings that mean the same region
BODY_PART_SYNONYMS = {"THORAX": "CHEST", "LUNG": "CHEST", "LUNGS": "CHEST", "CHEST_LUNG": "CHEST"}
#: modality values that say "not recorded"
UNKNOWN_MODALITIES = ("", "OT")


@dataclass
class OODResult:
    """Whether an input is out of the training distribution, and why.

    Attributes:
        ood: True when some check failed.
        reason: the first failing check's sentence ("" when in distribution).
        details: each check's outcome (``{"modality": {"value": "CT", "ok": False}, ...}``).
    """

    ood: bool
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingProfile:
    """What a model was trained on (``training_profile.json``).

    Attributes:
        n_studies: studies in the train split the model used.
        dims: 2 or 3.
        modalities: modality -> count (manifest rows, and DICOM headers of a sample).
        body_parts: Body Part Examined -> count over the header sample ({} when none recorded).
        photometric: ``greyscale`` / ``colour`` -> count over the sample.
        spacing_mm: ``[min, max]`` of the smallest pixel spacing in the sample (headers only), or None.
        extent_mm: ``[min, max]`` of the longest physical side (mm) in the sample (headers only), or None.
        n_sampled: images read for the header facts.
        vocabulary: words occurring in at least :data:`MIN_REPORTS_PER_WORD` training reports.
        embedding: ``{"k", "threshold", "quantile", "n_reference", "n_validation", "validation_flag_rate"}``.
        features: ``{"threshold", "quantile", "shrinkage", "dim", "n_reference", "n_validation",
            "validation_flag_rate"}`` of the image-feature check, or None.
    """

    n_studies: int
    dims: int
    modalities: dict[str, int] = field(default_factory=dict)
    body_parts: dict[str, int] = field(default_factory=dict)
    photometric: dict[str, int] = field(default_factory=dict)
    spacing_mm: list[float] | None = None
    extent_mm: list[float] | None = None
    n_sampled: int = 0
    vocabulary: list[str] = field(default_factory=list)
    embedding: dict[str, Any] | None = None
    features: dict[str, Any] | None = None

    def describe(self) -> str:
        """E.g. ``"CR/DX chest radiographs (1,200 studies)"``."""
        mods = "/".join(m for m in sorted(self.modalities) if m not in UNKNOWN_MODALITIES) or "unlabelled"
        parts = "/".join(p.lower() for p in sorted(self.body_parts))
        kind = "radiographs" if self.dims == 2 else "volumes"
        return f"{mods} {parts + ' ' if parts else ''}{kind} ({self.n_studies:,} studies)"

    # -- files ---------------------------------------------------------------------
    def save(self, directory: str | PathLike[str], reference: np.ndarray | None = None,
             features: np.ndarray | None = None) -> Path:
        """Write ``training_profile.json`` (and ``ood_reference.safetensors`` when given: the
        reference embeddings under ``image``, their image features under ``features``)."""
        out = Path(directory)
        if reference is not None:
            import torch
            from safetensors.torch import save_file

            tensors = {"image": torch.from_numpy(np.ascontiguousarray(reference, np.float32))}
            if features is not None:
                tensors["features"] = torch.from_numpy(np.ascontiguousarray(features, np.float32))
            with atomic_path(out / REFERENCE_NAME) as tmp:
                save_file(tensors, str(tmp), metadata={"format": FORMAT})
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}
        write_text_atomic(out / PROFILE_NAME, json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return out / PROFILE_NAME

    @classmethod
    def load(cls, directory: str | PathLike[str]) -> tuple[TrainingProfile | None, np.ndarray | None]:
        """``(profile, reference embeddings)``; ``(None, None)`` when the directory has no profile.

        Raises:
            CheckpointError: unreadable, another format or a newer version.
        """
        path = Path(directory) / PROFILE_NAME
        if not path.is_file():
            return None, None
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"unreadable training profile: {exc}", path=path) from None
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CheckpointError("not a medvl training profile", path=path, field="format", expected=FORMAT)
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise CheckpointError(f"format_version {data.get('format_version')}", path=path,
                                  field="format_version", expected=f"<= {FORMAT_VERSION}")
        fields = {k: v for k, v in data.items() if k not in ("format", "format_version")}
        try:
            profile = cls(**fields)
        except TypeError as exc:
            raise CheckpointError(f"invalid training profile ({exc})", path=path) from None
        reference = None
        ref_path = Path(directory) / REFERENCE_NAME
        if ref_path.is_file():
            from safetensors.numpy import load_file

            reference = np.asarray(load_file(str(ref_path))["image"], dtype=np.float32)
        return profile, reference


    @staticmethod
    def load_features(directory: str | PathLike[str]) -> np.ndarray | None:
        """The reference studies' image features (``None`` when the directory has none)."""
        ref_path = Path(directory) / REFERENCE_NAME
        if not ref_path.is_file():
            return None
        from safetensors.numpy import load_file

        tensors = load_file(str(ref_path))
        return np.asarray(tensors["features"], dtype=np.float32) if "features" in tensors else None


class FeatureModel:
    """Mean and shrunk precision of training image features; Mahalanobis distances to them.

    The covariance is Ledoit-Wolf shrunk towards a scaled identity (its shrinkage chosen
    from the data), so it stays invertible with fewer studies than feature dimensions.

    Args:
        features: ``(N, F)`` unit-norm features of the reference (training) studies.
    """

    def __init__(self, features: np.ndarray) -> None:
        from sklearn.covariance import LedoitWolf

        x = np.asarray(features, dtype=np.float64)
        lw = LedoitWolf().fit(x)
        self.mean = lw.location_
        self.precision = lw.precision_
        self.shrinkage = float(lw.shrinkage_)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance ``(N,)`` of unit-norm feature rows to the reference."""
        d = np.asarray(features, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))


# -- facts of one image ----------------------------------------------------------------
def photometric_kind(image: Any) -> str:
    """``colour`` for RGB images, ``greyscale`` otherwise (MONOCHROME1 is inverted on reading)."""
    return "colour" if getattr(image, "is_color", False) else "greyscale"


def body_part(image: Any) -> str:
    """The image's Body Part Examined, upper-case with synonyms merged ("" when not recorded)."""
    value = str((getattr(image, "tags", {}) or {}).get("BodyPartExamined") or "").strip().upper()
    return BODY_PART_SYNONYMS.get(value, value)


def declared_modality(image: Any) -> str:
    """The modality a DICOM file declares ("" for files that record none: PNG, NIfTI)."""
    tags = getattr(image, "tags", {}) or {}
    return str(tags.get("Modality") or "").strip().upper()


def _header_spacings(image: Any) -> list[float] | None:
    """The spacing per spatial axis when the header gives one: a DICOM pixel spacing tag or a
    NIfTI affine (None when the reader assumed 1 mm: PNG/JPEG, DICOM without the tag)."""
    tags = getattr(image, "tags", {}) or {}
    nifti = str(tags.get("format", "")).startswith("NIfTI")
    if tags.get("spacing_source", "affine" if nifti else "assumed") == "assumed":
        return None
    sp = [float(s) for s in getattr(image, "spacing", ())]
    return sp if sp and all(np.isfinite(s) and s > 0 for s in sp) else None


def header_spacing(image: Any) -> float | None:
    """The smallest pixel spacing in mm when the header gives one (None when assumed)."""
    sp = _header_spacings(image)
    return min(sp) if sp else None


def physical_extent(image: Any) -> float | None:
    """The longest side of the image in mm (pixels times header spacing; None when the spacing is assumed)."""
    sp = _header_spacings(image)
    shape = np.shape(getattr(image, "array", ()))[:spatial_dims(image)]
    if not sp or len(shape) != len(sp):
        return None
    return float(max(n * s for n, s in zip(shape, sp, strict=True)))


def spatial_dims(image: Any) -> int:
    """2 for a radiograph, 3 for a volume (a 4D NIfTI with one time point counts as 3)."""
    return int(getattr(image, "ndim", 2))


# -- the checks ------------------------------------------------------------------------
def check_image(
    image: Any,
    *,
    model_dims: int,
    profile: TrainingProfile | None,
    similarity: float | None = None,
    feature_distance: float | None = None,
) -> OODResult:
    """Run every check on a read image (see the module docstring for the order).

    Args:
        image: a :class:`~medvl.io.MedicalImage`.
        model_dims: 2 or 3, the model's input kind.
        profile: the training profile (None: only the ``dims`` check runs).
        similarity: mean cosine similarity of the image's embedding to its nearest
            training images (:func:`neighbour_similarity`); None skips that check.
        feature_distance: Mahalanobis distance of the image's features to the training
            images' (:class:`FeatureModel`); None skips that check.
    """
    details: dict[str, Any] = {}
    reasons: list[str] = []
    kind = {2: "2D radiographs", 3: "3D volumes"}
    dims = spatial_dims(image)
    details["dims"] = {"value": dims, "ok": dims == model_dims}
    if dims != model_dims:
        reasons.append(f"a {'3D volume' if dims == 3 else '2D image'} given to a model trained on "
                       f"{kind.get(model_dims, str(model_dims) + 'D images')}")
    if profile is None:
        return OODResult(bool(reasons), reasons[0] if reasons else "", details)
    trained = profile.describe()
    mod = declared_modality(image)
    if mod and profile.modalities:
        ok = mod in profile.modalities
        details["modality"] = {"value": mod, "ok": ok}
        if not ok:
            reasons.append(f"{mod} image given to a model trained on {trained}")
    part = body_part(image)
    if part and profile.body_parts:
        ok = part in {BODY_PART_SYNONYMS.get(p, p) for p in profile.body_parts}
        details["body_part"] = {"value": part, "ok": ok}
        if not ok:
            reasons.append(f"body part {part} given to a model trained on {trained}")
    colour = photometric_kind(image)
    if profile.photometric:
        ok = colour in profile.photometric
        details["photometric"] = {"value": colour, "ok": ok}
        if not ok:
            reasons.append(f"{colour} image given to a model trained on {'/'.join(sorted(profile.photometric))} "
                           f"images ({trained})")
    sp = header_spacing(image)
    if sp is not None and profile.spacing_mm:
        lo, hi = profile.spacing_mm
        ok = lo / SPACING_FACTOR <= sp <= hi * SPACING_FACTOR
        details["spacing"] = {"value": sp, "ok": ok, "trained": [lo, hi]}
        if not ok:
            reasons.append(f"pixel spacing {sp:.3g} mm, far from the training images' {_span(lo, hi, '.3g')} mm")
    size = physical_extent(image)
    if size is not None and profile.extent_mm:
        lo, hi = profile.extent_mm
        ok = lo / SPACING_FACTOR <= size <= hi * SPACING_FACTOR
        details["size"] = {"value": round(size, 1), "ok": ok, "trained": [lo, hi]}
        if not ok:
            reasons.append(f"an image {size:.0f} mm across given to a model trained on images "
                           f"{_span(lo, hi, '.0f')} mm across ({trained})")
    emb = profile.embedding or {}
    if similarity is not None and emb.get("threshold") is not None:
        thr = float(emb["threshold"])
        ok = similarity >= thr
        details["embedding"] = {"value": round(float(similarity), 4), "ok": ok, "threshold": round(thr, 4)}
        if not ok:
            share = 100 * (1 - float(emb.get("quantile", VAL_QUANTILE)))
            reasons.append(f"far from every training image (similarity {similarity:.3f} to the nearest; "
                           f"{share:.0f}% of validation images are above {thr:.3f})")
    feat = profile.features or {}
    if feature_distance is not None and feat.get("threshold") is not None:
        thr = float(feat["threshold"])
        ok = feature_distance <= thr
        details["features"] = {"value": round(float(feature_distance), 3), "ok": ok, "threshold": round(thr, 3)}
        if not ok:
            share = 100 * (1 - float(feat.get("quantile", VAL_QUANTILE)))
            reasons.append(f"unlike the training images in the model's image features (distance "
                           f"{feature_distance:.1f}; {share:.0f}% of validation images are within {thr:.1f})")
    return OODResult(bool(reasons), reasons[0] if reasons else "", details)


def _span(lo: float, hi: float, fmt: str) -> str:
    """``"0.14-0.2"``, or one value when both ends print the same."""
    a, b = format(lo, fmt), format(hi, fmt)
    return a if a == b else f"{a}-{b}"


def neighbour_similarity(embeddings: np.ndarray, reference: np.ndarray, k: int = K_NEIGHBOURS,
                         *, exclude_self: bool = False) -> np.ndarray:
    """Mean cosine similarity ``(N,)`` of unit-norm rows to their ``k`` nearest reference rows.

    ``exclude_self`` drops each row's best match (when ``embeddings`` is the reference itself).
    """
    e = np.asarray(embeddings, dtype=np.float32)
    r = np.asarray(reference, dtype=np.float32)
    if e.size == 0 or r.size == 0:
        return np.zeros(len(e), dtype=np.float32)
    take = min(k + int(exclude_self), r.shape[0])
    out = np.empty(len(e), dtype=np.float32)
    for lo in range(0, len(e), 1024):  # (1024, M) similarities at a time
        sim = e[lo:lo + 1024] @ r.T
        top = -np.sort(-sim, axis=1)[:, :take]
        out[lo:lo + 1024] = (top[:, 1:] if exclude_self and take > 1 else top).mean(axis=1)
    return out


_WORD = re.compile(r"[a-z]+")


def content_words(text: str) -> list[str]:
    """Lower-case words of two letters or more that are not English stop words."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in ENGLISH_STOP_WORDS]


def report_vocabulary(texts: Iterable[str], min_reports: int = MIN_REPORTS_PER_WORD) -> list[str]:
    """Content words occurring in at least ``min_reports`` of the texts, sorted."""
    from collections import Counter

    df: Counter[str] = Counter()
    for t in texts:
        df.update(set(content_words(t)))
    return sorted(w for w, n in df.items() if n >= min_reports)


def check_text(text: str, profile: TrainingProfile | None) -> OODResult:
    """Flag a query most of whose content words never occur in the training reports.

    Flagged when fewer than :data:`MIN_KNOWN_SHARE` of its content words are in the
    vocabulary: a query sharing no word, and also one that shares only a common word
    ("renal calculus in the lower pole" shares "lower" with chest reports), since the
    text encoder never learnt what the rest of it means. ``text`` should be prepared as
    the training reports were (:meth:`Pipeline.check_text` does that).
    """
    if profile is None or not profile.vocabulary:
        return OODResult(False, "", {"vocabulary": {"ok": True, "checked": False}})
    vocab = set(profile.vocabulary)
    words = content_words(text)
    known = [w for w in words if w in vocab]
    unknown = [w for w in words if w not in vocab]
    share = len(known) / len(words) if words else 0.0
    ok = bool(words) and share >= MIN_KNOWN_SHARE
    details = {"vocabulary": {"ok": ok, "known": known, "unknown": unknown, "known_share": round(share, 3)}}
    if ok:
        return OODResult(False, "", details)
    if not words:
        why = "the query has no content words"
    elif not known:
        why = "the query shares no words with the training reports"
    else:
        shown = ", ".join(unknown[:6]) + (", ..." if len(unknown) > 6 else "")
        why = f"most of the query's words ({shown}) never occur in the training reports"
    return OODResult(True, why, details)


def flag_rate(results: Sequence[OODResult]) -> float:
    """Share of flagged results (NaN for none)."""
    return float(np.mean([r.ood for r in results])) if results else float("nan")
