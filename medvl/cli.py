"""The ``medvl`` command. Thin: it parses arguments and calls the rooms.

Each subcommand lives in its room as a module with two functions,
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import heavy
libraries (torch, monai) lazily inside ``run`` so ``medvl --help`` stays fast.

Every :class:`~medvl.errors.MedvlError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from medvl import __version__
from medvl.errors import MedvlError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("medvl.data.synth.command", "generate the synthetic chest X-ray and CT corpus"),
    "validate": ("medvl.data.validate", "check a manifest before training"),
    "prepare": ("medvl.recipes.command", "turn a public corpus into a manifest"),
    "deid": ("medvl.io.deid_command", "de-identify DICOM files (PS3.15 basic profile)"),
    "pacs": ("medvl.pacs.command", "list a DICOMweb server's studies; export findings as DICOM SR"),
    "model": ("medvl.models.command", "list encoders, import a pretrained model, describe or initialise a model directory"),
    "train": ("medvl.train.command", "train a model from a YAML config"),
    "eval": ("medvl.eval.command", "zero-shot, retrieval, grounding and probe evaluation"),
    "index": ("medvl.index.command", "build or search a case index"),
    "embed": ("medvl.inference.command", "embeddings of a manifest, folder or DICOM series to Parquet"),
    "demo": ("medvl.demo", "synth -> train -> eval -> index on the synthetic corpus"),
    "viewer": ("medvl_viewer.command", "serve the Streamlit case-retrieval viewer on a case index"),
}


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: its first word that is not an option, if any."""
    first = next((a for a in argv if not a.startswith("-")), None)
    return first if first in COMMANDS else None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``medvl`` parser; only ``command``'s module is imported, for its arguments.

    Importing a subcommand module can be costly or need an extra (``medvl viewer`` is the
    ``medvl_viewer`` package of the ``viewer`` extra), so ``medvl --help`` and every other
    subcommand import none but their own.
    """
    parser = argparse.ArgumentParser(
        prog="medvl", description="Medical vision-language platform (research use only)."
    )
    parser.add_argument("--version", action="version", version=f"medvl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medvl`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_chosen_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MedvlError as exc:
        print(f"medvl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A file system refusal the command did not foresee (a file where a folder should
        # be, no permission, disk full) is the user's to fix: one line, not a traceback.
        print(f"medvl {args.command}: error: {exc.strerror or exc}"
              + (f": {exc.filename}" if exc.filename else ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medvl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
