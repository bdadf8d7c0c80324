"""Config loading, dotted overrides and dataclass validation."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from medvl.config import apply_overrides, from_dict, load_config, to_dict
from medvl.errors import ConfigError
from medvl.registry import Registry


@dataclass
class Inner:
    name: Literal["mean", "max", "attention"] = "mean"
    size: int = 4


@dataclass
class Outer:
    lr: float = 1e-3
    epochs: int = 1
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_overrides_parse_yaml_types_and_create_sections() -> None:
    cfg = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", "train.lr=1e-4", "train.name=abc", "model.image.name=resnet", "x.flag=true", "x.l=[1, 2]"])
    assert cfg["train"] == {"epochs": 3, "lr": 1e-4, "name": "abc"}
    assert cfg["model"]["image"]["name"] == "resnet"
    assert cfg["x"] == {"flag": True, "l": [1, 2]}


def test_override_without_equals_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_override_into_a_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match="is a value"):
        apply_overrides({"train": 3}, ["train.epochs=1"])


def test_base_inheritance_and_overrides(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("train: {epochs: 1, lr: 0.1}\nseed: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain: {epochs: 5}\n")
    cfg = load_config(tmp_path / "child.yaml", ["seed=7"])
    assert cfg == {"train": {"epochs": 5, "lr": 0.1}, "seed": 7}


def test_missing_and_malformed_files_name_the_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_from_dict_validates_and_coerces() -> None:
    obj = from_dict(Outer, {"lr": 1, "inner": {"name": "max"}, "tags": ["a"]}, where="train")
    assert obj.lr == 1.0 and isinstance(obj.lr, float)
    assert obj.inner == Inner(name="max", size=4)
    assert to_dict(obj) == {"lr": 1.0, "epochs": 1, "tags": ["a"], "inner": {"name": "max", "size": 4}, "path": None}


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"epoch": 3}, r"train\.epoch"),
        ({"epochs": "three"}, r"train\.epochs"),
        ({"epochs": True}, r"train\.epochs"),
        ({"inner": {"name": "median"}}, r"train\.inner\.name.*'mean'"),
        ({"tags": "a"}, r"train\.tags"),
    ],
)
def test_from_dict_errors_name_the_dotted_key(section, match) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, section, where="train")


def test_registry_unknown_name_lists_choices() -> None:
    reg: Registry[int] = Registry("image encoder")
    reg.add("resnet18", 1)
    reg.add("vit", 2)
    assert reg.get("vit") == 2
    with pytest.raises(ConfigError, match="unknown image encoder 'vgg'.*resnet18, vit"):
        reg.get("vgg", field="model.image.name")


def test_yaml_scientific_notation_is_a_float(tmp_path) -> None:
    (tmp_path / "c.yaml").write_text("train: {lr: 1e-4}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert from_dict(Outer, {"lr": cfg["train"]["lr"]}).lr == pytest.approx(1e-4)


def test_an_unknown_key_in_a_section_suggests_the_nearest_one() -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"epocs": 3}, where="train")
    assert err.value.field == "train.epocs" and "did you mean 'train.epochs'?" in str(err.value)
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, {"zzz": 3}, where="train")
    assert "did you mean" not in str(err.value)
