"""2D image encoders from the registry: tokens on their grid, channels, bad input."""

from __future__ import annotations

import pytest
import torch

from medvl.errors import ConfigError, ModelError
from medvl.models.config import ImageConfig
from medvl.models.factory import build_image_encoder

TINY_2D = {
    "resnet10": {"width": 8},
    "resnet18": {"width": 8},
    "densenet121": {"width": 8},
    "efficientnet-b0": {},
    "efficientnet-lite0": {},
    "vit": {"width": 32, "depth": 2, "patch_size": 16, "options": {"num_heads": 2}},
    "swin": {"width": 16, "options": {"depths": [1, 1, 1, 1], "window_size": 4}},
}


@pytest.mark.parametrize("name", sorted(TINY_2D))
def test_encoder_returns_pooled_feature_and_grid_tokens(name):
    torch.manual_seed(0)
    cfg = ImageConfig(name=name, in_channels=3, image_size=64, **TINY_2D[name])
    enc = build_image_encoder(cfg).eval()
    x = torch.randn(2, 3, 64, 64)  # three stacked CT windows as channels
    with torch.no_grad():
        f = enc(x)
    n = 1
    for s in f.grid:
        n *= s
    assert f.grid == ((4, 4) if name == "vit" else (2, 2))  # patch 16 / total stride 32
    assert f.tokens.shape == (2, n, enc.out_dim)
    assert f.pooled.shape == (2, enc.out_dim)
    assert torch.isfinite(f.tokens).all()
    if name == "vit":
        assert torch.allclose(f.attention.sum(-1), torch.ones(2), atol=1e-5)
    else:  # CNN/Swin: the global feature is the mean of the cells
        assert torch.allclose(f.pooled, f.tokens.mean(1), atol=1e-5)
    # samples are encoded independently (eval mode): no leakage across the batch
    with torch.no_grad():
        alone = enc(x[:1])
    assert torch.allclose(alone.pooled, f.pooled[:1], atol=1e-4)


def test_vit_needs_its_training_size():
    cfg = ImageConfig(name="vit", image_size=64, **TINY_2D["vit"])
    enc = build_image_encoder(cfg)
    with pytest.raises(ModelError, match=r"\(64, 64\) \(model.image.image_size\)"):
        enc.check_input(torch.randn(1, 1, 96, 96))


def test_encoder_options_are_validated():
    with pytest.raises(ConfigError, match="model.image.options.num_head"):
        build_image_encoder(ImageConfig(name="vit", options={"num_head": 2}))
    with pytest.raises(ConfigError, match="model.image.options"):
        build_image_encoder(ImageConfig(name="resnet18", options={"x": 1}))
    with pytest.raises(ConfigError, match="slices"):
        build_image_encoder(ImageConfig(name="resnet10", volume="native"))


def test_channel_mismatch_is_reported_before_the_first_layer():
    enc = build_image_encoder(ImageConfig(name="resnet10", width=8, in_channels=3))
    with pytest.raises(ModelError, match="got 1 channels"):
        enc.check_input(torch.randn(1, 1, 64, 64))


HF_TINY = {
    "hf-vit": {"width": 32, "depth": 2, "patch_size": 16, "options": {"num_heads": 2}},
    "hf-swin": {"width": 16, "options": {"num_heads": 1, "depths": [1, 1, 1, 1], "window_size": 2}},
    "hf-convnext": {"width": 8, "options": {"depths": [1, 1, 1, 1]}},
}


@pytest.mark.parametrize("name", sorted(HF_TINY))
def test_transformers_vision_encoders(name, tmp_path):
    from medvl.models import MedVLModel, build_model

    torch.manual_seed(0)
    model = build_model({"embed_dim": 8, "image": {"name": name, "image_size": 64, **HF_TINY[name]},
                         "text": {"hidden_size": 32, "num_layers": 1, "intermediate_size": 32}}).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        out = model.encode_image(x)
    assert out.grid == ((4, 4) if name == "hf-vit" else (2, 2))
    assert out.local_embeds.shape == (2, out.grid[0] * out.grid[1], 8)
    if name == "hf-vit":
        assert torch.allclose(out.attention.sum(-1), torch.ones(2), atol=1e-5)
    model.save_pretrained(tmp_path)  # the architecture travels in config.json
    with torch.no_grad():
        assert torch.equal(MedVLModel.from_pretrained(tmp_path).encode_image(x).embeds, out.embeds)


def test_hf_vit_cls_attention_matches_the_eager_attention_map():
    from transformers import ViTModel

    torch.manual_seed(0)
    enc = build_image_encoder(ImageConfig(name="hf-vit", image_size=64, **HF_TINY["hf-vit"])).eval()
    ref_cfg = enc.model.config.__class__.from_dict(enc.model.config.to_dict())
    ref_cfg._attn_implementation = "eager"
    ref = ViTModel(ref_cfg, add_pooling_layer=False).eval()
    ref.load_state_dict(enc.model.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ours = enc(x)
        out = ref(pixel_values=x, output_attentions=True)
    expected = out.attentions[-1][:, :, 0, 1:].mean(1)
    expected = expected / expected.sum(-1, keepdim=True)
    assert torch.allclose(ours.attention, expected, atol=1e-6)
    assert torch.allclose(ours.tokens, out.last_hidden_state[:, 1:], atol=1e-5)


def test_transformers_checkpoint_directory_as_pretrained(tmp_path):
    from transformers import ConvNextConfig, ConvNextModel

    torch.manual_seed(0)
    ref = ConvNextModel(ConvNextConfig(num_channels=3, depths=[1, 1, 1, 1],
                                       hidden_sizes=[8, 16, 32, 64])).eval()
    ref.save_pretrained(tmp_path)
    enc = build_image_encoder(ImageConfig(name="hf-convnext", in_channels=3, pretrained=str(tmp_path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc(x).pooled, ref(pixel_values=x).pooler_output, atol=1e-6)
    grey = build_image_encoder(ImageConfig(name="hf-convnext", in_channels=1, pretrained=str(tmp_path))).eval()
    with torch.no_grad():  # RGB stem summed to grey: same response to a grey image
        assert torch.allclose(grey(x[:, :1]).pooled, ref(pixel_values=x[:, :1].repeat(1, 3, 1, 1)).pooler_output,
                              atol=1e-5)


def test_swin_window_must_fit_the_last_stage():
    with pytest.raises(ConfigError, match="window_size"):
        build_image_encoder(ImageConfig(name="hf-swin", image_size=64, options={"window_size": 7}))


def _block(block, x, dilation):
    """A MONAI basic residual block written out with functional convolutions."""
    import torch.nn.functional as F

    def conv(c, h, dil):
        return F.conv2d(h, c.weight, c.bias, stride=1, padding=dil, dilation=dil)

    h = block.act(block.bn1(conv(block.conv1, x, dilation)))
    h = block.bn2(conv(block.conv2, h, dilation))
    skip = x if block.downsample is None else block.downsample[1](
        F.conv2d(x, block.downsample[0].weight, block.downsample[0].bias))
    return block.act(h + skip)


def test_output_stride_16_is_the_dilated_last_stage():
    torch.manual_seed(0)
    cfg32 = ImageConfig(name="resnet18", image_size=128, width=8)
    cfg16 = ImageConfig(name="resnet18", image_size=128, width=8, options={"output_stride": 16})
    e32, e16 = build_image_encoder(cfg32).eval(), build_image_encoder(cfg16).eval()
    # Same parameters: a saved model's weights fit either setting.
    assert {k: v.shape for k, v in e32.state_dict().items()} == {k: v.shape for k, v in e16.state_dict().items()}
    e16.load_state_dict(e32.state_dict())
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        f32, f16 = e32(x), e16(x)
        net = e16.net
        h = net.maxpool(net.act(net.bn1(net.conv1(x))))
        h = net.layer3(net.layer2(net.layer1(h)))
        # Reference: stride 1 everywhere in layer4; block 0 undilated, block 1 dilation 2.
        ref = _block(net.layer4[1], _block(net.layer4[0], h, 1), 2)
    assert f32.grid == (4, 4) and f16.grid == (8, 8)
    assert e16.min_size == 16
    assert torch.allclose(f16.tokens, ref.flatten(2).transpose(1, 2), atol=1e-5)
    assert torch.allclose(f16.pooled, f16.tokens.mean(1), atol=1e-6)
    vol = build_image_encoder(ImageConfig(name="resnet18-3d", width=4, volume="native",
                                          options={"output_stride": 16}))
    assert vol(torch.randn(1, 1, 32, 32, 32)).grid == (2, 2, 2)
    with pytest.raises(ConfigError, match="model.image.options.output_stride"):
        build_image_encoder(ImageConfig(name="resnet18", options={"output_stride": 8}))


def test_tiles_bound_what_a_token_sees():
    torch.manual_seed(0)
    plain = build_image_encoder(ImageConfig(name="resnet18", image_size=128, width=8)).eval()
    tiled = build_image_encoder(ImageConfig(name="resnet18", image_size=128, width=8, options={"tile": 64})).eval()
    tiled.load_state_dict(plain.state_dict())  # same parameters
    x = torch.randn(2, 1, 128, 128)
    with torch.no_grad():
        f = tiled(x)
        # Reference: the plain network on each 64 px square alone, 2x2 tokens per square.
        for r in range(2):
            for c in range(2):
                ref = plain(x[:, :, 64 * r:64 * r + 64, 64 * c:64 * c + 64]).tokens.reshape(2, 2, 2, -1)
                got = f.tokens.reshape(2, 4, 4, -1)[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
                assert torch.allclose(got, ref, atol=1e-5)
        # A change in one square leaves every token of the other squares as it was.
        y = x.clone()
        y[:, :, :64, :64] += 5.0
        g = tiled(y).tokens.reshape(2, 4, 4, -1)
    same = (g - f.tokens.reshape(2, 4, 4, -1)).abs().amax(dim=(0, 3)) < 1e-6
    assert not same[:2, :2].any() and same[2:].all() and same[:, 2:].all()
    assert f.grid == (4, 4) and tiled.min_size == 64
    with pytest.raises(ModelError, match="tile"):
        tiled(torch.randn(1, 1, 96, 96))
    with pytest.raises(ConfigError, match="model.image.options.tile"):
        build_image_encoder(ImageConfig(name="resnet18", options={"tile": 48}))
    with pytest.raises(ConfigError, match="model.image.options.tile"):
        build_image_encoder(ImageConfig(name="resnet18-3d", volume="native", options={"tile": 32}))


def test_coords_tell_a_tile_where_it_is():
    torch.manual_seed(0)
    enc = build_image_encoder(ImageConfig(name="resnet18", image_size=64, width=8,
                                          options={"tile": 32, "coords": True})).eval()
    assert enc.net.conv1.in_channels == 3 and enc.in_channels == 1
    x = torch.zeros(1, 1, 64, 64)  # four identical tiles
    with torch.no_grad():
        t = enc(x).tokens[0]
        # Reference: the first convolution's input is the image, its rows, its columns.
        lin = torch.linspace(-1.0, 1.0, 64)
        ref_in = torch.cat([x, lin.view(1, 1, 64, 1).expand(1, 1, 64, 64), lin.view(1, 1, 1, 64).expand(1, 1, 64, 64)], 1)
        net = enc.net
        tile = ref_in[:, :, 32:, :32]
        h = net.maxpool(net.act(net.bn1(net.conv1(tile))))
        ref = net.layer4(net.layer3(net.layer2(net.layer1(h)))).flatten(1)
    assert torch.allclose(t[2], ref[0], atol=1e-5)  # row-major: the lower-left tile is token 2
    assert not torch.allclose(t[0], t[1], atol=1e-4)  # same pixels, different places
    with pytest.raises(ConfigError, match="model.image.options.coords"):
        build_image_encoder(ImageConfig(name="resnet18-3d", volume="native", options={"coords": True}))
