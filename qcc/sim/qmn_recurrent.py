"""Integer kernels of ``qnn.lstm`` and ``qnn.gru`` (the math is stated in qcc/ir/ops/qnn_recurrent.py).

numpy int64, one time step at a time, all units of a step at once; every dot
product is checked to fit int32 like the other qnn kernels.
"""
from __future__ import annotations

import numpy as np

from qcc.ir.ops.qnn_recurrent import SIGMOID_Q12, TANH_Q12, peephole_shift
from qcc.sim.interpreter import kernel
from qcc.sim.qmn import _check_int32, _interp, rshift_round

_SIG = np.asarray(SIGMOID_Q12, np.int64)
_TANH = np.asarray(TANH_Q12, np.int64)


def lut_q12(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """qnn.lut_interp on int16 Q3.12 values: Q0.15."""
    u = np.asarray(x, np.int64) + 32768
    return _interp(table, u >> 8, u & 255, 8)


def _sat(a, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(a, info.min, info.max)


def _dots(op, v: np.ndarray, m: np.ndarray, what: str) -> np.ndarray:
    acc = m.astype(np.int64) @ v.astype(np.int64)
    _check_int32(acc, op, what)
    return acc


def _frac(v) -> int:
    return v.type.quant.frac_bits


@kernel("qnn.lstm")
def _qlstm(op, x, w, r, b, h0, c0, p=None):
    a = op.attrs
    hidden, xs, hs, nc = a["hidden_size"], a["x_shift"], a["h_shift"], a["cell_frac"]
    hdt, n_h = op.results[0].type.np_dtype, _frac(op.results[0])
    h, c = h0.reshape(-1).astype(np.int64), c0.reshape(-1).astype(np.int64)
    b = b.astype(np.int64)
    peep = np.zeros(3 * hidden, np.int64) if p is None else np.asarray(p, np.int64)
    ps = peephole_shift(op) if p is not None else 0
    p_i, p_o, p_f = (peep[k * hidden:(k + 1) * hidden] for k in range(3))
    ys = np.zeros((x.shape[0], hidden), np.int64)
    for t in range(x.shape[0]):
        acc = (rshift_round(_dots(op, x[t], w, "input accumulator"), xs)
               + rshift_round(_dots(op, h, r, "recurrent accumulator"), hs) + b)
        ai, ao, af, ag = (acc[k * hidden:(k + 1) * hidden] for k in range(4))
        i = lut_q12(_SIG, _sat(ai + rshift_round(p_i * c, ps), np.int16))
        f = lut_q12(_SIG, _sat(af + rshift_round(p_f * c, ps), np.int16))
        g = lut_q12(_TANH, _sat(ag, np.int16))
        c = _sat(rshift_round(f * c, 15) + rshift_round(i * g, 30 - nc), np.int16)
        o = lut_q12(_SIG, _sat(ao + rshift_round(p_o * c, ps), np.int16))
        th = lut_q12(_TANH, _sat(rshift_round(c, nc - 12), np.int16))
        h = _sat(rshift_round(o * th, 30 - n_h), hdt)
        ys[t] = h
    return [ys.astype(hdt), h.reshape(1, hidden).astype(hdt), c.reshape(1, hidden).astype(np.int16)]


@kernel("qnn.gru")
def _qgru(op, x, w, r, b, h0):
    a = op.attrs
    hidden, xs, hs = a["hidden_size"], a["x_shift"], a["h_shift"]
    hdt, n_h = op.results[0].type.np_dtype, _frac(op.results[0])
    h = h0.reshape(-1).astype(np.int64)
    b = b.astype(np.int64)
    part = [slice(k * hidden, (k + 1) * hidden) for k in range(4)]
    ys = np.zeros((x.shape[0], hidden), np.int64)
    for t in range(x.shape[0]):
        ax = rshift_round(_dots(op, x[t], w, "input accumulator"), xs)
        zr = _sat(ax[:2 * hidden] + rshift_round(_dots(op, h, r[:2 * hidden], "recurrent accumulator"), hs)
                  + b[:2 * hidden], np.int16)
        z, rr = lut_q12(_SIG, zr[part[0]]), lut_q12(_SIG, zr[part[1]])
        if a["linear_before_reset"]:
            hn = rshift_round(_dots(op, h, r[part[2]], "recurrent accumulator"), hs) + b[part[3]]
            pre = ax[part[2]] + b[part[2]] + rshift_round(rr * hn, 15)
        else:
            rh = _sat(rshift_round(rr * h, 15), hdt)
            pre = (ax[part[2]] + rshift_round(_dots(op, rh, r[part[2]], "recurrent accumulator"), hs)
                   + b[part[2]] + b[part[3]])
        n = lut_q12(_TANH, _sat(pre, np.int16))
        h = _sat(rshift_round((32768 - z) * n, 30 - n_h) + rshift_round(z * h, 15), hdt)
        ys[t] = h
    return [ys.astype(hdt), h.reshape(1, hidden).astype(hdt)]
