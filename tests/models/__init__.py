"""Test models: a deterministic zoo of small architectures (see :mod:`tests.models.zoo`)."""

from tests.models.zoo import (
    INPUTS,
    VOCAB,
    ZOO,
    build,
    calibration_inputs,
    rel_error,
    torch_outputs,
)

__all__ = [
    "INPUTS", "VOCAB", "ZOO", "build", "calibration_inputs", "rel_error", "torch_outputs",
]
