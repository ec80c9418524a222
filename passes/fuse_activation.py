"""Fuse a standalone activation into the op that produces its input.

``nn.conv2d``, ``nn.dense`` and ``nn.add`` carry an ``act`` epilogue applied to
their result (see ``qcc.ir.ops.nn``), so for a producer P with ``act = "none"``::

    relu(P(x))                 == P(x) {act = "relu"}
    clip(P(x), 0, inf)         == P(x) {act = "relu"}          max(y, 0)
    clip(P(x), 0, 6)           == P(x) {act = "relu6"}         min(max(y, 0), 6)
    leaky_relu(P(x), alpha)    == P(x) {act = "leaky_relu", act_alpha = alpha}

The identities are exact (the same float operations in the same order). The
fusion needs P's result to have no other user (nor be a graph output), since
those users want the value before the activation. Any other clip bounds stay a
standalone ``nn.clip``.

An elementwise activation commutes with a reshape, so one that follows a reshape
of P's result (a 1-D conv lifted as 2-D is ``reshape(conv2d(...))``) first moves
above the reshape when both have no other user::

    act(reshape(P(x)))         == reshape(act(P(x)))
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

from qcc.ir.graph import Op
from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern, Rewriter

FUSABLE_PRODUCERS = ("nn.conv2d", "nn.dense", "nn.add")


def fused_act(op: Op) -> Tuple[Optional[str], float, str]:
    """(act, act_alpha, why-not) for an activation op; act is None when it has no fused form."""
    if op.opname == "nn.relu":
        return "relu", 0.0, ""
    if op.opname == "nn.leaky_relu":
        return "leaky_relu", op.attrs["alpha"], ""
    lo, hi = op.attrs["min"], op.attrs["max"]
    if lo == 0.0 and hi == 6.0:
        return "relu6", 0.0, ""
    if lo == 0.0 and math.isinf(hi) and hi > 0:
        return "relu", 0.0, ""
    return None, 0.0, f"clip bounds [{lo:g}, {hi:g}] are neither [0, 6] (relu6) nor [0, inf) (relu)"


class FuseActivationIntoProducer(RewritePattern):
    """relu / clip(0,6) / clip(0,inf) / leaky_relu of a conv, dense or add -> the producer's ``act``."""

    op_names = ("nn.relu", "nn.clip", "nn.leaky_relu")

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        act, alpha, why = fused_act(op)
        if act is None:
            return rewriter.notify_match_failure(op, why)
        y = op.operands[0]
        producer = y.producer
        if producer is None or producer.opname not in FUSABLE_PRODUCERS:
            made_by = "a graph input" if producer is None else producer.opname
            return rewriter.notify_match_failure(
                op, f"its input is made by {made_by}, not by {', '.join(FUSABLE_PRODUCERS)}")
        if producer.attrs["act"] != "none":
            return rewriter.notify_match_failure(
                op, f"the {producer.opname} already has a fused activation ({producer.attrs['act']})")
        graph = rewriter.graph
        if graph.users(y) != [op] or graph.is_output(y):
            return rewriter.notify_match_failure(op, f"the {producer.opname} result has other users")
        if not y.type.is_float or y.type != op.results[0].type:
            return rewriter.notify_match_failure(op, "the activation changes the result type or is not on floats")
        rewriter.update_attrs(producer, act=act, act_alpha=alpha)
        rewriter.replace_op(op, y)
        return True


class HoistActivationAboveReshape(RewritePattern):
    """act(reshape(P(x))) -> reshape(act(P(x))) for a fusable producer P, so the activation can fuse."""

    op_names = ("nn.relu", "nn.clip", "nn.leaky_relu")

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        r = op.operands[0].producer
        if r is None or r.opname not in ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze"):
            return rewriter.notify_match_failure(op, "its input is not a reshape")
        y = r.operands[0]
        if y.producer is None or y.producer.opname not in FUSABLE_PRODUCERS:
            return rewriter.notify_match_failure(op, "the reshape's input is not made by a fusable producer")
        graph = rewriter.graph
        for v in (y, r.result):
            if len(graph.users(v)) != 1 or graph.is_output(v):
                return rewriter.notify_match_failure(op, "the reshape or its input has other users")
        rewriter.anchor = op
        act = rewriter.create_op(op.opname, [y], dict(op.attrs), [y.type], name=op.name)
        moved = rewriter.create_op(r.opname, [act.result] + list(r.operands[1:]), dict(r.attrs), [op.result.type],
                                   name=r.name)
        rewriter.replace_op(op, moved)
        return True


def populate_fuse_activation_patterns() -> List[RewritePattern]:
    return [FuseActivationIntoProducer(), HoistActivationAboveReshape()]


@register_pass
class FuseActivation(PatternPass):
    """Fuse relu, relu6 (clip 0..6), clip(0, inf) and leaky_relu into conv2d / dense / add.

    Before::

        %0 = nn.conv2d %x, %w, %b {act = "none", ...} : tensor<1x8x8x4xf32>
        %1 = nn.clip %0 {max = 6.0, min = 0.0} : tensor<1x8x8x4xf32>

    After ``-p fuse-activation``::

        %0 = nn.conv2d %x, %w, %b {act = "relu6", ...} : tensor<1x8x8x4xf32>

    Statistics: ``applied.FuseActivationIntoProducer`` counts fused
    activations; each one left standalone has its reason in ``match_failures``.
    """

    name = "fuse-activation"

    def patterns(self):
        return populate_fuse_activation_patterns()
