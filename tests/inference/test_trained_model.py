"""A trained model directory as a complete inference unit: the README example, real DICOMs, CLI."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

import medvl
from medvl.cli import main

REPO = Path(__file__).resolve().parents[2]


def _file(name: str) -> str:
    return get_testdata_file(name, download=False)


@pytest.fixture(scope="module")
def model(trained: Path) -> medvl.Pipeline:
    return medvl.load(trained / "run" / "model")


def test_training_wrote_every_inference_file(trained: Path) -> None:
    model_dir = trained / "run" / "model"
    for name in ("preprocessing.json", "calibration.json", "training_profile.json", "ood_reference.safetensors"):
        assert (model_dir / name).is_file(), name
    profile = json.loads((model_dir / "training_profile.json").read_text())
    assert set(profile["modalities"]) <= {"CR", "DX"} and profile["body_parts"] == {"CHEST": profile["n_sampled"]}
    assert profile["dims"] == 2 and profile["n_studies"] > 50 and profile["embedding"]["threshold"] > 0
    assert profile["features"]["threshold"] > 0 and profile["features"]["n_reference"] == profile["n_studies"]
    from safetensors.numpy import load_file

    ref = load_file(str(model_dir / "ood_reference.safetensors"))
    assert ref["features"].shape == (profile["n_studies"], profile["features"]["dim"])
    cal = json.loads((model_dir / "calibration.json").read_text())
    assert cal["method"] == "platt" and cal["fitted_on"]["split"] == "val"
    assert set(cal["findings"]) | set(cal["uncalibrated"]) == set(medvl.load(model_dir).prompt_set().findings)


def test_the_readme_example_runs_on_a_real_chest_radiograph(trained: Path) -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- readme-example[^>]*-->\s*```python\n(.*?)```", readme, re.DOTALL).group(1)
    assert len([line for line in block.splitlines() if line.strip()]) == 5
    code = block.replace('"runs/demo/model"', repr(str(trained / "run" / "model")))
    assert code != block
    scope: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    result = scope["result"]
    printed = out.getvalue()
    assert "research use only" in printed and "pleural_effusion" in printed
    assert set(result.scores) >= {"cardiomegaly", "pleural_effusion", "pneumothorax"}
    assert all(0.0 <= v <= 1.0 for v in result.scores.values())
    assert isinstance(result.calibrated, bool) and isinstance(result.ood, bool)
    # a real chest CR: the header checks pass; only the embedding may find it unlike synthetic films
    details = result.ood_details
    assert details["modality"] == {"value": "CR", "ok": True}
    assert details["body_part"] == {"value": "CHEST", "ok": True}
    assert details["dims"]["ok"] and details["photometric"]["ok"]
    assert not result.ood or result.ood_reason.startswith(("far from every training image",
                                                           "unlike the training images in the model's image features"))


def test_calibrated_findings_are_the_ones_the_directory_calibrated(model: medvl.Pipeline) -> None:
    r = model.classify(_file("RG1_UNCR.dcm"))
    assert set(r.calibrated_findings) == set(model.calibration.findings)
    assert r.calibrated == (set(r.calibrated_findings) == set(r.scores))
    for f in r.calibrated_findings:
        assert r.scores[f] != r.raw_scores[f]
    # printed: each score says whether it is a probability
    lines = {line.split()[0]: line for line in str(r).splitlines()[1:] if line.startswith("  ")}
    assert set(lines) == set(r.scores)
    for f, line in lines.items():
        assert line.endswith("*") == (not r.calibrated and f not in r.calibrated_findings), line


@pytest.mark.parametrize("name, words", [
    ("CT_small.dcm", "CT image given to a model trained on"),
    ("MR_small.dcm", "MR image given to a model trained on"),
    ("US1_UNCR.dcm", "US image given"),
    ("RG3_UNCR.dcm", "body part EXTREMITY given"),
    ("emri_small.dcm", "a 3D volume given to a model trained on 2D radiographs"),
])
def test_real_non_chest_dicoms_are_flagged_with_the_reason(model: medvl.Pipeline, name: str, words: str) -> None:
    r = model.check_image(_file(name))
    assert r.ood and words in r.reason


def test_spacing_and_size_are_judged_on_real_files_whose_header_gives_a_spacing(model: medvl.Pipeline,
                                                                                 tmp_path: Path) -> None:
    import pydicom

    profile = model.profile
    # the synthetic films: 128 px at 2.8 mm (the synthesiser keeps a 358 mm field of view)
    assert profile.spacing_mm == pytest.approx([2.8, 2.8]) and profile.extent_mm == pytest.approx([358.4, 358.4])
    mr = model.check_image(_file("MR_small.dcm"))  # 64 px x 0.3125 mm: 20 mm across
    assert mr.details["size"] == {"value": 20.0, "ok": False, "trained": profile.extent_mm}
    assert not mr.details["spacing"]["ok"]
    nm = model.check_image(_file("JPEG2000.dcm"))  # NM whole body, 1024 px x 2.26 mm
    assert nm.details["spacing"]["ok"] and nm.details["size"] == {"value": 2314.2, "ok": False,
                                                                  "trained": profile.extent_mm}
    # the real chest CR records no usable spacing (PixelSpacing 0): not judged, not flagged for it
    assert not {"spacing", "size"} & set(model.check_image(_file("RG1_UNCR.dcm")).details)
    # the same film with a spacing in its header: 1955 px x 0.18 mm = 352 mm, a chest's size;
    # at 0.02 mm it would be 39 mm across
    ds = pydicom.dcmread(_file("RG1_UNCR.dcm"))
    for spacing, size_ok in ((0.18, True), (0.02, False)):
        ds.PixelSpacing = [spacing, spacing]
        ds.save_as(tmp_path / "rg1.dcm")
        r = model.check_image(tmp_path / "rg1.dcm")
        assert r.details["size"]["ok"] is size_ok and r.details["size"]["value"] == pytest.approx(1955 * spacing)
        assert r.details["modality"]["ok"] and r.details["body_part"]["ok"]


def test_text_queries_outside_the_report_vocabulary_are_flagged(model: medvl.Pipeline) -> None:
    assert not model.check_text("right pleural effusion").ood
    assert model.check_text("glioblastoma multiforme").ood


def test_text_queries_are_checked_as_the_model_reads_them(model: medvl.Pipeline) -> None:
    """The vocabulary comes from reports prepared with the model's text preprocessing
    (abbreviations expanded): a query is judged after the same preparation."""
    assert model.preprocessing.text.expand_abbreviations
    vocab = set(model.profile.vocabulary)
    assert "pneumothorax" in vocab and "ptx" not in vocab
    r = model.check_text("PTX")
    assert not r.ood and r.details["vocabulary"]["known"] == ["pneumothorax"]
    blank = model.check_text("   ")
    assert blank.ood and "no content words" in blank.reason


def test_heatmap_of_an_instance_only_model_is_the_cam_map(model: medvl.Pipeline) -> None:
    h = model.heatmap(_file("RG1_UNCR.dcm"), "right pleural effusion")
    assert h.method == "cam" and "never trained" in h.reason
    assert h.array is not None and h.array.shape[0] == 64 and 0 < h.array.shape[1] <= 64


def test_image_features_are_what_the_global_image_head_receives(model: medvl.Pipeline) -> None:
    import numpy as np
    import torch

    from medvl.inference.embedding import embed_images_and_features

    x = model.prepare(_file("RG1_UNCR.dcm"))[None]
    emb, feats = embed_images_and_features(model.model, x)
    with torch.no_grad():
        pooled = model.model.image_encoder(x).pooled
        projected = model.model.image_head(pooled)
    np.testing.assert_allclose(feats, torch.nn.functional.normalize(pooled, dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(emb, torch.nn.functional.normalize(projected, dim=-1).numpy(), atol=1e-5)
    r = model.check_image(_file("RG1_UNCR.dcm"))
    assert r.details["features"]["value"] == pytest.approx(
        float(model._feature_model().distance(feats)[0]), abs=1e-3)


def test_embeddings_are_unit_norm_and_match_between_paths(model: medvl.Pipeline, trained: Path) -> None:
    import numpy as np

    from medvl.data.manifest import read_manifest, resolve_path

    manifest = trained / "corpus" / "manifest.jsonl"
    rows = [r for r in read_manifest(manifest, split="test") if r.dims == 2][:3]
    paths = [resolve_path(manifest, r.image) for r in rows]
    a = model.embed_images(paths)
    b = np.concatenate([model.embed_images([p]) for p in paths])
    assert a.shape == (3, model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    t = model.embed_texts(["Right pleural effusion.", "No acute process."])
    assert t.shape == (2, model.embed_dim)


def test_eval_and_index_cli_use_the_model_directory(trained: Path, tmp_path: Path, capsys) -> None:
    model_dir = trained / "run" / "model"
    manifest = trained / "corpus" / "manifest.jsonl"
    assert main(["eval", "--model", str(model_dir), "--manifest", str(manifest), "--tasks", "zeroshot",
                 "--out", str(tmp_path / "eval"), "eval.n_bootstrap=20", "eval.plots=false"]) == 0
    out = capsys.readouterr().out
    assert "calibration" in out
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["model_id"] == medvl.load(model_dir).model_id
    # an explicit setting that contradicts the saved preprocessing stops before any work
    assert main(["eval", "--model", str(model_dir), "--manifest", str(manifest), "--out", str(tmp_path / "e2"),
                 "data.image_size=224"]) == 2
    assert "data.image_size" in capsys.readouterr().err and not (tmp_path / "e2").exists()
    assert main(["index", "build", "--model", str(model_dir), "--manifest", str(manifest), "--out",
                 str(tmp_path / "idx"), "--split", "test", "index.progress=false"]) == 0
    capsys.readouterr()
    assert main(["index", "search", str(tmp_path / "idx"), "--text", "glioblastoma multiforme", "-k", "2"]) == 0
    captured = capsys.readouterr()
    assert "out of distribution" in captured.err and "1." in captured.out


def test_a_directory_saved_before_preprocessing_json_gets_a_clear_error(trained: Path, tmp_path: Path) -> None:
    old = tmp_path / "old_model"
    shutil.copytree(trained / "run" / "model", old)
    (old / "preprocessing.json").unlink()
    with pytest.raises(medvl.inference.preprocessing.CheckpointError) as err:
        medvl.load(old)
    assert "medvl model preprocessing" in str(err.value)
    assert main(["model", "preprocessing", str(old), "--config", str(trained / "run" / "config.yaml")]) == 0
    assert medvl.load(old).preprocessing == medvl.load(trained / "run" / "model").preprocessing
