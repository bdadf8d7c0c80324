"""The synthetic report writer: FINDINGS and IMPRESSION from a study's ground truth.

Sentences come from the banks in ``report_templates.yaml`` (data, not code). Each
sentence states one finding (a negative may join two with "or"), so a sentence's
polarity is the finding's label: present -> a positive sentence, hedged -> an
uncertain sentence, stated absent -> a negation. Findings that are neither present
nor in the study's negatives are not mentioned.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import yaml

from medvl.data.synth import ct as ct_phantom
from medvl.data.synth import cxr as cxr_phantom
from medvl.data.synth.plan import FindingSpec, StudyPlan

# Order of statements in FINDINGS: devices, heart, lungs, pleura (as radiologists dictate).
_ORDER = ("support_device", "cardiomegaly", "edema", "consolidation", "nodule", "atelectasis",
          "pleural_effusion", "pneumothorax")


@lru_cache(maxsize=1)
def templates() -> dict[str, Any]:
    """The sentence banks (cached)."""
    text = resources.files("medvl.data.synth").joinpath("report_templates.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _size(f: FindingSpec) -> str:
    if f.uncertain or f.severity < 0.6:
        return "small"
    return "moderate" if f.severity < 0.85 else "large"


def location_phrase(f: FindingSpec, modality: str, rng: np.random.Generator) -> str:
    """A wording of the finding's location (``RLL``, ``right base``, ``lingula``...)."""
    loc = templates()["locations"]
    if modality == "CT":
        return _pick(rng, loc["ct"][f.zone]) if f.zone else _pick(rng, loc["sides"][f.laterality or "right"])
    if f.zone and f.laterality in ("right", "left"):
        return _pick(rng, loc["cxr"][f.laterality][f.zone])
    return _pick(rng, loc["sides"][f.laterality or "right"])


def _fill(template: str, f: FindingSpec, modality: str, rng: np.random.Generator) -> str:
    loc = templates()["locations"]
    side = _pick(rng, loc["sides"][f.laterality]) if f.laterality else ""
    radius = (ct_phantom if modality == "CT" else cxr_phantom).nodule_radius_mm(f.severity)
    mm = round(2 * radius)
    values = {
        "side": side, "size": _size(f), "mm": str(mm), "cm": f"{mm / 10:.1f}",
        "loc": location_phrase(f, modality, rng) if "{loc}" in template else "",
    }
    text = " ".join(template.format(**values).split())
    if f.laterality == "bilateral":
        text = re.sub(r"\beffusion\b", "effusions", text).replace("There is a ", "There are ")
    return _cap(text)


def _device_sentences(f: FindingSpec, bank: dict[str, Any], rng: np.random.Generator) -> list[str]:
    out = []
    for dev in f.devices:
        s = _pick(rng, bank[dev])
        out.append(s.replace("{cm}", f"{rng.uniform(3.0, 6.0):.1f}"))
    return out


def _negatives(names: list[str], bank: dict[str, Any], rng: np.random.Generator) -> list[tuple[str, list[str]]]:
    """Negation sentences with the findings each denies; two negatives are sometimes joined into one."""
    nouns = templates()["negation_nouns"]
    names = list(names)
    out = []
    while names:
        a = names.pop(0)
        if names and a != "cardiomegaly" and names[0] != "cardiomegaly" and rng.random() < 0.4:
            b = names.pop(0)
            out.append((f"No {_pick(rng, nouns[a])} or {_pick(rng, nouns[b])}.", [a, b]))
        else:
            out.append((_pick(rng, bank[a]["negative"]), [a]))
    return out


def _statement(section: str, text: str, findings: list[str], label: int, laterality: str | None = None,
               ) -> dict[str, Any]:
    return {"section": section, "text": text, "findings": findings, "label": label, "laterality": laterality}


def write_report(plan: StudyPlan, rng: np.random.Generator) -> dict[str, str]:
    """FINDINGS and IMPRESSION text for a planned study (see :func:`write_report_statements`)."""
    sections, _ = write_report_statements(plan, rng)
    return sections


def write_report_statements(plan: StudyPlan, rng: np.random.Generator) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """FINDINGS and IMPRESSION text for a planned study, with what each sentence states.

    Args:
        plan: the study's ground truth (findings, hedged findings, stated negatives).
        rng: the study's text random stream.

    Returns:
        ``({"findings": ..., "impression": ...}, statements)``: one statement per
        sentence, in order, ``{"section", "text", "findings", "label", "laterality"}``
        where ``findings`` lists the finding keys the sentence is about (none for a
        normal-study sentence), ``label`` is 1 (stated present), -1 (hedged) or 0
        (stated absent) and ``laterality`` is the finding's side (``None`` when it has
        none). This is the ground truth a highlighter or labeler is measured against.
    """
    kind = "ct" if plan.modality == "CT" else "cxr"
    bank = templates()[kind]
    by_name = {f.name: f for f in plan.findings}
    sentences: list[dict[str, Any]] = []
    impression: list[dict[str, Any]] = []
    for name in _ORDER:
        f = by_name.get(name)
        if f is None:
            continue
        if name == "support_device":
            sentences.extend(_statement("findings", t, [name], 1) for t in _device_sentences(f, bank[name], rng))
            continue
        key = "uncertain" if f.uncertain else "positive"
        label = -1 if f.uncertain else 1
        sentences.append(_statement("findings", _fill(_pick(rng, bank[name][key]), f, plan.modality, rng), [name],
                                    label, f.laterality))
        if not f.uncertain:
            impression.append(_statement("impression", _fill(_pick(rng, bank[name]["impression"]), f, plan.modality,
                                                              rng), [name], 1, f.laterality))
    if not plan.findings or all(f.name == "support_device" for f in plan.findings):
        sentences.append(_statement("findings", _pick(rng, bank["normal_findings"]), [], 0))
        # With tubes and lines the film is not "normal", only free of acute disease.
        options = [s for s in bank["normal_impression"] if not (plan.findings and s.lower().startswith("normal"))]
        impression.append(_statement("impression", _pick(rng, options), [], 0))
    negs = [n for n in plan.negatives if n in bank]
    order = rng.permutation(len(negs)).tolist()
    negatives = _negatives([negs[i] for i in order], bank, rng)
    sentences.extend(_statement("findings", t, names, 0) for t, names in negatives)
    hedged = [f for f in plan.findings if f.uncertain]
    if (not impression and hedged) or (hedged and rng.random() < 0.5):
        f = hedged[0]
        impression.append(_statement("impression", _fill(_pick(rng, bank[f.name]["uncertain"]), f, plan.modality, rng),
                                     [f.name], -1, f.laterality))
    if "support_device" in by_name and rng.random() < 0.5:
        impression.append(_statement("impression", _pick(rng, bank["support_device"]["impression"]),
                                     ["support_device"], 1))
    sections = {"findings": " ".join(st["text"] for st in sentences),
                "impression": " ".join(st["text"] for st in impression)}
    return sections, sentences + impression


def write_other_sections(plan: StudyPlan, rng: np.random.Generator) -> dict[str, str]:
    """INDICATION and COMPARISON sections (no finding is named in either)."""
    t = templates()
    follow_up = plan.study_number > 1
    pool = t["indication"]["follow_up"] if follow_up and rng.random() < 0.6 else (
        t["indication"]["ct" if plan.modality == "CT" else "cxr"])
    return {
        "indication": _pick(rng, pool),
        "comparison": _pick(rng, t["comparison"]["follow_up" if follow_up else "first"]),
    }
