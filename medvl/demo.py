"""``medvl demo``: synth -> train -> eval -> index on the built-in synthetic corpus.

It prints a summary table (corpus size, training time, zero-shot mean AUROC,
image->report R@5 against chance, where every output went) and writes it to
``summary.json``. Rerunning reuses a corpus generated with the same parameters.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
#: ``medvl demo --ct`` (``make demo-ct``): synthetic chest CTs and a 3D model.
CT_CONFIG = DEFAULT_CONFIG.with_name("demo_ct.yaml")


@dataclass
class DemoConfig:
    """The ``demo`` section: the synthetic corpus ``medvl demo`` generates.

    Attributes:
        n_cxr: chest radiograph studies.
        n_ct: CT studies.
        synth: further keyword arguments of ``medvl.data.synth.generate_corpus``
            (``image_size``, ``workers``...).
    """

    n_cxr: int = 1000
    n_ct: int = 20
    synth: dict[str, Any] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--config", default=None, help="experiment config (default configs/demo.yaml)")
    parser.add_argument("--ct", action="store_true",
                        help="the CT demo: configs/demo_ct.yaml (synthetic CT volumes, a 3D image tower)")
    parser.add_argument("--n-cxr", type=int, default=None, help="chest radiograph studies (default from config)")
    parser.add_argument("--n-ct", type=int, default=None, help="CT studies (default from config)")
    parser.add_argument("--seed", type=int, default=None, help="seed for corpus and training (default from config)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.epochs=2")


def _resolve_config(path: str | None, overrides: list[str], *, ct: bool = False) -> dict[str, Any]:
    from medvl.config import load_config
    from medvl.errors import ConfigError

    if path is not None and ct:
        raise ConfigError("--ct and --config both choose the config", field="--ct",
                          expected="one of them (--ct is --config configs/demo_ct.yaml)")
    if path is None:
        default = CT_CONFIG if ct else DEFAULT_CONFIG
        if not default.is_file():
            raise ConfigError(f"configs/{default.name} not found next to the package; pass --config", path=default)
        path = str(default)
    from medvl.experiment import check_overrides

    check_overrides(overrides)  # an override's own mistake is named as the override's, not the file's
    return load_config(path, overrides)


def _corpus(out: Path, n_cxr: int, n_ct: int, seed: int, synth_kw: dict[str, Any]) -> Path:
    """Generate the corpus once; reuse it when the parameters match."""
    from medvl.data.synth import generate_corpus

    corpus = out / "corpus"
    params = {"n_cxr": n_cxr, "n_ct": n_ct, "seed": seed, **synth_kw}
    stamp = corpus / "demo_params.json"
    manifest = corpus / "manifest.jsonl"
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == params:
        print(f"[demo] reusing corpus {corpus} ({n_cxr} CXR, {n_ct} CT, seed {seed})")
        return manifest
    print(f"[demo] generating corpus: {n_cxr} chest radiographs, {n_ct} CT volumes, seed {seed}")
    manifest = Path(generate_corpus(corpus, n_cxr=n_cxr, n_ct=n_ct, seed=seed, **synth_kw))
    stamp.write_text(json.dumps(params))
    return manifest


def run(args: argparse.Namespace) -> int:
    from medvl.atomic import check_output_folder
    from medvl.config import set_dotted
    from medvl.experiment import parse_experiment

    cfg = _resolve_config(args.config, list(args.overrides), ct=bool(getattr(args, "ct", False)))
    exp = parse_experiment(cfg, source=args.config)  # a misspelled section stops here, before any work
    demo = exp.demo
    cfg.pop("demo", None)
    seed = args.seed if args.seed is not None else exp.seed
    n_cxr = args.n_cxr if args.n_cxr is not None else demo.n_cxr
    n_ct = args.n_ct if args.n_ct is not None else demo.n_ct
    synth_kw = dict(demo.synth)
    out = check_output_folder(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    manifest = _corpus(out, n_cxr, n_ct, seed, synth_kw)
    timings["synth_s"] = time.perf_counter() - t0

    from medvl.data.manifest import read_manifest

    rows = read_manifest(manifest)
    dims = int(cfg.get("data", {}).get("dims", 2))
    used = [r for r in rows if r.dims == dims]
    n_split = {s: sum(r.split == s for r in used) for s in ("train", "val", "test")}

    set_dotted(cfg, "data.manifest", str(manifest))
    if not cfg.get("data", {}).get("cache_dir"):
        set_dotted(cfg, "data.cache_dir", str(out / "cache"))
    cfg["seed"] = seed

    from medvl.train import train

    print(f"[demo] training on {n_split['train']} studies (val {n_split['val']}, test {n_split['test']})")
    t0 = time.perf_counter()
    result = train(cfg, out)
    timings["train_s"] = time.perf_counter() - t0

    import torch

    from medvl.eval import evaluate
    from medvl.index import build_index
    from medvl.inference import load

    # The model directory as a complete inference unit: its preprocessing, calibration, OOD profile.
    pipe = load(result.model_dir, data=cfg.get("data"))
    tasks = list(cfg.get("eval", {}).get("tasks", ["zeroshot", "retrieval"]))
    print(f"[demo] evaluating {', '.join(tasks)} on the test split")
    t0 = time.perf_counter()
    with torch.no_grad():
        results = evaluate(pipe, manifest, tasks=tasks, out_dir=out / "eval", split="test", config=cfg.get("eval"))
    timings["eval_s"] = time.perf_counter() - t0

    print("[demo] building the case index")
    t0 = time.perf_counter()
    with torch.no_grad():
        build_index(pipe, manifest, out / "index", config=cfg.get("index"), model_dir=result.model_dir)
    timings["index_s"] = time.perf_counter() - t0

    summary = _summary(rows, used, n_split, results, timings, out, result)
    summary["trained_on"] = "CT volumes (3D)" if dims == 3 else "chest radiographs (2D)"
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_table(summary)
    return 0


def _summary(rows, used, n_split, results, timings, out: Path, result) -> dict[str, Any]:
    zs = results.get("zeroshot", {})
    rt = results.get("retrieval", {})
    i2t = rt.get("image_to_report", rt.get("i2t", {}))
    n_test = max(1, n_split["test"])
    return {
        "corpus": {
            "studies": len(rows),
            "cxr": sum(r.dims == 2 for r in rows),
            "ct": sum(r.dims == 3 for r in rows),
            "used_for_training": n_split,
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "zeroshot_mean_auroc": zs.get("mean_auroc"),
        "zeroshot_calibration": (zs.get("calibration") or {}).get("mean"),
        "zeroshot_chance_auroc": 0.5,
        "image_to_report_r5": i2t.get("R@5"),
        "image_to_report_r5_chance": round(min(1.0, 5 / n_test), 4),
        "skipped_studies": len(getattr(result, "skipped", []) or []),
        "outputs": {
            "corpus": str(out / "corpus"),
            "model": str(result.model_dir),
            "metrics": str(out / "metrics.csv"),
            "eval": str(out / "eval" / "results.json"),
            "index": str(out / "index"),
        },
    }


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _calibration_line(mean: dict[str, Any] | None) -> str:
    if not mean:
        return "none (scores are uncalibrated)"
    return (f"ECE {_fmt(mean['ece_before'])} -> {_fmt(mean['ece_after'])}, Brier {_fmt(mean['brier_before'])} -> "
            f"{_fmt(mean['brier_after'])} (test split, fitted on val)")


def _print_table(s: dict[str, Any]) -> None:
    c = s["corpus"]
    lines = [
        ("corpus", f"{c['studies']} studies ({c['cxr']} CXR, {c['ct']} CT)"),
        ("trained on", str(s.get("trained_on", ""))),
        ("train / val / test", "{train} / {val} / {test}".format(**c["used_for_training"])),
        ("synth time", f"{s['timings_s']['synth_s']} s"),
        ("training time", f"{s['timings_s']['train_s']} s"),
        ("zero-shot mean AUROC", f"{_fmt(s['zeroshot_mean_auroc'])} (chance 0.500)"),
        ("zero-shot calibration", _calibration_line(s.get("zeroshot_calibration"))),
        ("image->report R@5", f"{_fmt(s['image_to_report_r5'])} (chance {s['image_to_report_r5_chance']:.3f})"),
        ("skipped studies", str(s["skipped_studies"])),
    ] + [(f"output: {k}", v) for k, v in s["outputs"].items()]
    w = max(len(k) for k, _ in lines)
    print("\n== medvl demo summary (research use only) ==")
    for k, v in lines:
        print(f"  {k:<{w}}  {v}")
    index = Path(s["outputs"]["index"])
    hint = "make viewer" if index == Path("runs/demo/index") else f"make viewer DEMO_OUT={index.parent}"
    print(f"\nNext: `{hint}` to browse the index.")
