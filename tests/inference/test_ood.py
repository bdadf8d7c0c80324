"""The out-of-distribution checks, one by one, on hand-made images and a hand-made profile."""

from __future__ import annotations

import numpy as np
import pytest

from medvl.errors import CheckpointError
from medvl.inference.ood import (
    PROFILE_NAME,
    FeatureModel,
    TrainingProfile,
    check_image,
    check_text,
    neighbour_similarity,
    report_vocabulary,
)
from medvl.io.image import MedicalImage

PROFILE = TrainingProfile(n_studies=1200, dims=2, modalities={"CR": 700, "DX": 500}, body_parts={"CHEST": 120},
                          photometric={"greyscale": 128}, spacing_mm=[0.14, 0.2], extent_mm=[300.0, 430.0],
                          n_sampled=128,
                          vocabulary=["cardiomegaly", "effusion", "left", "pleural", "right"],
                          embedding={"k": 5, "threshold": 0.8, "quantile": 0.01},
                          features={"threshold": 12.0, "quantile": 0.01})


def _img(modality="CR", *, part="CHEST", photometric="MONOCHROME1", spacing=0.16, dicom=True,
         shape=(2200, 2000)) -> MedicalImage:  # 352 x 320 mm, like a chest film
    tags = {"Modality": modality, "BodyPartExamined": part, "spacing_source": "PixelSpacing"} if dicom \
        else {"spacing_source": "assumed"}
    arr = np.zeros(shape + ((3,) if photometric == "RGB" else ()), np.float32)
    return MedicalImage(arr, (spacing, spacing), None, modality if dicom else "OT", photometric, tags=tags)


def test_a_chest_radiograph_like_the_training_data_passes_every_check() -> None:
    r = check_image(_img(), model_dims=2, profile=PROFILE, similarity=0.9, feature_distance=8.0)
    assert not r.ood and r.reason == ""
    assert all(d["ok"] for d in r.details.values()) and set(r.details) == {
        "dims", "modality", "body_part", "photometric", "spacing", "size", "embedding", "features"}
    assert r.details["size"] == {"value": 352.0, "ok": True, "trained": [300.0, 430.0]}
    assert not check_image(_img(part="THORAX"), model_dims=2, profile=PROFILE).ood  # a synonym of CHEST


@pytest.mark.parametrize("image, words", [
    (_img("CT", part="HEAD"), "CT image given to a model trained on CR/DX chest radiographs (1,200 studies)"),
    (_img("MR", part=""), "MR image given to a model trained on CR/DX chest radiographs"),
    (_img("CR", part="CSPINE"), "body part CSPINE given to a model trained on CR/DX chest"),
    (_img("OT", part="", photometric="RGB"), "OT image given"),
    (_img("CR", photometric="RGB"), "colour image given to a model trained on greyscale images"),
    (_img("CR", spacing=0.7, shape=(500, 500)), "pixel spacing 0.7 mm, far from the training images' 0.14-0.2 mm"),
    # same spacing as training, but 20 mm across (an MR-sized patch labelled CR CHEST)
    (_img("CR", shape=(125, 100)), "an image 20 mm across given to a model trained on images 300-430 mm across"),
    (_img("CR", spacing=0.2, shape=(9000, 9000)), "an image 1800 mm across given"),
])
def test_each_header_check_flags_with_its_reason(image, words) -> None:
    r = check_image(image, model_dims=2, profile=PROFILE, similarity=0.9)
    assert r.ood and words in r.reason


def test_files_without_headers_are_judged_by_embedding_not_by_modality() -> None:
    png = _img(dicom=False, photometric="MONOCHROME2")
    near = check_image(png, model_dims=2, profile=PROFILE, similarity=0.85)
    assert not near.ood and not {"modality", "spacing", "size"} & set(near.details)
    far = check_image(png, model_dims=2, profile=PROFILE, similarity=0.42)
    assert far.ood and far.reason.startswith("far from every training image (similarity 0.420")


def test_images_unlike_the_training_features_are_flagged_even_when_their_embedding_is_close() -> None:
    png = _img(dicom=False, photometric="MONOCHROME2")
    r = check_image(png, model_dims=2, profile=PROFILE, similarity=0.95, feature_distance=20.5)
    assert r.ood and r.reason == ("unlike the training images in the model's image features (distance 20.5; "
                                  "99% of validation images are within 12.0)")
    assert r.details["embedding"]["ok"] and r.details["features"] == {"value": 20.5, "ok": False, "threshold": 12.0}
    assert not check_image(png, model_dims=2, profile=PROFILE, similarity=0.95, feature_distance=12.0).ood


def test_feature_distance_is_mahalanobis_to_the_training_features() -> None:
    """Same Euclidean offset, very different distance: along a direction the training
    features barely vary, an offset is far; the reference is numpy's own covariance."""
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(20000, 3)) * np.array([1.0, 0.1, 0.5])
    fm = FeatureModel(ref)
    probes = np.array([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.5]])
    inv = np.linalg.inv(np.cov(ref.T))
    expected = [np.sqrt((p - ref.mean(0)) @ inv @ (p - ref.mean(0))) for p in probes]
    np.testing.assert_allclose(fm.distance(probes), expected, rtol=0.02)
    assert fm.distance(probes)[1] > 4.5 and fm.distance(probes)[0] < 0.6
    assert 0.0 <= fm.shrinkage < 0.01  # plenty of samples: little shrinkage


def test_dims_check_needs_no_profile() -> None:
    vol = MedicalImage(np.zeros((8, 8, 8), np.float32), (1, 1, 1), np.eye(4), "CT", "MONOCHROME2")
    r = check_image(vol, model_dims=2, profile=None)
    assert r.ood and r.reason == "a 3D volume given to a model trained on 2D radiographs"
    assert not check_image(_img(), model_dims=2, profile=None).ood


def test_size_and_spacing_bounds_are_half_and_twice_the_training_range() -> None:
    inside = [_img(shape=(938, 938)), _img(shape=(5375, 5375))]  # 150.1 mm and 860 mm
    outside = [_img(shape=(937, 937)), _img(shape=(5376, 5376))]  # 149.9 mm and 860.2 mm
    assert [check_image(i, model_dims=2, profile=PROFILE).details["size"]["ok"] for i in inside] == [True, True]
    assert [check_image(i, model_dims=2, profile=PROFILE).details["size"]["ok"] for i in outside] == [False, False]


def test_nifti_spacing_comes_from_its_affine_and_is_judged() -> None:
    profile = TrainingProfile(n_studies=40, dims=3, modalities={"CT": 40}, photometric={"greyscale": 40},
                              spacing_mm=[0.7, 0.9], extent_mm=[340.0, 400.0])

    def vol(tags):
        return MedicalImage(np.zeros((64, 64, 40), np.float32), (5.0, 5.0, 5.0), np.diag([5.0, 5, 5, 1]), "OT",
                            "MONOCHROME2", tags=tags)

    r = check_image(vol({"format": "NIfTI-1"}), model_dims=3, profile=profile)
    assert r.details["spacing"]["value"] == 5.0 and r.details["size"]["value"] == 320.0
    assert r.ood and r.reason == "pixel spacing 5 mm, far from the training images' 0.7-0.9 mm"
    one = TrainingProfile(**{**profile.__dict__, "spacing_mm": [5.0, 5.0], "extent_mm": [40.0, 40.0]})
    assert check_image(vol({"format": "NIfTI-1"}), model_dims=3, profile=one).reason.startswith(
        "an image 320 mm across given to a model trained on images 40 mm across (CT volumes (40 studies))")
    assert not {"spacing", "size"} & set(check_image(vol({}), model_dims=3, profile=profile).details)


def test_neighbour_similarity_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 6)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    q = ref[:7] + 0.1 * rng.normal(size=(7, 6)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    want = np.array([np.sort(ref @ v)[::-1][:5].mean() for v in q])
    np.testing.assert_allclose(neighbour_similarity(q, ref, 5), want, rtol=1e-5)
    loo = neighbour_similarity(ref, ref, 3, exclude_self=True)
    np.testing.assert_allclose(loo, [np.sort(ref @ v)[::-1][1:4].mean() for v in ref], rtol=1e-5)


def test_text_queries_are_checked_against_the_training_vocabulary() -> None:
    assert not check_text("Right pleural effusion", PROFILE).ood
    r = check_text("glioblastoma of the temporal lobe", PROFILE)
    assert r.ood and r.reason == "the query shares no words with the training reports"
    assert r.details["vocabulary"]["unknown"] == ["glioblastoma", "temporal", "lobe"]
    assert check_text("the of and", PROFILE).reason == "the query has no content words"
    assert not check_text("anything", None).ood  # no profile: nothing to compare with
    # sharing one common word is not enough: most of the query must be words the model was trained on
    r = check_text("effusion of the left knee joint with fluid", PROFILE)  # 2 of 5 known
    assert r.ood and r.reason == "most of the query's words (knee, joint, fluid) never occur in the training reports"
    assert r.details["vocabulary"]["known_share"] == 0.4
    # a misspelt word among known ones is not flagged; half known is enough
    assert not check_text("right pleural efusion", PROFILE).ood
    half = check_text("pleural efusion", PROFILE)
    assert not half.ood and half.details["vocabulary"]["known_share"] == 0.5


def test_vocabulary_keeps_words_of_at_least_two_reports() -> None:
    texts = ["Small left effusion. Dr Smithers agrees.", "Left effusion unchanged.", "No effusion."]
    assert report_vocabulary(texts) == ["effusion", "left"]  # the one-off name stays out


def test_profile_round_trip_with_reference(tmp_path) -> None:
    ref = np.eye(3, dtype=np.float32)
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    PROFILE.save(tmp_path, reference=ref, features=feats)
    back, back_ref = TrainingProfile.load(tmp_path)
    assert back == PROFILE and np.array_equal(back_ref, ref)
    assert np.array_equal(TrainingProfile.load_features(tmp_path), feats)
    assert TrainingProfile.load_features(tmp_path / "none") is None
    assert TrainingProfile.load(tmp_path / "none") == (None, None)
    # a version-1 profile (before the size range) still loads, with no size check
    import json

    doc = json.loads((tmp_path / PROFILE_NAME).read_text())
    doc.pop("extent_mm")
    doc.pop("features")
    (tmp_path / PROFILE_NAME).write_text(json.dumps({**doc, "format_version": 1}))
    v1, _ = TrainingProfile.load(tmp_path)
    assert v1.extent_mm is None and v1.spacing_mm == PROFILE.spacing_mm
    assert "size" not in check_image(_img(shape=(10, 10)), model_dims=2, profile=v1).details
    (tmp_path / PROFILE_NAME).write_text(json.dumps({**doc, "format_version": 4}))
    with pytest.raises(CheckpointError, match="format_version"):
        TrainingProfile.load(tmp_path)
    (tmp_path / PROFILE_NAME).write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="format"):
        TrainingProfile.load(tmp_path)
