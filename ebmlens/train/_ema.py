"""An exponential moving average of a model's weights and buffers (BatchNorm statistics included).

After update ``n`` (1-based) the average is ``a <- d a + (1 - d) w`` with the warm-up
``d = min(decay, (1 + n) / (10 + n))``, so the first updates follow the weights closely; integer
buffers (``num_batches_tracked``) are copied.

>>> net = torch.nn.Linear(2, 1)
>>> ema = EMA(net, 0.999)
>>> _ = torch.nn.init.zeros_(net.weight)
>>> ema.update(net); ema.n, round(ema.rate(), 4)
(1, 0.1818)
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """The average of ``module``'s state dict (see the module docstring); :meth:`state_dict` goes into ``last.pt``."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.n = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def rate(self) -> float:
        """The decay ``d`` used at update ``n``."""
        return min(self.decay, (1 + self.n) / (10 + self.n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.n += 1
        d = self.rate()
        for k, v in module.state_dict().items():
            a = self.shadow[k]
            if a.is_floating_point():
                a.mul_(d).add_(v.detach().to(a.dtype), alpha=1 - d)
            else:
                a.copy_(v)

    def copy_of(self, model: nn.Module, attr: str = "classifier") -> nn.Module:
        """A deep copy of ``model`` whose ``attr`` submodule (the whole model for ``""``) holds the average."""
        out = copy.deepcopy(model)
        (getattr(out, attr) if attr else out).load_state_dict(self.shadow)
        return out

    def state_dict(self) -> dict:
        return {"decay": self.decay, "n": self.n, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("the EMA in the checkpoint does not match the model's keys; choose a new --out")
        self.n = int(state["n"])
        self.shadow = {k: v.detach().clone().to(self.shadow[k].device) for k, v in state["shadow"].items()}
