"""``make demo-ct`` (``medvl demo --ct``): its config is coherent, and the demo runs end to end on CT."""

import json
from pathlib import Path

import torch

from medvl.cli import main
from medvl.config import from_dict, load_config
from medvl.data.synth.config import SynthConfig
from medvl.models import MedVLModel

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "demo_ct.yaml"


def test_demo_ct_config_is_a_3d_run_on_the_rendered_grid() -> None:
    cfg = load_config(CONFIG)
    demo = cfg["demo"]
    synth = from_dict(SynthConfig, {"n_cxr": demo["n_cxr"], "n_ct": demo["n_ct"], **demo["synth"]},
                      where="demo.synth")
    synth.validate()
    assert synth.n_cxr == 0 and synth.n_ct >= 200, "enough CTs for a test split that can beat chance"
    assert cfg["data"]["dims"] == 3 and cfg["model"]["image"]["volume"] in ("slices", "native")
    # Rendered (x, y, z) is the model's (D, H, W) reversed: no resampling blurs a nodule away.
    x, y, z = synth.ct_size
    assert cfg["data"]["image_size"] == [z, y, x]
    assert cfg["eval"]["prompts"] == "ct"


def test_demo_ct_runs_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--ct", "--out", str(out), "--n-ct", "16", "demo.synth.workers=1",
                 "data.batch_size=4", "train.epochs=1", "eval.n_bootstrap=20", "eval.plots=false"]) == 0
    printed = capsys.readouterr().out
    assert "trained on" in printed and "CT volumes (3D)" in printed
    assert "make viewer DEMO_OUT=" in printed  # not the 2D demo's default folder
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["corpus"]["studies"], summary["corpus"]["cxr"], summary["corpus"]["ct"]) == (16, 0, 16)
    n_test = summary["corpus"]["used_for_training"]["test"]
    assert n_test >= 1 and summary["image_to_report_r5_chance"] == round(min(1.0, 5 / n_test), 4)
    assert isinstance(summary["image_to_report_r5"], float)
    model = MedVLModel.from_pretrained(summary["outputs"]["model"])
    with torch.no_grad():
        emb = model.encode_image(torch.zeros(1, 1, 32, 64, 64)).embeds
    assert emb.shape == (1, 64)
    assert (out / "index").is_dir()


def test_demo_ct_and_config_together_is_one_clear_error(tmp_path, capsys) -> None:
    assert main(["demo", "--ct", "--config", str(CONFIG), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--ct" in err and "Traceback" not in err
