"""Float neural-network ops (layouts and semantics follow ONNX unless stated)."""
from __future__ import annotations

import numpy as np

from ..types import TensorType
from . import OpDef, OpError, attr, attrs, register_op, same_as_operand


def broadcast_shape(*shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise OpError("operand shapes " + " and ".join(str(list(s)) for s in shapes)
                      + " do not broadcast") from None


def _broadcast_rule(op):
    a = op.operands[0].type
    return [TensorType(broadcast_shape(*(v.shape for v in op.operands)), a.dtype, a.quant)]


ACT = attr("act", "str", "none")  # fused activation: none, relu, relu6, leaky_relu
ACT_ALPHA = attr("act_alpha", "float", 0.0)


def _verify_act(op):
    if op.attrs.get("act") not in ("none", "relu", "relu6", "leaky_relu"):
        raise OpError(f"unknown fused activation '{op.attrs.get('act')}'")


for _name, _summary in [("nn.add", "a + b (broadcasting)"), ("nn.sub", "a - b (broadcasting)"),
                        ("nn.mul", "a * b (broadcasting)"), ("nn.div", "a / b (broadcasting)")]:
    register_op(OpDef(_name, operands=["a", "b"], attrs=attrs(ACT, ACT_ALPHA), infer=_broadcast_rule,
                      verify_fn=_verify_act, summary=_summary))

for _name, _summary in [("nn.relu", "max(x, 0)"), ("nn.identity", "x"),
                        ("nn.sigmoid", "1 / (1 + exp(-x))"), ("nn.tanh", "tanh(x)"),
                        ("nn.hard_swish", "x * max(0, min(1, x/6 + 1/2))")]:
    register_op(OpDef(_name, operands=["x"], infer=same_as_operand(0), summary=_summary))
