"""Float kernels of the recurrent ops ``nn.lstm`` and ``nn.gru`` (math in qcc/ir/ops/nn_recurrent.py).

They compute in float32 like onnxruntime, one time step at a time. Given a
dict ``trace``, they also record per step (arrays [T, H]) what calibration
needs to choose the integer formats inside a cell: for LSTM the gate
pre-activations ``pre_i, pre_o, pre_f, pre_g``, the gate outputs ``i, o, f, g``
and the cell state ``c``; for GRU ``pre_z, pre_r, pre_n``, ``z, r, n`` and,
with linear_before_reset, the recurrent candidate term ``hn`` (R_h h + Rb_h).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from qcc.sim.interpreter import _check_inputs, kernel, run_op


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float32)))).astype(np.float32)


def _record(trace: Optional[dict], step: dict):
    if trace is None:
        return
    for key, value in step.items():
        trace.setdefault(key, []).append(np.asarray(value, np.float32).reshape(-1))


def _stack(trace: Optional[dict]):
    if trace is not None:
        for key in list(trace):
            trace[key] = np.stack(trace[key]) if isinstance(trace[key], list) else trace[key]


def lstm_float(x, w, r, b, h0, c0, p=None, trace: Optional[dict] = None):
    """(y [T, H], h [1, H], c [1, H]) of an ONNX LSTM (gates i, o, f, c) run forward over x [T, I];
    ``p`` the peepholes [3H] (i, o, f) as ONNX's P, or None."""
    f32 = np.float32
    x, w, r, b = (np.asarray(a, f32) for a in (x, w, r, b))
    hidden = r.shape[1]
    bias = b[:4 * hidden] + b[4 * hidden:]
    h, c = np.asarray(h0, f32).reshape(hidden), np.asarray(c0, f32).reshape(hidden)
    peep = np.asarray(p if p is not None else np.zeros(3 * hidden), f32).reshape(-1)
    p_i, p_o, p_f = (peep[k * hidden:(k + 1) * hidden] for k in range(3))
    ys = []
    for t in range(x.shape[0]):
        pre = w @ x[t] + r @ h + bias
        pi, po, pf, pg = (pre[k * hidden:(k + 1) * hidden] for k in range(4))
        pi, pf = pi + p_i * c, pf + p_f * c
        i, f, g = _sigmoid(pi), _sigmoid(pf), np.tanh(pg)
        c = (f * c + i * g).astype(f32)
        po = po + p_o * c
        o = _sigmoid(po)
        h = (o * np.tanh(c)).astype(f32)
        ys.append(h)
        _record(trace, {"pre_i": pi, "pre_o": po, "pre_f": pf, "pre_g": pg, "i": i, "o": o, "f": f, "g": g, "c": c})
    _stack(trace)
    y = np.stack(ys).astype(f32) if ys else np.zeros((0, hidden), f32)
    return y, h.reshape(1, hidden), c.reshape(1, hidden)


def gru_float(x, w, r, b, h0, linear_before_reset: int = 0, trace: Optional[dict] = None):
    """(y [T, H], h [1, H]) of an ONNX GRU (gates z, r, h) run forward over x [T, I]."""
    f32 = np.float32
    x, w, r, b = (np.asarray(a, f32) for a in (x, w, r, b))
    hidden = r.shape[1]
    wb, rb = b[:3 * hidden], b[3 * hidden:]
    h = np.asarray(h0, f32).reshape(hidden)
    part = [slice(k * hidden, (k + 1) * hidden) for k in range(3)]
    ys = []
    for t in range(x.shape[0]):
        gx = w @ x[t] + wb
        pz = gx[part[0]] + r[part[0]] @ h + rb[part[0]]
        pr = gx[part[1]] + r[part[1]] @ h + rb[part[1]]
        z, rr = _sigmoid(pz), _sigmoid(pr)
        step = {}
        if linear_before_reset:
            hn = r[part[2]] @ h + rb[part[2]]
            pn = gx[part[2]] + rr * hn
            step["hn"] = hn
        else:
            pn = gx[part[2]] + r[part[2]] @ (rr * h) + rb[part[2]]
        n = np.tanh(pn).astype(f32)
        h = ((1 - z) * n + z * h).astype(f32)
        ys.append(h)
        _record(trace, {"pre_z": pz, "pre_r": pr, "pre_n": pn, "z": z, "r": rr, "n": n, **step})
    _stack(trace)
    y = np.stack(ys).astype(f32) if ys else np.zeros((0, hidden), f32)
    return y, h.reshape(1, hidden)


@kernel("nn.lstm")
def _lstm(op, x, w, r, b, h0, c0, p=None):
    return list(lstm_float(x, w, r, b, h0, c0, p))


@kernel("nn.gru")
def _gru(op, x, w, r, b, h0):
    return list(gru_float(x, w, r, b, h0, op.attrs["linear_before_reset"]))


@kernel("qcc.state")
def _state(op):
    return op.attrs["value"]


def run_stream(graph, calls):
    """Outputs (by name) of each call of a streamed graph (``stream-state``): every ``qcc.state`` starts
    at its value and then holds the final state the recurrent op reading it produced in the previous call,
    as the C back end keeps it in the arena between ``NAME_invoke()`` calls."""
    state = {id(op): op.attrs["value"] for op in graph.find("qcc.state")}
    results = []
    for inputs in calls:
        env = _check_inputs(graph, inputs)
        for op in graph.ops:
            arrays = [state[id(op)]] if op.opname == "qcc.state" else run_op(op, [env[v] for v in op.operands])
            env.update(zip(op.results, arrays))
        for op in graph.ops:
            for k, v in enumerate(op.operands[4:]):
                if v.producer is not None and v.producer.opname == "qcc.state" and len(op.results) > 1 + k:
                    state[id(v.producer)] = env[op.results[1 + k]]
        results.append({name: env[v] for name, v in zip(graph.output_names, graph.outputs)})
    return results
