"""Small models that the compression tests and ``benchmarks/compress.py`` train themselves, on
generated data, in a few seconds on a CPU.

- ``cnn``: 4-class oriented gratings (3x16x16, noisy, random phase/frequency/colour); a
  ResNet-style net with batch norm, a residual block, a depthwise conv, a concat and a
  two-layer head -- every structure channel pruning must propagate through.
- ``transformer``: 4-class "which prototype occurs most" over 16 noisy tokens of width 16; a
  two-block pre-norm transformer (attention, GELU MLP) with a linear head.

:func:`trained` returns ``(model, example batch, calibration batches, (test x, test y))`` and
caches the result per process (every test that needs a trained model shares one training).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CNN", "Transformer", "WideConvNet", "make_data", "train", "trained", "accuracy",
           "BATCH"]

#: batch size of the exported graphs (the IR has static shapes)
BATCH = 64
CLASSES = 4


class CNN(nn.Module):
    """Conv-BN-ReLU stem, a residual block, a depthwise conv, a concat, a 1x1 conv, a head.

    ``masks`` (name -> channel mask) multiply the inputs of the consumers, so a test can
    compute the "masked reference" of a channel-pruned graph.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(w)
        self.c1 = nn.Conv2d(w, w, 3, padding=1)
        self.c2 = nn.Conv2d(w, w, 3, padding=1)
        self.dw = nn.Conv2d(w, w, 3, padding=1, groups=w)
        self.mix = nn.Conv2d(2 * w, 2 * w, 3, padding=1, stride=2)
        self.fc1 = nn.Linear(2 * w, 32)
        self.fc2 = nn.Linear(32, CLASSES)
        self.masks: dict[str, torch.Tensor] = {}

    def _m(self, name: str, x: torch.Tensor) -> torch.Tensor:
        m = self.masks.get(name)
        if m is None:
            return x
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * m.reshape(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn(self.stem(x)))
        h = F.relu(self.c1(self._m("c1", y)))
        y = y + self.c2(self._m("c2", h))  # residual: stem and c2 share channels
        d = F.relu(self.dw(y))
        z = torch.cat([d, y], 1)
        z = F.relu(self.mix(self._m("mix", z)))
        z = z.mean((2, 3))
        z = F.relu(self.fc1(self._m("fc1", z)))
        return self.fc2(self._m("fc2", z))


class WideConvNet(nn.Module):
    """Three 3x3 convs at 32x32 with 64 channels (untrained): wide enough that the HTP's
    32-channel tiles are full, so cycles follow channel counts (the simulator tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 64, 3, padding=1)
        self.c2 = nn.Conv2d(64, 64, 3, padding=1)
        self.c3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y))
        y = torch.relu(self.c3(y))
        return self.fc(y.mean((2, 3)))


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention and a GELU MLP.

    ``head_mask`` (``[heads]``) multiplies each head's context before the output projection,
    so a test can compute the "masked reference" of a head-pruned graph."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_mask: torch.Tensor | None = None
        self.n1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.n2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).split(d, dim=-1)
        q = q.reshape(b, t, self.heads, -1).transpose(1, 2)
        k = k.reshape(b, t, self.heads, -1).transpose(1, 2)
        v = v.reshape(b, t, self.heads, -1).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        ctx = att @ v
        if self.head_mask is not None:
            ctx = ctx * self.head_mask.reshape(1, -1, 1, 1)
        x = x + self.proj(ctx.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.n2(x))))


class Transformer(nn.Module):
    """Token projection, two transformer blocks, mean pooling, a linear head."""

    def __init__(self, d_in: int = 16, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.Sequential(Block(d, heads), Block(d, heads))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.inp(x))).mean(1))


def make_data(kind: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` generated examples and labels of task ``kind`` (``cnn`` or ``transformer``)."""
    g = np.random.default_rng(seed)
    y = g.integers(0, CLASSES, n)
    if kind == "cnn":
        yy, xx = np.mgrid[0:16, 0:16].astype(np.float32)
        angle = y * np.pi / CLASSES + g.normal(0, 0.2, n)
        freq = g.uniform(0.6, 1.2, n)
        phase = g.uniform(0, 2 * np.pi, n)
        proj = (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
        img = np.sin(freq[:, None, None] * proj + phase[:, None, None])
        colour = g.uniform(0.3, 1.0, (n, 3))
        x = colour[:, :, None, None] * img[:, None] + g.normal(0, 1.0, (n, 3, 16, 16))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    protos = np.random.default_rng(1234).normal(0, 1, (8, 16))
    counts = g.integers(0, 3, (n, 8))
    tokens = np.zeros((n, 16), np.int64)
    for i in range(n):
        counts[i, y[i]] = counts[i, :CLASSES].max() + 1 + g.integers(0, 2)
        seq = np.repeat(np.arange(8), counts[i])
        fill = g.integers(CLASSES, 8, 16)  # distractors outside the label prototypes
        seq = np.concatenate([seq, fill])[:16]
        tokens[i] = g.permutation(seq)
    x = protos[tokens] + g.normal(0, 0.8, (n, 16, 16))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def train(model: nn.Module, kind: str, steps: int = 150, seed: int = 0) -> nn.Module:
    """Train ``model`` on fresh generated batches with Adam; returns it in eval mode."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        x, y = make_data(kind, 32, 10_000 + step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@cache
def trained(kind: str) -> tuple[nn.Module, torch.Tensor, list[torch.Tensor],
                                tuple[list[torch.Tensor], list[np.ndarray]]]:
    """``(model, example, calibration batches, (test batches, test labels))`` for ``kind``."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CNN() if kind == "cnn" else Transformer()
        torch.set_num_threads(min(torch.get_num_threads(), 2))
        train(model, kind, steps=150 if kind == "cnn" else 250)
    calib = [make_data(kind, BATCH, 500 + i)[0] for i in range(4)]
    tests = [make_data(kind, BATCH, 900 + i) for i in range(4)]
    return (model, calib[0], calib, ([x for x, _ in tests], [y.numpy() for _, y in tests]))


def accuracy(logits: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """Top-1 accuracy over batches."""
    right = sum(int((np.argmax(lg, axis=-1) == lb).sum()) for lg, lb in zip(logits, labels))
    return right / sum(len(lb) for lb in labels)
