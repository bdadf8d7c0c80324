"""One rank of a torchrun job in the distributed test: ``dist_worker.py OUT [STOP_AT_STEP] [--resume]``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_fakes import components, tiny_config

from medvl.train import train


def dist_config() -> dict:
    """Two ranks with batch 4 and accumulation 2: 16 studies (all negatives) per step."""
    cfg = tiny_config(epochs=2, accum_steps=2, checkpoint_every_steps=1)
    cfg["data"].update(n_train=32, batch_size=4)
    return cfg


if __name__ == "__main__":
    out = sys.argv[1]
    stop = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    resume = "--resume" in sys.argv

    def hook(state):
        if stop is not None and state.step == stop:
            raise SystemExit(3)

    result = train(dist_config(), out, components=components(), resume=resume, on_step=hook)
    print(f"rank done steps={result.steps}")
