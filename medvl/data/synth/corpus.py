"""``generate_corpus``: plan, render, write files and the manifest.

Layout of the output folder::

    manifest.jsonl          one row per study (medvl.data.manifest)
    cxr/<study>.dcm         radiographs (CR/DX DICOM)
    ct/<study>.nii.gz       CT volumes in HU (NIfTI), or
    ct/<study>/*.dcm        CT DICOM series (shuffled file names)
    masks/<study>_<finding>.png | .nii.gz
    synth.json              the generator settings (deterministic)
    config.yaml, run.json   run information (medvl.runinfo)
"""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from medvl.data.synth.config import SynthConfig
from medvl.data.synth.plan import FindingSpec, StudyPlan, plan_corpus
from medvl.errors import ConfigError

GENERATOR_VERSION = 1


def _ground_truth(plan: StudyPlan) -> list[dict[str, Any]]:
    out = []
    for f in plan.findings:
        d: dict[str, Any] = {"finding": f.name, "laterality": f.laterality, "zone": f.zone, "uncertain": f.uncertain,
             "severity": round(f.severity, 3)}
        if f.devices:
            d["devices"] = list(f.devices)
        out.append(d)
    return out


def _annotation(f: FindingSpec, mask_rel: str, box: list[int]) -> dict[str, Any]:
    ann: dict[str, Any] = {"finding": f.name, "mask": mask_rel, "box": box}
    if f.laterality:
        ann["laterality"] = f.laterality
    if f.zone:
        ann["zone"] = f.zone
    if f.uncertain:
        ann["uncertain"] = True
    return ann


def _render_cxr(plan: StudyPlan, cfg: SynthConfig, out: Path) -> dict[str, Any]:
    from medvl.data.synth.cxr import render_cxr, sample_anatomy
    from medvl.data.synth.shapes import bbox
    from medvl.data.synth.writers import write_png_mask, write_radiograph

    spacing = cfg.spacing_mm
    r = render_cxr(sample_anatomy(plan.anatomy_seed), plan.findings, size=cfg.image_size,
                   spacing=spacing, seed=plan.render_seed, view=plan.view)
    annotations = []
    kept = []
    for f in plan.findings:
        mask = r.masks.get(f.name)
        box = bbox(mask) if mask is not None else None
        if mask is None or box is None:
            continue  # nothing visible was drawn: the report must not claim it
        rel = f"masks/{plan.study_id}_{f.name}.png"
        write_png_mask(out / rel, mask)
        annotations.append(_annotation(f, rel, box))
        kept.append(f)
    plan.findings = kept
    rng = np.random.default_rng(np.random.SeedSequence([plan.render_seed, 3]))
    image_rel = f"cxr/{plan.study_id}.dcm"
    stored = write_radiograph(out / image_rel, r.attenuation, rng, patient_id=plan.patient_id,
                              study_number=plan.study_number, modality=plan.modality, view=plan.view,
                              spacing=spacing, compression=plan.compression)
    report, statements = _report(plan)
    meta = {
        "generator": "medvl.synth", "generator_version": GENERATOR_VERSION,
        "ground_truth": _ground_truth(plan), "study_number": plan.study_number,
        "transfer_syntax": stored.transfer_syntax, "photometric": stored.photometric,
        "bits_stored": stored.bits_stored, "rescale_slope": stored.slope,
        "rescale_intercept": stored.intercept, "pixel_spacing_mm": round(spacing, 6),
        "statements": statements,
    }
    return _row(plan, image_rel, report, annotations, meta)


def _render_ct(plan: StudyPlan, cfg: SynthConfig, out: Path) -> dict[str, Any]:
    from medvl.data.synth.ct import render_ct, sample_ct_anatomy, sample_ct_grid
    from medvl.data.synth.shapes import bbox
    from medvl.data.synth.writers import (
        reorient_for_storage,
        write_ct_series,
        write_nifti,
    )

    nx, ny, nz = cfg.ct_size
    shape = (nx, ny, nz)
    affine = sample_ct_grid(plan.render_seed, shape)
    r = render_ct(sample_ct_anatomy(plan.anatomy_seed), plan.findings, shape=shape, affine=affine,
                  seed=plan.render_seed)
    # Some NIfTI volumes are stored LPS (as many converters write them); readers must
    # reorient. Masks share the image's storage grid; boxes stay in RAS voxel indices.
    orient_rng = np.random.default_rng(np.random.SeedSequence([plan.render_seed, 5]))
    orientation = "LPS" if plan.storage == "nifti" and orient_rng.random() < 0.3 else "RAS"
    annotations, kept = [], []
    for f in plan.findings:
        mask = r.masks.get(f.name)
        box = bbox(mask) if mask is not None else None
        if mask is None or box is None:
            continue
        rel = f"masks/{plan.study_id}_{f.name}.nii.gz"
        write_nifti(out / rel, *reorient_for_storage(mask.astype(np.uint8), affine, orientation))
        annotations.append(_annotation(f, rel, box))
        kept.append(f)
    plan.findings = kept
    rng = np.random.default_rng(np.random.SeedSequence([plan.render_seed, 3]))
    meta: dict[str, Any] = {
        "generator": "medvl.synth", "generator_version": GENERATOR_VERSION,
        "ground_truth": _ground_truth(plan), "study_number": plan.study_number, "storage": plan.storage,
        "spacing_mm": [round(float(affine[d, d]), 4) for d in range(3)], "shape": list(shape),
    }
    if plan.storage == "dicom_series":
        image_rel = f"ct/{plan.study_id}"
        meta.update(write_ct_series(out / image_rel, r.hu, affine, rng, patient_id=plan.patient_id,
                                    study_number=plan.study_number))
    else:
        image_rel = f"ct/{plan.study_id}.nii.gz"
        write_nifti(out / image_rel, *reorient_for_storage(np.rint(r.hu).astype(np.int16), affine, orientation))
        meta["nifti_orientation"] = orientation
    report, meta["statements"] = _report(plan)
    return _row(plan, image_rel, report, annotations, meta)


def _report(plan: StudyPlan) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The report's sections and what each FINDINGS / IMPRESSION sentence states (``meta.statements``)."""
    from medvl.data.synth.text import write_other_sections, write_report_statements

    # Separate random streams: the other sections never change FINDINGS/IMPRESSION wording.
    main, statements = write_report_statements(
        plan, np.random.default_rng(np.random.SeedSequence([plan.render_seed, 4])))
    other = write_other_sections(plan, np.random.default_rng(np.random.SeedSequence([plan.render_seed, 6])))
    return {**main, **other}, statements


def _row(plan: StudyPlan, image: str, report: dict[str, str], annotations: list[dict[str, Any]],
         meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "study_id": plan.study_id, "patient_id": plan.patient_id, "split": plan.split,
        "modality": plan.modality, "dims": plan.dims, "image": image, "report": report,
        "labels": plan.labels(), "annotations": annotations, "view": plan.view, "meta": meta,
    }


def render_study(plan: StudyPlan, cfg: SynthConfig, out_dir: str | Path) -> dict[str, Any]:
    """Render one planned study, write its files under ``out_dir`` and return its manifest row."""
    out = Path(out_dir)
    return _render_ct(plan, cfg, out) if plan.modality == "CT" else _render_cxr(plan, cfg, out)


def _work(job: tuple[dict[str, Any], dict[str, Any], str]) -> dict[str, Any]:
    plan_d, cfg_d, out = job
    cfg = SynthConfig(**cfg_d)
    return render_study(StudyPlan.from_dict(plan_d), cfg, out)


def generate_corpus(
    out_dir: str | Path,
    n_cxr: int = 100,
    n_ct: int = 10,
    seed: int = 0,
    *,
    progress: bool | None = None,
    **options: Any,
) -> Path:
    """Generate a synthetic chest X-ray / CT corpus and return its manifest path.

    Args:
        out_dir: output folder (created; files of a previous run are overwritten).
        n_cxr: number of radiograph studies.
        n_ct: number of CT studies.
        seed: master seed; the same seed and options give byte-identical files.
        progress: show a progress bar; None shows one when stderr is a terminal.
        **options: other :class:`SynthConfig` fields (``image_size``, ``ct_size``,
            ``workers``, ``compressed_fraction``...).

    Returns:
        Path of ``manifest.jsonl``.

    Raises:
        ConfigError: an invalid count, size or option.
    """
    known = {f.name for f in fields(SynthConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown synth option {unknown[0]!r}", field=unknown[0],
                          expected="one of " + ", ".join(sorted(known - {'n_cxr', 'n_ct', 'seed'})))
    if "ct_size" in options and options["ct_size"] is not None:
        options["ct_size"] = tuple(options["ct_size"])
    if "compressions" in options:
        options["compressions"] = tuple(options["compressions"])
    cfg = SynthConfig(n_cxr=n_cxr, n_ct=n_ct, seed=seed, **options)
    cfg.validate()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder ({exc.strerror})", path=out, field="out") from None

    from medvl.data.manifest import write_manifest
    from medvl.runinfo import write_run_info

    if (out / "synth.json").is_file():
        # A previous corpus lives here: remove its files so no stale study or mask
        # survives next to the new manifest. Folders we did not write are left alone.
        import shutil

        for sub in ("cxr", "ct", "masks"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / "manifest.jsonl").unlink(missing_ok=True)

    plans = plan_corpus(cfg)
    cfg_d = asdict(cfg)
    jobs = [(p.to_dict(), cfg_d, str(out)) for p in plans]
    bar = None
    if progress is None:
        import sys

        progress = sys.stderr.isatty()
    if progress:
        from medvl.progress import progress as make_bar

        bar = make_bar(total=len(jobs), desc="synth", unit="study")
    rows: list[dict[str, Any]] = []
    if cfg.workers > 1 and len(jobs) > 1:
        # "fork" where the platform has it: workers then need no re-import of the
        # caller's main module, so a script without an ``if __name__ == "__main__":``
        # guard works (with "spawn" it would hang re-spawning workers). Workers only
        # run numpy/scipy/pydicom/Pillow code, which is fork-safe (as in PyTorch's
        # DataLoader workers). Elsewhere "spawn" (and the guard) is needed.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(cfg.workers) as pool:
            for row in pool.imap(_work, jobs, chunksize=max(1, min(16, len(jobs) // (4 * cfg.workers)))):
                rows.append(row)
                if bar:
                    bar.update()
    else:
        for job in jobs:
            rows.append(_work(job))
            if bar:
                bar.update()
    if bar:
        bar.close()
    manifest = out / "manifest.jsonl"
    write_manifest(manifest, rows)
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg_d.items() if k != "workers"}
    (out / "synth.json").write_text(json.dumps({"generator_version": GENERATOR_VERSION, **settings},
                                               indent=2, sort_keys=True) + "\n")
    write_run_info(out, {"synth": settings}, cfg.seed, "medvl synth")
    return manifest
