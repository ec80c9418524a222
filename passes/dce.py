"""Dead-code elimination: remove pure ops whose results reach no graph output.

An op is live when one of its results is a graph output, or it has side
effects (its ``OpDef.pure`` is False), or one of its results feeds a live op.
Everything else is erased, consumers before producers.
"""
from __future__ import annotations

from qcc.ir.graph import Graph
from qcc.ir.registry import get_op
from qcc.transforms.passmanager import Pass, PassResult, register_pass


@register_pass
class DeadCodeElimination(Pass):
    """Remove pure ops whose results reach no graph output.

    Before::

        qcc.graph @f(%x: tensor<4xf32>) -> (tensor<4xf32> {name = "y"}) {
          %0 = nn.relu %x : tensor<4xf32>
          %1 = nn.sigmoid %x : tensor<4xf32>
          %2 = nn.tanh %1 : tensor<4xf32>
          qcc.return %0 : tensor<4xf32>
        }

    After ``-p dce``::

        qcc.graph @f(%x: tensor<4xf32>) -> (tensor<4xf32> {name = "y"}) {
          %0 = nn.relu %x : tensor<4xf32>
          qcc.return %0 : tensor<4xf32>
        }
    """

    name = "dce"

    def run(self, graph: Graph) -> PassResult:
        ops = graph.ops
        live = set()
        work = [v.producer for v in graph.outputs if v.producer is not None]
        work += [op for op in ops if not get_op(op.opname).pure]
        while work:
            op = work.pop()
            if id(op) in live:
                continue
            live.add(id(op))
            work.extend(v.producer for v in op.operands if v.producer is not None)
        dead = [op for op in reversed(ops) if id(op) not in live]
        for op in dead:  # reverse topological order: every user goes before its producer
            graph.erase_op(op)
        return PassResult(bool(dead), {"erased": len(dead)})
