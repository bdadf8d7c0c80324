"""Recipes on miniature trees with each corpus's real layout (written by medvl.recipes.testing)."""

import json

import numpy as np
import pytest

from medvl.cli import main
from medvl.data.manifest import check_patient_splits, read_manifest, resolve_path
from medvl.errors import DatasetRecipeError
from medvl.recipes import PrepareOptions, prepare
from medvl.recipes.grounding import decode_siim_rle
from medvl.recipes.testing import (
    siim_rle_encode,
    write_chexpert_tree,
    write_ct_rate_tree,
    write_mimic_tree,
    write_openi_tree,
    write_rsna_tree,
    write_siim_tree,
)


def _prepare(corpus, root, tmp_path, **opts):
    out = tmp_path / "out" / "manifest.jsonl"
    n = prepare(corpus, root, out, PrepareOptions(**opts))
    rows = read_manifest(out)
    assert len(rows) == n
    assert check_patient_splits(rows) == {}
    return out, rows


@pytest.mark.parametrize("jpg", [False, True])
def test_mimic_cxr(tmp_path, jpg) -> None:
    root = write_mimic_tree(tmp_path / "mimic", n_patients=3, jpg=jpg)
    out, rows = _prepare("mimic-cxr-jpg" if jpg else "mimic-cxr", root, tmp_path, check_files=True)
    # 3 patients x 2 studies x 2 images, of which views PA and LATERAL: only PA kept by default
    assert len(rows) == 6
    assert {r.view for r in rows} == {"PA"}
    assert {r.split for r in rows} == {"train", "val", "test"}
    r = rows[0]
    assert r.report["impression"].startswith("Small")
    assert "pleural effusion" in r.report["findings"].lower()
    assert "INDICATION" not in json.dumps(r.report) and "cough" not in json.dumps(r.report).lower()
    assert r.labels["pleural_effusion"] == 1
    assert resolve_path(out, r.image).is_file()
    _, all_views = _prepare("mimic-cxr", root, tmp_path, views=None)
    assert len(all_views) == 12


def test_chexpert_uncertainty_policies_and_splits(tmp_path) -> None:
    root = write_chexpert_tree(tmp_path / "cx", n_patients=20)
    _, keep = _prepare("chexpert", root, tmp_path)
    _, ones = _prepare("chexpert", root, tmp_path, uncertain="ones")
    _, zeros = _prepare("chexpert", root, tmp_path, uncertain="zeros")
    _, ignore = _prepare("chexpert", root, tmp_path, uncertain="ignore")
    sid = "chexpert-train-patient00001-study1-view1_frontal"
    get = lambda rows: next(r for r in rows if r.study_id == sid).labels
    assert get(keep)["support_device"] == -1
    assert get(ones)["support_device"] == 1
    assert get(zeros)["support_device"] == 0
    assert "support_device" not in get(ignore)
    assert all(r.view in ("PA", "AP") for r in keep)  # frontal only by default
    assert {r.split for r in keep if r.meta.get("csv") == "valid"} == {"test"}
    assert all(r.report == {} and r.meta["has_report"] is False for r in keep)


def test_chexpert_5x200_is_exclusively_positive(tmp_path) -> None:
    root = write_chexpert_tree(tmp_path / "cx", n_patients=60)
    _, rows = _prepare("chexpert", root, tmp_path, subset="chexpert5x200")
    # 60 patients, 12 per class, minus the ones positive for two of the five (p % 7 == 0)
    by_class = {}
    for r in rows:
        by_class.setdefault(r.meta["five_by_200_class"], []).append(r)
        assert sum(r.labels.values()) == 1 and r.split == "test"
    assert set(by_class) == {"atelectasis", "cardiomegaly", "consolidation", "edema", "pleural_effusion"}
    excluded = {p for p in range(60) if p % 7 == 0}
    assert len(rows) == 60 - len(excluded)
    chosen_patients = {int(r.patient_id.split("patient")[1]) - 1 for r in rows}
    assert chosen_patients.isdisjoint(excluded)


def test_openi(tmp_path) -> None:
    root = write_openi_tree(tmp_path / "openi", n_reports=8)
    _, rows = _prepare("openi", root, tmp_path, check_files=True)
    # 8 reports x 2 images, report 5 ships only one image
    assert len(rows) == 15
    cm = [r for r in rows if r.labels.get("cardiomegaly") == 1]
    assert cm and all(r.report["impression"] == "Cardiomegaly." for r in cm)
    normal = [r for r in rows if r.labels == {"no_finding": 1}]
    assert normal and all("clear" in r.report["findings"] for r in normal)
    nod = [r for r in rows if "nodule" in r.labels]
    assert nod and all("Granuloma" in r.meta["mesh"] for r in nod)
    # both images of one report share the patient and so the split
    assert len({r.split for r in rows if r.patient_id == rows[0].patient_id}) == 1


def test_ct_rate(tmp_path) -> None:
    root = write_ct_rate_tree(tmp_path / "ct", n_train=5, n_valid=2)
    out, rows = _prepare("ct-rate", root, tmp_path, check_files=True)
    assert len(rows) == 14
    assert {r.dims for r in rows} == {3} and {r.modality for r in rows} == {"CT"}
    assert {r.split for r in rows if "valid_" in r.study_id} == {"test"}
    r = rows[0]
    assert r.labels["nodule"] == 1 and r.labels["emphysema"] == 0
    assert r.report["impression"] == "Right upper lobe nodule."
    assert resolve_path(out, r.image).name == "train_1_a_1.nii.gz"
    # two reconstructions of one patient share the patient id
    assert rows[0].patient_id == rows[1].patient_id


def test_siim_rle_hand_worked() -> None:
    # 3x3 image, column-major flat order: (r0,c0),(r1,c0),(r2,c0),(r0,c1)...
    # runs: start 1 length 2 -> (r1,c0),(r2,c0); then offset 2 from index 3 -> index 5 (r2,c1), length 1
    mask = decode_siim_rle("1 2 2 1", width=3, height=3)
    expected = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0]], np.uint8)
    np.testing.assert_array_equal(mask, expected)
    assert siim_rle_encode(expected) == "1 2 2 1"


def test_rsna_and_siim(tmp_path) -> None:
    from PIL import Image

    _, rsna = _prepare("rsna-pneumonia", write_rsna_tree(tmp_path / "rsna"), tmp_path, check_files=True)
    pos = [r for r in rsna if r.labels["pneumonia"] == 1]
    assert len(pos) == 3 and all(len(r.annotations) == 2 for r in pos)
    assert pos[0].annotations[0]["box"] == [101.0, 200.0, 151.0, 280.0]
    root, truth = write_siim_tree(tmp_path / "siim")
    out, siim = _prepare("siim-pneumothorax", root, tmp_path)
    for r in siim:
        iid = r.study_id.removeprefix("siim-")
        if truth[iid].any():
            m = np.asarray(Image.open(resolve_path(out, r.annotations[0]["mask"]))) > 0
            np.testing.assert_array_equal(m, truth[iid].astype(bool))
        else:
            assert r.annotations == [] and r.labels["pneumothorax"] == 0


def test_own_folder(tmp_path) -> None:
    from medvl.recipes.testing import _tiny_dicom

    root = tmp_path / "mine"
    _tiny_dicom(root / "a.dcm")
    _tiny_dicom(root / "b.dcm")
    (root / "reports.csv").write_text(
        "image,report,patient_id,edema\n"
        'a.dcm,"FINDINGS: Mild edema. IMPRESSION: Edema.",P1,1\n'
        'b.dcm,"IMPRESSION: Normal chest.",P2,0\n'
    )
    _, rows = _prepare("folder", root, tmp_path)
    assert [r.labels for r in rows] == [{"edema": 1}, {"edema": 0}]
    assert rows[0].report == {"findings": "Mild edema.", "impression": "Edema."}
    assert rows[0].modality == "CR" and rows[0].dims == 2


@pytest.mark.parametrize(
    ("corpus", "setup", "match"),
    [
        ("mimic-cxr", lambda r: r.mkdir(), "not a mimic-cxr root"),
        ("openi", lambda r: (r / "ecgen-radiology").mkdir(parents=True) or (r / "ecgen-radiology" / "1.xml").write_text("<eCitation><uId"), "unreadable XML"),
        ("ct-rate", lambda r: write_ct_rate_tree(r) and (r / "dataset/radiology_text_reports/train_reports.csv").write_text("VolumeName,Findings_EN\nx,y\n"), "missing column.*Impressions_EN"),
        ("folder", lambda r: r.mkdir() or (r / "reports.csv").write_text("image,report\nmissing.dcm,text\n"), "missing.dcm.*not found"),
        ("folder", lambda r: r.mkdir() or (r / "reports.csv").write_text("report\ntext\n"), "missing column.*image"),
    ],
)
def test_bad_roots_give_clear_errors(tmp_path, corpus, setup, match) -> None:
    root = tmp_path / "root"
    setup(root)
    with pytest.raises(DatasetRecipeError, match=match):
        prepare(corpus, root, tmp_path / "m.jsonl", PrepareOptions())


def test_cli_prepare_and_bad_corpus(tmp_path, capsys) -> None:
    root = write_openi_tree(tmp_path / "openi", n_reports=4, real_images=False)
    assert main(["prepare", "openi", "--root", str(root), "--out", str(tmp_path / "m.jsonl")]) == 0
    assert "openi: 8 rows" in capsys.readouterr().out
    assert main(["prepare", "nosuch", "--root", str(root), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "unknown corpus recipe 'nosuch'" in err and "Traceback" not in err


def test_image_only_corpus_passes_validate(tmp_path, capsys) -> None:
    root = write_chexpert_tree(tmp_path / "cx", n_patients=10, real_images=True)
    out = tmp_path / "m.jsonl"
    assert main(["prepare", "chexpert", "--root", str(root), "--out", str(out)]) == 0
    assert main(["validate", str(out), "--full"]) == 0, capsys.readouterr().out


def test_own_folder_without_patient_ids_derives_ids_that_are_not_paths(tmp_path) -> None:
    """Before, patient_id and study_id were the image path, e.g. 'Doe_Jane/chest.dcm'."""
    from medvl.recipes.testing import _tiny_dicom

    root = tmp_path / "mine"
    _tiny_dicom(root / "Doe_Jane" / "chest.dcm")
    _tiny_dicom(root / "Roe_Richard" / "chest.dcm")
    (root / "reports.csv").write_text(
        "image,report\n"
        'Doe_Jane/chest.dcm,"IMPRESSION: Normal chest."\n'
        'Roe_Richard/chest.dcm,"IMPRESSION: Edema."\n'
    )
    with pytest.warns(UserWarning, match="each study is its own patient"):
        _, rows = _prepare("folder", root, tmp_path)
    for r in rows:
        for value in (r.patient_id, r.study_id):
            assert "Doe" not in value and "Roe" not in value and "/" not in value and "chest" not in value
    assert len({r.patient_id for r in rows}) == 2 and len({r.study_id for r in rows}) == 2
    # the same file gets the same ids on a rerun (stable splits)
    with pytest.warns(UserWarning, match="each study is its own patient"):
        _, again = _prepare("folder", root, tmp_path / "again")
    assert [(r.patient_id, r.study_id, r.split) for r in rows] == [(r.patient_id, r.study_id, r.split) for r in again]
