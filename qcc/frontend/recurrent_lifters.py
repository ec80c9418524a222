"""Lifters of ONNX ``LSTM`` and ``GRU`` into ``nn.lstm`` / ``nn.gru`` (qcc/ir/ops/nn_recurrent.py).

Supported: forward direction, batch 1, either ``layout``, the default
activations, ``linear_before_reset`` 0 or 1 (GRU), constant W, R and B,
initial states given (any value) or absent (zeros), ``sequence_lens`` absent
or a constant equal to the sequence length. The ONNX batch and direction dims
are removed with reshapes around the op; the node's outputs get them back:

    X [T, 1, I] (layout 0) or [1, T, I] (layout 1)  ->  x [T, I]
    W [1, G*H, I] -> w [G*H, I],  R [1, G*H, H] -> r,  B [1, 2*G*H] -> b
    y [T, H] -> Y [T, 1, 1, H] (layout 0) or [1, T, 1, H];  h, c [1, H] -> Y_h, Y_c [1, 1, H]

Constant LSTM peepholes P become nn.lstm's operand p ([3H]). Anything
else (reverse or bidirectional, clip, input_forget, other activations,
batch > 1) is refused with the node named: a cell that needs one of them
would compute different numbers.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from qcc.frontend.lifters import _inp, lifter

_LSTM_ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
               "input_forget", "layout")
_GRU_ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
              "layout", "linear_before_reset")
_DEFAULT_ACTS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"]}
_GATES = {"LSTM": 4, "GRU": 3}


def _check_recurrent(imp, node, a) -> Optional[str]:
    op = node.op_type
    if a.get("direction", "forward") != "forward":
        return f"direction '{a['direction']}' is not supported (only forward)"
    acts = [s.decode() if isinstance(s, bytes) else s for s in a.get("activations", [])]
    if acts and [s.lower() for s in acts] != _DEFAULT_ACTS[op]:
        return f"activations {acts} are not supported (only the defaults {_DEFAULT_ACTS[op]})"
    if a.get("activation_alpha") or a.get("activation_beta"):
        return "activation_alpha / activation_beta are not supported (default activations only)"
    if "clip" in a:
        return "cell clipping (attribute clip) is not supported"
    if a.get("input_forget", 0):
        return "input_forget = 1 (coupled input and forget gates) is not supported"
    if a.get("layout", 0) not in (0, 1):
        return f"layout {a['layout']} is not valid"
    if a.get("linear_before_reset", 0) not in (0, 1):
        return f"linear_before_reset {a['linear_before_reset']} is not valid"
    x = imp.shape(node.input[0])
    if x is None or len(x) != 3:
        return "the input X needs a static [seq, batch, input] shape"
    steps, batch = (x[1], x[0]) if a.get("layout", 0) else (x[0], x[1])
    if batch != 1:
        return f"batch size {batch} is not supported (only 1)"
    if steps < 1:
        return "the input sequence is empty"
    gates, hidden = _GATES[op], a.get("hidden_size")
    for i, what in ((1, "W"), (2, "R"), (3, "B")):
        name = _inp(node, i)
        if name and imp.const(name) is None:
            return f"input {what} ('{name}') must be a constant (initializer or Constant)"
    w = imp.const(node.input[1])
    if hidden is None:
        hidden = w.shape[1] // gates if w.ndim == 3 else None
    if hidden is None or w.shape != (1, gates * hidden, x[2]):
        return f"W has shape {list(w.shape)}; expected [1, {gates}*hidden_size, {x[2]}] (one direction)"
    r = imp.const(node.input[2])
    if r.shape != (1, gates * hidden, hidden):
        return f"R has shape {list(r.shape)}; expected [1, {gates * hidden}, {hidden}]"
    b = imp.const(_inp(node, 3))
    if b is not None and b.shape != (1, 2 * gates * hidden):
        return f"B has shape {list(b.shape)}; expected [1, {2 * gates * hidden}]"
    seq = _inp(node, 4)
    if seq:
        lens = imp.const(seq)
        if lens is None or lens.size != 1 or int(lens.reshape(-1)[0]) != steps:
            return "sequence_lens is not supported unless it is a constant equal to the sequence length"
    for i in (5, 6):
        name = _inp(node, i)
        if name and imp.shape(name) != (1, 1, hidden):
            got = list(imp.shape(name)) if imp.shape(name) is not None else "unknown"
            return f"initial state '{name}' has shape {got}; expected a static [1, 1, {hidden}]"
    peep = _inp(node, 7) if op == "LSTM" else ""
    if peep and imp.const(peep) is None:
        return f"peephole weights P ('{peep}') must be a constant (initializer or Constant)"
    if peep and imp.const(peep).shape != (1, 3 * hidden):
        return f"P has shape {list(imp.const(peep).shape)}; expected [1, {3 * hidden}] (one direction)"
    for k, name in enumerate(node.output):
        if name and imp.shape(name) is not None and k < 3:
            want = [(steps, 1, 1, hidden) if not a.get("layout", 0) else (1, steps, 1, hidden),
                    (1, 1, hidden), (1, 1, hidden)][k]
            if imp.shape(name) != want:
                return f"output '{name}' has shape {list(imp.shape(name))}; expected {list(want)}"
    return None


def _lift_recurrent(imp, node, a):
    op = node.op_type
    gates, name = _GATES[op], imp.node_name(node)
    w = imp.const(node.input[1])[0]
    hidden = int(a.get("hidden_size") or w.shape[0] // gates)
    steps = imp.shape(node.input[0])[1 if a.get("layout", 0) else 0]
    b = imp.const(_inp(node, 3))
    b = b[0] if b is not None else np.zeros(2 * gates * hidden, np.float32)
    x = imp.emit("nn.reshape", [imp.value(node.input[0])], {"shape": [steps, w.shape[1]]}, node,
                 name=f"{name}/x", outputs=[])
    operands = [x, imp.add_const(w, f"{name}.w"), imp.add_const(imp.const(node.input[2])[0], f"{name}.r"),
                imp.add_const(b, f"{name}.b")]
    for k, state in enumerate(("h0", "c0")[:gates - 2]):
        src = _inp(node, 5 + k)
        if not src:
            operands.append(imp.add_const(np.zeros((1, hidden), np.float32), f"{name}.{state}"))
        elif imp.const(src) is not None:
            operands.append(imp.add_const(imp.const(src).reshape(1, hidden).astype(np.float32), f"{name}.{state}"))
        else:
            operands.append(imp.emit("nn.reshape", [imp.value(src)], {"shape": [1, hidden]}, node,
                                     name=f"{name}/{state}", outputs=[]))
    peep = imp.const(_inp(node, 7)) if op == "LSTM" else None
    if peep is not None and np.any(peep):  # all-zero peepholes are the plain cell
        operands.append(imp.add_const(peep.reshape(-1).astype(np.float32), f"{name}.p"))
    attrs = {"hidden_size": hidden}
    if op == "GRU":
        attrs["linear_before_reset"] = int(a.get("linear_before_reset", 0))
    results = imp.emit("nn." + op.lower(), operands, attrs, node, outputs=[]).producer.results
    shapes = [[steps, 1, 1, hidden] if not a.get("layout", 0) else [1, steps, 1, hidden],
              [1, 1, hidden], [1, 1, hidden]]
    for k, (out, result) in enumerate(zip(node.output, results)):
        if out:
            imp.emit("nn.reshape", [result], {"shape": shapes[k]}, node, name=f"{name}/{['y', 'h', 'c'][k]}",
                     outputs=[out])


lifter("LSTM", attrs=_LSTM_ATTRS, check=_check_recurrent)(_lift_recurrent)
lifter("GRU", attrs=_GRU_ATTRS, check=_check_recurrent)(_lift_recurrent)
