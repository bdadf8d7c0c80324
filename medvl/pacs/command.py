"""``medvl pacs``: list a DICOMweb server's studies (no names or ids), export findings as DICOM SR.

Examples::

    medvl pacs studies --url http://127.0.0.1:8042/dicom-web --modality CR --since 2024-01-01
    medvl pacs sr --model runs/demo/model --index runs/demo/index --image CASE.dcm --out findings.sr.dcm
    medvl pacs sr ... --store --url https://pacs/dicom-web     # STOW-RS, only when asked
    medvl pacs sr ... --allow-ood        # export an image the model flags as out of distribution
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``medvl pacs``."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for name, text in (("studies", "list studies (no patient names or ids)"),
                       ("sr", "zero-shot findings + similar cases as a DICOM SR (research use only)")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--url", help="DICOMweb root (or MEDVL_PACS_URL)")
        p.add_argument("--pacs-config", help="YAML/JSON: url, username/password or token, verify, ca_bundle")
        p.add_argument("--timeout", type=float, help="seconds to wait for the server")
        if name == "studies":
            p.add_argument("--modality", default="", help="comma separated, e.g. CR,DX")
            p.add_argument("--since", help="YYYY-MM-DD")
            p.add_argument("--until", help="YYYY-MM-DD")
            p.add_argument("--description", help="part of the study description")
            p.add_argument("--limit", type=int, default=50)
        else:
            p.add_argument("--model", required=True, help="model directory")
            p.add_argument("--image", required=True, help="evaluated DICOM file or series folder")
            p.add_argument("--index", help="case index to take similar cases from")
            p.add_argument("-k", type=int, default=5, help="similar cases referenced")
            p.add_argument("--out", required=True, help="SR file to write")
            p.add_argument("--store", action="store_true", help="also store the SR on the server (STOW-RS)")
            p.add_argument("--allow-ood", action="store_true",
                           help="export even when the model flags the image as out of distribution "
                                "(the SR says so); refused by default")


def run(args: argparse.Namespace) -> int:
    """Run the action."""
    from medvl.pacs.config import load_pacs_config

    if args.action == "studies":
        from medvl.pacs.client import DicomWebSource

        src = DicomWebSource(load_pacs_config(args.pacs_config, url=args.url, timeout=args.timeout))
        studies = src.search_studies(modalities=[m for m in args.modality.split(",") if m.strip()],
                                     since=args.since, until=args.until, description=args.description,
                                     limit=args.limit)
        for s in studies:
            d = s.display()
            print(f"{d['ref']}  {d['date']:10}  {d['modalities']:8}  {d['instances'] or '?':>5} inst  {d['description']}")
        print(f"{len(studies)} studies (research use only)")
        return 0
    import medvl
    from medvl.pacs.export import export_findings_sr

    store = None
    if args.store:
        from medvl.pacs.client import DicomWebSource

        store = DicomWebSource(load_pacs_config(args.pacs_config, url=args.url, timeout=args.timeout))
    index = None
    if args.index:
        from medvl.index import CaseIndex

        index = CaseIndex.open(args.index)
    pipeline = medvl.load(args.model)
    sr = export_findings_sr(pipeline, args.image, args.out, index=index, k=args.k, store_to=store,
                            allow_ood=args.allow_ood)
    n = len(sr.ContentSequence)
    print(f"wrote {args.out} (Comprehensive 3D SR, {n} items; research use only)"
          + ("; stored on the server" if store else ""))
    return 0
