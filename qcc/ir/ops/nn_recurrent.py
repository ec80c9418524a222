"""Recurrent float ops: one op per cell run over a whole sequence (batch 1, forward).

``nn.lstm(x, w, r, b, h0, c0) -> (y, h, c)``, ONNX LSTM with the batch and
direction dims removed: x ``[T, I]``, w ``[4H, I]``, r ``[4H, H]``, b ``[8H]``
(ONNX's Wb then Rb), h0 ``[1, H]``, c0 ``[1, H]``; y ``[T, H]`` holds every
step's hidden state, h and c the last ones. Gates in ONNX order (i, o, f, c),
default activations, no clip. The optional operand p ``[3H]`` (ONNX's
peepholes P, in the order i, o, f) adds p * c to three gates: the previous
cell state to i and f, the new one to o (p = 0 without it). For t = 0 .. T-1::

    i = sigmoid(W_i x_t + R_i h + Wb_i + Rb_i + p_i * c)      f likewise
    g = tanh(W_c x_t + R_c h + Wb_c + Rb_c)
    c = f * c + i * g
    o = sigmoid(W_o x_t + R_o h + Wb_o + Rb_o + p_o * c)     (the new c)
    h = o * tanh(c)

``nn.gru(x, w, r, b, h0) -> (y, h)``: w ``[3H, I]``, r ``[3H, H]``, b ``[6H]``,
gates in ONNX order (z, r, h)::

    z = sigmoid(W_z x_t + R_z h + Wb_z + Rb_z)      r likewise
    n = tanh(W_h x_t + R_h (r * h) + Rb_h + Wb_h)         linear_before_reset = 0
    n = tanh(W_h x_t + Wb_h + r * (R_h h + Rb_h))         linear_before_reset = 1
    h = (1 - z) * n + z * h

The initial states are always operands (a zero constant when the model has
none), so a back end can keep them between calls (``qcc --stream-state``).
"""
from __future__ import annotations

from qcc.ir.types import TensorType
from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op


def _recurrent_rule(gates: int, states: int):
    def rule(op):
        hidden = op.attrs["hidden_size"]
        if hidden < 1:
            raise OpError(f"hidden_size must be >= 1, got {hidden}")
        x = op.operands[0].shape
        if len(x) != 2:
            raise OpError(f"input must be [T, I], got {list(x)}")
        steps, size = x
        want = {1: (gates * hidden, size), 2: (gates * hidden, hidden), 3: (2 * gates * hidden,)}
        names = {1: "w", 2: "r", 3: "b"}
        for i, shape in want.items():
            if op.operands[i].shape != shape:
                raise OpError(f"operand '{names[i]}' must have shape {list(shape)}, "
                              f"got {list(op.operands[i].shape)}")
        for i in range(4, 4 + states):
            if op.operands[i].shape != (1, hidden):
                raise OpError(f"initial state operand {i} must have shape [1, {hidden}], "
                              f"got {list(op.operands[i].shape)}")
        t = op.operands[0].type
        dtype = t.dtype if t.is_float else "f32"
        return [TensorType((steps, hidden), dtype)] + [TensorType((1, hidden), dtype)] * states
    return rule


def check_peepholes(op):
    """The optional peephole operand p (operand 6) of an LSTM: [3H]."""
    if len(op.operands) > 6 and op.operands[6].shape != (3 * op.attrs["hidden_size"],):
        raise OpError(f"operand 'p' (peepholes i, o, f) must have shape [{3 * op.attrs['hidden_size']}], "
                      f"got {list(op.operands[6].shape)}")


def _verify_gru(op):
    if op.attrs["linear_before_reset"] not in (0, 1):
        raise OpError(f"linear_before_reset must be 0 or 1, got {op.attrs['linear_before_reset']}")


register_op(OpDef("nn.lstm", operands=["x", "w", "r", "b", "h0", "c0", "p?"], attrs=attrs(attr("hidden_size", "int")),
                  infer=_recurrent_rule(4, 2), verify_fn=check_peepholes, num_results=3,
                  summary="LSTM over a sequence (ONNX gates i, o, f, c): (y [T, H], h [1, H], c [1, H])"))
register_op(OpDef("nn.gru", operands=["x", "w", "r", "b", "h0"],
                  attrs=attrs(attr("hidden_size", "int"), attr("linear_before_reset", "int", 0)),
                  infer=_recurrent_rule(3, 1), verify_fn=_verify_gru, num_results=2,
                  summary="GRU over a sequence (ONNX gates z, r, h): (y [T, H], h [1, H])"))
