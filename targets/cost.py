"""A per-node roofline cost model for every target (HTP, CPU, Adreno GPU).

For one node on one device at one precision key (``a8w8``, ``a16w8``, ``a16w16``, ``fp16``,
``fp32``)::

    compute_s  = MACs / (macs_per_cycle[key] * clock_hz)            (Conv, Gemm, MatMul, ...)
               + element_ops / (ELEMENT_OPS_PER_CYCLE[family][key] * clock_hz)
    bytes      = activations in + activations out + constants (weights, biases),
                 each at its encoded width (encoding bits, else the key's width, else dtype)
    dram_bytes = constants + graph inputs/outputs
                 + intermediate activations, only if the node's activation working set does
                   not fit the device's on-chip memory (``vtcm_bytes``)
    memory_s   = dram_bytes / dram_bytes_per_s
    seconds    = max(compute_s, memory_s) + op_overhead_s
    graph      = sum(seconds) + graph_overhead_s

On the HTP, grouped and depthwise convolutions run at the HVX lane rate (the HMX matrix unit
needs a dense reduction over input channels), and the activations in
:data:`FUSED_ACTIVATIONS` that follow a Conv/Gemm/MatMul/Add cost nothing.

The device numbers (``macs_per_cycle``, ``clock_hz``, ``dram_bytes_per_s``, the overheads) are
rows of a :class:`~targets.base.DeviceSpec`; each table documents its own sources
(``targets/hexagon_htp/target.py``, ``targets/cpu/__init__.py``,
``targets/gpu_adreno/__init__.py``). The constants of this module and where they come from:

- :data:`ELEMENT_OPS_PER_CYCLE`: vector lanes per cycle for element-wise work. HTP: HVX vectors are
  1024 bits (128 int8 lanes) and 4 hardware threads issue vector work (Qualcomm's HVX
  programmer's reference for V6x) -> 512 8-bit or 256 16-bit lanes per cycle; architecture
  arithmetic, not measured.
  CPU: 4 x 128-bit NEON pipes (Cortex-X4 / Oryon) -> 16 fp32 or 64 int8 lanes.
  GPU: the FP32 ALU count of an Adreno 750-class part (``targets/gpu_adreno``), twice that
  at fp16. Element-wise ops are memory bound on all three, so these numbers rarely decide.
- :data:`ELEMENT_FACTOR`: operations per output element of ops that do more than one
  (LayerNorm: mean, variance, subtract, scale, shift = 5; Softmax: max, subtract, exp, sum,
  divide = 5). A counting convention, not a measurement.
- :data:`FUSED_ACTIVATIONS`: activations the HTP runs inside the producing Conv/Gemm/Add.
  Observed in QNN simulator profiles (onnxruntime-qnn 2.7.0, QAIRT 2.51): a ``Relu`` after a
  ``Conv`` has no profile row; for ``Clip`` (ReLU6) and ``HardSwish`` the Conv row reads 0
  cycles and the activation row carries the fused kernel. They cost nothing extra here.
- :data:`VIEW_OPS`: reshapes that move no data (metadata only); they pay only the per-op
  overhead.
- Transfers between devices (:func:`transfer_cost`): the phone's SoC shares one LPDDR memory,
  so a tensor crossing devices is written by one and read by the other at the slower of the two
  DRAM bandwidths, plus a synchronisation latency taken as the receiving device's per-graph
  launch overhead (``graph_overhead_s``: one more partition launch).
- On-chip residency: QNN keeps intermediate activations in VTCM when they fit (8 MB on v69+;
  ResNet-50's largest activation is 0.8 MB at 8 bits) and streams weights from DRAM. With the
  earlier HTP table, charging every activation at DRAM bandwidth predicted ResNet-50 W8A8 on
  v79 at 1.06 ms against the published 0.53 ms, and made MobileNetV2 DRAM-bound everywhere.

What the model leaves out, by design: weight prefetch overlapping earlier layers' compute (each
node is its own roofline), tiling and layout padding (channel counts not a multiple of 32
waste HTP lanes), graph I/O conversion (QNN's input QuantizeLinear and layout transposes: 23-31%
of simulated cycles on the small zoo models), overlap of transfers with compute, and thermal
throttling. It is a placement signal, calibrated on published whole-model latencies
(``benchmarks/cost.py``), not a simulator.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from compiler.errors import TargetError
from compiler.ir import Graph, Node, Value
from targets.base import DeviceSpec

__all__ = [
    "PRECISION_KEYS",
    "KEY_BITS",
    "ELEMENT_OPS_PER_CYCLE",
    "ELEMENT_FACTOR",
    "FUSED_ACTIVATIONS",
    "VIEW_OPS",
    "NodeCost",
    "GraphCost",
    "node_macs",
    "node_element_ops",
    "node_bytes",
    "precision_key",
    "scheme_key",
    "device_of",
    "node_cost",
    "node_names",
    "is_fused_activation",
    "transfer_cost",
    "graph_cost",
]

#: the precision keys of ``DeviceSpec.macs_per_cycle``
PRECISION_KEYS = ("a8w8", "a16w8", "a16w16", "fp16", "fp32")

#: precision key -> (activation bits, weight bits) used for tensors without an encoding
KEY_BITS: dict[str, tuple[int, int]] = {
    "a8w8": (8, 8), "a16w8": (16, 8), "a16w16": (16, 16), "fp16": (16, 16), "fp32": (32, 32),
}

#: device family (``DeviceSpec.name`` up to the first ``-``) -> key -> element ops per cycle
ELEMENT_OPS_PER_CYCLE: dict[str, dict[str, float]] = {
    # HVX: 4 contexts x 128 lanes at 8 bits; 16-bit and fp16 (qfloat) halve the lanes
    "htp": {"a8w8": 512, "a16w8": 256, "a16w16": 256, "fp16": 256, "fp32": 128},
    # one big core, 4 x 128-bit NEON pipes
    "cpu": {"a8w8": 64, "a16w8": 32, "a16w16": 32, "fp16": 32, "fp32": 16},
    # Adreno 750-class: 1536 FP32 ALU lanes, fp16 at twice the rate
    "gpu": {"a8w8": 3072, "a16w8": 3072, "a16w16": 3072, "fp16": 3072, "fp32": 1536},
}

#: operations per output element for ops that do several (default 1)
ELEMENT_FACTOR: dict[str, int] = {
    "LayerNormalization": 5, "InstanceNormalization": 5, "GroupNormalization": 5,
    "SimplifiedLayerNormalization": 4, "RMSNormalization": 4, "Softmax": 5, "LogSoftmax": 6,
    "BatchNormalization": 2, "Gelu": 8, "HardSwish": 3, "HardSigmoid": 2, "Sigmoid": 4,
    "Tanh": 4, "Erf": 8, "Exp": 4, "Log": 4, "Pow": 4, "Sqrt": 2, "Div": 2, "Reciprocal": 2,
    "Resize": 4,
}

#: activations the HTP fuses into their producer (see the module docstring)
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "HardSwish"})
#: producers an activation fuses into
_FUSING_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"})

#: ops that only change metadata
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})

#: ops whose work scales with their input, not their output
_REDUCING = frozenset({"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceSum",
                       "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ArgMax", "ArgMin"})
#: input index of the weight of MAC ops
_WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}

Bound = Literal["compute", "memory", "fused"]


def _static(shape: Any) -> tuple[int, ...] | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _shape(v: Value | None) -> tuple[int, ...] | None:
    return None if v is None else _static(v.shape)


def node_macs(node: Node) -> int:
    """Multiply-accumulates of ``node`` (0 for ops that are not convolutions or products, and
    for dynamic shapes).

    - ``Conv``: ``numel(Y) * Cin/groups * prod(kernel)`` = ``numel(Y) * prod(W.shape[1:])``
      (depthwise: ``Cin/groups`` is 1, so one kernel window per output);
    - ``ConvTranspose``: every input element is scattered through ``Cout/groups * prod(kernel)``
      weights: ``numel(X) * prod(W.shape[1:])``;
    - ``Gemm``: ``numel(Y) * K`` (``K`` from ``A``, transposed when ``transA``);
    - ``MatMul`` (weights or two activations, as in attention's ``Q @ K^T`` and ``P @ V``):
      ``numel(Y) * K`` with ``K`` the last dimension of ``A``.
    """
    op = node.op
    if node.domain not in ("", "ai.onnx") or op not in _WEIGHT_INPUT or not node.outputs:
        return 0
    y = _shape(node.outputs[0])
    a = _shape(node.input(0))
    if y is None or a is None:
        return 0
    if op in ("Conv", "ConvTranspose"):
        w = _shape(node.input(1))
        if w is None:
            return 0
        return (_numel(y) if op == "Conv" else _numel(a)) * _numel(w[1:])
    if op == "Gemm":
        k = a[0] if node.attr("transA", 0) else a[-1]
        return _numel(y) * k
    return _numel(y) * a[-1]


def node_element_ops(node: Node) -> int:
    """Element-wise operations of a node that is not a MAC op: output elements (input elements
    for reductions and global pools; times the window for pools) times :data:`ELEMENT_FACTOR`.
    Views and MAC ops count 0."""
    if node.op in _WEIGHT_INPUT or node.op in VIEW_OPS or not node.outputs:
        return 0
    y = _shape(node.outputs[0])
    if node.op in _REDUCING:
        x = _shape(node.input(0))
        return 0 if x is None else _numel(x)
    if y is None:
        return 0
    n = _numel(y)
    if node.op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = node.attr("kernel_shape", None)
        if isinstance(kernel, (list, tuple)):
            n *= math.prod(int(k) for k in kernel)
    return n * ELEMENT_FACTOR.get(node.op, 1)


def _value_bits(v: Value, node: Node, index: int | None, key: str) -> int:
    """Encoded width of ``v`` as ``node`` reads (``index``) or writes (``None``) it."""
    if v.encoding is not None:
        return int(v.encoding.bits)
    if not v.dtype.is_float:
        return int(v.dtype.bits)
    abits, wbits = KEY_BITS[key]
    if v.is_const and index is not None:
        if _WEIGHT_INPUT.get(node.op) == index:
            return wbits
        if node.op in ("Conv", "ConvTranspose", "Gemm") and index == 2 and key[0] == "a":
            return 32  # quantized biases are int32 (QNN's bias rule)
    return abits


def node_bytes(node: Node, key: str) -> tuple[int, int, int]:
    """``(activation bytes, graph I/O bytes, constant bytes)`` ``node`` moves at precision
    ``key``: every input and output at its encoded width, split into intermediate activations,
    graph inputs/outputs (which live in DRAM) and constants (weights, biases). Views move
    nothing."""
    if node.op in VIEW_OPS:
        return 0, 0, 0
    act = io = const = 0
    seen: set[int] = set()
    for i, v in enumerate((*node.inputs, *node.outputs)):
        if v is None or id(v) in seen or v.type.numel is None:
            continue
        seen.add(id(v))
        index = i if i < len(node.inputs) else None
        nb = (v.type.numel * _value_bits(v, node, index, key) + 7) // 8
        if v.is_const:
            const += nb
        elif v.is_input or v.is_output:
            io += nb
        else:
            act += nb
    return act, io, const


def precision_key(node: Node, default: str) -> str:
    """The precision key of ``node`` from its encodings: activation width from its
    non-constant inputs and outputs, weight width from its weight input. A node with no encoding
    anywhere gets ``default`` (the float key of the build: ``fp16`` on the HTP)."""
    act = [v.encoding.bits for v in (*node.inputs, *node.outputs)
           if v is not None and not v.is_const and v.encoding is not None]
    widx = _WEIGHT_INPUT.get(node.op)
    w = node.input(widx) if widx is not None else None
    wbits = w.encoding.bits if w is not None and w.is_const and w.encoding is not None else None
    if not act and wbits is None:
        return default
    abits = max(act) if act else KEY_BITS.get(default, (8, 8))[0]
    if abits <= 8:
        return "a8w8"
    return "a16w16" if wbits is not None and wbits > 8 else "a16w8"


def scheme_key(precision: str) -> str:
    """The precision key a whole-graph scheme maps to: ``w8a8`` -> ``a8w8``, ``w8a16`` and
    ``w4a16`` -> ``a16w8`` (4-bit weights run on the 8-bit-weight datapath; they only move fewer
    bytes, which this key does not model), ``w16a16`` -> ``a16w16``, ``fp16``, ``fp32``."""
    table = {"w8a8": "a8w8", "w8a16": "a16w8", "w4a16": "a16w8", "w16a16": "a16w16",
             "fp16": "fp16", "fp32": "fp32"}
    p = precision.strip().lower()
    if p in table:
        return table[p]
    if p in PRECISION_KEYS:
        return p
    raise TargetError(f"unknown precision {precision!r}; use one of {', '.join(table)}")


def device_of(target: Any) -> DeviceSpec:
    """The :class:`DeviceSpec` of a target name (``htp-v75``, ``cpu``, ``gpu-adreno``), a
    target object (anything with ``.device``) or a ``DeviceSpec``."""
    if isinstance(target, DeviceSpec):
        return target
    if isinstance(target, str):
        from targets import get_target

        target = get_target(target)
    device = getattr(target, "device", None)
    if not isinstance(device, DeviceSpec):
        raise TargetError(f"target {target!r} has no cost model (no DeviceSpec)")
    return device


def _family(device: DeviceSpec) -> str:
    return device.name.split("-", 1)[0]


def _float_key(device: DeviceSpec) -> str:
    """The key unquantized nodes run at: fp16 where the device has it (HTP counts float as
    fp16: it has no fp32 datapath), else fp32."""
    return "fp32" if "fp32" in device.macs_per_cycle else "fp16"


def _resolve(device: DeviceSpec, key: str) -> str:
    if key in device.macs_per_cycle:
        return key
    if key == "fp32" and "fp16" in device.macs_per_cycle:
        return "fp16"
    raise TargetError(f"{device.name} has no throughput for precision {key!r} "
                      f"(it has {', '.join(device.macs_per_cycle)})")


@dataclass(frozen=True)
class NodeCost:
    """Predicted cost of one node on one device.

    ``bytes`` is everything the node reads and writes, ``dram_bytes`` the part of it that goes
    to DRAM (see :func:`node_cost`). ``bound`` is ``compute`` or ``memory`` (whichever roof is
    higher), or ``fused`` for an activation the device runs inside its producer (``seconds``
    is then 0).
    """

    name: str
    op: str
    key: str
    macs: int
    element_ops: int
    bytes: int
    dram_bytes: int
    weight_bytes: int
    compute_s: float
    memory_s: float
    overhead_s: float
    seconds: float
    bound: Bound

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"name": self.name, "op": self.op, "precision": self.key, "macs": self.macs,
                "element_ops": self.element_ops, "bytes": self.bytes,
                "dram_bytes": self.dram_bytes,
                "weight_bytes": self.weight_bytes, "compute_s": self.compute_s,
                "memory_s": self.memory_s, "overhead_s": self.overhead_s,
                "seconds": self.seconds, "bound": self.bound}


@dataclass(frozen=True)
class GraphCost:
    """Predicted cost of a graph: its nodes in order, the per-graph overhead and the total."""

    device: str
    nodes: tuple[NodeCost, ...]
    overhead_s: float
    seconds: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds",
                           sum(n.seconds for n in self.nodes) + self.overhead_s)

    @property
    def macs(self) -> int:
        """Total MACs."""
        return sum(n.macs for n in self.nodes)

    @property
    def bytes(self) -> int:
        """Total bytes moved."""
        return sum(n.bytes for n in self.nodes)

    def by_name(self) -> dict[str, NodeCost]:
        """Node costs by node name."""
        return {n.name: n for n in self.nodes}


def _vector_macs(node: Node) -> bool:
    """Grouped and depthwise convolutions: on the HTP they run on the HVX vector unit, not the
    HMX matrix unit (whose tiles need a dense reduction over input channels)."""
    g = node.attr("group", 1)
    return node.op in ("Conv", "ConvTranspose") and isinstance(g, int) and g > 1


def node_cost(node: Node, device: DeviceSpec, precision_key: str) -> NodeCost:
    """Roofline cost of ``node`` alone on ``device`` at ``precision_key`` (see the module
    docstring). Tensors without an encoding are counted at the key's widths.

    DRAM traffic is the constants, the graph inputs/outputs, and the intermediate activations
    only when the node's activation working set exceeds ``device.vtcm_bytes`` (the on-chip
    memory: VTCM on the HTP, L2 on the CPU); on-chip activations cost vector cycles (counted
    in ``element_ops`` work), not DRAM time.
    """
    key = _resolve(device, precision_key)
    macs = node_macs(node)
    elems = node_element_ops(node)
    act, io, const = node_bytes(node, key)
    family = _family(device)
    lanes = ELEMENT_OPS_PER_CYCLE.get(family, ELEMENT_OPS_PER_CYCLE["cpu"])
    lane_rate = lanes.get(key, lanes["fp32"]) * device.clock_hz
    mac_rate = device.macs_per_cycle[key] * device.clock_hz
    if family == "htp" and _vector_macs(node):
        mac_rate = min(mac_rate, lane_rate)
    compute = macs / mac_rate + elems / lane_rate
    dram = const + io + (act if act + io > device.vtcm_bytes else 0)
    memory = dram / device.dram_bytes_per_s
    seconds = max(compute, memory) + device.op_overhead_s
    return NodeCost(name=node.name, op=node.op, key=key, macs=macs, element_ops=elems,
                    bytes=act + io + const, dram_bytes=dram, weight_bytes=const,
                    compute_s=compute, memory_s=memory, overhead_s=device.op_overhead_s,
                    seconds=seconds,
                    bound="compute" if compute >= memory and compute > 0 else "memory")


def transfer_cost(nbytes: int, src: Any, dst: Any) -> float:
    """Seconds to hand ``nbytes`` from device ``src`` to device ``dst`` (targets, names or
    ``DeviceSpec``s): 0 on the same device, else the bytes at the slower DRAM bandwidth plus
    ``dst``'s per-graph launch overhead as the synchronisation latency."""
    if nbytes < 0:
        raise ValueError(f"transfer_cost: negative byte count {nbytes}")
    s, d = device_of(src), device_of(dst)
    if s.name == d.name:
        return 0.0
    return nbytes / min(s.dram_bytes_per_s, d.dram_bytes_per_s) + d.graph_overhead_s


def is_fused_activation(node: Node) -> bool:
    """Whether ``node`` is an activation the HTP runs inside its single-consumer producer."""
    if node.op not in FUSED_ACTIVATIONS or not node.inputs or node.inputs[0] is None:
        return False
    x = node.inputs[0]
    return (x.producer is not None and x.producer.op in _FUSING_PRODUCERS
            and len(x.uses) == 1 and not x.is_output)


def node_names(graph: Graph) -> dict[int, str]:
    """A name per node: its own, else its first output's (deduplicated), the rule the HTP
    emitter uses to name nodes, so costs line up with simulator profile rows."""
    taken = {n.name for n in graph.nodes if n.name}
    out: dict[int, str] = {}
    for n in graph.nodes:
        name = n.name
        if not name:
            base = n.outputs[0].name if n.outputs and n.outputs[0] is not None else n.op
            name, i = base, 1
            while name in taken:
                name, i = f"{base}_{i}", i + 1
            taken.add(name)
        out[id(n)] = name
    return out


def graph_cost(graph: Graph, target: Any, default_key: str | None = None) -> GraphCost:
    """Cost of every node of ``graph`` on ``target`` plus the per-graph overhead.

    Unnamed nodes are named after their first output (as the HTP emitter names them). Each
    node's precision comes from its encodings (:func:`precision_key`); nodes without any
    encoding run at ``default_key`` (default: the device's float key, ``fp16`` on the HTP and
    the GPU, ``fp32`` on the CPU). On the HTP, activations in :data:`FUSED_ACTIVATIONS` that
    follow a Conv/Gemm/MatMul/Add cost nothing (``bound == "fused"``).
    """
    device = device_of(target)
    default = default_key or _float_key(device)
    _resolve(device, default)
    fuse = _family(device) == "htp"
    names = node_names(graph)
    out: list[NodeCost] = []
    for n in graph.nodes:
        key = precision_key(n, default)
        name = names[id(n)]
        if fuse and is_fused_activation(n):
            k = _resolve(device, key)
            out.append(NodeCost(name, n.op, k, 0, node_element_ops(n), 0, 0, 0, 0.0, 0.0,
                                0.0, 0.0, "fused"))
            continue
        c = node_cost(n, device, key)
        out.append(c if c.name == name else dataclasses.replace(c, name=name))
    return GraphCost(device.name, tuple(out), device.graph_overhead_s)

