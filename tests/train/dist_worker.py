"""One rank of a torchrun job in the distributed tests.

``dist_worker.py OUT [STOP_AT_STEP] [--resume] [--frozen-prototypes]``; the last flag
trains with medvl's own loss (fixed-temperature instance term + MGCA prototypes frozen
in epoch 0) instead of the fake loss.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_fakes import components, tiny_config

from medvl.losses import build_loss
from medvl.train import train


def dist_config() -> dict:
    """Two ranks with batch 4 and accumulation 2: 16 studies (all negatives) per step."""
    cfg = tiny_config(epochs=2, accum_steps=2, checkpoint_every_steps=1)
    cfg["data"].update(n_train=32, batch_size=4)
    return cfg


def frozen_prototype_config() -> dict:
    """dist_config with the real loss: no rank ever has a gradient for the prototypes in
    epoch 0, nor for logit_scale (fixed temperature)."""
    cfg = dist_config()
    cfg["loss"] = {"terms": {"instance": {"temperature": 0.1},
                             "prototype": {"weight": 0.5, "num_prototypes": 6, "freeze_epochs": 1}}}
    cfg["train"].update(checkpoint_every_steps=None, weight_decay=0.5)
    return cfg


def real_loss_components():
    base = components()
    return type(base)(build_model=base.build_model, build_dataloader=base.build_dataloader,
                      build_loss=lambda cfg, model: build_loss(cfg, embed_dim=int(model.config.get("dim", 8))),
                      raw_sections=base.raw_sections)


if __name__ == "__main__":
    out = sys.argv[1]
    stop = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    resume = "--resume" in sys.argv

    def hook(state):
        if stop is not None and state.step == stop:
            raise SystemExit(3)

    if "--frozen-prototypes" in sys.argv:
        result = train(frozen_prototype_config(), out, components=real_loss_components())
    else:
        result = train(dist_config(), out, components=components(), resume=resume, on_step=hook)
    print(f"rank done steps={result.steps}")
