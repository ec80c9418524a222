"""Structural ops: constants, and streamed recurrent state (qcc.state)."""
from __future__ import annotations


from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op


def _verify_const(op):
    value = op.attrs["value"]
    t = op.results[0].type
    if tuple(value.shape) != t.shape:
        raise OpError(f"constant data has shape {list(value.shape)} but the type says {list(t.shape)}")
    if value.dtype != t.np_dtype:
        raise OpError(f"constant data is {value.dtype} but the type stores {t.dtype}")


register_op(OpDef(
    "qcc.const", operands=[], attrs=attrs(attr("value", "array")),
    verify_fn=_verify_const,
    summary="A constant tensor (weights, biases, shapes)."))


register_op(OpDef(
    "qcc.state", operands=[], attrs=attrs(attr("value", "array")), verify_fn=_verify_const,
    summary="Recurrent state kept between calls (qcc --stream-state): its initial value, which NAME_reset() "
            "restores; a recurrent op reading it writes its final state back (passes/stream_state.py)."))
