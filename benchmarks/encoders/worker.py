"""One measurement in a fresh process: ``python -m benchmarks.encoders.worker TASK JSON``.

Prints one JSON line: seconds and peak MiB per sample for a forward pass
(``no_grad``, eval mode) and for a training step (forward + backward, train mode).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import torch

from benchmarks.encoders.common import timed


def _encoder(image_cfg: dict[str, Any]) -> torch.nn.Module:
    from medvl.config import from_dict
    from medvl.models.config import ImageConfig
    from medvl.models.factory import build_image_encoder

    return build_image_encoder(from_dict(ImageConfig, image_cfg, where="model.image"))


def _step_loss(feats: Any) -> torch.Tensor:
    # touch both outputs so backward runs through the whole encoder
    return feats.pooled.square().mean() + feats.tokens.mean()


def image(image_cfg: dict[str, Any], shape: list[int], repeats: int = 1, grad: bool = True) -> dict[str, Any]:
    """Forward and forward+backward of one image encoder on ``shape`` (batch first)."""
    torch.manual_seed(0)
    enc = _encoder(image_cfg)
    x = torch.randn(*shape)
    batch = shape[0]
    enc.eval()
    # warm-up (first-call allocations, kernel selection); for slice pooling a few
    # slices suffice, a full 300-slice CT pass would double the run for nothing
    warm = x[:, :, : min(x.shape[2], 8)] if hasattr(enc, "encoder2d") else x
    with torch.no_grad():
        enc(warm)
    fwd_s, fwd_cpu, fwd_mib = [], [], []
    grid: tuple[int, ...] = ()
    for _ in range(repeats):
        def forward() -> None:
            nonlocal grid
            grid = enc(x).grid

        with torch.no_grad():
            s, c, m = timed(forward)
        fwd_s.append(s)
        fwd_cpu.append(c)
        fwd_mib.append(m)
    out: dict[str, Any] = {
        "params_m": sum(p.numel() for p in enc.parameters()) / 1e6,
        "forward_wall_s_per_sample": min(fwd_s) / batch,
        "forward_s_per_sample": min(fwd_cpu) / batch,
        "forward_peak_mib_per_sample": max(fwd_mib) / batch,
    }
    if grad:
        enc.train()
        train_s, train_cpu, train_mib = [], [], []
        for _ in range(repeats):
            enc.zero_grad(set_to_none=True)
            s, c, m = timed(lambda: _step_loss(enc(x)).backward())
            train_s.append(s)
            train_cpu.append(c)
            train_mib.append(m)
        out["train_step_wall_s_per_sample"] = min(train_s) / batch
        out["train_step_s_per_sample"] = min(train_cpu) / batch
        out["train_step_peak_mib_per_sample"] = max(train_mib) / batch
    out["grid"] = list(grid)
    import resource

    # whole-process peak (model, input and the worst step), Linux reports KiB
    out["process_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


if __name__ == "__main__":
    task, args = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    result = {"image": image}[task](**args)
    print(json.dumps(result))
