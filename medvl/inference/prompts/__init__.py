"""Zero-shot prompt sets kept as YAML data (moved here from ``medvl.eval.prompts``) (``cxr.yaml``, ``ct.yaml``).

A prompt set names, per finding, the words a report uses for it, explicit positive and
negative sentences, and templates applied to every name. :func:`load_prompt_set`
expands them into plain lists of positive and negative prompts per finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from medvl.errors import ConfigError

#: built-in sets; the modality search takes the first that fits, so the model-specific
#: ones (CheXzero's label-name pairs) come after medvl's own
BUILTIN = ("cxr", "ct", "chexzero")


@dataclass(frozen=True)
class PromptSet:
    """Expanded prompts of one prompt set.

    Attributes:
        name: the set's name (``cxr``).
        modalities: DICOM modality codes the set is written for.
        positive: finding -> prompts stating the finding is present.
        negative: finding -> prompts stating it is absent.
    """

    name: str
    modalities: tuple[str, ...]
    positive: dict[str, list[str]] = field(default_factory=dict)
    negative: dict[str, list[str]] = field(default_factory=dict)

    @property
    def findings(self) -> list[str]:
        """Findings in file order."""
        return list(self.positive)


def _fill(template: str, name: str) -> str:
    return template.replace("{Name}", name[:1].upper() + name[1:]).replace("{name}", name)


def _expand(data: dict, where: str) -> PromptSet:
    if not isinstance(data, dict) or not isinstance(data.get("findings"), dict):
        raise ConfigError("prompt set has no 'findings' mapping", path=where, field="findings")
    templates = data.get("templates") or {}
    pos_t = list(templates.get("positive") or [])
    neg_t = list(templates.get("negative") or [])
    positive: dict[str, list[str]] = {}
    negative: dict[str, list[str]] = {}
    for finding, spec in data["findings"].items():
        if not isinstance(spec, dict):
            raise ConfigError("finding entry is not a mapping", path=where, field=f"findings.{finding}")
        names = list(spec.get("names") or [])
        use_t = bool(spec.get("use_templates", True))
        pos = list(spec.get("positive") or [])
        neg = list(spec.get("negative") or [])
        if use_t:
            pos += [_fill(t, n) for t in pos_t for n in names]
            neg += [_fill(t, n) for t in neg_t for n in names]
        # Keep order, drop repeats (two templates can produce the same sentence).
        pos = list(dict.fromkeys(p.strip() for p in pos if p.strip()))
        neg = list(dict.fromkeys(p.strip() for p in neg if p.strip()))
        if not pos or not neg:
            raise ConfigError(
                "finding needs at least one positive and one negative prompt",
                path=where, field=f"findings.{finding}", expected="names with templates, or explicit lists",
            )
        positive[finding] = pos
        negative[finding] = neg
    return PromptSet(
        name=str(data.get("name") or Path(where).stem),
        modalities=tuple(data.get("modalities") or ()),
        positive=positive,
        negative=negative,
    )


def load_prompt_set(name_or_path: str | Path) -> PromptSet:
    """Load a built-in prompt set by name (``"cxr"``, ``"ct"``) or any YAML file by path.

    Raises:
        ConfigError: unknown name, missing file or malformed content.
    """
    text: str
    where: str
    if str(name_or_path) in BUILTIN:
        where = f"medvl/inference/prompts/{name_or_path}.yaml"
        text = resources.files("medvl.inference.prompts").joinpath(f"{name_or_path}.yaml").read_text("utf-8")
    else:
        p = Path(name_or_path)
        if not p.is_file():
            raise ConfigError(
                "prompt set not found", path=p, field="eval.prompts",
                expected="'auto', one of " + ", ".join(BUILTIN) + " or a YAML path",
            )
        where, text = str(p), p.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path=where) from None
    return _expand(data, where)


def prompt_set_for_modality(modality: str) -> PromptSet:
    """The built-in prompt set written for a modality code (CR/DX -> cxr, CT -> ct)."""
    for name in BUILTIN:
        ps = load_prompt_set(name)
        if modality.upper() in ps.modalities:
            return ps
    raise ConfigError(
        f"no built-in prompt set for modality {modality!r}", field="eval.prompts",
        expected="a YAML path for this modality",
    )
