"""Fine-tuning an imported model with medvl's engine: frozen towers, LoRA, or everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medvl.errors import ConfigError
from medvl.models.importers import import_model
from medvl.train import train


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from medvl.data.synth import generate_corpus

    return Path(generate_corpus(tmp_path_factory.mktemp("corpus"), n_cxr=16, n_ct=0, seed=0, image_size=96,
                                progress=False))


@pytest.fixture(scope="module")
def imported(tmp_path_factory, clip_tokenizer) -> Path:
    """A tiny CLIP, imported (its own 32 px centre-crop preprocessing, CLIP's mean/std)."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    tok = AutoTokenizer.from_pretrained(str(clip_tokenizer))
    torch.manual_seed(0)
    config = CLIPConfig(
        projection_dim=16,
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "eos_token_id": tok.eos_token_id,
                     "bos_token_id": tok.bos_token_id, "pad_token_id": tok.pad_token_id})
    src = tmp_path_factory.mktemp("clip")
    CLIPModel(config).save_pretrained(src)
    tok.save_pretrained(src)
    return import_model(src, tmp_path_factory.mktemp("imported") / "m", licence="MIT")


def _config(manifest: Path, model: dict, **data) -> dict:
    return {"seed": 0, "data": {"manifest": str(manifest), "batch_size": 4, **data}, "model": model,
            "loss": {"terms": {"instance": {"weight": 1.0}, "token": {"weight": 0.5}}},
            "train": {"max_steps": 2, "lr": 1e-2, "val_every_epoch": 0, "log_every": 1, "progress": False}}


def _changed(before: dict, after: dict, prefix: str) -> set[str]:
    """Keys under ``prefix`` whose weights moved; LoRA-wrapped keys are compared with the
    weight they wrap (``base_model.model.`` / ``.base_layer`` removed)."""
    def plain(k: str) -> str:
        return k.replace("base_model.model.", "").replace(".base_layer", "")

    pairs = [(plain(k), k) for k in after if k.startswith(prefix) and "lora_" not in k]
    assert pairs and all(p in before for p, _ in pairs), "every tower weight has its imported counterpart"
    return {k for p, k in pairs if not torch.equal(before[p], after[k])}


def test_frozen_image_tower_and_lora_text_tower(manifest, imported, tmp_path):
    import medvl

    start = load_file(imported / "model.safetensors")
    cfg = _config(manifest, {"init_from": str(imported), "image": {"freeze": True}, "text": {"lora_rank": 2}})
    result = train(cfg, tmp_path / "run")
    after = load_file(result.model_dir / "model.safetensors")
    assert not _changed(start, after, "image_encoder.")  # frozen
    assert not _changed(start, after, "text_encoder.")  # base weights under the adapters
    assert any("lora_" in k for k in after) and _changed(start, after, "image_head.")
    pipe = medvl.load(result.model_dir)  # the fine-tuned model keeps the source's input and rule
    assert pipe.data_config.fit == "crop" and pipe.data_config.image_size == 32
    assert pipe.data_config.mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert pipe.rule.scoring == "classes"
    assert pipe.provenance["licence"] == "MIT"
    assert pipe.provenance["conversion"].endswith("then fine-tuned with medvl")
    assert str(imported) not in (result.model_dir / "config.json").read_text()


def test_full_fine_tuning_moves_both_towers(manifest, imported, tmp_path):
    start = load_file(imported / "model.safetensors")
    result = train(_config(manifest, {"init_from": str(imported)}), tmp_path / "run")
    after = load_file(result.model_dir / "model.safetensors")
    assert _changed(start, after, "image_encoder.") and _changed(start, after, "text_encoder.")
    assert json.loads((result.model_dir / "config.json").read_text())["model"]["image"]["name"] == "hf-clip"


def test_data_settings_that_contradict_the_import_are_refused(manifest, imported, tmp_path):
    with pytest.raises(ConfigError, match="data.image_size"):
        train(_config(manifest, {"init_from": str(imported)}, image_size=64), tmp_path / "run")


def test_eval_index_and_search_use_the_import_unchanged(manifest, imported, tmp_path, capsys):
    """The CLI a user runs on an imported model, with no config of its own: eval scores with
    the import's rule, the index is built and searched by text and by a real DICOM image."""
    from pydicom.data import get_testdata_file

    from medvl.cli import main

    assert main(["eval", "--model", str(imported), "--manifest", str(manifest), "--out", str(tmp_path / "eval"),
                 "eval.n_bootstrap=20", "eval.plots=false"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["zeroshot"]["scoring"] == "classes"  # the directory's own rule
    assert "classes/mean" in results["zeroshot"]["variants"]
    assert results["retrieval"]["image_to_report"]["gallery_size"] > 0
    assert main(["index", "build", "--model", str(imported), "--manifest", str(manifest),
                 "--out", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    assert main(["index", "search", str(tmp_path / "index"), "--text", "pleural effusion", "-k", "3", "--json"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    dicom = get_testdata_file("RG1_UNCR.dcm", download=False)
    assert main(["index", "search", str(tmp_path / "index"), "--image", str(dicom), "-k", "2", "--json"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    folder = tmp_path / "dicoms"
    folder.mkdir()
    (folder / "cr.dcm").write_bytes(Path(dicom).read_bytes())
    assert main(["embed", "--model", str(imported), "--folder", str(folder), "--out", str(tmp_path / "emb"),
                 "--no-progress"]) == 0
    import pyarrow.parquet as pq

    import medvl

    rows = [v for f in sorted((tmp_path / "emb").rglob("*.parquet"))
            for v in pq.read_table(f, columns=["image_embedding"]).column("image_embedding").to_pylist()]
    assert len(rows) == 1
    expected = medvl.load(imported).embed_images([dicom])[0]
    got = torch.tensor(rows[0], dtype=torch.float32)
    assert torch.allclose(got, torch.from_numpy(expected), atol=1e-5)
