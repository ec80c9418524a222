"""Row-streamed execution: a chain of layers run a band of output rows at a time (MCUNetV2's idea).

A chain is a run of consecutive steps of the schedule (convolutions,
depthwise, pools, elementwise ops and residual adds, NHWC with batch 1)
whose intermediate tensors are read only inside the chain. Its inputs
(from outside) and its last result (the *sink*) stay whole tensors in the
arena; every intermediate tensor lives in a *band buffer* holding only the
rows the next layers still need.

Rows. Output rows ``[a, c)`` of a windowed layer (kernel ``k``, stride
``s``, dilation ``d``, top pad ``p``) read input rows

    [max(0, a*s - p),  min(H, (c-1)*s - p + (k-1)*d + 1))

and an elementwise layer reads rows ``[a, c)`` of each operand. The sink is
cut into bands of ``band`` rows; per band, walking the chain backwards, each
intermediate tensor *needs* the hull of the rows its consumers read for the
rows *they* compute in this band.

Halos. Consecutive bands need overlapping rows (a 3x3 layer reads two rows
twice). ``mode="cache"`` keeps rows already computed: the buffer holds rows
``[lo, done)``; before a band it slides down (memmove) by ``lo' - lo`` rows
and only rows ``[max(lo', done), hi')`` are computed, so no MAC is repeated.
``mode="recompute"`` computes every needed row again in every band: more
MACs (those of the halo rows, and the rows they need upstream), but no
buffer outlives its band, so buffers of different layers share memory.

Kernels are unchanged: a band of a layer is the same kernel specialized for
a slice (``band_op``): input ``[1, rows_in, W, C]`` at a pointer into the
buffer, pads ``pt' = lo - (a*s - p)`` (nonzero only on the first band) and
``pb'`` making the output exactly ``c - a`` rows (nonzero only where the
slice reaches the real bottom padding). So the band C is the whole-tensor C
on a window of rows, and each output row is computed by the same
instructions in the same order: streamed and whole-tensor plans give the
same bytes.

Lifetimes (plan.py): a chain occupies one time unit per layer. External
inputs live to its last unit, the sink from its first; a cached band buffer
lives through the whole chain; a band buffer that never keeps rows between
bands (always in recompute mode) lives from its producer's unit to its last
consumer's, within each band.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from qcc.ir.graph import Op, Value
from qcc.ir.types import TensorType

WINDOWED = frozenset({"s8.conv2d", "qnn.conv2d", "s8.maxpool", "s8.avgpool", "qnn.maxpool", "qnn.avgpool"})
ELEMENTWISE = frozenset({"s8.add", "s8.sub", "s8.mul", "s8.requantize", "s8.lut", "qnn.add", "qnn.sub", "qnn.mul",
                         "qnn.requantize", "qnn.lut", "qnn.lut_interp"})
MODES = ("cache", "recompute")


def _data(op: Op) -> List[Value]:
    return op.operands[:1] if op.opname in WINDOWED else list(op.operands)


def is_reduction(op: Optional[Op]) -> bool:
    """A global average pool (one window over the whole unpadded input): a chain may end in it.

    Streamed, it adds each band of input rows into an int32 (int64 when the
    kernel needs it) sum per channel, and divides once after the last band
    with the whole-tensor kernel's own rounding (``stream_pool.j2``): the sum
    of the rows is the window's sum, so the result is the same.
    """
    if op is None or op.opname not in ("s8.avgpool", "qnn.avgpool") or op.operands[0].type.rank != 4:
        return False
    _, h, w, _ = op.operands[0].shape
    return (op.operands[0].shape[0] == 1 and tuple(op.result.shape[1:3]) == (1, 1)
            and list(op.attrs["kernel"]) == [h, w] and not any(op.attrs["pads"]))


def out_rows(op: Op) -> int:
    """Rows a chain layer produces one band at a time (a reduction: the input rows it adds)."""
    return op.operands[0].shape[1] if is_reduction(op) else op.result.shape[1]


def streamable(op: Optional[Op]) -> bool:
    """True when ``op`` can run a band of rows at a time (NHWC, batch 1, no broadcast or constant data)."""
    if op is None or op.opname not in WINDOWED | ELEMENTWISE or len(op.results) != 1:
        return False
    if is_reduction(op):
        return True
    y = op.result
    if y.type.rank != 4 or y.shape[0] != 1:
        return False
    if op.opname in WINDOWED:
        x = op.operands[0]
        if x.type.rank != 4 or x.shape[0] != 1 or x.is_constant():
            return False
        k, _, d, _ = window(op)
        # a band must read at least one real row: no output row may lie wholly in the padding
        return max(op.attrs["pads"][0], op.attrs["pads"][2]) < (k - 1) * d + 1
    return all(v.shape == y.shape and not v.is_constant() for v in op.operands)


def window(op: Op) -> Tuple[int, int, int, int]:
    """(kernel rows, stride, dilation, top pad) of a windowed op along H."""
    if op.opname.endswith("conv2d"):
        return op.operands[1].shape[1], op.attrs["strides"][0], op.attrs["dilations"][0], op.attrs["pads"][0]
    return op.attrs["kernel"][0], op.attrs["strides"][0], 1, op.attrs["pads"][0]


def rows_needed(op: Op, a: int, c: int) -> Tuple[int, int]:
    """Rows of every data operand that output rows [a, c) of ``op`` read (clamped to the tensor)."""
    if op.opname not in WINDOWED or is_reduction(op):
        return a, c
    k, s, d, p = window(op)
    h = op.operands[0].shape[1]
    return max(0, a * s - p), min(h, (c - 1) * s - p + (k - 1) * d + 1)


def band_op(op: Op, a: int, c: int) -> Op:
    """A detached copy of ``op`` computing output rows [a, c) from the input rows ``rows_needed`` gives.

    Same weights (the same constant values), same attributes but the H pads,
    which make the slice's output exactly ``c - a`` rows.
    """
    lo, hi = rows_needed(op, a, c)
    attrs = dict(op.attrs)
    if op.opname in WINDOWED:
        k, s, d, p = window(op)
        pt = lo - (a * s - p)
        pb = max(0, (c - a - 1) * s + (k - 1) * d + 1 - (hi - lo) - pt)
        pads = list(op.attrs["pads"])
        pads[0], pads[2] = pt, pb
        attrs["pads"] = pads
        assert (hi - lo + pt + pb - (k - 1) * d - 1) // s + 1 == c - a
    ins = [Value(TensorType((1, hi - lo) + tuple(v.shape[2:]), v.type.dtype, v.type.quant)) for v in _data(op)]
    clone = Op(op.opname, ins + list(op.operands[len(ins):]), attrs, op.name, op.seq)
    y = op.result
    clone.results = [Value(TensorType((1, c - a) + tuple(y.shape[2:]), y.type.dtype, y.type.quant), clone, 0)]
    return clone


def row_bytes(v: Value) -> int:
    return (v.type.size // v.shape[1]) * v.type.np_dtype.itemsize


def op_macs(op: Op) -> int:
    """Multiply-accumulates of a whole conv/dense layer (one per weight tap and output); 0 for other ops."""
    if op.opname.endswith("conv2d"):
        return op.result.type.size * (op.operands[1].type.size // op.operands[1].shape[0])
    if op.opname.endswith("dense"):
        return op.result.type.size * op.operands[1].shape[1]
    return 0


@dataclass
class Move:
    """Slide a cached band buffer down by ``shift`` rows, keeping ``keep`` rows (memmove)."""

    tensor: int
    shift: int
    keep: int


@dataclass
class Call:
    """Layer ``layer`` computes its output rows [a, c); ``reads`` gives each data operand's first row read."""

    layer: int
    a: int
    c: int
    reads: List[int]          # per data operand: first row read (absolute)
    in_lo: List[int]          # per data operand: first row its buffer holds now (0 for whole tensors)
    out_lo: int               # first row the output buffer holds now (0 for the sink)


@dataclass
class Finish:
    """A reduction sink divides its sums into the result (after the last band)."""

    layer: int


@dataclass
class Chain:
    """A streamed chain: its layers, band height, halo mode, and the per-band schedule."""

    ops: List[Op]
    band: int
    mode: str
    bands: List[List[object]] = field(default_factory=list)   # per band: Moves and Calls, in order
    capacity: Dict[int, int] = field(default_factory=dict)     # layer -> rows of its band buffer
    kept: Dict[int, bool] = field(default_factory=dict)        # layer -> rows survive between bands
    computed_rows: Dict[int, int] = field(default_factory=dict)  # layer -> rows computed over all bands
    last_use: Dict[int, int] = field(default_factory=dict)     # layer -> last layer of the chain reading it

    acc: Optional[Value] = None   # a reduction sink's per-channel sums (an arena buffer of the chain)

    @property
    def sink(self) -> Value:
        return self.ops[-1].result

    @property
    def inputs(self) -> List[Value]:
        """External data operands, first use order, each once."""
        inside = {id(op.result) for op in self.ops}
        seen, out = set(), []
        for op in self.ops:
            for v in _data(op):
                if id(v) not in inside and id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
        return out

    def buffer_bytes(self, j: int) -> int:
        return self.capacity[j] * row_bytes(self.ops[j].result)

    def extra_macs(self) -> int:
        """MACs computed more than once (recompute mode's halos)."""
        return sum(op_macs(op) * (self.computed_rows[j] - out_rows(op)) // out_rows(op)
                   for j, op in enumerate(self.ops))

    def calls(self) -> int:
        return sum(isinstance(x, Call) for b in self.bands for x in b)

    def describe(self) -> str:
        return (f"{len(self.ops)} layers '{self.ops[0].name}' .. '{self.ops[-1].name}', {len(self.bands)} bands of "
                f"{self.band} row(s), {self.mode}")


def make_chain(ops: List[Op], band: int, mode: str) -> Chain:
    """The band schedule of ``ops`` (consecutive in the schedule; the last one is the sink)."""
    assert mode in MODES and band >= 1
    ch = Chain(list(ops), band, mode)
    index = {id(op.result): j for j, op in enumerate(ops)}
    consumers: Dict[int, List[Tuple[int, int]]] = {j: [] for j in range(len(ops))}
    for i, op in enumerate(ops):
        for k, v in enumerate(_data(op)):
            if id(v) in index:
                consumers[index[id(v)]].append((i, k))
    ch.last_use = {j: max((i for i, _ in consumers[j]), default=j) for j in range(len(ops))}
    ch.capacity = {j: 0 for j in range(len(ops) - 1)}
    ch.kept = {j: False for j in range(len(ops) - 1)}
    ch.computed_rows = {j: 0 for j in range(len(ops))}
    if is_reduction(ops[-1]):
        wide = ops[-1].opname == "qnn.avgpool" and acc_wide(ops[-1])
        ch.acc = Value(TensorType((1, ops[-1].result.shape[-1]), "i64" if wide else "i32"))
    if mode == "cache":
        _pull_schedule(ch, index, consumers)
    else:
        _band_schedule(ch, index, consumers)
    if ch.acc is not None:
        ch.bands[-1].append(Finish(len(ops) - 1))
    return ch


def acc_wide(op: Op) -> bool:
    """A qnn global average pool whose division needs 64 bits (layers.py's ``wide``, the same bound)."""
    x = op.operands[0]
    bits = x.type.np_dtype.itemsize * 8
    s = op.attrs.get("out_shift", 0)
    count = x.shape[1] * x.shape[2]
    biggest = (1 << (bits - 1)) * count * (1 << max(-s, 0))
    return 2 * biggest + count * (1 << max(s, 0)) > (1 << 31) - 1


def _call(ch: Chain, index, win, j: int, a: int, c: int) -> Call:
    op = ch.ops[j]
    lo_in, _ = rows_needed(op, a, c)
    data = _data(op)
    in_lo = [win[index[id(v)]] if id(v) in index else 0 for v in data]
    ch.computed_rows[j] += c - a
    return Call(j, a, c, [lo_in] * len(data), in_lo, win[j] if j != len(ch.ops) - 1 else 0)


def _pull_schedule(ch: Chain, index, consumers) -> None:
    """Cache mode: every layer computes ``band`` rows at a time, as late as its consumers allow.

    To compute rows [r, r+band) of a layer, its producers first compute (recursively)
    up to the last row those read; a band buffer then holds the rows from the lowest
    one any consumer still has to read up to the last computed one, sliding down
    (a Move) before new rows are written. No row is computed twice; the sink's
    rows close a band.
    """
    ops, last = ch.ops, len(ch.ops) - 1
    done = {j: 0 for j in range(len(ops))}
    win = {j: 0 for j in range(len(ops))}
    actions: List[object] = []

    def low_needed(j: int) -> int:
        """Lowest row of layer j's result still to be read by a consumer."""
        lows = []
        for i, _ in consumers[j]:
            h = out_rows(ops[i])
            if done[i] < h:
                lows.append(rows_needed(ops[i], done[i], done[i] + 1)[0])
        return min(lows) if lows else done[j]

    def ensure(j: int, hi: int) -> None:
        while done[j] < hi:
            a = done[j]
            c = min(out_rows(ops[j]), a + ch.band)
            _, need_hi = rows_needed(ops[j], a, c)
            for v in _data(ops[j]):
                if id(v) in index:
                    ensure(index[id(v)], need_hi)
            if j != last:
                lo = min(low_needed(j), a)
                keep = done[j] - lo
                if lo > win[j] and keep > 0:
                    actions.append(Move(j, lo - win[j], keep))
                    ch.kept[j] = True
                elif keep > 0:
                    ch.kept[j] = True
                win[j] = lo
                ch.capacity[j] = max(ch.capacity[j], c - lo)
            actions.append(_call(ch, index, win, j, a, c))
            done[j] = c
            if j == last:
                ch.bands.append(list(actions))
                actions.clear()

    ensure(last, out_rows(ops[last]))


def _band_schedule(ch: Chain, index, consumers) -> None:
    """Recompute mode: per band of sink rows, every layer computes all rows its consumers read."""
    ops, last = ch.ops, len(ch.ops) - 1
    win = {j: 0 for j in range(len(ops))}
    height = out_rows(ops[last])
    for b0 in range(0, height, ch.band):
        new: Dict[int, Tuple[int, int]] = {last: (b0, min(height, b0 + ch.band))}
        for j in range(last - 1, -1, -1):
            spans = [rows_needed(ops[i], *new[i]) for i, _ in consumers[j] if new[i][0] < new[i][1]]
            new[j] = (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else (0, 0)
        actions: List[object] = []
        for j in range(len(ops)):
            a, c = new[j]
            if a >= c:
                continue
            if j != last:
                win[j] = a
                ch.capacity[j] = max(ch.capacity[j], c - a)
            actions.append(_call(ch, index, win, j, a, c))
        ch.bands.append(actions)


def chain_units(ch: Chain) -> int:
    """Time units of a chain in the memory plan: one per action (call or slide) of all its bands."""
    return max(1, sum(len(b) for b in ch.bands))


def chain_lifetimes(ch: Chain) -> Dict[int, List[Tuple[int, int]]]:
    """Per intermediate layer, the time units (relative to the chain, inclusive spans) its band buffer is live.

    A buffer that keeps rows from one write to the next (a cache) lives
    through the whole chain. Any other is dead between the last read of what
    one call wrote and the next call that writes it, so it lives in one span
    per write and other buffers may use its bytes in between.
    """
    flat = [a for b in ch.bands for a in b]
    index = {id(op.result): j for j, op in enumerate(ch.ops)}
    writes: Dict[int, List[int]] = {j: [] for j in ch.capacity}
    reads: Dict[int, List[int]] = {j: [] for j in ch.capacity}
    for t, act in enumerate(flat):
        if not isinstance(act, Call):
            continue
        if act.layer in writes:
            writes[act.layer].append(t)
        for v in _data(ch.ops[act.layer]):
            if id(v) in index and index[id(v)] in reads:
                reads[index[id(v)]].append(t)
    whole = [(0, len(flat) - 1)]
    out = {}
    for j in ch.capacity:
        if ch.kept[j] or not writes[j]:
            out[j] = whole
            continue
        spans = []
        bounds = writes[j][1:] + [len(flat)]
        for w, nxt in zip(writes[j], bounds):
            last = max((r for r in reads[j] if w < r < nxt), default=w)
            spans.append((w, last))
        out[j] = spans
    return out


# ---------------------------------------------------------------- choosing chains

def candidate_segments(graph, steps, max_len: int = 24) -> List[Tuple[int, int]]:
    """(first, last) step indices of runs that can stream: every result but the last read only inside."""
    out = []
    outputs = {id(v) for v in graph.outputs}
    for i in range(len(steps)):
        if not streamable(steps[i].op) or is_reduction(steps[i].op):
            continue
        members = set()
        for j in range(i, min(len(steps), i + max_len)):
            op = steps[j].op
            if not streamable(op):
                break
            members.add(id(op))
            if j == i:
                continue
            closed = True
            for s in steps[i:j]:
                v = s.op.result
                if id(v) in outputs or any(id(u) not in members for u, _ in graph.uses(v)):
                    closed = False
                    break
            if closed and out_rows(op) > 1:
                out.append((i, j))
            if is_reduction(op):
                break
    return out


# ---------------------------------------------------------------- pointers and the replay check

def call_operands(ch: Chain, act: Call, offset) -> Tuple[List[Tuple[int, Value, int, int]], Tuple[int, Value, int, int]]:
    """Where a band call reads and writes: ([(arena offset, value, first row, rows)] per data operand, output).

    ``offset(v)`` is the arena offset of value ``v``'s buffer (whole tensor or band buffer).
    """
    op = ch.ops[act.layer]
    lo, hi = rows_needed(op, act.a, act.c)
    ins = []
    for v, read, held in zip(_data(op), act.reads, act.in_lo):
        ins.append((offset(v) + (read - held) * row_bytes(v), v, read, hi - lo if op.opname in WINDOWED else
                    act.c - act.a))
    if is_reduction(op):
        return ins, (offset(ch.acc), ch.acc, 0, 1)
    y = op.result
    return ins, (offset(y) + (act.a - act.out_lo) * row_bytes(y), y, act.a, act.c - act.a)


def replay_chain(ch: Chain, offset, arena_size: int) -> None:
    """Run the chain's actions on byte tags; raise AssertionError when a read finds the wrong bytes.

    Each byte of the arena carries which tensor byte it holds; inputs start
    in place, every call checks that each row it reads holds exactly that
    row of its operand (not clobbered, not slid away) and then tags the rows
    it writes. A plan passes only if no write destroys a byte read later.
    """
    import numpy as np
    tags = np.full(arena_size, -1, np.int64)
    ids: Dict[int, int] = {}

    def tag(v: Value, row: int, rows: int):
        t = ids.setdefault(id(v), len(ids) + 1)
        rb = row_bytes(v)
        return t * (1 << 32) + np.arange(row * rb, (row + rows) * rb, dtype=np.int64)
    for v in ch.inputs:
        tags[offset(v):offset(v) + v.type.size * v.type.np_dtype.itemsize] = tag(v, 0, v.shape[1])
    for band, actions in enumerate(ch.bands):
        for act in actions:
            if isinstance(act, Finish):
                y = ch.sink
                if not np.array_equal(tags[offset(ch.acc):offset(ch.acc) + row_bytes(ch.acc)], tag(ch.acc, 0, 1)):
                    raise AssertionError("the sums of the reduction were overwritten before its end")
                tags[offset(y):offset(y) + row_bytes(y)] = tag(y, 0, 1)
                continue
            if isinstance(act, Move):
                rb = row_bytes(ch.ops[act.tensor].result)
                o = offset(ch.ops[act.tensor].result)
                tags[o:o + act.keep * rb] = tags[o + act.shift * rb:o + (act.shift + act.keep) * rb].copy()
                continue
            ins, (o, y, row, rows) = call_operands(ch, act, offset)
            for k, (p, v, r, n) in enumerate(ins):
                want = tag(v, r, n)
                got = tags[p:p + want.size]
                if got.size != want.size or not np.array_equal(got, want):
                    raise AssertionError(f"band {band}: '{ch.ops[act.layer].name}' operand {k} rows [{r}, {r + n}) "
                                         f"at arena offset {p} do not hold those rows")
            t = tag(y, row, rows)
            tags[o:o + t.size] = t
    y = ch.sink
    o = offset(y)
    if not np.array_equal(tags[o:o + y.type.size * y.type.np_dtype.itemsize], tag(y, 0, y.shape[1])):
        raise AssertionError("the chain's result is not whole at its end")


def sink_displacement(ch: Chain, v: Value) -> Optional[int]:
    """Largest ``sink offset - offset of input v`` that lets the chain write its result over ``v``.

    ``v`` must die at the chain. Each call writing result rows ``[a, c)`` stores
    below byte ``c * row`` of the result; it must stay at or below the lowest
    byte of ``v`` that this call or any later one reads (this call's own reads
    count whole: no assumption on the kernel's loop order). None when the
    result is a reduction's.
    """
    if ch.acc is not None:
        return None
    flat = [a for b in ch.bands for a in b if isinstance(a, Call)]
    big = 1 << 62
    low = [big] * (len(flat) + 1)
    for t in range(len(flat) - 1, -1, -1):
        low[t] = low[t + 1]
        op = ch.ops[flat[t].layer]
        for w, read in zip(_data(op), flat[t].reads):
            if w is v:
                low[t] = min(low[t], read * row_bytes(v))
    last = len(ch.ops) - 1
    rb = row_bytes(ch.sink)
    bound = big
    for t, act in enumerate(flat):
        if act.layer == last:
            bound = min(bound, low[t] - act.c * rb)
    return bound
