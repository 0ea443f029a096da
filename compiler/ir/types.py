"""Element types, shapes and tensor types of the IR.

A shape is a tuple of dimensions; a dimension is an ``int`` (static), a ``str`` (a named
symbol such as ``"batch"``) or ``None`` (unknown). A shape of ``None`` means the rank itself is
unknown. Nothing here imports ONNX: the mapping to ONNX element types lives in the frontends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

__all__ = ["DType", "Dim", "Shape", "TensorType", "shape_str", "numel"]

Dim = Union[int, str, None]
Shape = tuple[Dim, ...]


class DType(enum.Enum):
    """Element types. The value is the short name used in the IR text."""

    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    F64 = "f64"
    I4 = "i4"
    U4 = "u4"
    I8 = "i8"
    U8 = "u8"
    I16 = "i16"
    U16 = "u16"
    I32 = "i32"
    U32 = "u32"
    I64 = "i64"
    U64 = "u64"
    BOOL = "bool"

    @property
    def bits(self) -> int:
        """Width of one element in bits."""
        return _BITS[self]

    @property
    def is_float(self) -> bool:
        """True for floating-point types."""
        return self in (DType.F32, DType.F16, DType.BF16, DType.F64)

    @property
    def is_int(self) -> bool:
        """True for (signed or unsigned) integer types, bool excluded."""
        return not self.is_float and self is not DType.BOOL

    @property
    def is_signed(self) -> bool:
        """True for signed integers and floats."""
        return self.is_float or self in (DType.I4, DType.I8, DType.I16, DType.I32, DType.I64)

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype that holds elements of this type (int4 is held unpacked in int8)."""
        return np.dtype(_NUMPY[self])

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> DType:
        """The IR dtype for a numpy dtype (``ml_dtypes.bfloat16`` maps to bf16)."""
        dt = np.dtype(dtype)
        name = dt.name
        try:
            return _FROM_NUMPY[name]
        except KeyError:
            raise TypeError(f"numpy dtype {dt} has no edgec element type") from None

    @classmethod
    def parse(cls, text: str) -> DType:
        """The dtype named ``text`` in the IR text (``f32``, ``i8`` ...)."""
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown element type {text!r}") from None


_BITS = {
    DType.F32: 32, DType.F16: 16, DType.BF16: 16, DType.F64: 64, DType.I4: 4, DType.U4: 4,
    DType.I8: 8, DType.U8: 8, DType.I16: 16, DType.U16: 16, DType.I32: 32, DType.U32: 32,
    DType.I64: 64, DType.U64: 64, DType.BOOL: 8,
}


def _bf16() -> object:
    import ml_dtypes  # shipped with onnx; the only portable bfloat16 for numpy

    return ml_dtypes.bfloat16


_NUMPY: dict[DType, Any] = {
    DType.F32: np.float32, DType.F16: np.float16, DType.F64: np.float64, DType.I4: np.int8,
    DType.U4: np.uint8, DType.I8: np.int8, DType.U8: np.uint8, DType.I16: np.int16,
    DType.U16: np.uint16, DType.I32: np.int32, DType.U32: np.uint32, DType.I64: np.int64,
    DType.U64: np.uint64, DType.BOOL: np.bool_,
}
try:
    _NUMPY[DType.BF16] = _bf16()
except ImportError:  # pragma: no cover - ml_dtypes comes with onnx
    _NUMPY[DType.BF16] = np.uint16

_FROM_NUMPY = {
    "float32": DType.F32, "float16": DType.F16, "float64": DType.F64, "bfloat16": DType.BF16,
    "int8": DType.I8, "uint8": DType.U8, "int16": DType.I16, "uint16": DType.U16,
    "int32": DType.I32, "uint32": DType.U32, "int64": DType.I64, "uint64": DType.U64,
    "bool": DType.BOOL,
}


def numel(shape: Shape | None) -> int | None:
    """Number of elements, or None when any dimension is not static."""
    if shape is None:
        return None
    n = 1
    for d in shape:
        if not isinstance(d, int):
            return None
        n *= d
    return n


def shape_str(shape: Shape | None) -> str:
    """IR text of a shape: ``[1,3,h,?]``; ``[*]`` for unknown rank; ``[]`` for a scalar."""
    if shape is None:
        return "[*]"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class TensorType:
    """The type of a value: element type and (possibly partial) shape."""

    dtype: DType
    shape: Shape | None = None

    def __post_init__(self) -> None:
        if self.shape is not None:
            for d in self.shape:
                if isinstance(d, bool) or not (isinstance(d, (int, str)) or d is None):
                    raise TypeError(f"bad dimension {d!r} in shape {self.shape!r}")
                if isinstance(d, int) and d < 0:
                    raise ValueError(f"negative dimension {d} in shape {self.shape!r}")

    @property
    def rank(self) -> int | None:
        """Rank, or None when unknown."""
        return None if self.shape is None else len(self.shape)

    @property
    def numel(self) -> int | None:
        """Element count, or None when not static."""
        return numel(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dimension is a known int."""
        return self.numel is not None

    @property
    def nbytes(self) -> int | None:
        """Storage size in bytes (int4 counted as half a byte), or None when not static."""
        n = self.numel
        return None if n is None else (n * self.dtype.bits + 7) // 8

    def with_shape(self, shape: Shape | None) -> TensorType:
        """The same dtype with another shape."""
        return TensorType(self.dtype, shape)

    def with_dtype(self, dtype: DType) -> TensorType:
        """The same shape with another dtype."""
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype.value}{shape_str(self.shape)}"
