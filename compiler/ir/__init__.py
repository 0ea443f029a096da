"""The edgec IR: values, nodes, graphs, types, quantization encodings, verifier, text form."""

from compiler.ir.archive import load_ir, save_ir
from compiler.ir.core import (
    EDGEC_DOMAIN,
    ExternalArray,
    Graph,
    Node,
    NodeList,
    UnresolvedConst,
    Value,
    const_hash,
)
from compiler.ir.encoding import QuantEncoding
from compiler.ir.parser import parse
from compiler.ir.printer import print_graph
from compiler.ir.types import DType, Shape, TensorType
from compiler.ir.verify import (
    EdgecOpSchema,
    check_finite,
    register_edgec_op,
    topological_order,
    verify,
)

__all__ = [
    "EDGEC_DOMAIN",
    "DType",
    "EdgecOpSchema",
    "ExternalArray",
    "Graph",
    "Node",
    "NodeList",
    "QuantEncoding",
    "Shape",
    "TensorType",
    "UnresolvedConst",
    "Value",
    "check_finite",
    "const_hash",
    "load_ir",
    "parse",
    "print_graph",
    "register_edgec_op",
    "save_ir",
    "topological_order",
    "verify",
]
