"""The per-op half of the ONNX export: which ONNX nodes each IR op becomes.

``qcc.export.onnx_export`` walks the graph and owns the tensor bookkeeping (names,
initializers, QuantizeLinear / DequantizeLinear); this module holds the
tables it dispatches on, kept apart so the walk reads on its own and adding
an op touches only this file:

    SHAPE_OPS      data movement, exported on the stored tensors (exact on integers)
    _FLOAT_OPS     nn.* compute ops: builder(ex, op, xs, name, out) -> float tensor
    _INTEGER_OPS   qnn.* / s8.* ops: the float equivalent on dequantized inputs;
                   the exporter adds the clamp and the QuantizeLinear (a builder
                   that returns None wrote the integer result itself)

``xs`` are the op's operands as float tensors (dequantized on first read) and
``ex`` is the exporter, whose shared builders (conv, dense, pool, act, ...)
the table entries call.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto

from qcc.ir.ops.f32 import FLOAT_LAYER_OPS, f32_name
from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Op
from qcc.ir.types import FixedPoint

ONNX_DTYPES = {"f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE, "i8": TensorProto.INT8,
               "i16": TensorProto.INT16, "i32": TensorProto.INT32, "i64": TensorProto.INT64,
               "u8": TensorProto.UINT8, "u16": TensorProto.UINT16, "bool": TensorProto.BOOL}
SHAPE_OPS = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose", "nn.concat",
             "nn.pad", "nn.slice", "nn.gather", "nn.shape", "nn.cast", "nn.identity", "nn.dropout")
ELEMENTWISE = {"nn.add": "Add", "nn.sub": "Sub", "nn.mul": "Mul", "nn.div": "Div"}
UNARY = {"nn.relu": "Relu", "nn.sigmoid": "Sigmoid", "nn.tanh": "Tanh"}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------- op tables
def _shape_op(ex: "_Exporter", op: Op, name: str, out: str):
    """Data movement: the same ONNX op on the stored tensors (exact on integers too)."""
    a, k = op.attrs, op.opname
    xs = [ex.stored_name(v) for v in op.operands]
    if k == "nn.reshape":
        shape = xs[1] if len(xs) > 1 else ex.ints(op.result.shape, f"{name}/shape")
        ex.node("Reshape", [xs[0], shape], name, [out])
    elif k == "nn.flatten":
        ex.node("Flatten", xs, name, [out], axis=int(a["axis"]))
    elif k in ("nn.squeeze", "nn.unsqueeze"):
        ex.node("Squeeze" if k == "nn.squeeze" else "Unsqueeze", [xs[0], ex.ints(a["axes"], f"{name}/axes")],
                name, [out])
    elif k == "nn.transpose":
        ex.node("Transpose", xs, name, [out], perm=list(a["perm"]))
    elif k == "nn.concat":
        ex.node("Concat", xs, name, [out], axis=int(a["axis"]))
    elif k == "nn.pad":
        value = ex.init(np.array(a["value"], op.operands[0].type.np_dtype), f"{name}/value")
        ex.node("Pad", [xs[0], ex.ints(a["pads"], f"{name}/pads"), value], name, [out], mode=a["mode"])
    elif k == "nn.slice":
        ex.node("Slice", xs, name, [out])
    elif k == "nn.gather":
        ex.node("Gather", xs, name, [out], axis=int(a["axis"]))
    elif k == "nn.shape":
        ex.node("Shape", xs, name, [out])
    elif k == "nn.cast":
        ex.node("Cast", xs, name, [out], to=ONNX_DTYPES[a["to"]])
    else:  # identity, dropout
        ex.node("Identity", xs, name, [out])


def _nn_elementwise(ex, op, xs, name, out):
    mid = out if op.attrs["act"] == "none" else ex.fresh(f"{name}/{ELEMENTWISE[op.opname]}")
    y = ex.node(ELEMENTWISE[op.opname], xs, name, [mid])
    if mid == out:
        return y
    return ex.act(y, op.attrs["act"], op.attrs["act_alpha"], name, out)


def _nn_clip(ex, op, xs, name, out):
    bounds = [ex.init(np.array(op.attrs[k], np.float32), f"{name}/{k}") if np.isfinite(op.attrs[k]) else ""
              for k in ("min", "max")]
    while bounds and bounds[-1] == "":
        bounds.pop()
    return ex.node("Clip", [xs[0]] + bounds, name, [out])


def _nn_hard_swish(ex, op, xs, name, out):
    if ex.opset >= 14:
        return ex.node("HardSwish", xs, name, [out])
    # x * hard_sigmoid(x) with alpha 1/6, beta 1/2 is the definition of HardSwish
    h = ex.node("HardSigmoid", xs, f"{name}/HardSigmoid", alpha=1 / 6, beta=0.5)
    return ex.node("Mul", [xs[0], h], name, [out])


def _nn_batchnorm(ex, op, xs, name, out):
    rank, axis = op.operands[0].type.rank, op.attrs["axis"] % op.operands[0].type.rank
    if axis == 1:
        return ex.node("BatchNormalization", xs, name, [out], epsilon=float(op.attrs["epsilon"]))
    shape = ex.ints([-1] + [1] * (rank - 1 - axis), f"{name}/channel_shape")
    scale, bias, mean, var = (ex.node("Reshape", [p, shape], f"{name}/Reshape") for p in xs[1:])
    eps = ex.init(np.array(op.attrs["epsilon"], np.float32), f"{name}/epsilon")
    std = ex.node("Sqrt", [ex.node("Add", [var, eps], f"{name}/AddEpsilon")], f"{name}/Sqrt")
    norm = ex.node("Div", [ex.node("Sub", [xs[0], mean], f"{name}/Sub"), std], f"{name}/Div")
    return ex.node("Add", [ex.node("Mul", [norm, scale], f"{name}/Mul"), bias], name, [out])


def _nn_scale_shift(ex, op, xs, name, out):
    rank, axis = op.operands[0].type.rank, op.attrs["axis"] % op.operands[0].type.rank
    shape = ex.ints([-1] + [1] * (rank - 1 - axis), f"{name}/channel_shape")
    scale, shift = (ex.node("Reshape", [p, shape], f"{name}/Reshape") for p in xs[1:])
    return ex.node("Add", [ex.node("Mul", [xs[0], scale], f"{name}/Mul"), shift], name, [out])


def _nn_reduce_mean(ex, op, xs, name, out):
    keep = int(op.attrs["keepdims"])
    if ex.opset >= 18:
        return ex.node("ReduceMean", [xs[0], ex.ints(op.attrs["axes"], f"{name}/axes")], name, [out], keepdims=keep)
    return ex.node("ReduceMean", xs, name, [out], axes=list(op.attrs["axes"]), keepdims=keep)


def _nn_global_pool(op_type):
    def build(ex, op, xs, name, out):
        layout = op.attrs["layout"]
        y = ex.node(op_type, [ex.nchw(op, xs, layout, name)], name, None if layout == "NHWC" else [out])
        return ex.back(y, layout, name, out) if layout == "NHWC" else y
    return build


_FLOAT_OPS = {
    **{k: _nn_elementwise for k in ELEMENTWISE},
    **{k: (lambda t: lambda ex, op, xs, name, out: ex.node(t, xs, name, [out]))(t) for k, t in UNARY.items()},
    "nn.clip": _nn_clip,
    "nn.leaky_relu": lambda ex, op, xs, name, out: ex.node("LeakyRelu", xs, name, [out], alpha=op.attrs["alpha"]),
    "nn.hard_sigmoid": lambda ex, op, xs, name, out: ex.node("HardSigmoid", xs, name, [out],
                                                             alpha=op.attrs["alpha"], beta=op.attrs["beta"]),
    "nn.hard_swish": _nn_hard_swish,
    "nn.softmax": lambda ex, op, xs, name, out: ex.node("Softmax", xs, name, [out], axis=int(op.attrs["axis"])),
    "nn.conv2d": lambda ex, op, xs, name, out: ex.conv(op, xs, name, out, op.attrs["layout"],
                                                       op.attrs["act"], op.attrs["act_alpha"]),
    "nn.dense": lambda ex, op, xs, name, out: ex.dense(op, xs, name, out, op.attrs["act"], op.attrs["act_alpha"]),
    "nn.gemm": lambda ex, op, xs, name, out: ex.node(
        "Gemm", xs, name, [out], alpha=op.attrs["alpha"], beta=op.attrs["beta"],
        transA=int(op.attrs["trans_a"]), transB=int(op.attrs["trans_b"])),
    "nn.matmul": lambda ex, op, xs, name, out: ex.node("MatMul", xs, name, [out]),
    "nn.batchnorm": _nn_batchnorm,
    "nn.scale_shift": _nn_scale_shift,
    "nn.maxpool": lambda ex, op, xs, name, out: ex.pool(
        "MaxPool", op, xs, name, out, op.attrs["layout"], dilations=list(op.attrs["dilations"]),
        ceil_mode=int(op.attrs["ceil_mode"])),
    "nn.avgpool": lambda ex, op, xs, name, out: ex.pool(
        "AveragePool", op, xs, name, out, op.attrs["layout"], ceil_mode=int(op.attrs["ceil_mode"]),
        count_include_pad=int(op.attrs["count_include_pad"])),
    "nn.global_avgpool": _nn_global_pool("GlobalAveragePool"),
    "nn.global_maxpool": _nn_global_pool("GlobalMaxPool"),
    "nn.reduce_mean": _nn_reduce_mean,
}
# Float layers (--float-layers) export as the float ONNX op they mirror, between their DequantizeLinear and
# QuantizeLinear (a float island; qcc reads such a QDQ model back only as a float layer's graph, not as int8).
_FLOAT_OPS.update({f32_name(k): _FLOAT_OPS[k] for k in FLOAT_LAYER_OPS})


# ---------------------------------------------------------------- integer ops in QDQ form
def _table_function(op: Op, tables):
    """The float map (sigmoid or tanh) whose table ``op`` holds, or None."""
    table = np.asarray(op.attrs["table"], np.int64)
    x, y = op.operands[0].type, op.result.type
    if not (isinstance(x.quant, FixedPoint) and isinstance(y.quant, FixedPoint)):
        return None
    for fn, onnx_op in ((_sigmoid, "Sigmoid"), (np.tanh, "Tanh")):
        if np.array_equal(table, tables(fn, x.quant.frac_bits, y.quant.frac_bits)):
            return onnx_op
    return None


def _qnn_lut(ex, op, xs, name, out):
    from qcc.ir.ops.qnn_softmax import lut_table
    fn = _table_function(op, lut_table)
    if fn is not None:
        return ex.node(fn, xs, name, [out])
    return _gather_table(ex, op, xs, name, out)  # not a map we know


def _gather_table(ex, op, xs, name, out):
    """The table looked up exactly, y = table[x + 128] on the stored integers, then back to reals."""
    t = op.result.type
    table = ex.init(np.asarray(op.attrs["table"], t.np_dtype), f"{name}/table")
    idx = ex.node("Cast", [ex.stored_name(op.operands[0])], f"{name}/Cast", to=TensorProto.INT32)
    idx = ex.node("Add", [idx, ex.init(np.array(128, np.int32), f"{name}/offset")], f"{name}/Index")
    ex.node("Gather", [table, idx], f"{name}/Gather", [ex.stored[id(op.result)]])
    return None


def _qnn_lut_interp(ex, op, xs, name, out):
    from qcc.ir.ops.qnn_softmax import lut_interp_table
    fn = _table_function(op, lut_interp_table)
    if fn is None:
        raise UnsupportedModelError(f"ONNX export: {op.describe()} interpolates a table that is neither "
                                    f"sigmoid nor tanh; it has no ONNX equivalent")
    return ex.node(fn, xs, name, [out])


def _integer_conv(ex, op, xs, name, out):
    ex.integer_nhwc(op, name, lambda x, y: ex.conv(op, [x] + xs[1:], name, y, "NCHW", nhwc_weights=True))


def _integer_pool(op_type):
    def build(ex, op, xs, name, out):
        # qnn.avgpool counts the padding only when asked; s8.avgpool never does
        extra = {"count_include_pad": int(op.attrs.get("count_include_pad", False))} if op_type == "AveragePool" else {}
        ex.integer_nhwc(op, name, lambda x, y: ex.pool(op_type, op, [x], name, y, "NCHW", **extra))
    return build


def _softmax(ex, op, xs, name, out):
    return ex.node("Softmax", xs, name, [out], axis=-1)


def _requantize(ex, op, xs, name, out):
    return xs[0]  # the clamp and the QuantizeLinear into the new format are the whole op


def _activation16(ex, op, xs, name, out):
    """TFLite's int16 sigmoid/tanh/leaky ReLU as the float function (within the table's interpolation error);
    the leaky slope is the ratio of the two (signed) multipliers, alpha = (m_a 2^e_a) / (m_id 2^e_id)."""
    a = op.attrs
    if a["function"] == "leaky_relu":
        (m_id, m_a), (e_id, e_a) = a["multiplier"], a["shift"]
        alpha = m_a * 2.0 ** e_a / (m_id * 2.0 ** e_id) if m_id else 0.0
        return ex.node("LeakyRelu", xs, name, [out], alpha=float(alpha))
    return ex.node("Sigmoid" if a["function"] == "logistic" else "Tanh", xs, name, [out])


_INTEGER_OPS = {
    "qnn.conv2d": _integer_conv,
    "qnn.dense": (lambda ex, op, xs, name, out: ex.dense(op, xs, name, out)),
    "qnn.add": (lambda ex, op, xs, name, out: ex.node("Add", xs, name, [out])),
    "qnn.requantize": (_requantize),
    "qnn.maxpool": _integer_pool("MaxPool"),
    "qnn.avgpool": _integer_pool("AveragePool"),
    "qnn.lut": _qnn_lut,
    "qnn.lut_interp": _qnn_lut_interp,
    "qnn.softmax": _softmax,
    "s8.conv2d": _integer_conv,
    "s8.dense": (lambda ex, op, xs, name, out: ex.dense(op, xs, name, out)),
    "s8.add": (lambda ex, op, xs, name, out: ex.node("Add", xs, name, [out])),
    "s8.sub": (lambda ex, op, xs, name, out: ex.node("Sub", xs, name, [out])),
    "s8.mul": (lambda ex, op, xs, name, out: ex.node("Mul", xs, name, [out])),
    "s8.lut": _gather_table,  # TFLite's kernel per input code: exact
    "s8.requantize": (_requantize),
    "s8.maxpool": _integer_pool("MaxPool"),
    "s8.avgpool": _integer_pool("AveragePool"),
    "s8.softmax": _softmax,
    "s8.activation16": _activation16,
}
