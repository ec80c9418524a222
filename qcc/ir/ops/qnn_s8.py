"""Affine int8 ops (``s8.*``): TFLite Micro / CMSIS-NN s8 arithmetic, bit for bit.

Tensors are NHWC ``i8`` with a per-tensor ``!q.uniform`` type; conv weights are
``i8 [Cout, KH, KW, Cin/group]`` (symmetric, per output channel), dense weights
``i8 [N, K]``, biases ``i32`` at scale ``s_in * s_w[c]``. The integer simulator
(``qcc.sim.s8``) and the emitted C compute exactly the following, every
intermediate an int32 (a value leaving int32 is an error, never a wrap):

Requantization ``requant(acc, mult, shift)`` (CMSIS-NN ``arm_nn_requantize``,
TFLite ``MultiplyByQuantizedMultiplier``); ``mult`` in [0, 2^31), shift in
[-31, 30], the real multiplier being ``mult * 2^(shift - 31)``:

    rounding = "double" (default, CMSIS-NN and TFLite Micro):
        v = acc * 2^max(shift, 0)                            (must fit int32)
        h = (int64(v) * mult + 2^30) >> 31                   (arithmetic shift; this is
                                                              SaturatingRoundingDoublingHighMul,
                                                              saturating to 2^31-1 when
                                                              v == mult == -2^31)
        requant = rdiv_pot(h, max(-shift, 0))
    rounding = "single" (CMSIS_NN_USE_SINGLE_ROUNDING, TFLite's reference FC):
        t = 31 - shift;  requant = (int64(acc) * mult + 2^(t-1)) >> t

    rdiv_pot(x, e) = x / 2^e rounded half away from zero (gemmlowp RoundingDivideByPOT):
        mask = 2^e - 1; r = x & mask; th = (mask >> 1) + (x < 0); (x >> e) + (r > th)

``s8.conv2d`` / ``s8.dense`` (per output channel c; ``multiplier``/``shift`` hold
one entry for the tensor or one per channel):

    acc[c] = bias[c] + sum((x - input_zp) * w[c])     (padding contributes 0, i.e. pads with input_zp)
    y      = clamp(requant(acc, multiplier[c], shift[c]) + output_zp, act_min, act_max)

``s8.dense`` also takes a per-tensor ``weight_zp`` (asymmetric weights, e.g.
uint8 weights re-centred to int8, or CMSIS-NN's fully connected filter offset):
``acc[c] = bias[c] + sum((x - input_zp) * (w[c] - weight_zp))``.

``s8.add`` (TFLite's elementwise add, ``left_shift`` = 20 for int8):

    a' = requant((a - input_zp[0]) * 2^left_shift, input_multiplier[0], input_shift[0])
    b' = requant((b - input_zp[1]) * 2^left_shift, input_multiplier[1], input_shift[1])
    y  = clamp(requant(a' + b', multiplier[0], shift[0]) + output_zp, act_min, act_max)

``s8.sub`` (TFLite's int8 SUB, reference SubElementwise): the same with ``a' - b'``.

``s8.mul`` (TFLite ``MulElementwise`` / CMSIS-NN ``arm_elementwise_mul_s8``; m = s_a * s_b / s_y):

    y  = clamp(requant((a - input_zp[0]) * (b - input_zp[1]), multiplier[0], shift[0]) + output_zp,
               act_min, act_max)

``s8.add``, ``s8.sub`` and ``s8.mul`` broadcast their operands numpy-style to the result shape
(TFLite's ``BroadcastAdd4DSlow`` / ``BroadcastSubSlow`` / ``BroadcastMul4DSlow``: the same arithmetic per
output element, e.g. the squeeze-and-excitation form NxHxWxC * Nx1x1xC).

``s8.lut``: ``y = table[x + 128]``, a 256-entry int8 table per input code. The
lowering fills it with a TFLite Micro int8 reference kernel evaluated on every
code (``qcc.sim.s8_lut`` states each: LEAKY_RELU, LOGISTIC, TANH, HARD_SWISH), so
the table is that kernel, bit for bit; ``function`` names which one. ``hard_sigmoid``
has no TFLite int8 kernel: its table is the real function rounded per code.

``s8.requantize``: y = clamp(requant(x - input_zp, multiplier[0], shift[0]) + output_zp, act_min, act_max);
x and y may differ in width (i8 -> i16, i16 -> i8: TFLite's QUANTIZE between int8 and int16 tensors,
``reference_ops::Requantize``, double rounding), the clamp inside y's range

``s8.avgpool`` (input and output share scale and zero point): over the window's
in-bounds elements (``count`` of them), ``s = sum(x)`` of the stored values, then
``(s > 0 ? (s + count/2) : (s - count/2)) / count`` with C division (truncating),
i.e. the mean rounded half away from zero, then clamp.
``s8.maxpool``: max over the in-bounds elements, then clamp.

``s8.softmax`` along the last axis (CMSIS-NN ``arm_softmax_s8`` = TFLite's
integer softmax with gemmlowp fixed point; output scale 1/256, zero point -128).
``multiplier``/``shift``/``diff_min`` come from TFLite's PreprocessSoftmaxScaling
(beta * s_in * 2^26, QuantizeMultiplierGreaterThanOne) and CalculateInputRadius.
With ``srdhm`` = SaturatingRoundingDoublingHighMul, ``exp`` = gemmlowp
``exp_on_negative_values`` on Q5.26 input giving Q0.31, ``recip`` =
``one_over_one_plus_x_for_x_in_0_1`` (Q0.31), per row:

    d[i]   = x[i] - max(x)                       (only where d[i] >= diff_min)
    e[i]   = exp(srdhm(d[i] * 2^shift, multiplier))
    sum    = sum(rdiv_pot(e[i], 12))             (a Q12.19 accumulator)
    hr     = clz(sum);  scale = recip((sum << hr) - 2^31)
    y[i]   = clamp(rdiv_pot(srdhm(scale, e[i]), 12 - hr + 23) - 128, -128, 127)
    y[i]   = -128 where d[i] < diff_min

16x8 mode (TFLite's int16 activations with int8 weights; CMSIS-NN's ``*_s16`` kernels): the
same ops on ``i16`` activations (every activation of the op i16; zero points 0; clamp inside
int16). conv2d/dense then take an ``i64`` bias with ``rounding = "s64"`` (the int64 accumulator
of ``arm_convolve_s16`` / ``arm_fully_connected_s16``, TFLite's int64 ``MultiplyByQuantizedMultiplier``):

    acc     = bias + sum(x * w)                              (int64; |acc| < 2^47 or an error)
    rm      = mult < 0x7FFF0000 ? (mult + 2^15) >> 16 : 0x7FFF        (REDUCE_MULTIPLIER)
    requant = (acc * rm + 2^(14 - shift)) >> (15 - shift)    (shift in [-31, 7]; must fit int32)

which equals CMSIS-NN's ``arm_nn_requantize_s64`` ((acc * rm >> (14 - shift)) + 1) >> 1. An
``i32`` bias keeps the int32 accumulator and double rounding (CMSIS-NN's int16xint8xint32).
add (``left_shift`` 15), sub, mul (int32 product), avgpool and maxpool are the int8 formulas on
int16 values (``arm_elementwise_add_s16`` / ``mul_s16``, ``arm_avgpool_s16``, ``arm_max_pool_s16``).
``act_min``/``act_max`` default to the int8 range, so a 16x8 op states its clamp (lower-qdq and
quantize-affine always do). ``s8.lut`` stays int8 only (int16 sigmoid/tanh/leaky ReLU: ``s8.activation16``, qnn_s16.py). ``s8.softmax`` on int16 (TFLite's SoftmaxInt16, CMSIS-NN
``arm_softmax_s16``; output scale 1/32768, zero point 0; ``diff_min`` unused, 0), per row, with
``lut(T, v)`` = TFLite's int16 table lookup ``T[256 + (v >> 7)] + (((T[i+1] - T[i]) * (v & 127) + 64) >> 7)``
on the 513-entry tables ``EXP`` (exp on [-10, 0]) and ``RECIP`` (1/(1+x) on [0, 1]) that TFLite's
``gen_lut`` builds in float32 (``qcc.sim.s8.int16_lut``):

    e[i]  = lut(EXP, clamp16(requant(x[i] - max(x), multiplier, shift) + 32767))
    sum   = sum(e);  h = clz(sum);  r = lut(RECIP, clamp16((((sum << (h - 1)) + 2^13) >> 14) - 98304))
    y[i]  = clamp((e[i] * r + 2^(30 - h)) >> (31 - h), 0, 32767)

(``multiplier``/``shift`` = QuantizeMultiplier(s_in * beta * 65535 / 10).) CMSIS-NN truncates
where TFLite saturates (the two clamps); they differ only for a row whose largest value
dominates the sum so much that y would pass 32767, where qcc follows TFLite.

The multiplier encoding (TFLite ``QuantizeMultiplier``): ``q, e = frexp(m)``,
``mult = round_half_away(q * 2^31)`` (``mult == 2^31`` becomes ``2^30`` with
``e + 1``), ``shift = e``; ``e < -31`` gives ``(0, 0)``. ``qcc.sim.s8``
provides it as ``quantize_multiplier``.
"""
from __future__ import annotations

import numpy as np

from qcc.ir.types import TensorType
from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op
from qcc.ir.ops.qnn import _conv_rule, _dense_rule, _pool_rule

ROUNDINGS = ("double", "single", "s64")
# Activation storage types: int8, or int16 (TFLite's 16x8 mode: int16 activations, int8 weights).
ACT_RANGE = {"i8": (-128, 127), "i16": (-32768, 32767)}

_CLAMP = (attr("act_min", "int", -128), attr("act_max", "int", 127))
_REQUANT = (attr("input_zp", "int", 0), attr("output_zp", "int", 0), attr("multiplier", "ints"),
            attr("shift", "ints"), attr("rounding", "str", "double"), *_CLAMP)
_WINDOW = (attr("kernel", "ints"), attr("strides", "ints", [1, 1]), attr("pads", "ints", [0, 0, 0, 0]))


def act_dtype(op) -> str:
    """The activation type of an s8 op: its first operand's (i8, or i16 in the 16x8 mode)."""
    return op.operands[0].type.dtype


def _check_i8(op, values):
    """Activations all i8, or all i16 (weights are checked apart)."""
    dtype = values[0].type.dtype
    if dtype not in ACT_RANGE:
        raise OpError(f"works on i8 or i16 tensors, got {dtype}")
    for v in values:
        if v.type.dtype != dtype:
            raise OpError(f"mixes {dtype} and {v.type.dtype} activations")


def _check_clamp(op):
    lo, hi = op.attrs["act_min"], op.attrs["act_max"]
    tlo, thi = ACT_RANGE[act_dtype(op)]
    if not tlo <= lo <= hi <= thi:
        raise OpError(f"clamp [{lo}, {hi}] must be an ordered range inside [{tlo}, {thi}]")


def _check_zp(op, key):
    zps = op.attrs[key] if isinstance(op.attrs[key], list) else [op.attrs[key]]
    if key != "weight_zp" and act_dtype(op) == "i16":
        if any(zps):
            raise OpError(f"'{key}' {op.attrs[key]} must be 0 for i16 activations (TFLite's 16x8 mode)")
    elif any(not -128 <= z <= 127 for z in zps):
        raise OpError(f"'{key}' {op.attrs[key]} lies outside the i8 range")


def _check_requant(op, channels: int, prefix: str = ""):
    mult, shift = op.attrs[prefix + "multiplier"], op.attrs[prefix + "shift"]
    if len(mult) != len(shift):
        raise OpError(f"'{prefix}multiplier' has {len(mult)} entries but '{prefix}shift' has {len(shift)}")
    if len(mult) not in (1, channels):
        raise OpError(f"'{prefix}multiplier' has {len(mult)} entries; expected 1 or {channels}")
    if any(not 0 <= m < 2 ** 31 for m in mult):
        raise OpError(f"'{prefix}multiplier' entries must lie in [0, 2^31)")
    hi = 7 if op.attrs.get("rounding") == "s64" else 30
    if any(not -31 <= s <= hi for s in shift):
        raise OpError(f"'{prefix}shift' entries must lie in [-31, {hi}], got {shift}")
    if op.attrs.get("rounding", "double") not in ROUNDINGS:
        raise OpError(f"rounding must be one of {', '.join(ROUNDINGS)}, got '{op.attrs['rounding']}'")


def _verify_weighted(op):
    _check_i8(op, [op.operands[0], op.results[0]])
    if op.operands[1].type.dtype != "i8":
        raise OpError(f"weights must be i8, got {op.operands[1].type.dtype}")
    # The int64 accumulator and bias of the 16x8 mode go with rounding "s64", and only there.
    want = "i64" if op.attrs["rounding"] == "s64" else "i32"
    if op.attrs["rounding"] == "s64" and act_dtype(op) != "i16":
        raise OpError("rounding 's64' (int64 accumulator) is for i16 activations")
    if len(op.operands) > 2:
        b = op.operands[2].type
        if b.dtype != want or b.shape != (op.operands[1].type.shape[0],):
            raise OpError(f"bias must be {want} [{op.operands[1].type.shape[0]}] with rounding "
                          f"'{op.attrs['rounding']}', got {b.dtype} {list(b.shape)}")
    _check_zp(op, "input_zp")
    _check_zp(op, "output_zp")
    if "weight_zp" in op.attrs:
        _check_zp(op, "weight_zp")
    _check_clamp(op)
    _check_requant(op, op.operands[1].type.shape[0])


def _i8_rule(rule):
    """The float op's shape rule, with the input's activation type (i8 or i16)."""
    def infer(op):
        return [TensorType(t.shape, act_dtype(op)) for t in rule(op)]
    return infer


def _same_rule(op):
    return [TensorType(op.operands[0].type.shape, act_dtype(op))]


register_op(OpDef(
    "s8.conv2d", operands=["x", "w", "b?"],
    attrs=attrs(attr("strides", "ints", [1, 1]), attr("pads", "ints", [0, 0, 0, 0]),
                attr("dilations", "ints", [1, 1]), attr("group", "int", 1), *_REQUANT),
    infer=_i8_rule(_conv_rule), verify_fn=_verify_weighted,
    summary="Affine int8 NHWC convolution (grouped/depthwise by 'group'), per-channel requantization."))

register_op(OpDef(
    "s8.dense", operands=["x", "w", "b?"], attrs=attrs(*_REQUANT, attr("weight_zp", "int", 0)),
    infer=_i8_rule(_dense_rule), verify_fn=_verify_weighted,
    summary="Affine int8 fully connected layer, weights [N, K], requantization per tensor or channel."))


def _broadcast_rule(op):
    a, b = op.operands[0].type.shape, op.operands[1].type.shape
    try:
        shape = np.broadcast_shapes(a, b)
    except ValueError:
        raise OpError(f"operand shapes {list(a)} and {list(b)} do not broadcast") from None
    return [TensorType(tuple(shape), act_dtype(op))]


def _verify_binary(op):
    """The checks s8.add / s8.sub / s8.mul share: i8 operands that broadcast, two input zero points."""
    _check_i8(op, list(op.operands) + list(op.results))
    if op.attrs["rounding"] == "s64":
        raise OpError("rounding 's64' is for conv2d and dense")
    _broadcast_rule(op)
    if len(op.attrs["input_zp"]) != 2:
        raise OpError("'input_zp' needs two entries (a, b)")
    _check_zp(op, "input_zp")
    _check_zp(op, "output_zp")
    _check_clamp(op)
    _check_requant(op, 1)


def _verify_add(op):
    _verify_binary(op)
    _check_requant(op, 2, "input_")
    if len(op.attrs["input_multiplier"]) != 2:
        raise OpError("'input_multiplier' needs two entries (a, b)")
    if not 0 <= op.attrs["left_shift"] <= 24:
        raise OpError(f"'left_shift' must lie in [0, 24], got {op.attrs['left_shift']}")


for _name, _summary in [
        ("s8.add", "Affine int8 elementwise add (TFLite scheme: left shift 20, per-input and output multipliers)."),
        ("s8.sub", "Affine int8 elementwise subtract a - b (TFLite SUB: the add's scheme with a' - b').")]:
    register_op(OpDef(
        _name, operands=["a", "b"],
        attrs=attrs(attr("input_zp", "ints"), attr("output_zp", "int", 0), attr("left_shift", "int", 20),
                    attr("input_multiplier", "ints"), attr("input_shift", "ints"),
                    attr("multiplier", "ints"), attr("shift", "ints"), attr("rounding", "str", "double"), *_CLAMP),
        infer=_broadcast_rule, verify_fn=_verify_add, summary=_summary))


register_op(OpDef(
    "s8.mul", operands=["a", "b"],
    attrs=attrs(attr("input_zp", "ints"), attr("output_zp", "int", 0), attr("multiplier", "ints"),
                attr("shift", "ints"), attr("rounding", "str", "double"), *_CLAMP),
    infer=_broadcast_rule, verify_fn=_verify_binary,
    summary="Affine int8 elementwise multiply, broadcasting (TFLite MulElementwise / arm_elementwise_mul_s8)."))

LUT_FUNCTIONS = ("leaky_relu", "logistic", "tanh", "hard_swish", "hard_sigmoid")


def _only_i8(op):
    for v in list(op.operands) + list(op.results):
        if v.type.dtype != "i8":
            raise OpError(f"works on i8 tensors, got {v.type.dtype}")


def _verify_lut(op):
    _only_i8(op)
    table = op.attrs["table"]
    if len(table) != 256:
        raise OpError(f"'table' must hold 256 int8 values, got {len(table)} entries")
    if any(not -128 <= t <= 127 for t in table):
        raise OpError("'table' holds values outside the i8 range")
    if op.attrs["function"] not in LUT_FUNCTIONS:
        raise OpError(f"'function' must be one of {', '.join(LUT_FUNCTIONS)}, got '{op.attrs['function']}'")


register_op(OpDef(
    "s8.lut", operands=["x"], attrs=attrs(attr("table", "ints"), attr("function", "str")),
    infer=lambda op: [TensorType(op.operands[0].type.shape, "i8")], verify_fn=_verify_lut,
    summary="y = table[x + 128]: a TFLite Micro int8 pointwise kernel tabulated on all 256 codes."))


def _verify_requantize(op):
    # The one s8 op whose input and result may differ in width: TFLite's QUANTIZE int8 <-> int16, the
    # boundary between layers of different widths (--scheme int8 --bits mixed).
    x, y = op.operands[0].type.dtype, op.results[0].type.dtype
    if x not in ACT_RANGE or y not in ACT_RANGE:
        raise OpError(f"works on i8 or i16 tensors, got {x} -> {y}")
    if op.attrs["rounding"] == "s64":
        raise OpError("rounding 's64' is for conv2d and dense")
    for key, dtype in (("input_zp", x), ("output_zp", y)):
        zp = op.attrs[key]
        if dtype == "i16" and zp != 0:
            raise OpError(f"'{key}' {zp} must be 0 for i16 activations (TFLite's 16x8 mode)")
        if dtype == "i8" and not -128 <= zp <= 127:
            raise OpError(f"'{key}' {zp} lies outside the i8 range")
    lo, hi = op.attrs["act_min"], op.attrs["act_max"]
    tlo, thi = ACT_RANGE[y]
    if not tlo <= lo <= hi <= thi:
        raise OpError(f"clamp [{lo}, {hi}] must be an ordered range inside [{tlo}, {thi}]")
    _check_requant(op, 1)


register_op(OpDef(
    "s8.requantize", operands=["x"], attrs=attrs(*_REQUANT),
    infer=_same_rule, verify_fn=_verify_requantize,
    summary="Change the scale/zero point (and width, i8 <-> i16) of an i8 or i16 tensor."))


def _verify_pool(op):
    _check_i8(op, list(op.operands) + list(op.results))
    _check_clamp(op)
    if any(p < 0 for p in op.attrs["pads"]) or any(s < 1 for s in op.attrs["strides"]):
        raise OpError("pads must be >= 0 and strides >= 1")


for _name, _summary in [("s8.avgpool", "Int8 average pooling over in-bounds elements, rounded half away from zero."),
                        ("s8.maxpool", "Int8 max pooling over in-bounds elements.")]:
    register_op(OpDef(_name, operands=["x"], attrs=attrs(*_WINDOW, *_CLAMP),
                      infer=_i8_rule(_pool_rule), verify_fn=_verify_pool, summary=_summary))


def _verify_softmax(op):
    _check_i8(op, list(op.operands) + list(op.results))
    if not 0 <= op.attrs["multiplier"] < 2 ** 31:
        raise OpError("'multiplier' must lie in [0, 2^31)")
    if act_dtype(op) == "i16":
        # (x - max) * 2^shift must fit int32 before the requantization; diff_min is not used.
        if not -31 <= op.attrs["shift"] <= 15 or op.attrs["diff_min"] != 0:
            raise OpError(f"int16 softmax takes 'shift' in [-31, 15] and 'diff_min' 0, got {op.attrs['shift']}, "
                          f"{op.attrs['diff_min']}")
        return
    if not 0 <= op.attrs["shift"] <= 30:
        raise OpError(f"'shift' must lie in [0, 30], got {op.attrs['shift']}")
    if op.attrs["diff_min"] > 0:
        raise OpError(f"'diff_min' must be <= 0, got {op.attrs['diff_min']}")
    # Differences are scaled by 2^shift in int32; inputs below diff_min are skipped.
    if -op.attrs["diff_min"] * (1 << op.attrs["shift"]) > 2 ** 31 - 1:
        raise OpError("diff_min * 2^shift overflows int32")


register_op(OpDef(
    "s8.softmax", operands=["x"],
    attrs=attrs(attr("multiplier", "int"), attr("shift", "int"), attr("diff_min", "int")),
    infer=_same_rule, verify_fn=_verify_softmax,
    summary="Softmax over the last axis (TFLite fixed point; int8: output 1/256, zp -128; int16: 1/32768, zp 0)."))
