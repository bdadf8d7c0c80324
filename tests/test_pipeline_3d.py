"""CT volumes end to end: synthetic NIfTI and DICOM-series CTs -> slice-pooling model -> eval."""

import json
from pathlib import Path

import torch

from medvl.cli import main
from medvl.data.manifest import read_manifest
from medvl.models import MedVLModel

REPO = Path(__file__).resolve().parents[1]


def test_ct_pipeline(tmp_path) -> None:
    assert main(["synth", "--out", str(tmp_path / "c"), "--n-cxr", "0", "--n-ct", "10", "--seed", "5",
                 "--ct-size", "48,48,32"]) == 0
    manifest = tmp_path / "c" / "manifest.jsonl"
    rows = read_manifest(manifest)
    assert {r.dims for r in rows} == {3}
    assert any(Path(r.image).suffix == "" for r in rows), "some CTs should be DICOM series folders"
    assert main(["train", "--config", str(REPO / "configs" / "ct_tiny.yaml"), "--out", str(tmp_path / "run"),
                 f"data.manifest={manifest}"]) == 0
    model = MedVLModel.from_pretrained(tmp_path / "run" / "model")
    out = model.encode_image(torch.zeros(2, 1, 16, 48, 48))
    assert out.embeds.shape == (2, 32)
    assert out.grid == (16,) and out.local_embeds.shape[:2] == (2, 16)  # one token per slice
    assert main(["eval", "--model", str(tmp_path / "run" / "model"), "--manifest", str(manifest),
                 "--tasks", "retrieval", "--out", str(tmp_path / "eval")]) == 0
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert res["retrieval"]["n_images"] == sum(r.split == "test" for r in rows)
