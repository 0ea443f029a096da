"""Fixtures of the visualizer tests: the real zoo ResNet before and after a pipeline."""

from __future__ import annotations

import pytest

from compiler.frontends import load_torch
from compiler.ir import Graph
from compiler.passes import PassManager
from tests.models.zoo import build


@pytest.fixture(scope="session")
def resnet() -> Graph:
    """The zoo ResNet as imported by the torch frontend."""
    model, inputs = build("resnet")
    return load_torch(model, inputs)


@pytest.fixture(scope="session")
def resnet_fused(resnet: Graph) -> Graph:
    """The zoo ResNet after ``canonicalize,fuse`` (batch norms folded into convs)."""
    g = resnet.copy()
    PassManager("canonicalize,fuse").run(g)
    return g
