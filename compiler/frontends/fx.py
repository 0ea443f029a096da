"""PyTorch to IR: ``torch.export`` and a lowering table from ATen to ONNX-semantics IR nodes.

``load_torch(module, example_inputs)`` exports the module with ``torch.export`` and lowers the
exported graph node by node through :data:`LOWERINGS`, a table from ATen overloads (or whole
overload packets) to one short function that emits IR nodes with ONNX semantics.

How the table is applied, and why:

- **Fast path.** ``torch.export`` already yields ATen ops. When every op in the exported graph
  has a lowering, the graph is lowered as it is. This skips ``run_decompositions`` (a full
  re-trace that costs more than the export itself) and keeps high-level ops such as
  ``linear``, ``layer_norm``, ``hardswish`` or ``scaled_dot_product_attention`` whole, which
  the target wants anyway. In-place ops whose write nobody can observe
  (``ReLU(inplace=True)``, ``out += identity`` on a fresh tensor; see
  :func:`_inplace_is_local`) are lowered as their functional twins on this path too.
- **Core ATen.** Otherwise (an op outside the table, a mutation of an input, buffer or view,
  a higher-order op) ``run_decompositions`` runs with the default core-ATen table minus every
  op we lower natively, then the result is lowered. ``decompose="core"`` forces a full
  decomposition to core ATen (the table covers core ATen too).
- **Fallback.** An op the table still lacks, or a ``torch.export`` failure, sends the *whole*
  model through ``torch.onnx.export(dynamo=True)`` and the ONNX frontend under
  ``frontend="auto"`` (with a :class:`FrontendFallbackWarning` naming the op and the module
  path); ``frontend="fx"`` raises :class:`~compiler.errors.UnsupportedOpError` instead.

Every node records its provenance: ``meta["src"]`` is the module path from
``nn_module_stack`` (``layers.3.mlp.fc1``), ``meta["aten"]`` the ATen op and
``meta["pass"] = "import"``. Output types come from the FX node's ``meta["val"]``; symbolic
dims become named symbols (the ``torch.export.Dim`` names when ``dynamic_shapes`` gives them).
Parameters and buffers become constants named by their FQN (``layers.0.conv.weight``) that
share memory with the module's tensors (read-only views, no copy).

Lowerings emit ONNX ops at opset :data:`OPSET` only; folding (a weight ``Transpose`` under
``MatMul``, a ``Cast`` of a constant) is left to canonicalization.

Importing this module does not import torch: the table is keyed by op names, so that
``import compiler.frontends`` stays cheap for ONNX-only users.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.errors import EdgecError, ModelLoadError, UnsupportedOpError
from compiler.ir import DType, Graph, TensorType, Value
from compiler.ir.verify import broadcast_shapes

if TYPE_CHECKING:
    import torch

__all__ = [
    "OPSET",
    "LOWERINGS",
    "FrontendFallbackWarning",
    "load_torch",
    "supported_ops",
    "without_lowering",
]

#: ONNX default-domain opset of graphs made here (the dynamo exporter's default as well).
OPSET = 20

Lowering = Callable[..., Any]

#: ATen op name (``aten.add.Tensor`` for one overload, ``aten.add`` for a whole packet;
#: ``operator.getitem`` for Python builtins) to the function that lowers it.
LOWERINGS: dict[str, Lowering] = {}

_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)


class FrontendFallbackWarning(UserWarning):
    """The torch frontend handed the model to ``torch.onnx.export`` (names op and module)."""


def _lower(*names: str) -> Callable[[Lowering], Lowering]:
    def deco(fn: Lowering) -> Lowering:
        for name in names:
            LOWERINGS[name] = fn
        return fn

    return deco


def supported_ops() -> list[str]:
    """Names of every ATen overload or packet the lowering table covers, sorted."""
    return sorted(LOWERINGS)


@contextlib.contextmanager
def without_lowering(*names: str) -> Iterator[None]:
    """Test hook: temporarily remove table entries (``aten.gelu``, ``aten.gelu.default``...).

    Both the named entry and, for a packet name, every overload entry under it are removed,
    so the op is really missing and the fallback paths can be exercised on any model.
    """
    saved: dict[str, Lowering] = {}
    for name in names:
        for key in list(LOWERINGS):
            if key == name or key.startswith(name + "."):
                saved[key] = LOWERINGS.pop(key)
    try:
        yield
    finally:
        LOWERINGS.update(saved)


# ---------------------------------------------------------------------------------------------
# torch-side helpers (torch is imported lazily)


@functools.cache
def _dtype_map() -> dict[Any, DType]:
    import torch

    return {
        torch.float32: DType.F32, torch.float16: DType.F16, torch.bfloat16: DType.BF16,
        torch.float64: DType.F64, torch.int8: DType.I8, torch.uint8: DType.U8,
        torch.int16: DType.I16, torch.uint16: DType.U16, torch.int32: DType.I32,
        torch.uint32: DType.U32, torch.int64: DType.I64, torch.uint64: DType.U64,
        torch.bool: DType.BOOL,
    }


def _ir_dtype(tdtype: Any) -> DType:
    try:
        return _dtype_map()[tdtype]
    except KeyError:
        raise UnsupportedOpError(f"torch dtype {tdtype} has no edgec element type") from None


_KEYS: dict[Any, tuple[str, str]] = {}


def _target_keys(target: Any) -> tuple[str, str]:
    """(overload key, packet key) of an FX call target, cached per target object."""
    keys = _KEYS.get(target)
    if keys is None:
        mod = getattr(target, "__module__", "")
        if mod in ("_operator", "operator"):
            keys = (f"operator.{target.__name__}",) * 2
        elif hasattr(target, "overloadpacket"):
            keys = (str(target), str(target.overloadpacket))
        else:
            name = getattr(target, "__name__", str(target))
            keys = (f"{mod}.{name}",) * 2
        _KEYS[target] = keys
    return keys


def _lookup(target: Any) -> Lowering | None:
    full, packet = _target_keys(target)
    fn = LOWERINGS.get(full)
    return fn if fn is not None else LOWERINGS.get(packet)


def _functional_lowering(target: Any) -> Lowering | None:
    """The lowering of an in-place op's functional twin (``aten.relu_`` -> ``aten.relu``)."""
    full, packet = _target_keys(target)
    if not packet.endswith("_") or not packet.startswith("aten."):
        return None
    base = packet[:-1]
    fn = LOWERINGS.get(base + full[len(packet):])
    return fn if fn is not None else LOWERINGS.get(base)


def _module_path(node: Any) -> tuple[str, str]:
    """(module path, module class) of an FX node from ``nn_module_stack``; root is ``""``."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return "", ""
    path, cls = next(reversed(stack.values()))
    cls_name = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
    return str(path), str(cls_name).rsplit(".", 1)[-1]


def _const_array(t: torch.Tensor) -> np.ndarray:
    """A read-only numpy view of a CPU tensor (no copy when the dtype allows it)."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype == torch.bfloat16:
        arr = t.view(torch.int16).numpy().view(DType.BF16.numpy)
    else:
        arr = t.numpy()
    arr = arr.view()
    arr.flags.writeable = False  # shares memory with the module: passes must never write it
    return arr


# ---------------------------------------------------------------------------------------------
# the lowering context


class _Sym:
    """A symbolic int (``SymInt``) held as an i64[1] tensor, the form shapes are built from."""

    __slots__ = ("v",)

    def __init__(self, v: Value) -> None:
        self.v = v


class _LoweringBug(Exception):
    """A lowering produced a value whose dtype disagrees with torch (a bug in the table)."""


class _Ctx:
    """Builds IR for one FX node at a time; lowering functions call its helpers."""

    def __init__(self, graph: Graph, sym_names: dict[str, str]) -> None:
        self.g = graph
        self.sym_names = sym_names
        self.fx: Any = None
        self.name = "v"
        self.meta: dict[str, Any] = {}
        self._fresh: list[Value] = []
        self._consts: dict[tuple, Value] = {}
        self._dims: dict[tuple[int, int], _Sym] = {}

    def begin(self, node: Any) -> None:
        """Start lowering FX ``node``: its name, provenance and a fresh list of new values."""
        path, _ = _module_path(node)
        self.fx = node
        self.name = node.name
        self.meta = {"src": path, "pass": "import", "aten": _target_keys(node.target)[0]}
        self._fresh = []

    def is_fresh(self, v: Value) -> bool:
        """True when ``v`` was made while lowering the current FX node."""
        return any(f is v for f in self._fresh)

    # -- types --------------------------------------------------------------------------------
    def dim(self, d: Any) -> int | str | None:
        if isinstance(d, int):
            return d
        expr = d.node.expr
        if expr.is_number:
            return int(expr)
        if expr.is_Symbol:
            s = str(expr)
            return self.sym_names.get(s, s)
        return None

    def ttype(self, val: Any) -> TensorType:
        return TensorType(_ir_dtype(val.dtype), tuple(self.dim(d) for d in val.shape))

    @property
    def val(self) -> Any:
        """The FX ``meta["val"]`` of the node being lowered."""
        return self.fx.meta.get("val")

    def odt(self, i: int = 0) -> DType:
        """Output dtype of the node being lowered (output ``i`` for tuple results)."""
        v = self.val
        if isinstance(v, (list, tuple)):
            v = v[i]
        return _ir_dtype(v.dtype)

    def oshape(self, i: int = 0) -> tuple:
        v = self.val
        if isinstance(v, (list, tuple)):
            v = v[i]
        return tuple(self.dim(d) for d in v.shape)

    def arg_val(self, i: int) -> Any:
        """``meta["val"]`` of positional argument ``i`` (the Python value for a literal)."""
        a = self.fx.args[i]
        return a.meta.get("val") if hasattr(a, "meta") else a

    def used_outputs(self) -> set[int]:
        """Indices of a tuple-valued node's outputs that some ``getitem`` reads."""
        return {u.args[1] for u in self.fx.users
                if u.target is operator.getitem and u.users}

    # -- building -----------------------------------------------------------------------------
    def emit(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        *,
        dtype: DType | None = None,
        shape: tuple | None = None,
        n: int = 1,
        dtypes: Sequence[DType] | None = None,
    ) -> Any:
        """Add one node; returns its output (or the list of its ``n`` outputs)."""
        if dtypes is None:
            if dtype is None:
                data = inputs[1:] if op == "Where" else inputs  # Where's first input is bool
                first = next((x for x in data if x is not None), None)
                dtype = first.dtype if first is not None else DType.F32
            dtypes = [dtype] * n
        if shape is None and len(dtypes) == 1:
            shape = _infer_shape(op, inputs, attrs)
        types = [TensorType(d, shape) for d in dtypes]
        hint = f"{self.name}_{op.lower()}"
        node = self.g.make_node(op, inputs, attrs, outputs=[hint] * len(types), types=types,
                                meta=self.meta)
        self._fresh.extend(node.outputs)
        return node.outputs[0] if len(types) == 1 else list(node.outputs)

    def const(self, arr: np.ndarray, hint: str = "cst") -> Value:
        arr = np.asarray(arr)
        if arr.size <= 64:  # shape vectors and scalars repeat a lot: share them
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            v = self._consts.get(key)
            if v is None:
                v = self.g.add_const(hint, arr)  # add_const makes the name unique
                self._consts[key] = v
            return v
        return self.g.add_const(hint, arr)

    def scalar(self, x: Any, dtype: DType) -> Value:
        return self.const(np.array(x, dtype=dtype.numpy))

    def ints(self, xs: Sequence[int] | int) -> Value:
        """An i64 constant: 1-D for a sequence, 0-D for an int."""
        return self.const(np.array(xs, dtype=np.int64))

    def cast(self, v: Value, dtype: DType) -> Value:
        if v.dtype is dtype:
            return v
        return self.emit("Cast", [v], {"to": _onnx_dtype(dtype)}, dtype=dtype, shape=v.shape)

    def operand(self, a: Any, dtype: DType) -> Value:
        """A tensor, a Python scalar or a SymInt as a value of ``dtype``."""
        if isinstance(a, Value):
            return self.cast(a, dtype)
        if isinstance(a, _Sym):
            return self.cast(self.emit("Squeeze", [a.v], shape=()), dtype)
        if a is None or not isinstance(a, (bool, int, float)):
            raise UnsupportedOpError(f"operand {a!r} is not a tensor or a number")
        return self.scalar(a, dtype)

    def dim_of(self, x: Value, i: int) -> _Sym:
        """Dimension ``i`` of ``x`` at run time (one ``Shape`` node per value and dim)."""
        key = (id(x), i)
        s = self._dims.get(key)
        if s is None:
            end = {} if i == -1 else {"end": i + 1}
            s = _Sym(self.emit("Shape", [x], {"start": i, **end}, dtype=DType.I64, shape=(1,)))
            self._dims[key] = s
        return s

    def shape_input(self, sizes: Sequence[Any]) -> Value:
        """A 1-D i64 shape from ints and symbolic sizes (``Concat`` when any is dynamic)."""
        if all(isinstance(s, int) for s in sizes):
            return self.ints(list(sizes))
        parts: list[Value] = []
        run: list[int] = []
        for s in sizes:
            if isinstance(s, int):
                run.append(s)
                continue
            if run:
                parts.append(self.ints(run))
                run = []
            if isinstance(s, _Sym):
                parts.append(s.v)
            elif isinstance(s, Value):
                parts.append(self.emit("Reshape", [self.cast(s, DType.I64), self.ints([1])]))
            else:
                raise UnsupportedOpError(f"size {s!r} is neither an int nor a SymInt")
        if run:
            parts.append(self.ints(run))
        if len(parts) == 1:
            return parts[0]
        return self.emit("Concat", parts, {"axis": 0}, dtype=DType.I64, shape=(len(sizes),))

    def target_shape(self, x: Value, shape: Sequence[Any], sizes: Sequence[Any] | None = None,
                     *, infer: bool = True) -> Value:
        """A shape input for ``shape`` (the output's IR shape), symbolic dims taken from
        ``x``'s matching dims; ``sizes`` (the op's own size arguments) is the last resort.

        With ``infer`` (Reshape) one dim that cannot be found becomes -1; ops that take
        literal sizes (Resize, Expand) pass ``infer=False``.
        """
        if all(isinstance(d, int) for d in shape):
            return self.ints(list(shape))
        parts: list[Any] = []
        unknown = 0
        xs = x.shape or ()
        for d in shape:
            if isinstance(d, int):
                parts.append(d)
            elif d is not None and d in xs:
                parts.append(self.dim_of(x, xs.index(d)))
            else:
                parts.append(-1)
                unknown += 1
        if unknown > (1 if infer else 0):
            if sizes is None:
                raise UnsupportedOpError(f"cannot build the dynamic shape {list(shape)}")
            return self.shape_input(sizes)
        return self.shape_input(parts)

    def param_ones(self, shape: Sequence[int], dtype: DType, value: float = 1.0) -> Value:
        return self.const(np.full(tuple(shape), value, dtype=dtype.numpy))


_SAME_SHAPE = frozenset({
    "Cast", "Identity", "Relu", "Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Neg",
    "Abs", "Erf", "Gelu", "HardSwish", "HardSigmoid", "Softmax", "LogSoftmax", "Clip", "Floor",
    "Ceil", "Round", "Sign", "Sin", "Cos", "IsNaN", "IsInf", "Not", "LeakyRelu", "Elu", "Selu",
    "Celu", "Softplus", "Mish", "CumSum", "Trilu", "Shrink", "LayerNormalization",
    "InstanceNormalization", "BatchNormalization", "ScatterElements", "ScatterND", "PRelu",
})
_BROADCAST = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "BitwiseAnd", "BitwiseOr",
    "BitwiseXor",
})


def _infer_shape(op: str, inputs: Sequence[Value | None], attrs: dict | None) -> tuple | None:
    """Output shape of the common single-output ops, so intermediate values keep a type.

    Only cheap, certain cases; anything else stays unknown (``None``).
    """
    x = inputs[0] if inputs else None
    if x is None or x.shape is None:
        return None
    if op in _SAME_SHAPE:
        return x.shape
    if op in _BROADCAST:
        acc: tuple = x.shape
        for v in inputs[1:]:
            if v is None or v.shape is None:
                return None
            nxt = broadcast_shapes(acc, v.shape)
            if nxt is None:
                return None
            acc = nxt
        return acc
    if op == "Transpose":
        perm = (attrs or {}).get("perm", list(range(len(x.shape)))[::-1])
        return tuple(x.shape[p] for p in perm)
    if op == "MatMul" and len(inputs) == 2 and inputs[1] is not None:
        a, b = x.shape, inputs[1].shape
        if b is None or len(a) < 2 or len(b) < 2:
            return None
        batch = broadcast_shapes(a[:-2], b[:-2])
        return None if batch is None else (*batch, a[-2], b[-1])
    return None


def _onnx_dtype(dt: DType) -> int:
    # onnx.TensorProto values, spelled out so the IR builder does not import onnx
    return {
        DType.F32: 1, DType.U8: 2, DType.I8: 3, DType.U16: 4, DType.I16: 5, DType.I32: 6,
        DType.I64: 7, DType.BOOL: 9, DType.F16: 10, DType.F64: 11, DType.U32: 12,
        DType.U64: 13, DType.BF16: 16, DType.U4: 21, DType.I4: 22,
    }[dt]


def _axis(d: int, rank: int | None) -> int:
    if rank is None or d >= 0:
        return d
    return d + rank


def _rank(v: Value) -> int:
    r = v.type.rank
    if r is None:
        raise UnsupportedOpError(f"%{v.name} has unknown rank")
    return r


def _tup(v: Any, n: int) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = list(v)
    return v * n if len(v) == 1 else v


def _static(shape: Sequence[Any] | None, what: str) -> list[int]:
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise UnsupportedOpError(f"{what} needs a static shape, got {shape}")
    return list(shape)


# ---------------------------------------------------------------------------------------------
# the lowering table: elementwise


_UNARY = {
    "abs": "Abs", "neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
    "reciprocal": "Reciprocal", "sin": "Sin", "cos": "Cos", "tan": "Tan", "asin": "Asin",
    "acos": "Acos", "atan": "Atan", "sinh": "Sinh", "cosh": "Cosh", "tanh": "Tanh",
    "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh", "erf": "Erf", "sigmoid": "Sigmoid",
    "relu": "Relu", "ceil": "Ceil", "floor": "Floor", "round": "Round", "sign": "Sign",
    "sgn": "Sign", "hardswish": "HardSwish", "mish": "Mish",
}
_INT_IDENTITY = {"Ceil", "Floor", "Round"}


def _unary(op: str) -> Lowering:
    def lower(cx: _Ctx, x: Value) -> Value:
        dt = cx.odt()
        if op in _INT_IDENTITY and not x.dtype.is_float:
            return x
        return cx.emit(op, [cx.cast(x, dt)], dtype=dt)

    return lower


for _name, _op in _UNARY.items():
    LOWERINGS[f"aten.{_name}.default"] = _unary(_op)


@_lower("aten.rsqrt.default")
def _rsqrt(cx: _Ctx, x: Value) -> Value:
    return cx.emit("Reciprocal", [cx.emit("Sqrt", [cx.cast(x, cx.odt())])])


@_lower("aten.exp2.default")
def _exp2(cx: _Ctx, x: Value) -> Value:
    dt = cx.odt()
    return cx.emit("Pow", [cx.scalar(2.0, dt), cx.cast(x, dt)], dtype=dt)


@_lower("aten.expm1.default")
def _expm1(cx: _Ctx, x: Value) -> Value:
    dt = cx.odt()
    return cx.emit("Sub", [cx.emit("Exp", [cx.cast(x, dt)]), cx.scalar(1, dt)])


@_lower("aten.log1p.default")
def _log1p(cx: _Ctx, x: Value) -> Value:
    dt = cx.odt()
    return cx.emit("Log", [cx.emit("Add", [cx.cast(x, dt), cx.scalar(1, dt)])])


def _log_base(base: float) -> Lowering:
    def lower(cx: _Ctx, x: Value) -> Value:
        dt = cx.odt()
        return cx.emit("Div", [cx.emit("Log", [cx.cast(x, dt)]), cx.scalar(math.log(base), dt)])

    return lower


LOWERINGS["aten.log2.default"] = _log_base(2.0)
LOWERINGS["aten.log10.default"] = _log_base(10.0)


def _trunc_value(cx: _Ctx, x: Value) -> Value:
    if not x.dtype.is_float:
        return x
    # ONNX has no Trunc: sign(x) * floor(|x|) rounds toward zero
    return cx.emit("Mul", [cx.emit("Sign", [x]), cx.emit("Floor", [cx.emit("Abs", [x])])])


@_lower("aten.trunc.default", "aten.fix.default")
def _trunc(cx: _Ctx, x: Value) -> Value:
    return _trunc_value(cx, x)


@_lower("aten.frac.default")
def _frac(cx: _Ctx, x: Value) -> Value:
    return cx.emit("Sub", [x, _trunc_value(cx, x)])


def _is_special(op: str) -> Lowering:
    def lower(cx: _Ctx, x: Value) -> Value:
        if not x.dtype.is_float:  # integers are never NaN or infinite
            return _fill(cx, False, like=x)
        return cx.emit(op, [x], dtype=DType.BOOL)

    return lower


LOWERINGS["aten.isnan.default"] = _is_special("IsNaN")
LOWERINGS["aten.isinf.default"] = _is_special("IsInf")


@_lower("aten.logical_not.default")
def _logical_not(cx: _Ctx, x: Value) -> Value:
    return cx.emit("Not", [_to_bool(cx, x)])


def _to_bool(cx: _Ctx, x: Value) -> Value:
    if x.dtype is DType.BOOL:
        return x
    return cx.emit("Not", [cx.emit("Equal", [x, cx.scalar(0, x.dtype)], dtype=DType.BOOL)])


@_lower("aten.bitwise_not.default")
def _bitwise_not(cx: _Ctx, x: Value) -> Value:
    return cx.emit("Not" if x.dtype is DType.BOOL else "BitwiseNot", [x])


@_lower("aten.gelu.default")
def _gelu(cx: _Ctx, x: Value, *, approximate: str = "none") -> Value:
    return cx.emit("Gelu", [x], {"approximate": approximate})


@_lower("aten.silu.default")
def _silu(cx: _Ctx, x: Value) -> Value:
    return cx.emit("Mul", [x, cx.emit("Sigmoid", [x])])


@_lower("aten.hardsigmoid.default")
def _hardsigmoid(cx: _Ctx, x: Value) -> Value:
    return cx.emit("HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5})


def _clip(cx: _Ctx, x: Value, lo: Any, hi: Any) -> Value:
    dt = cx.odt()
    x = cx.cast(x, dt)
    if isinstance(lo, Value) or isinstance(hi, Value):
        if lo is not None:
            x = cx.emit("Max", [x, cx.operand(lo, dt)])
        if hi is not None:
            x = cx.emit("Min", [x, cx.operand(hi, dt)])
        return x
    ins = [x, None if lo is None else cx.scalar(lo, dt), None if hi is None else cx.scalar(hi, dt)]
    while ins[-1] is None:
        ins.pop()
    return cx.emit("Clip", ins)


@_lower("aten.hardtanh.default")
def _hardtanh(cx: _Ctx, x: Value, min_val: float = -1.0, max_val: float = 1.0) -> Value:
    return _clip(cx, x, min_val, max_val)


@_lower("aten.relu6.default")
def _relu6(cx: _Ctx, x: Value) -> Value:
    return _clip(cx, x, 0.0, 6.0)


@_lower("aten.clamp")
def _clamp(cx: _Ctx, x: Value, min: Any = None, max: Any = None) -> Value:
    return _clip(cx, x, min, max)


@_lower("aten.clamp_min")
def _clamp_min(cx: _Ctx, x: Value, min: Any) -> Value:
    return _clip(cx, x, min, None)


@_lower("aten.clamp_max")
def _clamp_max(cx: _Ctx, x: Value, max: Any) -> Value:
    return _clip(cx, x, None, max)


@_lower("aten.leaky_relu.default")
def _leaky_relu(cx: _Ctx, x: Value, negative_slope: float = 0.01) -> Value:
    return cx.emit("LeakyRelu", [x], {"alpha": float(negative_slope)})


@_lower("aten.elu.default")
def _elu(cx: _Ctx, x: Value, alpha: float = 1.0, scale: float = 1.0,
         input_scale: float = 1.0) -> Value:
    dt = x.dtype
    if input_scale == 1:
        y = cx.emit("Elu", [x], {"alpha": float(alpha)})
    else:  # torch scales only the negative branch's input
        neg = cx.emit("Mul", [cx.scalar(alpha, dt), cx.emit("Sub", [
            cx.emit("Exp", [cx.emit("Mul", [x, cx.scalar(input_scale, dt)])]),
            cx.scalar(1, dt)])])
        y = cx.emit("Where", [cx.emit("Greater", [x, cx.scalar(0, dt)], dtype=DType.BOOL), x,
                              neg])
    return y if scale == 1 else cx.emit("Mul", [y, cx.scalar(scale, dt)])


@_lower("aten.selu.default")
def _selu(cx: _Ctx, x: Value) -> Value:
    return cx.emit("Selu", [x])


@_lower("aten.celu.default")
def _celu(cx: _Ctx, x: Value, alpha: float = 1.0) -> Value:
    return cx.emit("Celu", [x], {"alpha": float(alpha)})


@_lower("aten.softplus.default")
def _softplus(cx: _Ctx, x: Value, beta: float = 1.0, threshold: float = 20.0) -> Value:
    # threshold only switches torch to the identity where softplus(x) == x in float anyway
    if beta == 1:
        return cx.emit("Softplus", [x])
    b = cx.scalar(beta, x.dtype)
    return cx.emit("Div", [cx.emit("Softplus", [cx.emit("Mul", [x, b])]), b])


@_lower("aten.log_sigmoid_forward.default")
def _log_sigmoid_forward(cx: _Ctx, x: Value) -> tuple:
    y = cx.emit("Neg", [cx.emit("Softplus", [cx.emit("Neg", [x])])])
    return (y, None)


@_lower("aten.log_sigmoid.default")
def _log_sigmoid(cx: _Ctx, x: Value) -> Value:
    return _log_sigmoid_forward(cx, x)[0]


@_lower("aten.glu.default")
def _glu(cx: _Ctx, x: Value, dim: int = -1) -> Value:
    r = _rank(x)
    half = _static(x.shape, "glu")[_axis(dim, r)] // 2
    a, b = cx.emit("Split", [x, cx.ints([half, half])], {"axis": _axis(dim, r)}, n=2)
    return cx.emit("Mul", [a, cx.emit("Sigmoid", [b])])


@_lower("aten.prelu.default", "aten._prelu_kernel.default")
def _prelu(cx: _Ctx, x: Value, weight: Value) -> Value:
    r = _rank(x)
    if weight.type.numel != 1 and r > 2:
        # torch applies the slope along dim 1; ONNX broadcasts from the right
        weight = cx.emit("Unsqueeze", [weight, cx.ints(list(range(1, r - 1)))])
    return cx.emit("PRelu", [x, weight])


@_lower("aten.threshold.default")
def _threshold(cx: _Ctx, x: Value, threshold: float, value: float) -> Value:
    gt = cx.emit("Greater", [x, cx.scalar(threshold, x.dtype)], dtype=DType.BOOL)
    return cx.emit("Where", [gt, x, cx.scalar(value, x.dtype)])


@_lower("aten.hardshrink.default")
def _hardshrink(cx: _Ctx, x: Value, lambd: float = 0.5) -> Value:
    return cx.emit("Shrink", [x], {"lambd": float(lambd), "bias": 0.0})


@_lower("aten.softshrink.default")
def _softshrink(cx: _Ctx, x: Value, lambd: float = 0.5) -> Value:
    return cx.emit("Shrink", [x], {"lambd": float(lambd), "bias": float(lambd)})


# -- binary ------------------------------------------------------------------------------------


def _result_dtype(cx: _Ctx) -> DType:
    """The dtype torch computes a binary op in (for comparisons, whose output is bool)."""
    import torch

    vals = []
    for i in range(2):
        v = cx.arg_val(i)
        if isinstance(v, (torch.SymInt, torch.SymBool)):
            v = 1
        elif isinstance(v, torch.SymFloat):
            v = 1.0
        vals.append(v)
    return _ir_dtype(torch.result_type(*vals))


def _arith(op: str, bool_op: str | None = None) -> Lowering:
    def lower(cx: _Ctx, a: Any, b: Any, *, alpha: Any = 1) -> Value:
        dt = cx.odt()
        if dt is DType.BOOL and bool_op is not None:
            return cx.emit(bool_op, [cx.operand(a, dt), cx.operand(b, dt)], dtype=dt)
        bv = cx.operand(b, dt)
        if alpha != 1:
            bv = cx.emit("Mul", [bv, cx.scalar(alpha, dt)])
        return cx.emit(op, [cx.operand(a, dt), bv], dtype=dt)

    return lower


LOWERINGS["aten.add"] = _arith("Add", "Or")
LOWERINGS["aten.sub"] = _arith("Sub")
LOWERINGS["aten.mul"] = _arith("Mul", "And")


@_lower("aten.rsub")
def _rsub(cx: _Ctx, a: Any, b: Any, *, alpha: Any = 1) -> Value:
    return _arith("Sub")(cx, b, a, alpha=alpha)


@_lower("aten.div")
def _div(cx: _Ctx, a: Any, b: Any, *, rounding_mode: str | None = None) -> Value:
    dt = cx.odt()
    av, bv = cx.operand(a, dt), cx.operand(b, dt)
    if rounding_mode is None or (rounding_mode == "trunc" and not dt.is_float):
        return cx.emit("Div", [av, bv], dtype=dt)  # ONNX integer Div truncates, as torch
    if rounding_mode == "trunc":
        return _trunc_value(cx, cx.emit("Div", [av, bv]))
    if dt.is_float:
        return cx.emit("Floor", [cx.emit("Div", [av, bv])])
    # floor division of integers: subtract the Python-style remainder, then divide exactly
    rem = cx.emit("Mod", [av, bv], {"fmod": 0})
    return cx.emit("Div", [cx.emit("Sub", [av, rem]), bv])


@_lower("aten.floor_divide")
def _floor_divide(cx: _Ctx, a: Any, b: Any) -> Value:
    return _div(cx, a, b, rounding_mode="floor")


@_lower("aten.remainder")
def _remainder(cx: _Ctx, a: Any, b: Any) -> Value:
    dt = cx.odt()
    av, bv = cx.operand(a, dt), cx.operand(b, dt)
    if not dt.is_float:
        return cx.emit("Mod", [av, bv], {"fmod": 0})
    # ONNX Mod needs fmod=1 for floats, which is C fmod: build Python's a - floor(a/b)*b
    q = cx.emit("Floor", [cx.emit("Div", [av, bv])])
    return cx.emit("Sub", [av, cx.emit("Mul", [q, bv])])


@_lower("aten.fmod")
def _fmod(cx: _Ctx, a: Any, b: Any) -> Value:
    dt = cx.odt()
    return cx.emit("Mod", [cx.operand(a, dt), cx.operand(b, dt)], {"fmod": 1})


@_lower("aten.pow")
def _pow(cx: _Ctx, a: Any, b: Any) -> Value:
    dt = cx.odt()
    return cx.emit("Pow", [cx.operand(a, dt), cx.operand(b, dt)], dtype=dt)


def _minmax(op: str) -> Lowering:
    def lower(cx: _Ctx, a: Any, b: Any) -> Value:
        dt = cx.odt()
        return cx.emit(op, [cx.operand(a, dt), cx.operand(b, dt)], dtype=dt)

    return lower


for _name, _op in (("maximum", "Max"), ("minimum", "Min"), ("fmax", "Max"), ("fmin", "Min")):
    LOWERINGS[f"aten.{_name}"] = _minmax(_op)
LOWERINGS["aten.max.other"] = _minmax("Max")
LOWERINGS["aten.min.other"] = _minmax("Min")


def _bitwise(op: str, bool_op: str) -> Lowering:
    def lower(cx: _Ctx, a: Any, b: Any) -> Value:
        dt = cx.odt()
        return cx.emit(bool_op if dt is DType.BOOL else op,
                       [cx.operand(a, dt), cx.operand(b, dt)], dtype=dt)

    return lower


LOWERINGS["aten.bitwise_and"] = _bitwise("BitwiseAnd", "And")
LOWERINGS["aten.bitwise_or"] = _bitwise("BitwiseOr", "Or")
LOWERINGS["aten.bitwise_xor"] = _bitwise("BitwiseXor", "Xor")


def _logical(op: str) -> Lowering:
    def lower(cx: _Ctx, a: Value, b: Value) -> Value:
        out = cx.emit(op, [_to_bool(cx, a), _to_bool(cx, b)], dtype=DType.BOOL)
        return cx.cast(out, cx.odt())

    return lower


LOWERINGS["aten.logical_and.default"] = _logical("And")
LOWERINGS["aten.logical_or.default"] = _logical("Or")
LOWERINGS["aten.logical_xor.default"] = _logical("Xor")


def _compare(op: str, negate: bool = False) -> Lowering:
    def lower(cx: _Ctx, a: Any, b: Any) -> Value:
        dt = _result_dtype(cx)
        if dt is DType.BOOL and op != "Equal":
            dt = DType.I32  # ONNX orders numbers only
        y = cx.emit(op, [cx.operand(a, dt), cx.operand(b, dt)], dtype=DType.BOOL)
        return cx.emit("Not", [y]) if negate else y

    return lower


for _name, _op, _neg in (("eq", "Equal", False), ("ne", "Equal", True), ("lt", "Less", False),
                         ("le", "LessOrEqual", False), ("gt", "Greater", False),
                         ("ge", "GreaterOrEqual", False)):
    LOWERINGS[f"aten.{_name}.Tensor"] = _compare(_op, _neg)
    LOWERINGS[f"aten.{_name}.Scalar"] = _compare(_op, _neg)


@_lower("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther",
        "aten.where.Scalar")
def _where(cx: _Ctx, cond: Value, a: Any, b: Any) -> Value:
    dt = cx.odt()
    return cx.emit("Where", [_to_bool(cx, cond), cx.operand(a, dt), cx.operand(b, dt)], dtype=dt)


@_lower("aten.masked_fill")
def _masked_fill(cx: _Ctx, x: Value, mask: Value, value: Any) -> Value:
    dt = cx.odt()
    return cx.emit("Where", [_to_bool(cx, mask), cx.operand(value, dt), cx.cast(x, dt)])


@_lower("aten.lerp")
def _lerp(cx: _Ctx, a: Value, b: Value, weight: Any) -> Value:
    dt = cx.odt()
    a, b = cx.cast(a, dt), cx.cast(b, dt)
    step = cx.emit("Mul", [cx.operand(weight, dt), cx.emit("Sub", [b, a])])
    return cx.emit("Add", [a, step])


@_lower("aten.addcmul.default", "aten.addcdiv.default")
def _addc(cx: _Ctx, x: Value, t1: Value, t2: Value, *, value: Any = 1) -> Value:
    dt = cx.odt()
    op = "Mul" if "addcmul" in str(cx.fx.target) else "Div"
    prod = cx.emit(op, [cx.cast(t1, dt), cx.cast(t2, dt)])
    if value != 1:
        prod = cx.emit("Mul", [prod, cx.scalar(value, dt)])
    return cx.emit("Add", [cx.cast(x, dt), prod])


# -- conversions, copies, creation ---------------------------------------------------------------


@_lower("aten.clone.default", "aten.alias.default", "aten.contiguous.default",
        "aten.detach.default", "aten.lift_fresh_copy.default", "aten.lift_fresh.default",
        "aten.alias_copy.default", "aten.detach_copy.default", "aten.dropout.default",
        "aten.feature_dropout.default", "aten.alpha_dropout.default",
        "aten.feature_alpha_dropout.default", "aten.positive.default",
        "aten.resolve_conj.default", "aten.resolve_neg.default")
def _identity(cx: _Ctx, x: Value, *_: Any, **__: Any) -> Value:
    return x


@_lower("aten.native_dropout.default")
def _native_dropout(cx: _Ctx, x: Value, p: float, train: bool | None) -> tuple:
    if train:
        raise UnsupportedOpError("dropout in training mode")
    mask = cx.param_ones(_static(x.shape, "native_dropout"), DType.BOOL)
    return (x, mask)


@_lower("aten._to_copy.default", "aten.to", "aten.type_as.default",
        "aten._to_dim_order_copy.default")
def _to_copy(cx: _Ctx, x: Value, *_: Any, **__: Any) -> Value:
    return cx.cast(x, cx.odt())


def _fill(cx: _Ctx, value: Any, like: Value | None = None, sizes: Sequence[Any] | None = None
          ) -> Value:
    """A tensor of the node's output shape and dtype filled with ``value``."""
    dt = cx.odt()
    shape = cx.oshape()
    if isinstance(value, Value):
        v = cx.cast(value, dt)
    elif all(isinstance(d, int) for d in shape):
        return cx.const(np.full(shape, value, dtype=dt.numpy))
    else:
        v = cx.operand(value, dt)
    if like is not None:
        target = cx.emit("Shape", [like], dtype=DType.I64, shape=(len(shape),))
    elif sizes is not None:
        target = cx.shape_input(sizes)
    else:
        raise UnsupportedOpError(f"a fill of dynamic shape {list(shape)} without sizes")
    return cx.emit("Expand", [v, target])


@_lower("aten.full.default")
def _full(cx: _Ctx, size: Sequence[Any], fill_value: Any, **_: Any) -> Value:
    return _fill(cx, fill_value, sizes=size)


@_lower("aten.new_full.default")
def _new_full(cx: _Ctx, x: Value, size: Sequence[Any], fill_value: Any, **_: Any) -> Value:
    return _fill(cx, fill_value, sizes=size)


@_lower("aten.zeros.default", "aten.empty.memory_format", "aten.empty_strided.default")
def _zeros(cx: _Ctx, size: Sequence[Any], *_: Any, **__: Any) -> Value:
    return _fill(cx, 0, sizes=size)


@_lower("aten.new_zeros.default", "aten.new_empty.default", "aten.new_empty_strided.default")
def _new_zeros(cx: _Ctx, x: Value, size: Sequence[Any], *_: Any, **__: Any) -> Value:
    return _fill(cx, 0, sizes=size)


@_lower("aten.ones.default")
def _ones(cx: _Ctx, size: Sequence[Any], *_: Any, **__: Any) -> Value:
    return _fill(cx, 1, sizes=size)


@_lower("aten.new_ones.default")
def _new_ones(cx: _Ctx, x: Value, size: Sequence[Any], *_: Any, **__: Any) -> Value:
    return _fill(cx, 1, sizes=size)


@_lower("aten.zeros_like.default", "aten.empty_like.default")
def _zeros_like(cx: _Ctx, x: Value, *_: Any, **__: Any) -> Value:
    return _fill(cx, 0, like=x)


@_lower("aten.ones_like.default")
def _ones_like(cx: _Ctx, x: Value, *_: Any, **__: Any) -> Value:
    return _fill(cx, 1, like=x)


@_lower("aten.full_like.default")
def _full_like(cx: _Ctx, x: Value, value: Any, *_: Any, **__: Any) -> Value:
    return _fill(cx, value, like=x)


@_lower("aten.fill.Scalar", "aten.fill.Tensor")
def _fill_op(cx: _Ctx, x: Value, value: Any) -> Value:
    return _fill(cx, value, like=x)


@_lower("aten.scalar_tensor.default")
def _scalar_tensor(cx: _Ctx, value: Any, **_: Any) -> Value:
    return cx.operand(value, cx.odt())


@_lower("aten.copy.default")
def _copy(cx: _Ctx, x: Value, src: Value, non_blocking: bool = False) -> Value:
    v = cx.cast(src, cx.odt())
    if x.shape is not None and x.shape == src.shape:
        return v
    return cx.emit("Expand", [v, cx.emit("Shape", [x], dtype=DType.I64)])


@_lower("aten.arange")
def _arange(cx: _Ctx, *args: Any, **_: Any) -> Value:
    nums = [a for a in args if isinstance(a, (int, float, _Sym))]
    start: Any = 0
    step: Any = 1
    end: Any
    if len(nums) == 1:
        (end,) = nums
    elif len(nums) == 2:
        start, end = nums
    else:
        start, end, step = nums[:3]
    dt = cx.odt()
    n = cx.oshape()[0]
    if isinstance(n, int) and not any(isinstance(a, _Sym) for a in (start, end, step)):
        # torch computes start + i * step in double precision, then rounds to the dtype
        return cx.const((np.arange(n, dtype=np.float64) * step + start).astype(dt.numpy))
    return cx.emit("Range", [cx.operand(start, dt), cx.operand(end, dt), cx.operand(step, dt)],
                   dtype=dt)


@_lower("aten.linspace.default")
def _linspace(cx: _Ctx, start: float, end: float, steps: int, **_: Any) -> Value:
    return cx.const(np.linspace(start, end, steps, dtype=np.float64).astype(cx.odt().numpy))


# -- matmul and convolution -----------------------------------------------------------------------


@_lower("aten.mm.default", "aten.bmm.default", "aten.matmul.default", "aten.mv.default",
        "aten.dot.default")
def _matmul(cx: _Ctx, a: Value, b: Value) -> Value:
    return cx.emit("MatMul", [a, b])


@_lower("aten.addmm.default")
def _addmm(cx: _Ctx, bias: Value, a: Value, b: Value, *, beta: Any = 1, alpha: Any = 1) -> Value:
    if not a.dtype.is_float:
        return _baddbmm(cx, bias, a, b, beta=beta, alpha=alpha)
    return cx.emit("Gemm", [a, b, bias], {"alpha": float(alpha), "beta": float(beta)})


@_lower("aten.baddbmm.default")
def _baddbmm(cx: _Ctx, bias: Value, a: Value, b: Value, *, beta: Any = 1, alpha: Any = 1
             ) -> Value:
    mm = cx.emit("MatMul", [a, b])
    if alpha != 1:
        mm = cx.emit("Mul", [mm, cx.scalar(alpha, mm.dtype)])
    if beta == 0:
        return mm
    if beta != 1:
        bias = cx.emit("Mul", [bias, cx.scalar(beta, bias.dtype)])
    return cx.emit("Add", [mm, bias])


@_lower("aten.linear.default")
def _linear(cx: _Ctx, x: Value, w: Value, b: Value | None = None) -> Value:
    if x.type.rank == 2 and x.dtype.is_float:
        return cx.emit("Gemm", [x, w] + ([b] if b is not None else []), {"transB": 1})
    wt = cx.emit("Transpose", [w], {"perm": [1, 0]} if w.type.rank == 2 else {})
    y = cx.emit("MatMul", [x, wt])
    return y if b is None else cx.emit("Add", [y, b])


@_lower("aten.einsum.default")
def _einsum(cx: _Ctx, equation: str, tensors: Sequence[Value], path: Any = None) -> Value:
    return cx.emit("Einsum", list(tensors), {"equation": equation.replace(" ", "")})


def _conv_attrs(w: Value, stride: Any, padding: Any, dilation: Any, groups: int) -> dict:
    nd = _rank(w) - 2
    k = list(w.shape[2:]) if w.shape is not None else None
    dil = _tup(dilation, nd)
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0] * (2 * nd)
        else:  # "same": torch puts the odd extra padding at the end
            ks = _static(k, "conv padding='same'")
            total = [d * (kk - 1) for d, kk in zip(dil, ks)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    else:
        p = _tup(padding, nd)
        pads = p + p
    attrs = {"strides": _tup(stride, nd), "pads": pads, "dilations": dil, "group": int(groups)}
    if k is not None and all(isinstance(d, int) for d in k):
        attrs["kernel_shape"] = k
    return attrs


def _conv(cx: _Ctx, x: Value, w: Value, b: Value | None, stride: Any, padding: Any,
          dilation: Any, groups: int) -> Value:
    return cx.emit("Conv", [x, w] + ([b] if b is not None else []),
                   _conv_attrs(w, stride, padding, dilation, groups))


def _conv_transpose(cx: _Ctx, x: Value, w: Value, b: Value | None, stride: Any, padding: Any,
                    output_padding: Any, groups: int, dilation: Any) -> Value:
    nd = _rank(w) - 2
    attrs = _conv_attrs(w, stride, padding, dilation, groups)
    attrs.pop("kernel_shape", None)  # ConvTranspose kernels are [Cin, Cout/g, k...]
    if w.shape is not None and all(isinstance(d, int) for d in w.shape[2:]):
        attrs["kernel_shape"] = list(w.shape[2:])
    if any(_tup(output_padding, nd)):
        attrs["output_padding"] = _tup(output_padding, nd)
    return cx.emit("ConvTranspose", [x, w] + ([b] if b is not None else []), attrs)


@_lower("aten.convolution.default")
def _convolution(cx: _Ctx, x: Value, w: Value, b: Value | None, stride: Any, padding: Any,
                 dilation: Any, transposed: bool, output_padding: Any, groups: int) -> Value:
    if transposed:
        return _conv_transpose(cx, x, w, b, stride, padding, output_padding, groups, dilation)
    return _conv(cx, x, w, b, stride, padding, dilation, groups)


@_lower("aten.conv1d", "aten.conv2d", "aten.conv3d")
def _convnd(cx: _Ctx, x: Value, w: Value, b: Value | None = None, stride: Any = 1,
            padding: Any = 0, dilation: Any = 1, groups: int = 1) -> Value:
    return _conv(cx, x, w, b, stride, padding, dilation, groups)


@_lower("aten.conv_transpose1d", "aten.conv_transpose2d", "aten.conv_transpose3d")
def _conv_transpose_nd(cx: _Ctx, x: Value, w: Value, b: Value | None = None, stride: Any = 1,
                       padding: Any = 0, output_padding: Any = 0, groups: int = 1,
                       dilation: Any = 1) -> Value:
    return _conv_transpose(cx, x, w, b, stride, padding, output_padding, groups, dilation)


# -- normalization ------------------------------------------------------------------------------


def _layer_norm(cx: _Ctx, x: Value, normalized_shape: Sequence[int], weight: Value | None,
                bias: Value | None, eps: float, n: int) -> Any:
    k = len(normalized_shape)
    if weight is None:
        weight = cx.param_ones(list(normalized_shape), x.dtype)
    ins = [x, weight] + ([bias] if bias is not None else [])
    return cx.emit("LayerNormalization", ins, {"axis": -k, "epsilon": float(eps)}, n=n,
                   dtypes=[x.dtype, DType.F32, DType.F32][:n])


@_lower("aten.native_layer_norm.default")
def _native_layer_norm(cx: _Ctx, x: Value, normalized_shape: Sequence[int],
                       weight: Value | None, bias: Value | None, eps: float) -> tuple:
    if not cx.used_outputs() & {1, 2}:
        return (_layer_norm(cx, x, normalized_shape, weight, bias, eps, 1), None, None)
    y, mean, rstd = _layer_norm(cx, x, normalized_shape, weight, bias, eps, 3)
    # ONNX keeps the statistics in float32 (stash_type=1); torch may use the input's dtype
    return (y, cx.cast(mean, cx.odt(1)), cx.cast(rstd, cx.odt(2)))


@_lower("aten.layer_norm.default")
def _layer_norm_op(cx: _Ctx, x: Value, normalized_shape: Sequence[int],
                   weight: Value | None = None, bias: Value | None = None, eps: float = 1e-5,
                   cudnn_enable: bool = True) -> Value:
    return _layer_norm(cx, x, normalized_shape, weight, bias, eps, 1)


@_lower("aten.rms_norm.default")
def _rms_norm(cx: _Ctx, x: Value, normalized_shape: Sequence[int], weight: Value | None = None,
              eps: float | None = None) -> Value:
    import torch

    dt = x.dtype
    if eps is None:
        eps = float(torch.finfo(cx.val.dtype).eps)
    axes = cx.ints(list(range(-len(normalized_shape), 0)))
    ms = cx.emit("ReduceMean", [cx.emit("Mul", [x, x]), axes], {"keepdims": 1})
    inv = cx.emit("Reciprocal", [cx.emit("Sqrt", [cx.emit("Add", [ms, cx.scalar(eps, dt)])])])
    y = cx.emit("Mul", [x, inv])
    return y if weight is None else cx.emit("Mul", [y, weight])


def _group_norm(cx: _Ctx, x: Value, groups: int, weight: Value | None, bias: Value | None,
                eps: float, want_stats: bool) -> tuple:
    r = _rank(x)
    dt = x.dtype
    # [N, C, *] -> [N, G, C/G * prod(*)]: InstanceNormalization then normalizes each group
    xr = cx.emit("Reshape", [x, cx.ints([0, groups, -1])])
    ones, zeros = cx.param_ones([groups], dt), cx.param_ones([groups], dt, 0.0)
    y = cx.emit("InstanceNormalization", [xr, ones, zeros], {"epsilon": float(eps)})
    y = cx.emit("Reshape", [y, cx.target_shape(x, x.shape or ())])
    axes = cx.ints(list(range(1, r - 1)))
    if weight is not None:
        y = cx.emit("Mul", [y, cx.emit("Unsqueeze", [weight, axes]) if r > 2 else weight])
    if bias is not None:
        y = cx.emit("Add", [y, cx.emit("Unsqueeze", [bias, axes]) if r > 2 else bias])
    if not want_stats:
        return (y, None, None)
    two = cx.ints([2])
    mean = cx.emit("ReduceMean", [xr, two], {"keepdims": 1})
    d = cx.emit("Sub", [xr, mean])
    var = cx.emit("ReduceMean", [cx.emit("Mul", [d, d]), two], {"keepdims": 0})
    rstd = cx.emit("Reciprocal", [cx.emit("Sqrt", [cx.emit("Add", [var,
                                                                   cx.scalar(eps, dt)])])])
    return (y, cx.emit("Squeeze", [mean, two]), rstd)


@_lower("aten.native_group_norm.default")
def _native_group_norm(cx: _Ctx, x: Value, weight: Value | None, bias: Value | None, N: Any,
                       C: Any, HxW: Any, group: int, eps: float) -> tuple:
    return _group_norm(cx, x, group, weight, bias, eps, bool(cx.used_outputs() & {1, 2}))


@_lower("aten.group_norm.default")
def _group_norm_op(cx: _Ctx, x: Value, num_groups: int, weight: Value | None = None,
                   bias: Value | None = None, eps: float = 1e-5, cudnn_enabled: bool = True
                   ) -> Value:
    return _group_norm(cx, x, num_groups, weight, bias, eps, False)[0]


def _batch_norm(cx: _Ctx, x: Value, weight: Value | None, bias: Value | None, mean: Value,
                var: Value, eps: float) -> Value:
    c = _static(mean.shape, "batch_norm statistics")
    if weight is None:
        weight = cx.param_ones(c, mean.dtype)
    if bias is None:
        bias = cx.param_ones(c, mean.dtype, 0.0)
    return cx.emit("BatchNormalization", [x, weight, bias, mean, var], {"epsilon": float(eps)})


@_lower("aten._native_batch_norm_legit_no_training.default")
def _bn_no_training(cx: _Ctx, x: Value, weight: Value | None, bias: Value | None,
                    running_mean: Value, running_var: Value, momentum: float, eps: float
                    ) -> tuple:
    y = _batch_norm(cx, x, weight, bias, running_mean, running_var, eps)
    if cx.used_outputs() & {1, 2}:
        empty = cx.const(np.zeros((0,), dtype=x.dtype.numpy))
        return (y, empty, empty)
    return (y, None, None)


def _batch_stats_norm(cx: _Ctx, x: Value, weight: Value | None, bias: Value | None,
                      eps: float) -> tuple:
    """Batch norm with the batch's own statistics (training mode, or instance norm after
    decomposition): per channel over every other dim. Running stats are not updated."""
    r = _rank(x)
    dt = x.dtype
    axes = cx.ints([0, *range(2, r)])
    mean = cx.emit("ReduceMean", [x, axes], {"keepdims": 1})
    d = cx.emit("Sub", [x, mean])
    var = cx.emit("ReduceMean", [cx.emit("Mul", [d, d]), axes], {"keepdims": 1})
    rstd = cx.emit("Reciprocal", [cx.emit("Sqrt", [cx.emit("Add", [var, cx.scalar(eps, dt)])])])
    y = cx.emit("Mul", [d, rstd])
    chan = cx.ints(list(range(1, r - 1)))
    if weight is not None:
        y = cx.emit("Mul", [y, cx.emit("Unsqueeze", [weight, chan]) if r > 2 else weight])
    if bias is not None:
        y = cx.emit("Add", [y, cx.emit("Unsqueeze", [bias, chan]) if r > 2 else bias])
    if not cx.used_outputs() & {1, 2}:
        return (y, None, None)
    return (y, cx.emit("Squeeze", [mean, axes]), cx.emit("Squeeze", [rstd, axes]))


@_lower("aten._native_batch_norm_legit.no_stats")
def _bn_legit_no_stats(cx: _Ctx, x: Value, weight: Value | None, bias: Value | None,
                       training: bool, momentum: float, eps: float) -> tuple:
    return _batch_stats_norm(cx, x, weight, bias, eps)


@_lower("aten._native_batch_norm_legit.default")
def _bn_legit(cx: _Ctx, x: Value, weight: Value | None, bias: Value | None,
              running_mean: Value, running_var: Value, training: bool, momentum: float,
              eps: float) -> tuple:
    if training:
        return _batch_stats_norm(cx, x, weight, bias, eps)
    return _bn_no_training(cx, x, weight, bias, running_mean, running_var, momentum, eps)


@_lower("aten.batch_norm.default")
def _batch_norm_op(cx: _Ctx, x: Value, weight: Value | None, bias: Value | None,
                   running_mean: Value | None, running_var: Value | None, training: bool,
                   momentum: float, eps: float, cudnn_enabled: bool = True) -> Value:
    if training or running_mean is None or running_var is None:
        raise UnsupportedOpError("batch norm with batch statistics (training mode)")
    return _batch_norm(cx, x, weight, bias, running_mean, running_var, eps)


@_lower("aten.instance_norm.default")
def _instance_norm(cx: _Ctx, x: Value, weight: Value | None, bias: Value | None,
                   running_mean: Value | None, running_var: Value | None, use_input_stats: bool,
                   momentum: float, eps: float, cudnn_enabled: bool = True) -> Value:
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise UnsupportedOpError("instance norm without input statistics or running stats")
        return _batch_norm(cx, x, weight, bias, running_mean, running_var, eps)
    c = _static(x.shape, "instance_norm")[1]
    w = weight if weight is not None else cx.param_ones([c], x.dtype)
    b = bias if bias is not None else cx.param_ones([c], x.dtype, 0.0)
    return cx.emit("InstanceNormalization", [x, w, b], {"epsilon": float(eps)})


# -- softmax and attention ----------------------------------------------------------------------


@_lower("aten._softmax.default", "aten.softmax.int")
def _softmax(cx: _Ctx, x: Value, dim: int, *_: Any, **__: Any) -> Value:
    return cx.emit("Softmax", [cx.cast(x, cx.odt())], {"axis": _axis(dim, x.type.rank)})


@_lower("aten._log_softmax.default", "aten.log_softmax.int")
def _log_softmax(cx: _Ctx, x: Value, dim: int, *_: Any, **__: Any) -> Value:
    return cx.emit("LogSoftmax", [cx.cast(x, cx.odt())], {"axis": _axis(dim, x.type.rank)})


@_lower("aten._safe_softmax.default")
def _safe_softmax(cx: _Ctx, x: Value, dim: int, dtype: Any = None) -> Value:
    y = cx.emit("Softmax", [cx.cast(x, cx.odt())], {"axis": _axis(dim, x.type.rank)})
    # rows that are entirely -inf give NaN in ONNX and 0 in torch
    return cx.emit("Where", [cx.emit("IsNaN", [y], dtype=DType.BOOL), cx.scalar(0, y.dtype), y])


def _repeat_heads(cx: _Ctx, x: Value, reps: int) -> Value:
    """``repeat_interleave(x, reps, dim=-3)`` for grouped-query attention."""
    shape = _static(x.shape, "grouped-query attention")
    r = len(shape)
    u = cx.emit("Unsqueeze", [x, cx.ints([r - 2])])
    e = cx.emit("Expand", [u, cx.ints([1] * (r - 2) + [reps, 1, 1])])
    out = [*shape[:-3], shape[-3] * reps, shape[-2], shape[-1]]
    return cx.emit("Reshape", [e, cx.ints(out)], shape=tuple(out))


def _attention(cx: _Ctx, q: Value, k: Value, v: Value, attn_mask: Value | None,
               is_causal: bool, scale: float | None, enable_gqa: bool = False) -> Value:
    dt = q.dtype
    r = _rank(q)
    e = q.shape[-1] if q.shape else None
    if scale is None:
        if not isinstance(e, int):
            raise UnsupportedOpError("attention with a dynamic head size needs an explicit scale")
        scale = 1.0 / math.sqrt(e)
    if enable_gqa and q.shape and k.shape and q.shape[-3] != k.shape[-3]:
        hq, hk = q.shape[-3], k.shape[-3]
        if not (isinstance(hq, int) and isinstance(hk, int)):
            raise UnsupportedOpError("grouped-query attention with dynamic head counts")
        k, v = _repeat_heads(cx, k, hq // hk), _repeat_heads(cx, v, hq // hk)
    perm = [*list(range(r - 2)), r - 1, r - 2]
    kt = cx.emit("Transpose", [k], {"perm": perm})
    s = cx.emit("Mul", [cx.emit("MatMul", [q, kt]), cx.scalar(scale, dt)])
    if is_causal:
        lq, lk = (q.shape or (None, None))[-2], (k.shape or (None, None))[-2]
        if isinstance(lq, int) and isinstance(lk, int):
            keep = cx.const(np.tril(np.ones((lq, lk), dtype=bool)))
        else:
            size = cx.emit("Concat", [cx.dim_of(q, r - 2).v, cx.dim_of(k, _rank(k) - 2).v],
                           {"axis": 0}, dtype=DType.I64, shape=(2,))
            ones = cx.emit("ConstantOfShape", [size], {"value": np.array([True])},
                           dtype=DType.BOOL)
            keep = cx.emit("Trilu", [ones], {"upper": 0})
        s = cx.emit("Where", [keep, s, cx.scalar(-np.inf, dt)])
    if attn_mask is not None:
        if attn_mask.dtype is DType.BOOL:
            s = cx.emit("Where", [attn_mask, s, cx.scalar(-np.inf, dt)])
        else:
            s = cx.emit("Add", [s, cx.cast(attn_mask, dt)])
    p = cx.emit("Softmax", [s], {"axis": -1})
    if attn_mask is not None and attn_mask.dtype is DType.BOOL:
        p = cx.emit("Where", [cx.emit("IsNaN", [p], dtype=DType.BOOL), cx.scalar(0, dt), p])
    return cx.emit("MatMul", [p, v])


@_lower("aten.scaled_dot_product_attention.default")
def _sdpa(cx: _Ctx, q: Value, k: Value, v: Value, attn_mask: Value | None = None,
          dropout_p: float = 0.0, is_causal: bool = False, *, scale: float | None = None,
          enable_gqa: bool = False) -> Value:
    return _attention(cx, q, k, v, attn_mask, is_causal, scale, enable_gqa)


@_lower("aten._scaled_dot_product_flash_attention_for_cpu.default")
def _sdpa_flash_cpu(cx: _Ctx, q: Value, k: Value, v: Value, dropout_p: float = 0.0,
                    is_causal: bool = False, *, attn_mask: Value | None = None,
                    scale: float | None = None) -> tuple:
    if cx.used_outputs() - {0}:
        raise UnsupportedOpError("the logsumexp output of flash attention")
    return (_attention(cx, q, k, v, attn_mask, is_causal, scale), None)


# -- pooling and resampling ---------------------------------------------------------------------


def _pool_attrs(nd: int, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
                dilation: Any = None) -> dict:
    k = _tup(kernel_size, nd)
    s = _tup(stride, nd) if stride not in (None, [], ()) else k
    p = _tup(padding, nd)
    attrs = {"kernel_shape": k, "strides": s, "pads": p + p, "ceil_mode": int(bool(ceil_mode))}
    if dilation is not None:
        attrs["dilations"] = _tup(dilation, nd)
    return attrs


def _max_pool(nd: int, with_indices: bool) -> Lowering:
    def lower(cx: _Ctx, x: Value, kernel_size: Any, stride: Any = (), padding: Any = 0,
              dilation: Any = 1, ceil_mode: bool = False) -> Any:
        attrs = _pool_attrs(nd, kernel_size, stride, padding, ceil_mode, dilation)
        if not with_indices:
            return cx.emit("MaxPool", [x], attrs)
        if 1 not in cx.used_outputs():
            return (cx.emit("MaxPool", [x], attrs), None)
        y, idx = cx.emit("MaxPool", [x], attrs, dtypes=[x.dtype, DType.I64])
        # ONNX flattens indices over the whole tensor, torch over each (n, c) plane
        shape = _static(x.shape, "max pool indices")
        plane = int(np.prod(shape[2:]))
        base = (np.arange(shape[0] * shape[1], dtype=np.int64) * plane).reshape(
            shape[:2] + [1] * nd)
        return (y, cx.emit("Sub", [idx, cx.const(base)]))

    return lower


for _nd in (1, 2, 3):
    LOWERINGS[f"aten.max_pool{_nd}d.default"] = _max_pool(_nd, False)
    LOWERINGS[f"aten.max_pool{_nd}d_with_indices.default"] = _max_pool(_nd, True)


def _avg_pool(nd: int) -> Lowering:
    def lower(cx: _Ctx, x: Value, kernel_size: Any, stride: Any = (), padding: Any = 0,
              ceil_mode: bool = False, count_include_pad: bool = True,
              divisor_override: int | None = None) -> Value:
        if divisor_override is not None:
            raise UnsupportedOpError("avg_pool with divisor_override")
        attrs = _pool_attrs(nd, kernel_size, stride, padding, ceil_mode)
        attrs["count_include_pad"] = int(bool(count_include_pad))
        return cx.emit("AveragePool", [x], attrs)

    return lower


for _nd in (1, 2, 3):
    LOWERINGS[f"aten.avg_pool{_nd}d.default"] = _avg_pool(_nd)


def _adaptive_pool(op: str, with_indices: bool) -> Lowering:
    def lower(cx: _Ctx, x: Value, output_size: Sequence[int]) -> Any:
        r = _rank(x)
        out = _tup(output_size, r - 2)
        if all(o == 1 for o in out):
            y = cx.emit(f"Global{op}", [x])
        else:
            ins = _static(x.shape, f"adaptive {op}")[2:]
            if any(i % o for i, o in zip(ins, out)):
                raise UnsupportedOpError(f"adaptive pooling from {ins} to {out} (not a divisor)")
            k = [i // o for i, o in zip(ins, out)]
            y = cx.emit(op, [x], {"kernel_shape": k, "strides": k})
        if with_indices:
            if 1 in cx.used_outputs():
                raise UnsupportedOpError("the indices of adaptive max pooling")
            return (y, None)
        return y

    return lower


for _nd in (1, 2, 3):
    LOWERINGS[f"aten.adaptive_avg_pool{_nd}d.default"] = _adaptive_pool("AveragePool", False)
    LOWERINGS[f"aten._adaptive_avg_pool{_nd}d.default"] = _adaptive_pool("AveragePool", False)
    LOWERINGS[f"aten.adaptive_max_pool{_nd}d.default"] = _adaptive_pool("MaxPool", True)


def _resize(cx: _Ctx, x: Value, scales: Sequence[float] | None, attrs: dict) -> Value:
    r = _rank(x)
    if scales is not None and all(s is not None for s in scales) and len(scales) == r - 2:
        sc = cx.const(np.array([1.0, 1.0, *scales], dtype=np.float32))
        return cx.emit("Resize", [x, None, sc], attrs)
    size = cx.target_shape(x, cx.oshape(), infer=False)
    return cx.emit("Resize", [x, None, None, size], attrs)


def _scales(scale_args: Sequence[Any]) -> list[float] | None:
    if any(s is None for s in scale_args):
        return None
    return [float(s) for s in scale_args]


_NEAREST = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "floor"}
_NEAREST_EXACT = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                  "nearest_mode": "round_prefer_ceil"}


def _upsample_nearest(attrs: dict) -> Lowering:
    def lower(cx: _Ctx, x: Value, output_size: Any = None, *scales: Any) -> Value:
        if len(scales) == 1 and (scales[0] is None or isinstance(scales[0], (list, tuple))):
            sc = None if scales[0] is None else _scales(scales[0])  # the .vec overload
        else:
            sc = _scales(scales) if scales else None
        return _resize(cx, x, sc, attrs)

    return lower


def _upsample_linear(mode: str) -> Lowering:
    def lower(cx: _Ctx, x: Value, output_size: Any, align_corners: bool, *scales: Any) -> Value:
        attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode":
                                 "align_corners" if align_corners else "pytorch_half_pixel"}
        if mode == "cubic":
            attrs["cubic_coeff_a"] = -0.75
        if len(scales) == 1 and (scales[0] is None or isinstance(scales[0], (list, tuple))):
            sc = None if scales[0] is None else _scales(scales[0])
        else:
            sc = _scales(scales) if scales else None
        if align_corners:
            sc = None  # align_corners maps by sizes only
        return _resize(cx, x, sc, attrs)

    return lower


for _nd, _lin in ((1, "linear1d"), (2, "bilinear2d"), (3, "trilinear3d")):
    LOWERINGS[f"aten.upsample_nearest{_nd}d"] = _upsample_nearest(_NEAREST)
    LOWERINGS[f"aten._upsample_nearest_exact{_nd}d"] = _upsample_nearest(_NEAREST_EXACT)
    LOWERINGS[f"aten.upsample_{_lin}"] = _upsample_linear("linear")
LOWERINGS["aten.upsample_bicubic2d"] = _upsample_linear("cubic")


@_lower("aten.grid_sampler_2d.default", "aten.grid_sampler.default")
def _grid_sampler(cx: _Ctx, x: Value, grid: Value, interpolation_mode: int, padding_mode: int,
                  align_corners: bool) -> Value:
    return cx.emit("GridSample", [x, grid], {
        "mode": ("linear", "nearest", "cubic")[interpolation_mode],
        "padding_mode": ("zeros", "border", "reflection")[padding_mode],
        "align_corners": int(bool(align_corners))})


@_lower("aten.affine_grid_generator.default")
def _affine_grid(cx: _Ctx, theta: Value, size: Sequence[int], align_corners: bool) -> Value:
    return cx.emit("AffineGrid", [theta, cx.shape_input(size)],
                   {"align_corners": int(bool(align_corners))})


@_lower("aten.pixel_shuffle.default")
def _pixel_shuffle(cx: _Ctx, x: Value, upscale_factor: int) -> Value:
    return cx.emit("DepthToSpace", [x], {"blocksize": int(upscale_factor), "mode": "CRD"})


@_lower("aten.pixel_unshuffle.default")
def _pixel_unshuffle(cx: _Ctx, x: Value, downscale_factor: int) -> Value:
    n, c, h, w = _static(x.shape, "pixel_unshuffle")
    f = downscale_factor
    y = cx.emit("Reshape", [x, cx.ints([n, c, h // f, f, w // f, f])])
    y = cx.emit("Transpose", [y], {"perm": [0, 1, 3, 5, 2, 4]})
    return cx.emit("Reshape", [y, cx.ints([n, c * f * f, h // f, w // f])])


# -- shape and data movement ---------------------------------------------------------------------


@_lower("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default",
        "aten.view_copy.default", "aten._reshape_alias.default")
def _view(cx: _Ctx, x: Value, size: Sequence[Any], *_: Any) -> Value:
    shape = cx.oshape()
    if x.shape == shape:
        return x
    attrs = {"allowzero": 1} if any(d == 0 for d in shape) else {}
    return cx.emit("Reshape", [x, cx.target_shape(x, shape, size)], attrs)


@_lower("aten.flatten.using_ints", "aten.unflatten.int", "aten.view.dtype")
def _reshape_to_output(cx: _Ctx, x: Value, *_: Any) -> Value:
    if cx.odt() is not x.dtype:
        raise UnsupportedOpError("reinterpreting a tensor as another dtype")
    shape = cx.oshape()
    if x.shape == shape:
        return x
    return cx.emit("Reshape", [x, cx.target_shape(x, shape)])


@_lower("aten.permute.default", "aten.permute_copy.default")
def _permute(cx: _Ctx, x: Value, dims: Sequence[int]) -> Value:
    r = len(dims)
    perm = [_axis(d, r) for d in dims]
    if perm == list(range(r)):
        return x
    return cx.emit("Transpose", [x], {"perm": perm})


@_lower("aten.transpose.int", "aten.transpose_copy.int", "aten.swapaxes.default")
def _transpose(cx: _Ctx, x: Value, dim0: int, dim1: int) -> Value:
    r = _rank(x)
    perm = list(range(r))
    a, b = _axis(dim0, r), _axis(dim1, r)
    if a == b:
        return x
    perm[a], perm[b] = perm[b], perm[a]
    return cx.emit("Transpose", [x], {"perm": perm})


@_lower("aten.t.default", "aten.t_copy.default", "aten.numpy_T.default")
def _t(cx: _Ctx, x: Value) -> Value:
    r = _rank(x)
    if r < 2:
        return x
    return cx.emit("Transpose", [x], {"perm": list(range(r))[::-1]})


@_lower("aten.expand.default", "aten.expand_copy.default")
def _expand(cx: _Ctx, x: Value, size: Sequence[Any], *, implicit: bool = False) -> Value:
    shape = cx.oshape()
    if x.shape == shape:
        return x
    if all(isinstance(d, int) for d in shape):
        return cx.emit("Expand", [x, cx.ints(list(shape))])
    # -1 keeps a dim: 1 does the same under Expand's broadcasting
    return cx.emit("Expand", [x, cx.shape_input([1 if s == -1 else s for s in size])])


@_lower("aten.expand_as.default")
def _expand_as(cx: _Ctx, x: Value, other: Value) -> Value:
    # (BERT's attention mask) lowered here, the model stays on the fast path: without it
    # the whole program is re-traced by ``run_decompositions`` for this one op
    if x.shape is not None and x.shape == other.shape:
        return x
    shape = cx.oshape()
    if all(isinstance(d, int) for d in shape):
        return cx.emit("Expand", [x, cx.ints(list(shape))])
    return cx.emit("Expand", [x, cx.emit("Shape", [other], dtype=DType.I64)])


@_lower("aten.repeat.default")
def _repeat(cx: _Ctx, x: Value, repeats: Sequence[int]) -> Value:
    r = _rank(x)
    if len(repeats) > r:
        x = cx.emit("Unsqueeze", [x, cx.ints(list(range(len(repeats) - r)))])
    return cx.emit("Tile", [x, cx.shape_input(repeats)])


@_lower("aten.repeat_interleave.self_int")
def _repeat_interleave(cx: _Ctx, x: Value, repeats: int, dim: int | None = None, *,
                       output_size: Any = None) -> Value:
    if dim is None:
        x = cx.emit("Reshape", [x, cx.ints([-1])])
        dim = 0
    r = _rank(x) if x.type.rank is not None else 1
    d = _axis(dim, r)
    u = cx.emit("Unsqueeze", [x, cx.ints([d + 1])])
    e = cx.emit("Expand", [u, cx.ints([1] * (d + 1) + [int(repeats)] + [1] * (r - d - 1))])
    return cx.emit("Reshape", [e, cx.target_shape(x, cx.oshape())])


@_lower("aten.cat.default", "aten.concat.default", "aten.concatenate.default")
def _cat(cx: _Ctx, tensors: Sequence[Value], dim: int = 0) -> Value:
    dt = cx.odt()
    r = len(cx.oshape())
    # torch skips legacy empty 1-D tensors in cat
    parts = [cx.cast(t, dt) for t in tensors if not (t.shape == (0,) and r != 1)]
    if len(parts) == 1:
        return parts[0]
    return cx.emit("Concat", parts, {"axis": _axis(dim, r)})


@_lower("aten.stack.default")
def _stack(cx: _Ctx, tensors: Sequence[Value], dim: int = 0) -> Value:
    dt = cx.odt()
    d = _axis(dim, len(cx.oshape()))
    axes = cx.ints([d])
    parts = [cx.emit("Unsqueeze", [cx.cast(t, dt), axes]) for t in tensors]
    return parts[0] if len(parts) == 1 else cx.emit("Concat", parts, {"axis": d})


def _split_outputs(cx: _Ctx, x: Value, dim: int) -> list[Value]:
    d = _axis(dim, _rank(x))
    dims = [cx.dim(v.shape[d]) for v in cx.val]
    if len(dims) == 1:
        return [x]
    sizes = [s for s in dims if isinstance(s, int)]
    if len(sizes) != len(dims):
        raise UnsupportedOpError("split into dynamic sizes")
    return cx.emit("Split", [x, cx.ints(sizes)], {"axis": d}, n=len(sizes))


@_lower("aten.split.Tensor", "aten.split_with_sizes.default", "aten.split_copy.Tensor",
        "aten.split_with_sizes_copy.default", "aten.unsafe_split.Tensor")
def _split(cx: _Ctx, x: Value, split_size: Any, dim: int = 0) -> list[Value]:
    return _split_outputs(cx, x, dim)


@_lower("aten.chunk.default")
def _chunk(cx: _Ctx, x: Value, chunks: int, dim: int = 0) -> list[Value]:
    return _split_outputs(cx, x, dim)


@_lower("aten.unbind.int", "aten.unbind_copy.int")
def _unbind(cx: _Ctx, x: Value, dim: int = 0) -> list[Value]:
    d = _axis(dim, _rank(x))
    n = len(cx.val)
    axes = cx.ints([d])
    parts = [x] if n == 1 else cx.emit("Split", [x, cx.ints([1] * n)], {"axis": d}, n=n)
    return [cx.emit("Squeeze", [p, axes]) for p in parts]


def _index_input(cx: _Ctx, i: Any) -> Value:
    if isinstance(i, _Sym):
        return i.v
    if isinstance(i, Value):
        return cx.emit("Reshape", [cx.cast(i, DType.I64), cx.ints([1])])
    return cx.ints([int(i)])


@_lower("aten.slice.Tensor", "aten.slice_copy.Tensor")
def _slice(cx: _Ctx, x: Value, dim: int = 0, start: Any = None, end: Any = None,
           step: int = 1) -> Value:
    r = _rank(x)
    d = _axis(dim, r)
    start = 0 if start is None else start
    end = _INT64_MAX if end is None else end
    size = x.shape[d] if x.shape is not None else None
    if (step == 1 and isinstance(start, int) and start == 0 and isinstance(end, int)
            and isinstance(size, int) and end >= size):
        return x
    if isinstance(end, int):
        end = min(end, _INT64_MAX)
    return cx.emit("Slice", [x, _index_input(cx, start), _index_input(cx, end), cx.ints([d]),
                             cx.ints([int(step)])])


@_lower("aten.narrow.default")
def _narrow(cx: _Ctx, x: Value, dim: int, start: Any, length: Any) -> Value:
    if isinstance(start, int) and isinstance(length, int):
        return _slice(cx, x, dim, start, start + length)
    end = cx.emit("Add", [_index_input(cx, start), _index_input(cx, length)])
    return _slice(cx, x, dim, _Sym(_index_input(cx, start)), _Sym(end))


@_lower("aten.select.int", "aten.select_copy.int")
def _select(cx: _Ctx, x: Value, dim: int, index: Any) -> Value:
    d = _axis(dim, _rank(x))
    if isinstance(index, _Sym):
        idx = cx.emit("Squeeze", [index.v], shape=())
    else:
        idx = cx.ints(int(index))
    return cx.emit("Gather", [x, idx], {"axis": d})


def _broadcast_indices(cx: _Ctx, idx: list[Value]) -> tuple[list[Value], list[int]]:
    shapes = [_static(i.shape, "advanced indexing") for i in idx]
    common = list(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    out = [i if list(s) == common else cx.emit("Expand", [i, cx.ints(common)])
           for i, s in zip(idx, shapes)]
    return out, common


def _gather_nd(cx: _Ctx, x: Value, positions: list[int], idx: list[Value]) -> Value:
    """``x[..., i0, i1, ...]`` with tensor indices at ``positions`` (torch advanced indexing)."""
    r = _rank(x)
    idx, common = _broadcast_indices(cx, [cx.cast(i, DType.I64) for i in idx])
    rest = [d for d in range(r) if d not in positions]
    perm = positions + rest
    xt = x if perm == list(range(r)) else cx.emit("Transpose", [x], {"perm": perm})
    last = cx.ints([-1])
    stacked = cx.emit("Concat", [cx.emit("Unsqueeze", [i, last]) for i in idx], {"axis": -1})
    y = cx.emit("GatherND", [xt, stacked])
    adjacent = positions == list(range(positions[0], positions[0] + len(positions)))
    k = positions[0]
    if adjacent and k > 0:
        # torch keeps adjacent indexed dims in place: move the k leading dims back in front
        nb = len(common)
        yperm = list(range(nb, nb + k)) + list(range(nb)) + list(range(nb + k, nb + len(rest)))
        y = cx.emit("Transpose", [y], {"perm": yperm})
    return y


@_lower("aten.index.Tensor", "aten._unsafe_index.Tensor")
def _index(cx: _Ctx, x: Value, indices: Sequence[Value | None]) -> Value:
    pos = [i for i, t in enumerate(indices) if t is not None]
    idx = [t for t in indices if t is not None]
    if any(t.dtype is DType.BOOL for t in idx):
        raise UnsupportedOpError("boolean mask indexing (data-dependent shape)")
    if len(pos) == 1:
        return cx.emit("Gather", [x, idx[0]], {"axis": pos[0]})
    return _gather_nd(cx, x, pos, list(idx))


@_lower("aten.index_select.default")
def _index_select(cx: _Ctx, x: Value, dim: int, index: Value) -> Value:
    return cx.emit("Gather", [x, index], {"axis": _axis(dim, _rank(x))})


@_lower("aten.gather.default")
def _gather(cx: _Ctx, x: Value, dim: int, index: Value, *, sparse_grad: bool = False) -> Value:
    return cx.emit("GatherElements", [x, index], {"axis": _axis(dim, _rank(x))})


@_lower("aten.embedding.default")
def _embedding(cx: _Ctx, weight: Value, indices: Value, *_: Any) -> Value:
    return cx.emit("Gather", [weight, indices], {"axis": 0})


@_lower("aten.unsqueeze.default", "aten.unsqueeze_copy.default")
def _unsqueeze(cx: _Ctx, x: Value, dim: int) -> Value:
    return cx.emit("Unsqueeze", [x, cx.ints([_axis(dim, _rank(x) + 1)])])


@_lower("aten.squeeze", "aten.squeeze_copy")
def _squeeze(cx: _Ctx, x: Value, dim: Any = None) -> Value:
    r = _rank(x)
    dims = list(range(r)) if dim is None else _tup(dim, 1) if isinstance(dim, int) else dim
    shape = x.shape or ()
    # torch squeezes only dims of size 1 and ignores the others
    axes = sorted({_axis(d, r) for d in dims if shape[_axis(d, r)] == 1})
    if not axes:
        return x
    return cx.emit("Squeeze", [x, cx.ints(axes)])


@_lower("aten.diagonal.default", "aten.diagonal_copy.default")
def _diagonal(cx: _Ctx, x: Value, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Value:
    shape = _static(x.shape, "diagonal")
    r = len(shape)
    d1, d2 = _axis(dim1, r), _axis(dim2, r)
    n1, n2 = shape[d1], shape[d2]
    mask_shape = [1] * r
    mask_shape[d1], mask_shape[d2] = n1, n2
    eye = np.eye(n1, n2, k=offset, dtype=bool)
    keep = (eye if d1 < d2 else eye.T).reshape(mask_shape)
    # select the diagonal with a mask, sum it out along dim2, then keep its valid span
    picked = cx.emit("Where", [cx.const(keep), x, cx.scalar(0, x.dtype)])
    y = cx.emit("ReduceSum", [picked, cx.ints([d2])], {"keepdims": 0})
    lo, hi = max(0, -offset), max(max(0, -offset), min(n1, n2 - offset))
    a = d1 if d1 < d2 else d1 - 1
    y = cx.emit("Slice", [y, cx.ints([lo]), cx.ints([hi]), cx.ints([a])])
    perm = [i for i in range(r - 1) if i != a] + [a]
    return y if perm == list(range(r - 1)) else cx.emit("Transpose", [y], {"perm": perm})


@_lower("aten._cdist_forward.default")
def _cdist(cx: _Ctx, x1: Value, x2: Value, p: float, compute_mode: Any = None) -> Value:
    diff = cx.emit("Sub", [cx.emit("Unsqueeze", [x1, cx.ints([-2])]),
                           cx.emit("Unsqueeze", [x2, cx.ints([-3])])])
    last = cx.ints([-1])
    if p == 2:
        return cx.emit("ReduceL2", [diff, last], {"keepdims": 0})
    if p == 1:
        return cx.emit("ReduceL1", [diff, last], {"keepdims": 0})
    if p == math.inf:
        return cx.emit("ReduceMax", [cx.emit("Abs", [diff]), last], {"keepdims": 0})
    raise UnsupportedOpError(f"cdist with p={p}")


@_lower("aten.tril.default", "aten.triu.default")
def _trilu(cx: _Ctx, x: Value, diagonal: int = 0) -> Value:
    upper = int(str(cx.fx.target).startswith("aten.triu"))
    return cx.emit("Trilu", [x, cx.ints(int(diagonal))], {"upper": upper})


@_lower("aten.cumsum.default")
def _cumsum(cx: _Ctx, x: Value, dim: int, *, dtype: Any = None) -> Value:
    return cx.emit("CumSum", [cx.cast(x, cx.odt()), cx.ints(_axis(dim, _rank(x)))])


@_lower("aten.flip.default")
def _flip(cx: _Ctx, x: Value, dims: Sequence[int]) -> Value:
    r = _rank(x)
    k = len(dims)
    return cx.emit("Slice", [x, cx.ints([-1] * k), cx.ints([_INT64_MIN] * k),
                             cx.ints([_axis(d, r) for d in dims]), cx.ints([-1] * k)])


@_lower("aten.roll.default")
def _roll(cx: _Ctx, x: Value, shifts: Sequence[int], dims: Sequence[int] = ()) -> Value:
    shifts, dims = _tup(shifts, 1), _tup(dims, 1) if dims else []
    y = x
    if not dims:
        y = cx.emit("Reshape", [x, cx.ints([-1])])
        n = int(np.prod(_static(x.shape, "roll")))
        sizes = {0: n}
        dims = [0]
    else:
        shape = _static(x.shape, "roll")
        sizes = {_axis(d, len(shape)): shape[_axis(d, len(shape))] for d in dims}
    for s, d in zip(shifts, dims):
        d = _axis(d, len(sizes) if not x.shape else len(x.shape)) if dims != [0] else d
        n = sizes[d]
        s = s % n
        if s == 0:
            continue
        ax = cx.ints([d])
        tail = cx.emit("Slice", [y, cx.ints([n - s]), cx.ints([n]), ax])
        head = cx.emit("Slice", [y, cx.ints([0]), cx.ints([n - s]), ax])
        y = cx.emit("Concat", [tail, head], {"axis": d})
    if y is not x and x.shape is not None and (y.shape != x.shape):
        y = cx.emit("Reshape", [y, cx.ints(_static(x.shape, "roll"))])
    return y


def _pad(cx: _Ctx, x: Value, pad: Sequence[int], mode: str, value: Any = None) -> Value:
    r = _rank(x)
    begins, ends = [0] * r, [0] * r
    for i in range(len(pad) // 2):
        begins[r - 1 - i], ends[r - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    ins: list[Value | None] = [x, cx.ints(begins + ends)]
    if mode == "constant" and value not in (None, 0):
        ins.append(cx.scalar(value, x.dtype))
    return cx.emit("Pad", ins, {"mode": mode})


@_lower("aten.constant_pad_nd.default")
def _constant_pad(cx: _Ctx, x: Value, pad: Sequence[int], value: Any = 0) -> Value:
    return _pad(cx, x, pad, "constant", value)


@_lower("aten.pad.default")
def _pad_op(cx: _Ctx, x: Value, pad: Sequence[int], mode: str = "constant",
            value: Any = None) -> Value:
    onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
                 "circular": "wrap"}.get(mode)
    if onnx_mode is None:
        raise UnsupportedOpError(f"pad mode {mode!r}")
    return _pad(cx, x, pad, onnx_mode, value)


for _nd in (1, 2, 3):
    LOWERINGS[f"aten.reflection_pad{_nd}d.default"] = (
        lambda cx, x, padding: _pad(cx, x, padding, "reflect"))
    LOWERINGS[f"aten.replication_pad{_nd}d.default"] = (
        lambda cx, x, padding: _pad(cx, x, padding, "edge"))


# -- scatter ------------------------------------------------------------------------------------


@_lower("aten.scatter.src", "aten.scatter.value")
def _scatter(cx: _Ctx, x: Value, dim: int, index: Value, src: Any) -> Value:
    if not isinstance(src, Value):
        src = cx.emit("Expand", [cx.scalar(src, x.dtype),
                                 cx.emit("Shape", [index], dtype=DType.I64)])
    return cx.emit("ScatterElements", [x, index, cx.cast(src, x.dtype)],
                   {"axis": _axis(dim, _rank(x))})


@_lower("aten.scatter_add.default")
def _scatter_add(cx: _Ctx, x: Value, dim: int, index: Value, src: Value) -> Value:
    return cx.emit("ScatterElements", [x, index, src],
                   {"axis": _axis(dim, _rank(x)), "reduction": "add"})


@_lower("aten.scatter_reduce.two")
def _scatter_reduce(cx: _Ctx, x: Value, dim: int, index: Value, src: Value, reduce: str, *,
                    include_self: bool = True) -> Value:
    red = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}.get(reduce)
    if red is None or not include_self:
        raise UnsupportedOpError(f"scatter_reduce with reduce={reduce!r}, "
                                 f"include_self={include_self}")
    return cx.emit("ScatterElements", [x, index, src],
                   {"axis": _axis(dim, _rank(x)), "reduction": red})


@_lower("aten.index_put.default", "aten._unsafe_index_put.default")
def _index_put(cx: _Ctx, x: Value, indices: Sequence[Value | None], values: Value,
               accumulate: bool = False) -> Value:
    values = cx.cast(values, x.dtype)
    if len(indices) == 1 and indices[0] is not None and indices[0].dtype is DType.BOOL:
        if accumulate:
            raise UnsupportedOpError("index_put with a mask and accumulate=True")
        return cx.emit("Where", [indices[0], values, x])
    if any(i is None for i in indices):
        raise UnsupportedOpError("index_put with indices after a full slice")
    idx, common = _broadcast_indices(cx, [cx.cast(i, DType.I64) for i in indices
                                          if i is not None])
    last = cx.ints([-1])
    stacked = cx.emit("Concat", [cx.emit("Unsqueeze", [i, last]) for i in idx], {"axis": -1})
    target = common + _static(x.shape, "index_put")[len(indices):]
    if values.shape != tuple(target):
        values = cx.emit("Expand", [values, cx.ints(target)])
    attrs = {"reduction": "add"} if accumulate else {}
    return cx.emit("ScatterND", [x, stacked, values], attrs)


def _slice_concat(cx: _Ctx, x: Value, src: Value, d: int, start: int, end: int) -> Value:
    parts = []
    ax = cx.ints([d])
    if start > 0:
        parts.append(cx.emit("Slice", [x, cx.ints([0]), cx.ints([start]), ax]))
    parts.append(src)
    n = _static(x.shape, "slice_scatter")[d]
    if end < n:
        parts.append(cx.emit("Slice", [x, cx.ints([end]), cx.ints([n]), ax]))
    return parts[0] if len(parts) == 1 else cx.emit("Concat", parts, {"axis": d})


@_lower("aten.slice_scatter.default")
def _slice_scatter(cx: _Ctx, x: Value, src: Value, dim: int = 0, start: Any = None,
                   end: Any = None, step: int = 1) -> Value:
    shape = _static(x.shape, "slice_scatter")
    d = _axis(dim, len(shape))
    rng = range(shape[d])[slice(start, end, step)]
    src = cx.cast(src, x.dtype)
    if step == 1:
        return _slice_concat(cx, x, src, d, rng.start, rng.stop)
    idx_shape = [1] * len(shape)
    idx_shape[d] = len(rng)
    idx = np.broadcast_to(np.array(list(rng), dtype=np.int64).reshape(idx_shape),
                          _static(src.shape, "slice_scatter"))
    return cx.emit("ScatterElements", [x, cx.const(np.ascontiguousarray(idx)), src], {"axis": d})


@_lower("aten.select_scatter.default")
def _select_scatter(cx: _Ctx, x: Value, src: Value, dim: int, index: int) -> Value:
    shape = _static(x.shape, "select_scatter")
    d = _axis(dim, len(shape))
    i = index % shape[d]
    src = cx.emit("Unsqueeze", [cx.cast(src, x.dtype), cx.ints([d])])
    return _slice_concat(cx, x, src, d, i, i + 1)


# -- reductions ---------------------------------------------------------------------------------


def _axes(cx: _Ctx, x: Value, dim: Any) -> Value | None:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return None
    r = _rank(x)
    return cx.ints([_axis(d, r) for d in _tup(dim, 1)])


def _reduce(op: str) -> Lowering:
    def lower(cx: _Ctx, x: Value, dim: Any = None, keepdim: bool = False, *, dtype: Any = None
              ) -> Value:
        if op not in ("ReduceMax", "ReduceMin"):
            x = cx.cast(x, cx.odt())
        axes = _axes(cx, x, dim)
        return cx.emit(op, [x] + ([axes] if axes is not None else []),
                       {"keepdims": int(bool(keepdim))})

    return lower


LOWERINGS["aten.sum.dim_IntList"] = _reduce("ReduceSum")
LOWERINGS["aten.sum.default"] = _reduce("ReduceSum")
LOWERINGS["aten.mean.dim"] = _reduce("ReduceMean")
LOWERINGS["aten.mean.default"] = _reduce("ReduceMean")
LOWERINGS["aten.amax.default"] = _reduce("ReduceMax")
LOWERINGS["aten.amin.default"] = _reduce("ReduceMin")
LOWERINGS["aten.prod.dim_int"] = _reduce("ReduceProd")
LOWERINGS["aten.prod.default"] = _reduce("ReduceProd")
LOWERINGS["aten.max.default"] = _reduce("ReduceMax")
LOWERINGS["aten.min.default"] = _reduce("ReduceMin")


def _reduce_with_index(op: str, arg_op: str) -> Lowering:
    def lower(cx: _Ctx, x: Value, dim: int, keepdim: bool = False) -> tuple:
        d = _axis(dim, _rank(x))
        k = int(bool(keepdim))
        y = cx.emit(op, [x, cx.ints([d])], {"keepdims": k})
        if 1 not in cx.used_outputs():
            return (y, None)
        return (y, cx.emit(arg_op, [x], {"axis": d, "keepdims": k}, dtype=DType.I64))

    return lower


LOWERINGS["aten.max.dim"] = _reduce_with_index("ReduceMax", "ArgMax")
LOWERINGS["aten.min.dim"] = _reduce_with_index("ReduceMin", "ArgMin")


def _arg(op: str) -> Lowering:
    def lower(cx: _Ctx, x: Value, dim: int | None = None, keepdim: bool = False) -> Value:
        if dim is None:
            y = cx.emit(op, [cx.emit("Reshape", [x, cx.ints([-1])])],
                        {"axis": 0, "keepdims": 0}, dtype=DType.I64)
            return cx.emit("Reshape", [y, cx.ints([1] * len(cx.oshape()))]) if keepdim else y
        return cx.emit(op, [x], {"axis": _axis(dim, _rank(x)), "keepdims": int(bool(keepdim))},
                       dtype=DType.I64)

    return lower


LOWERINGS["aten.argmax.default"] = _arg("ArgMax")
LOWERINGS["aten.argmin.default"] = _arg("ArgMin")


def _any_all(op: str) -> Lowering:
    def lower(cx: _Ctx, x: Value, dim: Any = None, keepdim: bool = False) -> Value:
        b = cx.cast(_to_bool(cx, x), DType.I32)  # ORT reduces numbers, not bools
        axes = _axes(cx, x, dim)
        y = cx.emit(op, [b] + ([axes] if axes is not None else []),
                    {"keepdims": int(bool(keepdim))})
        return cx.cast(y, cx.odt())

    return lower


for _v in ("default", "dim", "dims"):
    LOWERINGS[f"aten.any.{_v}"] = _any_all("ReduceMax")
    LOWERINGS[f"aten.all.{_v}"] = _any_all("ReduceMin")


def _var_mean(cx: _Ctx, x: Value, dim: Any, correction: float, keepdim: bool
              ) -> tuple[Value, Value]:
    dt = cx.odt()
    x = cx.cast(x, dt)
    axes = _axes(cx, x, dim)
    ax = [axes] if axes is not None else []
    mean = cx.emit("ReduceMean", [x, *ax], {"keepdims": 1})
    d = cx.emit("Sub", [x, mean])
    var = cx.emit("ReduceMean", [cx.emit("Mul", [d, d]), *ax], {"keepdims": int(bool(keepdim))})
    if correction:
        shape = _static(x.shape, "var with a correction")
        dims = range(len(shape)) if axes is None else [_axis(i, len(shape)) for i in _tup(dim, 1)]
        n = int(np.prod([shape[i] for i in dims]))
        var = cx.emit("Mul", [var, cx.scalar(n / max(n - correction, 0), dt)])
    if not keepdim:
        mean = cx.emit("Squeeze", [mean, *ax]) if ax else cx.emit("Reshape", [mean,
                                                                             cx.ints([])])
    return var, mean


def _correction(args: tuple, kwargs: dict) -> tuple[Any, float, bool]:
    """(dim, correction, keepdim) from any var/std overload's arguments."""
    dim = args[0] if args else kwargs.get("dim")
    if isinstance(dim, bool):  # var.default(x, unbiased)
        return None, float(dim), False
    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 else False))
    if "correction" in kwargs:
        corr = kwargs["correction"]
        corr = 1.0 if corr is None else float(corr)
    elif "unbiased" in kwargs or len(args) > 1:
        unbiased = kwargs.get("unbiased", args[1] if len(args) > 1 else True)
        corr = float(bool(unbiased)) if unbiased is not None else 1.0
    else:
        corr = 1.0
    return dim, corr, keepdim


@_lower("aten.var")
def _var(cx: _Ctx, x: Value, *args: Any, **kwargs: Any) -> Value:
    return _var_mean(cx, x, *_correction(args, kwargs))[0]


@_lower("aten.std")
def _std(cx: _Ctx, x: Value, *args: Any, **kwargs: Any) -> Value:
    return cx.emit("Sqrt", [_var_mean(cx, x, *_correction(args, kwargs))[0]])


@_lower("aten.var_mean")
def _var_mean_op(cx: _Ctx, x: Value, *args: Any, **kwargs: Any) -> tuple:
    return _var_mean(cx, x, *_correction(args, kwargs))


@_lower("aten.std_mean")
def _std_mean(cx: _Ctx, x: Value, *args: Any, **kwargs: Any) -> tuple:
    var, mean = _var_mean(cx, x, *_correction(args, kwargs))
    return cx.emit("Sqrt", [var]), mean


@_lower("aten.logsumexp.default")
def _logsumexp(cx: _Ctx, x: Value, dim: Any, keepdim: bool = False) -> Value:
    x = cx.cast(x, cx.odt())
    axes = _axes(cx, x, dim)
    ax = [axes] if axes is not None else []
    m = cx.emit("ReduceMax", [x, *ax], {"keepdims": 1})
    s = cx.emit("ReduceSum", [cx.emit("Exp", [cx.emit("Sub", [x, m])]), *ax], {"keepdims": 1})
    y = cx.emit("Add", [cx.emit("Log", [s]), m])
    if keepdim:
        return y
    return cx.emit("Squeeze", [y, *ax]) if ax else cx.emit("Reshape", [y, cx.ints([])])


@_lower("aten.linalg_vector_norm.default")
def _vector_norm(cx: _Ctx, x: Value, ord: float = 2, dim: Any = None,
                 keepdim: bool = False, *, dtype: Any = None) -> Value:
    x = cx.cast(x, cx.odt())
    axes = _axes(cx, x, dim)
    ax = [axes] if axes is not None else []
    k = {"keepdims": int(bool(keepdim))}
    if ord == 2:
        return cx.emit("ReduceL2", [x, *ax], k)
    if ord == 1:
        return cx.emit("ReduceL1", [x, *ax], k)
    if ord == math.inf:
        return cx.emit("ReduceMax", [cx.emit("Abs", [x]), *ax], k)
    raise UnsupportedOpError(f"vector norm of order {ord}")


@_lower("aten.topk.default")
def _topk(cx: _Ctx, x: Value, k: Any, dim: int = -1, largest: bool = True,
          sorted: bool = True) -> tuple:
    return tuple(cx.emit("TopK", [x, _index_input(cx, k)],
                         {"axis": _axis(dim, _rank(x)), "largest": int(bool(largest)),
                          "sorted": int(bool(sorted))}, dtypes=[x.dtype, DType.I64]))


@_lower("aten.sort.default")
def _sort(cx: _Ctx, x: Value, dim: int = -1, descending: bool = False) -> tuple:
    return _sort_values(cx, x, dim, descending)


@_lower("aten.sort.stable")
def _sort_stable(cx: _Ctx, x: Value, *, stable: bool | None = None, dim: int = -1,
                 descending: bool = False) -> tuple:
    return _sort_values(cx, x, dim, descending)


def _sort_values(cx: _Ctx, x: Value, dim: int, descending: bool) -> tuple:
    d = _axis(dim, _rank(x))
    n = _static(x.shape, "sort")[d]
    return tuple(cx.emit("TopK", [x, cx.ints([n])], {"axis": d, "largest": int(bool(descending)),
                                                     "sorted": 1}, dtypes=[x.dtype, DType.I64]))


@_lower("aten.nonzero.default")
def _nonzero(cx: _Ctx, x: Value) -> Value:
    return cx.emit("Transpose", [cx.emit("NonZero", [x], dtype=DType.I64)], {"perm": [1, 0]})


# -- symbolic ints and Python builtins ----------------------------------------------------------


@_lower("operator.getitem")
def _getitem(cx: _Ctx, obj: Any, i: int) -> Any:
    return obj[i]


@_lower("aten.sym_size.int")
def _sym_size(cx: _Ctx, x: Value, dim: int) -> Any:
    d = _axis(dim, _rank(x))
    static = x.shape[d] if x.shape is not None else None
    return static if isinstance(static, int) else cx.dim_of(x, d)


@_lower("aten.sym_numel.default")
def _sym_numel(cx: _Ctx, x: Value) -> Any:
    n = x.type.numel
    if n is not None:
        return n
    shape = cx.emit("Shape", [x], dtype=DType.I64)
    return _Sym(cx.emit("ReduceProd", [shape], {"keepdims": 1}, dtype=DType.I64, shape=(1,)))


def _sym_arith(op: str, fn: Callable[[int, int], int]) -> Lowering:
    def lower(cx: _Ctx, a: Any, b: Any) -> Any:
        if isinstance(a, int) and isinstance(b, int):
            return fn(a, b)
        av, bv = _index_input(cx, a), _index_input(cx, b)
        return _Sym(cx.emit(op, [av, bv], dtype=DType.I64, shape=(1,)))

    return lower


LOWERINGS["operator.add"] = _sym_arith("Add", operator.add)
LOWERINGS["operator.sub"] = _sym_arith("Sub", operator.sub)
LOWERINGS["operator.mul"] = _sym_arith("Mul", operator.mul)
LOWERINGS["operator.floordiv"] = _sym_arith("Div", operator.floordiv)  # sizes are >= 0
LOWERINGS["operator.mod"] = _sym_arith("Mod", operator.mod)


@_lower("aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
        "aten.sym_constrain_range_for_size.default", "aten.sym_constrain_range.default",
        "aten._assert_async.msg", "aten._functional_assert_async.msg",
        "operator.eq", "operator.ne", "operator.ge", "operator.gt", "operator.le", "operator.lt")
def _no_op(cx: _Ctx, *_: Any, **__: Any) -> None:
    # runtime assertions about sizes: the IR carries no asserts
    return None


# ---------------------------------------------------------------------------------------------
# the driver


def _map_arg(env: dict, a: Any) -> Any:
    if isinstance(a, (list, tuple)):
        return [_map_arg(env, x) for x in a]
    if hasattr(a, "op") and hasattr(a, "meta"):  # an fx.Node
        return env[a]
    return a


def _op_at(node: Any) -> str:
    """``aten.gelu.default at module 'blocks.0.mlp.1' (GELU)`` for messages."""
    path, cls = _module_path(node)
    return f"{_target_keys(node.target)[0]} at module '{path}'" + (f" ({cls})" if cls else "")


def _missing(node: Any, reason: str | None = None) -> UnsupportedOpError:
    op = _target_keys(node.target)[0]
    path, _ = _module_path(node)
    msg = f"no lowering for {_op_at(node)}" if reason is None else f"{_op_at(node)}: {reason}"
    err = UnsupportedOpError(msg)
    err.op = op  # type: ignore[attr-defined]
    err.module_path = path  # type: ignore[attr-defined]
    return err


def _lower_program(ep: Any, sym_names: dict[str, str], name: str, decomposed: bool = True
                   ) -> Graph:
    from torch.export.graph_signature import InputKind, OutputKind

    g = Graph(name, opset={"": OPSET})
    cx = _Ctx(g, sym_names)
    env: dict[Any, Any] = {}
    specs = {s.arg.name: s for s in ep.graph_signature.input_specs
             if hasattr(s.arg, "name")}
    state, consts = ep.state_dict, ep.constants
    out_node = None
    for node in ep.graph.nodes:
        op = node.op
        if op == "call_function":
            fn = _lookup(node.target)
            if fn is None and not decomposed:
                fn = _functional_lowering(node.target)  # checked by _inplace_is_local
            if fn is None:
                raise _missing(node)
            cx.begin(node)
            args = [_map_arg(env, a) for a in node.args]
            kwargs = {k: _map_arg(env, a) for k, a in node.kwargs.items()}
            try:
                env[node] = _finish(cx, node, fn(cx, *args, **kwargs))
            except UnsupportedOpError as e:
                raise _missing(node, str(e)) from None
            except _LoweringBug:
                raise
            except Exception as e:  # a lowering met arguments it does not expect
                raise _LoweringBug(f"lowering {_op_at(node)} failed: {type(e).__name__}: {e}"
                                   ) from e
        elif op == "placeholder":
            spec = specs.get(node.name)
            val = node.meta.get("val")
            kind = spec.kind if spec is not None else InputKind.USER_INPUT
            if spec is None or kind == InputKind.USER_INPUT:
                if hasattr(val, "dtype") and hasattr(val, "shape"):
                    env[node] = g.add_input(node.name, cx.ttype(val))
                else:
                    env[node] = val  # export specialized a non-tensor input
            elif kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                target = spec.target
                t = state[target] if target in state else consts[target]
                meta = {"src": target.rpartition(".")[0]} if "." in target else {}
                env[node] = g.add_const(target, _const_array(t), meta=meta)
            else:
                raise UnsupportedOpError(f"input {node.name} of kind {kind.name} "
                                         "(custom objects and tokens are not supported)")
        elif op == "output":
            out_node = node
        else:
            raise UnsupportedOpError(f"FX node {node.name} ({op}) in an exported graph")

    outs = out_node.args[0] if out_node is not None else ()
    for spec, arg in zip(ep.graph_signature.output_specs, outs):
        if spec.kind != OutputKind.USER_OUTPUT:
            continue  # buffer and input mutations: the IR is a pure function
        v = env.get(arg) if hasattr(arg, "op") else arg
        if isinstance(v, _Sym):
            v = v.v
        if not isinstance(v, Value):
            if v is None:
                continue
            v = g.add_const("output", np.asarray(v))
        if v.producer is None or any(o is v for o in g.outputs):
            # an output that is an input, a constant or a repeat gets its own value
            v = g.make_node("Identity", [v], outputs=[f"{v.name}_out"], types=[v.type],
                            meta={"src": "", "pass": "import"}).outputs[0]
        g.outputs.append(v)
    _drop_dead_nodes(g)
    g.remove_unused_constants()
    return g


def _drop_dead_nodes(g: Graph) -> None:
    """Remove nodes nothing reads (outputs of multi-result ops that torch never used)."""
    live_out = {id(v) for v in g.outputs}
    for node in list(reversed(g.nodes)):
        if not any(o.uses or id(o) in live_out for o in node.outputs):
            g.remove_node(node)


def _finish(cx: _Ctx, node: Any, res: Any) -> Any:
    """Give the lowering's results torch's types and the FX node's name; check dtypes."""
    val = node.meta.get("val")
    if isinstance(res, Value):
        _fix(cx, res, val, node.name)
    elif isinstance(res, (list, tuple)) and isinstance(val, (list, tuple)):
        for i, (r, v) in enumerate(zip(res, val)):
            if isinstance(r, Value):
                _fix(cx, r, v, node.name if i == 0 else f"{node.name}_{i}")
    return res


def _fix(cx: _Ctx, v: Value, val: Any, name: str) -> None:
    if not (hasattr(val, "dtype") and hasattr(val, "shape")):
        return
    t = cx.ttype(val)
    if t.dtype is not v.dtype:
        raise _LoweringBug(f"lowering {_op_at(cx.fx)} made %{v.name} {v.dtype.value} where "
                           f"torch has {t.dtype.value}")
    if not cx.is_fresh(v):
        return  # an existing value passed through (views, clones)
    if v.shape is not None and t.shape is not None and (
            len(v.shape) != len(t.shape)
            or any(isinstance(a, int) and isinstance(b, int) and a != b
                   for a, b in zip(v.shape, t.shape))):
        raise _LoweringBug(f"lowering {_op_at(cx.fx)} made %{v.name} of shape "
                           f"{list(v.shape)} where torch has {list(t.shape)}")
    v.type = t
    if v.name != name and not v.is_const:
        v.name = cx.g.fresh_name(name)


# ---------------------------------------------------------------------------------------------
# entry points


def _returns_alias(target: Any) -> bool:
    schema = getattr(target, "_schema", None)
    return schema is None or any(r.alias_info is not None for r in schema.returns)


def _inplace_is_local(node: Any, pos: dict[Any, int], ok: dict[Any, bool]) -> bool:
    """True when in-place ``node`` (``relu_``, ``add_``...) can be lowered as its functional
    twin: it writes only its first argument, that tensor is a fresh result (or an in-place
    chain on one) and nothing reads the old value after the write or through a view.

    That is the ``ReLU(inplace=True)`` / ``out += identity`` pattern of most CNNs; anything
    else is left to functionalization in ``run_decompositions``.
    """
    if node in ok:
        return ok[node]
    ok[node] = False
    schema = node.target._schema
    writes = [i for i, a in enumerate(schema.arguments)
              if a.alias_info is not None and a.alias_info.is_write]
    base: Any = node.args[0] if node.args else None
    if writes != [0] or _functional_lowering(node.target) is None or not hasattr(base, "op"):
        return False
    src = base
    while src.op == "call_function" and src.target is operator.getitem:
        src = src.args[0]  # an element of a multi-result op (batch norm...)
    if src.op != "call_function":
        return False  # a graph input, parameter or buffer: a real side effect
    if getattr(src.target, "_schema", None) is not None and src.target._schema.is_mutable:
        if not _inplace_is_local(src, pos, ok):
            return False
    elif src.target is not operator.getitem and _returns_alias(src.target):
        return False  # a view: the write would show through its base
    for user in base.users:
        if user is node:
            continue
        if pos[user] > pos[node] or (user.op == "call_function" and _returns_alias(user.target)
                                     and user.target is not operator.getitem):
            return False
    ok[node] = True
    return True


def _needs_decomposition(ep: Any) -> bool:
    nodes = list(ep.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    ok: dict[Any, bool] = {}
    for node in nodes:
        if node.op == "get_attr":
            return True  # submodules of higher-order ops
        if node.op != "call_function":
            continue
        schema = getattr(node.target, "_schema", None)
        if schema is not None and schema.is_mutable:
            if not _inplace_is_local(node, pos, ok):
                return True
        elif _lookup(node.target) is None:
            return True
    return False


def _decomposition_table() -> Any:
    import torch

    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        if _lookup(op) is not None:
            table.pop(op)  # keep what we lower natively whole
    return table


def _sym_names(module: Any, example_inputs: tuple, dynamic_shapes: Any, ep: Any
               ) -> dict[str, str]:
    """Symbol name (``s77``) to the ``torch.export.Dim`` name the user gave it."""
    if not dynamic_shapes:
        return {}
    per_input: list[Any]
    if isinstance(dynamic_shapes, dict):
        try:
            params = list(inspect.signature(module.forward).parameters)
        except (TypeError, ValueError):
            return {}
        per_input = [dynamic_shapes.get(p) for p in params[:len(example_inputs)]]
    elif isinstance(dynamic_shapes, (list, tuple)):
        per_input = list(dynamic_shapes)
    else:
        return {}
    from torch.export.graph_signature import InputKind

    user = [s.arg.name for s in ep.graph_signature.input_specs
            if s.kind == InputKind.USER_INPUT and hasattr(s.arg, "name")]
    vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    names: dict[str, str] = {}
    for arg_name, spec in zip(user, per_input):
        val = vals.get(arg_name)
        if spec is None or val is None or not hasattr(val, "shape"):
            continue
        items = spec.items() if isinstance(spec, dict) else enumerate(spec)
        for axis, dim in items:
            label = getattr(dim, "__name__", None)
            if label is None or not isinstance(axis, int) or axis >= len(val.shape):
                continue
            d = val.shape[axis]
            expr = getattr(getattr(d, "node", None), "expr", None)
            if expr is not None and expr.is_Symbol:
                names[str(expr)] = label
    return names


class _FxFailure(Exception):
    def __init__(self, error: EdgecError, op: str = "", module_path: str = "") -> None:
        super().__init__(str(error))
        self.error = error
        self.op = op
        self.module_path = module_path


@contextlib.contextmanager
def _no_stack_traces() -> Iterator[None]:
    """Skip recording a Python stack trace per FX node during export.

    Provenance comes from ``nn_module_stack``; the traces cost 15-20% of ``torch.export``.
    """
    import torch.fx.config as fx_config

    old = getattr(fx_config, "do_not_emit_stack_traces", None)
    if old is None:  # an older torch without the switch
        yield
        return
    fx_config.do_not_emit_stack_traces = True
    try:
        yield
    finally:
        fx_config.do_not_emit_stack_traces = old


def _via_fx(module: Any, example_inputs: tuple, dynamic_shapes: Any, decompose: str) -> Graph:
    import torch

    try:
        with _no_stack_traces():
            ep = torch.export.export(module, example_inputs, dynamic_shapes=dynamic_shapes)
    except Exception as e:  # torch raises many types (UserError, GuardOnDataDependent...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _FxFailure(ModelLoadError(
            f"torch.export failed for {type(module).__name__}: {type(e).__name__}: {first}"
        )) from e
    decomposed = decompose == "core" or _needs_decomposition(ep)
    with _no_stack_traces():
        if decompose == "core":
            ep = ep.run_decompositions()
        elif decomposed:
            ep = ep.run_decompositions(_decomposition_table())
    names = _sym_names(module, example_inputs, dynamic_shapes, ep)
    try:
        g = _lower_program(ep, names, type(module).__name__, decomposed)
    except UnsupportedOpError as e:
        raise _FxFailure(e, getattr(e, "op", ""), getattr(e, "module_path", "")) from e
    except _LoweringBug as e:
        raise _FxFailure(ModelLoadError(str(e))) from e
    g.meta["frontend"] = "fx"
    return g


def _via_onnx(module: Any, example_inputs: tuple, dynamic_shapes: Any) -> Graph:
    import torch

    from compiler.frontends.onnx_import import load_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(module, example_inputs, dynamo=True, verbose=False,
                                    dynamic_shapes=dynamic_shapes, opset_version=OPSET)
    if program is None:
        raise ModelLoadError("torch.onnx.export returned no program")
    g = load_onnx(program.model_proto)
    g.name = type(module).__name__
    g.meta["frontend"] = "onnx"
    return g


def load_torch(
    module: torch.nn.Module,
    example_inputs: tuple,
    *,
    frontend: str = "auto",
    dynamic_shapes: Any = None,
    decompose: str = "auto",
) -> Graph:
    """Import a PyTorch module as an IR graph.

    ``example_inputs`` is the tuple of positional inputs ``module(*example_inputs)`` takes (a
    single tensor is accepted too); ``dynamic_shapes`` is passed to ``torch.export`` and its
    ``Dim`` names become the IR's symbolic dims.

    ``frontend``: ``"auto"`` lowers through the table and falls back to
    ``torch.onnx.export(dynamo=True)`` plus the ONNX frontend when an op is missing or
    ``torch.export`` fails (warning with :class:`FrontendFallbackWarning`); ``"fx"`` uses the
    table only and raises :class:`~compiler.errors.UnsupportedOpError` naming the op and the
    module path; ``"onnx"`` uses the exporter only. ``decompose="core"`` decomposes the whole
    program to core ATen before lowering (default ``"auto"``: only when needed).

    The module is put in eval mode for the import and its previous mode is restored after.
    """
    if frontend not in ("auto", "fx", "onnx"):
        raise ModelLoadError(f"frontend must be 'auto', 'fx' or 'onnx', not {frontend!r}")
    if decompose not in ("auto", "core"):
        raise ModelLoadError(f"decompose must be 'auto' or 'core', not {decompose!r}")
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_inputs, tuple):
        example_inputs = tuple(example_inputs) if isinstance(example_inputs, list) else \
            (example_inputs,)
    was_training = module.training
    module.eval()
    try:
        if frontend == "onnx":
            try:
                return _via_onnx(module, example_inputs, dynamic_shapes)
            except EdgecError:
                raise
            except Exception as e:  # the exporter raises many types
                raise ModelLoadError(f"torch.onnx.export failed for {type(module).__name__}: "
                                     f"{type(e).__name__}: {_first_line(e)}") from e
        try:
            return _via_fx(module, example_inputs, dynamic_shapes, decompose)
        except _FxFailure as failure:
            if frontend == "fx":
                raise failure.error from failure.__cause__
            warnings.warn(f"edgec: {failure.error}; importing the whole model through "
                          "torch.onnx.export(dynamo=True) instead", FrontendFallbackWarning,
                          stacklevel=2)
            try:
                g = _via_onnx(module, example_inputs, dynamic_shapes)
            except Exception as e:  # both routes failed: report the op first
                err = UnsupportedOpError(f"{failure.error}; the torch.onnx.export fallback "
                                         f"failed too: {type(e).__name__}: {_first_line(e)}")
                err.op = failure.op  # type: ignore[attr-defined]
                err.module_path = failure.module_path  # type: ignore[attr-defined]
                raise err from e
            g.meta["fallback"] = str(failure.error)
            return g
    finally:
        module.train(was_training)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
