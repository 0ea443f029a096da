"""The quantization rules a target hands to the quantizer, and the roles tensors play.

The quantizer has no opinions of its own: which widths are allowed, which tensors share an
encoding, which ranges are fixed and how biases are stored come from the target's
:class:`QuantRules` (``targets/hexagon_htp/rules.py`` for the HTP), passed to the passes in
``ctx.options["quant_rules"]``. Passes cannot import targets (dependencies go
``targets -> passes``), so the schema lives here and ``targets.base`` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compiler.ir import Node, Value

__all__ = ["QuantRules", "weight_axis", "is_bias", "WEIGHT_OPS"]

#: ops whose second input is a weight (quantized signed, symmetric, per output channel)
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class QuantRules:
    """How a target wants tensors quantized.

    - weights: ``weight_signed``/``weight_symmetric``, per output channel when
      ``weight_per_channel``;
    - activations: unsigned and asymmetric unless ``activation_signed``;
    - bias: ``bias_bits``-wide integers with ``scale = input_scale * weight_scale``, zero
      point 0;
    - ``shared_encoding_ops``: ops whose output carries their first input's encoding (data
      movement and max-like ops the target runs without requantizing);
    - ``fixed_ranges``: ops whose output range is known exactly (``Softmax``: [0, 1]);
    - ``fused_activations``: ops a producer absorbs (``Relu``): the producer's output gets no
      encoding of its own when such an op is its only consumer;
    - ``block_quant_ops``: ops whose weights may be quantized per block;
    - ``silu_gate_bits``: width cap for a Sigmoid output that gates its own input
      (SiLU ``x·sigmoid(x)``), where a target computes the wide form wrong;
    - ``symmetric_matmul_rhs``: the second input of a MatMul between two 16-bit activations
      gets a range symmetric about zero (zero point at mid-scale), so the target can take it
      as a signed symmetric tensor without requantizing;
    - allowed widths per role.
    """

    weight_bits: tuple[int, ...] = (4, 8, 16)
    activation_bits: tuple[int, ...] = (8, 16)
    weight_symmetric: bool = True
    weight_signed: bool = True
    weight_per_channel: bool = True
    activation_signed: bool = False
    bias_bits: int = 32
    shared_encoding_ops: frozenset[str] = frozenset()
    fixed_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    fused_activations: frozenset[str] = frozenset()
    block_quant_ops: frozenset[str] = frozenset()
    silu_gate_bits: int | None = None
    symmetric_matmul_rhs: bool = False
    #: Conv/Gemm whose weights are wider than 8 bits take their bias as a separate 16-bit Add
    wide_weight_bias_add: bool = False
    #: ops the target cannot run with 16-bit weights when activations are 16-bit, etc.: free
    #: notes the quantizer copies into its report
    notes: tuple[str, ...] = ()


def weight_axis(node: Node, index: int) -> int | None:
    """The output-channel axis of input ``index`` of ``node`` when it is a weight, else None."""
    if index != 1 or node.op not in WEIGHT_OPS:
        return None
    w: Value | None = node.inputs[1]
    rank = w.type.rank if w is not None else None
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        return 0 if node.attr("transB", 0) else 1
    if rank is None or rank < 2:
        return None
    return rank - 1  # MatMul: [..., K, N], output channels last


def is_bias(node: Node, index: int) -> bool:
    """True for the bias input of Conv, ConvTranspose and Gemm."""
    return index == 2 and node.op in ("Conv", "ConvTranspose", "Gemm")
