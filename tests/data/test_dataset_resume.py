"""Batch order: deterministic per (seed, epoch), resumable mid-epoch, sharded under DDP."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # the suite runs with --import-mode=importlib
from test_dataset_helpers import reader_under_test, row, write_png

from medvl.data import ResumableSampler, build_dataloader
from medvl.data.manifest import write_manifest
from medvl.errors import TrainingError


def _orders(loader) -> list[list[int]]:
    return [b["index"].tolist() for b in loader]


@pytest.fixture
def manifest(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(10):
        write_png(tmp_path / f"{i}.png", rng.integers(0, 255, (12, 12)))
    rows = [row(f"s{i}", f"{i}.png", report={"findings": "A b. C d. E f. G h."}) for i in range(10)]
    write_manifest(tmp_path / "m.jsonl", rows)
    return tmp_path / "m.jsonl"


def _loader(manifest, **kw):
    cfg = {"dims": 2, "image_size": 8, "batch_size": 3, **kw.pop("cfg", {})}
    return build_dataloader(cfg, manifest, "train", reader=reader_under_test(), **kw)


def test_order_depends_only_on_seed_and_epoch(manifest) -> None:
    a, b = _loader(manifest, shuffle=True, seed=7), _loader(manifest, shuffle=True, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    assert _orders(a) == _orders(b)
    flat = [i for batch in _orders(a) for i in batch]
    assert sorted(flat) == list(range(10)) and flat != list(range(10))
    a.set_epoch(3)
    assert _orders(a) != _orders(b)
    assert [i for b in _orders(_loader(manifest, shuffle=False)) for i in b] == list(range(10))


def test_resume_skips_exactly_the_first_batches(manifest) -> None:
    loader = _loader(manifest, shuffle=True, seed=1,
                     cfg={"augment": True, "text_mode": "sample_sentences", "max_words": 4})
    loader.set_epoch(4)
    full = list(loader)
    loader.set_epoch(4, skip_batches=2)
    assert len(loader) == len(full) - 2
    resumed = list(loader)
    assert [b["index"].tolist() for b in resumed] == [b["index"].tolist() for b in full[2:]]
    # augmentation and sentence draws are the same as in the uninterrupted epoch
    for x, y in zip(resumed, full[2:], strict=True):
        torch.testing.assert_close(x["image"], y["image"])
        assert x["text"] == y["text"]
    # the skip belongs to epoch 4 only
    loader.set_epoch(5)
    assert len(list(loader)) == len(full)


def test_augmentation_differs_between_epochs_not_between_worker_counts(manifest) -> None:
    cfg = {"augment": True}
    l0 = _loader(manifest, shuffle=False, cfg=cfg)
    l1 = _loader(manifest, shuffle=False, cfg={**cfg, "num_workers": 1})
    first = next(iter(l0))["image"]
    torch.testing.assert_close(next(iter(l1))["image"], first)
    l0.set_epoch(1)
    assert not torch.equal(next(iter(l0))["image"], first)


def test_distributed_shards_are_disjoint_and_cover_the_split() -> None:
    data = list(range(11))
    shards = []
    for rank in range(2):
        s = ResumableSampler(data, batch_size=2, num_replicas=2, rank=rank, shuffle=True, seed=3)
        s.set_epoch(1)
        shards.append(list(s))
    assert len(shards[0]) == len(shards[1]) == 6  # padded to an even split
    assert set(shards[0]) | set(shards[1]) == set(data)
    assert len(set(shards[0]) & set(shards[1])) <= 1  # only the padding repeats
    s = ResumableSampler(data, batch_size=2, num_replicas=2, rank=1, shuffle=True, seed=3)
    s.set_epoch(1, skip_batches=1)
    assert list(s) == shards[1][2:]


def test_distributed_without_process_group_is_a_clear_error(manifest) -> None:
    with pytest.raises(TrainingError, match="distributed"):
        _loader(manifest, shuffle=True, distributed=True)


def _rank_main(rank: int, manifest: str, store: str, out: str) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        loader = build_dataloader({"dims": 2, "image_size": 8, "batch_size": 2}, manifest, "train",
                                  shuffle=True, distributed=True, seed=5, reader=reader_under_test())
        loader.set_epoch(1)
        got = [i for b in loader for i in b["index"].tolist()]
        Path(out).write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def test_distributed_loaders_under_a_real_process_group(manifest, tmp_path) -> None:
    import json
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    outs = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [ctx.Process(target=_rank_main, args=(r, str(manifest), str(tmp_path / "store"), str(outs[r])))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    shards = [json.loads(o.read_text()) for o in outs]
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(shards[0] + shards[1]) == list(range(10))
    # the same shards as the sampler computes for each rank without a process group
    for r in range(2):
        s = ResumableSampler(list(range(10)), batch_size=2, num_replicas=2, rank=r, shuffle=True, seed=5)
        s.set_epoch(1)
        assert shards[r] == list(s)


def test_dataset_and_collate_pickle_for_spawned_workers(manifest) -> None:
    import pickle

    cfg = {"augment": True, "num_workers": 1}
    loader = _loader(manifest, shuffle=False, cfg=cfg)
    pickle.dumps(loader.dataset)  # spawn/forkserver contexts pickle the dataset
    pickle.dumps(loader.collate_fn)
