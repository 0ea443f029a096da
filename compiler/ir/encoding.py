"""Quantization encodings: a property of a tensor, as in QNN.

An encoding says how a real-valued tensor is represented by integers:
``real = (q - zero_point) * scale``. It is per-tensor (``axis is None``), per-channel (``axis``
set, one scale per slice along it) or per-block (``axis`` and ``block_size`` set, one scale per
``block_size`` elements along ``axis`` for every other index). Q/DQ nodes exist only at ONNX
export and import; inside the IR a value simply carries an encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compiler.ir.types import DType

__all__ = ["QuantEncoding"]


def _as_f32(x: object) -> np.ndarray:
    arr = np.array(x, dtype=np.float32)
    arr.setflags(write=False)
    return arr


def _as_i64(x: object) -> np.ndarray:
    arr = np.array(x, dtype=np.int64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class QuantEncoding:
    """How a tensor is quantized: ``bits``, ``signed``, ``scale``, ``zero_point``, layout.

    ``scale`` and ``zero_point`` are read-only numpy arrays (float32 and int64); scalars for
    per-tensor encodings. Constructing an encoding with a non-positive, NaN or infinite scale
    raises ``ValueError``: such scales must never reach an artifact.
    """

    bits: int
    signed: bool
    scale: np.ndarray
    zero_point: np.ndarray = field(default_factory=lambda: _as_i64(0))
    axis: int | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _as_f32(self.scale))
        object.__setattr__(self, "zero_point", _as_i64(self.zero_point))
        if self.bits not in (4, 8, 16, 32):
            raise ValueError(f"unsupported quantization width {self.bits}")
        s = self.scale
        if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise ValueError("quantization scale must be finite and > 0")
        if self.zero_point.shape != s.shape and self.zero_point.ndim != 0:
            raise ValueError("zero_point shape must match scale shape")
        lo, hi = self.qmin, self.qmax
        if np.any(self.zero_point < lo) or np.any(self.zero_point > hi):
            raise ValueError(f"zero_point out of range [{lo}, {hi}]")
        if self.block_size is not None and (self.axis is None or self.block_size <= 0):
            raise ValueError("a per-block encoding needs an axis and a positive block_size")
        if self.axis is None and s.ndim != 0:
            raise ValueError("a per-tensor encoding has a scalar scale")

    @property
    def dtype(self) -> DType:
        """The integer element type that stores quantized values."""
        return {
            (4, True): DType.I4, (4, False): DType.U4, (8, True): DType.I8,
            (8, False): DType.U8, (16, True): DType.I16, (16, False): DType.U16,
            (32, True): DType.I32, (32, False): DType.U32,
        }[(self.bits, self.signed)]

    @property
    def qmin(self) -> int:
        """Smallest representable integer."""
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        """Largest representable integer."""
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def granularity(self) -> str:
        """``tensor``, ``channel`` or ``block``."""
        if self.axis is None:
            return "tensor"
        return "channel" if self.block_size is None else "block"

    def _broadcast(self, arr: np.ndarray, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        if self.axis is None:
            return self.scale, self.zero_point.astype(np.float32)
        axis = self.axis % ndim
        scale = self.scale
        zp = np.broadcast_to(self.zero_point, scale.shape).astype(np.float32)
        if self.block_size is not None:
            # Blocked scales have the tensor's shape with ``axis`` divided by block_size.
            scale = np.repeat(scale, self.block_size, axis=axis)
            zp = np.repeat(zp, self.block_size, axis=axis)
            sl = [slice(None)] * ndim
            sl[axis] = slice(0, arr.shape[axis])
            return scale[tuple(sl)], zp[tuple(sl)]
        shape = [1] * ndim
        shape[axis] = -1
        return scale.reshape(shape), zp.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Round-to-nearest-even quantization of float ``x`` to integers (int64 array)."""
        x = np.asarray(x, dtype=np.float32)
        scale, zp = self._broadcast(x, x.ndim)
        q = np.rint(x / scale) + zp
        return np.clip(q, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """Integers back to float32."""
        q = np.asarray(q)
        scale, zp = self._broadcast(q, q.ndim)
        return ((q.astype(np.float32) - zp) * scale).astype(np.float32)

    def fake_quant(self, x: np.ndarray) -> np.ndarray:
        """``dequantize(quantize(x))``: what the quantized tensor represents."""
        return self.dequantize(self.quantize(x))

    def key(self) -> tuple:
        """A hashable identity used for equality and for printing."""
        return (
            self.bits, self.signed, self.scale.shape, self.scale.tobytes(),
            self.zero_point.shape, self.zero_point.tobytes(), self.axis, self.block_size,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantEncoding) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        from compiler.ir.printer import encoding_str

        return f"QuantEncoding({encoding_str(self, inline_limit=8)})"
