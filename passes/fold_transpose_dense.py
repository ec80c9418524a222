"""fold-transpose-dense: fold a transpose before a flattening into an integer dense layer's weights.

A dense layer reading ``flatten(transpose(x, perm))`` (an NHWC activation
flattened in NCHW order, as a PyTorch export has it) reads the same numbers
as ``reshape(x)`` in another order. With ``y = flatten(transpose(x))`` and
``src[j]`` the position in ``flatten(x)`` of ``y[j]``,

    sum_j y[j] * w[o, j] = sum_j x_flat[src[j]] * w[o, j] = sum_i x_flat[i] * w'[o, i],
    w'[:, src] = w,

so the transpose goes and the weights' columns are permuted once at compile
time. Integer layers only (``qnn.dense``, ``s8.dense``): their int32 sums are
exact in any order, so the result is bit for bit the same (a float sum in
another order would round differently). The batch axis must stay first.
"""
from __future__ import annotations

import numpy as np

from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern

FLATTENS = ("nn.flatten", "nn.reshape")


class FoldTransposeIntoDense(RewritePattern):
    """dense(flatten(transpose(x, perm)), w) -> dense(reshape(x), w[:, permuted columns])."""

    op_names = ("qnn.dense", "s8.dense")

    def match_and_rewrite(self, op, rewriter):
        g = rewriter.graph
        flat = op.operands[0].producer
        if flat is None or flat.opname not in FLATTENS:
            return rewriter.notify_match_failure(op, "the input is not a flatten/reshape")
        tr = flat.operands[0].producer
        if tr is None or tr.opname != "nn.transpose":
            return rewriter.notify_match_failure(op, "the flatten does not read a transpose")
        perm, x, w = list(tr.attrs["perm"]), tr.operands[0], op.operands[1]
        if perm[0] != 0 or flat.result.type.rank != 2 or flat.result.shape[0] != x.shape[0]:
            return rewriter.notify_match_failure(op, "the batch axis moves, or the flatten is not to [N, K]")
        if g.users(tr.result) != [flat] or g.users(flat.result) != [op] or g.is_output(flat.result):
            return rewriter.notify_match_failure(op, "the transpose or flatten has other users")
        if not w.is_constant():
            return rewriter.notify_match_failure(op, "the weights are not constant")
        src = np.arange(int(np.prod(x.shape[1:]))).reshape(x.shape[1:]).transpose([p - 1 for p in perm[1:]]).ravel()
        wc = w.constant()
        permuted = np.empty_like(wc)
        permuted[:, src] = wc
        new_w = rewriter.create_const(permuted, name=w.producer.name, like=w)
        flat_x = rewriter.create_op("nn.reshape", [x], {"shape": list(flat.result.shape)},
                                    [flat.result.type], name=flat.name)
        dense = rewriter.create_op(op.opname, [flat_x.result, new_w] + list(op.operands[2:]), dict(op.attrs),
                                   [op.result.type], name=op.name)
        rewriter.replace_op(op, dense)
        return True


@register_pass
class FoldTransposeDense(PatternPass):
    """Fold a transpose before a flattening into the following integer dense layer's weights.

    Before::

        %1 = nn.transpose %0 {perm = [0, 3, 1, 2]} : tensor<1x2x1x2x!q.fixed<i8, 3>>
        %2 = nn.flatten %1 {axis = 1} : tensor<1x4x!q.fixed<i8, 3>>
        %3 = qcc.const dense<[1, 2, 3, 4]> : tensor<1x4xi8>
        %4 = qnn.dense %2, %3 {...} : tensor<1x1x!q.fixed<i8, 3>>

    After ``-p fold-transpose-dense`` (%0 is 1x1x2x2: NHWC order c0 c1 c0 c1)::

        %1 = qcc.const dense<[1, 3, 2, 4]> : tensor<1x4xi8>
        %2 = nn.reshape %0 {shape = [1, 4]} : tensor<1x4x!q.fixed<i8, 3>>
        %3 = qnn.dense %2, %1 {...} : tensor<1x1x!q.fixed<i8, 3>>
    """

    name = "fold-transpose-dense"

    def patterns(self):
        return [FoldTransposeIntoDense()]
