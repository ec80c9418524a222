"""The IR: tensor types (``types``), the op registry (``registry``), the built-in op
definitions (``ops``), the graph (``graph``), and the text form (``printer``, ``parser``).

Importing any part of ``qcc.ir`` registers the built-in ops.
"""
from qcc.ir import ops  # noqa: F401  (registers the built-in ops)
from qcc.ir.graph import Graph, Op, Value
from qcc.ir.registry import AttrSpec, OpDef, get_op, register_op, registered_ops
from qcc.ir.types import FixedPoint, PerAxisQuant, TensorType, UniformQuant

__all__ = ["Graph", "Op", "Value", "AttrSpec", "OpDef", "get_op", "register_op", "registered_ops",
           "FixedPoint", "PerAxisQuant", "TensorType", "UniformQuant"]
