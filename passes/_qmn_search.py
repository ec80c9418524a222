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


def _stack(parts: List[np.ndarray], r: Value) -> np.ndarray:
    """Per-sample results stacked along their leading axis (a new axis for scalars)."""
    return np.stack(parts) if not r.shape else np.concatenate(parts)


class FakeQuantRun:
    """Reference and quantized values of a fake-quant graph on samples, evaluated op by op.

    The samples run as one batch: a value that depends on the inputs holds all of them stacked on its
    leading (batch-1) axis. An op whose kernel cannot take the stack (a reshape to a fixed batch 1,
    say: its result comes out with the wrong leading size) runs sample by sample instead.
    """

    def __init__(self, graph: Graph, samples: Sequence[Mapping[str, np.ndarray]]):
        self.graph = graph
        self.ops: List[Op] = graph.ops
        self.index = {id(op): i for i, op in enumerate(self.ops)}
        self.kernels = _kernels()
        self.count = len(samples)
        self.inputs = {id(v): np.concatenate([np.asarray(s[v.name], dtype=v.type.np_dtype).reshape(v.shape)
                                              for s in samples]) for v in graph.inputs}
        self.batched = set(self.inputs)
        self.ref: Dict[int, np.ndarray] = dict(self.inputs)
        for op in self.ops:
            self._run(op, self.ref, float_ref=True)
        # Ops on constants alone (fake-quantized weights and biases) do not depend on activation
        # formats: they run once per reset, not once per candidate.
        self.static = [op for op in self.ops if not any(id(r) in self.batched for r in op.results)]
        self.reset()

    def reset(self):
        """Forget the quantized run (formats changed): start again from the inputs."""
        self.cur: Dict[int, np.ndarray] = dict(self.inputs)
        for op in self.static:
            self._run(op, self.cur)
        self.static_ids = {id(op) for op in self.static}
        self.done = 0  # ops [0, done) of the quantized run are final

    def _call(self, op: Op, args):
        res = self.kernels[op.opname](op, *args)
        return list(res) if isinstance(res, (list, tuple)) else [res]

    def _run(self, op: Op, env: Dict[int, np.ndarray], float_ref: bool = False):
        args = [env[id(v)] for v in op.operands]
        batched = any(id(v) in self.batched for v in op.operands)
        if float_ref and op.opname in PASS_THROUGH:
            out = [args[0]]
            if batched:
                self.batched.update(id(r) for r in op.results)
        elif not batched:
            out = self._call(op, args)
        else:
            out = None
            # The whole stack in one call only when every stacked operand and result has a batch axis of 1
            # (a recurrent op's [T, I] sequence, say, is stacked T rows per sample).
            if all(v.shape[:1] == (1,) for v in op.operands if id(v) in self.batched) and \
                    all(r.shape[:1] == (1,) for r in op.results):
                try:
                    out = self._call(op, args)
                    if any(np.shape(a) != (self.count, *r.shape[1:]) for r, a in zip(op.results, out)):
                        out = None
                except Exception:  # noqa: BLE001  (a kernel that cannot take the stack: run it per sample)
                    out = None
            if out is None:  # sample by sample
                parts = [self._call(op, [self._sample(v, a, i) for v, a in zip(op.operands, args)])
                         for i in range(self.count)]
                out = [_stack([p[k] for p in parts], r) for k, r in enumerate(op.results)]
            self.batched.update(id(r) for r in op.results)
        for r, a in zip(op.results, out):
            env[id(r)] = a

    def _sample(self, v: Value, a: np.ndarray, i: int) -> np.ndarray:
        """Sample ``i`` of operand ``v``: its rows of the stack (``v.shape[0]`` rows each), or ``a`` itself."""
        if id(v) not in self.batched:
            return a
        if not v.shape:
            return a[i]
        n = v.shape[0]
        return a[i * n:(i + 1) * n]

    def advance(self, upto: int):
        """Run the quantized graph up to (not including) op index ``upto``."""
        for op in self.ops[self.done:upto]:
            if id(op) not in self.static_ids:
                self._run(op, self.cur)
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
        """Relative squared error at ``measured`` with the group at format ``n`` (ops rerun on a copy)."""
        set_n(n)
        local = dict(self.cur)
        for op in self.ops[self.done:last + 1]:
            if id(op) not in self.static_ids:
                self._run(op, local)
        total = 0.0
        for v in measured:
            r = self.ref[id(v)].astype(np.float64)
            d = r - local[id(v)].astype(np.float64)
            num, den = float(np.sum(d * d)), float(np.sum(r * r))
            total += num / den if den > 0 else num
        return total

def _before_fake_quant(v: Value) -> Value:
    while v.producer is not None and v.producer.opname in ("q.dequantize", "q.quantize", "q.range"):
        v = v.producer.operands[0]
    return v


def output_values(graph: Graph) -> List[Value]:
    """The float values behind the graph outputs, before their final fake-quant; for a softmax output
    its logits (the argmax is decided there: flat, unsure outputs weigh as much as confident ones)."""
    out = []
    for v in graph.outputs:
        v = _before_fake_quant(v)
        if v.producer is not None and v.producer.opname == "nn.softmax":
            v = _before_fake_quant(v.producer.operands[0])
        out.append(v)
    return list({id(v): v for v in out}.values())
