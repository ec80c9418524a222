"""The bit-exact integer simulator: numpy kernels for the lowered integer ops.

Importing this module registers kernels for every ``qnn.*`` op and for the
boundary ops ``q.quantize`` / ``q.dequantize`` / ``q.range`` into the float
interpreter's registry (``qcc.sim.interpreter.KERNELS``), so one
``run_graph(g, inputs)`` runs a lowered graph. This file is THE numerics
contract (``qcc/ir/ops/qnn.py`` states it in words): the emitted C must equal it
bit for bit. All integer arithmetic is exact (int64, or float64 BLAS on values
whose sums provably stay below 2^53, which is exact too); an int32 accumulator
that would overflow raises ``AccumulatorOverflowError`` instead of wrapping
(``check-quantized`` proves statically that it cannot happen).

Rounding helpers, used everywhere and by the passes:

    round_half_away(x)      = sign(x) * floor(|x| + 1/2)          (exact for every float)
    rshift_round(a, s)      = (a + (1 << (s-1))) >> s   if s > 0  (arithmetic shift: ties go up)
                            = a << -s                    if s <= 0
    div_round_away(n, d)    = sign(n) * floor((2|n| + d) / 2d)    (d > 0)

Boundary ops (the C side uses ``roundf`` on the same float32 value):

    q.quantize   fixed<n>:  q = clamp(round_half_away(f32(x) * 2^n))
                 uniform:   q = clamp(round_half_away(f32(x) / f32(scale)) + zp)   (f32 division)
    q.dequantize            x = f32(q - zp) * f32(scale)

Extreme float inputs are defined, the same in C (``NAME_quantize_input``):
the scaled value v is clamped to [-1e9, 1e9] before rounding, so +-Inf and
huge values (1e18, 1e30, or a product that overflows float32) saturate to
the storage range, and NaN quantizes to the zero point (v = 0: real 0.0),
never to an arbitrary code.

Softmax and the i16 interpolated table are described in ``qcc/ir/ops/qnn_softmax.py``.
"""
from __future__ import annotations

import numpy as np

from qcc.errors import IRError
from qcc.sim.interpreter import kernel
from qcc.ir.ops import qnn_softmax  # noqa: F401  (registers qnn.softmax / qnn.lut_interp)
from qcc.ir.types import FixedPoint, PerAxisQuant, UniformQuant

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


class AccumulatorOverflowError(IRError):
    """An int32 accumulator of an integer op left the int32 range while simulating."""


# ---------------------------------------------------------------- rounding helpers
def round_half_away(x) -> np.ndarray:
    """Round to the nearest integer, ties away from zero; float in, int64 out.

    ``floor(|x| + 0.5)`` can round wrongly in floating point (0.49999997 + 0.5
    rounds to 1.0 in float32), so the fraction is compared instead.
    """
    a = np.abs(np.asarray(x, dtype=np.float64))
    r = np.floor(a)
    r = r + (a - r >= 0.5)
    return (np.sign(x) * r).astype(np.int64)


def rshift_round(a, s) -> np.ndarray:
    """``(a + 2^(s-1)) >> s`` for s > 0, ``a << -s`` for s <= 0; s may be per element/channel."""
    a = np.asarray(a, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    right = np.maximum(s, 0)
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return np.where(s > 0, (a + half) >> right, a << np.maximum(-s, 0))


def div_round_away(num, den) -> np.ndarray:
    """Integer ``num / den`` rounded half away from zero (den > 0)."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    q = (2 * np.abs(num) + den) // (2 * den)
    return np.where(num < 0, -q, q)


def saturate(a, lo: int, hi: int, np_dtype) -> np.ndarray:
    return np.clip(a, lo, hi).astype(np_dtype)


def _check_int32(acc: np.ndarray, op, what: str = "accumulator"):
    if acc.size and (acc.min() < INT32_MIN or acc.max() > INT32_MAX):
        bad = acc.max() if acc.max() > INT32_MAX else acc.min()
        raise AccumulatorOverflowError(
            f"{op.describe()}: int32 {what} overflows (value {int(bad)}); the C code would wrap. "
            f"Run check-quantized, or lower the weight/activation fractional bits of this layer")


def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer ``a @ b`` exactly: float64 BLAS when every partial sum stays below 2^53."""
    k = a.shape[-1]
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * k
    if bound < 2.0 ** 52:
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    return a.astype(np.int64) @ b.astype(np.int64)


def _channel_shifts(op, key: str, channels: int) -> np.ndarray:
    s = np.asarray(op.attrs[key], dtype=np.int64)
    return np.broadcast_to(s, (channels,)) if s.size == 1 else s


def wide_accumulator(op) -> bool:
    """An ``i64`` bias: the conv/dense accumulates in int64 (qcc/ir/ops/qnn.py)."""
    return len(op.operands) > 2 and op.operands[2].type.dtype == "i64"


def _requant_epilogue(op, acc: np.ndarray) -> np.ndarray:
    """Per-channel (last axis) rounded shift and clamp to [act_min, act_max]."""
    if not wide_accumulator(op):  # int64 sums are bounded far inside int64 by check-quantized
        _check_int32(acc, op)
    shift = _channel_shifts(op, "out_shift", acc.shape[-1])
    y = rshift_round(acc, shift)
    return saturate(y, op.attrs["act_min"], op.attrs["act_max"], op.results[0].type.np_dtype)


def _bias_term(op, b, channels: int) -> np.ndarray:
    if b is None:
        return np.zeros(channels, np.int64)
    # A negative bias_shift would be a rounded right shift; check-quantized rejects it.
    return rshift_round(np.asarray(b, np.int64).reshape(-1), -_channel_shifts(op, "bias_shift", channels))


# ---------------------------------------------------------------- boundary ops
# |v| beyond this saturates before rounding (C: the same bound in NAME_quantize_input); any
# storage type's range fits inside it, and int64 conversion of the clamped value is exact.
QUANTIZE_CLAMP = 1.0e9


def _round_clamped(v: np.ndarray, limit: float = QUANTIZE_CLAMP) -> np.ndarray:
    """round_half_away of a scaled input after NaN -> 0 and clamping to [-1e9, 1e9] (defined for every float)."""
    v = np.asarray(v, dtype=np.float64)
    v = np.where(np.isnan(v), 0.0, np.clip(v, -limit, limit))
    return round_half_away(v)


def quantize_array(x: np.ndarray, quant, dtype_np) -> np.ndarray:
    """The q.quantize arithmetic for one tensor (also used by passes for weights)."""
    info = np.iinfo(dtype_np)
    # The 1e9 clamp defines run-time quantization (int8..int32 storage, as the C does); an int64 constant
    # (the bias of an int64-accumulator layer, quantized only here) keeps values beyond it.
    limit = QUANTIZE_CLAMP if info.bits <= 32 else 2.0 ** 62
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # Inf and NaN are defined below
        if isinstance(quant, FixedPoint):
            q = _round_clamped(x.astype(np.float64) * 2.0 ** quant.frac_bits, limit)
        elif isinstance(quant, UniformQuant):
            q = _round_clamped(x / np.float32(quant.scale), limit) + quant.zero_point
        elif isinstance(quant, PerAxisQuant):
            shape = [1] * x.ndim
            shape[quant.axis] = -1
            scales = np.asarray(quant.scales, np.float32).reshape(shape)
            zps = np.asarray(quant.zero_points, np.int64).reshape(shape)
            q = _round_clamped(x / scales, limit) + zps
        else:
            raise IRError(f"cannot quantize to {quant!r}")
    return saturate(q, int(info.min), int(info.max), dtype_np)


def dequantize_array(q: np.ndarray, quant) -> np.ndarray:
    q = np.asarray(q, dtype=np.int64)
    if isinstance(quant, PerAxisQuant):
        shape = [1] * q.ndim
        shape[quant.axis] = -1
        scales = np.asarray(quant.scales, np.float32).reshape(shape)
        zps = np.asarray(quant.zero_points, np.int64).reshape(shape)
        return (q - zps).astype(np.float32) * scales
    return (q - quant.zero_point).astype(np.float32) * np.float32(quant.scale)


@kernel("q.quantize")
def _quantize(op, x):
    t = op.results[0].type
    return quantize_array(x, t.quant, t.np_dtype)


@kernel("q.dequantize")
def _dequantize(op, q):
    return dequantize_array(q, op.operands[0].type.quant).astype(op.results[0].type.np_dtype)


@kernel("q.range")
def _range(op, x):
    return x


# ---------------------------------------------------------------- conv / dense
def _pad_nhwc(x: np.ndarray, pads) -> np.ndarray:
    pt, pl, pb, pr = pads
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))


def window_sums(xp: np.ndarray, w: np.ndarray, strides, dilations, group: int) -> np.ndarray:
    """Exact ``sum(x * w)`` of an NHWC convolution over an already padded int64 input.

    Shared by the Qm.n and the affine int8 simulators: only what surrounds the
    sums (bias, zero points, requantization) differs between them.
    """
    sh, sw = strides
    dh, dw = dilations
    n, hp, wp, c = xp.shape
    cout, kh, kw, cg = w.shape
    oh = (hp - dh * (kh - 1) - 1) // sh + 1
    ow = (wp - dw * (kw - 1) - 1) // sw + 1
    s = xp.strides
    # [N, OH, OW, KH, KW, C] view of every window.
    cols = np.lib.stride_tricks.as_strided(
        xp, (n, oh, ow, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]), writeable=False)
    cols = cols.reshape(n, oh, ow, kh, kw, group, cg)
    wg = np.asarray(w, np.int64).reshape(group, cout // group, kh, kw, cg)
    acc = np.empty((n, oh, ow, group, cout // group), np.int64)
    for gi in range(group):
        lhs = cols[..., gi, :].reshape(n * oh * ow, kh * kw * cg)
        rhs = wg[gi].reshape(cout // group, kh * kw * cg).T
        acc[..., gi, :] = _exact_matmul(lhs, rhs).reshape(n, oh, ow, cout // group)
    return acc.reshape(n, oh, ow, cout)


def conv2d_acc(op, x: np.ndarray, w: np.ndarray, b=None) -> np.ndarray:
    """The int32 accumulators ``(bias << bias_shift) + sum(x * w)`` of qnn.conv2d, NHWC, int64."""
    a = op.attrs
    xp = _pad_nhwc(np.asarray(x, np.int64), a["pads"])
    acc = window_sums(xp, w, a["strides"], a["dilations"], a["group"])
    return acc + _bias_term(op, b, w.shape[0])


@kernel("qnn.conv2d")
def _qconv2d(op, x, w, b=None):
    return _requant_epilogue(op, conv2d_acc(op, x, w, b))


def dense_acc(op, x: np.ndarray, w: np.ndarray, b=None) -> np.ndarray:
    acc = _exact_matmul(np.asarray(x, np.int64), np.asarray(w, np.int64).T)
    return acc + _bias_term(op, b, w.shape[0])


@kernel("qnn.dense")
def _qdense(op, x, w, b=None):
    return _requant_epilogue(op, dense_acc(op, x, w, b))


# ---------------------------------------------------------------- elementwise
@kernel("qnn.add")
def _qadd(op, a, b):
    acc = (np.asarray(a, np.int64) << op.attrs["a_shift"]) + (np.asarray(b, np.int64) << op.attrs["b_shift"])
    _check_int32(acc, op, "sum")
    y = rshift_round(acc, op.attrs["out_shift"][0])
    return saturate(y, op.attrs["act_min"], op.attrs["act_max"], op.results[0].type.np_dtype)


@kernel("qnn.sub")
def _qsub(op, a, b):
    acc = (np.asarray(a, np.int64) << op.attrs["a_shift"]) - (np.asarray(b, np.int64) << op.attrs["b_shift"])
    _check_int32(acc, op, "difference")
    y = rshift_round(acc, op.attrs["out_shift"][0])
    return saturate(y, op.attrs["act_min"], op.attrs["act_max"], op.results[0].type.np_dtype)


@kernel("qnn.mul")
def _qmul(op, a, b):
    # i8/i16 operands: the product fits int32; a left out_shift is taken before the clamp (int64).
    y = rshift_round(np.asarray(a, np.int64) * np.asarray(b, np.int64), op.attrs["out_shift"][0])
    return saturate(y, op.attrs["act_min"], op.attrs["act_max"], op.results[0].type.np_dtype)


@kernel("qnn.requantize")
def _qrequant(op, x):
    y = rshift_round(np.asarray(x, np.int64), op.attrs["out_shift"][0])
    return saturate(y, op.attrs["act_min"], op.attrs["act_max"], op.results[0].type.np_dtype)


@kernel("qnn.lut")
def _qlut(op, x):
    table = np.asarray(op.attrs["table"], np.int64)
    return table[np.asarray(x, np.int64) + 128].astype(op.results[0].type.np_dtype)


# ---------------------------------------------------------------- pooling
def _windows_nhwc(x: np.ndarray, kernel_hw, strides, out_hw) -> np.ndarray:
    """[N, OH, OW, KH, KW, C] view of an already padded NHWC array."""
    n, _, _, c = x.shape
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, out_hw[0], out_hw[1], kernel_hw[0], kernel_hw[1], c),
        (s[0], s[1] * strides[0], s[2] * strides[1], s[1], s[2], s[3]), writeable=False)


def _pool_out(op, x):
    n, h, w, c = x.shape
    kh, kw = op.attrs["kernel"]
    sh, sw = op.attrs["strides"]
    pt, pl, pb, pr = op.attrs["pads"]
    return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1


@kernel("qnn.maxpool")
def _qmaxpool(op, x):
    pt, pl, pb, pr = op.attrs["pads"]
    # Padding never wins: pad with a value below every storage value.
    xp = np.pad(np.asarray(x, np.int64), ((0, 0), (pt, pb), (pl, pr), (0, 0)),
                constant_values=np.iinfo(np.int64).min)
    y = _windows_nhwc(xp, op.attrs["kernel"], op.attrs["strides"], _pool_out(op, x)).max(axis=(3, 4))
    return saturate(y, op.attrs["act_min"], op.attrs["act_max"], op.results[0].type.np_dtype)


@kernel("qnn.avgpool")
def _qavgpool(op, x):
    a = op.attrs
    out = _pool_out(op, x)
    xp = _pad_nhwc(np.asarray(x, np.int64), a["pads"])
    total = _windows_nhwc(xp, a["kernel"], a["strides"], out).sum(axis=(3, 4))
    if a["count_include_pad"]:
        count = np.int64(a["kernel"][0] * a["kernel"][1])
    else:
        ones = _pad_nhwc(np.ones((1,) + x.shape[1:3] + (1,), np.int64), a["pads"])
        count = _windows_nhwc(ones, a["kernel"], a["strides"], out).sum(axis=(3, 4))
    s = a["out_shift"]
    y = div_round_away(total, count << s) if s >= 0 else div_round_away(total << -s, count)
    return saturate(y, a["act_min"], a["act_max"], op.results[0].type.np_dtype)


# ---------------------------------------------------------------- tables (see qcc/ir/ops/qnn_softmax.py)
def _interp(table: np.ndarray, idx: np.ndarray, frac: np.ndarray, shift: int) -> np.ndarray:
    """``table[k] + rshift_round((table[k+1] - table[k]) * f, shift)``."""
    t0 = table[idx]
    return t0 + rshift_round((table[idx + 1] - t0) * frac, shift)


@kernel("qnn.softmax")
def _qsoftmax(op, x):
    x = np.asarray(x, np.int64)
    table = np.asarray(op.attrs["table"], np.int64)
    ts = op.attrs["table_shift"]
    d = x.max(axis=-1, keepdims=True) - x
    k = d >> ts
    inside = k < 256
    kc = np.where(inside, k, 0)
    e = np.where(inside, _interp(table, kc, d & ((1 << ts) - 1), ts), 0)
    total = e.sum(axis=-1, keepdims=True)
    out_t = op.results[0].type
    out_frac = 7 if out_t.dtype == "i8" else 15
    y = div_round_away(e << out_frac, total)
    return saturate(y, 0, int(np.iinfo(out_t.np_dtype).max), out_t.np_dtype)


@kernel("qnn.lut_interp")
def _qlut_interp(op, x):
    u = np.asarray(x, np.int64) + 32768
    table = np.asarray(op.attrs["table"], np.int64)
    return _interp(table, u >> 8, u & 255, 8).astype(op.results[0].type.np_dtype)
