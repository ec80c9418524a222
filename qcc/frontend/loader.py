"""Load a model file of any kind qcc reads, chosen by its suffix.

    .onnx -> load_onnx (float or QDQ ONNX; steps in qcc.frontend.importer)
    .qir  -> qcc.ir.parser.parse_file (the text IR)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import onnx
from onnx import shape_inference

from qcc.errors import InputError, OpError, UnsupportedModelError
from qcc.frontend import lifters, loop_lifters, qdq_lifters, recurrent_lifters, scan_lifters  # noqa: F401
from qcc.frontend.importer import ONNX_DTYPES, Importer, _default_opset, _pin_input_shapes, _read, _value_type
from qcc.ir.graph import Graph
from qcc.ir.types import TensorType


def load_model(path: Union[str, Path], input_shapes: Optional[dict] = None) -> Graph:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return load_onnx(path, input_shapes)
    if suffix == ".qir":
        if input_shapes:
            raise InputError(f"{path}: --input-shape applies to ONNX models; a .qir file fixes its own shapes")
        from qcc.ir.parser import parse_file
        return parse_file(path)
    raise InputError(f"{path}: unknown model format '{suffix or '(no suffix)'}'; qcc reads .onnx and .qir files")


# Sliding-window attributes and their smallest legal value (ONNX Conv, ConvTranspose, pools).
WINDOW_ATTRIBUTES = {"strides": 1, "dilations": 1, "kernel_shape": 1, "pads": 0, "group": 1}
WINDOW_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool",
              "MaxUnpool"}


def _check_window_attributes(g, source):
    """Name the node and attribute of a zero/negative stride, dilation, kernel or pad before anything
    downstream (shape inference, the checker) fails on it with a message about some other tensor."""
    for i, node in enumerate(g.node):
        if node.op_type not in WINDOW_OPS:
            continue
        for a in node.attribute:
            least = WINDOW_ATTRIBUTES.get(a.name)
            if least is None or a.type not in (onnx.AttributeProto.INTS, onnx.AttributeProto.INT):
                continue
            values = list(a.ints) if a.type == onnx.AttributeProto.INTS else [a.i]
            if any(v < least for v in values):
                name = node.name or f"#{i}"
                shown = values if a.type == onnx.AttributeProto.INTS else values[0]
                raise InputError(f"{source}: ONNX node \"{name}\" ({node.op_type}): attribute '{a.name}' must "
                                 f"be >= {least}, got {shown}")


def _run_checker(proto: onnx.ModelProto, source):
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # ValidationError, or decoding errors on corrupt strings
        text = str(e).strip().splitlines()
        raise InputError(f"{source}: the ONNX checker rejects the model: "
                         f"{text[0] if text else type(e).__name__}") from None


def _check_graph_interface(proto: onnx.ModelProto, source) -> None:
    """Refuse a graph with nothing to compile: no nodes, no outputs or no inputs."""
    g = proto.graph
    init_names = {i.name for i in g.initializer}
    if not g.node:
        raise InputError(f"{source}: the graph has no nodes: there is nothing to compile")
    if not g.output:
        raise InputError(f"{source}: the graph has no outputs: there is nothing to compute")
    if not [i for i in g.input if i.name not in init_names]:
        raise InputError(f"{source}: the graph has no inputs (only initializers): its C function would have "
                         f"nothing to read")


def _checker_probe(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for onnx.checker whose shapeless or untyped graph inputs/outputs pretend to be typed scalars.

    The checker refuses those without naming them; qcc names them itself
    (``--input-shape`` for inputs), and types outputs by shape inference and
    its own import-time evaluation.
    """
    probe = onnx.ModelProto.FromString(proto.SerializeToString())
    for vi in list(probe.graph.input) + list(probe.graph.output):
        kind = vi.type.WhichOneof("value")
        if kind is None or (kind == "tensor_type" and not vi.type.tensor_type.HasField("shape")):
            vi.type.tensor_type.elem_type = vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
            vi.type.tensor_type.shape.SetInParent()
    return probe


def _standard_contrib_qdq(proto: onnx.ModelProto) -> None:
    """onnxruntime's contrib ``com.microsoft`` QuantizeLinear / DequantizeLinear (its quantizer's 16-bit
    form before ONNX opset 21) have the ONNX ops' semantics: read them as those."""
    for node in proto.graph.node:
        if node.domain == "com.microsoft" and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.domain = ""


def load_onnx(model: Union[str, Path, onnx.ModelProto], input_shapes: Optional[dict] = None) -> Graph:
    """Lift an ONNX model into a verified qcc Graph (see the module docstring)."""
    proto, source = _read(model)
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # never mutate the caller's model
    if not proto.HasField("graph") and not proto.opset_import:  # an empty file parses as an empty message
        raise InputError(f"{source}: not an ONNX model (no graph: the file is empty or in another format)")
    _standard_contrib_qdq(proto)
    opset = _default_opset(proto, source)
    _check_window_attributes(proto.graph, source)
    _check_graph_interface(proto, source)
    _run_checker(_checker_probe(proto), source)
    _pin_input_shapes(proto, input_shapes, source)
    try:
        proto = shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as e:
        raise InputError(f"{source}: ONNX shape inference failed: {str(e).strip().splitlines()[0]}") from None

    imp = Importer(proto, opset, source)
    problems = lifters.check_model(imp)
    if problems:
        lines = "\n".join(f"  node \"{name}\" ({op_type}): {why}" for name, op_type, why in problems)
        raise UnsupportedModelError(f"{source}: {len(problems)} unsupported node"
                                    f"{'s' if len(problems) != 1 else ''}; nothing was compiled:\n{lines}")

    g = imp.graph
    init_names = set(imp.consts)
    for vi in proto.graph.input:
        if vi.name in init_names:
            continue
        shape, elem = _value_type(vi)
        imp.values[vi.name] = g.add_input(vi.name, TensorType(shape, ONNX_DTYPES[elem]))
    for node in proto.graph.node:
        try:
            lifters.lift_node(imp, node)
        except (OpError, ValueError) as e:
            raise InputError(f"{source}: ONNX node \"{imp.node_name(node)}\" ({node.op_type}): {e}") from None
    outputs = [imp.value(o.name) for o in proto.graph.output]
    g.set_outputs(outputs, [o.name for o in proto.graph.output])
    g.verify()
    return g
