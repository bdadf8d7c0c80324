"""``medvl embed``: embeddings of a manifest, a folder or a DICOM series to Parquet.

Examples::

    medvl embed --model runs/demo/model --manifest corpus/manifest.jsonl --split test --out emb/test
    medvl embed --model runs/demo/model --folder incoming/ --out emb/incoming --resume
    medvl embed --model runs/demo/model --manifest corpus/manifest.jsonl --what image,report --out emb/all
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (with its preprocessing.json)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="manifest (JSONL): one row per study")
    src.add_argument("--folder", help="a folder of images (DICOM, NIfTI, PNG), searched recursively")
    src.add_argument("--series", help="one DICOM series folder")
    parser.add_argument("--split", default=None, choices=["train", "val", "test"],
                        help="with --manifest: one split (default all)")
    parser.add_argument("--out", required=True, help="output folder of Parquet shards")
    parser.add_argument("--what", default="image", help="image, report or image,report (reports need --manifest)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda... (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from medvl.errors import ConfigError
    from medvl.inference import load
    from medvl.inference.export import embed_items, folder_items, manifest_items, series_items

    what = [w.strip() for w in str(args.what).split(",") if w.strip()]
    if "report" in what and not args.manifest:
        raise ConfigError("report embeddings need a manifest (folders carry no reports)", field="--what",
                          expected="--what image, or --manifest")
    if args.batch_size < 1:
        raise ConfigError(f"batch size {args.batch_size}", field="--batch-size", expected=">= 1")
    pipe = load(args.model, device=args.device)
    if args.manifest:
        items, source = manifest_items(args.manifest, args.split, pipe.dims), "manifest"
    elif args.folder:
        items, source = folder_items(args.folder, pipe.dims), "folder"
    else:
        items, source = series_items(args.series, pipe.dims), "series"
    if not items:
        raise ConfigError("nothing to embed", field="--manifest/--folder/--series",
                          expected="images medvl can read")
    meta = embed_items(pipe, items, args.out, what=what, resume=args.resume, batch_size=args.batch_size,
                       progress=not args.no_progress, source=source)
    rate = meta.get("items_per_s_this_run")
    print(f"[embed] {meta['n_written']} of {meta['n_items']} items in {args.out} "
          f"({meta['n_skipped']} skipped, see _skipped.jsonl)" + (f"; {rate} items/s" if rate else ""))
    return 0
