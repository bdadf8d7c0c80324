"""Grounding experiment: does a token-level term make phrase maps point at the finding?

Arms share the corpus, model, seed, data order, optimiser and schedule; only the loss
differs (``ARMS``). Each trained model is scored by :mod:`benchmarks.grounding.evaluate`
on the test split's annotated findings with two maps: ``local`` (the local heads a token
term trains; ``medvl.eval``'s map) and ``cam`` (the global head on every token, the map an
instance-only model can give). References without a model: chance, the finding's mean
training mask, and its mean mask on the stated side.

Equal steps and equal wall time: every arm runs ``--steps`` optimizer steps; the
``instance@wall`` arm is the instance arm given the *seconds* of the costliest token arm,
i.e. ``--steps`` times the step-cost ratio measured at the start with the arms' steps
alternating in one process. The ratio is one of *CPU* seconds (``time.thread_time``;
torch runs one thread here): on the shared machine a step's wall time varied 3-60 s with
other jobs' load, while its CPU time is what a dedicated single-core machine would
spend as wall time. Training CPU seconds are recorded next to wall seconds.

Resumable: every run checkpoints every ``--checkpoint-every`` steps and is resumed from
there; a finished run's figures live in ``<work>/runs/<arm>/seed<k>/result.json`` and are
not recomputed. ``results.json`` / ``results.md`` are rewritten after every run. Run::

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python -m benchmarks.grounding.run_grounding > runs/grounding/log.txt 2>&1 &
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: Loss terms per arm; the instance term is medvl's default in every arm.
ARMS: dict[str, dict[str, Any]] = {
    "instance": {"instance": {"weight": 1.0}},
    # GLoRIA weighs its local and global losses 1 and 1. Unit vectors: the default of
    # loss.terms.gloria.normalize_inputs until this round, what the recorded runs used.
    "instance+gloria": {"instance": {"weight": 1.0}, "gloria": {"weight": 1.0, "normalize_inputs": True}},
    # GLoRIA attending with the features as given (its code; medvl's default since round 3).
    "instance+gloria-raw": {"instance": {"weight": 1.0}, "gloria": {"weight": 1.0, "normalize_inputs": False}},
    # The same with sharper word-to-region attention: at GLoRIA's attention_scale 4 a
    # trained model's words put on average 0.065 of their attention on their best of 64
    # regions (uniform 0.016), so each word's context is a broad mix of the film.
    **{f"instance+gloria-sharp{k}": {"instance": {"weight": 1.0},
                                      "gloria": {"weight": 1.0, "normalize_inputs": False, "attention_scale": float(k)}}
       for k in (10, 20)},
    # MGCA weighs its token term 0.7.
    "instance+token": {"instance": {"weight": 1.0}, "token": {"weight": 0.7}},
    # FILIP's token-wise maximum matching, negatives from the other images of the batch.
    "instance+filip": {"instance": {"weight": 1.0}, "filip": {"weight": 1.0}},
    # The same with each token's best match scored above its mean match (loss.terms.filip.baseline).
    "instance+filip-mean": {"instance": {"weight": 1.0}, "filip": {"weight": 1.0, "baseline": "mean"}},
}
WALL_ARM = "instance@wall"

MODEL: dict[str, Any] = {
    "embed_dim": 128,
    "image": {"name": "resnet18", "in_channels": 1, "image_size": 256, "width": 16},
    "text": {"name": "bert", "hidden_size": 128, "num_layers": 2, "num_heads": 4,
             "intermediate_size": 256, "max_length": 96},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(REPO / "runs" / "grounding"))
    p.add_argument("--results-dir", default=str(HERE))
    p.add_argument("--n-cxr", type=int, default=2000)
    p.add_argument("--corpus-seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=256, help="model input side; ResNet stride 32 -> 8x8 tokens at 256")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--arms", nargs="+", default=["instance", "instance+gloria"], choices=list(ARMS))
    p.add_argument("--wall", action="store_true", help="add the instance arm at the token arms' wall time")
    p.add_argument("--wall-only", action="store_true",
                   help="with --wall: train only instance@wall (another process trains the token arms)")
    p.add_argument("--curve", type=int, nargs="*", default=[],
                   help="also score the model at these steps during training (learning curve)")
    p.add_argument("--checkpoint-every", type=int, default=25)
    p.add_argument("--cost-rounds", type=int, default=6)
    p.add_argument("--tag", default="", help="prefix of the run folders (a pilot keeps its own)")
    p.add_argument("--text", choices=["bert", "minilm"], default="bert",
                   help="text tower: a random 2-layer BERT, or the real all-MiniLM-L6-v2 frozen (features cached)")
    p.add_argument("--image-options", default="{}",
                   help='JSON for model.image.options of every arm, e.g. \'{"output_stride": 16}\'')
    args = p.parse_args(argv)
    if args.wall_only and not args.wall:
        p.error("--wall-only needs --wall")
    return args


def machine() -> dict[str, Any]:
    from benchmarks.ablation.run_ablation import machine as m

    return m()


def load_avg() -> float | None:
    from benchmarks.ablation.run_ablation import load_avg as la

    return la()


#: The frozen real text tower of ``--text minilm`` (its features are cached after the first epoch).
MINILM: dict[str, Any] = {"name": "minilm", "freeze": True, "max_length": 96}


def base_config(args: argparse.Namespace, manifest: Path, cache: Path) -> dict[str, Any]:
    image = MODEL["image"] | {"image_size": args.image_size, "options": json.loads(args.image_options)}
    text = (MINILM | {"cache_dir": str(cache.parent / "text_cache")}) if args.text == "minilm" else MODEL["text"]
    return {
        "seed": 0,
        "data": {"manifest": str(manifest), "dims": 2, "image_size": args.image_size,
                 "batch_size": args.batch_size, "num_workers": 0, "max_words": 64, "augment": False,
                 "drop_last": True, "cache_dir": str(cache)},
        "model": copy.deepcopy(MODEL) | {"image": image, "text": copy.deepcopy(text)},
        "train": {"max_steps": args.steps, "lr": args.lr, "weight_decay": 0.05, "warmup_ratio": 0.05,
                  "val_every_epoch": 0, "log_every": 5, "progress": False,
                  "checkpoint_every_steps": args.checkpoint_every},
    }


def step_cost(cfg: dict[str, Any], arms: list[str], rounds: int) -> dict[str, Any]:
    """Median seconds per training step of each arm, arms alternating in one process."""
    import torch

    from medvl.data import build_dataloader
    from medvl.losses import build_loss
    from medvl.models import build_model

    batch = next(iter(build_dataloader(cfg["data"], cfg["data"]["manifest"], "train", shuffle=False)))
    setups = {}
    for arm in arms:
        torch.manual_seed(0)
        model = build_model(copy.deepcopy(cfg["model"]))
        loss = build_loss({"terms": copy.deepcopy(ARMS[arm])}, embed_dim=model.config["embed_dim"])
        opt = torch.optim.AdamW([*model.parameters(), *loss.parameters()], lr=1e-4)
        setups[arm] = (model.train(), loss.train(), opt, model.tokenize(list(batch["text"])))

    def step(arm: str) -> tuple[float, float]:
        model, loss, opt, tok = setups[arm]
        t0, c0 = time.perf_counter(), time.thread_time()
        out = loss(model.encode_image(batch["image"]), model.encode_text(**tok), logit_scale=model.logit_scale,
                   labels=batch["labels"], epoch=1)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        return time.perf_counter() - t0, time.thread_time() - c0

    for arm in arms:
        step(arm)
    load0 = load_avg()
    wall: dict[str, list[float]] = {a: [] for a in arms}
    cpu: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(rounds):
        for arm in arms[r % len(arms):] + arms[: r % len(arms)]:
            w, c = step(arm)
            wall[arm].append(w)
            cpu[arm].append(c)
    med = {a: statistics.median(v) for a, v in cpu.items()}
    return {"median_step_cpu_seconds": med, "ratio_to_instance": {a: med[a] / med["instance"] for a in arms},
            "step_cpu_seconds": cpu, "step_wall_seconds": wall,
            "median_step_wall_seconds": {a: statistics.median(v) for a, v in wall.items()},
            "rounds": rounds, "batch_size": len(batch["study_id"]),
            "load_average_1min": [load0, load_avg()], "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}


class Capture:
    """Components whose model builder keeps a handle on the model, for learning-curve scores."""

    def __init__(self) -> None:
        from medvl.train.engine import default_components

        base = default_components()
        self.model: Any = None

        def build_model(section: dict[str, Any]) -> Any:
            self.model = base.build_model(section)
            return self.model

        self.components = type(base)(build_model, base.build_loss, base.build_dataloader)


def score(model: Any, images: Any, cases: list[Any]) -> dict[str, Any]:
    from benchmarks.grounding.evaluate import LARGE, OTHER_PHRASE, score_maps, summarize

    recs = score_maps(model, images, cases, other_phrase=OTHER_PHRASE)
    return {m: {"large": summarize(r, LARGE), "all": summarize(r, tuple(sorted({x["finding"] for x in r})))}
            for m, r in recs.items()} | {"_records": recs}


def run_one(name: str, arm_terms: dict[str, Any], steps: int, seed: int, args: argparse.Namespace,
            cfg0: dict[str, Any], work: Path, images: Any, cases: list[Any]) -> dict[str, Any]:
    """Train (or resume) one run and score it; a finished run is read back from its result.json."""
    from medvl.models import MedVLModel
    from medvl.train import train

    run_dir = work / "runs" / f"{args.tag}{name.replace('+', '_').replace('@', '_at_')}" / f"seed{seed}"
    done = run_dir / "result.json"
    if done.is_file():
        print(f"[grounding] {name} seed {seed}: done earlier", flush=True)
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(cfg0) | {"seed": seed, "loss": {"terms": copy.deepcopy(arm_terms)}}
    cfg["train"] = cfg["train"] | {"max_steps": steps}
    curve_path = run_dir / "curve.json"
    curve: list[dict[str, Any]] = json.loads(curve_path.read_text()) if curve_path.is_file() else []
    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {"train_seconds": 0.0, "sessions": 0}
    timing.setdefault("train_cpu_seconds", 0.0)
    cap = Capture()
    eval_s = 0.0

    eval_cpu = 0.0

    def on_step(state: Any) -> None:
        nonlocal eval_s, eval_cpu
        if state.step in args.curve and state.step < steps and all(c["step"] != state.step for c in curve):
            t0, c0 = time.perf_counter(), time.process_time()
            res = score(cap.model, images, cases)
            cap.model.train()
            curve.append({"step": state.step, **{m: res[m]["large"] for m in ("local", "cam")}})
            curve_path.write_text(json.dumps(curve, indent=1))
            eval_s += time.perf_counter() - t0
            eval_cpu += time.process_time() - c0

    load0 = load_avg()
    print(f"[grounding] {name} seed {seed}: training {steps} steps (load {load0})", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(cfg, run_dir, resume=True, components=cap.components, on_step=on_step)
    timing["train_seconds"] += time.perf_counter() - t0 - eval_s
    timing["train_cpu_seconds"] += time.process_time() - c0 - eval_cpu
    timing["sessions"] += 1
    timing_path.write_text(json.dumps(timing))
    model = MedVLModel.from_pretrained(result.model_dir)
    t0 = time.perf_counter()
    res = score(model, images, cases)
    records = res.pop("_records")
    from benchmarks.ablation.run_ablation import last_train_row, step_seconds

    rec = {"arm": name, "seed": seed, "steps": result.steps, "load_1min_start": load0, "load_1min_end": load_avg(),
           "train_seconds": round(timing["train_seconds"], 1), "train_sessions": timing["sessions"],
           "train_cpu_seconds": round(timing["train_cpu_seconds"], 1),
           "seconds_per_step": step_seconds(run_dir, args.batch_size),
           "final_train_terms": {k: v for k, v in last_train_row(run_dir).items() if k.endswith("loss")},
           "scores": res, "curve": curve, "eval_seconds": round(time.perf_counter() - t0, 1)}
    if seed == args.seeds[0]:
        from benchmarks.grounding.evaluate import check_against_medvl_eval

        rec["medvl_eval_check"] = check_against_medvl_eval(model, cfg["data"]["manifest"], cfg["data"], records)
    (run_dir / "records.json").write_text(json.dumps(records))
    done.write_text(json.dumps(rec, indent=1, default=float))
    lg = res["local"]["large"]["pointing_game"]
    cg = res["cam"]["large"]["pointing_game"]
    print(f"[grounding]   {timing['train_seconds']:.0f} s; large findings pointing: local {lg:.3f}, cam {cg:.3f}",
          flush=True)
    return rec


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks.ablation.run_ablation import make_corpus, warm_cache
    from benchmarks.grounding.evaluate import (
        load_cases,
        prior_maps,
        score_priors,
        summarize,
    )
    from benchmarks.grounding.report import write_report

    work, results_dir = Path(args.work), Path(args.results_dir)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "grounding (issue 15 point 4)",
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": machine(), "load_average_1min_start": load_avg(),
        "command": " ".join(["python", "-m", "benchmarks.grounding.run_grounding", *(argv or sys.argv[1:])]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "results_dir")},
        "arms": {a: ARMS[a] for a in args.arms}, "runs": [],
    }
    manifest = make_corpus(work, args.n_cxr, args.corpus_seed, 256)
    cfg0 = base_config(args, manifest, work / "cache")
    report["model"] = cfg0["model"]
    sizes, warm_s = warm_cache(cfg0, manifest)
    report.update(split_sizes=sizes, cache_warmup_seconds=round(warm_s, 1), train=cfg0["train"],
                  epochs=round(args.steps / max(1, sizes["train"] // args.batch_size), 2))
    images, cases = load_cases(manifest, cfg0["data"], "test")
    priors = prior_maps(manifest, cfg0["data"], "train")
    refs = score_priors(cases, priors)
    report["references"] = {k: {"large": summarize(v), "all": summarize(v, tuple(sorted({r["finding"] for r in v})))}
                            for k, v in refs.items()}
    report["grid"] = [args.image_size // json.loads(args.image_options).get("output_stride", 32)] * 2
    print(f"[grounding] splits {sizes}; {len(cases)} test annotations on {len(images)} images; "
          f"chance (large) {report['references']['chance']['large']['pointing_game']:.3f}, "
          f"side prior (large) {report['references']['side_prior']['large']['pointing_game']:.3f}", flush=True)

    cost_path = work / f"{args.tag}step_cost.json"
    token_arms = [a for a in args.arms if a != "instance"]
    if args.wall and token_arms:
        if cost_path.is_file():
            cost = json.loads(cost_path.read_text())
        else:
            cost = step_cost(cfg0, ["instance", *token_arms], args.cost_rounds)
            cost_path.write_text(json.dumps(cost, indent=1))
        report["step_cost"] = cost
        # A cost file measured earlier may lack an arm added later (runs split over
        # processes); the wall arm's steps are those its own runs were trained with.
        measured = [a for a in token_arms if a in cost["ratio_to_instance"]]
        wall_steps = round(args.steps * max(cost["ratio_to_instance"][a] for a in measured))
        report["wall_steps"] = wall_steps
        report["wall_arms_measured"] = measured
        print(f"[grounding] step cost ratios {cost['ratio_to_instance']}: instance@wall gets {wall_steps} steps",
              flush=True)

    def save() -> None:
        from benchmarks.grounding.report import aggregate

        report["total_seconds_this_session"] = round(time.perf_counter() - t_start, 1)
        report["load_average_1min_end"] = load_avg()
        report["summary"] = aggregate(report["runs"])
        (results_dir / "results.json").write_text(json.dumps(report, indent=2, default=float))
        write_report(report, results_dir / "results.md")

    for si, seed in enumerate(args.seeds):
        order = args.arms[si % len(args.arms):] + args.arms[: si % len(args.arms)]
        plan = [] if args.wall_only else [(a, ARMS[a], args.steps) for a in order]
        if args.wall and token_arms:
            plan.append((WALL_ARM, ARMS["instance"], report["wall_steps"]))
        for name, terms, steps in plan:
            report["runs"].append(run_one(name, terms, steps, seed, args, cfg0, work, images, cases))
            save()
    save()
    print((results_dir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
