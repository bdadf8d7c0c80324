"""``medvl validate``: each problem kind is caught, named, and exits 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from test_dataset_helpers import row, write_dicom_2d

from medvl.data import validate
from medvl.data.manifest import write_manifest


def _corpus(tmp_path: Path, rows: list[dict] | None = None) -> Path:
    for i in range(4):
        write_dicom_2d(tmp_path / f"s{i}.dcm", np.full((6, 6), 100 * i), window=(200, 400))
    rows = rows if rows is not None else [
        row("s0", "s0.dcm", patient="a", split="train", labels={"cardiomegaly": 1},
            report={"findings": "Enlarged heart.", "impression": "Cardiomegaly."}),
        row("s1", "s1.dcm", patient="a", split="train", labels={"cardiomegaly": 0},
            report={"findings": "Normal heart size.", "impression": "Normal."}),
        row("s2", "s2.dcm", patient="b", split="val", labels={"edema": 1},
            report={"findings": "Interstitial edema.", "impression": "Edema."}),
        row("s3", "s3.dcm", patient="c", split="test", labels={},
            report={"findings": "Small left effusion.", "impression": "Effusion."}),
    ]
    write_manifest(tmp_path / "m.jsonl", rows)
    return tmp_path / "m.jsonl"


def _run(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    validate.add_arguments(parser)
    args = parser.parse_args(list(argv))
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = validate.run(args)
    return code, buf.getvalue()


def _kinds(report) -> set[str]:
    return {p.kind for p in report.errors}


def test_clean_manifest_passes_with_summary(tmp_path) -> None:
    manifest = _corpus(tmp_path)
    code, out = _run(str(manifest), "--full")
    assert code == 0, out
    assert "OK" in out.splitlines()[-1]
    assert "images opened: 4" in out
    rows_line = next(line for line in out.splitlines() if line.startswith("rows"))
    assert rows_line.split()[1:] == ["2", "1", "1"]  # train, val, test
    cardio = next(line for line in out.splitlines() if line.strip().startswith("cardiomegaly"))
    assert cardio.split()[1] == "50.0%"  # one of two train rows positive
    report = validate.validate_manifest(manifest, full=True)
    assert report.summary["train"]["patients"] == 1
    assert report.summary["val"]["prevalence"]["edema"] == 1.0


def test_patient_leakage(tmp_path) -> None:
    manifest = _corpus(tmp_path)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[3]["patient_id"] = "a"  # patient a now in train and test
    write_manifest(manifest, rows)
    code, out = _run(str(manifest))
    assert code == 2
    assert "patient_leakage" in out and "'a'" in out and "test (line 4)" in out


def test_text_leakage_test_in_train_is_an_error(tmp_path) -> None:
    manifest = _corpus(tmp_path)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    # same text up to case, punctuation and spacing
    rows[3]["report"] = {"findings": "enlarged  heart", "impression": "CARDIOMEGALY!"}
    write_manifest(manifest, rows)
    report = validate.validate_manifest(manifest)
    assert _kinds(report) == {"text_leakage"}
    assert "'s3'" in report.errors[0].message and "'s0'" in report.errors[0].message
    assert _run(str(manifest))[0] == 2
    assert _run(str(manifest), "--text-leakage", "warn")[0] == 0


def test_missing_and_unreadable_files(tmp_path) -> None:
    manifest = _corpus(tmp_path)
    (tmp_path / "s1.dcm").unlink()
    (tmp_path / "s2.dcm").write_bytes(b"garbage, not DICOM")
    report = validate.validate_manifest(manifest, full=True)
    assert _kinds(report) == {"missing_file", "unreadable_file"}
    missing = next(p for p in report.errors if p.kind == "missing_file")
    assert missing.where.endswith("m.jsonl:2") and missing.field == "image"
    unreadable = next(p for p in report.errors if p.kind == "unreadable_file")
    assert unreadable.where.endswith("s2.dcm")
    # existence is checked even when no image is opened
    no_read = validate.validate_manifest(manifest, sample=0)
    assert _kinds(no_read) == {"missing_file"} and no_read.read_checked == 0
    code, out = _run(str(manifest), "--full")
    assert code == 2 and "FAILED" in out
    errors_line = next(line for line in out.splitlines() if line.startswith("errors"))
    assert errors_line.split()[1:] == ["1", "1", "0"]  # s1 is train, s2 is val


def test_empty_report(tmp_path) -> None:
    manifest = _corpus(tmp_path)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[2]["report"] = {"findings": "  ", "impression": ""}
    write_manifest(manifest, rows)
    report = validate.validate_manifest(manifest)
    assert _kinds(report) == {"empty_report"}
    assert report.errors[0].where.endswith(":3")
    assert _run(str(manifest))[0] == 2


def test_label_keys_and_bad_lines_are_all_listed(tmp_path) -> None:
    manifest = _corpus(tmp_path)
    lines = manifest.read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    rows[0]["labels"] = {"Pleural Effusion": 1}  # near-miss of pleural_effusion
    rows[1]["labels"] = {"fracture": 1}  # an extra column: warning only
    rows[3]["labels"] = {"cardiomegaly": 2}  # bad value
    text = "\n".join(json.dumps(r) for r in rows) + "\n{not json\n"
    manifest.write_text(text)
    report = validate.validate_manifest(manifest)
    by_kind = {(p.kind, p.level) for p in report.problems}
    assert ("label_key", "error") in by_kind and ("label_key", "warning") in by_kind
    schema = [p for p in report.errors if p.kind == "schema"]
    assert {p.where.rsplit(":", 1)[1] for p in schema} == {"4", "5"}  # every bad line
    assert any("pleural_effusion" in p.message for p in report.errors)
    assert _run(str(manifest))[0] == 2


def test_dims_mismatch_is_reported(tmp_path) -> None:
    manifest = _corpus(tmp_path)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[0]["dims"] = 3
    write_manifest(manifest, rows)
    report = validate.validate_manifest(manifest, full=True)
    assert _kinds(report) == {"dims_mismatch"}


def test_cli_entry_point(tmp_path, capsys) -> None:
    from medvl.cli import main

    manifest = _corpus(tmp_path)
    assert main(["validate", str(manifest), "--sample", "2", "--json", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] and data["read_checked"] == 2
    assert main(["validate", str(tmp_path / "nope.jsonl")]) == 2
    assert "manifest file not found" in capsys.readouterr().err


@pytest.mark.parametrize("text,norm", [("Heart: NORMAL.\n", "heart normal"), ("", "")])
def test_normalise_text(text, norm) -> None:
    assert validate.normalise_text(text) == norm


def test_no_finding_with_a_present_pathology_is_a_warning(tmp_path) -> None:
    manifest = _corpus(tmp_path)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[0]["labels"] = {"no_finding": 1, "cardiomegaly": 1}
    rows[1]["labels"] = {"no_finding": 1, "support_device": 1}  # devices are not pathology
    write_manifest(manifest, rows)
    report = validate.validate_manifest(manifest)
    assert report.ok
    conflicts = [p for p in report.problems if p.kind == "label_conflict"]
    assert len(conflicts) == 1 and "1 row(s)" in conflicts[0].message
    assert conflicts[0].where.endswith(":1")


def test_same_image_in_two_splits_is_leakage(tmp_path) -> None:
    manifest = _corpus(tmp_path)
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[3]["image"] = "s0.dcm"  # test study points at a train study's image
    write_manifest(manifest, rows)
    report = validate.validate_manifest(manifest)
    assert _kinds(report) == {"image_leakage"}
    assert "'s0' (train, line 1)" in report.errors[0].message
    rows[3]["image"] = "s3.dcm"
    rows[1]["image"] = "s0.dcm"  # two train studies share one file: a warning
    write_manifest(manifest, rows)
    report = validate.validate_manifest(manifest)
    assert report.ok and any(p.kind == "shared_image" for p in report.problems)
