"""Fold inference batch normalization into the preceding conv / dense layer.

Batch normalization on channel ``c`` is an affine map::

    bn(y) = (y - mean) / sqrt(var + eps) * gamma + beta = s * y + (beta - mean * s)
    with s = gamma / sqrt(var + eps)

When ``y = conv(x, W) + b`` (or ``x @ W.T + b``), channel ``c`` of ``y`` depends
only on the output-channel slice ``W[c]`` (axis 0 for every weight layout qcc
uses: conv NCHW [Cout, Cin/g, KH, KW], conv NHWC [Cout, KH, KW, Cin/g], dense
[N, K]), so the map folds into the layer::

    W'[c] = W[c] * s[c]
    b'[c] = (b[c] - mean[c]) * s[c] + beta[c]      (b = 0 when the layer has no bias)

The fold is computed in float64 and stored in the weight's element type. A
batchnorm that cannot fold (no conv/dense producer, the producer's result has
other users, a fused activation in between, non-constant parameters) becomes
``nn.scale_shift(x, s, beta - mean * s)`` on the same axis, which later passes
lower like any per-channel affine op. An ``nn.gemm`` / ``nn.matmul`` with
constant weights that feeds only a batchnorm is first turned into ``nn.dense``
with canonicalize's rules, so the fold does not depend on pass order.

Exporters also write an inference batchnorm after a dense layer as constant
arithmetic (``Mul`` then ``Add``, or ``Add`` then ``Mul``). Each such op whose
tensor operand is a conv/dense result (sole user, no fused activation) and whose
constant ``k`` is a scalar or one value per output channel is the same per-channel
affine map, and folds the same way (float64)::

    y * k -> s = k, t = 0      y + k -> s = 1, t = k      y - k -> s = 1, t = -k
    k - y -> s = -1, t = k     y / k -> s = 1 / k, t = 0
    W'[c] = W[c] * s[c],  b'[c] = b[c] * s[c] + t[c]

so every scheme sees one dense layer, whatever form the model used.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from qcc.ir.graph import Op, Value
from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern, Rewriter
from qcc.passes.canonicalize import GemmToDense, MatMulToDense
from qcc.passes.legalize_qmn import FoldScaleShiftIntoLayer, channel_vector


def batchnorm_affine(bn: Op) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(scale, shift) in float64 of a batchnorm with constant parameters, else None."""
    params = [v.constant() for v in bn.operands[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, dtype=np.float64).reshape(-1) for p in params)
    scale = gamma / np.sqrt(var + bn.attrs["epsilon"])
    return scale, beta - mean * scale


def _channel_axis(bn: Op) -> int:
    return bn.attrs["axis"] % bn.operands[0].type.rank


def _const_name(v: Value, suffix: str) -> str:
    base = v.producer.name if v.producer is not None and v.producer.name else ""
    return f"{base}.{suffix}" if base else ""


class FoldBatchNormIntoLayer(RewritePattern):
    """nn.batchnorm(nn.conv2d | nn.dense) -> the layer with scaled weights and a new bias."""

    op_names = ("nn.batchnorm",)

    def match_and_rewrite(self, bn: Op, rewriter: Rewriter) -> bool:
        y = bn.operands[0]
        layer = y.producer
        if layer is None or layer.opname not in ("nn.conv2d", "nn.dense"):
            return rewriter.notify_match_failure(bn, "its input is not made by nn.conv2d or nn.dense")
        if layer.attrs["act"] != "none":
            return rewriter.notify_match_failure(
                bn, f"the {layer.opname} has a fused activation ({layer.attrs['act']}) before the batchnorm")
        graph = rewriter.graph
        if graph.users(y) != [bn] or graph.is_output(y):
            return rewriter.notify_match_failure(bn, f"the {layer.opname} result has other users")
        if not y.type.is_float:
            return rewriter.notify_match_failure(bn, "the layer result is not a float tensor")
        axis = _channel_axis(bn)
        if layer.opname == "nn.conv2d":
            want = 3 if layer.attrs["layout"] == "NHWC" else 1
            what = f"the {layer.attrs['layout']} conv's channel axis {want}"
        else:
            want = y.type.rank - 1
            what = f"the dense output-feature axis {want}"
        if axis != want:
            return rewriter.notify_match_failure(bn, f"batchnorm axis {axis} is not {what}")
        w = layer.operands[1]
        wc = w.constant()
        if wc is None:
            return rewriter.notify_match_failure(bn, "the layer weights are not a constant")
        b = layer.operands[2] if len(layer.operands) > 2 else None
        bc = b.constant() if b is not None else None
        if b is not None and bc is None:
            return rewriter.notify_match_failure(bn, "the layer bias is not a constant")
        affine = batchnorm_affine(bn)
        if affine is None:
            return rewriter.notify_match_failure(bn, "the batchnorm parameters are not all constants")
        scale, shift = affine
        cout = wc.shape[0]
        bias = np.zeros(cout) if bc is None else np.asarray(bc, dtype=np.float64).reshape(-1)
        # b' = (b - mean) * s + beta = b * s + (beta - mean * s)
        new_w = (wc.astype(np.float64) * scale.reshape((-1,) + (1,) * (wc.ndim - 1))).astype(wc.dtype)
        new_b = (bias * scale + shift).astype(wc.dtype)
        w_value = rewriter.create_const(new_w, name=_const_name(w, "bn_folded"), before=layer)
        b_value = rewriter.create_const(new_b, name=_const_name(b, "bn_folded") if b is not None else
                                        (f"{layer.name}.bias" if layer.name else ""), before=layer)
        new = rewriter.create_op(layer.opname, [layer.operands[0], w_value, b_value], dict(layer.attrs),
                                 [bn.results[0].type], name=layer.name or bn.name)
        rewriter.replace_op(bn, new)
        return True


class DenseBeforeBatchNorm(RewritePattern):
    """nn.gemm / nn.matmul with constant weights feeding only a batchnorm (or constant arithmetic) -> nn.dense
    (canonicalize's rules), so ONNX Gemm + BatchNormalization folds even when fold-batchnorm runs before
    canonicalize."""

    op_names = ("nn.batchnorm", "nn.add", "nn.sub", "nn.mul", "nn.div")
    TO_DENSE = {"nn.gemm": GemmToDense(), "nn.matmul": MatMulToDense()}

    def match_and_rewrite(self, bn: Op, rewriter: Rewriter) -> bool:
        y = bn.operands[0]
        if bn.opname != "nn.batchnorm":  # constant arithmetic: the tensor operand
            a, b = bn.operands
            if a.is_constant() == b.is_constant():
                return rewriter.notify_match_failure(bn, "it needs exactly one constant operand")
            y = b if a.is_constant() else a
        layer = y.producer
        if layer is None or layer.opname not in self.TO_DENSE:
            return rewriter.notify_match_failure(bn, "its input is not made by nn.gemm or nn.matmul")
        if rewriter.graph.users(y) != [bn] or rewriter.graph.is_output(y):
            return rewriter.notify_match_failure(bn, f"the {layer.opname} result has other users")
        pattern = self.TO_DENSE[layer.opname]
        anchor, name = rewriter.anchor, rewriter.pattern_name
        rewriter.anchor, rewriter.pattern_name = layer, pattern.name
        try:
            return pattern.match_and_rewrite(layer, rewriter)
        finally:
            rewriter.anchor, rewriter.pattern_name = anchor, name


class BatchNormToScaleShift(RewritePattern):
    """A batchnorm that did not fold -> nn.scale_shift(x, s, beta - mean * s)."""

    op_names = ("nn.batchnorm",)

    def match_and_rewrite(self, bn: Op, rewriter: Rewriter) -> bool:
        affine = batchnorm_affine(bn)
        if affine is None:
            return rewriter.notify_match_failure(bn, "the batchnorm parameters are not all constants")
        dtype = bn.operands[1].type.np_dtype
        scale, shift = (rewriter.create_const(a.astype(dtype), name=f"{bn.name}.{what}" if bn.name else "")
                        for a, what in zip(affine, ("scale", "shift")))
        new = rewriter.create_op("nn.scale_shift", [bn.operands[0], scale, shift], {"axis": _channel_axis(bn)},
                                 [bn.results[0].type], name=bn.name)
        rewriter.replace_op(bn, new)
        return True


class ConstantArithmeticAfterLayer(RewritePattern):
    """conv/dense result (+ - * /) a per-channel constant -> nn.scale_shift, which then folds into the layer.

    Only where ``FoldScaleShiftIntoLayer`` will fold it: elsewhere a scale_shift has no int8 kernel,
    while the arithmetic op may have one.
    """

    op_names = ("nn.add", "nn.sub", "nn.mul", "nn.div")

    def match_and_rewrite(self, op: Op, rewriter: Rewriter) -> bool:
        a, b = op.operands
        const_first = a.is_constant()
        x, k = (b, a.constant()) if const_first else (a, b.constant())
        if k is None or x.is_constant():
            return rewriter.notify_match_failure(op, "it needs exactly one constant operand")
        if op.attrs.get("act", "none") != "none":
            return rewriter.notify_match_failure(op, f"it has a fused activation ({op.attrs['act']})")
        layer = x.producer
        if layer is None or layer.opname not in ("nn.conv2d", "nn.dense") or layer.attrs["act"] != "none":
            return rewriter.notify_match_failure(op, "its tensor operand is not a conv/dense without fused activation")
        graph = rewriter.graph
        if graph.users(x) != [op] or graph.is_output(x):
            return rewriter.notify_match_failure(op, f"the {layer.opname} result has other users")
        if not all(v.is_constant() for v in layer.operands[1:]):
            return rewriter.notify_match_failure(op, "the layer weights or bias are not constants")
        rank = x.type.rank
        want = (3 if layer.attrs["layout"] == "NHWC" else 1) if layer.opname == "nn.conv2d" else rank - 1
        found = channel_vector(np.asarray(k, np.float64), x.shape)
        if found is None or (found[0] != want and np.asarray(k).size != 1):
            return rewriter.notify_match_failure(op, "the constant is neither a scalar nor one value per output channel")
        if x.shape != op.result.shape:
            return rewriter.notify_match_failure(op, "the constant broadcasts the layer result to a larger shape")
        if op.opname == "nn.div" and const_first:
            return rewriter.notify_match_failure(op, "k / y is not affine in y")
        if op.opname == "nn.div" and np.any(np.asarray(k) == 0):
            return rewriter.notify_match_failure(op, "division by a zero constant")
        kv = np.broadcast_to(np.asarray(k, np.float64).reshape(-1), (x.shape[want],)) if np.asarray(k).size == 1 \
            else found[1]
        one, zero = np.ones_like(kv), np.zeros_like(kv)
        scale, shift = {"nn.mul": (kv, zero), "nn.add": (one, kv), "nn.div": (1.0 / kv, zero),
                        "nn.sub": (-one, kv) if const_first else (one, -kv)}[op.opname]
        dtype = x.type.np_dtype
        sv, tv = (rewriter.create_const(np.asarray(v, dtype), name=f"{op.name}.{what}" if op.name else "")
                  for v, what in ((scale, "scale"), (shift, "shift")))
        new = rewriter.create_op("nn.scale_shift", [x, sv, tv], {"axis": want}, [op.result.type], name=op.name)
        rewriter.replace_op(op, new)
        return True


def populate_fold_batchnorm_patterns() -> List[RewritePattern]:
    """Folding first (a gemm/matmul producer becomes a dense to make that possible); a batchnorm
    that cannot fold becomes a scale_shift; constant arithmetic on a layer result folds too."""
    return [FoldBatchNormIntoLayer(), DenseBeforeBatchNorm(), BatchNormToScaleShift(),
            ConstantArithmeticAfterLayer(), FoldScaleShiftIntoLayer()]


@register_pass
class FoldBatchNorm(PatternPass):
    """Fold nn.batchnorm into the conv/dense before it, or turn it into nn.scale_shift.

    Before::

        %w = qcc.const dense<[1.0, 2.0, 3.0, 4.0]> : tensor<2x2xf32>
        %0 = nn.dense %x, %w : tensor<1x2xf32>
        %g = qcc.const dense<[2.0, 1.0]> : tensor<2xf32>      // gamma
        %b = qcc.const dense<[0.5, 0.0]> : tensor<2xf32>      // beta
        %m = qcc.const dense<[1.0, 0.0]> : tensor<2xf32>      // mean
        %v = qcc.const dense<[3.0, 0.0]> : tensor<2xf32>      // var
        %1 = nn.batchnorm %0, %g, %b, %m, %v {axis = 1, epsilon = 1.0} : tensor<1x2xf32>

    After ``-p fold-batchnorm`` (s = gamma / sqrt(var + eps) = [1, 1])::

        %w = qcc.const dense<[1.0, 2.0, 3.0, 4.0]> : tensor<2x2xf32>
        %b = qcc.const dense<[-0.5, 0.0]> : tensor<2xf32>     // (0 - mean) * s + beta
        %1 = nn.dense %x, %w, %b : tensor<1x2xf32>

    Statistics: ``applied.FoldBatchNormIntoLayer`` (folded),
    ``applied.DenseBeforeBatchNorm`` (a gemm/matmul made a dense first) and
    ``applied.BatchNormToScaleShift`` (kept as a per-channel affine op); every
    batchnorm that did not fold has its reason in ``match_failures``.
    """

    name = "fold-batchnorm"

    def patterns(self):
        return populate_fold_batchnorm_patterns()
