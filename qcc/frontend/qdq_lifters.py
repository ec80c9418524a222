"""ONNX QuantizeLinear / DequantizeLinear lifters (QDQ models, e.g. converted int8 .tflite).

    QuantizeLinear(x, scale, zp)        -> q.quantize x : tensor<...x!q.uniform<i8:f32, scale:zp>>
    DequantizeLinear(q, scale, zp, axis) -> q.dequantize q : tensor<...xf32>

The quantization parameters move into the types: real = scale * (q - zp),
per tensor (``UniformQuant``) or, for constants, per axis (``PerAxisQuant``).
A constant DequantizeLinear input (weights, int32 biases) becomes a
``qcc.const`` carrying the quantized type. A non-constant input that is still
a plain integer tensor (an int8 graph input, or the result of a Reshape or
Transpose of one) receives the DequantizeLinear's type, and so do the
integer shape ops and graph input it comes through, so the graph can take
and give int8 directly. ``lower-qdq`` then turns the float islands between
dequantize and quantize into ``s8.*`` ops.

The lifters register into ``lifters.LIFTERS``; ``loader`` imports this
module so that they are there before a model is checked.
"""
from __future__ import annotations

import numpy as np

from qcc.errors import OpError
from qcc.ir.graph import Graph
from qcc.frontend.lifters import _inp, lifter
from qcc.ir.types import PerAxisQuant, TensorType, UniformQuant, dtype_of_numpy

# Integer shape ops a quantized type passes through unchanged.
SHAPE_OPS = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose")
QDQ_DTYPES = ("i8", "u8", "i16", "u16", "i32")


def _params(imp, node, a, value_rank: int):
    scale = imp.const(node.input[1])
    zp_name = _inp(node, 2)
    zp = imp.const(zp_name) if zp_name else None
    if scale is None or (zp_name and zp is None):
        raise OpError("scale and zero point must be constants")
    scale = np.asarray(scale, np.float32)
    zp = np.zeros(scale.shape, np.uint8) if zp is None else np.asarray(zp)
    storage = dtype_of_numpy(zp.dtype)
    if scale.size == 1 and scale.ndim <= 1:
        return storage, UniformQuant(float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]))
    axis = a.get("axis", 1)
    axis = axis + value_rank if axis < 0 else axis
    return storage, PerAxisQuant(axis, tuple(float(s) for s in scale.reshape(-1)),
                                 tuple(int(z) for z in zp.reshape(-1)))


def _check_qdq(imp, node, a):
    if imp.const(node.input[1]) is None:
        return "the scale must be a constant"
    if _inp(node, 2) and imp.const(node.input[2]) is None:
        return "the zero point must be a constant"
    if "block_size" in a and a["block_size"]:
        return "blocked quantization is not supported"
    scale = imp.const(node.input[1])
    if np.any(~(np.asarray(scale, np.float64) > 0)):
        return "scales must be positive"
    return None


def _assign_quant(v, storage: str, quant, node_name: str):
    """Give a plain integer value (and the integer shape ops it comes through) the type of a dequantize."""
    while True:
        t = v.type
        if t.quant is not None:
            if t.quant != quant or t.dtype != storage:
                raise OpError(f"'{node_name}' reinterprets a {t.dtype} tensor quantized as {t.quant} "
                              f"with different parameters {quant}; a requantize is not expressible here")
            return
        if t.dtype != storage:
            raise OpError(f"input is {t.dtype} but the zero point says {storage}")
        if isinstance(quant, PerAxisQuant):
            raise OpError("per-axis dequantization of a non-constant tensor is not supported")
        v.type = TensorType(t.shape, storage, quant)
        producer = v.producer
        if producer is None or producer.opname not in SHAPE_OPS:
            return
        v = producer.operands[0]


@lifter("DequantizeLinear", attrs=("axis", "block_size"), check=_check_qdq)
def _dequantize(imp, node, a):
    name = node.input[0]
    array = imp.const(name)
    if array is not None:
        rank = np.ndim(array)
        storage, quant = _params(imp, node, a, rank)
        if dtype_of_numpy(np.asarray(array).dtype) != storage:
            raise OpError(f"constant is {np.asarray(array).dtype} but the zero point is {storage}")
        x = imp.graph.add_const(np.asarray(array), name=imp.const_op_names.get(name, name), quant=quant)
        x.name = name
    else:
        x = imp.value(name)
        storage, quant = _params(imp, node, a, len(x.shape))
        _assign_quant(x, storage, quant, imp.node_name(node))
    out = TensorType(x.shape, "f32")
    op = imp.graph.add_op("q.dequantize", [x], {}, [out], name=imp.node_name(node),
                          result_names=[node.output[0]])
    imp.values[node.output[0]] = op.result


@lifter("QuantizeLinear", attrs=("axis", "block_size", "saturate"), check=_check_qdq)
def _quantize(imp, node, a):
    x = imp.value(node.input[0])
    storage, quant = _params(imp, node, a, len(x.shape))
    if storage not in QDQ_DTYPES:
        raise OpError(f"quantizing to {storage} is not supported")
    op = imp.graph.add_op("q.quantize", [x], {}, [TensorType(x.shape, storage, quant)],
                          name=imp.node_name(node), result_names=[node.output[0]])
    imp.values[node.output[0]] = op.result


# ---------------------------------------------------------------- what kind of QDQ model a graph is
def is_qdq(graph: Graph) -> bool:
    """True for a pre-quantized model: DequantizeLinear feeding float ops (a lowered or
    half-lowered Qm.n graph only dequantizes its outputs), activations included (a model
    that dequantizes only constant weights is weight-only, see ``is_weight_only``)."""
    if any(op.opname.startswith("qnn.") for op in graph.ops):
        return False
    return any(op.opname == "q.dequantize" and graph.uses(op.result) for op in graph.ops) \
        and not is_weight_only(graph)


def is_weight_only(graph: Graph) -> bool:
    """True for a "hybrid" model: constant weights through DequantizeLinear, float activations."""
    dqs = [op for op in graph.ops if op.opname == "q.dequantize"]
    return bool(dqs) and all(op.operands[0].is_constant() for op in dqs) \
        and not any(op.opname == "q.quantize" for op in graph.ops)
