"""Bit-exact numpy kernels of ``s8.lstm`` and ``s8.gru`` (qcc/ir/ops/qnn_s8_recurrent.py states the math).

The int16 activations are CMSIS-NN's ``arm_nn_activation_s16`` (TFLite's int16
LUT logistic/tanh). For a Q3.12 input x (or the cell state, rescaled by
``left_shift``):

    v  = (x * 3 * 2^max(ls, 0) + round) >> max(-ls, 0)     (round = 2^(-ls-1) when ls < 0)
    a  = |v|;  sigmoid: s = 9, tanh: s = 8 (tanh(x) = 2 sigmoid(2x) - 1 from the same table)
    u  = a >> s
    m  = u >= 255 ? (sigmoid: 0x7FFF << 10, tanh: 0xFFFF << 8)
                  : (T[u] << s) + (a & (2^s - 1)) * (T[u+1] - T[u])          (uint32)
    sigmoid: y = (v >= 0 ? m + 2^9 : 2^25 - m + 2^9 - 1) >> 10
    tanh:    y = (v >= 0 ? m - 2^23 + 2^7 : 2^23 - m + 2^7 - 1) >> 8         (uint32, low 16 bits)

``T`` is the reference's table of sigmoid(i / 24) in unsigned 0.16 (256 entries):
``round(65536 * sigmoid(i / 24))`` except one higher at the indices in
``_TABLE_RAISED`` (the reference's table, which lowers the interpolation error
there) and 65535 for the last entry; ``tests/test_cmsis_nn_lstm.py`` checks the
vectors that depend on it.
"""
from __future__ import annotations

import numpy as np

from qcc.sim.interpreter import kernel
from qcc.sim.qmn import _check_int32, _exact_matmul
from qcc.sim.s8 import requantize, rounding_divide_by_pot

_TABLE_RAISED = (4, 8, 12, 14, 15, 16, 17, 19, 20, 21, 22, 25, 27, 28, 29, 30, 31, 33, 34, 35, 37, 39, 40, 41,
                 43, 44, 45, 46, 49, 50, 54, 62, 63, 64, 66, 82, 86, 93, 100, 103, 112, 116, 135)


def sigmoid_table() -> np.ndarray:
    """The 256-entry uint16 table of sigmoid(i / 24) in 0.16 that the int16 activations interpolate."""
    i = np.arange(256, dtype=np.float64)
    t = np.floor(65536.0 / (1.0 + np.exp(-i / 24.0)) + 0.5).astype(np.int64)
    t[list(_TABLE_RAISED)] += 1
    t[255] = 65535
    return t


SIGMOID_TABLE = sigmoid_table()


def activation16(x, left_shift: int, kind: str) -> np.ndarray:
    """``arm_nn_activation_s16``: int16 in (Q3.12 after ``left_shift``) -> Q0.15 sigmoid or tanh."""
    x = np.asarray(x, np.int64)
    mult = 3 << left_shift if left_shift > 0 else 3
    rs = -left_shift if left_shift < 0 else 0
    v = (x * mult + ((1 << (rs - 1)) if rs else 0)) >> rs
    a = np.abs(v)
    s, lowmask, sat = (9, 0x1FF, 0x7FFF << 10) if kind == "sigmoid" else (8, 0xFF, 0xFFFF << 8)
    u = a >> s
    idx = np.minimum(u, 254)
    lo, hi = SIGMOID_TABLE[idx], SIGMOID_TABLE[idx + 1]
    m = np.where(u >= 255, sat, (lo << s) + (a & lowmask) * (hi - lo))
    if kind == "sigmoid":
        y = np.where(v >= 0, m + (1 << 9), (1 << 25) - m + (1 << 9) - 1) >> 10
    else:
        y = (np.where(v >= 0, m - (1 << 23) + (1 << 7), (1 << 23) - m + (1 << 7) - 1) & 0xFFFFFFFF) >> 8
    return ((y & 0xFFFF) ^ 0x8000) - 0x8000


def _sat16(v):
    return np.clip(v, -32768, 32767)


def _gate_matmuls(op, x, w, r, b_in, b_rec, gates: int):
    """Per gate k: the two requantized accumulators (input path over all steps, and a closure
    for the recurrent path of one hidden state)."""
    h = op.attrs["hidden_size"]
    a = op.attrs
    acc_x = _exact_matmul(np.asarray(x, np.int64) - a["input_zp"], np.asarray(w, np.int64).T) + b_in
    _check_int32(acc_x, op, "input-to-gate accumulator")
    mx = np.repeat(np.asarray(a["input_multiplier"], np.int64), h)
    sx = np.repeat(np.asarray(a["input_shift"], np.int64), h)
    px = requantize(acc_x, mx, sx, op)
    mr = np.repeat(np.asarray(a["recurrent_multiplier"], np.int64), h)
    sr = np.repeat(np.asarray(a["recurrent_shift"], np.int64), h)
    r64 = np.asarray(r, np.int64)

    def recurrent(hs, rows=slice(None)):
        acc = _exact_matmul(hs, r64[rows].T) + b_rec[rows]
        _check_int32(acc, op, "recurrent-to-gate accumulator")
        return requantize(acc, mr[rows], sr[rows], op)
    return px, recurrent


@kernel("s8.lstm")
def _lstm(op, x, w, r, b, h0, c0, p=None):
    a = op.attrs
    hs = a["hidden_size"]
    zp = a["output_zp"]
    px, recurrent = _gate_matmuls(op, x, w, r, np.asarray(b, np.int64), np.zeros(4 * hs, np.int64), 4)
    h = np.asarray(h0, np.int64).reshape(hs)
    c = np.asarray(c0, np.int64).reshape(hs)

    def peephole(pre, k, cell):  # TFLite's VectorBatchVectorCwiseProductAccumulate (k: 0 i, 1 o, 2 f)
        if p is None:
            return pre
        pk = np.asarray(p, np.int64)[k * hs:(k + 1) * hs]
        return _sat16(pre + requantize(pk * cell, a["peephole_multiplier"][k], a["peephole_shift"][k], op))
    ys = []
    for t in range(px.shape[0]):
        pre = _sat16(_sat16(px[t]) + recurrent(h - zp))
        gi, go, gf, gc = (pre[k * hs:(k + 1) * hs] for k in range(4))
        gi, gf = peephole(gi, 0, c), peephole(gf, 2, c)
        f = activation16(gf, 0, "sigmoid")
        c = _sat16(requantize(f * c, a["forget_multiplier"], a["forget_shift"], op))
        i = activation16(gi, 0, "sigmoid")
        g = activation16(gc, 0, "tanh")
        clip = a["cell_clip"]
        c = np.clip(requantize(i * g, a["input_to_cell_multiplier"], a["input_to_cell_shift"], op) + c, -clip, clip)
        o = activation16(peephole(go, 1, c), 0, "sigmoid")
        th = activation16(c, a["cell_scale_power"] + 12, "tanh")
        h = np.clip(requantize(o * th, a["output_multiplier"], a["output_shift"], op) + zp, -128, 127)
        ys.append(h)
    y = np.asarray(ys, np.int8).reshape(px.shape[0], hs)
    return y, h.astype(np.int8).reshape(1, hs), c.astype(np.int16).reshape(1, hs)


@kernel("s8.gru")
def _gru(op, x, w, r, b, h0):
    a = op.attrs
    hs = a["hidden_size"]
    zp = a["output_zp"]
    b = np.asarray(b, np.int64)
    px, recurrent = _gate_matmuls(op, x, w, r, b[:3 * hs], b[3 * hs:], 3)
    h = np.asarray(h0, np.int64).reshape(hs)
    zr, nn_ = slice(0, 2 * hs), slice(2 * hs, 3 * hs)
    ys = []
    for t in range(px.shape[0]):
        d = h - zp
        pre = _sat16(_sat16(px[t, zr]) + recurrent(d, zr))
        z = activation16(pre[:hs], 0, "sigmoid")
        rg = activation16(pre[hs:], 0, "sigmoid")
        if a["linear_before_reset"]:
            ph = _sat16(recurrent(d, nn_))
            n_pre = _sat16(_sat16(px[t, nn_]) + _sat16(rounding_divide_by_pot(rg * ph, 15)))
        else:
            rh = rounding_divide_by_pot(rg * d, 15)
            n_pre = _sat16(_sat16(px[t, nn_]) + recurrent(rh, nn_))
        n = activation16(n_pre, 0, "tanh")
        new = requantize((32768 - z) * n, a["output_multiplier"], a["output_shift"], op)
        h = np.clip(zp + new + rounding_divide_by_pot(z * d, 15), -128, 127)
        ys.append(h)
    y = np.asarray(ys, np.int8).reshape(px.shape[0], hs)
    return y, h.astype(np.int8).reshape(1, hs)
