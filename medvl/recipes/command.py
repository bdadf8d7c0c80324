"""``medvl prepare CORPUS --root PATH --out MANIFEST``, or ``medvl prepare dicomweb --url URL --out DIR``."""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", help="mimic-cxr, mimic-cxr-jpg, chexpert, openi, ct-rate, rsna-pneumonia, "
                        "siim-pneumothorax, folder, or dicomweb (a PACS)")
    parser.add_argument("--root", help="folder where the corpus was unpacked (not for dicomweb)")
    parser.add_argument("--out", required=True, help="manifest to write (JSONL); for dicomweb: the output folder")
    parser.add_argument("--uncertain", choices=["keep", "ones", "zeros", "ignore"], default="keep",
                        help="policy for uncertain (-1) labels (default keep)")
    parser.add_argument("--views", default="PA,AP", help="radiograph views to keep, comma separated, or 'all'")
    parser.add_argument("--subset", default=None, help="evaluation subset, e.g. chexpert5x200")
    parser.add_argument("--csv", default=None, help="for 'folder': the CSV name under --root (default reports.csv)")
    parser.add_argument("--check-files", action="store_true", help="check that every referenced image exists")
    parser.add_argument("--seed", type=int, default=0)
    from medvl.recipes.dicomweb_command import add_dicomweb_arguments

    add_dicomweb_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from medvl.data.manifest import read_manifest
    from medvl.errors import ConfigError
    from medvl.recipes import PrepareOptions, prepare

    if args.corpus == "dicomweb":
        from medvl.recipes.dicomweb_command import run_dicomweb

        return run_dicomweb(args)
    if not args.root:
        raise ConfigError("--root is required", field="--root", expected="the folder where the corpus was unpacked")
    views = None if args.views.strip().lower() == "all" else tuple(v.strip() for v in args.views.split(",") if v.strip())
    options = PrepareOptions(uncertain=args.uncertain, views=views, subset=args.subset,
                             check_files=args.check_files, seed=args.seed, csv_name=args.csv or "reports.csv")
    t0 = time.perf_counter()
    n = prepare(args.corpus, args.root, args.out, options)
    dt = time.perf_counter() - t0
    splits = Counter(r.split for r in read_manifest(args.out))
    print(f"{args.corpus}: {n} rows -> {args.out} in {dt:.1f} s "
          f"(train {splits['train']}, val {splits['val']}, test {splits['test']})")
    print(f"next: medvl validate {args.out}")
    return 0
