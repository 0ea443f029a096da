"""Small models for the placement tests."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ErfSandwich", "sandwich", "ErfIsland", "island"]


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


def _seeded(cls: type[nn.Module], seed: int) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``(cls() in eval mode, (a 1x8x24x24 example,))``, deterministic in ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = cls().eval()
        x = torch.randn(1, 8, 24, 24)
    return m, (x,)


def sandwich(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``(model, example)`` of :class:`ErfSandwich` at 24x24, deterministic."""
    return _seeded(ErfSandwich, seed)


class ErfIsland(ErfSandwich):
    """Two ``Erf`` with a tiny op between them, inside the same CNN: capability placement makes
    the tiny op an NPU partition of its own (NPU + CPU + NPU + CPU + NPU), which pays a launch
    and two transfers for almost no work."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.erf(self.head(x))
        return self.tail(torch.erf(y * 0.5))


def island(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``(model, example)`` of :class:`ErfIsland` at 24x24, deterministic."""
    return _seeded(ErfIsland, seed)
