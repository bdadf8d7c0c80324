"""``medvl model import``: a pretrained model of another format -> a medvl model directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_import_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``medvl model import`` under the ``model`` subcommand."""
    from medvl.models.importers import FORMATS

    formats = "\n".join(f"  {name:<12} {row.summary}" for name, row in FORMATS.items())
    p = sub.add_parser(
        "import", help="import CLIP, SigLIP, RAD-DINO, BiomedCLIP, CheXzero or MedCLIP weights (offline)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a pretrained model into a medvl model directory that medvl.load, eval, "
                    "index, embed, the viewer and training (model.init_from) use unchanged.\n\n"
                    "formats (detected when --format is omitted):\n" + formats,
    )
    p.add_argument("source", help="the model directory or weights file")
    p.add_argument("--out", required=True, help="the medvl model directory to write (must be new)")
    p.add_argument("--format", choices=sorted(FORMATS), default=None, help="the source format")
    p.add_argument("--licence", "--license", dest="licence", default=None,
                   help="the licence or terms of use that govern the source model (recorded and shown)")
    p.add_argument("--name", default=None, help="display name (default: the source's)")
    p.add_argument("--hub-name", default=None, help="the source's hub name, for users with a network")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer directory (or OpenAI's bpe_simple_vocab_16e6.txt.gz for openai-clip) "
                        "when the source has none")
    p.add_argument("--text", default=None, help="dinov2-bert: the BERT-family text model directory")
    p.add_argument("--config", default=None, help="open-clip: open_clip_config.json when not beside the weights")
    p.add_argument("--text-config", default=None,
                   help="open-clip/medclip: the text model's config.json (default: read off the weights)")
    p.add_argument("--variant", default=None, help="openai-clip: chexzero (default) or clip preprocessing")
    p.add_argument("--embed-dim", type=int, default=None, help="dinov2-bert: size of the new joint space")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")


def run_import(args: argparse.Namespace) -> int:
    """Run ``medvl model import``; medvl errors propagate (one line, exit 2)."""
    import sys

    from medvl.models.importers import import_model

    options = {"tokenizer": args.tokenizer, "text": args.text, "config": args.config,
               "text_config": args.text_config, "variant": args.variant, "embed_dim": args.embed_dim}
    options = {k: (Path(v) if isinstance(v, str) and k != "variant" else v) for k, v in options.items()}
    out = import_model(args.source, args.out, format=args.format, licence=args.licence, name=args.name,
                       hub_name=args.hub_name, overwrite=args.overwrite, **options)
    prov = json.loads((out / "provenance.json").read_text("utf-8"))
    rule = json.loads((out / "config.json").read_text("utf-8")).get("zeroshot", {}).get("scoring", "none")
    print(f"wrote {out}: {prov['name']} ({prov['format']}), zero-shot rule {rule}, licence: {prov['licence']}")
    if args.licence is None:
        print("note: no --licence given; several of these models are non-commercial or carry terms of "
              "use: re-import with --licence to record them", file=sys.stderr)
    return 0
