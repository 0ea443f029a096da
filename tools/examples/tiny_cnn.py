"""A small image classifier in the shape of a MobileNet/ResNet stem, with fixed weights.

``make()`` returns ``(module, example_inputs)``, the contract of ``edgec compile
path/to/file.py:make``. The weights come from a fixed seed and a few steps of training on a
synthetic task (which colour channel, if any, holds a bright 8x8 blob), so the
activations have the ranges of a trained network rather than of a random one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["make", "calibration_batches"]


def _module() -> Any:
    import torch
    from torch import nn

    class TinyCNN(nn.Module):
        """Conv-BN-ReLU stem, a depthwise-separable block with a residual, pooling, a head."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1),
                                      nn.BatchNorm2d(16), nn.ReLU())
            self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16),
                                    nn.BatchNorm2d(16), nn.ReLU6())
            self.pw = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16))
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x)
            y = torch.relu(y + self.pw(self.dw(y)))
            y = torch.nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
            return torch.softmax(self.head(y), dim=-1)

    return TinyCNN


def _data(n: int, seed: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.3
    labels = torch.randint(0, 4, (n,), generator=g)
    corners = torch.randint(0, 24, (n, 2), generator=g).tolist()
    for i, q in enumerate(labels.tolist()):
        if q < 3:  # class 3 is "no blob"
            r, c = corners[i]
            x[i, q, r:r + 8, c:c + 8] += 2.0
    return x, labels


def make() -> tuple[Any, tuple[Any, ...]]:
    """The trained TinyCNN in eval mode and one example input of shape (1, 3, 32, 32)."""
    import torch

    torch.manual_seed(0)
    model = _module()()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = _data(256, seed=1)
    model.train()
    for step in range(60):
        idx = slice((step * 32) % 256, (step * 32) % 256 + 32)
        loss = torch.nn.functional.nll_loss(torch.log(model(x[idx]) + 1e-9), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, (_data(1, seed=2)[0],)


def calibration_batches(n: int = 8) -> list[tuple[Any, ...]]:
    """``n`` single-image calibration batches drawn like the training data."""
    x, _ = _data(n, seed=3)
    return [(x[i:i + 1],) for i in range(n)]
