"""What a training run records about itself, outside the loop.

* :class:`LocalHeadMonitor`: ``config.json``'s ``"training"`` entry;
* :func:`model_card`: the fields of the model directory's ``README.md``;
* :func:`model_preprocessing`: the model directory's ``preprocessing.json``;
* :func:`fit_inference`: calibration and the OOD profile of the saved model;
* :func:`stop_nonfinite`: ``nonfinite.json`` and the error that ends the run.

Heatmaps need to know whether the local (patch / word) projection heads were ever
trained: an instance-only loss leaves them at their random initialisation, and a
heatmap read from them would be noise dressed up as an answer. The engine does not
guess from loss names: it watches the heads' gradients.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from medvl.atomic import write_text_atomic
from medvl.data.config import DataConfig
from medvl.errors import ConfigError, TrainingError
from medvl.experiment import Experiment
from medvl.train import distributed as D
from medvl.train.config import TrainConfig
from medvl.train.state import TrainState

#: the dual encoder's local projection heads (``MedVLModel``)
LOCAL_HEADS = ("image_local_head", "text_local_head")


class LocalHeadMonitor:
    """Records whether each local head received a non-zero gradient in some step.

    Call :meth:`observe` after the backward pass (and the cross-rank average), before
    the optimizer step clears the gradients. Once every head is seen trained it stops
    looking, so it costs one pass over the heads' parameters per step at most.

    Args:
        model: the model being trained; models without these heads record ``None``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.heads: dict[str, list[torch.nn.Parameter]] = {}
        for name in LOCAL_HEADS:
            head = getattr(model, name, None)
            if isinstance(head, torch.nn.Module):
                self.heads[name] = [p for p in head.parameters() if p.requires_grad]
        self.trained = dict.fromkeys(self.heads, False)

    def observe(self) -> None:
        """Look at the current gradients of the heads not yet seen trained."""
        for name, params in self.heads.items():
            if not self.trained[name]:
                self.trained[name] = any(p.grad is not None and bool(torch.any(p.grad != 0)) for p in params)

    @property
    def all_trained(self) -> bool | None:
        """True when every local head was trained; None for a model without them."""
        if not self.heads:
            return None
        return all(self.trained.values())

    def record(self, loss_section: Any) -> dict[str, Any]:
        """The ``"training"`` entry of ``config.json``."""
        from medvl.config import to_dict

        return {
            "loss": to_dict(loss_section) if loss_section is not None else None,
            "local_heads_trained": self.all_trained,
            "local_heads": dict(self.trained),
        }


def say(env: D.DistEnv, msg: str) -> None:
    """A line on stderr from rank 0, above the progress bar."""
    if env.is_main:
        from tqdm import tqdm

        tqdm.write(f"[medvl train] {msg}", file=sys.stderr)


def fit_inference(out: Path, data: DataConfig, seed: int, env: D.DistEnv, progress: bool) -> None:
    """Calibration and the OOD profile of the saved model (rank 0; the others wait).

    A failure here is reported, not raised: the trained model is already saved, and
    without these files it is still usable (scores marked uncalibrated, no OOD profile).
    """
    if env.is_main:
        from medvl.errors import MedvlError
        from medvl.inference.fit import fit_model_dir

        t0 = time.perf_counter()
        try:
            summary = fit_model_dir(out / "model", data, str(data.manifest), seed=seed, progress=progress)
        except (MedvlError, OSError, ValueError) as exc:
            say(env, f"calibration / OOD profile not written ({type(exc).__name__}: {exc}); the model's scores "
                      "stay marked uncalibrated")
        else:
            say(env, f"calibrated {len(summary['calibrated'])} finding(s) on {summary['n_validation']} val studies; "
                      f"OOD reference of {summary['n_reference']} train studies "
                      f"({time.perf_counter() - t0:.1f} s)")
    D.barrier()


def model_preprocessing(data_section: Any, env: D.DistEnv) -> Any:
    """The ``preprocessing.json`` of the model directory, from the ``data`` section.

    None (with a warning) when the section is not a medvl ``data`` section, as with the
    engine's test fakes: the model directory then cannot be loaded by ``medvl.load``.
    """
    from medvl.inference.preprocessing import Preprocessing

    try:
        return Preprocessing.from_data_config(data_section)
    except ConfigError as exc:
        say(env, f"the data section is not a medvl data section ({exc}); the model directory gets no "
                  "preprocessing.json")
        return None


def model_card(exp: Experiment, cfg: TrainConfig, state: TrainState, metrics: dict[str, float] | None,
                n_train: int, effective_batch: int, device: torch.device) -> dict[str, str]:
    """Model-card fields (``medvl.models`` fills its template with them)."""
    data = exp.data
    manifest = data.get("manifest") if isinstance(data, dict) else getattr(data, "manifest", None)
    card = {
        "training_data": f"{manifest}: train split, {n_train} studies",
        "training": (f"{state.step} optimizer steps (epoch {state.epoch}), effective batch {effective_batch} "
                     f"(all negatives), AdamW lr {cfg.lr:g} with warmup and cosine, weight decay "
                     f"{cfg.weight_decay:g}, precision {cfg.precision if device.type == 'cuda' else 'fp32'}, "
                     f"seed {exp.seed}"),
    }
    if metrics:
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in ("i2t_R@1", "i2t_R@5", "t2i_R@1", "t2i_R@5") if k in metrics)
        card["metrics"] = (f"validation split ({int(metrics.get('n', 0))} studies), image<->report retrieval: "
                           f"{shown} (epoch {state.epoch}, step {state.step}; selected on {cfg.monitor})")
    return card


def stop_nonfinite(out: Path, env: D.DistEnv, state: TrainState, terms: dict[str, float], micro,
                    what: str, save: Callable[[Path], None], last_dir: Path) -> None:
    """Save the last good state, record the step's studies and raise :class:`TrainingError`."""
    studies = [s for per_rank in D.all_gather_objects([sid for m in micro for sid in m.study_id])
               for s in per_rank]
    save(last_dir)
    report = {"step": state.step + 1, "epoch": state.epoch, "what": what, "terms": terms, "study_ids": studies}
    if env.is_main:
        write_text_atomic(out / "nonfinite.json", json.dumps(report, indent=2))
    shown = ", ".join(studies[:8]) + (f" and {len(studies) - 8} more" if len(studies) > 8 else "")
    bad = ", ".join(f"{k}={v}" for k, v in terms.items() if not math.isfinite(v))
    raise TrainingError(
        f"non-finite {what} at step {state.step + 1} (epoch {state.epoch}): {bad}; studies in the batch: "
        f"{shown}. The last good state is in {last_dir} (resume with --resume after fixing the cause)",
        path=out / "nonfinite.json", field=what, expected="finite values (lower train.lr, check these studies)",
    )
