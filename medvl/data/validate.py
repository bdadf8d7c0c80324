"""``medvl validate MANIFEST``: check a manifest before spending GPU hours on it.

Checks, each reported with the manifest line (or image file) and the field:

==================  ======  ==============================================================
check               level   what
==================  ======  ==============================================================
schema              error   every line is a valid row (all bad lines are listed, not
                            only the first); study ids are unique
missing file        error   every image (and annotation mask) path exists
unreadable file     error   ``medvl.io.read_image`` reads the image (a random sample of
                            ``--sample N`` rows, or every row with ``--full``) and its
                            dimensionality matches the row's ``dims``
empty report        error   at least one report section has text
patient leakage     error   no patient appears in two splits
image leakage       error   no image file is the image of studies in two splits
                    warning ... of two studies in one split (a copy error?)
text leakage        error   no test report (normalised: case, punctuation, spacing)
                            also appears in train; val-in-train is a warning.
                            ``--text-leakage warn`` downgrades (template corpora)
label keys          error   a key that is a near-miss of a vocabulary name (case,
                            ``-``/space, a typo): probably a mislabelled column
                    warning a key outside the vocabulary used consistently (an extra
                            label column: loaders ignore it); a finding labelled on a
                            modality it is not defined for; ``no_finding: 1`` together
                            with a present pathology
==================  ======  ==============================================================

Prints a summary (rows, patients, modalities and label prevalence per split) and the
problems; exits 2 when there is any error, 0 otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medvl.data.manifest import SPLITS, ManifestRow, check_row, resolve_path
from medvl.errors import ManifestError, MedvlError
from medvl.findings import finding_names, load_findings

DEFAULT_SAMPLE = 32


@dataclass
class Problem:
    """One finding of the validator.

    Attributes:
        level: ``"error"`` (fails validation) or ``"warning"``.
        kind: short check name (``patient_leakage``, ``missing_file``...).
        where: the manifest line (``path:line``) or image file.
        field: the row field involved.
        message: what is wrong.
    """

    level: str
    kind: str
    where: str
    field: str | None
    message: str

    def __str__(self) -> str:
        fld = f" [{self.field}]" if self.field else ""
        return f"{self.level.upper():7s} {self.kind}: {self.where}{fld}: {self.message}"


@dataclass
class ValidationReport:
    """Result of :func:`validate_manifest`.

    Attributes:
        manifest: the manifest path.
        problems: every problem found, errors first.
        summary: per split: ``rows``, ``patients``, ``modalities`` (counts),
            ``prevalence`` (finding -> fraction of rows labelled 1), ``mentioned``
            (finding -> fraction of rows with any label).
        read_checked: how many images were opened.
    """

    manifest: str
    problems: list[Problem] = field(default_factory=list)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    read_checked: int = 0
    where_split: dict[str, str] = field(default_factory=dict, repr=False)

    def per_split(self, level: str) -> Counter:
        """Count of ``level`` problems per split (problems not tied to one row are left out)."""
        return Counter(self.where_split[p.where] for p in self.problems
                       if p.level == level and p.where in self.where_split)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "ok": self.ok, "read_checked": self.read_checked,
                "summary": self.summary, "problems": [asdict(p) for p in self.problems]}


def normalise_text(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the form leakage is compared in."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def _load_rows(path: Path, report: ValidationReport) -> list[tuple[int, ManifestRow]]:
    """Parse every line, recording each bad one instead of stopping at the first."""
    if not path.is_file():
        raise ManifestError("manifest file not found", path=path)
    rows: list[tuple[int, ManifestRow]] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                report.problems.append(Problem("error", "schema", where, None, f"invalid JSON ({exc.msg})"))
                continue
            try:
                row = check_row(obj, where)
            except ManifestError as exc:
                report.problems.append(Problem("error", "schema", where, exc.field,
                                               exc.message + (f" (expected {exc.expected})" if exc.expected else "")))
                continue
            if row.study_id in seen:
                report.problems.append(Problem("error", "schema", where, "study_id",
                                               f"duplicate study_id {row.study_id!r} (first on line {seen[row.study_id]})"))
                continue
            seen[row.study_id] = lineno
            rows.append((lineno, row))
    return rows


def _check_files(path: Path, rows: list[tuple[int, ManifestRow]], report: ValidationReport,
                 read_rows: set[int], reader: Callable[[Path], Any], progress: bool) -> None:
    bar = None
    if progress and len(read_rows) >= 50:  # opening many images takes minutes; show it
        from medvl.progress import progress as make_bar

        bar = make_bar(total=len(read_rows), desc="reading images", unit="image", leave=False)
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        image = resolve_path(path, row.image)
        if not image.exists():
            report.problems.append(Problem("error", "missing_file", where, "image", f"{image} does not exist"))
            continue
        for k, ann in enumerate(row.annotations):
            mask = ann.get("mask") if isinstance(ann, dict) else None
            if mask and not resolve_path(path, mask).exists():
                report.problems.append(Problem("error", "missing_file", where, f"annotations[{k}].mask",
                                               f"{resolve_path(path, mask)} does not exist"))
        if lineno not in read_rows:
            continue
        report.read_checked += 1
        if bar is not None:
            bar.update()
        try:
            img = reader(image)
        except Exception as exc:  # noqa: BLE001 - any failure to read is what we report
            msg = str(exc) if isinstance(exc, MedvlError) else f"{type(exc).__name__}: {exc}"
            report.problems.append(Problem("error", "unreadable_file", str(image), "image", msg))
            continue
        ndim = getattr(img, "ndim", None)
        if ndim is not None and ndim != row.dims:
            report.problems.append(Problem("error", "dims_mismatch", where, "dims",
                                           f"row says dims {row.dims} but {image.name} is {ndim}D"))
    if bar is not None:
        bar.close()


def _check_reports(path: Path, rows: list[tuple[int, ManifestRow]], report: ValidationReport,
                   text_leakage: str) -> None:
    train_texts: dict[str, str] = {}
    for lineno, row in rows:
        text = normalise_text(" ".join(str(v) for v in row.report.values() if v))
        if not text and row.meta.get("has_report") is False:
            continue  # an image-only corpus (CheXpert, RSNA, SIIM): declared, so not an error
        if not text:
            report.problems.append(Problem("error", "empty_report", f"{path}:{lineno}", "report",
                                           f"study {row.study_id!r} has no report text"))
        elif row.split == "train":
            train_texts.setdefault(text, row.study_id)
    for lineno, row in rows:
        if row.split == "train":
            continue
        text = normalise_text(" ".join(str(v) for v in row.report.values() if v))
        if text and text in train_texts:
            level = "error" if row.split == "test" and text_leakage == "error" else "warning"
            report.problems.append(Problem(
                level, "text_leakage", f"{path}:{lineno}", "report",
                f"{row.split} study {row.study_id!r} has the same report text as train study "
                f"{train_texts[text]!r}",
            ))


def _check_patients(path: Path, rows: list[tuple[int, ManifestRow]], report: ValidationReport) -> None:
    splits: dict[str, dict[str, int]] = defaultdict(dict)
    for lineno, row in rows:
        splits[row.patient_id].setdefault(row.split, lineno)
    for patient, where in sorted(splits.items()):
        if len(where) > 1:
            lines = ", ".join(f"{s} (line {n})" for s, n in sorted(where.items(), key=lambda kv: kv[1]))
            report.problems.append(Problem("error", "patient_leakage", str(path), "patient_id",
                                           f"patient {patient!r} is in several splits: {lines}"))


def _check_images_shared(path: Path, rows: list[tuple[int, ManifestRow]], report: ValidationReport) -> None:
    """The same image file under two studies: leakage across splits, a likely copy error within one."""
    users: dict[Path, list[tuple[int, ManifestRow]]] = defaultdict(list)
    for lineno, row in rows:
        users[resolve_path(path, row.image)].append((lineno, row))
    for image, used in users.items():
        if len(used) < 2:
            continue
        splits = sorted({r.split for _, r in used})
        ids = ", ".join(f"{r.study_id!r} ({r.split}, line {n})" for n, r in used[:4])
        more = f" and {len(used) - 4} more" if len(used) > 4 else ""
        if len(splits) > 1:
            report.problems.append(Problem("error", "image_leakage", f"{path}:{used[-1][0]}", "image",
                                           f"{image.name} is the image of studies in several splits: {ids}{more}"))
        else:
            report.problems.append(Problem("warning", "shared_image", f"{path}:{used[-1][0]}", "image",
                                           f"{image.name} is the image of {len(used)} studies: {ids}{more}"))


def _check_labels(path: Path, rows: list[tuple[int, ManifestRow]], report: ValidationReport) -> None:
    vocab = finding_names()
    defined = {f.name: set(f.modalities) for f in load_findings()}
    canon = {re.sub(r"[^a-z0-9]", "", n): n for n in vocab}
    extra: dict[str, list[int]] = defaultdict(list)
    off_modality: dict[tuple[str, str], int] = Counter()
    for lineno, row in rows:
        for key in row.labels:
            if key in defined:
                if row.modality not in defined[key]:
                    off_modality[(key, row.modality)] += 1
            else:
                extra[key].append(lineno)
    # "no finding" contradicts a present pathology (support devices are not pathology,
    # as in CheXpert's labeller).
    contradict = [n for n, r in rows if r.labels.get("no_finding") == 1 and any(
        v == 1 for k, v in r.labels.items() if k in defined and k not in ("no_finding", "support_device"))]
    if contradict:
        report.problems.append(Problem(
            "warning", "label_conflict", f"{path}:{contradict[0]}", "labels.no_finding",
            f"no_finding is 1 together with a present finding in {len(contradict)} row(s)",
        ))
    for key, lines in sorted(extra.items()):
        near = canon.get(re.sub(r"[^a-z0-9]", "", key.lower())) or next(
            iter(difflib.get_close_matches(key.lower(), vocab, n=1, cutoff=0.85)), None)
        if near:
            report.problems.append(Problem(
                "error", "label_key", f"{path}:{lines[0]}", f"labels.{key}",
                f"label key {key!r} ({len(lines)} row(s)) is not in the vocabulary; did you mean {near!r}?",
            ))
        else:
            report.problems.append(Problem(
                "warning", "label_key", f"{path}:{lines[0]}", f"labels.{key}",
                f"extra label key {key!r} in {len(lines)} row(s) is outside the vocabulary "
                "(loaders ignore it)",
            ))
    for (key, modality), n in sorted(off_modality.items()):
        report.problems.append(Problem(
            "warning", "label_modality", str(path), f"labels.{key}",
            f"{key!r} is labelled on {n} {modality} row(s) but is defined for "
            f"{', '.join(sorted(defined[key]))}",
        ))


def _summarise(rows: list[tuple[int, ManifestRow]]) -> dict[str, dict[str, Any]]:
    vocab = finding_names()
    out: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        chosen = [r for _, r in rows if r.split == split]
        n = len(chosen)
        out[split] = {
            "rows": n,
            "patients": len({r.patient_id for r in chosen}),
            "modalities": dict(sorted(Counter(r.modality for r in chosen).items())),
            "prevalence": {f: (sum(r.labels.get(f) == 1 for r in chosen) / n if n else 0.0) for f in vocab},
            "mentioned": {f: (sum(f in r.labels for r in chosen) / n if n else 0.0) for f in vocab},
        }
    return out


def validate_manifest(
    manifest_path: str | Path,
    *,
    full: bool = False,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    text_leakage: str = "error",
    reader: Callable[[Path], Any] | None = None,
    progress: bool = False,
) -> ValidationReport:
    """Run every check on a manifest.

    Args:
        manifest_path: the JSONL manifest.
        full: open every image (else a random sample of ``sample`` rows).
        sample: how many images to open when not ``full`` (0: existence only).
        seed: seed of the sample.
        text_leakage: ``"error"`` or ``"warn"`` for test reports found verbatim in train.
        reader: image reader; defaults to ``medvl.io.read_image``.
        progress: show a progress bar while opening 50 or more images.

    Raises:
        ManifestError: the manifest file does not exist.
    """
    if text_leakage not in ("error", "warn"):
        raise ManifestError(f"text_leakage {text_leakage!r}", field="text_leakage", expected="error or warn")
    path = Path(manifest_path)
    report = ValidationReport(str(path))
    rows = _load_rows(path, report)
    if not rows and not report.problems:  # nothing to train or evaluate on is not "OK"
        report.problems.append(Problem("error", "schema", str(path), None,
                                       "the manifest has no rows (empty file or only blank lines)"))
    if reader is None:
        from medvl.io import read_image

        reader = read_image
    linenos = [n for n, _ in rows]
    read_rows = set(linenos) if full else set(random.Random(seed).sample(linenos, min(sample, len(linenos))))
    _check_files(path, rows, report, read_rows, reader, progress)
    _check_reports(path, rows, report, text_leakage)
    _check_patients(path, rows, report)
    _check_images_shared(path, rows, report)
    _check_labels(path, rows, report)
    report.summary = _summarise(rows)
    for lineno, row in rows:
        report.where_split[f"{path}:{lineno}"] = row.split
        report.where_split[str(resolve_path(path, row.image))] = row.split
    report.problems.sort(key=lambda p: p.level != "error")
    return report


def format_report(report: ValidationReport) -> str:
    """The human-readable summary table and problem list."""
    s = report.summary
    splits = [sp for sp in SPLITS if s.get(sp, {}).get("rows")] or list(SPLITS)
    width = max(len(f) for f in finding_names()) + 2
    lines = [f"manifest: {report.manifest}", ""]
    head = "".ljust(width) + "".join(sp.rjust(12) for sp in splits)
    lines.append(head)
    lines.append("rows".ljust(width) + "".join(str(s[sp]["rows"]).rjust(12) for sp in splits))
    lines.append("patients".ljust(width) + "".join(str(s[sp]["patients"]).rjust(12) for sp in splits))
    mods = sorted({m for sp in splits for m in s[sp]["modalities"]})
    for m in mods:
        lines.append(f"modality {m}".ljust(width) + "".join(
            str(s[sp]["modalities"].get(m, 0)).rjust(12) for sp in splits))
    for level in ("error", "warning"):
        counts = report.per_split(level)
        lines.append(f"{level}s".ljust(width) + "".join(str(counts.get(sp, 0)).rjust(12) for sp in splits))
    lines.append("label prevalence (positive / rows):")
    for f in finding_names():
        if not any(s[sp]["mentioned"][f] for sp in splits):
            continue
        lines.append(f"  {f}".ljust(width) + "".join(f"{100 * s[sp]['prevalence'][f]:11.1f}%" for sp in splits))
    n_err, n_warn = len(report.errors), len(report.problems) - len(report.errors)
    lines += ["", f"images opened: {report.read_checked}",
              f"problems: {n_err} error(s), {n_warn} warning(s)"]
    lines += [f"  {p}" for p in report.problems]
    lines.append("OK" if report.ok else "FAILED")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl validate``."""
    parser.add_argument("manifest", help="manifest file (JSONL)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--full", action="store_true", help="open every image (slow on large corpora)")
    how.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, metavar="N",
                     help=f"open N random images (default {DEFAULT_SAMPLE}; 0: only check they exist)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument("--text-leakage", choices=("error", "warn"), default="error",
                        help="test reports found verbatim in train: error (default) or warn")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON")


def run(args: argparse.Namespace) -> int:
    """Validate, print the summary and problems; 2 on any error, else 0."""
    if args.sample < 0:
        raise ManifestError(f"--sample {args.sample}", field="--sample", expected=">= 0")
    report = validate_manifest(args.manifest, full=args.full, sample=args.sample, seed=args.seed,
                               text_leakage=args.text_leakage, progress=True)
    print(format_report(report))
    if args.json:
        from medvl.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(report.to_json(), indent=2))
    return 0 if report.ok else 2
