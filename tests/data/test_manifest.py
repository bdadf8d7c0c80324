"""Manifest schema: validation errors name the file, the line and the field."""

import json

import pytest

from medvl.data.manifest import (
    ManifestRow,
    check_patient_splits,
    read_manifest,
    resolve_path,
    write_manifest,
)
from medvl.errors import ManifestError


def _row(**kw):
    base = {
        "study_id": "s1", "patient_id": "p1", "split": "train", "modality": "CR", "dims": 2,
        "image": "img/s1.dcm", "report": {"findings": "Clear lungs.", "impression": "Normal."},
        "labels": {"no_finding": 1},
    }
    base.update(kw)
    return base


def test_round_trip_and_report_text(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    n = write_manifest(path, [ManifestRow(**_row()), _row(study_id="s2", split="test", patient_id="p2")])
    assert n == 2
    rows = read_manifest(path)
    assert [r.study_id for r in rows] == ["s1", "s2"]
    assert rows[0].report_text == "FINDINGS: Clear lungs.\nIMPRESSION: Normal."
    assert [r.study_id for r in read_manifest(path, split="test")] == ["s2"]
    assert resolve_path(path, "img/s1.dcm") == tmp_path.resolve() / "img" / "s1.dcm"


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"split": "holdout"}, "split"),
        ({"dims": 4}, "dims"),
        ({"labels": {"edema": 2}}, "labels.edema"),
        ({"report": "text"}, "report"),
        ({"image": ""}, "image"),
        ({"patient": "x"}, "patient"),
    ],
)
def test_invalid_rows_name_line_and_field(tmp_path, row, field) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(_row()) + "\n" + json.dumps(_row(study_id="s2", **row)) + "\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert "m.jsonl:2" in str(info.value)
    assert info.value.field == field


def test_missing_required_field_and_bad_json(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    r = _row()
    del r["patient_id"]
    path.write_text(json.dumps(r) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:1 \[patient_id\]"):
        read_manifest(path)
    path.write_text("{not json\n")
    with pytest.raises(ManifestError, match="invalid JSON"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "absent.jsonl")


def test_duplicate_study_ids_rejected(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest(path, [_row(), _row()])
    with pytest.raises(ManifestError, match="duplicate study_id"):
        read_manifest(path)


def test_patient_split_check() -> None:
    rows = [ManifestRow(**_row()), ManifestRow(**_row(study_id="s2", split="test"))]
    assert check_patient_splits(rows) == {"p1": {"train", "test"}}


def test_write_is_atomic_on_failure(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    write_manifest(path, [_row()])

    def rows():
        yield _row(study_id="s9")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_manifest(path, rows())
    assert [r.study_id for r in read_manifest(path)] == ["s1"]
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]
