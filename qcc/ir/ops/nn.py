"""Float neural-network ops (layouts and semantics follow ONNX unless stated).

Spatial ops work on 4-D tensors in ``layout`` "NCHW" (ONNX's) or "NHWC"
(CMSIS-NN's). Padding is always explicit, ``pads = [top, left, bottom, right]``;
the frontend resolves ONNX ``auto_pad`` at import. For a window of size k,
dilation d, stride s and padding p0 + p1 over an input of size n:

    out = floor((n + p0 + p1 - ((k - 1) * d + 1)) / s) + 1

and with ``ceil_mode`` the ceiling instead, minus one when the last window
would start inside the end padding (ONNX / PyTorch rule).

Elementwise, dense and conv ops carry a fused activation: ``act`` is "none",
"relu", "relu6" or "leaky_relu" (slope ``act_alpha``), applied to the result.
"""
from __future__ import annotations

import math

import numpy as np

from qcc.ir.types import TensorType
from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op, same_as_operand

LAYOUTS = ("NCHW", "NHWC")
ACTIVATIONS = ("none", "relu", "relu6", "leaky_relu")

ACT = attr("act", "str", "none")
ACT_ALPHA = attr("act_alpha", "float", 0.0)
LAYOUT = attr("layout", "str", "NCHW")


def broadcast_shape(*shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise OpError("operand shapes " + " and ".join(str(list(s)) for s in shapes)
                      + " do not broadcast") from None


def _broadcast_rule(op):
    a = op.operands[0].type
    return [TensorType(broadcast_shape(*(v.shape for v in op.operands)), a.dtype, a.quant)]


def _verify_act(op):
    if op.attrs.get("act") not in ACTIVATIONS:
        raise OpError(f"unknown fused activation '{op.attrs.get('act')}'")


def _verify_layout(op):
    if op.attrs["layout"] not in LAYOUTS:
        raise OpError(f"layout must be NCHW or NHWC, got '{op.attrs['layout']}'")


def _need_rank(op, i, rank, what="operand"):
    shape = op.operands[i].shape
    if len(shape) != rank:
        raise OpError(f"{what} {i} must have rank {rank}, got shape {list(shape)}")
    return shape


def _norm_axis(axis, rank, what="axis"):
    if not -rank <= axis < max(rank, 1):
        raise OpError(f"{what} {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def window_out(n, k, s, d, p0, p1, ceil_mode=False):
    """Output length of a sliding window (see the module docstring)."""
    # Checked here, not only in the verifier: the shape rule runs first and would divide by a zero stride.
    if s < 1:
        raise OpError(f"attribute 'strides' must be >= 1, got {s}")
    if d < 1:
        raise OpError(f"attribute 'dilations' must be >= 1, got {d}")
    if p0 < 0 or p1 < 0:
        raise OpError(f"attribute 'pads' must not be negative, got {min(p0, p1)}")
    if k < 1:
        raise OpError(f"the window (kernel) must be at least 1 wide, got {k}")
    span = (k - 1) * d + 1
    num = n + p0 + p1 - span
    if num < 0:
        raise OpError(f"window of extent {span} is larger than the padded input ({n + p0 + p1})")
    if not ceil_mode:
        return num // s + 1
    out = -(-num // s) + 1
    if (out - 1) * s >= n + p0:
        out -= 1
    return out


def spatial(shape, layout):
    """(N, C, H, W) of a 4-D shape in ``layout``."""
    if layout == "NHWC":
        n, h, w, c = shape
    else:
        n, c, h, w = shape
    return n, c, h, w


def make_spatial(n, c, h, w, layout):
    return (n, h, w, c) if layout == "NHWC" else (n, c, h, w)


def _check_2d(op, *names):
    for name in names:
        if len(op.attrs[name]) != (4 if name == "pads" else 2):
            raise OpError(f"'{name}' needs {4 if name == 'pads' else 2} values, got {op.attrs[name]}")
    if any(p < 0 for p in op.attrs.get("pads", [])):
        raise OpError(f"attribute 'pads' must not be negative, got {op.attrs['pads']}")
    for name in ("strides", "dilations"):
        if any(v < 1 for v in op.attrs.get(name, [1])):
            raise OpError(f"attribute '{name}' must be >= 1, got {op.attrs[name]}")


# ---------------------------------------------------------------- elementwise
for _name, _summary in [("nn.add", "a + b (broadcasting)"), ("nn.sub", "a - b (broadcasting)"),
                        ("nn.mul", "a * b (broadcasting)"), ("nn.div", "a / b (broadcasting)")]:
    register_op(OpDef(_name, operands=["a", "b"], attrs=attrs(ACT, ACT_ALPHA), infer=_broadcast_rule,
                      verify_fn=_verify_act, summary=_summary))

for _name, _summary in [("nn.relu", "max(x, 0)"), ("nn.identity", "x"),
                        ("nn.dropout", "x (inference: dropout is the identity)"),
                        ("nn.sigmoid", "1 / (1 + exp(-x))"), ("nn.tanh", "tanh(x)"),
                        ("nn.hard_swish", "x * max(0, min(1, x/6 + 1/2))")]:
    register_op(OpDef(_name, operands=["x"], infer=same_as_operand(0), summary=_summary))

register_op(OpDef("nn.clip", operands=["x"], infer=same_as_operand(0),
                  attrs=attrs(attr("min", "float", -math.inf), attr("max", "float", math.inf)),
                  summary="min(max(x, min), max)"))
register_op(OpDef("nn.leaky_relu", operands=["x"], infer=same_as_operand(0),
                  attrs=attrs(attr("alpha", "float", 0.01)), summary="x if x >= 0 else alpha * x"))
register_op(OpDef("nn.hard_sigmoid", operands=["x"], infer=same_as_operand(0),
                  attrs=attrs(attr("alpha", "float", 0.2), attr("beta", "float", 0.5)),
                  summary="max(0, min(1, alpha * x + beta))"))


def _verify_axis(op):
    _norm_axis(op.attrs["axis"], op.operands[0].type.rank)


register_op(OpDef("nn.softmax", operands=["x"], infer=same_as_operand(0), attrs=attrs(attr("axis", "int", -1)),
                  verify_fn=_verify_axis, summary="exp(x - max) / sum(exp(x - max)) along one axis"))


# ---------------------------------------------------------------- conv / dense
def _conv_rule(op):
    a = op.attrs
    x = _need_rank(op, 0, 4)
    w = _need_rank(op, 1, 4)
    layout = a["layout"]
    n, c, h, wd = spatial(x, layout)
    if layout == "NHWC":
        cout, kh, kw, cin_g = w
    else:
        cout, cin_g, kh, kw = w
    g = a["group"]
    if g < 1 or c != cin_g * g or cout % g:
        raise OpError(f"input has {c} channels; weights {list(w)} with group {g} do not match")
    if len(op.operands) > 2 and op.operands[2].shape != (cout,):
        raise OpError(f"bias must have shape [{cout}], got {list(op.operands[2].shape)}")
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = a["strides"], a["dilations"], a["pads"]
    oh = window_out(h, kh, sh, dh, pt, pb)
    ow = window_out(wd, kw, sw, dw, pl, pr)
    t = op.operands[0].type
    return [TensorType(make_spatial(n, cout, oh, ow, layout), t.dtype if t.is_float else "f32")]


def _verify_conv(op):
    _verify_act(op)
    _verify_layout(op)
    _check_2d(op, "strides", "pads", "dilations")


register_op(OpDef(
    "nn.conv2d", operands=["x", "w", "b?"],
    attrs=attrs(attr("strides", "ints", [1, 1]), attr("pads", "ints", [0, 0, 0, 0]),
                attr("dilations", "ints", [1, 1]), attr("group", "int", 1), LAYOUT, ACT, ACT_ALPHA),
    infer=_conv_rule, verify_fn=_verify_conv,
    summary="2-D convolution; weights [Cout, Cin/group, KH, KW] (NCHW) or [Cout, KH, KW, Cin/group] (NHWC)"))


def _dense_rule(op):
    x, w = op.operands[0].shape, _need_rank(op, 1, 2)
    if not x or x[-1] != w[1]:
        raise OpError(f"input {list(x)} does not match weights [N, K] = {list(w)}")
    if len(op.operands) > 2 and op.operands[2].shape not in ((w[0],), (1, w[0])):
        raise OpError(f"bias must have shape [{w[0]}], got {list(op.operands[2].shape)}")
    t = op.operands[0].type
    return [TensorType(x[:-1] + (w[0],), t.dtype if t.is_float else "f32")]


register_op(OpDef("nn.dense", operands=["x", "w", "b?"], attrs=attrs(ACT, ACT_ALPHA),
                  infer=_dense_rule, verify_fn=_verify_act, summary="x @ w.T + b with w [out, in]"))


def _gemm_rule(op):
    a, b = _need_rank(op, 0, 2), _need_rank(op, 1, 2)
    m, k = (a[1], a[0]) if op.attrs["trans_a"] else a
    k2, n = (b[1], b[0]) if op.attrs["trans_b"] else b
    if k != k2:
        raise OpError(f"inner dimensions differ: {list(a)} and {list(b)}")
    if len(op.operands) > 2:
        broadcast_shape(op.operands[2].shape, (m, n))
    return [TensorType((m, n), op.operands[0].type.dtype)]


register_op(OpDef("nn.gemm", operands=["a", "b", "c?"],
                  attrs=attrs(attr("alpha", "float", 1.0), attr("beta", "float", 1.0),
                              attr("trans_a", "bool", False), attr("trans_b", "bool", False)),
                  infer=_gemm_rule, summary="alpha * op(a) @ op(b) + beta * c (ONNX Gemm)"))


def matmul_shape(a, b):
    """numpy.matmul's result shape (1-D operands promoted then squeezed)."""
    if not a or not b:
        raise OpError("matmul operands must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise OpError(f"inner dimensions differ: {list(a)} and {list(b)}")
    out = broadcast_shape(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


register_op(OpDef("nn.matmul", operands=["a", "b"],
                  infer=lambda op: [TensorType(matmul_shape(op.operands[0].shape, op.operands[1].shape),
                                               op.operands[0].type.dtype)],
                  summary="a @ b (numpy / ONNX MatMul broadcasting)"))


def _channel_params_rule(n_params):
    def rule(op):
        x = op.operands[0].type
        axis = _norm_axis(op.attrs["axis"], x.rank)
        for i in range(1, 1 + n_params):
            if op.operands[i].shape != (x.shape[axis],):
                raise OpError(f"operand {i} must have shape [{x.shape[axis]}] "
                              f"(channels on axis {axis}), got {list(op.operands[i].shape)}")
        return [x]
    return rule


register_op(OpDef("nn.batchnorm", operands=["x", "scale", "bias", "mean", "var"],
                  attrs=attrs(attr("epsilon", "float", 1e-5), attr("axis", "int", 1)),
                  infer=_channel_params_rule(4),
                  summary="(x - mean) / sqrt(var + epsilon) * scale + bias per channel"))
register_op(OpDef("nn.scale_shift", operands=["x", "scale", "shift"], attrs=attrs(attr("axis", "int", 1)),
                  infer=_channel_params_rule(2), summary="x * scale + shift per channel"))


# ---------------------------------------------------------------- pooling
def _pool_rule(op):
    a = op.attrs
    n, c, h, w = spatial(_need_rank(op, 0, 4), a["layout"])
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["strides"], a["pads"]
    dh, dw = a.get("dilations", [1, 1])
    oh = window_out(h, kh, sh, dh, pt, pb, a["ceil_mode"])
    ow = window_out(w, kw, sw, dw, pl, pr, a["ceil_mode"])
    return [op.operands[0].type.with_shape(make_spatial(n, c, oh, ow, a["layout"]))]


def _verify_pool(op):
    _verify_layout(op)
    _check_2d(op, "kernel", "strides", "pads", *(["dilations"] if "dilations" in op.attrs else []))
    if any(k < 1 for k in op.attrs["kernel"]):
        raise OpError(f"kernel {op.attrs['kernel']} must be positive")


_POOL_COMMON = [attr("kernel", "ints"), attr("strides", "ints", [1, 1]), attr("pads", "ints", [0, 0, 0, 0]),
                attr("ceil_mode", "bool", False), LAYOUT]
register_op(OpDef("nn.maxpool", operands=["x"], attrs=attrs(*_POOL_COMMON, attr("dilations", "ints", [1, 1])),
                  infer=_pool_rule, verify_fn=_verify_pool, summary="max over each window (padding is -inf)"))
register_op(OpDef("nn.avgpool", operands=["x"], attrs=attrs(*_POOL_COMMON, attr("count_include_pad", "bool", False)),
                  infer=_pool_rule, verify_fn=_verify_pool,
                  summary="mean over each window; count_include_pad counts explicit padding in the divisor"))


def _global_pool_rule(op):
    n, c, _, _ = spatial(_need_rank(op, 0, 4), op.attrs["layout"])
    return [op.operands[0].type.with_shape(make_spatial(n, c, 1, 1, op.attrs["layout"]))]


for _name, _summary in [("nn.global_avgpool", "mean over H and W"), ("nn.global_maxpool", "max over H and W")]:
    register_op(OpDef(_name, operands=["x"], attrs=attrs(LAYOUT), infer=_global_pool_rule,
                      verify_fn=_verify_layout, summary=_summary + " (keeps 1x1 spatial dims)"))


def _reduce_rule(op):
    t = op.operands[0].type
    axes = sorted({_norm_axis(a, t.rank) for a in op.attrs["axes"]})
    if op.attrs["keepdims"]:
        shape = tuple(1 if i in axes else d for i, d in enumerate(t.shape))
    else:
        shape = tuple(d for i, d in enumerate(t.shape) if i not in axes)
    return [t.with_shape(shape)]


register_op(OpDef("nn.reduce_mean", operands=["x"],
                  attrs=attrs(attr("axes", "ints"), attr("keepdims", "bool", True)),
                  infer=_reduce_rule, summary="mean over the listed axes"))

# ---------------------------------------------------------------- shape ops live in nn_shape.py
