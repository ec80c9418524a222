"""Choosing Qm.n formats by the error they cause downstream (the ``consumer`` objective of assign-qmn).

A fake-quant graph is run on the calibration samples twice over:

* the *reference*: every ``q.quantize``/``q.dequantize`` is the identity, so
  each value is the float model's;
* the *quantized* run: every fake-quant point quantizes at its current format.

Activation groups are settled one after another in graph order. When the run
reaches a group's first ``q.quantize``, everything before it is final. For each
candidate ``n`` the ops from there to the group's *horizon* run again: the
horizon is where the group's values stop mattering on their own, the float
values entering the next fake-quant points of other groups (a consumer
layer's output, after its fused activation) and the graph outputs reached on
the way. The candidate's cost is the summed relative error there::

    cost(n) = sum_h  sum_samples |ref_h - q_h(n)|^2 / sum_samples |ref_h|^2

Because the upstream formats are already in, the quantized run carries the
real accumulated error; a candidate wins by what it adds to the consumers'
outputs, not by its own rounding error alone. Clipping an input feature the
first layer weighs lightly costs little; resolution on features it weighs
heavily costs a lot: the max-abs or local squared-error rules cannot see that.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from qcc.ir.graph import Graph, Op, Value

PASS_THROUGH = ("q.quantize", "q.dequantize")


def _kernels():
    from qcc.sim.interpreter import KERNELS
    import qcc.sim.qmn  # noqa: F401  (kernels of the q.* ops)
    return KERNELS


class FakeQuantRun:
    """Reference and quantized values of a fake-quant graph on samples, evaluated op by op."""

    def __init__(self, graph: Graph, samples: Sequence[Mapping[str, np.ndarray]]):
        self.graph = graph
        self.ops: List[Op] = graph.ops
        self.index = {id(op): i for i, op in enumerate(self.ops)}
        self.kernels = _kernels()
        self.ref: List[Dict[int, np.ndarray]] = []
        self.cur: List[Dict[int, np.ndarray]] = []
        for s in samples:
            env = {id(v): np.asarray(s[v.name], dtype=v.type.np_dtype) for v in graph.inputs}
            self.cur.append(dict(env))
            for op in self.ops:
                self._run(op, env, float_ref=True)
            self.ref.append(env)
        self.done = 0  # ops [0, done) of the quantized run are final

    def _run(self, op: Op, env: Dict[int, np.ndarray], float_ref: bool = False):
        args = [env[id(v)] for v in op.operands]
        if float_ref and op.opname in PASS_THROUGH:
            out = [args[0]]
        else:
            res = self.kernels[op.opname](op, *args)
            out = list(res) if isinstance(res, (list, tuple)) else [res]
        for r, a in zip(op.results, out):
            env[id(r)] = a

    def advance(self, upto: int):
        """Run the quantized graph up to (not including) op index ``upto``."""
        for op in self.ops[self.done:upto]:
            for env in self.cur:
                self._run(op, env)
        self.done = max(self.done, upto)

    def horizon(self, group: Sequence[Op]) -> Tuple[int, List[Value]]:
        """(index of the last op to rerun, the float values where the group's error is measured)."""
        members = {id(q) for q in group}
        seen, stack, found = set(), [q.result for q in group], []
        last = max(self.index[id(q)] for q in group)
        outputs = {id(v) for v in self.graph.outputs}
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen.add(id(v))
            if id(v) in outputs:
                found.append(v)
            for user in self.graph.users(v):
                if user.opname == "q.quantize" and id(user) not in members:
                    found.append(v)
                    continue
                last = max(last, self.index[id(user)])
                stack.extend(user.results)
        unique = list({id(v): v for v in found}.values())
        return last, unique

    def cost(self, group: Sequence[Op], set_n: Callable[[int], None], n: int, last: int,
             measured: Sequence[Value]) -> float:
        """Relative squared error at ``measured`` with the group at format ``n`` (ops rerun on copies)."""
        set_n(n)
        total = 0.0
        ops = self.ops[self.done:last + 1]
        num = {id(v): 0.0 for v in measured}
        den = {id(v): 0.0 for v in measured}
        for env, ref in zip(self.cur, self.ref):
            local = dict(env)
            for op in ops:
                self._run(op, local)
            for v in measured:
                r = ref[id(v)].astype(np.float64)
                d = r - local[id(v)].astype(np.float64)
                num[id(v)] += float(np.sum(d * d))
                den[id(v)] += float(np.sum(r * r))
        for v in measured:
            total += num[id(v)] / den[id(v)] if den[id(v)] > 0 else num[id(v)]
        return total
