"""Instance term: symmetric InfoNCE checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from medvl.errors import ConfigError, MedvlError
from medvl.losses import LossInputError, build_loss
from medvl.losses.instance import InstanceConfig, InstanceLoss, label_vectors, soft_targets
from medvl.models.outputs import EncoderOutput


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def pair(v, t) -> tuple[EncoderOutput, EncoderOutput]:
    return EncoderOutput(torch.tensor(v, dtype=torch.float64)), EncoderOutput(torch.tensor(t, dtype=torch.float64))


# v = (1,0), (0,1); t = (3,4)->(0.6,0.8), (0,2)->(0,1). Cosines [[0.6, 0], [0.8, 1]].
V = [[1.0, 0.0], [0.0, 1.0]]
T = [[3.0, 4.0], [0.0, 2.0]]


def hand_directions(s: float) -> tuple[float, float]:
    """Mean CE of image->text rows and text->image columns of s * [[0.6, 0], [0.8, 1]]."""
    i2t = (softplus(-0.6 * s) + softplus(-(1.0 - 0.8) * s)) / 2  # rows: [6,0] t=0; [8,10] t=1
    t2i = (softplus((0.8 - 0.6) * s) + softplus(-1.0 * s)) / 2  # cols: [6,8] t=0; [0,10] t=1
    return i2t, t2i


def test_learnable_scale_matches_hand_computation() -> None:
    loss = build_loss({"terms": {"instance": {}}})
    assert loss.uses_logit_scale
    out = loss(*pair(V, T), logit_scale=torch.tensor(math.log(10.0), dtype=torch.float64))
    i2t, t2i = hand_directions(10.0)
    assert out["instance_loss"].item() == pytest.approx((i2t + t2i) / 2, rel=1e-9)
    assert out["loss"].item() == pytest.approx((i2t + t2i) / 2, rel=1e-9)
    assert out["instance_scale"].item() == pytest.approx(10.0)
    # Row argmax: [6, 0] -> 0 (hit), [8, 10] -> 1 (hit); column argmax: [6, 8] -> 1 (miss),
    # [0, 10] -> 1 (hit): 3 of 4.
    assert out["instance_accuracy"].item() == pytest.approx(0.75)


def test_logit_scale_clamped_at_max_and_gradient_stops_there() -> None:
    loss = build_loss({})
    big = torch.tensor(math.log(1000.0), dtype=torch.float64, requires_grad=True)
    out = loss(*pair(V, T), logit_scale=big)
    i2t, t2i = hand_directions(100.0)
    assert out["instance_loss"].item() == pytest.approx((i2t + t2i) / 2, rel=1e-9)
    out["loss"].backward()
    assert big.grad.item() == 0.0
    small = torch.tensor(math.log(5.0), requires_grad=True)
    loss(*pair(V, T), logit_scale=small)["loss"].backward()
    assert small.grad.item() != 0.0


def test_fixed_temperature_ignores_logit_scale() -> None:
    loss = build_loss({"terms": {"instance": {"temperature": 0.5}}})
    assert not loss.uses_logit_scale
    a = loss(*pair(V, T))["instance_loss"].item()
    b = loss(*pair(V, T), logit_scale=torch.tensor(4.0))["instance_loss"].item()
    i2t, t2i = hand_directions(2.0)
    assert a == b == pytest.approx((i2t + t2i) / 2, rel=1e-9)


@pytest.mark.parametrize("w_i2t,w_t2i", [(1.0, 1.0), (0.75, 0.25), (1.0, 0.0)])
def test_direction_weights(w_i2t: float, w_t2i: float) -> None:
    cfg = {"temperature": 0.1, "image_to_text_weight": w_i2t, "text_to_image_weight": w_t2i}
    out = build_loss({"terms": {"instance": cfg}})(*pair(V, T))
    i2t, t2i = hand_directions(10.0)
    assert out["instance_loss"].item() == pytest.approx(w_i2t * i2t + w_t2i * t2i, rel=1e-9)


def test_label_smoothing_matches_hand_computation() -> None:
    eps = 0.2
    out = build_loss({"terms": {"instance": {"temperature": 0.1, "label_smoothing": eps}}})(*pair(V, T))

    def smoothed(logits: list[float], target: int) -> float:
        lse = math.log(sum(math.exp(z) for z in logits))
        q = [eps / 2 + (1 - eps) * (j == target) for j in range(2)]
        return -sum(qj * (z - lse) for qj, z in zip(q, logits, strict=True))

    i2t = (smoothed([6, 0], 0) + smoothed([8, 10], 1)) / 2
    t2i = (smoothed([6, 8], 0) + smoothed([0, 10], 1)) / 2
    assert out["instance_loss"].item() == pytest.approx((i2t + t2i) / 2, rel=1e-9)


def test_label_vectors_policy() -> None:
    nan = float("nan")
    y, labelled = label_vectors(torch.tensor([[1.0, -1.0, nan], [0.0, nan, 0.0], [nan, nan, nan]]), 0.5)
    assert y.tolist() == [[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]
    assert labelled.tolist() == [True, True, False]


def test_soft_targets_match_hand_computation() -> None:
    nan = float("nan")
    # Studies 0 and 1 report the same finding; 2 a different one; 3 is unlabelled.
    labels = torch.tensor([[1.0, 0.0], [1.0, nan], [0.0, 1.0], [nan, nan]])
    tau = 0.5
    tgt = soft_targets(labels, labels, 0, label_temperature=tau, uncertain_value=0.5)
    e1, e0 = math.exp(1 / tau), 1.0  # cos 1 for the same findings, 0 for disjoint ones
    z = 2 * e1 + e0
    expected = [
        [e1 / z, e1 / z, e0 / z, 0.0],  # unlabelled column 3 gets no target mass
        [e1 / z, e1 / z, e0 / z, 0.0],
        [e0 / (e1 + 2 * e0), e0 / (e1 + 2 * e0), e1 / (e1 + 2 * e0), 0.0],
        [0.0, 0.0, 0.0, 1.0],  # unlabelled row: hard target on its own pair
    ]
    assert torch.allclose(tgt, torch.tensor(expected), atol=1e-6)


def test_soft_target_loss_value_and_effect() -> None:
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both reports say the same thing
    cfg = {"temperature": 0.1, "soft_targets": True, "label_temperature": 1.0}
    out = build_loss({"terms": {"instance": cfg}})(*pair(V, T), labels=labels)
    # Identical labels -> uniform targets (0.5, 0.5) for every row and column.
    def soft(logits: list[float]) -> float:
        lse = math.log(sum(math.exp(z) for z in logits))
        return -sum(0.5 * (z - lse) for z in logits)

    i2t = (soft([6, 0]) + soft([8, 10])) / 2
    t2i = (soft([6, 8]) + soft([0, 10])) / 2
    assert out["instance_loss"].item() == pytest.approx((i2t + t2i) / 2, rel=1e-9)
    # Reports with the same findings are interchangeable: swapping them leaves the soft
    # loss unchanged, while the hard loss treats the swap as two wrong pairings.
    swapped = build_loss({"terms": {"instance": cfg}})(*pair(V, T[::-1]), labels=labels)
    assert swapped["instance_loss"].item() == pytest.approx(out["instance_loss"].item(), rel=1e-12)
    hard_cfg = {"terms": {"instance": {"temperature": 0.1}}}
    hard = build_loss(hard_cfg)(*pair(V, T), labels=labels)["instance_loss"].item()
    hard_swapped = build_loss(hard_cfg)(*pair(V, T[::-1]), labels=labels)["instance_loss"].item()
    assert abs(hard - hard_swapped) > 1.0


def random_batch(b: int = 6, d: int = 5, k: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, d, generator=g, dtype=torch.float64)
    t = torch.randn(b, d, generator=g, dtype=torch.float64)
    labels = torch.randint(-1, 2, (b, k), generator=g).double()
    labels[torch.rand(b, k, generator=g) < 0.3] = float("nan")
    return v, t, labels


@pytest.mark.parametrize(
    "cfg",
    [{}, {"soft_targets": True, "label_temperature": 0.3, "label_smoothing": 0.1},
     {"local_loss": True, "image_to_text_weight": 0.75, "text_to_image_weight": 0.25}],
)
def test_invariant_to_batch_permutation_and_embedding_scale(cfg: dict) -> None:
    loss = build_loss({"terms": {"instance": cfg}})
    v, t, labels = random_batch()
    scale = torch.tensor(2.5, dtype=torch.float64)
    ref = loss(EncoderOutput(v), EncoderOutput(t), logit_scale=scale, labels=labels)["loss"]
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = loss(EncoderOutput(v[perm]), EncoderOutput(t[perm]), logit_scale=scale, labels=labels[perm])
    scaled = loss(EncoderOutput(v * 7.0), EncoderOutput(t * 0.01), logit_scale=scale, labels=labels)
    assert permuted["loss"].item() == pytest.approx(ref.item(), rel=1e-12)
    assert scaled["loss"].item() == pytest.approx(ref.item(), rel=1e-9)


def test_local_loss_equals_full_matrix_on_one_process() -> None:
    v, t, _ = random_batch()
    a = build_loss({"terms": {"instance": {}}})(EncoderOutput(v), EncoderOutput(t), logit_scale=torch.tensor(1.0))
    b = build_loss({"terms": {"instance": {"local_loss": True}}})(
        EncoderOutput(v), EncoderOutput(t), logit_scale=torch.tensor(1.0))
    assert a["loss"].item() == pytest.approx(b["loss"].item(), rel=1e-12)


def test_bad_inputs_raise_named_errors() -> None:
    loss = build_loss({})
    v, t, labels = random_batch()
    with pytest.raises(LossInputError, match=r"text\.embeds"):
        loss(EncoderOutput(v), EncoderOutput(t[:4]), logit_scale=torch.tensor(1.0))
    with pytest.raises(LossInputError, match=r"image\.embeds"):
        loss(EncoderOutput(v[None]), EncoderOutput(t), logit_scale=torch.tensor(1.0))
    with pytest.raises(LossInputError, match="logit_scale"):
        loss(EncoderOutput(v), EncoderOutput(t))
    with pytest.raises(LossInputError, match="labels"):
        loss(EncoderOutput(v), EncoderOutput(t), logit_scale=torch.tensor(1.0), labels=labels[:3])
    assert issubclass(LossInputError, MedvlError)


@pytest.mark.parametrize(
    "cfg,field",
    [
        ({"terms": {"instanse": {}}}, "loss.terms.instanse"),
        ({"terms": {"instance": {"weight": -1}}}, "loss.terms.instance.weight"),
        ({"terms": {"instance": {"temperature": 0}}}, "loss.terms.instance.temperature"),
        ({"terms": {"instance": {"label_smoothing": 1.0}}}, "loss.terms.instance.label_smoothing"),
        ({"terms": {"instance": {"soft_targets": "yes"}}}, "loss.terms.instance.soft_targets"),
        ({"terms": {"instance": 3}}, "loss.terms.instance"),
        ({"weights": {}}, "loss.weights"),
    ],
)
def test_config_errors_name_the_key(cfg: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_loss(cfg)
    assert info.value.field == field


def test_zero_weight_terms_are_not_built_and_total_is_weighted() -> None:
    loss = build_loss({"terms": {"instance": {"weight": 0.0}}})
    assert len(loss.terms) == 0
    v, t, _ = random_batch()
    out = loss(EncoderOutput(v), EncoderOutput(t))
    assert out["loss"].item() == 0.0
    half = build_loss({"terms": {"instance": {"weight": 0.5, "temperature": 0.1}}})(*pair(V, T))
    assert half["loss"].item() == pytest.approx(0.5 * half["instance_loss"].item())


def test_module_works_directly_with_its_config() -> None:
    term = InstanceLoss(InstanceConfig(temperature=0.1))
    i2t, t2i = hand_directions(10.0)
    assert term(*pair(V, T))["instance_loss"].item() == pytest.approx((i2t + t2i) / 2)
