"""``medvl index build`` / ``medvl index search`` and ``medvl eval`` through the real CLI parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from medvl_fakes import FakeModel, make_rows

from medvl.cli import main
from medvl.data.manifest import write_manifest


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch, fake_loader: None) -> dict[str, FakeModel]:
    """``--model DIR`` loads a FakeModel (one per folder name) instead of a trained model."""
    import medvl.inference
    from medvl.inference.pipeline import Pipeline
    from medvl.inference.preprocessing import Preprocessing

    made: dict[str, FakeModel] = {}

    def load(model_dir, *, data=None, override_preprocessing=False):
        name = Path(model_dir).name
        if not Path(model_dir).is_dir():
            from medvl.errors import ModelError

            raise ModelError("model folder does not exist", path=model_dir)
        model = made.setdefault(name, FakeModel(seed=hash(name) % 5))
        return Pipeline(model, Preprocessing(), model_dir=model_dir, data=data,
                        override_preprocessing=override_preprocessing)

    monkeypatch.setattr(medvl.inference, "load", load)
    return made


def test_build_and_search_from_the_command_line(tmp_path: Path, fake_models: dict, capsys: pytest.CaptureFixture) -> None:
    rows = make_rows(20, seed=11)
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, rows)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    idx = tmp_path / "idx"
    assert main(["index", "build", "--model", str(model_dir), "--manifest", str(manifest), "--out", str(idx),
                 "index.progress=false"]) == 0
    assert "20 cases" in capsys.readouterr().out
    # Building again from the same manifest is incremental: nothing to embed, no new version.
    assert main(["index", "build", "--model", str(model_dir), "--manifest", str(manifest), "--out", str(idx),
                 "index.progress=false"]) == 0
    assert "nothing new to add" in capsys.readouterr().out
    assert main(["index", "info", str(idx)]) == 0
    info = capsys.readouterr().out
    assert "20 cases" in info and "v000001" in info and "added 20" in info

    # --model omitted: the index remembers its model folder.
    assert main(["index", "search", str(idx), "--text", "There is edema.", "-k", "3", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["labels"]["edema"] == 1

    assert main(["index", "search", str(idx), "--text", "There is edema.", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.lstrip().startswith("1.") and "score" in out


def test_cli_errors_are_one_line_and_exit_2(tmp_path: Path, fake_models: dict, capsys: pytest.CaptureFixture) -> None:
    assert main(["index", "search", str(tmp_path / "none"), "--text", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no case index" in err[0]
    assert main(["eval", "--model", str(tmp_path / "missing"), "--manifest", "m.jsonl", "--out", str(tmp_path / "o")]) == 2
    assert "model folder does not exist" in capsys.readouterr().err


def test_eval_command_writes_report(tmp_path: Path, fake_models: dict, capsys: pytest.CaptureFixture) -> None:
    rows = make_rows(30, seed=12, split="train", prefix="a") + make_rows(30, seed=13, split="test", prefix="b")
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, rows)
    (tmp_path / "model").mkdir()
    out = tmp_path / "eval"
    code = main(["eval", "--model", str(tmp_path / "model"), "--manifest", str(manifest), "--tasks",
                 "zeroshot,retrieval", "--out", str(out), "eval.n_bootstrap=20", "eval.plots=false",
                 "eval.progress=false"])
    assert code == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert f"{res['zeroshot']['mean_auroc']:.3f}" in printed
    assert (out / "run.json").is_file() and (out / "config.yaml").is_file()
