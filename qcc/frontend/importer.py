"""The ONNX frontend: lift an ONNX model (opset 11-21) into the qcc graph IR.

    g = load_onnx("kws.onnx", input_shapes={"input_1": (1, 49, 10, 1)})

Steps: refuse what cannot be compiled with a message naming it (an empty
file or graph, no inputs or outputs, an opset newer than the installed onnx,
a zero/negative stride, dilation, kernel or pad: node and attribute), check
the model (``onnx.checker``, on a copy where shapeless graph inputs/outputs
are typed so that qcc names them itself), pin input shapes (a
dynamic batch dimension becomes 1; any other dynamic dimension must be given),
run ONNX shape inference with data propagation, check *every* node and report
all unsupported ones in one ``UnsupportedModelError`` (also: constants holding
NaN/Inf, a Div by a constant with zeros, an integer graph input cast to
float), then lift node by node.

Import-time resolution keeps the IR simple: ``auto_pad`` becomes explicit pads,
Clip/Pad/Squeeze/Unsqueeze/ReduceMean constant inputs become attributes, a
constant Reshape target is resolved (no 0 or -1), negative axes are made
positive, and opset < 13 Softmax is rewritten to a single-axis softmax.
Initializers and Constant nodes become ``qcc.const`` ops when an op uses them
as operands. The per-op lifters live in ``lifters`` and ``qdq_lifters``;
``loader.load_onnx`` runs the steps.

Opsets above 21 are accepted node by node when the op's inputs and outputs
are unchanged since opset 21 (later revisions only widened element types) and
the node uses no attribute qcc does not know.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from qcc.errors import InputError, OpError, UnsupportedModelError
from qcc.ir.graph import Graph, Value
from qcc.ir.registry import get_op
from qcc.ir.types import TensorType

MIN_OPSET, MAX_OPSET = 11, 21

# IR ops evaluated at import time on small constant operands, to type a Reshape
# whose target is computed from static shapes (ONNX inference often gives up there).
SHAPE_CHAIN_OPS = {"nn.gather", "nn.concat", "nn.unsqueeze", "nn.squeeze", "nn.slice", "nn.cast", "nn.reshape",
                   "nn.identity", "nn.add", "nn.sub", "nn.mul", "nn.div", "nn.flatten"}

ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.DOUBLE: "f64", onnx.TensorProto.INT8: "i8",
    onnx.TensorProto.INT16: "i16", onnx.TensorProto.INT32: "i32", onnx.TensorProto.INT64: "i64",
    onnx.TensorProto.UINT8: "u8", onnx.TensorProto.UINT16: "u16", onnx.TensorProto.BOOL: "bool",
}


def onnx_dtype_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


class Importer:
    """State of one import: ONNX value types, constants, and the graph being built."""

    def __init__(self, model: onnx.ModelProto, opset: int, source: str):
        self.model, self.opset, self.source = model, opset, source
        self.graph = Graph(_sanitize_graph_name(model.graph.name))
        self.values: Dict[str, Value] = {}
        self.types: Dict[str, tuple] = {}  # name -> (shape with None for unknown dims or None, elem_type)
        self.consts: Dict[str, np.ndarray] = {}  # initializers and Constant outputs, by value name
        self.const_op_names: Dict[str, str] = {}
        for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
            self.types[vi.name] = _value_type(vi)
        for init in model.graph.initializer:
            self.consts[init.name] = tensor_array(init, source)
            self.const_op_names[init.name] = init.name
            self.types[init.name] = (tuple(init.dims), init.data_type)
        self.node_names = _node_names(model.graph.node)
        self._index = {_node_key(n): i for i, n in enumerate(model.graph.node)}
        self.producers = {o: n for n in model.graph.node for o in n.output if o}
        # Values computable at import time from static shapes and constants (Shape -> Gather ->
        # Concat -> Reshape chains): used only to type results ONNX inference left unknown.
        self.known: Dict[Value, np.ndarray] = {}
        self.used_outputs = {name for node in model.graph.node for name in node.input if name}
        self.used_outputs |= {o.name for o in model.graph.output}

    # ------------------------------------------------------------ queries for lifters
    def shape(self, name: str) -> Optional[tuple]:
        """The static shape of an ONNX value, or None when inference left it unknown."""
        shape, _ = self.types.get(name, (None, 0))
        if shape is None or any(d is None for d in shape):
            return None
        return shape

    def rank(self, name: str) -> Optional[int]:
        shape, _ = self.types.get(name, (None, 0))
        return None if shape is None else len(shape)

    def const(self, name: str) -> Optional[np.ndarray]:
        return self.consts.get(name) if name else None

    def is_used(self, name: str) -> bool:
        return bool(name) and name in self.used_outputs

    # ------------------------------------------------------------ building
    def value(self, name: str) -> Value:
        """The IR value of an ONNX value name; constants materialize on first use."""
        if name in self.values:
            return self.values[name]
        if name in self.consts:
            array = self.consts[name]
            v = self.graph.add_const(array, name=self.const_op_names[name])
            v.name = name
            self.values[name] = v
            return v
        raise InputError(f"{self.source}: value '{name}' is used before it is defined")

    def add_const(self, array: np.ndarray, name: str) -> Value:
        v = self.graph.add_const(np.asarray(array), name=name)
        v.name = name
        return v

    def emit(self, opname: str, operands: Sequence[Value], attrs: dict, node, name: str = "",
             outputs: Optional[Sequence[str]] = None) -> Value:
        """Add an op for ``node``; result types come from ONNX when fully known, else the shape rule.

        ``outputs`` names the ONNX values the results define (default: the
        node's first output); pass ``[]`` for an intermediate op of a lift.
        """
        from qcc.sim.interpreter import run_op

        outputs = [node.output[0]] if outputs is None else list(outputs)
        opdef = get_op(opname)
        types = [self._onnx_type(n) for n in outputs] if outputs else []
        known = self._known_operands(opname, operands)
        if not types or any(t is None for t in types):
            probe = _Probe(operands, opdef.complete_attrs(attrs, name))
            inferred = opdef.infer_types(probe)
            if any(t is None for t in inferred):  # let the shape rule see import-time known operands
                probe.operands = [_KnownValue(v, self.known.get(v)) for v in operands]
                inferred = [t or i for t, i in zip(inferred, opdef.infer_types(probe))]
            types = [t if t is not None else i for t, i in zip(types or inferred, inferred)]
            if any(t is None for t in types):
                raise OpError("the result shape depends on run-time values and ONNX shape inference "
                              "could not determine it")
        op = self.graph.add_op(opname, operands, attrs, types, name=name or self.node_name(node),
                               result_names=outputs or None)
        for n in (self.node_name(node), op.name):
            self.graph.source_ops.setdefault(n, node.op_type)
        for n, r in zip(outputs, op.results):
            self.values[n] = r
        if known is not None:
            for r, a in zip(op.results, run_op(op, known)):
                self.known[r] = a
        elif opname == "nn.shape":  # input shapes are static, so every Shape is known
            self.known[op.results[0]] = np.array(operands[0].shape, np.int64)
        return op.results[0]

    def _known_operands(self, opname: str, operands: Sequence[Value]) -> Optional[list]:
        """Import-time arrays of the operands of a small shape computation, else None."""
        if opname not in SHAPE_CHAIN_OPS:
            return None
        arrays = []
        for v in operands:
            a = v.constant() if v.is_constant() else self.known.get(v)
            if a is None or a.size > 64:
                return None
            arrays.append(a)
        return arrays

    def node_name(self, node) -> str:
        return self.node_names[self._index[_node_key(node)]]

    def _onnx_type(self, name: str) -> Optional[TensorType]:
        shape = self.shape(name)
        dtype = ONNX_DTYPES.get(self.types.get(name, (None, 0))[1])
        return TensorType(shape, dtype) if shape is not None and dtype else None


class _KnownValue:
    """A Value seen by a shape rule as constant when its value is known at import time."""

    def __init__(self, value: Value, array: Optional[np.ndarray]):
        self.type, self.shape, self._array, self._value = value.type, value.shape, array, value

    def is_constant(self) -> bool:
        return self._array is not None or self._value.is_constant()

    def constant(self) -> Optional[np.ndarray]:
        return self._array if self._array is not None else self._value.constant()


class _Probe:
    """Just enough of an Op for a shape rule to run before the op exists."""

    def __init__(self, operands, attrs):
        self.operands, self.attrs, self.results = list(operands), attrs, []


def _node_key(node) -> tuple:
    # Protobuf hands out fresh wrapper objects, so nodes are keyed by content (outputs are SSA names).
    return node.op_type, tuple(node.input), tuple(node.output)


def _value_type(vi) -> tuple:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None, t.elem_type
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim), t.elem_type


def _node_names(nodes) -> List[str]:
    """ONNX node names, with deterministic ``OpType_index`` names for unnamed nodes."""
    taken = {n.name for n in nodes if n.name}
    names = []
    for i, n in enumerate(nodes):
        name = n.name
        if not name:
            name = base = f"{n.op_type}_{i}"
            k = 1
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            taken.add(name)
        names.append(name)
    return names


def _sanitize_graph_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else "main" if not cleaned else "g_" + cleaned


def tensor_array(tensor, source: str) -> np.ndarray:
    """An ONNX TensorProto's data, or an InputError naming it when its data is corrupt."""
    try:
        return numpy_helper.to_array(tensor)
    except Exception as e:  # wrong byte counts, unknown data types, bad external data
        raise InputError(f"{source}: tensor '{tensor.name}' has unreadable data "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None


# ---------------------------------------------------------------- loading
def _read(model: Union[str, Path, onnx.ModelProto]) -> tuple:
    if isinstance(model, onnx.ModelProto):
        return model, model.graph.name or "<model>"
    path = Path(model)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        return onnx.load(str(path)), str(path)
    except Exception as e:  # protobuf DecodeError and friends
        raise InputError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None


def _default_opset(model, source) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise InputError(f"{source}: the model imports no ai.onnx opset")
    opset = versions[0]
    known = onnx.defs.onnx_opset_version()
    if opset > known:
        raise UnsupportedModelError(
            f"{source}: the model imports ai.onnx opset {opset}, beyond the newest this onnx package knows "
            f"({known}); qcc reads opsets {MIN_OPSET} to {known}")
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{source}: opset {opset} is older than {MIN_OPSET}; convert it first, e.g. "
            f"onnx.version_converter.convert_version(model, 13)")
    return opset


def _pin_input_shapes(model, input_shapes: Optional[dict], source: str):
    """Make every graph input static: user shapes first, then a dynamic batch dim -> 1."""
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    given = dict(input_shapes or {})
    unknown = set(given) - {i.name for i in inputs}
    if unknown:
        raise InputError(f"{source}: --input-shape names {', '.join(sorted(unknown))}, but the model's inputs are "
                         f"{', '.join(i.name for i in inputs)}")
    for vi in list(inputs) + list(model.graph.output):
        if not vi.type.HasField("tensor_type"):
            kind = vi.type.WhichOneof("value")
            if kind is None:
                raise InputError(f"{source}: graph input/output '{vi.name}' has no type; give it a tensor type "
                                 f"and shape")
            raise UnsupportedModelError(f"{source}: graph input/output '{vi.name}' is a {kind.replace('_type', '')}, "
                                        f"not a tensor; qcc supports tensors only")
    for vi in inputs:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if vi.name in given:
            declared = dims
            dims = [int(d) for d in given[vi.name]]
            if any(d <= 0 for d in dims):
                raise InputError(f"{source}: --input-shape {vi.name}: dimensions must be positive, got {dims}")
            if tt.HasField("shape") and len(declared) != len(dims):
                shown = "x".join(str(d) if d else "N" for d in declared)
                raise InputError(f"{source}: --input-shape {vi.name} gives {len(dims)} dimensions but the model "
                                 f"declares {len(declared)} ({shown})")
            clash = [(i, d, g) for i, (d, g) in enumerate(zip(declared, dims)) if d is not None and d != g]
            if tt.HasField("shape") and clash:
                i, d, g = clash[0]
                raise InputError(f"{source}: --input-shape {vi.name}: dimension {i} is {d} in the model, not {g}")
        elif dims and dims[0] is None:
            dims[0] = 1
        if not tt.HasField("shape") and vi.name not in given:
            raise InputError(f"{source}: input '{vi.name}' has no shape; give one with "
                             f"--input-shape {vi.name}=1x49x10x1")
        if any(d is None for d in dims):
            example = "x".join(str(d) if d else "N" for d in dims)
            raise InputError(f"{source}: input '{vi.name}' has a dynamic dimension ({example}); give the shape "
                             f"with --input-shape {vi.name}=1x49x10x1 (input_shapes={{'{vi.name}': (...)}})")
        tt.shape.ClearField("dim")
        for d in dims:
            tt.shape.dim.add().dim_value = d
    # Declared output dims (often symbolic) would shadow the inferred ones.
    for vi in model.graph.output:
        if any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim):
            vi.type.tensor_type.ClearField("shape")
