"""``evaluate`` end to end on fake studies: what the demo and users read from results.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from medvl_fakes import FakeModel

from medvl.errors import ConfigError
from medvl.eval import evaluate

FAST = {"n_bootstrap": 50, "progress": False}


def test_perfect_model_scores_high_and_writes_report(fake_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    res = evaluate(FakeModel(), fake_corpus, tasks=["zeroshot", "retrieval", "probe"], out_dir=out, config=FAST)

    on_disk = json.loads((out / "results.json").read_text())  # strict JSON: NaN would fail here
    assert on_disk["zeroshot"]["mean_auroc"] == pytest.approx(res["zeroshot"]["mean_auroc"])
    assert res["n_studies"] == 60
    zs = res["zeroshot"]
    assert zs["prompt_set"] == "cxr"
    assert zs["mean_auroc"] > 0.9
    lo, hi = zs["mean_auroc_ci"]
    assert lo <= zs["mean_auroc"] <= hi
    for name, r in zs["per_class"].items():
        if r["auroc"] is not None:
            assert r["ci_low"] <= r["auroc"] <= r["ci_high"], name
    assert zs["multiclass"]["n"] > 0 and zs["multiclass"]["accuracy"] > 0.9

    i2t = res["retrieval"]["image_to_report"]
    assert i2t["R@5"] > 0.9 and i2t["R@1"] <= i2t["R@5"] <= i2t["R@10"]
    # Identical normal reports are collapsed into one gallery item.
    assert res["retrieval"]["n_unique_reports"] < res["retrieval"]["n_images"]
    assert "hubness" in res["retrieval"]
    by_class = res["retrieval"]["by_class"]
    assert by_class["n"] > 0 and by_class["image_to_report"]["P@1"] == 1.0

    probe = res["probe"]["fractions"]
    assert set(probe) == {"1%", "10%", "100%"}
    assert probe["100%"]["mean_auroc"] > 0.9

    assert (out / "results.md").read_text().startswith("# Evaluation")
    assert (out / "run.json").is_file() and (out / "config.yaml").is_file()
    assert (out / "roc_zeroshot.png").stat().st_size > 1000
    assert (out / "recall_at_k.png").stat().st_size > 1000
    assert (out / "probe.png").stat().st_size > 1000
    assert set(res["plots"]) == {"roc_zeroshot", "recall_at_k", "probe"}


def test_untrained_model_is_near_chance(fake_corpus: Path, tmp_path: Path) -> None:
    res = evaluate(FakeModel(scramble=True, seed=3), fake_corpus, tasks="zeroshot,retrieval",
                   out_dir=tmp_path / "e", config={**FAST, "plots": False})
    assert 0.25 < res["zeroshot"]["mean_auroc"] < 0.75
    i2t = res["retrieval"]["image_to_report"]
    # R@5 far below a perfect model's, within reach of chance (5 / unique reports).
    assert i2t["R@5"] < 0.6


def test_unknown_task_is_a_config_error(fake_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.tasks"):
        evaluate(FakeModel(), fake_corpus, tasks=["zeroshot", "segmentation"], out_dir=tmp_path)


def test_unknown_eval_key_is_a_config_error(fake_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.bootstrap"):
        evaluate(FakeModel(), fake_corpus, tasks=["zeroshot"], out_dir=tmp_path, config={"bootstrap": 3})


def test_results_are_reproducible(fake_corpus: Path, tmp_path: Path) -> None:
    kw = {"tasks": ["zeroshot"], "config": {**FAST, "plots": False}}
    a = evaluate(FakeModel(noise=0.3), fake_corpus, out_dir=tmp_path / "a", **kw)
    b = evaluate(FakeModel(noise=0.3), fake_corpus, out_dir=tmp_path / "b", **kw)
    assert a["zeroshot"]["per_class"] == b["zeroshot"]["per_class"]
    assert np.isfinite(a["zeroshot"]["mean_auroc"])


def test_hubness_bank_is_a_sample_of_train_without_probe(fake_corpus: Path, tmp_path: Path) -> None:
    model = FakeModel()
    evaluate(model, fake_corpus, tasks=["retrieval"], out_dir=tmp_path,
             config={**FAST, "plots": False, "hubness_bank_size": 20})
    # 60 test studies in 8 batches of 8, then the bank stops after 3 of the 10 train batches (24 >= 20).
    assert model.image_calls == 8 + 3
