"""The tiny pipeline end to end: synth -> train -> eval -> index -> search, through the CLI.

One deleted image must be skipped and recorded by training, not fatal.
"""

import json
from pathlib import Path

import pytest

from medvl.cli import main
from medvl.data.manifest import read_manifest, resolve_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline")
    assert main(["synth", "--out", str(out / "corpus"), "--n-cxr", "40", "--n-ct", "2", "--seed", "3",
                 "--image-size", "128"]) == 0
    manifest = out / "corpus" / "manifest.jsonl"
    victim = next(r for r in read_manifest(manifest) if r.split == "train" and r.dims == 2)
    resolve_path(manifest, victim.image).unlink()
    (out / "victim").write_text(victim.study_id)
    assert main(["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--out", str(out / "run"),
                 f"data.manifest={manifest}", "train.epochs=2"]) == 0
    return out


def test_training_outputs_and_run_record(run_dir) -> None:
    run = run_dir / "run"
    model = run / "model"
    for name in ("config.json", "model.safetensors", "README.md", "preprocessing.json"):
        assert (model / name).is_file(), name
    # the model directory carries the preprocessing of the config it was trained with
    pre = json.loads((model / "preprocessing.json").read_text())
    assert pre["image"]["image_size"] == 64 and pre["text"]["max_words"] == 48
    # and what trained it: an instance-only loss never trains the local heads
    training = json.loads((model / "config.json").read_text())["training"]
    assert training["local_heads_trained"] is False
    assert training["loss"]["terms"] == {"instance": {"weight": 1.0}}
    info = json.loads((run / "run.json").read_text())
    assert info["seed"] == 0 and "torch" in info["versions"] and "git_revision" in info
    assert "train:" in (run / "config.yaml").read_text()
    skipped = [json.loads(line) for line in (run / "skipped.jsonl").read_text().splitlines()]
    assert (run_dir / "victim").read_text() in {s["study_id"] for s in skipped}
    assert (run / "metrics.csv").read_text().count("\n") >= 2


def test_eval_index_and_search(run_dir, capsys) -> None:
    manifest = run_dir / "corpus" / "manifest.jsonl"
    model = run_dir / "run" / "model"
    assert main(["eval", "--model", str(model), "--manifest", str(manifest), "--tasks", "zeroshot,retrieval",
                 "--out", str(run_dir / "eval")]) == 0
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert 0.0 <= results["zeroshot"]["mean_auroc"] <= 1.0
    assert 0.0 <= results["retrieval"]["image_to_report"]["R@5"] <= 1.0
    assert main(["index", "build", "--model", str(model), "--manifest", str(manifest),
                 "--out", str(run_dir / "index")]) == 0
    capsys.readouterr()
    assert main(["index", "search", str(run_dir / "index"), "--text", "right pleural effusion", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert all(f"{i}. SYN-" in out for i in (1, 2, 3)), out
