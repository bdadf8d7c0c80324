"""The resumable, rank-sharded batch order."""

from __future__ import annotations

import pytest

from medvl.train.sampler import EpochBatchSampler


def test_each_study_once_per_epoch_across_ranks_and_new_order_each_epoch() -> None:
    n, b, w = 23, 3, 2
    per_rank = [EpochBatchSampler(n, b, rank=r, world_size=w, seed=1) for r in range(w)]
    seen = [i for s in per_rank for batch in s for i in batch]
    assert sorted(seen) == list(range(n))
    assert len({len(s) for s in per_rank}) == 1  # same number of steps on every rank
    first = list(per_rank[0])
    per_rank[0].set_epoch(1)
    assert list(per_rank[0]) != first


def test_two_ranks_see_what_one_rank_sees_with_double_batch() -> None:
    one = EpochBatchSampler(40, 8, seed=5)
    two = [EpochBatchSampler(40, 4, rank=r, world_size=2, seed=5) for r in range(2)]
    for big, a, b in zip(one, *two, strict=True):
        assert big == a + b


def test_start_batch_skips_exactly_and_reads_nothing_else() -> None:
    s = EpochBatchSampler(30, 4, seed=2)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start_batch=5)
    assert list(s) == full[5:]
    assert len(s) == len(full) - 5


@pytest.mark.parametrize(("n", "drop_last", "expected"), [(10, False, 3), (10, True, 2), (3, True, 1)])
def test_drop_last_keeps_at_least_one_batch(n: int, drop_last: bool, expected: int) -> None:
    s = EpochBatchSampler(n, 4, drop_last=drop_last)
    assert s.num_batches() == expected == len(list(s))


def test_unshuffled_order_is_dataset_order() -> None:
    s = EpochBatchSampler(5, 2, shuffle=False)
    assert list(s) == [[0, 1], [2, 3], [4]]
