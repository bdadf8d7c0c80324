"""Heatmaps: the CAM-style map against the model's own global similarity, and the method choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvl.inference.heatmap import cam_similarity, choose_method
from medvl.inference.pipeline import Pipeline
from medvl.inference.preprocessing import Preprocessing
from medvl.io.image import MedicalImage
from medvl.losses import build_loss
from medvl.models import build_model
from medvl.train.record import LocalHeadMonitor

TEXT = {"name": "bert", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32,
        "max_length": 16}


def _model(head: str = "linear") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model({"embed_dim": 8, "head": head, "text": TEXT,
                         "image": {"name": "resnet10", "width": 4, "image_size": 64}})
    return model.eval()


def test_cam_contributions_sum_to_the_global_cosine_similarity() -> None:
    """Mean pooling + linear head: the map decomposes the score retrieval and zero-shot use."""
    model = _model("linear")
    x = torch.rand(1, 64, 64)
    sim, grid, shape = cam_similarity(model, x, "left pleural effusion")
    assert grid == sim.shape and shape == (64, 64) and len(grid) == 2
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x[None]).embeds, dim=-1)[0]
        txt = torch.nn.functional.normalize(model.embed_texts(["left pleural effusion"]).embeds, dim=-1)[0]
    assert float(sim.sum()) == pytest.approx(float(img @ txt), abs=1e-5)


def test_cam_works_with_an_mlp_head_as_an_approximation() -> None:
    sim, _, _ = cam_similarity(_model("mlp"), torch.rand(1, 64, 64), "nodule")
    assert np.isfinite(sim).all() and sim.std() > 0


@pytest.mark.parametrize("record, requested, method, words", [
    ({"local_heads_trained": True}, "auto", "local", "token-level loss trained"),
    ({"local_heads_trained": False}, "auto", "cam", "never trained"),
    (None, "auto", "cam", "does not record"),
    ({"local_heads_trained": False}, "local", None, "random projections"),
    ({"local_heads_trained": True}, "cam", "cam", "asked for"),
])
def test_method_follows_what_trained_the_local_heads(record, requested, method, words) -> None:
    chosen, reason = choose_method(record, requested)
    assert chosen == method and words in reason


def _wide_image() -> MedicalImage:
    arr = np.zeros((40, 80), np.float32)
    arr[10:30, 50:70] = 1.0
    return MedicalImage(arr, (1.0, 1.0), None, "CR", "MONOCHROME2")


def test_pipeline_heatmap_covers_the_image_region_only() -> None:
    pre = Preprocessing.from_data_config({"image_size": 64, "window": "none", "hu_range": [0, 1]})
    pipe = Pipeline(_model(), pre, model_config={"training": {"local_heads_trained": False}})
    h = pipe.heatmap(_wide_image(), "nodule")
    assert h.method == "cam" and "never trained" in h.reason
    assert h.array.shape == (32, 64)  # a 40x80 image fitted into 64x64: rows 16..47 hold it, the rest is padding
    assert h.array.min() == 0.0 and h.array.max() == 1.0 and h.source_box == (0, 40, 0, 80)
    refused = pipe.heatmap(_wide_image(), "nodule", method="local")
    assert refused.array is None and refused.method is None and "random projections" in refused.reason


def test_pipeline_heatmap_with_fit_crop_names_the_source_region_it_covers() -> None:
    pre = Preprocessing.from_data_config({"image_size": 64, "window": "none", "hu_range": [0, 1], "fit": "crop"})
    h = Pipeline(_model(), pre).heatmap(_wide_image(), "nodule")
    assert h.array.shape == (64, 64)
    # the shorter side (40) becomes 64, the longer 128 of which the centre 64 are kept: columns 20..60 of 80
    assert h.source_box == (0, 40, 20, 60)


def test_local_head_monitor_sees_which_loss_trains_the_local_heads() -> None:
    model = _model()
    tokens = model.tokenize(["left pleural effusion", "no acute process", "cardiomegaly", "small nodule"])
    images = torch.rand(4, 1, 64, 64)
    for terms, expected in (({"instance": {"weight": 1.0}}, False),
                            ({"instance": {"weight": 1.0}, "token": {"weight": 1.0}}, True)):
        model.zero_grad(set_to_none=True)
        monitor = LocalHeadMonitor(model)
        loss_fn = build_loss({"terms": terms}, embed_dim=8)
        out = loss_fn(model.encode_image(images), model.encode_text(**tokens), logit_scale=model.logit_scale)
        out["loss"].backward()
        monitor.observe()
        assert monitor.all_trained is expected, terms
        assert monitor.record({"terms": terms})["local_heads_trained"] is expected
