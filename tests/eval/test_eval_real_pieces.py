"""Evaluation with the real data loader and a tiny random MedVLModel on the synthetic corpus.

An untrained model scores near chance, so these tests check what must hold for any
model: every task runs on real DICOM/NIfTI studies, counts match the manifest, masks line
up with the model input, and the report is strict JSON.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

TINY = {
    "embed_dim": 16,
    "image": {"name": "resnet10", "width": 8, "in_channels": 1, "image_size": 64},
    "text": {"name": "bert", "hidden_size": 32, "num_layers": 2, "num_heads": 2,
             "intermediate_size": 64, "max_length": 32},
}
DATA2D = {"dims": 2, "image_size": 64, "batch_size": 8}
DATA3D = {"dims": 3, "image_size": [16, 32, 32], "batch_size": 2, "window": "lung"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medvl.data.synth import generate_corpus

    return generate_corpus(tmp_path_factory.mktemp("corpus"), n_cxr=30, n_ct=4, seed=3, image_size=64,
                           ct_size=(32, 32, 24), compressed_fraction=0.3, ct_dicom_fraction=0.0)


def _model(image: dict | None = None):
    from medvl.models import build_model

    cfg = copy.deepcopy(TINY)
    cfg["image"].update(image or {})
    torch.manual_seed(0)
    return build_model(cfg).eval()


def test_all_tasks_on_radiographs(corpus: Path, tmp_path: Path) -> None:
    from medvl.data.manifest import read_manifest
    from medvl.eval import evaluate

    res = evaluate(_model(), corpus, tasks=["zeroshot", "retrieval", "probe", "grounding"], out_dir=tmp_path,
                   data_cfg=DATA2D, config={"n_bootstrap": 30, "progress": False})
    json.loads((tmp_path / "results.json").read_text())
    test_rows = [r for r in read_manifest(corpus, split="test") if r.dims == 2]
    assert res["n_studies"] == len(test_rows) and res["skipped"] == []
    assert res["zeroshot"]["prompt_set"] == "cxr"
    assert res["retrieval"]["n_images"] == len(test_rows)
    assert res["retrieval"]["n_unique_reports"] == len({" ".join(r.report_text.split()).lower() for r in test_rows})
    n_ann = sum(1 for r in test_rows for a in r.annotations if a.get("mask"))
    assert res["grounding"]["n_cases"] == n_ann and res["grounding"]["errors"] == []
    assert 0.0 <= res["grounding"]["pointing_game"] <= 1.0
    assert set(res["probe"]["fractions"]) == {"1%", "10%", "100%"}
    assert (tmp_path / "grounding").is_dir()


def test_annotation_masks_line_up_with_the_model_input(corpus: Path) -> None:
    """A mask put through the dataset's geometry covers the bright device drawn in the image."""
    from medvl.data import build_dataset
    from medvl.eval.grounding import annotation_mask

    ds = build_dataset(DATA2D, corpus, "train")
    checked = 0
    for i, row in enumerate(ds.rows):
        for a in row.annotations:
            if a["finding"] != "support_device" or not a.get("mask"):
                continue
            image = ds.load_image(i)[0]
            mask = annotation_mask(a, corpus, ds.image_path(i), ds)
            assert mask.shape == image.shape and mask.any()
            # Devices are drawn radio-opaque: brighter inside their mask than around it.
            assert image[mask].mean() > image[~mask].mean()
            checked += 1
    assert checked > 0


def test_volumes_use_ct_prompts_and_slice_heatmaps(corpus: Path, tmp_path: Path) -> None:
    from medvl.data import build_dataset
    from medvl.eval import evaluate, phrase_heatmap

    model = _model({"volume": "slices", "slice_pooling": "attention", "image_size": 32})
    res = evaluate(model, corpus, tasks=["zeroshot", "grounding"], out_dir=tmp_path, data_cfg=DATA3D,
                   split="train", config={"n_bootstrap": 10, "progress": False, "plots": False})
    assert res["zeroshot"]["prompt_set"] == "ct"
    from medvl.data.manifest import read_manifest

    ct_rows = [r for r in read_manifest(corpus, split="train") if r.dims == 3]
    n_masks = sum(1 for r in ct_rows for a in r.annotations if a.get("mask"))
    assert n_masks > 0  # NIfTI masks, put on the (D, H, W) model grid
    assert res["grounding"]["n_cases"] == n_masks and res["grounding"]["errors"] == []
    assert set(res["zeroshot"]["findings"]) <= set(__import__("medvl.findings").findings.finding_names("CT"))
    ds = build_dataset(DATA3D, corpus, "train")
    heat = phrase_heatmap(model, ds.load_image(0), "right pleural effusion")
    assert heat.shape == (16, 32, 32)
    assert np.all(heat == heat[:, :1, :1])  # slice tokens: one value per slice


def test_native_3d_encoder_gives_a_3d_heatmap() -> None:
    from medvl.eval import phrase_heatmap

    model = _model({"name": "resnet10-3d", "volume": "native", "image_size": 32})
    x = torch.rand(1, 32, 64, 64)
    out = model.encode_image(x[None])
    assert len(out.grid) == 3
    heat = phrase_heatmap(model, x, "left pleural effusion")
    assert heat.shape == (32, 64, 64) and heat.min() == 0.0 and heat.max() == 1.0


def test_train_split_is_embedded_without_augmentation(corpus: Path) -> None:
    from medvl.eval.embed import embed_split

    model = _model()
    plain = embed_split(model, corpus, "train", DATA2D)
    noisy_cfg = {**DATA2D, "augment": True, "text_mode": "sample_sentences", "max_words": 8}
    again = embed_split(model, corpus, "train", noisy_cfg)
    np.testing.assert_allclose(again.image, plain.image, atol=1e-6)
    # Truncated reports as with text_mode: truncate, not randomly sampled sentences.
    truncated = embed_split(model, corpus, "train", {**DATA2D, "max_words": 8}, with_text=False)
    assert again.texts == truncated.texts


def test_nifti_mask_lands_where_the_volume_shows_it(tmp_path: Path) -> None:
    """A volume whose bright voxels are its own mask: after the model's geometry both agree."""
    import nibabel as nib

    from medvl.data import build_dataset
    from medvl.data.manifest import write_manifest
    from medvl.eval.grounding import annotation_mask

    vol = np.zeros((40, 30, 20), np.float32)  # (x, y, z) RAS
    vol[5:15, 18:27, 3:9] = 1.0  # an off-centre block: any axis flip or swap would move it
    affine = np.diag([0.8, 1.0, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(vol.astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    write_manifest(tmp_path / "m.jsonl", [{
        "study_id": "v1", "patient_id": "p1", "split": "test", "modality": "CT", "dims": 3,
        "image": "ct.nii.gz", "report": {"findings": "Nodule."}, "labels": {"nodule": 1},
        "annotations": [{"finding": "nodule", "mask": "mask.nii.gz"}],
    }])
    cfg = {"dims": 3, "image_size": [16, 24, 20], "window": "none", "hu_range": [0.0, 1.0]}
    ds = build_dataset(cfg, tmp_path / "m.jsonl", "test")
    image = ds.load_image(0)[0]
    mask = annotation_mask(ds.rows[0].annotations[0], tmp_path / "m.jsonl", ds.image_path(0), ds)
    assert mask.shape == image.shape == (16, 24, 20)
    bright = image >= 0.5
    iou = (bright & mask).sum() / (bright | mask).sum()
    assert iou > 0.9
