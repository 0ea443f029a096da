"""The HTP's quantization rules (what the QNN HTP backend accepts and runs well).

- Weights: signed, symmetric, per output channel (per-tensor weights cost ~1-3 dB on CNNs).
- Activations: unsigned, asymmetric, 8 or 16 bits.
- Bias: int32 with ``scale = input_scale * weight_scale`` and zero point 0.
- Data-movement ops (Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Slice, Gather on data,
  MaxPool, Split, Expand, Tile, DepthToSpace, SpaceToDepth) keep their input's encoding: the
  HTP moves integers, and a requantize would be wasted work and error.
- Fixed ranges: Softmax and Sigmoid outputs in [0, 1], Tanh in [-1, 1].
- Relu/Clip after Conv, Gemm and MatMul are fused by the HTP: the producer's output gets no
  encoding of its own.
- SiLU gates at 8 bits: ``a = Add(x, c); y = a · Sigmoid(a)`` with 16-bit tensors comes out
  wrong on the HTP (QAIRT 2.x simulator, v75: max |HTP - CPU| 4.2 on outputs of magnitude 4;
  the same without the Add, or with an 8-bit Sigmoid output, agrees to the rounding step). This
  broke every GroupNorm -> SiLU of the UNet at w8a16 (1.3 dB against FP32). An 8-bit gate in
  [0, 1] costs under 0.2% of the product.
- MatMul of two 16-bit activations (attention's ``Q·Kᵀ`` and ``P·V``): the QNN EP converts the
  second input of a uint16 x uint16 MatMul to uint8 (``matmul_op_builder.cc``), so the HTP
  computes it at 8 bits (40 dB against the CPU reference instead of 76-80 on the simulator);
  the HTP takes uint16 x *symmetric* int16. So that second input gets a symmetric range (zero
  point 32768), and the emitter hands it to the EP as int16 with zero point 0, the same grid
  (``legalize_matmul.py``). Symmetry costs at most one of the 16 bits of that tensor.
- 16-bit weights (a ``w16`` override): the HTP's 16x16 Conv/FullyConnected kernels read the
  int32 bias at ``input scale * weight scale`` with less precision than it has: a Linear
  with a bias of magnitude 0.1 agreed with the CPU reference at 25 dB, 60 dB at 0.001, and a
  bias of 1 overflows the int32 grid outright (the CPU reference too). So such a node's bias
  becomes a separate 16-bit Add after it (``wide_weight_bias_add``).
"""

from __future__ import annotations

from passes.quant.rules import QuantRules

__all__ = ["HTP_QUANT_RULES"]

HTP_QUANT_RULES = QuantRules(
    weight_bits=(4, 8, 16),
    activation_bits=(8, 16),
    weight_symmetric=True,
    weight_signed=True,
    weight_per_channel=True,
    activation_signed=False,
    bias_bits=32,
    shared_encoding_ops=frozenset({
        "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather",
        "MaxPool", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth",
    }),
    fixed_ranges={"Softmax": (0.0, 1.0), "Sigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0)},
    fused_activations=frozenset({"Relu"}),
    block_quant_ops=frozenset({"MatMul", "Gemm"}),
    silu_gate_bits=8,
    symmetric_matmul_rhs=True,
    wide_weight_bias_add=True,
)

