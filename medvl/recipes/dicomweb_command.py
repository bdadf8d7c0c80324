"""The ``dicomweb`` options of ``medvl prepare`` and their run (kept apart from the file recipes)."""

from __future__ import annotations

import argparse
import sys
import time


def add_dicomweb_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medvl prepare dicomweb`` (credentials only from the environment or --pacs-config)."""
    g = parser.add_argument_group("dicomweb (a PACS; credentials from MEDVL_PACS_* or --pacs-config, never here)")
    g.add_argument("--url", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (or MEDVL_PACS_URL)")
    g.add_argument("--pacs-config", help="YAML/JSON with url, username/password or token, verify, ca_bundle, ...")
    g.add_argument("--modality", default="", help="modalities to take, comma separated, e.g. CR,DX")
    g.add_argument("--since", help="first StudyDate, YYYY-MM-DD")
    g.add_argument("--until", help="last StudyDate, YYYY-MM-DD")
    g.add_argument("--reports", help="CSV of reports keyed by StudyInstanceUID or AccessionNumber "
                   "(default: a text SR in each study)")
    g.add_argument("--description", help="keep studies whose description contains this text")
    g.add_argument("--limit", type=int, help="at most this many studies")
    g.add_argument("--workers", type=int, help="concurrent fetches (default 4)")
    g.add_argument("--timeout", type=float, help="seconds to wait for the server (default 30)")
    g.add_argument("--max-instances", type=int, help="skip studies whose series has more instances (default 2000)")
    g.add_argument("--max-study-mb", type=float, help="stop fetching a study past this size (default 4096)")
    g.add_argument("--dates", choices=["remove", "shift"], default="remove",
                   help="remove dates (basic profile, default) or shift them consistently")
    g.add_argument("--allow-burned-in", action="store_true", help="accept instances flagged BurnedInAnnotation YES")
    g.add_argument("--allow-missing-reports", action="store_true", help="keep studies that have no report")
    g.add_argument("--insecure", action="store_true", help="do not verify TLS certificates (lab servers only)")


def run_dicomweb(args: argparse.Namespace) -> int:
    """Run ``medvl prepare dicomweb``; one line per skipped study, a summary, exit 0."""
    from pathlib import Path

    from medvl.pacs.config import load_pacs_config
    from medvl.recipes.dicomweb import DicomWebPrepare

    cfg = load_pacs_config(args.pacs_config, url=args.url, workers=args.workers, timeout=args.timeout,
                           max_instances=args.max_instances, max_study_mb=args.max_study_mb,
                           verify=False if args.insecure else None)
    job = DicomWebPrepare(
        config=cfg, out_dir=Path(args.out), modalities=tuple(m for m in args.modality.split(",") if m.strip()),
        since=args.since, until=args.until, reports_csv=Path(args.reports) if args.reports else None,
        description=args.description, limit=args.limit, dates=args.dates, allow_burned_in=args.allow_burned_in,
        require_report=not args.allow_missing_reports, progress=sys.stderr.isatty(),
    )
    t0 = time.perf_counter()

    def report(outcome) -> None:
        if outcome.status == "skipped":
            print(outcome.line(), flush=True)

    result = job.run(on_study=report)
    s = result.summary()
    print(f"dicomweb: {s['done'] + s['cached']} studies in {args.out}/manifest.jsonl ({s['done']} new, "
          f"{s['cached']} already cached, {s['skipped']} skipped); {s['instances_fetched']} instances fetched, "
          f"{s['instances_from_cache']} from cache, in {time.perf_counter() - t0:.1f} s")
    if result.stopped:
        print(f"dicomweb: {result.stopped}")
    print(f"next: medvl validate {args.out}/manifest.jsonl")
    return 0 if not result.stopped else 1
