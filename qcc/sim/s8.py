"""Bit-exact numpy kernels for the affine int8 ``s8.*`` ops (TFLite Micro / CMSIS-NN).

Importing this module registers a kernel for every ``s8.*`` op into the
interpreter's registry, so ``run_graph`` runs a lowered int8 graph. The
arithmetic is stated in ``qcc/ir/ops/qnn_s8.py``; values are int64 here and
checked against the int32 range wherever the C code holds an int32 (leaving
it raises ``AccumulatorOverflowError`` instead of wrapping), except inside the
softmax fixed-point routines, which wrap exactly as two's complement int32
does on Cortex-M.

Also here, because the lowering passes use them to build the attributes:

    quantize_multiplier(m)        -> (mult, shift)   TFLite QuantizeMultiplier
    softmax_params(input_scale)   -> (mult, shift, diff_min)
"""
from __future__ import annotations

import math

import numpy as np

from qcc.sim.interpreter import kernel
from qcc.sim.qmn import INT32_MAX, INT32_MIN, AccumulatorOverflowError, _check_int32, _exact_matmul, window_sums

# ---------------------------------------------------------------- multipliers


def quantize_multiplier(m: float, rounding: str = "double"):
    """TFLite ``QuantizeMultiplier``: real m >= 0 -> (mult, shift), m ~= mult * 2^(shift - 31)."""
    if m < 0 or not math.isfinite(m):
        raise ValueError(f"multiplier must be finite and >= 0, got {m}")
    if m == 0.0:
        return 0, 0
    q, shift = math.frexp(m)
    # std::round: half away from zero; q * 2^31 is exact in float64.
    mult = int(math.floor(q * 2.0 ** 31 + 0.5))
    if mult == 1 << 31:
        mult //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if rounding == "single" and shift > 30:
        return (1 << 31) - 1, 30
    return mult, shift


SOFTMAX_DIFF_BITS = 5  # kScaledDiffIntegerBits: differences are Q5.26


def softmax_params(input_scale: float, beta: float = 1.0):
    """TFLite PreprocessSoftmaxScaling + CalculateInputRadius for int8 input."""
    real = min(beta * float(input_scale) * float(1 << (31 - SOFTMAX_DIFF_BITS)), float((1 << 31) - 1))
    if not real > 1.0:
        raise ValueError(f"softmax input scale {input_scale} is too small for the int8 softmax")
    mult, shift = quantize_multiplier(real)
    radius = math.floor(1.0 * ((1 << SOFTMAX_DIFF_BITS) - 1) * (1 << (31 - SOFTMAX_DIFF_BITS)) / (1 << shift))
    return mult, shift, -radius


# ---------------------------------------------------------------- fixed-point primitives
def _wrap32(a):
    a = np.asarray(a, np.int64)
    return ((a + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def rounding_divide_by_pot(x, e):
    """gemmlowp RoundingDivideByPOT: x / 2^e rounded half away from zero (e >= 0, may broadcast)."""
    x = np.asarray(x, np.int64)
    e = np.asarray(e, np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (remainder > threshold)


def srdhm(a, b):
    """SaturatingRoundingDoublingHighMul of int32 values (CMSIS-NN arm_nn_doubling_high_mult)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    p = a * b
    nudge = np.where(p >= 0, 1 << 30, 1 - (1 << 30))
    s = p + nudge
    q = np.where(s >= 0, s >> 31, -((-s) >> 31))  # C division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, q)


def requantize(acc, mult, shift, op, rounding: str = "double"):
    """``requant(acc, mult, shift)`` of qcc/ir/ops/qnn_s8.py; mult/shift broadcast on the last axis."""
    acc = np.asarray(acc, np.int64)
    if rounding != "s64":
        _check_int32(acc, op)
    mult = np.asarray(mult, np.int64)
    shift = np.asarray(shift, np.int64)
    if rounding == "s64":
        return requantize_s64(acc, mult, shift, op)
    if rounding == "single":
        total = 31 - shift
        return (acc * mult + (np.int64(1) << (total - 1))) >> total
    v = acc << np.maximum(shift, 0)
    _check_int32(v, op, "left-shifted accumulator")
    high = (v * mult + (1 << 30)) >> 31
    high = np.where((v == INT32_MIN) & (mult == INT32_MIN), INT32_MAX, high)
    return rounding_divide_by_pot(high, np.maximum(-shift, 0))


ACC_S64_LIMIT = 1 << 47  # TFLite's int64 MultiplyByQuantizedMultiplier asserts |acc| < 2^47


def requantize_s64(acc, mult, shift, op):
    """TFLite's int64 MultiplyByQuantizedMultiplier (CMSIS-NN REDUCE_MULTIPLIER + arm_nn_requantize_s64)."""
    if acc.size and np.abs(acc).max() >= ACC_S64_LIMIT:
        raise AccumulatorOverflowError(f"{op.describe()}: int64 accumulator {int(np.abs(acc).max())} "
                                       f"reaches 2^47 (TFLite's int16 requantization bound)")
    reduced = np.where(mult < 0x7FFF0000, (mult + (1 << 15)) >> 16, 0x7FFF)
    total = 15 - shift
    y = (acc * reduced + (np.int64(1) << (total - 1))) >> total
    _check_int32(y, op, "requantized int64 accumulator")
    return y


def _clamp_i8(y, op):
    """Clamp to [act_min, act_max] and store as the result's type (int8, or int16 in the 16x8 mode)."""
    return np.clip(y, op.attrs["act_min"], op.attrs["act_max"]).astype(op.results[0].type.np_dtype)


def _epilogue(op, acc):
    y = requantize(acc, op.attrs["multiplier"], op.attrs["shift"], op, op.attrs["rounding"])
    return _clamp_i8(y + op.attrs["output_zp"], op)


# ---------------------------------------------------------------- conv / dense
def conv2d_acc_s8(op, x, w, b=None) -> np.ndarray:
    """``bias + sum((x - input_zp) * w)`` of s8.conv2d, NHWC, int64 (padding contributes 0)."""
    a = op.attrs
    pt, pl, pb, pr = a["pads"]
    xs = np.asarray(x, np.int64) - a["input_zp"]
    xp = np.pad(xs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    acc = window_sums(xp, w, a["strides"], a["dilations"], a["group"])
    return acc if b is None else acc + np.asarray(b, np.int64)


@kernel("s8.conv2d")
def _conv2d(op, x, w, b=None):
    return _epilogue(op, conv2d_acc_s8(op, x, w, b))


def dense_acc_s8(op, x, w, b=None) -> np.ndarray:
    w = np.asarray(w, np.int64) - op.attrs.get("weight_zp", 0)
    acc = _exact_matmul(np.asarray(x, np.int64) - op.attrs["input_zp"], w.T)
    return acc if b is None else acc + np.asarray(b, np.int64)


@kernel("s8.dense")
def _dense(op, x, w, b=None):
    return _epilogue(op, dense_acc_s8(op, x, w, b))


# ---------------------------------------------------------------- elementwise
@kernel("s8.add", "s8.sub")
def _add(op, a, b):
    at = op.attrs
    r = at["rounding"]
    scaled = []
    for i, v in enumerate((a, b)):
        shifted = (np.asarray(v, np.int64) - at["input_zp"][i]) << at["left_shift"]
        scaled.append(requantize(shifted, at["input_multiplier"][i], at["input_shift"][i], op, r))
    total = scaled[0] - scaled[1] if op.opname == "s8.sub" else scaled[0] + scaled[1]
    y = requantize(total, at["multiplier"][0], at["shift"][0], op, r)
    return _clamp_i8(y + at["output_zp"], op)


@kernel("s8.mul")
def _mul(op, a, b):
    at = op.attrs
    prod = (np.asarray(a, np.int64) - at["input_zp"][0]) * (np.asarray(b, np.int64) - at["input_zp"][1])
    return _epilogue(op, prod)


@kernel("s8.lut")
def _lut(op, x):
    return np.asarray(op.attrs["table"], np.int8)[np.asarray(x, np.int64) + 128]


@kernel("s8.requantize")
def _requantize(op, x):
    return _epilogue(op, np.asarray(x, np.int64) - op.attrs["input_zp"])


# ---------------------------------------------------------------- pooling
def _pool_windows(op, x, pad_value):
    a = op.attrs
    pt, pl, pb, pr = a["pads"]
    kh, kw = a["kernel"]
    sh, sw = a["strides"]
    xp = np.pad(np.asarray(x, np.int64), ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=pad_value)
    n, hp, wp, c = xp.shape
    oh, ow = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    s = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (n, oh, ow, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1], s[2], s[3]), writeable=False)


@kernel("s8.avgpool")
def _avgpool(op, x):
    total = _pool_windows(op, x, 0).sum(axis=(3, 4))
    ones = np.ones((1,) + np.shape(x)[1:3] + (1,), np.int64)
    count = _pool_windows(op, ones, 0).sum(axis=(3, 4))
    # C: (s > 0 ? s + count/2 : s - count/2) / count, truncating division.
    num = np.where(total > 0, total + count // 2, total - count // 2)
    y = np.sign(num) * (np.abs(num) // count)
    return _clamp_i8(y, op)


@kernel("s8.maxpool")
def _maxpool(op, x):
    return _clamp_i8(_pool_windows(op, x, np.iinfo(np.int64).min).max(axis=(3, 4)), op)


# ---------------------------------------------------------------- softmax
def _mul_pow2_sat(x, e: int):
    """Saturating x * 2^e of int32 (arm_nn_mult_by_power_of_two)."""
    x = np.asarray(x, np.int64)
    thresh = (1 << (31 - e)) - 1
    return np.where(x > thresh, INT32_MAX, np.where(x < -thresh, INT32_MIN, _wrap32(x << e)))


_EXP_BARRELS = (1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242)


def exp_on_negative_values(a, integer_bits: int = SOFTMAX_DIFF_BITS):
    """gemmlowp exp_on_negative_values: Q(ib).(31-ib) input <= 0 -> exp in Q0.31 (ib = 4 or 5)."""
    a = np.asarray(a, np.int64)
    quarter = 1 << (29 - integer_bits)  # 1/4 in the input format
    mod = _wrap32((a & (quarter - 1)) - quarter)
    remainder = _wrap32(mod - a)
    # Rescale<0> of a value in [-1/4, 0): exact, no saturation.
    x = _wrap32((mod << integer_bits) + (1 << 28))  # exp(x - 1/8) on [-1/4, 0) by a Taylor polynomial around -1/8
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4_over_4 = rounding_divide_by_pot(srdhm(x2, x2), 2)
    poly = rounding_divide_by_pot(_wrap32(srdhm(_wrap32(x4_over_4 + x3), 715827883) + x2), 1)
    result = _wrap32(1895147668 + srdhm(1895147668, _wrap32(x + poly)))
    # Barrel shifter: one factor exp(-2^e) per remainder bit, for e = -2 .. integer_bits - 1.
    for k, factor in enumerate(_EXP_BARRELS[:integer_bits + 2]):
        result = np.where(remainder & (1 << (29 - integer_bits + k)), srdhm(result, factor), result)
    return np.where(a == 0, INT32_MAX, result)


def _reciprocal_q2(a):
    """1 / (1 + a) for Q0.31 a in [0, 1), as gemmlowp's Newton-Raphson leaves it: Q2.29 (unsaturated)."""
    a = np.asarray(a, np.int64)
    total = a + INT32_MAX  # RoundingHalfSum(a, One): (a + one + sign) / 2 with C division
    half_den = np.where(total >= 0, (total + 1) // 2, -((1 - total) // 2))
    x = _wrap32(1515870810 + srdhm(half_den, -1010580540))  # 48/17 - 32/17 * d
    for _ in range(3):
        x = _wrap32(x + _mul_pow2_sat(srdhm(x, _wrap32((1 << 29) - srdhm(half_den, x))), 2))
    return x


def one_over_one_plus_x(a):
    """gemmlowp one_over_one_plus_x_for_x_in_0_1: Q0.31 in [0, 1) -> 1/(1+x) in Q0.31 (Newton-Raphson)."""
    return _mul_pow2_sat(_reciprocal_q2(a), 1)  # Rescale<0>(ExactMulByPot<-1>(x))


def one_minus_x_over_one_plus_x(a):
    """gemmlowp one_minus_x_over_one_plus_x_for_x_in_0_1: (1 - x) / (1 + x) in Q0.31 = 2 / (1 + x) - 1."""
    return _mul_pow2_sat(_wrap32(_reciprocal_q2(a) - (1 << 29)), 2)  # Rescale<0>(x - F2::One())


def _clz32(v):
    v = np.asarray(v, np.int64)
    bits = np.zeros_like(v)
    for k in range(32):
        bits = np.where(v >= (np.int64(1) << k), k + 1, bits)
    return 32 - bits


# ---------------------------------------------------------------- int16 softmax (16x8 mode)
def _round_away_f32(v):
    """std::round of float32 values (half away from zero), exact: float64 holds every float32."""
    v = np.asarray(v, np.float64)
    return np.float32(np.sign(v) * np.floor(np.abs(v) + 0.5))


def _expf(x):
    """std::exp(float) as a correctly rounded float32 (glibc's expf is, to 0.502 ulp)."""
    return np.float32(np.exp(np.float64(x)))


def _recip1pf(x):
    return np.float32(1.0) / (np.float32(1.0) + np.float32(x))


def int16_lut(func, lo: float, hi: float) -> np.ndarray:
    """TFLite's gen_lut<float, int16_t, int16_t>(func, lo, hi, -1, 1): 512 steps + 1 for the last
    slope, each entry the sample minus half the interpolation error at the step's midpoint (float32)."""
    f = np.float32
    lo, hi = f(lo), f(hi)
    step = f((hi - lo) / f(512))
    half = f(step / f(2))
    inv = f(f(65536) / f(2))
    lut = np.zeros(513, np.int64)
    for i in range(512):
        x = f(lo + f(f(i) * step))
        val, mid, nxt = func(x), func(f(x + half)), func(f(lo + f(f(i + 1) * step)))
        sample = _round_away_f32(f(val * inv))
        interp = _round_away_f32(f(f(f(nxt * inv) + sample) / f(2)))
        bias = _round_away_f32(f(f(interp - _round_away_f32(f(mid * inv))) / f(2)))
        lut[i] = int(min(max(sample - bias, -32768.0), 32767.0))
    lut[512] = int(min(max(_round_away_f32(f(func(hi) * inv)), -32768.0), 32767.0))
    return lut


SOFTMAX16_EXP_LUT = int16_lut(_expf, -10.0, 0.0)         # exp on [-10, 0]
SOFTMAX16_RECIP_LUT = int16_lut(_recip1pf, 0.0, 1.0)     # 1 / (1 + x) on [0, 1]


def int16_lut_lookup(lut, v):
    """TFLite generic_int16_table_lookup: linear interpolation between 512 entries (v is int16)."""
    v = np.asarray(v, np.int64)
    index = 256 + (v >> 7)
    offset = v & 0x7F
    base = lut[index]
    slope = lut[index + 1] - base
    return base + ((slope * offset + 64) >> 7)


def softmax16_params(input_scale: float, beta: float = 1.0):
    """TFLite's int16 softmax prepare: input differences scaled so [-65535, 0] spans [-10, 0]."""
    return quantize_multiplier(float(input_scale) * beta / (10.0 / 65535.0))


def _softmax16(op, x):
    """TFLite reference SoftmaxInt16 (qcc/ir/ops/qnn_s8.py states it); output scale 1/32768, zp 0."""
    x = np.asarray(x, np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    scaled = requantize(diff, op.attrs["multiplier"], op.attrs["shift"], op)
    e = int16_lut_lookup(SOFTMAX16_EXP_LUT, np.clip(scaled + 32767, -32768, 32767))
    total = e.sum(axis=-1, keepdims=True)
    _check_int32(total, op, "sum of exponentials")
    headroom = _clz32(total)
    shifted = ((total << (headroom - 1)) + (1 << 13)) >> 14
    recip = int16_lut_lookup(SOFTMAX16_RECIP_LUT, np.clip(shifted - 98304, -32768, 32767))
    right = 31 - headroom
    y = (e * recip + (np.int64(1) << (right - 1))) >> right
    return np.clip(y, 0, 32767).astype(np.int16)


@kernel("s8.softmax")
def _softmax(op, x):
    if op.results[0].type.dtype == "i16":
        return _softmax16(op, x)
    mult, shift, diff_min = op.attrs["multiplier"], op.attrs["shift"], op.attrs["diff_min"]
    x = np.asarray(x, np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    live = diff >= diff_min
    e = exp_on_negative_values(srdhm(np.where(live, diff, 0) << shift, mult))
    total = _wrap32(np.where(live, rounding_divide_by_pot(e, 12), 0).sum(axis=-1, keepdims=True))
    headroom = _clz32(total)
    scale = one_over_one_plus_x(np.where(total > 0, (total << headroom) - (1 << 31), -(1 << 31)))
    bits_over_unit = 12 - headroom + 23
    y = rounding_divide_by_pot(srdhm(scale, e), bits_over_unit) - 128
    return np.where(live, np.clip(y, -128, 127), -128).astype(np.int8)
