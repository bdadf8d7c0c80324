"""Golden values: medvl's terms, set to the original code's behaviour, give the original code's numbers.

Every number below was computed by running the ORIGINAL implementations, unmodified,
on the float64 tensors of ``golden_inputs.py``:

* MGCA (github.com/HKU-MedAI/MGCA @ 680fe4a, ``mgca/models/mgca/mgca_module.py``):
  ``MGCA.forward`` with its encoders replaced by stubs that return the fixed tensors
  (embedding heads = identity) and its training-only imports stubbed; it returns the
  instance, token ("local") and prototype losses;
* GLoRIA (github.com/marshuang80/gloria @ 416466a, ``gloria/loss/gloria_loss.py``):
  ``local_loss`` and ``global_loss`` called directly, each returned pair summed as
  ``GLoRIA.calc_loss`` does.

``docs/losses.md`` ("Golden values") describes the procedure; the original code is not
part of this repository. The requirement is agreement to 1e-6; all terms but the
prototype term agree to ~1e-14. MGCA's ``sinkhorn`` returns its codes as float32
(``.float()``), which moves its prototype loss by 2.2e-8 from the float64 value; with
that one cast removed its code gives 3.3973612760248755, which medvl matches to 1e-15.
"""

from __future__ import annotations

import pytest
import torch
from golden_inputs import GRID, HEADS, B, N, checksum, golden_inputs

from medvl.losses import build_loss
from medvl.losses.instance import InstanceConfig, InstanceLoss
from medvl.losses.prototype import PrototypeConfig, PrototypeLoss
from medvl.losses.token_gloria import GloriaConfig, GloriaLocalLoss
from medvl.losses.token_mgca import TokenAlignmentLoss, TokenConfig
from medvl.models.outputs import EncoderOutput

#: Checksums of the inputs the golden values were computed on (golden_inputs.checksum).
CHECKSUM = {"padded": 144574.5174866108, "unpadded": 145289.2432851707}

#: Values from the original code (see the module docstring).
GOLDEN = {
    "padded": {
        "mgca_instance": 17.192762789396912,
        "mgca_token_cnn": 1.711526952889069,  # img_encoder resnet_50: uniform patch weights
        "mgca_token_vit": 1.639084492166965,  # img_encoder vit_base: [CLS]-attention patch weights
        "mgca_token_learned": 7.595568462039282,  # use_local_atten=True, num_heads=2
        "mgca_token_word_only": 0.466102849300236,  # bidirectional=False
        "mgca_prototype": 3.3973612977549816,
        "gloria_local_sum": 15.540203576625057,
        "gloria_local_mean": 14.022651946084451,
        "gloria_global": 12.322923137379615,
    },
    "unpadded": {
        "mgca_instance": 17.192762789396912,
        "mgca_token_cnn": 1.3810987153919339,
        "mgca_token_vit": 1.3971926269303232,
        "mgca_token_learned": 7.938350709301484,
        "mgca_token_word_only": 0.48853861833908574,
        "mgca_prototype": 3.3973612977549816,
        "gloria_local_sum": 13.06036245212454,
        "gloria_local_mean": 13.06036245212454,
        "gloria_global": 12.322923137379615,
    },
}
TOL = 1e-6

#: MGCA's code, as TokenConfig settings (CNN image tower; the ViT variant changes two).
MGCA_TOKEN = {"attention": "dot", "temperature": 0.1, "attention_temperature": 0.1,
              "weight_clip_quantiles": (0.1, 0.9), "word_weights": "attention",
              "patch_weights": "uniform", "normalize_patch_context": True,
              "weight_clip_over": "nonzero", "mask_padded_negatives": False}
MGCA_VIT = {"patch_weights": "attention", "normalize_patch_context": False}


def outputs(inputs: dict[str, torch.Tensor]) -> tuple[EncoderOutput, EncoderOutput]:
    image = EncoderOutput(inputs["image_embeds"], inputs["patches"], torch.ones(B, N, dtype=torch.bool),
                          GRID, inputs["patch_attention"])
    text = EncoderOutput(inputs["text_embeds"], inputs["words"], inputs["word_mask"], None,
                         inputs["word_attention"])
    return image, text


def token_loss(inputs: dict[str, torch.Tensor], **settings) -> float:
    term = TokenAlignmentLoss(TokenConfig(**{**MGCA_TOKEN, **settings})).double()
    if term.cfg.attention == "learned":
        with torch.no_grad():  # MGCA's two nn.MultiheadAttention layers, given the same weights
            for layer in (term.word_attention, term.patch_attention):
                layer.in_proj_weight.copy_(inputs["mha_in_proj_weight"])
                layer.in_proj_bias.copy_(inputs["mha_in_proj_bias"])
                layer.out_proj.weight.copy_(inputs["mha_out_proj_weight"])
                layer.out_proj.bias.copy_(inputs["mha_out_proj_bias"])
    return term(*outputs(inputs))["token_loss"].item()


CASES = ["padded", "unpadded"]


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[str, dict[str, torch.Tensor]]:
    inputs = golden_inputs(padded=request.param == "padded")
    assert checksum(inputs) == pytest.approx(CHECKSUM[request.param], rel=1e-12), \
        "golden_inputs changed (or torch's generator did): the pinned values no longer apply"
    return request.param, inputs


def test_mgca_instance(case) -> None:
    name, inputs = case
    term = InstanceLoss(InstanceConfig(temperature=0.07, image_to_text_weight=1.0, text_to_image_weight=1.0))
    got = term(*outputs(inputs))["instance_loss"].item()
    assert got == pytest.approx(GOLDEN[name]["mgca_instance"], abs=TOL, rel=0)


def test_gloria_global(case) -> None:
    name, inputs = case
    term = InstanceLoss(InstanceConfig(temperature=0.1, image_to_text_weight=1.0, text_to_image_weight=1.0))
    got = term(*outputs(inputs))["instance_loss"].item()
    assert got == pytest.approx(GOLDEN[name]["gloria_global"], abs=TOL, rel=0)


@pytest.mark.parametrize(("key", "settings"), [
    ("mgca_token_cnn", {}),
    ("mgca_token_vit", MGCA_VIT),
    ("mgca_token_learned", {"attention": "learned", "num_heads": HEADS, "embed_dim": 8}),
    ("mgca_token_word_only", {"bidirectional": False}),
])
def test_mgca_token(case, key: str, settings: dict) -> None:
    name, inputs = case
    assert token_loss(inputs, **settings) == pytest.approx(GOLDEN[name][key], abs=TOL, rel=0)


def test_token_defaults_differ_from_mgca_only_where_padding_or_zero_attention_exists(case) -> None:
    """medvl's defaults (padding masked, quantiles over all real words) are MGCA's code
    exactly when a batch has no padded word and no zero-attention word; otherwise each
    of the two options alone changes the value."""
    name, inputs = case
    default = token_loss(inputs, mask_padded_negatives=True, weight_clip_over="valid")
    only_mask = token_loss(inputs, weight_clip_over="valid")
    only_nonzero = token_loss(inputs, mask_padded_negatives=True)
    golden = GOLDEN[name]["mgca_token_cnn"]
    if name == "unpadded":
        for value in (default, only_mask, only_nonzero):
            assert value == pytest.approx(golden, abs=TOL, rel=0)
    else:
        for value in (default, only_mask, only_nonzero):
            assert abs(value - golden) > 1e-4


def test_mgca_prototype(case) -> None:
    name, inputs = case
    term = PrototypeLoss(PrototypeConfig(num_prototypes=inputs["prototypes"].shape[0], embed_dim=8,
                                         temperature=0.2, epsilon=0.05, sinkhorn_iterations=3)).double()
    with torch.no_grad():
        term.prototypes.copy_(inputs["prototypes"])  # unnormalised, as MGCA's nn.Linear weight was
    got = term(*outputs(inputs), epoch=1)["prototype_loss"].item()
    assert got == pytest.approx(GOLDEN[name]["mgca_prototype"], abs=TOL, rel=0)


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_gloria_local(case, aggregation: str) -> None:
    name, inputs = case
    # GLoRIA's code attends with the features as given (normalize_inputs false).
    term = GloriaLocalLoss(GloriaConfig(normalize_inputs=False, aggregation=aggregation))
    got = term(*outputs(inputs))["gloria_loss"].item()
    assert got == pytest.approx(GOLDEN[name][f"gloria_local_{aggregation}"], abs=TOL, rel=0)


def test_mgca_objective_from_config(case) -> None:
    """MGCA's training objective, 1 * ita + 0.7 * local + 0.5 * proto, from a plain config section."""
    name, inputs = case
    loss = build_loss({"terms": {
        "instance": {"temperature": 0.07, "image_to_text_weight": 1.0, "text_to_image_weight": 1.0},
        "token": {"weight": 0.7, **{k: list(v) if isinstance(v, tuple) else v for k, v in MGCA_TOKEN.items()}},
        "prototype": {"weight": 0.5, "num_prototypes": 10, "freeze_epochs": 0},
    }}, embed_dim=8).double()
    with torch.no_grad():
        loss.terms["prototype"].prototypes.copy_(inputs["prototypes"])
    got = loss(*outputs(inputs), epoch=1)["loss"].item()
    g = GOLDEN[name]
    assert got == pytest.approx(g["mgca_instance"] + 0.7 * g["mgca_token_cnn"] + 0.5 * g["mgca_prototype"],
                                abs=TOL, rel=0)
