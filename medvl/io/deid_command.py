"""``medvl deid IN OUT``: de-identify DICOM files (PS3.15 basic profile)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl deid``."""
    parser.add_argument("input", help="DICOM file or folder (searched recursively)")
    parser.add_argument("output", help="output folder: <study>/<series>/<instance>.dcm by new UIDs")
    parser.add_argument("--seed", default=None,
                        help="secret making pseudonymous UIDs/IDs reproducible across runs (keep private)")
    parser.add_argument("--dates", choices=["remove", "shift"], default="remove",
                        help="remove all dates (basic profile, default) or shift them consistently")
    parser.add_argument("--allow-burned-in", action="store_true",
                        help="also write files flagged BurnedInAnnotation=YES")


def run(args: argparse.Namespace) -> int:
    """Run the command; prints a one-line summary and the skipped files."""
    from medvl.errors import MedvlError
    from medvl.io.deid import deidentify

    report = deidentify(args.input, args.output, seed=args.seed, dates=args.dates,
                        allow_burned_in=args.allow_burned_in)
    for item in report.skipped:
        print(f"skipped {item['file']}: {item['reason']}")
    print(f"de-identified {len(report.written)} file(s) into {args.output}; skipped {len(report.skipped)}")
    if report.collisions:
        print(f"note: {len(report.collisions)} input(s) had the SOP Instance UID of an earlier input (the same "
              "object in another encoding, or a copy); each was written under its own name (<uid>-2.dcm, ...)")
    if report.check_pixels:
        print(f"warning: {len(report.check_pixels)} written file(s) of modalities that often show patient "
              "text in the pixels (US, SC, ...) are not flagged BurnedInAnnotation=NO; review them "
              "(listed in deid_report.json)")
    if not report.written:
        raise MedvlError("no file could be de-identified", path=args.input,
                         expected="DICOM files without burned-in annotation")
    return 0
