"""``medvl pacs sr`` against a real Orthanc: the SR is built from ``medvl.load``'s
``classify`` (its calibrated flag and scores), and an image the model flags as out of
distribution is refused unless ``--allow-ood``, and then the SR says so."""

from __future__ import annotations

import pydicom
import pytest
from pacs_helpers import needs_orthanc

from medvl.cli import main
from medvl.data.manifest import resolve_path
from medvl.pacs.sr import OOD_SUFFIX, findings_text

pytestmark = needs_orthanc
SIMILAR = "Similar case retrieved from the case index"
OOD_NAME = "Input outside the model's training distribution"


def _image(walk, modality: str):
    row = next(r for r in walk.rows if r.modality == modality and r.dims == 2)
    return resolve_path(walk.out / "manifest.jsonl", row.image)


def _evaluations(sr) -> list[tuple[str, str]]:
    """(concept name, value meaning) of every CODE item (the qualitative evaluations)."""
    out = []

    def walk_items(items) -> None:
        for item in items:
            if str(item.get("ValueType", "")) == "CODE":
                out.append((str(item.ConceptNameCodeSequence[0].CodeMeaning),
                            str(item.ConceptCodeSequence[0].CodeMeaning)))
            if "ContentSequence" in item:
                walk_items(item.ContentSequence)

    walk_items(sr.ContentSequence)
    return out


def test_sr_holds_classify_scores_and_calibration_flag(walk, tmp_path) -> None:
    import medvl

    pipe = medvl.load(walk.model)
    # an image the guard finds in distribution: among the training radiographs (with a
    # handful of validation studies the guard's threshold can flag a few of them too)
    image = expected = None
    for row in walk.rows:
        if row.study_id in walk.train:
            path = resolve_path(walk.out / "manifest.jsonl", row.image)
            result = pipe.classify(path)
            if not result.ood:
                image, expected = path, result
                break
    assert image is not None and expected is not None, "the guard flags every training radiograph"
    args = ["pacs", "sr", "--model", str(walk.model), "--image", str(image), "--index", str(walk.index),
            "-k", "3", "--out", str(tmp_path / "a.sr.dcm")]
    assert main(args) == 0
    sr = pydicom.dcmread(tmp_path / "a.sr.dcm")
    items = findings_text(sr)
    findings = [(f, name, v) for f, name, v in items if f != SIMILAR]
    want_name = "Calibrated probability" if expected.calibrated else "Uncalibrated zero-shot score (not a probability)"
    assert {name for _f, name, _v in findings} == {want_name}
    by_name = {f.lower(): v for f, _name, v in findings}
    assert by_name == pytest.approx({k.replace("_", " ").lower(): v for k, v in expected.scores.items()}, abs=1e-6)
    assert len([i for i in items if i[0] == SIMILAR]) == 3
    assert OOD_NAME not in {n for n, _v in _evaluations(sr)}
    assert not sr.SeriesDescription.endswith(OOD_SUFFIX)


def test_out_of_distribution_image_is_refused_unless_allowed(walk, tmp_path, capsys) -> None:
    import medvl

    mr = _image(walk, "MR")  # pydicom's MR slice: the model was trained on radiographs only
    result = medvl.load(walk.model).classify(mr)
    assert result.ood and result.ood_reason
    before = len(walk.server.rest("GET", "/instances"))
    out = tmp_path / "mr.sr.dcm"
    base = ["pacs", "sr", "--model", str(walk.model), "--image", str(mr), "--index", str(walk.index),
            "--out", str(out), "--store", "--url", walk.server.url]
    code = main(base)
    err = capsys.readouterr().err
    assert code != 0 and not out.exists()
    assert "out of distribution" in err and "--allow-ood" in err and mr.name in err
    assert len(walk.server.rest("GET", "/instances")) == before  # nothing stored either
    # allowed: written, stored (asked with --store), and the SR says so in every group
    assert main([*base, "--allow-ood"]) == 0
    sr = pydicom.dcmread(out)
    assert sr.SeriesDescription.endswith(OOD_SUFFIX)
    evaluations = _evaluations(sr)
    groups = len(findings_text(sr))  # one numeric measurement per group
    flagged = [v for n, v in evaluations if n == OOD_NAME]
    assert len(flagged) == groups and all(v == result.ood_reason[:64] for v in flagged)
    assert len(walk.server.rest("GET", "/instances")) == before + 1
    scores = {f.lower(): v for f, _n, v in findings_text(sr) if f != SIMILAR}
    assert scores == pytest.approx({k.replace("_", " ").lower(): v for k, v in result.scores.items()}, abs=1e-6)
