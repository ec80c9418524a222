"""legalize-qmn: float rewrites that put a model into the forms lower-quantized has Qm.n kernels for.

Exact float identities (float64 for the folded constants, stored as float32):

* elementwise arithmetic with one constant that is a scalar or varies along
  one channel axis c (``axis`` = c; a scalar takes the last axis)::

      x * k -> scale_shift(x, k, 0)       x + k -> scale_shift(x, 1, k)
      x - k -> scale_shift(x, 1, -k)      k - x -> scale_shift(x, -1, k)
      x / k -> scale_shift(x, 1/k, 0)

  A fused activation of the arithmetic op becomes a standalone op after it.
  ``scale_shift`` is a per-channel affine map; lower-quantized makes it a
  depthwise 1x1 ``qnn.conv2d`` (its scale and shift are fake-quantized like
  weights and bias);
* two scale_shifts on one axis merge: ``s = s1 * s2, t = t1 * s2 + t2``;
* a scale_shift on the channel axis of a conv/dense (no fused activation, the
  layer's only user) folds into it: ``W'[c] = W[c] * s[c], b'[c] = b[c] * s[c] + t[c]``;
* ``act = "leaky_relu"`` on conv/dense/add is split back into the layer and an
  ``nn.leaky_relu`` (a shift requantization cannot apply the slope; the split
  gives the pre-activation tensor its own calibrated format);
* ``reduce_mean`` over the two spatial axes of a 4-D tensor becomes
  ``global_avgpool`` (``axes = [1, 2]``: NHWC, ``[2, 3]``: NCHW), followed by
  a reshape when ``keepdims = 0``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from qcc.ir.graph import Op, Value
from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern, Rewriter

ARITH = ("nn.add", "nn.sub", "nn.mul", "nn.div")
LAYERS = ("nn.conv2d", "nn.dense")


def _const(v: Value) -> Optional[np.ndarray]:
    c = v.constant() if v.is_constant() else None
    return None if c is None else np.asarray(c, np.float64)


def channel_vector(c: np.ndarray, shape) -> Optional[Tuple[int, np.ndarray]]:
    """(axis, per-channel vector) of a constant broadcast against a tensor of ``shape``, else None."""
    rank = len(shape)
    if c.ndim > rank or rank == 0:
        return None
    aligned = c.reshape((1,) * (rank - c.ndim) + c.shape)
    varying = [d for d in range(rank) if aligned.shape[d] != 1]
    if not varying:
        axis = rank - 1
    elif len(varying) == 1 and aligned.shape[varying[0]] == shape[varying[0]]:
        axis = varying[0]
    else:
        return None
    return axis, np.broadcast_to(aligned.reshape(-1), (shape[axis],)).astype(np.float64)


def _lowerable_axis(axis: int, rank: int) -> bool:
    """Axes lower-quantized turns into the channel axis of a depthwise conv."""
    return axis == rank - 1 or (rank == 4 and axis == 1)


def _activation_after(rw: Rewriter, op: Op, y: Value) -> Value:
    act, alpha = op.attrs.get("act", "none"), op.attrs.get("act_alpha", 0.0)
    if act == "none":
        return y
    if act == "relu":
        return rw.create_op("nn.relu", [y], {}, [y.type], name=op.name).result
    if act == "relu6":
        return rw.create_op("nn.clip", [y], {"min": 0.0, "max": 6.0}, [y.type], name=op.name).result
    return rw.create_op("nn.leaky_relu", [y], {"alpha": alpha}, [y.type], name=op.name).result


def _scale_shift(rw: Rewriter, x: Value, axis: int, scale, shift, name: str) -> Value:
    s = rw.create_const(np.asarray(scale, np.float32), name=f"{name}.scale" if name else "")
    t = rw.create_const(np.asarray(shift, np.float32), name=f"{name}.shift" if name else "")
    return rw.create_op("nn.scale_shift", [x, s, t], {"axis": axis}, [x.type], name=name).result


class ConstantArithmeticToScaleShift(RewritePattern):
    """x (+ - * /) k with a scalar or per-channel constant k -> nn.scale_shift."""

    op_names = ARITH

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        a, b = op.operands
        ca, cb = _const(a), _const(b)
        if (ca is None) == (cb is None):
            return rewriter.notify_match_failure(op, "it needs exactly one constant operand")
        x, c, const_first = (b, ca, True) if ca is not None else (a, cb, False)
        if not x.type.is_float or x.shape != op.result.shape:
            return rewriter.notify_match_failure(op, "the constant broadcasts the tensor operand to a larger shape")
        found = channel_vector(c, x.shape)
        if found is None or not _lowerable_axis(found[0], x.type.rank):
            return rewriter.notify_match_failure(op, "the constant is neither a scalar nor one value per channel")
        axis, k = found
        one, zero = np.ones_like(k), np.zeros_like(k)
        if op.opname == "nn.div" and const_first:
            return rewriter.notify_match_failure(op, "k / x is not affine in x")
        if op.opname == "nn.div" and np.any(k == 0):
            return rewriter.notify_match_failure(op, "division by a zero constant")
        with np.errstate(divide="ignore"):  # 1 / k only matters for nn.div, where k has no zero (above)
            scale, shift = {"nn.mul": (k, zero), "nn.add": (one, k), "nn.div": (1.0 / k, zero),
                            "nn.sub": (-one, k) if const_first else (one, -k)}[op.opname]
        y = _scale_shift(rewriter, x, axis, scale, shift, op.name)
        rewriter.replace_op(op, _activation_after(rewriter, op, y))
        return True


def _sole_user(rewriter: Rewriter, v: Value, op: Op) -> bool:
    return rewriter.graph.users(v) == [op] and not rewriter.graph.is_output(v)


def _affine(op: Op):
    s, t = _const(op.operands[1]), _const(op.operands[2])
    return None if s is None or t is None else (s.reshape(-1), t.reshape(-1))


class MergeScaleShifts(RewritePattern):
    """scale_shift(scale_shift(x, s1, t1), s2, t2) on one axis -> scale_shift(x, s1*s2, t1*s2 + t2)."""

    op_names = ("nn.scale_shift",)

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        first = op.operands[0].producer
        if first is None or first.opname != "nn.scale_shift" or first.attrs["axis"] != op.attrs["axis"]:
            return rewriter.notify_match_failure(op, "its input is not a scale_shift on the same axis")
        if not _sole_user(rewriter, op.operands[0], op):
            return rewriter.notify_match_failure(op, "the first scale_shift has other users")
        inner, outer = _affine(first), _affine(op)
        if inner is None or outer is None:
            return rewriter.notify_match_failure(op, "scale or shift is not a constant")
        (s1, t1), (s2, t2) = inner, outer
        y = _scale_shift(rewriter, first.operands[0], op.attrs["axis"], s1 * s2, t1 * s2 + t2, op.name)
        rewriter.replace_op(op, y)
        return True


class FoldScaleShiftIntoLayer(RewritePattern):
    """scale_shift(conv | dense) on the output-channel axis -> the layer with scaled weights and bias."""

    op_names = ("nn.scale_shift",)

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        layer = op.operands[0].producer
        if layer is None or layer.opname not in LAYERS or layer.attrs["act"] != "none":
            return rewriter.notify_match_failure(op, "its input is not a conv/dense without fused activation")
        if not _sole_user(rewriter, op.operands[0], op):
            return rewriter.notify_match_failure(op, f"the {layer.opname} result has other users")
        rank = op.operands[0].type.rank
        want = (3 if layer.attrs["layout"] == "NHWC" else 1) if layer.opname == "nn.conv2d" else rank - 1
        if op.attrs["axis"] % rank != want:
            return rewriter.notify_match_failure(op, f"axis {op.attrs['axis']} is not the layer's channel axis")
        w = _const(layer.operands[1])
        b = _const(layer.operands[2]) if len(layer.operands) > 2 else np.zeros(w.shape[0] if w is not None else 0)
        affine = _affine(op)
        if w is None or b is None or affine is None:
            return rewriter.notify_match_failure(op, "weights, bias, scale or shift are not constants")
        s, t = affine
        new_w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        dtype = layer.operands[1].type.np_dtype
        wv = rewriter.create_const(new_w.astype(dtype), name=f"{layer.name}.scaled" if layer.name else "")
        bv = rewriter.create_const((b.reshape(-1) * s + t).astype(dtype),
                                   name=f"{layer.name}.bias_scaled" if layer.name else "")
        new = rewriter.create_op(layer.opname, [layer.operands[0], wv, bv], dict(layer.attrs), [op.result.type],
                                 name=layer.name or op.name)
        rewriter.replace_op(op, new)
        return True


class SplitLeakyRelu(RewritePattern):
    """conv/dense/add {act = "leaky_relu"} -> the op without activation, then nn.leaky_relu."""

    op_names = LAYERS + ("nn.add",)

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        if op.attrs.get("act") != "leaky_relu":
            return rewriter.notify_match_failure(op, "no fused leaky_relu")
        attrs = {**op.attrs, "act": "none", "act_alpha": 0.0}
        new = rewriter.create_op(op.opname, list(op.operands), attrs, [op.result.type], name=op.name)
        y = rewriter.create_op("nn.leaky_relu", [new.result], {"alpha": op.attrs["act_alpha"]}, [op.result.type],
                               name=op.name + ".leaky_relu" if op.name else "").result
        rewriter.replace_op(op, y)
        return True


class SpatialMeanToGlobalAvgPool(RewritePattern):
    """reduce_mean over H and W of a 4-D tensor -> global_avgpool (+ reshape without keepdims)."""

    op_names = ("nn.reduce_mean",)

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        x = op.operands[0]
        if x.type.rank != 4:
            return rewriter.notify_match_failure(op, "the input is not 4-D")
        axes = sorted(a % 4 for a in op.attrs["axes"])
        layout = {(1, 2): "NHWC", (2, 3): "NCHW"}.get(tuple(axes))
        if layout is None:
            return rewriter.notify_match_failure(op, f"axes {op.attrs['axes']} are not the two spatial axes")
        shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        y = rewriter.create_op("nn.global_avgpool", [x], {"layout": layout}, [x.type.with_shape(shape)],
                               name=op.name).result
        if not op.attrs["keepdims"]:
            y = rewriter.create_op("nn.reshape", [y], {"shape": list(op.result.shape)}, [op.result.type],
                                   name=f"{op.name}.squeeze" if op.name else "").result
        rewriter.replace_op(op, y)
        return True


def populate_legalize_qmn_patterns() -> List[RewritePattern]:
    return [SplitLeakyRelu(), ConstantArithmeticToScaleShift(), MergeScaleShifts(), FoldScaleShiftIntoLayer(),
            SpatialMeanToGlobalAvgPool()]


@register_pass
class LegalizeQmn(PatternPass):
    """Rewrite float ops into the forms the Qm.n lowering handles (see the module docstring).

    Before::

        %k = qcc.const dense<[2.0, 0.5]> : tensor<2xf32>
        %1 = nn.mul %0, %k : tensor<1x2xf32>
        %c = qcc.const dense<1.0> : tensor<f32>
        %2 = nn.sub %1, %c : tensor<1x2xf32>

    After ``-p legalize-qmn``::

        %1 = nn.scale_shift %0, %s, %t {axis = 1} : tensor<1x2xf32>   // s = [2, 0.5], t = [-1, -1]

    Statistics: ``applied.<pattern>`` per rewrite; reasons in ``match_failures``.
    """

    name = "legalize-qmn"

    def patterns(self):
        return populate_legalize_qmn_patterns()
