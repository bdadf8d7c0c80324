"""Process-group setup from torchrun's environment and the few collectives the engine needs.

The engine runs the same under ``python`` (one process, no process group) and
``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` set): gloo on
CPU, NCCL on GPUs. Every helper here is a no-op in a single process.

Why gradients are averaged by hand instead of wrapping the model in
``DistributedDataParallel``: DDP synchronises only gradients produced through its own
``forward``. A dual encoder is driven through ``encode_image`` / ``encode_text``, the
loss owns learnable parameters (``logit_scale`` lives on the model but is used only by
the loss; prototype terms have their own), and gradient caching (see
:mod:`medvl.train.gradcache`) back-propagates each micro-batch through a separate
re-forward. An all-reduce of every gradient after the last micro-batch
(:func:`medvl.losses.distributed.average_gradients`, the one implementation, shared
with code that drives the losses directly) is what DDP computes, without its hooks
having to see every path. It is one bucketed all-reduce
per optimizer step (DDP overlaps it with backward; on the model sizes trained here the
difference is small, see ``benchmarks/train``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank: global rank (0 in a single process).
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
        device: the device this process trains on.
        owns_group: True when :func:`init_distributed` created the process group
            (and :func:`cleanup` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """Turn ``train.device`` into a device; ``auto`` picks this rank's GPU when there is one."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if name == "cuda":
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistEnv:
    """Read torchrun's environment and join the process group when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)


def cleanup(env: DistEnv) -> None:
    """Destroy the process group if this module created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average named scalars over ranks (every rank must pass the same keys in the same order)."""
    if not _active() or not values:
        return dict(values)
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(values, t.tolist(), strict=True))


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is True on at least one rank (so every rank takes the same branch)."""
    if not _active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (small picklable objects between our own processes only)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_parameters(modules: Iterable[torch.nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank (as DDP does at construction)."""
    if not _active():
        return
    with torch.no_grad():
        for module in modules:
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)


