"""``medvl train --config FILE [--out DIR] [--resume] [key=value ...]``.

Runs the same under ``python -m medvl.cli train`` and
``torchrun --nproc_per_node N -m medvl.cli train`` (one process per GPU or CPU worker).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment config (YAML)")
    parser.add_argument("--out", default=None,
                        help="run directory (default: output_dir from the config, else runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <out>/checkpoints/last (model, optimizer, schedule, RNG, data position)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted config overrides, e.g. train.epochs=3 data.batch_size=32")


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from medvl.atomic import check_output_folder
    from medvl.config import load_config
    from medvl.experiment import check_overrides, parse_experiment
    from medvl.train import engine, train

    # every section is validated here, so a misspelled one stops the run before any work
    parts = engine.default_components()
    check_overrides(args.overrides, raw_sections=parts.raw_sections)  # named as the override's, not the file's
    exp = parse_experiment(load_config(args.config, list(args.overrides)), source=args.config,
                           raw_sections=parts.raw_sections)
    out = args.out or exp.output_dir or str(Path("runs") / Path(args.config).stem)
    check_output_folder(out)
    result = train(exp, out, resume=bool(args.resume), components=parts)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 prints
        last = result.history[-1] if result.history else {}
        shown = ", ".join(f"{k}={v:.3f}" for k, v in last.items()
                          if isinstance(v, float) and k.startswith(("i2t_R", "t2i_R", "train_loss")))
        print(f"trained {result.steps} steps in {result.seconds:.1f} s; model: {result.model_dir}"
              + (f"; last validation: {shown}" if shown else "")
              + (f"; {len(result.skipped)} studies skipped (see {Path(out) / 'skipped.jsonl'})"
                 if result.skipped else ""))
    return 0
