"""Constant folding: evaluate ops whose operands are all constants at compile time.

An op ``y = f(c1, ..., cn)`` with every ``ci`` a ``qcc.const`` becomes
``y = qcc.const f(c1, ..., cn)``, computed by the float interpreter's own
kernel (``qcc.sim.interpreter.run_op``), so folding gives bit for bit what running
the graph would have. ``nn.shape x`` folds for any ``x``: shapes are static.
Only the elementwise arithmetic, data-movement, dense-layer and activation ops
listed in ``FOLDABLE`` fold (a recurrent cell's first step from a zero initial
state computes ``h0 @ R`` on constants); arithmetic on quantized values is left
to the quantized lowering.

A reshape whose target shape is a constant operand gets the resolved shape
as its ``shape`` attribute instead (ONNX's 0 and -1 are resolved by the shape
rule): ``nn.reshape %x, %shape`` -> ``nn.reshape %x {shape = [...]}``.
"""
from __future__ import annotations

import numpy as np

from qcc.sim import interpreter
from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern

ARITHMETIC = ("nn.add", "nn.sub", "nn.mul", "nn.div")
DATA_MOVEMENT = ("nn.reshape", "nn.transpose", "nn.gather", "nn.cast", "nn.slice", "nn.concat",
                 "nn.squeeze", "nn.unsqueeze", "nn.flatten", "nn.identity", "nn.expand")
# A layer or activation on constants only: an RNN's first step from a zero initial state (h0 @ R).
LAYERS = ("nn.dense", "nn.matmul", "nn.gemm", "nn.sigmoid", "nn.tanh", "nn.relu", "nn.clip")
FOLDABLE = ARITHMETIC + DATA_MOVEMENT + LAYERS


class FoldConstantOp(RewritePattern):
    """An op whose operands are all constants -> a constant."""

    op_names = FOLDABLE

    def __init__(self, max_elements: int):
        self.max_elements = max_elements

    def match_and_rewrite(self, op, rewriter):
        not_const = [i for i, v in enumerate(op.operands) if not v.is_constant()]
        if not_const:
            return rewriter.notify_match_failure(op, f"operand {not_const[0]} is not a constant")
        if op.opname not in DATA_MOVEMENT and any(v.type.is_quantized for v in op.operands + op.results):
            return rewriter.notify_match_failure(op, "arithmetic on quantized values is not folded")
        if op.opname not in interpreter.KERNELS:
            return rewriter.notify_match_failure(op, "the interpreter has no kernel for it")
        size = sum(r.type.size for r in op.results)
        if size > self.max_elements:
            return rewriter.notify_match_failure(
                op, f"the result has {size} elements, more than max-elements={self.max_elements}")
        return _replace_with_constants(op, rewriter, [v.constant() for v in op.operands])


class FoldShape(RewritePattern):
    """nn.shape x -> the constant shape of x."""

    op_names = ("nn.shape",)

    def match_and_rewrite(self, op, rewriter):
        return _replace_with_constants(op, rewriter, [np.broadcast_to(np.int8(0), op.operands[0].shape)])


def _replace_with_constants(op, rewriter, arrays) -> bool:
    # Errors from the kernel (a bad gather index, say) are the op's and surface as such.
    results = interpreter.run_op(op, arrays)
    # np.array(order="C"), not np.ascontiguousarray: the latter turns a 0-d result (a Scan's
    # scalar time counter) into shape [1].
    values = [rewriter.create_op("qcc.const", [], {"value": np.array(a, order="C")}, [r.type],
                                 name=op.name).result
              for r, a in zip(op.results, results)]
    rewriter.replace_op(op, values)
    return True


class ReshapeShapeOperandToAttr(RewritePattern):
    """nn.reshape x, (constant shape) -> nn.reshape x {shape = resolved shape}."""

    op_names = ("nn.reshape",)

    def match_and_rewrite(self, op, rewriter):
        if len(op.operands) < 2:
            return rewriter.notify_match_failure(op, "the target shape is already an attribute")
        if not op.operands[1].is_constant():
            return rewriter.notify_match_failure(op, "the target shape is computed at run time")
        out = op.results[0].type
        if out.rank == 0:
            return rewriter.notify_match_failure(op, "the result is a scalar (rank 0), which the "
                                                     "shape attribute cannot express")
        new = rewriter.create_op("nn.reshape", [op.operands[0]], {"shape": list(out.shape)}, [out],
                                 name=op.name)
        rewriter.replace_op(op, new)
        return True


@register_pass
class ConstFold(PatternPass):
    """Evaluate ops whose operands are all constants; fold constant reshape targets.

    Before::

        %0 = qcc.const dense<[1.0, 2.0]> : tensor<2xf32>
        %1 = qcc.const dense<[0.5, 0.5]> : tensor<2xf32>
        %2 = nn.mul %0, %1 : tensor<2xf32>
        %3 = qcc.const dense<[2, -1]> : tensor<2xi64>
        %4 = nn.reshape %x, %3 : tensor<2x2xf32>
        %5 = nn.add %4, %2 : tensor<2x2xf32>

    After ``-p const-fold``::

        %0 = qcc.const dense<[0.5, 1.0]> : tensor<2xf32>
        %1 = nn.reshape %x {shape = [2, 2]} : tensor<2x2xf32>
        %2 = nn.add %1, %0 : tensor<2x2xf32>
        ...
    """

    name = "const-fold"
    max_elements: int = 1 << 20

    def patterns(self):
        return [FoldConstantOp(self.max_elements), FoldShape(), ReshapeShapeOperandToAttr()]
