"""Figure 7 during training (`analysis.every`): the response std and the weight-gradient norm of
every 3x3 layer, measured right after a step, for train.py to log. Nothing here trains or writes.

    TrainingProbe(model, images)() -> (scalars, histograms)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from resbench.analysis.responses import layer_responses, response_layers


class TrainingProbe:
    """Response stds and gradient norms of the 3x3 layers during training (`analysis.every`).

    It runs the model in eval mode without gradients and reads `.grad`, so it changes neither the
    RNG nor BN statistics, and a resumed run stays bit-identical. Call it right after a step.
    """

    def __init__(self, model: nn.Module, images: Tensor) -> None:
        self.model, self.images = model, images
        self.convs = [conv for _, conv, _ in response_layers(model)]

    def __call__(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        stds = torch.tensor([r.std for r in layer_responses(self.model, self.images)])
        self.model.train()
        grads = grad_norms(self.convs).float().cpu()
        positions = {"first": 0, "middle": len(stds) // 2, "last": len(stds) - 1}
        scalars = {f"responses/{k}": float(stds[i]) for k, i in positions.items()}
        scalars |= {f"grad_norm/{k}": float(grads[i]) for k, i in positions.items()}
        return scalars, {"responses": stds, "grad_norm": grads}


def grad_norms(convs: list[nn.Conv2d]) -> Tensor:
    """The weight-gradient norm of each conv, 0 where it has no gradient (yet), on the weights' device."""
    return torch.stack(
        [c.weight.grad.norm() if c.weight.grad is not None else c.weight.new_zeros(()) for c in convs]
    )
