"""The one error hierarchy of edgec.

Every error a user can trigger is an :class:`EdgecError`. Each names what it is about (a node,
a tensor, a file, a pass) so that the CLI can print one line and exit with code 2.
"""

from __future__ import annotations

__all__ = [
    "EdgecError",
    "ModelLoadError",
    "ExternalDataError",
    "UnsupportedOpError",
    "VerifyError",
    "ParseError",
    "PipelineError",
    "PassError",
    "NumericsError",
    "QuantizationError",
    "TargetError",
    "EmitError",
    "FinalizeError",
    "CompressionError",
]


class EdgecError(Exception):
    """Base class of every error edgec raises on bad input or a failed compile step."""


class ModelLoadError(EdgecError):
    """A model file or object could not be read (bad bytes, truncated protobuf, bad opset)."""


class ExternalDataError(ModelLoadError):
    """An ONNX external-data reference is unsafe or does not fit its file."""


class UnsupportedOpError(EdgecError):
    """An operator (or operator feature) is not supported; names the node and op."""


class VerifyError(EdgecError):
    """The IR violates an invariant; the message names the node or value."""


class ParseError(EdgecError):
    """IR text or a pipeline string could not be parsed; the message gives the line."""


class PipelineError(EdgecError):
    """A pipeline string names an unknown pass or a bad option."""


class PassError(EdgecError):
    """A pass failed. ``pass_name`` is the failing pass, ``before`` the passes that ran."""

    def __init__(self, message: str, pass_name: str = "", before: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.pass_name = pass_name
        self.before = before


class NumericsError(EdgecError):
    """Values are unusable (NaN/Inf weights or activations) where real values are needed."""


class QuantizationError(EdgecError):
    """Calibration or quantization cannot proceed (empty calibration set, bad shapes...)."""


class TargetError(EdgecError):
    """An unknown target, arch, SoC or target option."""


class EmitError(EdgecError):
    """Emitting an artifact failed."""


class FinalizeError(EmitError):
    """The QNN HTP backend refused to finalize a graph (e.g. QNN_COMMON_ERROR_MEM_ALLOC)."""

    def __init__(self, message: str, qnn_error: str = "", log: str = "") -> None:
        super().__init__(message)
        self.qnn_error = qnn_error
        self.log = log


class CompressionError(EdgecError):
    """A compression request that cannot be honoured (100% sparsity, a rank outside
    ``1..min(m, n)``, a head count that leaves no head); the message names the node."""
