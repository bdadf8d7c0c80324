"""Ground truth of the synthetic corpus agrees with its pixels and its report text.

The report check is an independent keyword/negation/hedge labeler written here, not
the generator's templates: if the generator ever states something its labels do not
say (or the reverse), this labeler disagrees.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from medvl.data.manifest import read_manifest, resolve_path
from medvl.data.synth import generate_corpus
from medvl.data.synth.ct import render_ct, sample_ct_anatomy, sample_ct_grid
from medvl.data.synth.cxr import render_cxr, sample_anatomy
from medvl.data.synth.plan import FindingSpec
from medvl.findings import finding_names

# --- an independent rule-based labeler -------------------------------------------------

KEYWORDS = {
    "cardiomegaly": r"cardiomegaly|heart is enlarged|enlarged (cardiac silhouette|heart)|cardiac silhouette is enlarged"
                    r"|heart size is normal|normal heart size|cardiac silhouette is within normal limits",
    "pleural_effusion": r"effusion",
    "pneumothorax": r"pneumothorax|\bptx\b",
    "consolidation": r"consolidation",
    "nodule": r"nodul",
    "atelectasis": r"atelecta",
    "edema": r"edema",
    "support_device": r"\btube\b|catheter|central line|lines and tubes|\bleads\b|\bett\b|\bng\b|devices?",
}
HEDGE = r"cannot exclude|not excluded|cannot be excluded|possible|questionable|may represent"
NEGATION = r"^no\b|\bno\b|\bwithout\b|negative for|heart size is normal|normal heart size|within normal limits"
SIDES = {
    "right": (r"\bright\b|\brul\b|\brml\b|\brll\b", r"\bleft\b|\blul\b|\blll\b|lingula"),
    "left": (r"\bleft\b|\blul\b|\blll\b|lingula", r"\bright\b|\brul\b|\brml\b|\brll\b"),
    "bilateral": (r"bilateral|\bb/l\b", r"$^"),
}
ZONES = {
    "upper": r"upper|apex|\brul\b|\blul\b",
    "middle": r"\bmid|lingula",
    "lower": r"lower|base|\brll\b|\blll\b",
    "RUL": r"\brul\b|right upper lobe", "RML": r"\brml\b|right middle lobe", "RLL": r"\brll\b|right lower lobe",
    "LUL": r"\blul\b|left upper lobe", "LLL": r"\blll\b|left lower lobe",
}


def sentences(text: str) -> list[str]:
    return [s.strip().lower() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def label_report(text: str) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Labels (1 / 0 / -1) and the positive/hedged sentences per finding."""
    labels: dict[str, int] = {}
    where: dict[str, list[str]] = {}
    for s in sentences(text):
        for name, kw in KEYWORDS.items():
            if not re.search(kw, s):
                continue
            if re.search(HEDGE, s):
                value = -1
            elif re.search(NEGATION, s) and name != "support_device":
                value = 0
            else:
                value = 1
            assert labels.get(name, value) == value, f"contradicting statements about {name}: {text!r}"
            labels[name] = value
            if value != 0:
                where.setdefault(name, []).append(s)
    return labels, where


# --- corpus-level checks ---------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("truth")
    return generate_corpus(out, n_cxr=120, n_ct=12, seed=11, image_size=96, ct_size=(32, 32, 24),
                           compressed_fraction=0.0, uncertain_fraction=0.4)


def test_report_statements_agree_with_labels(corpus: Path) -> None:
    n_hedged = n_negative = 0
    for row in read_manifest(corpus):
        text = row.report["findings"] + " " + row.report["impression"]
        found, where = label_report(text)
        expected = {k: v for k, v in row.labels.items() if k != "no_finding"}
        assert found == expected, (row.study_id, text)
        n_hedged += sum(v == -1 for v in found.values())
        n_negative += sum(v == 0 for v in found.values())
        for ann in row.annotations:
            lat, zone = ann.get("laterality"), ann.get("zone")
            for s in where[ann["finding"]]:
                if lat and ann["finding"] != "edema":
                    same, other = SIDES[lat]
                    assert re.search(same, s) and not re.search(other, s), (row.study_id, lat, s)
                if zone:
                    assert re.search(ZONES[zone], s), (row.study_id, zone, s)
    assert n_hedged >= 10 and n_negative >= 100


def test_other_sections_name_no_finding(corpus: Path) -> None:
    rows = read_manifest(corpus)
    for row in rows:
        other = " ".join(v for k, v in row.report.items() if k not in ("findings", "impression"))
        assert other and label_report(other)[0] == {}, (row.study_id, other)
    assert len({r.report["indication"] for r in rows}) >= 8


def test_normal_studies_say_so(corpus: Path) -> None:
    normal = [r for r in read_manifest(corpus) if r.labels["no_finding"] == 1]
    assert len(normal) >= 10
    for r in normal:
        assert re.search(r"clear|normal|no acute", (r.report["findings"] + r.report["impression"]).lower())


def test_wording_varies(corpus: Path) -> None:
    rows = read_manifest(corpus)
    effusion = {s for r in rows for s in sentences(r.report["findings"]) if "effusion" in s}
    assert len(effusion) >= 8
    text = " ".join(r.report["findings"] + " " + r.report["impression"] for r in rows)
    for token in ("PTX", "b/l", "RLL", "LUL"):
        assert token.lower() in text.lower(), token


def test_absent_findings_have_no_mask_and_present_ones_do(corpus: Path) -> None:
    from PIL import Image

    for row in read_manifest(corpus):
        annotated = {a["finding"] for a in row.annotations}
        assert annotated == {k for k, v in row.labels.items() if v in (1, -1) and k != "no_finding"}
        masks = {p.name for p in (corpus.parent / "masks").glob(f"{row.study_id}_*")}
        assert masks == {Path(a["mask"]).name for a in row.annotations}
        for ann in row.annotations:
            if row.dims == 2:
                m = np.asarray(Image.open(resolve_path(corpus, ann["mask"]))) > 0
                assert m.shape == (96, 96)
                rows_, cols = np.nonzero(m)
                assert ann["box"] == [cols.min(), rows_.min(), cols.max() + 1, rows_.max() + 1]
            else:
                import nibabel as nib

                # Boxes are in voxel indices of the RAS array, whatever the storage order.
                m = np.asarray(nib.as_closest_canonical(nib.load(resolve_path(corpus, ann["mask"]))).dataobj) > 0
                idx = np.nonzero(m)
                assert ann["box"] == [int(i.min()) for i in idx] + [int(i.max()) + 1 for i in idx]


def test_every_vocabulary_finding_occurs(corpus: Path) -> None:
    rows = read_manifest(corpus)
    present = {k for r in rows for k, v in r.labels.items() if v == 1}
    assert set(finding_names("CR")) <= present
    ct_present = {k for r in rows if r.dims == 3 for k, v in r.labels.items() if v == 1}
    assert set(finding_names("CT")) <= ct_present


# --- pixels: with versus without a finding ---------------------------------------------

CXR_CASES = [
    (FindingSpec("cardiomegaly", severity=0.5), +1),
    (FindingSpec("pleural_effusion", "right", severity=0.5), +1),
    (FindingSpec("pleural_effusion", "bilateral", severity=0.5), +1),
    (FindingSpec("pneumothorax", "left", severity=0.5), -1),
    (FindingSpec("consolidation", "right", "lower", severity=0.5), +1),
    (FindingSpec("nodule", "left", "upper", severity=0.0), +1),
    (FindingSpec("atelectasis", "left", "lower", severity=0.5), +1),
    (FindingSpec("edema", "bilateral", severity=0.5), +1),
    (FindingSpec("support_device", devices=("ett", "ngt", "cvc", "ecg")), +1),
]


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape
    return a.reshape(h // k, k, w // k, k).mean(axis=(1, 3))


@pytest.mark.parametrize("spec, sign", CXR_CASES, ids=lambda x: getattr(x, "name", str(x)))
def test_cxr_finding_changes_its_mask_region_in_the_expected_direction(spec: FindingSpec, sign: int) -> None:
    anatomy = sample_anatomy(5)
    base = render_cxr(anatomy, [], size=512, spacing=0.7, seed=9).attenuation
    r = render_cxr(anatomy, [spec], size=512, spacing=0.7, seed=9)
    mask = r.masks[spec.name]
    assert mask.any()
    diff = r.attenuation - base
    assert sign * diff[mask].mean() > 0.15
    # Still there after downsampling to 128 x 128 (what the demo's CNN sees).
    small = _block_mean(mask.astype(np.float32), 4) > 0.5
    if small.any():
        assert sign * _block_mean(diff, 4)[small].mean() > 0.15
    # Nothing else moves: pixels away from the mask are unchanged (edema's haze fades out).
    far = ~binary_dilation(mask, iterations=12)
    assert np.abs(diff[far]).max() < (0.2 if spec.name == "edema" else 0.03)


def test_lateral_findings_are_on_the_stated_side_of_the_image() -> None:
    anatomy = sample_anatomy(2)
    for side, expect_left_half in (("right", True), ("left", False)):
        for name in ("pleural_effusion", "pneumothorax", "consolidation", "nodule", "atelectasis"):
            r = render_cxr(anatomy, [FindingSpec(name, side, "middle", severity=0.6)], size=128, spacing=2.8, seed=1)
            cols = np.nonzero(r.masks[name])[1]
            # PA/AP convention: the patient's right is on the image left.
            assert (cols.mean() < 64) == expect_left_half, (name, side)


CT_CASES = [
    (FindingSpec("nodule", "right", "RUL", severity=0.5), +1),
    (FindingSpec("consolidation", "left", "LLL", severity=0.5), +1),
    (FindingSpec("atelectasis", "right", "RML", severity=0.5), +1),
    (FindingSpec("pleural_effusion", "bilateral", severity=0.5), +1),
    (FindingSpec("pneumothorax", "left", severity=0.5), -1),
]


@pytest.mark.parametrize("spec, sign", CT_CASES, ids=lambda x: getattr(x, "name", str(x)))
def test_ct_finding_changes_hu_in_its_mask_and_sits_on_its_side(spec: FindingSpec, sign: int) -> None:
    shape = (64, 64, 48)
    affine = sample_ct_grid(3, shape)
    anatomy = sample_ct_anatomy(3)
    base = render_ct(anatomy, [], shape=shape, affine=affine, seed=4)
    r = render_ct(anatomy, [spec], shape=shape, affine=affine, seed=4)
    mask = r.masks[spec.name]
    assert mask.any()
    diff = r.hu - base.hu
    assert sign * diff[mask].mean() > 100  # HU
    assert np.abs(diff[~mask]).max() == 0
    # Lung before the finding, as a reader of the volume would check.
    assert base.hu[mask].mean() < -500
    x_world = affine[0, 0] * np.nonzero(mask)[0] + affine[0, 3]  # RAS: +x is the patient's right
    if spec.laterality == "right":
        assert (x_world > 0).all()
    elif spec.laterality == "left":
        assert (x_world < 0).all()
    else:
        assert (x_world > 0).any() and (x_world < 0).any()
