"""What a model directory records about how it was trained (``config.json``'s ``"training"``).

Heatmaps need to know whether the local (patch / word) projection heads were ever
trained: an instance-only loss leaves them at their random initialisation, and a
heatmap read from them would be noise dressed up as an answer. The engine does not
guess from loss names: it watches the heads' gradients.
"""

from __future__ import annotations

from typing import Any

import torch

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
