"""Schedule and static memory plan of a lowered graph.

The C API's tensors are the quantized ones: an input is the result of the
``q.quantize`` that a float graph input feeds (or an integer graph input
itself); an output is the operand of the ``q.dequantize`` that produces a
float graph output (or an integer graph output itself). Everything between is
run by ``steps``, in the graph's topological order.

Float epilogue: a float graph output may also be ``nn.softmax`` /
``nn.sigmoid`` / ``nn.tanh`` (a chain of them) applied to a q.dequantize
result (``qmn{float_output=true}`` keeps these in float). The API output is
still the quantized tensor the q.dequantize reads; the chain (``TensorIO.epilogue``)
runs in float C on the caller's dequantized floats when ``NAME_run`` returns
floats. It is not part of the integer (bit-exact) contract.

Memory: every tensor lives in the single static arena or is a weight array:
the API inputs (the caller writes them before step 0, ``NAME_input*()``),
the API outputs (live until after the last step, ``NAME_output*()``) and
every step's result. Reshape-like ops (``ALIAS_OPS``) cost nothing: their
result *is* their operand's bytes, so a buffer's lifetime covers all its
aliases. A buffer is live from the step that writes it to the last step that
reads it (both inclusive, so an op's output never overlaps its inputs) —
except in-place layers (``inplace.py``): an output may sit ``disp`` bytes
from an operand that dies at its step when the kernel's loop order proves no
store hits a byte read later. Linked buffers form chains placed as one
block. Blocks are placed largest first by best fit (TFLite Micro's greedy
planner: the smallest gap between conflicting blocks that fits) or first
fit, whichever gives the smaller arena. ``arena_size`` is the end of the
highest buffer; ``lower_bound`` is the largest total of simultaneously live
bytes (no plan without in-place layers can do better); ``check_plan``
verifies that no two live buffers share a byte except legal in-place pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from qcc.errors import QccError, UnsupportedModelError
from qcc.ir.graph import Graph, Op, Value
from qcc.ir.types import TensorType

from .layers_f32 import fused_dequantize, fused_quantize, step_values
from .inplace import INPLACE_OPS, max_displacement, min_displacement_reversed
from .stream import (Chain, candidate_segments, chain_lifetimes, chain_units, make_chain, op_macs, out_rows,
                     replay_chain, sink_displacement)

ALIAS_OPS = frozenset({"nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze"})
COMPUTE_OPS = frozenset({
    "qnn.conv2d", "qnn.dense", "qnn.add", "qnn.requantize", "qnn.maxpool", "qnn.avgpool", "qnn.lut",
    "qnn.lut_interp", "qnn.softmax", "nn.transpose", "nn.concat", "nn.pad", "nn.gather", "qnn.sub", "qnn.mul"})
# Affine int8 kernels (layers_s8.py); conv/dense take constant weights and bias like qnn.
S8_OPS = frozenset({"s8.conv2d", "s8.dense", "s8.add", "s8.sub", "s8.mul", "s8.lut", "s8.requantize", "s8.maxpool",
                    "s8.avgpool", "s8.softmax", "s8.activation16"})
COMPUTE_OPS = COMPUTE_OPS | S8_OPS
# Recurrent cells (layers_recurrent.py, layers_s8.py): several results (y, then the final states), operands
# (x, w, r, b, h0[, c0]); the final state results 1.. match the initial-state operands 4.. (streaming).
# The s8 cells take no bias pointer: their kernels read biases with the zero points folded in (layers_s8.py).
RECURRENT_OPS = frozenset({"qnn.lstm", "qnn.gru", "s8.lstm", "s8.gru"})
S8_RECURRENT_BIAS = 3
COMPUTE_OPS = COMPUTE_OPS | RECURRENT_OPS
# Float layers (--float-layers, layers_f32.py) and the dequantize/quantize at their edges inside the graph:
# float tensors live in the arena like the others, 4 bytes per element.
F32_WEIGHTED = ("f32.conv2d", "f32.dense")
FLOAT_LAYER_OPS = frozenset({"f32.conv2d", "f32.dense", "f32.add", "f32.sub", "f32.mul", "f32.relu", "f32.clip",
                             "f32.leaky_relu", "f32.sigmoid", "f32.tanh", "f32.softmax", "f32.maxpool",
                             "f32.avgpool", "f32.global_avgpool", "f32.global_maxpool", "q.quantize",
                             "q.dequantize"})
COMPUTE_OPS = COMPUTE_OPS | FLOAT_LAYER_OPS
STATE_OPERAND = 4  # the first initial-state operand of a recurrent op


def scratch_bytes(op: Op) -> int:
    """Arena bytes a kernel needs during its step only (the GRU without linear_before_reset keeps
    z (int16) and r * h (the state's type) of one time step); 0 for every other kernel."""
    if op.opname == "qnn.gru" and not op.attrs["linear_before_reset"]:
        hidden = op.attrs["hidden_size"]
        return hidden * 2 + hidden * op.results[0].type.np_dtype.itemsize
    return 0
# Ops whose operands after the first are constant parameters (weights, bias; a gather's indices).
WEIGHTED_OPS = ("qnn.conv2d", "qnn.dense", "s8.conv2d", "s8.dense", "nn.gather")
# Float ops a graph output may apply after its q.dequantize (the float epilogue; float C, tolerance only).
FLOAT_EPILOGUE_OPS = frozenset({"nn.softmax", "nn.sigmoid", "nn.tanh"})
ALIGN = 8


class PlanError(QccError):
    """The memory plan broke its own invariant (a compiler bug, never the user's input)."""


@dataclass
class TensorIO:
    """One tensor of the C API: ``value`` is the quantized tensor the caller passes or receives."""

    index: int
    name: str          # graph input/output name (untrusted text)
    value: Value       # the integer tensor
    graph_value: Value  # the graph's own input/output (float when quantized at the boundary)
    dequantized: Optional[Value] = None  # output: the q.dequantize result (before the epilogue)
    epilogue: List[Op] = field(default_factory=list)  # output: float ops after the dequantize, in order


@dataclass
class Buffer:
    root: Value
    size: int          # bytes
    start: int         # first time unit that writes it
    end: int           # last time unit that reads it
    offset: int = -1
    spans: Optional[List[Tuple[int, int]]] = None   # live only in these spans (a streamed band buffer)

    def mask(self) -> int:
        """The time units it is live in, as bits."""
        spans = self.spans if self.spans is not None else [(self.start, self.end)]
        m = 0
        for a, z in spans:
            m |= ((1 << (z - a + 1)) - 1) << a
        return m


@dataclass
class Link:
    """An output written over ``src``, the operand that dies at its step, ``disp`` bytes from it.

    ``limit`` is the kernel's bound (inplace.py): disp <= limit when the loops
    run forward, disp >= limit when they run last to first (``reverse``).
    """

    src: Buffer
    disp: int
    limit: int
    reverse: bool = False
    streamed: bool = False   # inside a streamed chain: each band call writes over the row it alone reads

    def allows(self, disp: int) -> bool:
        return disp >= self.limit if self.reverse else disp <= self.limit


@dataclass
class Step:
    """One call in the run function: an op of the graph, or a synthetic copy/dequantize to an output."""

    kind: str                        # op name, or "copy" / "dequantize"
    op: Optional[Op]
    inputs: List[Value]
    output: Optional[Value]          # None for copy/dequantize (they write output ``out_index``)
    out_index: int = -1
    extra: List[Value] = field(default_factory=list)  # further results (a recurrent op's final states)
    scratch: Optional[Value] = None  # a step-local arena buffer (not in the graph), see scratch_bytes
    chain: Optional[Chain] = None    # kind "stream": a row-streamed chain of layers (stream.py)


@dataclass
class Plan:
    inputs: List[TensorIO]
    outputs: List[TensorIO]
    steps: List[Step]
    buffers: List[Buffer]
    location: Dict[int, Tuple[str, int]] = field(default_factory=dict)  # id(root) -> (kind, index/offset)
    arena_size: int = 0
    lower_bound: int = 0
    input_offsets: List[int] = field(default_factory=list)   # arena offset of API input i
    output_offsets: List[int] = field(default_factory=list)  # arena offset of API output j
    inplace: Dict[int, "Link"] = field(default_factory=dict)  # id(output buffer) -> its in-place link
    live_bytes: List[int] = field(default_factory=list)      # bytes live during each time unit (no in-place)
    step_time: List[int] = field(default_factory=list)       # first time unit of each step (a chain has one per layer)
    max_recompute: float = 0.0                               # the bound streaming was planned under
    total_macs: int = 0                                      # conv/dense MACs of the whole-tensor schedule
    unstreamed_arena: int = 0                                # the arena without streaming (for reports)
    states: List[Value] = field(default_factory=list)        # qcc.state values: persistent (stream-state)

    def is_inplace(self, step: "Step") -> bool:
        """True when ``step`` writes its output over one of its dying operands."""
        return self._link(step) is not None

    def is_reversed(self, step: "Step") -> bool:
        """True when ``step`` runs in place with its output loops last to first (conv2d.j2 ``reverse``)."""
        link = self._link(step)
        return link is not None and link.reverse

    def _link(self, step: "Step") -> Optional["Link"]:
        if step.output is None:
            return None
        for b in self.buffers:
            if b.root is step.output:
                return self.inplace.get(id(b))
        return None

    def root(self, v: Value) -> Value:
        return alias_root(v)

    def where(self, v: Value) -> Tuple[str, int]:
        """("input", i), ("output", i), ("arena", offset) or ("const", 0) for value ``v``."""
        r = alias_root(v)
        if r.is_constant():
            return ("const", 0)
        return self.location[id(r)]


def alias_root(v: Value) -> Value:
    while v.producer is not None and v.producer.opname in ALIAS_OPS:
        v = v.producer.operands[0]
    return v


def _nbytes(v: Value) -> int:
    return v.type.size * v.type.np_dtype.itemsize


def _describe(v: Value) -> str:
    return f"'{v.name}'" if v.name else ""


def find_io(graph: Graph) -> Tuple[List[TensorIO], List[TensorIO], set]:
    """The API tensors and the boundary ops (quantize/dequantize) the API handles."""
    boundary = set()
    inputs, outputs = [], []
    for i, v in enumerate(graph.inputs):
        api = v
        if v.type.is_float:
            uses = graph.uses(v)
            if len(uses) != 1 or uses[0][0].opname != "q.quantize" or graph.is_output(v):
                got = ", ".join(op.describe() for op, _ in uses) or "nothing"
                raise UnsupportedModelError(
                    f"graph input '{v.name}' is float and must feed exactly one q.quantize (a fully "
                    f"lowered graph); it feeds {got}. Run the qmn pipeline first")
            boundary.add(uses[0][0])
            api = uses[0][0].result
        if api.type.dtype not in ("i8", "i16", "i32"):
            raise UnsupportedModelError(f"graph input '{v.name}' has type {api.type}; expected i8/i16/i32")
        inputs.append(TensorIO(i, v.name, api, v))
    for j, (v, name) in enumerate(zip(graph.outputs, graph.output_names)):
        api, dequantized, epilogue = v, None, []
        if v.type.is_float:
            epilogue = float_epilogue(v)
            d = epilogue[0].operands[0] if epilogue else v
            if d.producer is None or d.producer.opname != "q.dequantize":
                what = d.producer.describe() if d.producer else "a graph input"
                raise UnsupportedModelError(
                    f"graph output '{name}' is float but comes from {what}, not from q.dequantize (optionally "
                    f"followed by float {' / '.join(sorted(FLOAT_EPILOGUE_OPS))}); the backend compiles fully "
                    f"lowered integer graphs only")
            boundary.add(d.producer)
            boundary.update(epilogue)
            api, dequantized = d.producer.operands[0], d
        if api.type.dtype not in ("i8", "i16", "i32"):
            raise UnsupportedModelError(f"graph output '{name}' has type {api.type}; expected i8/i16/i32")
        outputs.append(TensorIO(j, name, api, v, dequantized, epilogue))
    return inputs, outputs, boundary


def float_epilogue(v: Value) -> List[Op]:
    """The chain of float epilogue ops (first to last) that ends in graph output ``v``; [] when none.

    Only unary float ops of ``FLOAT_EPILOGUE_OPS`` count; whatever else feeds
    the chain must be a q.dequantize, which ``find_io`` checks.
    """
    chain: List[Op] = []
    while (v.producer is not None and v.producer.opname in FLOAT_EPILOGUE_OPS
           and v.type.is_float and v.producer.operands[0].type.is_float):
        chain.append(v.producer)
        v = v.producer.operands[0]
    return chain[::-1]


MAX_LINK_TRIALS = 128  # in-place links whose removal make_plan tries one at a time (see there)


DEFAULT_MAX_RECOMPUTE = 0.10
# Band heights and halo modes the chain search tries (stream.py).
STREAM_CONFIGS = (("cache", 1), ("cache", 2), ("recompute", 2), ("recompute", 4))
STREAM_FINALISTS = 6   # candidates planned in full (with in-place layers) per round
STREAM_ROUNDS = 4      # chains chosen at most
# The chain search plans the whole graph per candidate: past this many steps (real MCU models have tens;
# a 500-layer stress test would take hours) streaming is not searched; CANDIDATES bounds one round.
STREAM_MAX_STEPS = 160
STREAM_MAX_CANDIDATES = 800


def make_plan(graph: Graph, float_output: bool = False, inplace: bool = True,
              max_recompute: float = DEFAULT_MAX_RECOMPUTE, chains: Optional[List[tuple]] = None) -> Plan:
    """Schedule ``graph`` and place every API and intermediate tensor in the arena.

    ``float_output`` only changes the run wrapper (it dequantizes the in-arena
    outputs and runs their float epilogues on the caller's floats; neither
    uses the arena); ``inplace=False`` plans whole tensors out of place (no in-place
    layers, no streaming: for comparisons and CMSIS-NN's kernels).
    ``max_recompute`` > 0 lets chains of layers run row-streamed (stream.py)
    when that lowers the arena, repeating at most that fraction of the
    model's conv/dense MACs; 0 turns streaming off. ``chains`` forces the
    chains instead of searching: ``(first step, last step, mode, band rows)``
    each, in step indices of the whole-tensor schedule (tests use it).
    """
    inputs, outputs, boundary = find_io(graph)
    bad = []
    steps: List[Step] = []
    # Dequantize/quantize edges a float layer's kernel runs itself (layers_f32.py): no float buffer for them.
    fused = set()
    for op in graph.ops:
        if op.opname.startswith("f32."):
            fused.update(v.producer for v in op.operands if fused_dequantize(graph, v) is not None)
            if fused_quantize(graph, op) is not None:
                fused.add(graph.users(op.result)[0])
    for op in graph.ops:
        if op in boundary or op in fused or op.opname in ("qcc.const", "qcc.state"):
            continue
        if op.opname.startswith("f32."):
            data, out = step_values(graph, op)
            steps.append(Step(op.opname, op, data, out))
            continue
        if op.opname in ALIAS_OPS:
            if len(op.operands) > 1 and not op.operands[1].is_constant():
                bad.append(f"{op.describe()} (run-time shape)")
            continue
        if op.opname not in COMPUTE_OPS:
            bad.append(op.describe())
            continue
        weighted = op.opname in WEIGHTED_OPS or op.opname in F32_WEIGHTED
        data = op.operands[:1] if weighted else op.operands
        if op.opname in ("s8.lstm", "s8.gru"):
            data = [v for i, v in enumerate(op.operands) if i != S8_RECURRENT_BIAS]
        if op.opname not in FLOAT_LAYER_OPS and any(v.type.is_float for v in list(data) + list(op.results)):
            bad.append(f"{op.describe()} (float tensors)")
            continue
        if weighted and not all(v.is_constant() for v in op.operands[1:]):
            bad.append(f"{op.describe()} (weights/bias are not constants)")
            continue
        step = Step(op.opname, op, list(data), op.results[0], extra=list(op.results[1:]))
        if scratch_bytes(op):
            step.scratch = Value(TensorType((scratch_bytes(op),), "i8"))
        steps.append(step)
    if bad:
        raise UnsupportedModelError("the cmsis backend cannot compile these ops of graph "
                                    f"@{graph.name}: " + "; ".join(bad))
    total = sum(op_macs(s.op) for s in steps if s.op.opname in WEIGHTED_OPS[:4])
    plain = _plan_steps(inputs, outputs, list(steps), inplace)
    plain.total_macs, plain.unstreamed_arena = total, plain.arena_size
    if chains is not None:
        cur = list(steps)
        for i, j, mode, band in sorted(chains, reverse=True):
            if (i, j) not in candidate_segments(graph, steps):
                raise ValueError(f"steps {i}..{j} cannot stream")
            ch = make_chain([s.op for s in steps[i:j + 1]], band, mode)
            cur[i:j + 1] = [Step("stream", None, ch.inputs, ch.sink, chain=ch)]
        plan = _plan_steps(inputs, outputs, cur, inplace)
        plan.max_recompute, plan.total_macs, plan.unstreamed_arena = max_recompute, total, plain.arena_size
        return plan
    if max_recompute <= 0 or not inplace:
        return plain
    if len(steps) > STREAM_MAX_STEPS:
        plain.max_recompute = max_recompute   # streaming asked for, not searched (memory_report: too_deep)
        return plain
    streamed = _choose_chains(graph, inputs, outputs, steps, max_recompute, total)
    if streamed is steps:
        plan = plain
    else:
        plan = _plan_steps(inputs, outputs, streamed, inplace)
        if plan.arena_size >= plain.arena_size:  # streaming never makes the arena larger
            plan = plain
    plan.max_recompute, plan.total_macs, plan.unstreamed_arena = max_recompute, total, plain.arena_size
    return plan


def _choose_chains(graph: Graph, inputs, outputs, steps: List[Step], max_recompute: float,
                   total_macs: int) -> List[Step]:
    """Greedily replace runs of steps by streamed chains while the arena drops.

    Each round tries every closed run of streamable steps (stream.candidate_segments)
    that covers a step whose live bytes reach the current arena (only those can
    lower it), with every band height and halo mode of STREAM_CONFIGS, keeping
    those whose repeated MACs (with the chains already chosen) stay within
    ``max_recompute * total_macs``. Candidates are ranked by a fast plan without
    other in-place layers; the best STREAM_FINALISTS are planned in full and the
    smallest arena wins (ties: fewer repeated MACs, then fewer kernel calls).
    """
    budget = max_recompute * total_macs
    cur = list(steps)
    memo: dict = {}
    chains: Dict[tuple, Chain] = {}
    arena = _plan_steps(inputs, outputs, list(cur), True, check=False, memo=memo).arena_size
    spent = 0
    for _ in range(STREAM_ROUNDS):
        fast = _plan_steps(inputs, outputs, list(cur), False, check=False, memo=memo)
        bounds = fast.step_time[1:] + [len(fast.live_bytes)]
        hot = [i for i, (a, z) in enumerate(zip(fast.step_time, bounds)) if max(fast.live_bytes[a:z]) >= arena]
        ranked = []
        segments = [(i, j) for i, j in candidate_segments(graph, cur) if any(i <= h <= j for h in hot)]
        # nearest the hottest step first, so the bound on candidates keeps the likeliest ones
        peak = max(hot, key=lambda h: max(fast.live_bytes[fast.step_time[h]:bounds[h]])) if hot else 0
        segments.sort(key=lambda ij: (max(ij[0] - peak, peak - ij[1], 0), ij))
        for i, j in segments[:STREAM_MAX_CANDIDATES // len(STREAM_CONFIGS)]:
            for mode, band in STREAM_CONFIGS:
                if band >= out_rows(cur[j].op):
                    continue
                key = (id(cur[i].op), id(cur[j].op), band, mode)
                if key not in chains:
                    chains[key] = make_chain([s.op for s in cur[i:j + 1]], band, mode)
                ch = chains[key]
                extra = ch.extra_macs()
                if spent + extra > budget:
                    continue
                trial = cur[:i] + [Step("stream", None, ch.inputs, ch.sink, chain=ch)] + cur[j + 1:]
                size = _plan_steps(inputs, outputs, list(trial), True, check=False, trials=False,
                                   memo=memo).arena_size
                ranked.append(((size, extra, ch.calls(), i, j, band, mode), trial, extra))
        ranked.sort(key=lambda r: r[0])
        best = None
        for key, trial, extra in ranked[:STREAM_FINALISTS]:
            size = _plan_steps(inputs, outputs, list(trial), True, check=False, memo=memo).arena_size
            if best is None or (size,) + key[1:] < best[0]:
                best = ((size,) + key[1:], trial, extra)
        if best is None or best[0][0] >= arena:
            break
        (arena, *_), cur, extra = best
        spent += extra
    return cur if len(cur) != len(steps) else steps


def _cached(fn, op: Op, operand: int, memo: Optional[dict]):
    """``fn(op, operand)``, remembered in ``memo`` (one make_plan call plans the same ops many times)."""
    if memo is None:
        return fn(op, operand)
    key = (fn.__name__, id(op), operand)
    if key not in memo:
        memo[key] = fn(op, operand)
    return memo[key]


def _plan_steps(inputs: List[TensorIO], outputs: List[TensorIO], steps: List[Step], inplace: bool,
                check: bool = True, trials: bool = True, memo: Optional[dict] = None) -> Plan:
    """Buffers, lifetimes and offsets for a schedule (``steps`` gets the output copy steps appended).

    ``trials=False`` skips the search over which in-place links to drop (a quicker estimate);
    ``memo`` caches the kernels' displacement bounds between calls.
    """
    # Streamed recurrent states (qcc.state values, passes/stream_state.py), in the order the steps read them.
    states: List[Value] = []
    for s in steps:
        for v in (s.op.operands if s.op is not None else []):
            if v.producer is not None and v.producer.opname == "qcc.state" and all(v is not w for w in states):
                states.append(v)
    # Buffers: API inputs (written by the caller before step 0), every step's result, and an own
    # buffer per API output (an output whose tensor is an input, a constant or another output's
    # gets a copy step). Outputs stay live after the last step, so the caller can read them.
    buffers: List[Buffer] = []
    by_root: Dict[int, Buffer] = {}
    location: Dict[int, Tuple[str, int]] = {}
    for io in inputs:
        r = alias_root(io.value)
        if id(r) not in by_root:
            by_root[id(r)] = Buffer(r, _nbytes(r), 0, 0)
            buffers.append(by_root[id(r)])
    out_buffers: List[Buffer] = []
    produced = {id(v) for s in steps for v in [s.output] + s.extra}
    claimed = set()
    copies = set()  # output copies share their source's root: they must not become where() the source is
    for io in outputs:
        r = alias_root(io.value)
        if id(r) in produced and id(r) not in claimed:
            claimed.add(id(r))
            out_buffers.append(None)  # filled when its step is reached
        else:
            steps.append(Step("copy", None, [io.value], None, io.index))
            out_buffers.append(Buffer(io.value, _nbytes(io.value), -1, -1))
            copies.add(id(out_buffers[-1]))
    # Time units: one per step, one per layer of a streamed chain (its band buffers live inside it).
    step_time, t = [], 0
    for s in steps:
        step_time.append(t)
        t += chain_units(s.chain) if s.chain is not None else 1
    last = t
    # Streamed recurrent state (passes/stream_state.py): live through every time unit, so nothing else
    # ever shares its bytes and it survives from one NAME_invoke() to the next; a recurrent op's final
    # state result is written into the state it read (the same buffer).
    state_of: Dict[int, Buffer] = {}
    for v in states:
        by_root[id(v)] = Buffer(v, _nbytes(v), 0, last)
        buffers.append(by_root[id(v)])
    for s in steps:
        if s.kind in RECURRENT_OPS:
            for k, v in enumerate(s.op.operands[STATE_OPERAND:]):
                if id(v) in by_root and v.producer is not None and v.producer.opname == "qcc.state":
                    state_of[id(s.op.results[1 + k])] = by_root[id(v)]
    for i, s in enumerate(steps):
        t0 = step_time[i]
        t1 = t0 + (chain_units(s.chain) - 1 if s.chain is not None else 0)
        for v in s.inputs:
            b = by_root.get(id(alias_root(v)))
            if b is not None:
                b.end = max(b.end, t1)
        if s.output is not None:
            if s.chain is not None:
                # a chain ending in a reduction writes its result only after the last band
                b = Buffer(s.output, _nbytes(s.output), t1 if s.chain.acc is not None else t0, t1)
                by_root[id(s.output)] = b
                buffers.append(b)
            for v in ([] if s.chain is not None else [s.output]) + s.extra + \
                    ([s.scratch] if s.scratch is not None else []):
                if id(v) in state_of:
                    by_root[id(v)] = state_of[id(v)]
                    continue
                b = Buffer(v, _nbytes(v), t0, t1)
                by_root[id(v)] = b
                buffers.append(b)
        else:
            b = out_buffers[s.out_index]
            b.start = b.end = t0
            buffers.append(b)
        if s.chain is not None:
            for j, spans in sorted(chain_lifetimes(s.chain).items()):
                v = s.chain.ops[j].result
                b = Buffer(v, s.chain.buffer_bytes(j), t0 + spans[0][0], t0 + spans[-1][1],
                           spans=[(t0 + a, t0 + z) for a, z in spans])
                by_root[id(v)] = b
                buffers.append(b)
            if s.chain.acc is not None:   # a reduction's sums: live through the chain
                b = Buffer(s.chain.acc, _nbytes(s.chain.acc), t0, t1)
                by_root[id(s.chain.acc)] = b
                buffers.append(b)
    for j, io in enumerate(outputs):
        b = out_buffers[j] if out_buffers[j] is not None else by_root[id(alias_root(io.value))]
        out_buffers[j] = b
        b.end = last
    in_buffers = [by_root[id(alias_root(io.value))] for io in inputs]

    # In-place candidates: a step may displace its output onto an operand that dies there.
    # A chain of in-place layers drifts by the sum of its displacements (forward kernels move down);
    # a reversible kernel may instead move up, so each link takes the direction that keeps the
    # chain's footprint (the span of its members) smallest.
    links: Dict[int, Link] = {}   # id(output buffer) -> link to the dying operand it overwrites
    rel: Dict[int, int] = {}      # offset of a chained buffer relative to its chain's head
    span: Dict[int, Tuple[int, int]] = {}   # chain head id -> (lowest, highest) byte relative to the head
    head: Dict[int, int] = {}
    if inplace:
        taken = set()
        for i, s in enumerate(steps):
            if s.op is None or s.op.opname not in INPLACE_OPS:
                continue
            out = by_root[id(s.output)]
            best = None
            for v in s.inputs:
                src = by_root.get(id(alias_root(v)))
                if src is None or src.end != step_time[i] or id(src) in taken:
                    continue
                # every operand reading the same bytes constrains the displacement
                same = [j for j, w in enumerate(s.inputs) if alias_root(w) is src.root]
                fwd = [_cached(max_displacement, s.op, j, memo) for j in same]
                rev = [_cached(min_displacement_reversed, s.op, j, memo) for j in same]
                options = []
                if all(d is not None for d in fwd):
                    limit = min(fwd)
                    options.append(Link(src, min(limit, 0) // ALIGN * ALIGN, limit, False))
                if all(d is not None for d in rev):
                    limit = max(rev)
                    options.append(Link(src, -(-max(limit, 0) // ALIGN) * ALIGN, limit, True))
                h = head.get(id(src), id(src))
                base = rel.get(id(src), 0)
                lo, hi = span.get(h, (0, src.size))
                for link in options:
                    r = base + link.disp
                    if r + out.size <= base or r >= base + src.size:
                        continue  # no overlap with its input: nothing to gain
                    cost = (max(hi, r + out.size) - min(lo, r), link.reverse)
                    if best is None or cost < best[0]:
                        best = (cost, link, h, r)
            if best is not None:
                (_, link, h, r) = best
                links[id(out)] = link
                taken.add(id(link.src))
                rel.setdefault(id(link.src), 0)
                head.setdefault(id(link.src), h)
                rel[id(out)], head[id(out)] = r, h
                lo, hi = span.get(h, (0, link.src.size))
                span[h] = (min(lo, r), max(hi, r + out.size))

    taken = set() if not inplace else taken
    if any(s.chain is not None for s in steps):   # in-place writes inside streamed chains: always planned
        for i, s in enumerate(steps):
            if s.chain is None:
                continue
            links.update(_stream_links(s.chain, by_root, step_time[i], memo))
            # the chain's result over an input that dies in it, as far below as the band order allows
            out = by_root[id(s.output)]
            t1 = step_time[i] + chain_units(s.chain) - 1
            for v in s.inputs:
                src = by_root.get(id(alias_root(v)))
                if src is None or src.end != t1 or id(src) in taken or id(out) in links or src.spans is not None:
                    continue
                limit = sink_displacement(s.chain, v)
                if limit is None or limit < -out.size:
                    continue
                # as far into the input as allowed while inside it: room below for in-place layers after it
                disp = min(limit, max(src.size - out.size, 0)) // ALIGN * ALIGN
                links[id(out)] = Link(src, disp, limit, False, streamed=True)
                taken.add(id(src))

    # Chains move as one block (see _place), which can cost more than a link saves; so drop, one at a
    # time in schedule order, every link whose removal makes the arena smaller. Then keep the best of
    # best fit / first fit (ties: best fit, TFLM's choice).
    def evaluate(chosen):
        results = []
        for rank, fit in enumerate(("best", "first")):
            placement = _place(buffers, chosen, fit)
            results.append((max((b.size + placement[id(b)] for b in buffers), default=0), rank, placement))
        return min(results, key=lambda r: r[:2])

    used_links = dict(links)
    arena, _, placement = evaluate(used_links)
    # Each trial re-places every buffer: a network thousands of layers deep would take hours, so
    # only the first MAX_LINK_TRIALS links are tried (real models have tens); the rest stay.
    for key in list(links)[:MAX_LINK_TRIALS if trials else 0]:
        trial = {k: v for k, v in used_links.items() if k != key}
        result = evaluate(trial)
        if result[0] < arena:
            used_links, (arena, _, placement) = trial, result
    streamed = {k: v for k, v in links.items() if v.streamed}
    if streamed and trials:
        # From the streamed chains' own links, add the other in-place links one at a time where they help
        # (a long run of linked layers after a chain can cost more than it saves; removal above may not see it).
        cur = dict(streamed)
        best = evaluate(cur)
        for key in [k for k in links if k not in streamed][:MAX_LINK_TRIALS]:
            trial = {**cur, key: links[key]}
            result = evaluate(trial)
            if result[0] < best[0]:
                cur, best = trial, result
        if best[0] < arena:
            used_links, (arena, _, placement) = cur, best
    plain = evaluate({})
    if plain[0] <= arena:  # in-place layers never make the arena larger than the plain plan
        used_links, (arena, _, placement) = {}, plain
    for b in buffers:
        b.offset = placement[id(b)]
        if id(b) not in copies:
            location[id(b.root)] = ("arena", b.offset)
    for key, b in state_of.items():
        location[key] = ("arena", b.offset)
    nunits = max(last, 1)
    live = [0] * (nunits + 1)
    for b in buffers:
        for a, z in (b.spans if b.spans is not None else [(b.start, b.end)]):
            for u in range(a, min(z, nunits - 1) + 1):
                live[u] += b.size
    plan = Plan(inputs, outputs, steps, buffers, location, arena, max(live, default=0))
    plan.input_offsets = [b.offset for b in in_buffers]
    plan.output_offsets = [b.offset for b in out_buffers]
    plan.inplace = dict(used_links)
    plan.live_bytes = live[:last]
    plan.step_time = step_time
    plan.states = states
    if not check:
        return plan
    check_plan(plan)
    return plan


def _stream_links(ch: Chain, by_root: Dict[int, Buffer], t0: int, memo: Optional[dict] = None) -> Dict[int, Link]:
    """In-place layers inside a streamed chain: a layer may write its band over its one streamed operand.

    Both buffers must be dead between bands (not caches), the operand read by
    this layer alone, and every span of the operand end where the output's
    begins: at this layer's call. The displacement bound is inplace.py's for
    every band shape the layer runs (stream.band_op).
    """
    from .stream import WINDOWED, Call, _data, band_op, row_bytes, rows_needed, window
    index = {id(op.result): j for j, op in enumerate(ch.ops)}
    flat = [a for b in ch.bands for a in b]
    out: Dict[int, Link] = {}
    taken = set()
    for j, op in enumerate(ch.ops[:-1]):
        if op.opname not in INPLACE_OPS or ch.kept[j]:
            continue
        data = _data(op)
        inner = [k for k, v in enumerate(data) if id(v) in index]
        if len(inner) != 1 or any(w is data[inner[0]] for k, w in enumerate(data) if k != inner[0]):
            continue
        src_j = index[id(data[inner[0]])]
        src, dst = by_root[id(data[inner[0]])], by_root[id(op.result)]
        if ch.kept[src_j] or ch.last_use[src_j] != j or id(src) in taken or src.spans is None or dst.spans is None:
            continue
        calls = [t0 + u for u, a in enumerate(flat) if isinstance(a, Call) and a.layer == j]
        if [z for _, z in src.spans] != calls or [a for a, _ in dst.spans] != calls:
            continue
        limits = []
        for a in flat:
            if isinstance(a, Call) and a.layer == j:
                lo, hi = rows_needed(op, a.a, a.c)
                # the band kernel's shape: rows out, rows in, and where the slice starts against the window
                step = window(op)[1] if op.opname in WINDOWED else 1
                key = ("band", id(op), inner[0], a.c - a.a, hi - lo, lo - a.a * step)
                if memo is None or key not in memo:
                    d = max_displacement(band_op(op, a.a, a.c), inner[0])
                    if memo is not None:
                        memo[key] = d
                d = memo[key] if memo is not None else d
                # the kernel's bound is between its pointers, which sit inside the two buffers
                in_rel = (a.reads[inner[0]] - a.in_lo[inner[0]]) * row_bytes(data[inner[0]])
                out_rel = (a.a - a.out_lo) * row_bytes(op.result)
                limits.append(None if d is None else d + in_rel - out_rel)
        if not limits or None in limits:
            continue
        limit = min(limits)
        out[id(dst)] = Link(src, min(limit, 0) // ALIGN * ALIGN, limit, False, streamed=True)
        taken.add(id(src))
    return out


def _place(buffers: List[Buffer], links: Dict[int, Link], fit: str) -> Dict[int, int]:
    """Offsets for ``buffers``: linked chains move as one block; ``fit`` is "best" (TFLM) or "first".

    A chain (input -> in-place output -> ...) becomes one block whose extent
    covers all members at their displacements and whose lifetime runs from the
    first member's start to the last member's end. Blocks are placed largest
    first; "best" takes the smallest gap between conflicting placed blocks that
    fits, "first" the lowest one.
    """
    parent = {k: link.src for k, link in links.items()}
    disp = {k: link.disp for k, link in links.items()}
    rel: Dict[int, int] = {}
    head: Dict[int, Buffer] = {}

    def resolve(b: Buffer):
        # Up the chain to a resolved buffer or the head, then back down: a loop, since an
        # in-place chain is as long as the network is deep.
        chain = []
        while id(b) not in rel and id(b) in parent:
            chain.append(b)
            b = parent[id(b)]
        if id(b) not in rel:
            rel[id(b)], head[id(b)] = 0, b
        for c in reversed(chain):
            p = parent[id(c)]
            rel[id(c)] = rel[id(p)] + disp[id(c)]
            head[id(c)] = head[id(p)]
    for b in buffers:
        resolve(b)
    blocks: Dict[int, List[Buffer]] = {}
    for b in buffers:
        blocks.setdefault(id(head[id(b)]), []).append(b)
    items = []
    for members in blocks.values():
        lo = min(rel[id(b)] for b in members)
        hi = max(rel[id(b)] + b.size for b in members)
        mask = 0
        for b in members:
            mask |= b.mask()
        items.append((hi - lo, min(b.start for b in members), mask, lo, members))
    items.sort(key=lambda t: (-t[0], t[1]))
    placed: List[Tuple[int, int, int]] = []   # (offset, size, live mask)
    offsets: Dict[int, int] = {}
    for size, start, mask, lo, members in items:
        spans = sorted((o, o + s) for o, s, m in placed if m & mask)
        off, best, best_gap = 0, None, None
        for s_lo, s_hi in spans:
            gap = s_lo - off
            if gap >= size and (best is None or gap < best_gap):
                best, best_gap = off, gap
                if fit == "first":
                    break
            off = max(off, -(-s_hi // ALIGN) * ALIGN)
        if best is None:
            best = off
        placed.append((best, size, mask))
        for b in members:
            offsets[id(b)] = best + rel[id(b)] - lo
    return offsets


def check_plan(plan: Plan) -> None:
    """Raise PlanError unless no two simultaneously live buffers share a byte (in-place pairs excepted).

    An in-place pair is an output and the operand that dies at its step, with
    the output displaced within what ``inplace.py`` allows for the kernel's loop direction.
    """
    problems = []
    bufs = plan.buffers
    for b in bufs:
        if b.offset < 0 or b.offset % ALIGN or b.offset + b.size > plan.arena_size:
            problems.append(f"buffer {_describe(b.root)} at {b.offset}+{b.size} outside/unaligned in arena "
                            f"{plan.arena_size}")
    masks = [b.mask() for b in bufs]
    for i, a in enumerate(bufs):
        for k, b in enumerate(bufs[i + 1:], i + 1):
            if not masks[i] & masks[k]:
                continue
            if a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                ok = False
                for out, src in ((a, b), (b, a)):
                    link = plan.inplace.get(id(out))
                    if link is not None and link.src is src and (out.start == src.end or link.streamed) \
                            and link.allows(out.offset - src.offset):
                        ok = True
                if not ok:
                    problems.append(f"buffers {_describe(a.root)} [{a.start},{a.end}] @{a.offset}+{a.size} and "
                                    f"{_describe(b.root)} [{b.start},{b.end}] @{b.offset}+{b.size} overlap")
    for s in plan.steps:
        if s.chain is not None and not problems:
            try:   # every band call must find the rows it reads where the plan put them
                replay_chain(s.chain, lambda v: plan.where(v)[1], plan.arena_size)
            except AssertionError as exc:
                problems.append(f"streamed chain: {exc}")
    if problems:
        raise PlanError("memory plan is invalid (a qcc bug): " + "; ".join(problems))


def memory_report(plan: Plan) -> dict:
    """The plan's numbers for reports: arena (peak RAM), lower bound, and RAM per layer.

    ``lower_bound_bytes`` is the largest total of simultaneously live tensors
    (inputs and outputs included) when no layer runs in place: no plan without
    in-place layers can use less. ``arena_bytes`` may go below it thanks to
    in-place layers. Per layer, ``live_bytes`` is that live total during the
    step and ``offset`` where its result sits.
    """
    where = {id(b.root): b for b in plan.buffers}
    layers, chains = [], []
    for i, s in enumerate(plan.steps):
        t0 = plan.step_time[i] if plan.step_time else i
        if s.chain is not None:
            ch = s.chain
            chains.append({"step": i, "layers": [op.name for op in ch.ops], "band_rows": ch.band, "mode": ch.mode,
                           "bands": len(ch.bands), "calls": ch.calls(), "extra_macs": ch.extra_macs(),
                           "band_buffer_bytes": sum(ch.buffer_bytes(j) for j in ch.capacity)})
            flat = [a for band in ch.bands for a in band]
            peak: Dict[int, int] = {}   # per layer: the most bytes live while any of its bands runs
            for u, act in enumerate(flat):
                j = getattr(act, "layer", getattr(act, "tensor", -1))
                peak[j] = max(peak.get(j, 0), plan.live_bytes[t0 + u])
            for j, op in enumerate(ch.ops):
                b = where[id(op.result)]
                layers.append({"step": i, "op": op.opname, "name": op.name, "live_bytes": peak.get(j, 0),
                               "bytes": b.size, "offset": b.offset, "in_place": False, "streamed": True})
            continue
        b = where.get(id(s.output)) if s.output is not None else None
        layers.append({"step": i, "op": s.kind, "name": s.op.name if s.op is not None else f"output{s.out_index}",
                       "live_bytes": plan.live_bytes[t0], "bytes": b.size if b else 0,
                       "offset": b.offset if b else plan.output_offsets[s.out_index],
                       "in_place": plan.is_inplace(s), "streamed": False})
    extra = sum(c["extra_macs"] for c in chains)
    return {"arena_bytes": plan.arena_size, "lower_bound_bytes": plan.lower_bound,
            "input_offsets": list(plan.input_offsets), "output_offsets": list(plan.output_offsets),
            "in_place_layers": sum(1 for s in plan.steps if plan.is_inplace(s)), "layers": layers,
            "streaming": {"max_recompute": plan.max_recompute, "chains": chains,
                          "too_deep": sum(1 for s in plan.steps if s.op is not None) > STREAM_MAX_STEPS,
                          "arena_without_streaming": plan.unstreamed_arena or plan.arena_size,
                          "extra_macs": extra, "total_macs": plan.total_macs,
                          "extra_mac_ratio": extra / plan.total_macs if plan.total_macs else 0.0}}
