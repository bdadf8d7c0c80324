"""Data loaders: deterministic, resumable, optionally distributed batch order.

The order of an epoch is a pure function of ``(seed, epoch)`` (and of the rank and
world size under DDP): :class:`ResumableSampler` is a
:class:`torch.utils.data.DistributedSampler` (one replica when not distributed) that
can also drop the first N batches of an epoch. To resume mid-epoch the engine calls::

    loader.set_epoch(epoch, skip_batches=batches_already_done)
    for batch in loader: ...        # continues with batch number `batches_already_done`

and then ``loader.set_epoch(epoch + 1)`` for the next epoch (a skip applies only to the
epoch it was given with). Skipping happens in the sampler, before any image is read,
so it costs nothing; the remaining batches are exactly those an uninterrupted epoch
would have produced (a skipped study only ever shrinks its own batch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from medvl.data.collate import StudyCollate
from medvl.data.config import DataConfig
from medvl.data.dataset import StudyDataset, as_data_config, build_dataset
from medvl.errors import TrainingError


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` whose epoch can start after the first N batches.

    Args:
        dataset: the dataset (only its length is used).
        batch_size: batch size of the loader, to turn batches into samples.
        num_replicas: world size (1 when not distributed).
        rank: this process's rank.
        shuffle: permute with ``torch.Generator`` seeded ``seed + epoch``.
        seed: base seed, identical on every rank.
        drop_last: drop the tail so that every rank gets the same count (else pad by
            repeating the first indices, as ``DistributedSampler`` does).
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=drop_last)
        self.batch_size = int(batch_size)
        self.skip_batches = 0
        self._skip_epoch = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch (its order) and how many of its first batches to leave out."""
        super().set_epoch(epoch)
        if skip_batches < 0:
            raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
        self.skip_batches = int(skip_batches)
        self._skip_epoch = int(epoch)

    def _skip_samples(self) -> int:
        if self.epoch != self._skip_epoch:
            return 0
        return min(self.num_samples, self.skip_batches * self.batch_size)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self._skip_samples():])

    def __len__(self) -> int:
        return self.num_samples - self._skip_samples()


def _worker_init(worker_id: int) -> None:
    # Each worker decodes one study at a time; intra-op threads would only oversubscribe.
    torch.set_num_threads(1)


class StudyLoader(DataLoader):
    """A ``DataLoader`` over a :class:`StudyDataset` with ``set_epoch`` and skip tracking.

    Records of skipped studies travel inside each batch (``batch["skipped"]``), so they
    reach ``dataset.skipped`` of the main process even when workers loaded them.
    """

    dataset: StudyDataset
    sampler: ResumableSampler

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Set the epoch of the order and of the random draws; optionally resume mid-epoch."""
        self.sampler.set_epoch(epoch, skip_batches)
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        for batch in super().__iter__():
            for record in batch["skipped"]:
                self.dataset.record_skip(record)
            yield batch


def build_dataloader(
    data_cfg: DataConfig | dict[str, Any] | None,
    manifest_path: str | Path | None,
    split: str,
    *,
    shuffle: bool,
    distributed: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    **dataset_kwargs: Any,
) -> StudyLoader:
    """Build the loader of one split (see :mod:`medvl.data.collate` for the batch).

    Args:
        data_cfg: a :class:`DataConfig` or the ``data`` section.
        manifest_path: the manifest; ``None`` uses ``data.manifest``.
        split: ``train``, ``val`` or ``test``.
        shuffle: shuffle with seed ``seed + epoch`` (training); ``False`` keeps manifest order.
        distributed: shard with the world size and rank of the initialised
            ``torch.distributed`` process group. Each rank gets ``ceil(N / world)``
            studies (the last ones repeat to even out unless ``data.drop_last``).
        seed: seed of the order, augmentation and sentence sampling.
        batch_size: overrides ``data.batch_size``.
        **dataset_kwargs: passed to :class:`StudyDataset` (``reader``, ``augment``).

    Raises:
        TrainingError: ``distributed=True`` but no process group is initialised.
    """
    cfg = as_data_config(data_cfg)
    dataset = build_dataset(cfg, manifest_path, split, seed=seed, **dataset_kwargs)
    bs = int(batch_size or cfg.batch_size)
    if distributed:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise TrainingError(
                "distributed=True but torch.distributed is not initialised",
                expected="init_process_group() first (torchrun), or distributed=False",
            )
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = 1, 0
    sampler = ResumableSampler(
        dataset, batch_size=bs, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
        drop_last=cfg.drop_last and shuffle,
    )
    return StudyLoader(
        dataset,
        batch_size=bs,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=StudyCollate(dataset.image_shape, len(dataset.finding_names)),
        drop_last=cfg.drop_last and shuffle,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_worker_init if cfg.num_workers > 0 else None,
    )
