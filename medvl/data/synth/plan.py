"""The corpus plan: patients, studies, ground-truth findings and patient-level splits.

Planning is cheap and sequential, so it is done once in the parent process; rendering
(the expensive part) then works from the plan in any number of worker processes.
Every random draw comes from a seed derived from ``(master seed, purpose, index)``,
so a study's pixels do not depend on how many workers ran or in which order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medvl.data.synth.config import SynthConfig

#: Pathologies the radiograph phantom can draw (vocabulary names).
CXR_PATHOLOGIES = (
    "cardiomegaly", "pleural_effusion", "pneumothorax", "consolidation", "nodule", "atelectasis", "edema",
)
#: Pathologies the CT phantom can draw.
CT_PATHOLOGIES = ("nodule", "consolidation", "pleural_effusion", "pneumothorax", "atelectasis")
#: Lobes of the CT phantom, by side.
LOBES = {"right": ("RUL", "RML", "RLL"), "left": ("LUL", "LLL")}
ZONES = ("upper", "middle", "lower")
DEVICES = ("ett", "ngt", "cvc", "ecg")

# Patient-level split pattern: 14 train, 3 val, 3 test per 20 patients, with val
# and test early so even a handful of patients fills every split.
_SPLIT_PATTERN = (
    "train", "val", "test", "train", "train", "train", "train",
    "train", "val", "train", "train", "test", "train", "train",
    "train", "train", "val", "test", "train", "train",
)

_PURPOSE = {"patient": 1, "cxr": 2, "ct": 3, "split": 4, "plan": 5}


def derive_seed(seed: int, purpose: str, index: int) -> int:
    """A 32-bit seed for ``(master seed, purpose, index)``, stable across runs and platforms."""
    ss = np.random.SeedSequence([int(seed), _PURPOSE[purpose], int(index)])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


@dataclass
class FindingSpec:
    """Ground truth of one finding in one study.

    Attributes:
        name: vocabulary name (``pleural_effusion``).
        laterality: ``left`` | ``right`` | ``bilateral`` | None.
        zone: ``upper`` | ``middle`` | ``lower`` on radiographs, a lobe
            (``RUL``...) on CT, or None.
        uncertain: drawn subtly and reported with a hedge (label -1).
        severity: 0..1, scales size or density.
        devices: for ``support_device``, which devices are drawn.
    """

    name: str
    laterality: str | None = None
    zone: str | None = None
    uncertain: bool = False
    severity: float = 0.5
    devices: tuple[str, ...] = ()


@dataclass
class StudyPlan:
    """Everything needed to render and describe one study."""

    study_id: str
    patient_id: str
    modality: str  # CR | DX | CT
    index: int  # position among studies of its modality
    render_seed: int
    anatomy_seed: int
    findings: list[FindingSpec] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    split: str = "train"
    view: str | None = None
    storage: str = "dicom"  # dicom | nifti | dicom_series
    compression: str = "none"
    study_number: int = 1  # 1-based position among the patient's studies

    @property
    def dims(self) -> int:
        return 3 if self.modality == "CT" else 2

    @property
    def pathologies(self) -> list[FindingSpec]:
        return [f for f in self.findings if f.name != "support_device"]

    def labels(self) -> dict[str, int]:
        """Manifest labels: 1 present, -1 hedged, 0 stated absent; the rest omitted."""
        out: dict[str, int] = {}
        for f in self.findings:
            out[f.name] = -1 if f.uncertain else 1
        for name in self.negatives:
            out.setdefault(name, 0)
        out["no_finding"] = 0 if self.pathologies else 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudyPlan:
        d = dict(d)
        d["findings"] = [FindingSpec(**{**f, "devices": tuple(f.get("devices", ()))}) for f in d["findings"]]
        return cls(**d)


def _side(rng: np.random.Generator, p_bilateral: float = 0.0) -> str:
    u = rng.random()
    if u < p_bilateral:
        return "bilateral"
    return "right" if rng.random() < 0.55 else "left"


def _cxr_finding(name: str, rng: np.random.Generator, uncertain: bool = False) -> FindingSpec:
    sev = float(rng.uniform(0.45, 1.0)) if not uncertain else float(rng.uniform(0.25, 0.4))
    if name == "pleural_effusion":
        return FindingSpec(name, _side(rng, 0.3), None, uncertain, sev)
    if name == "pneumothorax":
        return FindingSpec(name, _side(rng), None, uncertain, sev)
    if name in ("consolidation", "nodule"):
        return FindingSpec(name, _side(rng), ZONES[int(rng.integers(3))], uncertain, sev)
    if name == "atelectasis":
        zone = ZONES[int(rng.choice(3, p=[0.15, 0.3, 0.55]))]
        return FindingSpec(name, _side(rng), zone, uncertain, sev)
    if name == "edema":
        return FindingSpec(name, "bilateral", None, uncertain, sev)
    if name == "support_device":
        k = int(rng.integers(1, 4))
        devs = tuple(sorted(rng.choice(len(DEVICES), size=k, replace=False).tolist()))
        return FindingSpec(name, None, None, False, sev, tuple(DEVICES[i] for i in devs))
    return FindingSpec(name, None, None, uncertain, sev)  # cardiomegaly


def _ct_finding(name: str, rng: np.random.Generator, uncertain: bool = False) -> FindingSpec:
    sev = float(rng.uniform(0.45, 1.0)) if not uncertain else float(rng.uniform(0.25, 0.4))
    if name in ("pleural_effusion", "pneumothorax"):
        return FindingSpec(name, _side(rng, 0.25 if name == "pleural_effusion" else 0.0), None, uncertain, sev)
    side = _side(rng)
    lobe = LOBES[side][int(rng.integers(len(LOBES[side])))]
    return FindingSpec(name, side, lobe, uncertain, sev)


def _sample_findings(
    cfg: SynthConfig, rng: np.random.Generator, primary: str | None, ct: bool
) -> tuple[list[FindingSpec], list[str]]:
    """Findings and stated negatives of one study; ``primary`` None means a normal study."""
    pool = CT_PATHOLOGIES if ct else CXR_PATHOLOGIES
    make = _ct_finding if ct else _cxr_finding
    findings: list[FindingSpec] = []
    if primary is not None:
        findings.append(make(primary, rng))
        if primary != "support_device":
            for name in pool:
                if name != primary and rng.random() < 0.12:
                    findings.append(make(name, rng))
    if not ct and all(f.name != "support_device" for f in findings) and rng.random() < 0.12:
        findings.append(make("support_device", rng))
    present = {f.name for f in findings}
    if rng.random() < cfg.uncertain_fraction:
        cands = [n for n in pool if n not in present and n != "cardiomegaly"]
        if cands:
            f = make(cands[int(rng.integers(len(cands)))], rng, uncertain=True)
            findings.append(f)
            present.add(f.name)
    # Radiologists name the negatives that matter; normal studies name more of them.
    neg_pool = [n for n in pool if n not in present]
    k = int(rng.integers(2, 5)) if primary is None else int(rng.integers(1, 3))
    order = rng.permutation(len(neg_pool))[:k]
    negatives = [neg_pool[i] for i in sorted(order.tolist())]
    return findings, negatives


def plan_corpus(cfg: SynthConfig) -> list[StudyPlan]:
    """Sample every study of the corpus (no pixels yet), with patient-level splits."""
    rng = np.random.default_rng(derive_seed(cfg.seed, "plan", 0))
    studies: list[StudyPlan] = []
    patient_groups: dict[str, str] = {}  # patient id -> stratum key
    patient_no = 0
    for modality_kind, n_total in (("cxr", cfg.n_cxr), ("ct", cfg.n_ct)):
        ct = modality_kind == "ct"
        pool = CT_PATHOLOGIES if ct else (*CXR_PATHOLOGIES, "support_device")
        made = 0
        n_abnormal = 0
        while made < n_total:
            patient_no += 1
            pid = f"SYN-P{patient_no:06d}"
            anatomy_seed = derive_seed(cfg.seed, "patient", patient_no)
            n_studies = min(int(rng.integers(1, cfg.max_studies_per_patient + 1)), n_total - made)
            for j in range(n_studies):
                if rng.random() < cfg.normal_fraction:
                    primary = None
                else:
                    # Cycle the primary finding so every finding is common enough to
                    # reach every split.
                    primary = pool[n_abnormal % len(pool)]
                    n_abnormal += 1
                findings, negatives = _sample_findings(cfg, rng, primary, ct)
                if j == 0:
                    patient_groups[pid] = f"{modality_kind}:{primary or 'normal'}"
                if ct:
                    sid = f"SYN-CT{made:06d}"
                    storage = "dicom_series" if rng.random() < cfg.ct_dicom_fraction else "nifti"
                    plan = StudyPlan(
                        sid, pid, "CT", made, derive_seed(cfg.seed, "ct", made), anatomy_seed,
                        findings, negatives, view=None, storage=storage, study_number=j + 1,
                    )
                else:
                    sid = f"SYN-CXR{made:06d}"
                    modality = "DX" if rng.random() < 0.5 else "CR"
                    # Patients with tubes and lines are filmed AP at the bedside.
                    has_device = any(f.name == "support_device" for f in findings)
                    view = "AP" if rng.random() < (0.85 if has_device else 0.2) else "PA"
                    comp = "none"
                    if cfg.compressions and rng.random() < cfg.compressed_fraction:
                        comp = cfg.compressions[int(rng.integers(len(cfg.compressions)))]
                    plan = StudyPlan(
                        sid, pid, modality, made, derive_seed(cfg.seed, "cxr", made), anatomy_seed,
                        findings, negatives, view=view, storage="dicom", compression=comp,
                        study_number=j + 1,
                    )
                studies.append(plan)
                made += 1
    splits = assign_splits(patient_groups, cfg.seed)
    for s in studies:
        s.split = splits[s.patient_id]
    return studies


def assign_splits(patient_groups: dict[str, str], seed: int) -> dict[str, str]:
    """Patient-level ~70/15/15 splits, stratified by each patient's first-study finding.

    Patients are ordered by stratum (shuffled inside it) and dealt along a fixed
    20-slot pattern, so every stratum spreads over the splits in proportion.
    """
    rng = np.random.default_rng(derive_seed(seed, "split", 0))
    by_group: dict[str, list[str]] = {}
    for pid, g in patient_groups.items():
        by_group.setdefault(g, []).append(pid)
    out: dict[str, str] = {}
    slot = 0
    for g in sorted(by_group):
        members = by_group[g]
        for i in rng.permutation(len(members)).tolist():
            out[members[i]] = _SPLIT_PATTERN[slot % len(_SPLIT_PATTERN)]
            slot += 1
    return out
