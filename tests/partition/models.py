"""Small models for the placement tests."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ErfSandwich", "sandwich"]


class ErfSandwich(nn.Module):
    """A CNN with an op no HTP kernel offers (``Erf``) in the middle: NPU + CPU + NPU."""

    def __init__(self, c: int = 32) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(8, c, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(c, 8, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(torch.erf(self.head(x)))


def sandwich(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``(model, example)`` of :class:`ErfSandwich` at 24x24, deterministic."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = ErfSandwich().eval()
        x = torch.randn(1, 8, 24, 24)
    return m, (x,)
