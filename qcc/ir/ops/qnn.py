"""Integer ops of a lowered graph: the contract between simulator and C.

All are NHWC. Inputs/outputs are i8 or i16 tensors with a quantized type;
weights i8/i16 ``[Cout, KH, KW, Cin/group]`` (dense ``[N, K]``); bias i32.
The integer simulator (``qcc.sim.qmn``) and the emitted C compute exactly:

Fixed point Qm.n (attributes ``out_shift``, ``bias_shift``; one entry for the
tensor or one per output channel):

    rshift_round(a, s) = (a + (1 << (s-1))) >> s   if s > 0   (arithmetic shift)
                       = a << -s                    if s <= 0
    acc[c] = (bias[c] << bias_shift[c]) + sum(x * w)          (fits int32: checked)
    y      = clamp(rshift_round(acc, out_shift[c]), act_min, act_max)

The accumulator has the bias's width: an ``i32`` bias (or none) means int32,
an ``i64`` bias int64 (for 16-bit layers whose worst-case sum leaves int32;
the same formulas, exact in 64 bits).

Zero padding. ``act_min``/``act_max`` are the storage bounds, narrowed by a
fused ReLU (``[0, max]``) or ReLU6 (``[0, 6 * 2^n]``).

``qnn.add``:        y = clamp(rshift_round((a << a_shift) + (b << b_shift), out_shift), lo, hi)
``qnn.sub``:        y = clamp(rshift_round((a << a_shift) - (b << b_shift), out_shift), lo, hi)
``qnn.mul``:        y = clamp(rshift_round(a * b, out_shift), lo, hi)     (out_shift = n_a + n_b - n_y;
                    the product of two i16 values fits int32; a left shift is done in 64 bits
                    before the clamp, like every requantization)
``qnn.requantize``: y = clamp(rshift_round(x, out_shift), lo, hi)
``qnn.maxpool``:    max over the window's in-bounds elements, then clamp
``qnn.avgpool``:    sum over the window / count, rounded half away from zero, then clamp;
                    count = in-bounds elements, or the whole window with count_include_pad.
                    An optional ``out_shift`` s (default 0) changes the format in the same
                    single rounding: y = div_round_away(sum, count << s) for s >= 0,
                    div_round_away(sum << -s, count) for s < 0 (n_y = n_x - s)
``qnn.lut``:        y = table[x - storage_min] (a 256-entry table for i8 input)
``qnn.softmax``:    exp-table softmax over the last axis, output Q0.7 / Q0.15;
``qnn.lut_interp``: i16 -> i16 map by a 257-entry table with linear interpolation;
                    both stated exactly in qcc/ir/ops/qnn_softmax.py.
"""
from __future__ import annotations

from qcc.ir.types import TensorType
from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op

_REQUANT = (attr("out_shift", "ints"), attr("act_min", "int"), attr("act_max", "int"))
_WINDOW = (attr("kernel", "ints"), attr("strides", "ints", [1, 1]), attr("pads", "ints", [0, 0, 0, 0]))


def _check_int_io(op):
    for v in list(op.operands[:1]) + list(op.results):
        if v.type.dtype not in ("i8", "i16", "i32"):
            raise OpError(f"works on integer tensors, got {v.type.dtype}")
    lo, hi = op.attrs["act_min"], op.attrs["act_max"]
    if lo > hi:
        raise OpError(f"act_min {lo} > act_max {hi}")
    import numpy as np
    info = np.iinfo(op.results[0].type.np_dtype)
    if lo < info.min or hi > info.max:
        raise OpError(f"clamp [{lo}, {hi}] exceeds the range of {op.results[0].type.dtype}")


def _check_shifts(op, channels):
    for key in ("out_shift", "bias_shift"):
        if key in op.attrs:
            n = len(op.attrs[key])
            if n not in (1, channels):
                raise OpError(f"'{key}' has {n} entries; expected 1 or {channels} (one per output channel)")
            if any(not -31 <= s <= 31 for s in op.attrs[key]):
                raise OpError(f"'{key}' entries must lie in [-31, 31], got {op.attrs[key]}")


def _conv_rule(op):
    x, w = op.operands[0].type, op.operands[1].type
    if x.rank != 4 or w.rank != 4:
        raise OpError("expects NHWC input and [Cout, KH, KW, Cin/group] weights")
    n, h, wd, c = x.shape
    cout, kh, kw, cg = w.shape
    g = op.attrs["group"]
    if c != cg * g:
        raise OpError(f"input has {c} channels but weights expect {cg} x group {g}")
    sh, sw = op.attrs["strides"]
    dh, dw = op.attrs["dilations"]
    pt, pl, pb, pr = op.attrs["pads"]
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    return [TensorType((n, oh, ow, cout), op.results[0].type.dtype if op.results else x.dtype)]


def _check_bias(op):
    if len(op.operands) > 2 and op.operands[2].type.dtype not in ("i32", "i64"):
        raise OpError(f"bias must be i32 (int32 accumulator) or i64 (int64), got {op.operands[2].type.dtype}")


def _verify_conv(op):
    _check_int_io(op)
    _check_shifts(op, op.operands[1].type.shape[0])
    _check_bias(op)
    if len(op.operands) > 2 and op.operands[2].type.shape != (op.operands[1].type.shape[0],):
        raise OpError("bias must have one entry per output channel")


register_op(OpDef(
    "qnn.conv2d", operands=["x", "w", "b?"],
    attrs=attrs(attr("strides", "ints", [1, 1]), attr("pads", "ints", [0, 0, 0, 0]),
                attr("dilations", "ints", [1, 1]), attr("group", "int", 1),
                attr("bias_shift", "ints", [0]), *_REQUANT),
    infer=_conv_rule, verify_fn=_verify_conv,
    summary="Integer NHWC convolution (grouped/depthwise by 'group') with shift requantization."))


def _dense_rule(op):
    x, w = op.operands[0].type, op.operands[1].type
    if w.rank != 2 or x.shape[-1] != w.shape[1]:
        raise OpError(f"input {list(x.shape)} does not match weights [N, K] {list(w.shape)}")
    # The output storage type is the layer's own (mixed precision: i8 in, i16 out or the reverse).
    return [TensorType(x.shape[:-1] + (w.shape[0],), op.results[0].type.dtype if op.results else x.dtype)]


def _verify_dense(op):
    _check_int_io(op)
    _check_shifts(op, op.operands[1].type.shape[0])
    _check_bias(op)


register_op(OpDef(
    "qnn.dense", operands=["x", "w", "b?"], attrs=attrs(attr("bias_shift", "ints", [0]), *_REQUANT),
    infer=_dense_rule, verify_fn=_verify_dense,
    summary="Integer fully connected layer, weights [N, K], shift requantization."))


def _add_rule(op):
    a, b = op.operands[0].type, op.operands[1].type
    if a.shape != b.shape:
        raise OpError(f"operands have shapes {list(a.shape)} and {list(b.shape)}; qnn.add does not broadcast")
    return [TensorType(a.shape, a.dtype)]


def _verify_add(op):
    _check_int_io(op)
    if len(op.attrs["out_shift"]) != 1:
        raise OpError("'out_shift' must have one entry")
    for key in ("a_shift", "b_shift"):
        if not 0 <= op.attrs[key] <= 24:
            raise OpError(f"'{key}' must lie in [0, 24], got {op.attrs[key]}")


register_op(OpDef(
    "qnn.add", operands=["a", "b"], attrs=attrs(attr("a_shift", "int", 0), attr("b_shift", "int", 0), *_REQUANT),
    infer=_add_rule, verify_fn=_verify_add,
    summary="Elementwise add of two fixed-point tensors aligned by left shifts, then requantized."))
register_op(OpDef(
    "qnn.sub", operands=["a", "b"], attrs=attrs(attr("a_shift", "int", 0), attr("b_shift", "int", 0), *_REQUANT),
    infer=_add_rule, verify_fn=_verify_add,
    summary="Elementwise a - b of two fixed-point tensors aligned by left shifts, then requantized."))


def _verify_mul(op):
    _check_int_io(op)
    if len(op.attrs["out_shift"]) != 1:
        raise OpError("'out_shift' must have one entry")
    if any(v.type.dtype not in ("i8", "i16") for v in op.operands):
        raise OpError("multiplies i8 or i16 tensors (their product must fit int32)")


register_op(OpDef(
    "qnn.mul", operands=["a", "b"], attrs=attrs(*_REQUANT), infer=_add_rule, verify_fn=_verify_mul,
    summary="Elementwise product of two fixed-point tensors, requantized by a rounded shift."))


def _same_shape_rule(op):
    return [TensorType(op.operands[0].type.shape, op.results[0].type.dtype if op.results else "i8")]


def _verify_requant(op):
    _check_int_io(op)
    if len(op.attrs["out_shift"]) != 1:
        raise OpError("'out_shift' must have one entry")


register_op(OpDef(
    "qnn.requantize", operands=["x"], attrs=attrs(*_REQUANT), infer=_same_shape_rule,
    verify_fn=_verify_requant, summary="Change fixed-point format: rounded shift and clamp."))


def _pool_rule(op):
    x = op.operands[0].type
    if x.rank != 4:
        raise OpError("expects an NHWC input")
    n, h, w, c = x.shape
    kh, kw = op.attrs["kernel"]
    sh, sw = op.attrs["strides"]
    pt, pl, pb, pr = op.attrs["pads"]
    return [TensorType((n, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1, c), x.dtype)]


def _verify_pool(op):
    _check_int_io(op)
    if op.operands[0].type.dtype != op.results[0].type.dtype:
        raise OpError("pooling keeps the storage type")


def _verify_avgpool(op):
    _verify_pool(op)
    if not -16 <= op.attrs["out_shift"] <= 16:
        raise OpError(f"'out_shift' must lie in [-16, 16], got {op.attrs['out_shift']}")


register_op(OpDef(
    "qnn.maxpool", operands=["x"], attrs=attrs(*_WINDOW, attr("act_min", "int"), attr("act_max", "int")),
    infer=_pool_rule, verify_fn=_verify_pool, summary="Integer max pooling; padding never wins."))
register_op(OpDef(
    "qnn.avgpool", operands=["x"],
    attrs=attrs(*_WINDOW, attr("count_include_pad", "bool", False), attr("out_shift", "int", 0),
                attr("act_min", "int"), attr("act_max", "int")),
    infer=_pool_rule, verify_fn=_verify_avgpool,
    summary="Integer average pooling; the mean rounds half away from zero."))


def _verify_lut(op):
    x = op.operands[0].type
    if x.dtype != "i8":
        raise OpError("table lookup takes an i8 input")
    if len(op.attrs["table"]) != 256:
        raise OpError(f"table must have 256 entries, got {len(op.attrs['table'])}")


register_op(OpDef(
    "qnn.lut", operands=["x"], attrs=attrs(attr("table", "ints")), infer=_same_shape_rule,
    verify_fn=_verify_lut, summary="y = table[x + 128]: sigmoid/tanh and other pointwise maps on i8."))

# qnn.softmax is registered by the module that implements its integer algorithm
# (qcc/ir/ops/qnn_softmax.py), whose docstring states the algorithm.

