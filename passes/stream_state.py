"""stream-state: keep recurrent state between calls, and take ``frames`` time steps per call.

A recurrent op is one with the operands ``(x [T, I], w, r, b, h0[, c0])`` and the
results ``(y [T, H], h[, c])`` (``nn.lstm``, ``nn.gru``, ``qnn.lstm``,
``qnn.gru`` and any op with that shape: the pass looks only at the shape).
Each initial-state operand that is a constant becomes a ``qcc.state`` holding
that value: the back end keeps it in a persistent arena region, restores it in
``NAME_reset()`` (and it is zero at start-up), and stores the op's final state
there, so the next call starts where this one ended. The simulator does the
same (``qcc.sim.recurrent.run_stream``).

With ``frames > 0`` the graph input that reaches a recurrent op's ``x`` through
layout-only ops (reshape, squeeze, unsqueeze, flatten, transposes that move
only size-1 axes, a q.quantize) shrinks its time axis to ``frames``; the op's
``y`` then has ``frames`` rows, so it must be unused (a classifier reads the
final state) or read only as its last step (PyTorch's ``out[:, -1, :]``: the
selection is then read from the final state h, through the same elementwise
requantizations). Calling the streamed graph ``T / frames`` times gives exactly the
whole-sequence graph's final states and outputs. Anything else (a conv front
end over time, a used ``y``) is refused with the node named.

Before (``-p 'stream-state{frames=1}'``)::

    %x = nn.reshape %in {shape = [49, 10]} : tensor<49x10x!q.fixed<i16, 11>>
    %h0 = qcc.const dense<...> : tensor<1x32x!q.fixed<i16, 15>>
    %y, %h = qnn.gru %x, %w, %r, %b, %h0 {...}

After::

    %x = nn.reshape %in {shape = [1, 10]} : tensor<1x10x!q.fixed<i16, 11>>
    %h0 = qcc.state {value = dense<...>} : tensor<1x32x!q.fixed<i16, 15>>
    %y, %h = qnn.gru %x, %w, %r, %b, %h0 {...} : tensor<1x32x...>, tensor<1x32x...>
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Graph, Op, Value
from qcc.transforms.passmanager import Pass, PassResult, register_pass
from qcc.transforms.pipeline_text import check_option
from qcc.transforms.rewriter import Rewriter

STATE_OPERAND = 4
LAYOUT_OPS = ("nn.reshape", "nn.squeeze", "nn.unsqueeze", "nn.flatten", "nn.transpose", "q.quantize", "q.range")


def is_recurrent(op: Op) -> bool:
    """The recurrent operand/result shape (see the module docstring)."""
    n = len(op.results) - 1  # h, or h and c; an LSTM's peepholes may follow its states
    if n not in (1, 2) or len(op.operands) < STATE_OPERAND + n or len(op.operands[0].shape) != 2:
        return False
    steps, hidden = op.results[0].shape if len(op.results[0].shape) == 2 else (None, None)
    return (steps == op.operands[0].shape[0]
            and all(v.shape == (1, hidden) for v in list(op.operands[STATE_OPERAND:STATE_OPERAND + n])
                    + list(op.results[1:])))


def _keeps_order(op: Op) -> bool:
    if op.opname != "nn.transpose":
        return True
    shape = op.operands[0].shape
    moved = [p for p in op.attrs["perm"] if shape[p] != 1]
    return moved == sorted(moved)


def _input_chain(graph: Graph, x: Value) -> Optional[List[Op]]:
    """The layout-only ops from a graph input to ``x`` (input first), or None."""
    chain = []
    v = x
    while v.producer is not None:
        op = v.producer
        if op.opname not in LAYOUT_OPS or not _keeps_order(op) or len(graph.users(op.operands[0])) != 1:
            return None
        chain.append(op)
        v = op.operands[0]
    return chain[::-1] if v in graph.inputs else None


ELEMENTWISE = ("qnn.requantize", "qnn.lut", "qnn.lut_interp", "q.range", "q.quantize", "q.dequantize",
               "nn.identity")
SELECT = ("nn.gather", "nn.slice")


@register_pass
@dataclass
class StreamState(Pass):
    """Recurrent initial states that are constants become qcc.state; optionally ``frames`` steps per call."""

    name = "stream-state"
    frames: int = 0  # 0: keep the model's sequence length

    def __post_init__(self):
        check_option(self.frames >= 0, "pass 'stream-state'", "frames", ">= 0 (0 keeps the sequence length)",
                     self.frames)

    def run(self, graph: Graph) -> PassResult:
        cells = [op for op in graph.ops if is_recurrent(op)]
        if not cells:
            raise UnsupportedModelError("--stream-state: the graph has no recurrent (LSTM / GRU) op whose state "
                                        "could be kept between calls")
        rw = Rewriter(graph)
        states = 0
        for op in cells:
            for i in range(STATE_OPERAND, STATE_OPERAND + len(op.results) - 1):
                v = op.operands[i]
                if v.is_constant():
                    s = rw.create_op("qcc.state", [], {"value": v.constant().copy()}, [v.type],
                                     name=v.producer.name, before=op)
                    graph.set_operand(op, i, s.result)
                    states += 1
        if self.frames:
            for op in cells:
                self._frames(graph, rw, op)
        from .dce import DeadCodeElimination
        DeadCodeElimination().run(graph)  # the constants the states replaced
        return PassResult(True, {"states": states})

    @staticmethod
    def _last_step_as_state(graph: Graph, rw: Rewriter, op: Op) -> bool:
        """``y`` read only as its last step (PyTorch's ``out[:, -1, :]``: layout ops, elementwise
        requantizations, then a constant gather/slice): that equals the final state h, so the same
        elementwise ops move onto h and the selection's uses read them; True when rewritten."""
        y, h = op.results[0], op.results[1]
        chain, v = [], y
        while True:
            users = graph.users(v)
            if len(users) != 1 or graph.is_output(v):
                return False
            user = users[0]
            if user.opname not in ELEMENTWISE + LAYOUT_OPS + SELECT or user.operands[0] is not v \
                    or not all(w.is_constant() for w in user.operands[1:]):
                return False
            chain.append(user)
            v = user.result
            if user.opname in SELECT:
                break
        # Which elements of y reach the end: follow element indices through the layout and selection ops.
        from qcc.sim.interpreter import KERNELS
        steps, hidden = y.shape
        index = np.arange(steps * hidden, dtype=np.int64).reshape(y.shape)
        for link in chain:
            if link.opname not in ELEMENTWISE:
                index = KERNELS[link.opname](link, index, *(w.constant() for w in link.operands[1:]))
        if not np.array_equal(np.ravel(index), np.arange((steps - 1) * hidden, steps * hidden)):
            return False
        v = h
        for link in chain:
            if link.opname in ELEMENTWISE:
                v = rw.create_op(link.opname, [v], dict(link.attrs), [link.result.type.with_shape(v.shape)],
                                 name=link.name, before=chain[-1]).result
        last = chain[-1].result
        out = rw.create_op("nn.reshape", [v], {"shape": list(last.shape)}, [v.type.with_shape(last.shape)],
                           name=f"{op.name}/last_step", before=chain[-1]).result
        graph.replace_all_uses(last, out)
        for link in reversed(chain):
            graph.erase_op(link)
        return True

    def _frames(self, graph: Graph, rw: Rewriter, op: Op):
        x, y = op.operands[0], op.results[0]
        steps = x.shape[0]
        where = f"--stream-state: {graph.source_name(op)}"
        if steps % self.frames:
            raise UnsupportedModelError(f"{where}: {steps} time steps are not a multiple of {self.frames} frames")
        if graph.has_uses(y) and not self._last_step_as_state(graph, rw, op):
            raise UnsupportedModelError(
                f"{where}: its per-step output (ONNX Y) is used for more than its last step; streaming keeps "
                f"the recurrent state, so the model must read the final state (Y_h / Y_c, or Y's last step)")
        chain = _input_chain(graph, x)
        if chain is None:
            raise UnsupportedModelError(
                f"{where}: its input is computed from the graph input by more than reshapes and transposes "
                f"(e.g. a conv front end over time), so one call cannot take a single frame")
        per_step = x.shape[1]

        def shrink(shape, what):
            """``shape`` with its time axis (size T, then I elements per step, nothing before) made ``frames``."""
            axis = next((a for a in range(len(shape)) if shape[a] == steps and math.prod(shape[a + 1:]) == per_step
                         and math.prod(shape[:a]) == 1), None)
            if axis is None:
                raise UnsupportedModelError(f"{where}: cannot find the time axis of {what} {list(shape)}")
            return tuple(self.frames if a == axis else d for a, d in enumerate(shape))
        src = chain[0].operands[0]
        src.type = src.type.with_shape(shrink(src.shape, f"graph input '{src.name}'"))
        v = src
        for link in chain:  # the same ops on the shorter sequence (each keeps the element order)
            if link.opname in ("q.quantize", "q.range"):
                new = rw.create_op(link.opname, [v], dict(link.attrs), [link.result.type.with_shape(v.shape)],
                                   name=link.name, before=op)
            else:
                shape = shrink(link.result.shape, f"the result of {link.describe()}")
                new = rw.create_op("nn.reshape", [v], {"shape": list(shape)}, [link.result.type.with_shape(shape)],
                                   name=link.name, before=op)
            v = new.result
        reshaped = rw.create_op("nn.reshape", [v], {"shape": [self.frames, per_step]},
                                [x.type.with_shape((self.frames, per_step))], name=f"{op.name}/frames", before=op)
        new = rw.create_op(op.opname, [reshaped.result] + list(op.operands[1:]), dict(op.attrs),
                           [y.type.with_shape((self.frames, y.shape[1]))] + [r.type for r in op.results[1:]],
                           name=op.name, before=op)
        for old, r in zip(op.results[1:], new.results[1:]):
            graph.replace_all_uses(old, r)
        graph.erase_op(op)
        for link in reversed(chain):
            if graph.contains(link) and not graph.has_uses(link.result):
                graph.erase_op(link)
