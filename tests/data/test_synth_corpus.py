"""The synthetic corpus as a whole: manifest, splits, determinism, files, CLI errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from medvl.data.manifest import check_patient_splits, read_manifest, resolve_path
from medvl.data.synth import generate_corpus
from medvl.errors import ConfigError
from medvl.findings import finding_names

TINY = {"image_size": 128, "ct_size": (32, 32, 24)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    return generate_corpus(out, n_cxr=40, n_ct=6, seed=7, compressed_fraction=0.5, ct_dicom_fraction=0.5, **TINY)


def test_manifest_rows_validate_and_point_at_files(corpus: Path) -> None:
    rows = read_manifest(corpus)
    assert len(rows) == 46
    assert sum(r.dims == 2 for r in rows) == 40 and sum(r.dims == 3 for r in rows) == 6
    vocab = set(finding_names())
    for r in rows:
        assert resolve_path(corpus, r.image).exists(), r.image
        assert set(r.labels) <= vocab
        assert r.report["findings"].strip() and r.report["impression"].strip()
        for ann in r.annotations:
            assert resolve_path(corpus, ann["mask"]).is_file()
            assert r.labels[ann["finding"]] in (1, -1)
        if r.dims == 2:
            assert r.modality in ("CR", "DX") and r.view in ("PA", "AP")
        else:
            assert r.modality == "CT"


def test_splits_are_patient_level_and_all_present(corpus: Path) -> None:
    rows = read_manifest(corpus)
    assert check_patient_splits(rows) == {}
    assert {r.split for r in rows} == {"train", "val", "test"}
    per_patient: dict[str, int] = {}
    for r in rows:
        per_patient[r.patient_id] = per_patient.get(r.patient_id, 0) + 1
    assert max(per_patient.values()) <= 3
    assert all(p.startswith("SYN-P") for p in per_patient)


def test_no_finding_matches_pathology_labels(corpus: Path) -> None:
    for r in read_manifest(corpus):
        pathology = [k for k, v in r.labels.items() if k not in ("no_finding", "support_device") and v != 0]
        assert r.labels["no_finding"] == (0 if pathology else 1)


def _digest(folder: Path) -> dict[str, str]:
    skip = {"run.json", "config.yaml"}  # run information carries a timestamp and git revision
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip
    }


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    kw = {"n_cxr": 4, "n_ct": 2, "image_size": 96, "ct_size": (24, 24, 16), "compressed_fraction": 0.5, "ct_dicom_fraction": 0.5}
    a = generate_corpus(tmp_path / "a", seed=3, **kw)
    b = generate_corpus(tmp_path / "b", seed=3, workers=2, **kw)
    c = generate_corpus(tmp_path / "c", seed=4, **kw)
    da, db = _digest(a.parent), _digest(b.parent)
    assert da == db
    assert da["manifest.jsonl"] != _digest(c.parent)["manifest.jsonl"]


@pytest.mark.parametrize(
    "argv, field",
    [
        (["synth", "--n-cxr", "3"], "--out"),
        (["synth", "--out", "X", "--n-cxr", "-1"], "n_cxr"),
        (["synth", "--out", "X", "--n-ct", "-2"], "n_ct"),
        (["synth", "--out", "X", "--n-cxr", "0", "--n-ct", "0"], "n_cxr"),
        (["synth", "--out", "X", "--ct-size", "64,64"], "--ct-size"),
        (["synth", "--out", "X", "--workers", "0"], "workers"),
        (["synth", "--out", "X", "--normal-fraction", "1.5"], "normal_fraction"),
        (["synth", "--out", "X", "--image-size", "8"], "image_size"),
    ],
)
def test_bad_cli_arguments_give_one_line_and_exit_2(
    argv: list[str], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medvl.cli import main

    argv = [str(tmp_path / "o") if a == "X" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert field in err


def test_cli_writes_a_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medvl.cli import main

    rc = main(["synth", "--out", str(tmp_path), "--n-cxr", "3", "--n-ct", "1", "--image-size", "96",
               "--ct-size", "24,24,16", "--quiet"])
    assert rc == 0
    assert len(read_manifest(tmp_path / "manifest.jsonl")) == 4
    out = capsys.readouterr().out
    studies = next(line for line in out.splitlines() if line.startswith("studies")).split()[1:]
    assert sum(int(n) for n in studies) == 4
    assert json.loads((tmp_path / "synth.json").read_text())["seed"] == 0


def test_unknown_option_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="image_sise"):
        generate_corpus(tmp_path, n_cxr=1, n_ct=0, image_sise=64)


def test_every_split_has_every_finding_when_large_enough() -> None:
    from medvl.data.synth.config import SynthConfig
    from medvl.data.synth.plan import plan_corpus

    plans = plan_corpus(SynthConfig(n_cxr=600, n_ct=150, seed=1))
    for modality, names in (("cxr", finding_names("CR")), ("ct", finding_names("CT"))):
        for split in ("train", "val", "test"):
            sel = [p for p in plans if (p.modality == "CT") == (modality == "ct") and p.split == split]
            seen = {k for p in sel for k, v in p.labels().items() if v == 1}
            assert set(names) <= seen, (modality, split, set(names) - seen)
    n = np.bincount([("train", "val", "test").index(p.split) for p in plans], minlength=3) / len(plans)
    assert 0.6 < n[0] < 0.8 and 0.08 < n[1] < 0.22 and 0.08 < n[2] < 0.22


def test_regenerating_into_the_same_folder_leaves_no_stale_files(tmp_path: Path) -> None:
    kw = {"seed": 1, "image_size": 64, "ct_size": (16, 16, 16)}
    generate_corpus(tmp_path, n_cxr=6, n_ct=2, **kw)
    (tmp_path / "notes.txt").write_text("mine")
    manifest = generate_corpus(tmp_path, n_cxr=2, n_ct=0, **kw)
    rows = read_manifest(manifest)
    referenced = {r.image for r in rows} | {a["mask"] for r in rows for a in r.annotations}
    written = {str(p.relative_to(tmp_path)) for sub in ("cxr", "ct", "masks") for p in (tmp_path / sub).glob("*")}
    assert written == referenced
    assert (tmp_path / "notes.txt").read_text() == "mine"  # files we did not write are left alone


def test_synth_config_section_is_validated_by_from_dict() -> None:
    from medvl.config import from_dict
    from medvl.data.synth.config import SynthConfig

    cfg = from_dict(SynthConfig, {"n_cxr": 10, "ct_size": [32, 32, 16], "compressions": ["rle"]}, where="demo.synth")
    assert cfg.ct_size == (32, 32, 16) and cfg.compressions == ("rle",)
    with pytest.raises(ConfigError, match="demo.synth.n_cx"):
        from_dict(SynthConfig, {"n_cx": 10}, where="demo.synth")
    with pytest.raises(ConfigError, match="compressions"):
        from_dict(SynthConfig, {"compressions": ["zip"]}, where="demo.synth")
    with pytest.raises(ConfigError, match="uncertain_fraction"):
        from_dict(SynthConfig, {"uncertain_fraction": 2.0}, where="demo.synth")


def test_out_pointing_at_a_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medvl.cli import main

    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["synth", "--out", str(target), "--n-cxr", "1", "--n-ct", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "file.txt" in err and "out" in err
