"""``medvl model``: list encoders, describe a model directory, or write an untrained one.

Examples::

    medvl model encoders
    medvl model info runs/demo/model
    medvl model init configs/tiny.yaml --out runs/init -o model.text.name=minilm
    medvl model preprocessing runs/old/model --config runs/old/config.yaml
    medvl model import BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 --out models/biomedclip --licence MIT
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``model`` subcommand's arguments."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("encoders", help="list the registered image and text encoders")
    info = sub.add_parser("info", help="describe a saved model directory")
    info.add_argument("directory", help="a folder written by save_pretrained")
    init = sub.add_parser("init", help="build the model of a config and save it untrained")
    init.add_argument("config", help="experiment YAML with a model: section")
    init.add_argument("--out", required=True, help="target model directory")
    init.add_argument("-o", "--override", action="append", default=[],
                      help="dotted override, e.g. model.embed_dim=256 (repeatable)")
    prep = sub.add_parser("preprocessing",
                          help="write preprocessing.json into a model directory saved without one")
    prep.add_argument("directory", help="the model directory")
    prep.add_argument("--config", default=None,
                      help="the experiment config it was trained with (default: config.yaml next to the directory)")
    prep.add_argument("--force", action="store_true", help="replace an existing preprocessing.json")
    from medvl.models.importers.cli import add_import_parser

    add_import_parser(sub)


def run(args: argparse.Namespace) -> int:
    """Run the chosen action; medvl errors propagate to the CLI (one line, exit 2)."""
    if args.action == "encoders":
        from medvl.models.factory import IMAGE_ENCODERS, TEXT_ENCODERS

        for title, table in (("image encoders", IMAGE_ENCODERS), ("text encoders", TEXT_ENCODERS)):
            print(f"{title}:")
            width = max(len(name) for name in table)
            for name, row in table.items():
                print(f"  {name:<{width}}  {row.summary}")
        return 0
    if args.action == "import":
        from medvl.models.importers.cli import run_import

        return run_import(args)
    if args.action == "info":
        from medvl.models.saving import read_config

        data = read_config(args.directory)
        model = data["model"]
        summary = {
            "format_version": data.get("format_version"),
            "medvl_version": data.get("medvl_version"),
            "embed_dim": model.get("embed_dim"),
            "image": {k: model["image"].get(k) for k in ("name", "in_channels", "image_size", "volume")},
            "text": {k: model["text"].get(k) for k in ("name", "path", "pooling", "max_length")},
            "zeroshot": data.get("zeroshot"),
        }
        from medvl.models.saving import read_provenance

        provenance = read_provenance(args.directory)
        if provenance:
            summary["provenance"] = provenance
        print(json.dumps(summary, indent=2))
        return 0
    if args.action == "preprocessing":
        return _write_preprocessing(args)
    from medvl.atomic import check_output_folder
    from medvl.config import load_config
    from medvl.errors import ConfigError
    from medvl.inference.preprocessing import Preprocessing
    from medvl.models import build_model

    check_output_folder(args.out)
    cfg = load_config(args.config, args.override)
    if "model" not in cfg:  # an empty file (or a typo'd section name) must not quietly give a default model
        raise ConfigError("the config has no model section, so nothing says which model to build",
                          path=args.config, field="model",
                          expected="a 'model:' section (an empty one, 'model: {}', builds the defaults)")
    preprocessing = Preprocessing.from_data_config(cfg.get("data"))
    model = build_model(cfg.get("model"))
    model.save_pretrained(args.out, card={"training_data": "none (untrained initialisation)"},
                          preprocessing=preprocessing, training={"loss": None, "local_heads_trained": False})
    n = sum(p.numel() for p in model.parameters())
    built = model.config
    image, text = built.get("image") or {}, built.get("text") or {}
    defaults = " (the model section is empty: every setting is the default)" if not cfg.get("model") else ""
    print(f"wrote {args.out}: untrained {image.get('name')} image encoder ({image.get('image_size')} px), "
          f"{text.get('name')} text encoder, {built.get('embed_dim')}-d embeddings, "
          f"{n / 1e6:.1f}M parameters{defaults}")
    return 0


def _write_preprocessing(args: argparse.Namespace) -> int:
    """``medvl model preprocessing DIR``: the run's data section -> ``preprocessing.json``."""
    from pathlib import Path

    from medvl.errors import ConfigError
    from medvl.inference.preprocessing import write_from_config

    config = args.config
    if config is None:
        found = [c for c in (Path(args.directory) / "config.yaml", Path(args.directory).parent / "config.yaml")
                 if c.is_file()]
        if not found:
            raise ConfigError("no config.yaml next to the model directory", path=args.directory,
                              field="--config", expected="--config RUN/config.yaml (the config it was trained with)")
        config = found[0]
    path = write_from_config(args.directory, config, force=args.force)
    print(f"wrote {path} from the data section of {config}")
    return 0
