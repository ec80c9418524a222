"""TFLite Micro's int8 pointwise kernels, evaluated on all 256 input codes (the ``s8.lut`` tables).

Each function returns ``table[x + 128]`` for every int8 ``x``: exactly what the
named TFLite Micro reference kernel outputs for that input code with the given
tensor parameters. Lowering one of these ops to ``s8.lut`` therefore keeps
TFLite's arithmetic bit for bit while the kernel becomes one table load per
element in C. Notation: ``srdhm`` = gemmlowp SaturatingRoundingDoublingHighMul,
``rdiv_pot`` = RoundingDivideByPOT, ``mbqm(x, m, e)`` = TFLite
MultiplyByQuantizedMultiplier = ``rdiv_pot(srdhm(x * 2^max(e,0), m), max(-e,0))``.

``leaky_relu_table`` -- TFLM ``LEAKY_RELU`` (micro reference_ops::QuantizeLeakyRelu; int16 too):
    (m_id, e_id) = QuantizeMultiplier(f64(s_in) / f64(s_out))
    (m_a, e_a)   = QuantizeMultiplier(|f64(s_in) * f64(alpha) / f64(s_out)|)   (float64 of the float32 values)
    d = x - zp_in;  y = clamp(zp_out + (d >= 0 ? mbqm(d, m_id, e_id) : sign(alpha) * mbqm(d, m_a, e_a)))
    (TFLM negates for a negative slope rather than multiply by a negative multiplier: the rounding differs)

``logistic_table`` -- TFLM ``LOGISTIC`` int8 (reference_integer_ops::Logistic); output
s = 1/256, zp = -128:
    (m, e) = frexp(f64(s_in) * 2^27) with m rounded to Q0.31;  radius = floor(15 * 2^27 / 2^e)
    d = x - zp_in;  y = -128 if d <= -radius, 127 if d >= radius, else
    y = clamp(rdiv_pot(gemmlowp::logistic(Q4.27 mbqm(d, m, e)), 23) - 128)

``tanh_table`` -- TFLM ``TANH`` int8 (reference_integer_ops::Tanh); output s = 1/128, zp = 0:
    the same input scaling and radius, then y = clamp(rdiv_pot(gemmlowp::tanh(Q4.27 ...), 24))

``hard_sigmoid_table`` -- ONNX HardSigmoid, for which TFLite has no int8 kernel (its converter
    builds it from other ops): qcc's definition, the real function on each code's value rounded
    half away from zero, y = clamp(zp_out + round((max(0, min(1, alpha * (x - zp_in) * s_in + beta))) / s_out)),
    in float64.

``requantized`` -- a table followed by TFLM ``QUANTIZE`` int8 -> int8 (reference Requantize,
    the s8.requantize arithmetic), for a QDQ model whose sigmoid/tanh output is not TFLite's fixed one.

``hard_swish_table`` -- TFLM ``HARD_SWISH`` int8 (reference_ops::HardSwish, int16 fixed point):
    hires = f32(s_in / 128); (m_o, e_o) = QuantizeMultiplier(f32(hires / s_out)) (e_o <= 0),
    (m_r, e_r) = QuantizeMultiplier(f32(hires / f32(3 / 32768))), both rounded to int16
    (DownScaleInt32ToInt16Multiplier); per code, with 16-bit saturating helpers:
    v = (x - zp_in) * 128;  p = srdhm16(v, m_o)
    r = v; r = satshl16(r, e_r - 1) if e_r > 0; r = srdhm16(r, m_r); r = satshl16(r, 1) if e_r > 0
    r = rdiv_pot(r, -e_r) if e_r < 0;  r = (r + 2^15) >> 1          (relu6(x + 3) / 6 in Q0.15)
    y = clamp(rdiv_pot((r * p) / 2^15 truncated, -e_o) + zp_out)

gemmlowp ``logistic(a)`` = 1/2 at 0, ``1/(1 + exp(-|a|))`` (one_over_one_plus_x of
exp_on_negative_values on Q4.27) for a > 0 and ``One - that`` for a < 0;
``tanh(a)`` = 0 at 0, ``t = (1 - e) / (1 + e)`` with ``e = exp(-2|a|)``
(exp_on_negative_values of the same raw value read as Q5.26) and ``-t`` for a < 0.
"""
from __future__ import annotations

import math

import numpy as np

from qcc.sim.qmn import INT32_MAX
from qcc.sim.s8 import (exp_on_negative_values, one_minus_x_over_one_plus_x, one_over_one_plus_x, quantize_multiplier,
                        rounding_divide_by_pot, srdhm)

CODES = np.arange(-128, 128, dtype=np.int64)
LOGISTIC_OUT = (1.0 / 256, -128)   # the output (scale, zero point) TFLite requires
TANH_OUT = (1.0 / 128, 0)
INPUT_INTEGER_BITS = 4             # kInputIntegerBits of the logistic and tanh kernels


def _mbqm(x, mult: int, shift: int):
    """TFLite MultiplyByQuantizedMultiplier (any sign of mult; left shift when shift > 0)."""
    v = np.asarray(x, np.int64) * (1 << max(shift, 0))
    return rounding_divide_by_pot(srdhm(v, mult), max(-shift, 0))


def leaky_relu_params(s_in: float, s_out: float, alpha: float):
    """([m_id, +-m_alpha], [e_id, e_alpha]) of TFLM's LEAKY_RELU Prepare; -m_alpha marks a negative slope."""
    s_in, s_out, alpha = (float(np.float32(v)) for v in (s_in, s_out, alpha))
    m_id, e_id = quantize_multiplier(s_in / s_out)
    real_alpha = s_in * alpha / s_out
    m_a, e_a = quantize_multiplier(abs(real_alpha)) if real_alpha else (0, 0)
    return [m_id, -m_a if real_alpha < 0 else m_a], [e_id, e_a]


def leaky_relu(d, multipliers, shifts) -> np.ndarray:
    """TFLM's QuantizeLeakyRelu on ``d = x - zp_in`` (before the output zero point and the clamp)."""
    d = np.asarray(d, np.int64)
    m_a = multipliers[1]
    below = _mbqm(d, abs(m_a), shifts[1])
    return np.where(d >= 0, _mbqm(d, multipliers[0], shifts[0]), -below if m_a < 0 else below)


def _clamp(y) -> np.ndarray:
    return np.clip(y, -128, 127).astype(np.int8)


def leaky_relu_table(s_in: float, zp_in: int, s_out: float, zp_out: int, alpha: float) -> np.ndarray:
    return _clamp(zp_out + leaky_relu(CODES - zp_in, *leaky_relu_params(s_in, s_out, alpha)))


def _q4_input(s_in: float, zp_in: int):
    """(d, Q4.27 input, live mask) with TFLM's logistic/tanh input scaling and range radius."""
    real = float(np.float32(s_in)) * float(1 << (31 - INPUT_INTEGER_BITS))
    q, shift = math.frexp(real)
    mult = int(math.floor(q * 2.0 ** 31 + 0.5))   # TfLiteRound
    if mult >= 1 << 31:
        raise ValueError(f"input scale {s_in} rounds its multiplier to 2^31 (TFLite overflows int32 here)")
    radius = math.floor(((1 << INPUT_INTEGER_BITS) - 1) * (1 << (31 - INPUT_INTEGER_BITS)) / 2.0 ** shift)
    d = CODES - zp_in
    live = (d > -radius) & (d < radius)
    return d, np.where(live, _mbqm(np.where(live, d, 0), mult, shift), 0), live


def logistic_table(s_in: float, zp_in: int) -> np.ndarray:
    d, a, live = _q4_input(s_in, zp_in)
    pos = a > 0
    absolute = np.where(pos, a, -a)
    r_pos = one_over_one_plus_x(exp_on_negative_values(-absolute, INPUT_INTEGER_BITS))
    r = np.where(a == 0, 1 << 30, np.where(pos, r_pos, INT32_MAX - r_pos))
    y = np.clip(rounding_divide_by_pot(r, 31 - 8) - 128, -128, 127)
    return _clamp(np.where(live, y, np.where(d <= 0, -128, 127)))


def tanh_table(s_in: float, zp_in: int) -> np.ndarray:
    d, a, live = _q4_input(s_in, zp_in)
    neg = a < 0
    n = np.where(neg, a, -a)                      # -|a|, read as Q5.26 (ExactMulByPot<1>)
    t = one_minus_x_over_one_plus_x(exp_on_negative_values(n, INPUT_INTEGER_BITS + 1))
    r = np.where(a == 0, 0, np.where(neg, -t, t))
    y = np.clip(rounding_divide_by_pot(r, 31 - 7), -128, 127)
    return _clamp(np.where(live, y, np.where(d <= 0, -128, 127)))


def hard_sigmoid_table(s_in: float, zp_in: int, s_out: float, zp_out: int, alpha: float, beta: float) -> np.ndarray:
    x = (CODES - zp_in) * np.float64(s_in)
    y = np.clip(np.float64(alpha) * x + np.float64(beta), 0.0, 1.0) / np.float64(s_out)
    return _clamp(zp_out + np.sign(y) * np.floor(np.abs(y) + 0.5))


def requantized(table: np.ndarray, table_q, out_q) -> np.ndarray:
    """``table`` (outputs with (scale, zp) ``table_q``) followed by TFLite's int8 QUANTIZE to ``out_q``
    (Requantize: clamp(mbqm(y - zp, QuantizeMultiplier(s / s_out)) + zp_out)); unchanged when equal."""
    scale, zp = table_q
    if (scale, zp) == (out_q.scale, out_q.zero_point):
        return table
    mult, shift = quantize_multiplier(float(np.float64(scale) / np.float64(out_q.scale)))
    return _clamp(_mbqm(table.astype(np.int64) - zp, mult, shift) + out_q.zero_point)


# ---------------------------------------------------------------- hard swish (int16 fixed point)
I16_MIN, I16_MAX = -(1 << 15), (1 << 15) - 1


def _int16_multiplier(m32: int) -> int:
    """TFLite DownScaleInt32ToInt16Multiplier."""
    return I16_MAX if m32 >= INT32_MAX - (1 << 15) else (m32 + (1 << 15)) >> 16


def _srdhm16(a, b):
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    p = a * b
    s = p + np.where(p >= 0, 1 << 14, 1 - (1 << 14))
    q = np.where(s >= 0, s >> 15, -((-s) >> 15))   # C division by 2^15 truncates
    return np.where((a == I16_MIN) & (b == I16_MIN), I16_MAX, q)


def _sdhm16(a, b):
    """SaturatingDoublingHighMul (no rounding): a * b / 2^15 truncated."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    p = a * b
    q = np.where(p >= 0, p >> 15, -((-p) >> 15))
    return np.where((a == I16_MIN) & (b == I16_MIN), I16_MAX, q)


def _sat_shl16(v, e: int):
    return np.clip(np.asarray(v, np.int64) * (1 << e), I16_MIN, I16_MAX)


def hard_swish_params(s_in: float, s_out: float):
    """(output mult16, output exponent, reluish mult16, reluish exponent) as TFLM's HardSwishPrepare."""
    f32 = np.float32
    hires = f32(1.0 / 128.0) * f32(s_in)
    m_o, e_o = quantize_multiplier(float(hires / f32(s_out)))
    if e_o > 0:
        raise ValueError(f"hard swish output scale {s_out} is below input scale / 128 (TFLite requires "
                         f"a right-shifting output multiplier)")
    m_r, e_r = quantize_multiplier(float(hires / (f32(3.0) / f32(32768.0))))
    return _int16_multiplier(m_o), e_o, _int16_multiplier(m_r), e_r


def hard_swish_table(s_in: float, zp_in: int, s_out: float, zp_out: int) -> np.ndarray:
    m_o, e_o, m_r, e_r = hard_swish_params(s_in, s_out)
    v = (CODES - zp_in) * 128
    pre = _srdhm16(v, m_o)
    r = v
    if e_r > 0:
        r = _sat_shl16(r, e_r - 1)
    r = _srdhm16(r, m_r)
    if e_r > 0:
        r = _sat_shl16(r, 1)
    if e_r < 0:
        r = rounding_divide_by_pot(r, -e_r)
    r = (r + (1 << 15)) >> 1
    out = rounding_divide_by_pot(_sdhm16(r, pre), -e_o) + zp_out
    return _clamp(out)
