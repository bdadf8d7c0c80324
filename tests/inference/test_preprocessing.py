"""preprocessing.json: round trip, conflicts with explicit settings, old directories, prepare()."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))  # --import-mode=importlib
from test_dataset_helpers import make_corpus_2d

from medvl.config import from_dict
from medvl.data import build_dataset
from medvl.data.config import DataConfig
from medvl.errors import CheckpointError, ConfigError
from medvl.inference.pipeline import Pipeline
from medvl.inference.preprocessing import FILE_NAME, Preprocessing

TRAINED = {"dims": 2, "image_size": 128, "window": "bone", "in_channels": 3, "fit": "crop",
           "resample": "bicubic", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4], "max_words": 40,
           "sections": ["impression"], "lowercase": True, "batch_size": 7, "cache_dir": "/tmp/x"}


def test_round_trip_keeps_every_deterministic_field_and_nothing_else(tmp_path) -> None:
    pre = Preprocessing.from_data_config(TRAINED)
    path = pre.save(tmp_path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "medvl-preprocessing" and doc["format_version"] == 1
    assert doc["image"]["image_size"] == 128 and doc["image"]["fit"] == "crop"
    assert doc["image"]["mean"] == [0.5, 0.4, 0.3] and doc["image"]["io"]["max_voxels"] > 0
    assert doc["text"] == {"sections": ["impression"], "max_words": 40, "expand_abbreviations": True,
                           "lowercase": True}
    assert "batch_size" not in doc["image"] and "cache_dir" not in doc["image"]  # training choices stay out
    back = Preprocessing.load(tmp_path)
    assert back == pre
    cfg = back.apply_to({"batch_size": 3, "cache_dir": None})
    assert cfg.batch_size == 3 and cfg.image_size == 128 and cfg.resample == "bicubic" and cfg.lowercase


def test_explicit_contradiction_is_a_config_error_naming_the_field(tmp_path) -> None:
    pre = Preprocessing.from_data_config(TRAINED)
    with pytest.raises(ConfigError) as err:
        pre.apply_to({"image_size": 224, "batch_size": 2})
    assert err.value.field == "data.image_size" and "128" in str(err.value)
    with pytest.raises(ConfigError) as err:
        pre.apply_to({"io": {"allow_nonuniform": True}})
    assert err.value.field == "data.io.allow_nonuniform"
    # the same values spelled differently are no contradiction
    cfg = pre.apply_to({"image_size": [128, 128], "window": ["bone"], "mean": [0.5, 0.4, 0.3]})
    assert cfg.spatial_size == (128, 128)
    # a DataConfig counts its non-default fields as set (its default fit "pad" is no setting)
    with pytest.raises(ConfigError, match="data.image_size"):
        pre.apply_to(from_dict(DataConfig, {"image_size": 96, "batch_size": 2}, where="data"))
    assert pre.apply_to(from_dict(DataConfig, {"batch_size": 2}, where="data")).fit == "crop"


def test_explicit_override_is_used_and_logged(caplog) -> None:
    pre = Preprocessing.from_data_config(TRAINED)
    with caplog.at_level(logging.WARNING, logger="medvl.inference.preprocessing"):
        cfg = pre.apply_to({"image_size": 224}, override=True)
    assert cfg.image_size == 224 and cfg.fit == "crop"
    assert "data.image_size 128 -> 224" in caplog.text


def test_directory_without_the_file_says_how_to_add_it(tmp_path) -> None:
    with pytest.raises(CheckpointError) as err:
        Preprocessing.load(tmp_path)
    assert "medvl model preprocessing" in str(err.value) and err.value.field == FILE_NAME


@pytest.mark.parametrize("doc, field", [
    ({"format": "other"}, "format"),
    ({"format": "medvl-preprocessing", "format_version": 2}, "format_version"),
    ({"format": "medvl-preprocessing", "format_version": 1, "image": {"fit": "squash"}}, "image.fit"),
    ({"format": "medvl-preprocessing", "format_version": 1, "image": {"in_channels": 3, "mean": [0.5]},
      "text": {}}, "image.std"),
])
def test_invalid_files_are_refused_naming_the_field(tmp_path, doc, field) -> None:
    (tmp_path / FILE_NAME).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError) as err:
        Preprocessing.load(tmp_path)
    assert err.value.field == field


def test_prepare_equals_the_dataset_item(tmp_path) -> None:
    """The one-file path and the training dataset give the same tensor, bit for bit."""
    manifest = make_corpus_2d(tmp_path, n=1)
    data = {"dims": 2, "image_size": 16, "window": "bone", "in_channels": 3, "mean": [0.1, 0.2, 0.3],
            "std": [0.5, 0.5, 0.5], "fit": "crop"}
    item = build_dataset(data, manifest, "train")[0]["image"]
    pipe = Pipeline(torch.nn.Identity(), Preprocessing.from_data_config(data))
    torch.testing.assert_close(pipe.prepare(tmp_path / "img" / "s0.dcm"), item, rtol=0, atol=0)
    torch.testing.assert_close(pipe.prepare(pipe.read(tmp_path / "img" / "s0.dcm")), item, rtol=0, atol=0)


def test_model_preprocessing_command_writes_the_file_from_the_run_config(tmp_path, capsys) -> None:
    from medvl.cli import main
    from medvl.models import build_model

    run = tmp_path / "run"
    build_model({"embed_dim": 8, "image": {"name": "resnet10", "width": 4, "image_size": 32},
                 "text": {"name": "bert", "hidden_size": 16, "num_layers": 1, "num_heads": 2,
                          "intermediate_size": 32, "max_length": 16}}).save_pretrained(run / "model")
    (run / "config.yaml").write_text("data: {image_size: 32, window: lung}\n")
    assert not (run / "model" / FILE_NAME).exists()  # saved without it, as before this change
    import medvl

    with pytest.raises(CheckpointError, match="medvl model preprocessing"):
        medvl.load(run / "model")
    assert main(["model", "preprocessing", str(run / "model")]) == 0
    pre = Preprocessing.load(run / "model")
    assert pre.image.image_size == 32 and pre.image.window == "lung"
    assert medvl.load(run / "model").data_config.image_size == 32
    assert main(["model", "preprocessing", str(run / "model")]) == 2  # exists: needs --force
    assert "--force" in capsys.readouterr().err


def test_text_preparation_follows_the_saved_text_settings() -> None:
    pipe = Pipeline(torch.nn.Identity(), Preprocessing.from_data_config({"lowercase": True, "max_words": 4}))
    assert pipe.prepare_text("Small left PTX.  Nothing else seen here") == "small left pneumothorax."
    cased = Pipeline(torch.nn.Identity(), Preprocessing.from_data_config({"expand_abbreviations": False}))
    assert cased.prepare_text("Small left PTX.") == "Small left PTX."
