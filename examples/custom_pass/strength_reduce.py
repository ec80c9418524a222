"""A qcc pass plugin: rewrite x * 2 as x + x (an add is cheaper than a multiply on small cores).

    qcc-opt net.qir --load-pass-plugin strength_reduce.py -p strength-reduce
"""
import numpy as np

from qcc.transforms.passmanager import register_pass
from qcc.transforms.rewriter import PatternPass, RewritePattern


class MulByTwoToAdd(RewritePattern):
    op_names = ("nn.mul",)

    def match_and_rewrite(self, op, rewriter):
        x, two = op.operands
        if two.constant() is None or not np.all(two.constant() == 2):
            return rewriter.notify_match_failure(op, "operand 1 is not a constant 2")
        if x.type != op.results[0].type or not x.type.is_float:
            return rewriter.notify_match_failure(op, "x is not float or the 2 broadcasts it")
        add = rewriter.create_op("nn.add", [x, x], dict(op.attrs), name=op.name)
        rewriter.replace_op(op, add)
        return True


@register_pass
class StrengthReduce(PatternPass):
    """Rewrite x * 2 as x + x.

    Before:  %1 = nn.mul %x, %two : tensor<4xf32>     (%two = qcc.const dense<[2.0]>)
    After:   %1 = nn.add %x, %x : tensor<4xf32>
    """

    name = "strength-reduce"

    def patterns(self):
        return [MulByTwoToAdd()]
