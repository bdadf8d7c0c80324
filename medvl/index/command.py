"""``medvl index build`` and ``medvl index search``.

Examples::

    medvl index build --model runs/demo/model --manifest corpus/manifest.jsonl --out runs/demo/index
    medvl index search runs/demo/index --text "left pleural effusion" -k 5
    medvl index search runs/demo/index --image corpus/img/s0001.png
    medvl index info runs/demo/index
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = sub.add_parser("build", help="embed a manifest's studies into an index (incremental)")
    b.add_argument("--model", required=True, help="model folder (from `medvl train`)")
    b.add_argument("--manifest", required=True, help="manifest (JSONL)")
    b.add_argument("--out", required=True, help="index folder (created, or extended when it exists)")
    b.add_argument("--split", default=None, choices=["train", "val", "test"], help="index one split (default all)")
    b.add_argument("--config", default=None,
                   help="experiment config for the data/index sections (default: config.yaml next to the model)")
    b.add_argument("--rebuild", action="store_true", help="start from scratch instead of adding new studies")
    b.add_argument("--override-preprocessing", action="store_true",
                   help="use data settings that contradict the model's preprocessing.json (logged)")
    b.add_argument("overrides", nargs="*", help="dotted overrides, e.g. index.approximate=never")

    s = sub.add_parser("search", help="print the cases closest to a text or an image")
    s.add_argument("index", help="index folder")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="free-text query")
    q.add_argument("--image", help="query image (DICOM, NIfTI, PNG/JPEG)")
    s.add_argument("--model", default=None, help="model folder (default: the one the index was built with)")
    s.add_argument("-k", type=int, default=10, help="hits to print (default 10)")
    s.add_argument("--against", default="image", choices=["image", "report"],
                   help="rank cases by their images (default) or by their reports")
    s.add_argument("--json", action="store_true", help="print hits as JSON lines")
    s.add_argument("--corpus-root", default=None,
                   help="where the corpus is now, if it was moved without the index (default: as recorded)")

    i = sub.add_parser("info", help="describe an index: cases, dimension, model, versions, history")
    i.add_argument("index", help="index folder")


def _build(args: argparse.Namespace) -> int:
    from medvl.atomic import check_output_folder
    from medvl.eval.cli_common import find_experiment_config
    from medvl.index import storage
    from medvl.index.build import build_index
    from medvl.inference import load

    check_output_folder(args.out)
    cfg, source = find_experiment_config(args.model, args.config, list(args.overrides))
    pipe = load(args.model, data=cfg.get("data"), override_preprocessing=args.override_preprocessing)
    print(f"[index] model {args.model} (its preprocessing.json); batching from {source}")
    before = storage.current_dir(Path(args.out)) if Path(args.out).is_dir() and not args.rebuild else None
    index = build_index(pipe, args.manifest, args.out, split=args.split, config=cfg.get("index"),
                        rebuild=args.rebuild, model_dir=args.model)
    if before is not None and index.version_dir == before:
        change = "nothing new to add"
    else:
        last = index.info["history"][-1]
        change = f"added {last['added']}, skipped {len(last.get('skipped', []))} unreadable"
    search = ("approximate (" + ", ".join(index.info["approximate"]) + ") + exact"
              if index.info.get("approximate") else "exact")
    print(f"[index] {args.out}: {len(index)} cases (dim {index.dim}, {index.version_dir.name}); {change}; "
          f"search: {search}")
    return 0


def _search(args: argparse.Namespace) -> int:
    import sys

    from medvl.errors import CaseIndexError
    from medvl.index.case_index import CaseIndex
    from medvl.inference import load

    index = CaseIndex.open(args.index, corpus_root=args.corpus_root)
    model_dir = args.model or (index.info.get("model") or {}).get("dir")
    if not model_dir:
        raise CaseIndexError("the index does not record its model folder", path=args.index, field="--model",
                             expected="--model DIR")
    if args.k < 1:
        raise CaseIndexError(f"k is {args.k}", field="-k", expected=">= 1")
    result = index.search(load(model_dir), text=args.text, image=None if args.image is None else Path(args.image),
                          k=args.k, against=args.against)
    if result.ood:
        print(f"[index] warning: the query is out of distribution for this model: {result.ood_reason}; "
              "the hits are not similar cases", file=sys.stderr)
    hits = result.hits
    for h in hits:
        if args.json:
            print(json.dumps(h.to_dict()))
            continue
        present = ", ".join(k for k, v in sorted(h.labels.items()) if v == 1) or "-"
        report = " ".join(h.report_text.split())
        print(f"{h.rank:>3}. {h.study_id}  score {h.score:.3f}  [{present}]")
        print(f"     {h.image_path}")
        print(f"     {report[:200]}{'...' if len(report) > 200 else ''}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from medvl.index import storage
    from medvl.index.case_index import CaseIndex

    index = CaseIndex.open(args.index)
    info = index.info
    model = info.get("model") or {}
    print(f"index {args.index}: {len(index)} cases, dimension {index.dim}, live version {index.version_dir.name} "
          f"(on disk: {', '.join(p.name for p in storage.versions(Path(args.index)))})")
    print(f"model: fingerprint {model.get('fingerprint')}, folder {model.get('dir') or '-'}")
    approx = info.get("approximate") or {}
    print("search: " + ("exact + " + ", ".join(f"{t} {e['kind']}" for t, e in approx.items()) if approx else "exact"))
    for h in info.get("history", []):
        print(f"  {h.get('at')}: added {h.get('added')}, skipped {len(h.get('skipped') or [])}"
              f" from {h.get('manifest') or h.get('source')}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.index_command == "build":
        return _build(args)
    if args.index_command == "info":
        return _info(args)
    return _search(args)
