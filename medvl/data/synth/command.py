"""``medvl synth``: write the synthetic corpus (DICOM / NIfTI images, masks, reports, manifest)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medvl.errors import ConfigError


def _ct_size(text: str) -> tuple[int, ...]:
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise ConfigError(f"invalid CT size {text!r}", field="--ct-size", expected="X,Y,Z e.g. 96,96,64") from None
    if len(parts) != 3:
        raise ConfigError(f"invalid CT size {text!r}", field="--ct-size", expected="three integers X,Y,Z")
    return parts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``medvl synth`` options."""
    parser.add_argument("--out", default=None, help="output folder (required)")
    parser.add_argument("--n-cxr", type=int, default=100, help="chest radiograph studies (default 100)")
    parser.add_argument("--n-ct", type=int, default=10, help="CT studies (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="master seed (default 0)")
    parser.add_argument("--image-size", type=int, default=512, help="radiograph rows/columns (default 512)")
    parser.add_argument("--ct-size", default="96,96,64", help="CT grid X,Y,Z (default 96,96,64)")
    parser.add_argument("--workers", type=int, default=1, help="render processes (default 1)")
    parser.add_argument("--compressed-fraction", type=float, default=0.25,
                        help="share of radiographs stored compressed when an encoder is installed (default 0.25)")
    parser.add_argument("--ct-dicom-fraction", type=float, default=0.3,
                        help="share of CT studies written as DICOM series instead of NIfTI (default 0.3)")
    parser.add_argument("--normal-fraction", type=float, default=0.25,
                        help="share of studies without pathology (default 0.25)")
    parser.add_argument("--uncertain-fraction", type=float, default=0.15,
                        help="chance a study carries one hedged finding, label -1 (default 0.15)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Generate the corpus; bad arguments raise :class:`ConfigError` (exit code 2)."""
    if not args.out:
        raise ConfigError("no output folder given", field="--out", expected="--out DIR")
    from medvl.atomic import check_output_folder
    from medvl.data.synth.corpus import generate_corpus

    check_output_folder(args.out)

    t0 = time.perf_counter()
    manifest = generate_corpus(
        args.out, n_cxr=args.n_cxr, n_ct=args.n_ct, seed=args.seed, progress=not args.quiet,
        image_size=args.image_size, ct_size=_ct_size(args.ct_size), workers=args.workers,
        compressed_fraction=args.compressed_fraction, ct_dicom_fraction=args.ct_dicom_fraction,
        normal_fraction=args.normal_fraction, uncertain_fraction=args.uncertain_fraction,
    )
    n = args.n_cxr + args.n_ct
    print(f"wrote {n} studies to {manifest} in {time.perf_counter() - t0:.1f} s")
    print(summary(manifest))
    return 0


def summary(manifest: str | Path) -> str:
    """Studies per split and present (1) / hedged (-1) / stated-absent (0) counts per finding."""
    from medvl.data.manifest import SPLITS, read_manifest
    from medvl.findings import finding_names

    rows = read_manifest(manifest)
    lines = [f"{'':18s}" + "".join(f"{s:>8s}" for s in SPLITS) + f"{'+1/-1/0 all':>16s}"]
    lines.append(f"{'studies':18s}" + "".join(f"{sum(r.split == s for r in rows):8d}" for s in SPLITS))
    for name in finding_names():
        per = "".join(f"{sum(r.split == s and r.labels.get(name) == 1 for r in rows):8d}" for s in SPLITS)
        counts = "/".join(str(sum(r.labels.get(name) == v for r in rows)) for v in (1, -1, 0))
        lines.append(f"{name:18s}{per}{counts:>16s}")
    return "\n".join(lines)
