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
from qcc.frontend import lifters, qdq_lifters  # noqa: F401  (qdq_lifters registers QuantizeLinear/DequantizeLinear)
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


def load_onnx(model: Union[str, Path, onnx.ModelProto], input_shapes: Optional[dict] = None) -> Graph:
    """Lift an ONNX model into a verified qcc Graph (see the module docstring)."""
    proto, source = _read(model)
    proto = onnx.ModelProto.FromString(proto.SerializeToString())  # never mutate the caller's model
    opset = _default_opset(proto, source)
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # ValidationError, or decoding errors on corrupt strings
        text = str(e).strip().splitlines()
        raise InputError(f"{source}: the ONNX checker rejects the model: "
                         f"{text[0] if text else type(e).__name__}") from None
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
