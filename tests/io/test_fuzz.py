"""About 200 seeded mutations of real files: every failure is a medvl error naming the file.

The files are those pydicom, pydicom-data, nibabel and matplotlib ship (DICOM in nine
transfer syntaxes, NIfTI-1/-2 plain and gzipped, PNG, JPEG); the mutations truncate,
flip bytes, set tags or header fields to absurd values, and make a length claim an
absurd size (:mod:`medvl.io.fuzzing`). A read that succeeds must give finite values. The
large run (6,000 mutations, worker processes) is ``benchmarks/fuzz/run_fuzz.py``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from medvl.io import fuzzing


def test_two_hundred_mutations_fail_cleanly(tmp_path: Path) -> None:
    files = fuzzing.shipped_files()
    assert len(files) >= 10, "the real files the fuzz test mutates are missing (pydicom-data, nibabel)"
    report = fuzzing.run(files, 200, seed=0, workdir=tmp_path)
    bad = [f"{o.source} {o.kind} seed={o.seed}: {o.result}: {o.detail}" for o in report.bad]
    assert not bad, "\n".join(bad)
    counts = report.counts()
    assert counts["read"] >= 20 and counts["medvl-error"] >= 50  # both outcomes are exercised
    kinds = Counter(o.kind for o in report.outcomes)
    assert set(kinds) == set(fuzzing.KINDS) and min(kinds.values()) >= 25
    assert {o.source for o in report.outcomes} == {f.name for f in files}


def test_mutations_are_reproducible(tmp_path: Path) -> None:
    files = fuzzing.shipped_files()
    a = [(s.name, k, seed) for s, k, seed in fuzzing.plan(files, 50, seed=3)]
    b = [(s.name, k, seed) for s, k, seed in fuzzing.plan(files, 50, seed=3)]
    assert a == b
    for source, kind, seed in fuzzing.plan(files, 12, seed=3):
        assert fuzzing.mutate(source, kind, seed) == fuzzing.mutate(source, kind, seed)
        if kind != "truncate" or source.stat().st_size > 1:
            assert fuzzing.mutate(source, kind, seed) != source.read_bytes() or kind == "tag"
