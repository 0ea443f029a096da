"""The edgec IR: values, nodes, graphs, types, quantization encodings, verifier, text form."""

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
from compiler.ir.verify import EdgecOpSchema, register_edgec_op, topological_order, verify

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
    "const_hash",
    "parse",
    "print_graph",
    "register_edgec_op",
    "topological_order",
    "verify",
]
