"""The engine's side of data loading: resumable epochs, micro-batches, skipped studies.

``medvl.data.build_dataloader`` owns reading, preprocessing and collating. The engine
keeps that loader's dataset, collate function and worker settings but draws the order
itself with :class:`~medvl.train.sampler.EpochBatchSampler`, because resuming at an exact
position and sharding identically across process counts both depend on the order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from medvl.atomic import write_text_atomic
from medvl.errors import ConfigError
from medvl.train import distributed as D
from medvl.train.gradcache import MicroBatch
from medvl.train.sampler import EpochBatchSampler


def _manifest(data: Any) -> str:
    """The manifest of a data section (a ``DataConfig`` or, for test fakes, a mapping)."""
    manifest = data.get("manifest") if isinstance(data, dict) else getattr(data, "manifest", None)
    if not manifest:
        raise ConfigError("no manifest to train on", field="data.manifest",
                          expected="the path of a manifest JSONL (e.g. data.manifest=corpus/manifest.jsonl)")
    return str(manifest)


class TrainData:
    """The train split with a seeded, resumable, rank-sharded order.

    Args:
        base: the loader built by the data room (its dataset, batch size, collate
            function and worker settings are reused).
        env: this process's place in the job.
        seed: run seed (with the epoch it fixes the order).
    """

    dataset: Any  # map-style (has __len__); torch types it as Dataset, which has none

    def __init__(self, base: DataLoader, env: D.DistEnv, seed: int) -> None:
        self.dataset = base.dataset
        self.env = env
        self.seed = seed
        batch_size = base.batch_size or getattr(base.batch_sampler, "batch_size", None)
        if not batch_size:
            raise ConfigError("the train loader has no batch size", field="data.batch_size", expected=">= 1")
        self.sampler = EpochBatchSampler(
            len(self.dataset), int(batch_size), rank=env.rank, world_size=env.world_size, seed=seed,
            shuffle=True, drop_last=bool(getattr(base, "drop_last", False)),
        )
        self.generator = torch.Generator()
        workers = int(base.num_workers)
        self.loader = DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=base.collate_fn, num_workers=workers,
            pin_memory=env.device.type == "cuda", generator=self.generator,
            worker_init_fn=base.worker_init_fn, multiprocessing_context=base.multiprocessing_context,
            prefetch_factor=base.prefetch_factor if workers > 0 else None,
            persistent_workers=False,
        )

    def position_from(self, state: Any) -> int:
        """Batch to resume at; converted when the checkpoint used another global batch size."""
        gbs = self.sampler.global_batch_size
        if not state.global_batch_size or state.global_batch_size == gbs:
            return int(state.batch_in_epoch)
        seen = state.batch_in_epoch * state.global_batch_size
        state.global_batch_size = gbs
        return seen // gbs  # rounds down: a few samples of the epoch are seen twice

    def epoch(self, epoch: int, start_batch: int, accum: int) -> Iterator[tuple[list[dict], list[list[int]], float, float]]:
        """Yield ``(batches, planned indices, seconds waited for data, start time)`` per optimizer step."""
        self.sampler.set_epoch(epoch, start_batch)
        if hasattr(self.dataset, "set_epoch"):  # per-epoch draws (sentence sampling, augmentation)
            self.dataset.set_epoch(epoch)
        plan = self.sampler.epoch_batches()
        # Worker seeds come from this generator: fixed per (seed, epoch, rank), never from
        # the global RNG, so creating an iterator mid-epoch on resume consumes nothing.
        self.generator.manual_seed((self.seed * 1_000_003 + epoch) * 1009 + self.env.rank)
        it = iter(self.loader)
        pos = start_batch
        while pos < len(plan):
            take = min(accum, len(plan) - pos)
            t0 = time.perf_counter()
            group = [next(it) for _ in range(take)]
            yield group, plan[pos:pos + take], time.perf_counter() - t0, t0
            pos += take


def build_train_loader(parts: Any, data: Any, env: D.DistEnv, seed: int) -> TrainData:
    """The train split of the ``data`` section as :class:`TrainData`; a clear error when it is empty."""
    manifest = _manifest(data)
    base = parts.build_dataloader(data, manifest, "train", shuffle=True,
                                  distributed=False, seed=seed)
    if len(base.dataset) == 0:
        raise ConfigError("the train split has no studies", path=manifest, field="split",
                          expected="rows with split 'train'")
    return TrainData(base, env, seed)


def build_val_loader(parts: Any, data: Any, env: D.DistEnv) -> DataLoader | None:
    """This rank's share of the val split in dataset order (no study twice); None when the split is empty."""
    base = parts.build_dataloader(data, _manifest(data), "val", shuffle=False)
    if len(base.dataset) == 0:
        return None
    if not env.distributed:
        return base
    sampler = EpochBatchSampler(len(base.dataset), int(base.batch_size or 1), rank=env.rank,
                                world_size=env.world_size, shuffle=False, drop_last=False)
    workers = int(base.num_workers)
    return _RecordingLoader(base.dataset, batch_sampler=sampler, collate_fn=base.collate_fn, num_workers=workers,
                            pin_memory=env.device.type == "cuda", worker_init_fn=base.worker_init_fn,
                            multiprocessing_context=base.multiprocessing_context,
                            prefetch_factor=base.prefetch_factor if workers > 0 else None)


class _RecordingLoader(DataLoader):
    """A loader that keeps the skipped-study records batches carry (``batch["skipped"]``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skipped: list[dict[str, Any]] = []

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for batch in super().__iter__():
            self.skipped.extend(dict(r) for r in batch.get("skipped") or [])
            yield batch


class MicroBatchMaker:
    """Turns a collated batch into a :class:`MicroBatch` on the device (None when empty)."""

    def __init__(self, model: Any, device: torch.device) -> None:
        self.model = model
        self.device = device

    def __call__(self, batch: dict[str, Any]) -> MicroBatch | None:
        texts = list(batch["text"])
        if not texts:
            return None
        tokens = {k: v.to(self.device, non_blocking=True) for k, v in self.model.tokenize(texts).items()}
        labels = batch.get("labels")
        return MicroBatch(
            image=batch["image"].to(self.device, non_blocking=True),
            tokens=tokens,
            labels=labels.to(self.device, non_blocking=True) if isinstance(labels, torch.Tensor) else None,
            study_id=[str(s) for s in batch.get("study_id", [])],
            index=batch.get("index"),
        )


class SkipTracker:
    """Collects studies the data room skipped: its own record plus indices missing from batches.

    Worker processes append to their own copy of ``dataset.skipped``, which the main
    process never sees; comparing each batch's ``index`` with the indices asked for
    catches those too.
    """

    def __init__(self, data: TrainData, val: DataLoader | None = None) -> None:
        self.dataset = data.dataset
        self.val = val
        self.missing: dict[int, dict[str, Any]] = {}
        self.carried: list[dict[str, Any]] = []

    def check(self, batches: list[dict[str, Any]], plan: list[list[int]]) -> None:
        for batch, wanted in zip(batches, plan, strict=True):
            # medvl.data's collate carries the records of the studies it dropped.
            self.carried.extend(dict(r) for r in batch.get("skipped") or [])
            index = batch.get("index")
            if index is None:
                continue
            got = set(torch.as_tensor(index).tolist())
            for i in wanted:
                if i not in got and i not in self.missing:
                    self.missing[i] = self._describe(i)

    def _describe(self, i: int) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": i, "error": "not delivered by the data loader"}
        rows = getattr(self.dataset, "rows", None)
        try:
            if rows is not None:
                entry["study_id"] = str(rows[i].study_id)
        except (IndexError, AttributeError, TypeError):
            pass
        return entry

    def collect(self) -> list[dict[str, Any]]:
        own = [dict(s) for s in getattr(self.dataset, "skipped", []) or []] + self.carried
        if self.val is not None:  # studies of the val split that could not be read
            own += [dict(s) for s in getattr(self.val.dataset, "skipped", []) or []]
            own += [dict(s) for s in getattr(self.val, "skipped", [])]
        known = {s.get("study_id") for s in own}
        # A missing index whose study id cannot be resolved is only reported when the
        # dataset kept no record of its own (loading in worker processes); otherwise it
        # is one of the recorded studies and would be listed twice.
        extra = [m for m in self.missing.values()
                 if (m.get("study_id") is None and not own)
                 or (m.get("study_id") is not None and m["study_id"] not in known)]
        return own + extra

    def write(self, out: Path, env: D.DistEnv) -> list[dict[str, Any]]:
        """Merge every rank's list, write ``skipped.jsonl`` on rank 0, return the merged list."""
        merged: list[dict[str, Any]] = []
        seen: set[str] = set()
        for per_rank in D.all_gather_objects(self.collect()):
            for s in per_rank:
                # A study that fails every epoch is listed once.
                key = str(s.get("study_id") or f"index:{s.get('index')}")
                if key not in seen:
                    seen.add(key)
                    merged.append(s)
        if env.is_main:
            write_text_atomic(out / "skipped.jsonl", "".join(json.dumps(s, default=str) + "\n" for s in merged))
        return merged
