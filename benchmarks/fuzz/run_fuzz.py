"""The large fuzz run: thousands of seeded mutations of real files through ``read_image``.

Each chunk of mutations runs in its own child process, so a crash in a C or Rust
decoder (a segfault, an abort) or a hang is seen and pinned to one mutation instead of
killing the run: a chunk that dies or times out is rerun one mutation per process. A
mutation's outcome is ``read`` (finite values), ``medvl-error`` (an error naming the
file), or a contract break: ``raw-exception``, ``unnamed-error``, ``non-finite``,
``crash``, ``timeout``. The suite runs 200 of the same mutations
(``tests/io/test_fuzz.py``).

Usage (bounded: about 3 minutes on one core of a 2-core machine)::

    nice -n 15 env OMP_NUM_THREADS=1 python benchmarks/fuzz/run_fuzz.py --n 6000 --seed 1

writes ``benchmarks/fuzz/results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from medvl.io import fuzzing

CONTRACT_KEPT = ("read", "medvl-error")


def _child(args: argparse.Namespace) -> int:
    """Run mutations ``start .. start+count`` of the plan; one JSON line per outcome."""
    files = fuzzing.shipped_files()
    todo = fuzzing.plan(files, args.n, args.seed)[args.start: args.start + args.count]
    with tempfile.TemporaryDirectory(prefix="medvl-fuzz-") as work:
        for source, kind, seed in todo:
            o = fuzzing.check_one(source, kind, seed, Path(work))
            print(json.dumps(asdict(o)), flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"peak_rss_kib": peak}), flush=True)
    return 0


def _run_chunk(args: argparse.Namespace, start: int, count: int, timeout: float) -> tuple[list[dict], int, str]:
    cmd = [sys.executable, "-W", "ignore", str(Path(__file__)), "--child", "--n", str(args.n),
           "--seed", str(args.seed), "--start", str(start), "--count", str(count)]
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        out, code = proc.stdout, proc.returncode
        status = "ok" if code == 0 else f"exit {code}"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        code, status = -1, "timeout"
    rows, peak = [], 0
    for line in out.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if "peak_rss_kib" in doc:
                peak = int(doc["peak_rss_kib"])
            else:
                rows.append(doc)
    return rows, peak, status


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=6000, help="mutations (default 6000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chunk", type=int, default=250, help="mutations per child process")
    p.add_argument("--chunk-timeout", type=float, default=900.0, help="seconds before a chunk counts as hung")
    p.add_argument("--out", default=str(HERE), help="folder for results.json / results.md")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args)

    files = fuzzing.shipped_files()
    t0, load0 = time.time(), os.getloadavg()
    outcomes: list[dict] = []
    peaks: list[int] = []
    reruns = 0
    for start in range(0, args.n, args.chunk):
        count = min(args.chunk, args.n - start)
        rows, peak, status = _run_chunk(args, start, count, args.chunk_timeout)
        if status != "ok" or len(rows) != count:
            # pin the crash or hang on one mutation: rerun what is left one per process
            reruns += 1
            for i in range(start + len(rows), start + count):
                one, peak_one, st = _run_chunk(args, i, 1, 120.0)
                if one:
                    rows += one
                else:
                    src, kind, seed = fuzzing.plan(files, args.n, args.seed)[i]
                    rows.append({"source": src.name, "kind": kind, "seed": seed,
                                 "result": "timeout" if st == "timeout" else "crash", "seconds": None,
                                 "detail": st})
                peaks.append(peak_one)
        outcomes += rows
        peaks.append(peak)
        done = len(outcomes)
        print(f"[fuzz] {done}/{args.n} in {time.time() - t0:.0f} s; "
              f"{sum(o['result'] not in CONTRACT_KEPT for o in outcomes)} contract breaks", flush=True)

    seconds = time.time() - t0
    results = Counter(o["result"] for o in outcomes)
    by_kind = {k: dict(Counter(o["result"] for o in outcomes if o["kind"] == k)) for k in fuzzing.KINDS}
    by_source = {f.name: dict(Counter(o["result"] for o in outcomes if o["source"] == f.name)) for f in files}
    timed = [o for o in outcomes if o.get("seconds") is not None]
    slowest = sorted(timed, key=lambda o: -o["seconds"])[:10]
    bad = [o for o in outcomes if o["result"] not in CONTRACT_KEPT]
    doc = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "n": args.n, "seed": args.seed, "files": [f.name for f in files],
        "seconds": round(seconds, 1), "results": dict(results), "by_kind": by_kind, "by_source": by_source,
        "contract_breaks": bad, "chunks_rerun_one_by_one": reruns,
        "slowest": slowest, "max_child_peak_rss_mib": round(max(peaks, default=0) / 1024, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load0],
                    "load_after": [round(x, 2) for x in os.getloadavg()],
                    "nice": os.nice(0), "omp_threads": os.environ.get("OMP_NUM_THREADS")},
    }
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Fuzz run: seeded mutations of real files through `medvl.io.read_image`", "",
        f"`{doc['command']}`: {args.n} mutations (seed {args.seed}) of {len(files)} files "
        f"in {seconds:.0f} s; machine {doc['machine']['platform']}, {doc['machine']['cpus']} CPUs, "
        f"load {doc['machine']['load_before']} before and {doc['machine']['load_after']} after "
        f"(shared machine; times are indicative).", "",
        "| outcome | count |", "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(results.items())], "",
        "| mutation | " + " | ".join(sorted(results)) + " |", "|---|" + "---|" * len(results),
        *[f"| {k} | " + " | ".join(str(by_kind[k].get(r, 0)) for r in sorted(results)) + " |" for k in fuzzing.KINDS],
        "",
        f"Contract breaks (raw exception, error not naming the file, non-finite values, crash, hang): "
        f"**{len(bad)}**.",
        f"Largest peak memory of a child process ({args.chunk} mutations): {doc['max_child_peak_rss_mib']} MiB; "
        f"slowest single read: {slowest[0]['seconds'] if slowest else '-'} s ({slowest[0]['source'] if slowest else ''}).",
    ]
    if bad:
        lines += ["", "| file | mutation | seed | outcome | detail |", "|---|---|---|---|---|"]
        lines += [f"| {o['source']} | {o['kind']} | {o['seed']} | {o['result']} | {str(o['detail'])[:120]} |"
                  for o in bad[:50]]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"[fuzz] {dict(results)}; {len(bad)} contract breaks; {seconds:.0f} s -> {out / 'results.md'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
