"""Schedule and static memory plan of a lowered graph.

The C API's tensors are the quantized ones: an input is the result of the
``q.quantize`` that a float graph input feeds (or an integer graph input
itself); an output is the operand of the ``q.dequantize`` that produces a
float graph output (or an integer graph output itself). Everything between is
run by ``steps``, in the graph's topological order.

Memory: every tensor lives in one of the caller's input buffers, the caller's
output buffers, a weight array, or the single static arena. Reshape-like ops
(``ALIAS_OPS``) cost nothing: their result *is* their operand's bytes, so a
buffer's lifetime covers all its aliases. A buffer is live from the step that
writes it to the last step that reads it (both inclusive, so an op's output
never overlaps its inputs). Offsets come from a greedy first fit over buffers
sorted by size (largest first): each takes the lowest 8-byte aligned offset
that overlaps no already placed buffer whose lifetime meets its own.
``arena_size`` is the end of the highest buffer; ``lower_bound`` is the
largest total of simultaneously live bytes (no plan can do better).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from qcc.errors import UnsupportedModelError
from qcc.graph import Graph, Op, Value

ALIAS_OPS = frozenset({"nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze"})
COMPUTE_OPS = frozenset({
    "qnn.conv2d", "qnn.dense", "qnn.add", "qnn.requantize", "qnn.maxpool", "qnn.avgpool", "qnn.lut",
    "qnn.lut_interp", "qnn.softmax", "nn.transpose", "nn.concat", "nn.pad"})
# Affine int8 kernels (layers_s8.py); conv/dense take constant weights and bias like qnn.
S8_OPS = frozenset({"s8.conv2d", "s8.dense", "s8.add", "s8.requantize", "s8.maxpool", "s8.avgpool",
                    "s8.softmax"})
COMPUTE_OPS = COMPUTE_OPS | S8_OPS
WEIGHTED_OPS = ("qnn.conv2d", "qnn.dense", "s8.conv2d", "s8.dense")
ALIGN = 8


@dataclass
class TensorIO:
    """One tensor of the C API: ``value`` is the quantized tensor the caller passes or receives."""

    index: int
    name: str          # graph input/output name (untrusted text)
    value: Value       # the integer tensor
    graph_value: Value  # the graph's own input/output (float when quantized at the boundary)


@dataclass
class Buffer:
    root: Value
    size: int          # bytes
    start: int         # first step that writes it
    end: int           # last step that reads it
    offset: int = -1


@dataclass
class Step:
    """One call in the run function: an op of the graph, or a synthetic copy/dequantize to an output."""

    kind: str                        # op name, or "copy" / "dequantize"
    op: Optional[Op]
    inputs: List[Value]
    output: Optional[Value]          # None for copy/dequantize (they write output ``out_index``)
    out_index: int = -1


@dataclass
class Plan:
    inputs: List[TensorIO]
    outputs: List[TensorIO]
    steps: List[Step]
    buffers: List[Buffer]
    location: Dict[int, Tuple[str, int]] = field(default_factory=dict)  # id(root) -> (kind, index/offset)
    arena_size: int = 0
    lower_bound: int = 0

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
        api = v
        if v.type.is_float:
            if v.producer is None or v.producer.opname != "q.dequantize":
                what = v.producer.describe() if v.producer else "a graph input"
                raise UnsupportedModelError(
                    f"graph output '{name}' is float but comes from {what}, not from q.dequantize; "
                    f"the backend compiles fully lowered integer graphs only")
            boundary.add(v.producer)
            api = v.producer.operands[0]
        if api.type.dtype not in ("i8", "i16", "i32"):
            raise UnsupportedModelError(f"graph output '{name}' has type {api.type}; expected i8/i16/i32")
        outputs.append(TensorIO(j, name, api, v))
    return inputs, outputs, boundary


def make_plan(graph: Graph, float_output: bool = False) -> Plan:
    inputs, outputs, boundary = find_io(graph)
    bad = []
    steps: List[Step] = []
    for op in graph.ops:
        if op in boundary or op.opname == "qcc.const":
            continue
        if op.opname in ALIAS_OPS:
            if len(op.operands) > 1 and not op.operands[1].is_constant():
                bad.append(f"{op.describe()} (run-time shape)")
            continue
        if op.opname not in COMPUTE_OPS:
            bad.append(op.describe())
            continue
        data = op.operands[:1] if op.opname in WEIGHTED_OPS else op.operands
        if any(v.type.is_float for v in list(data) + list(op.results)):
            bad.append(f"{op.describe()} (float tensors)")
            continue
        if op.opname in WEIGHTED_OPS and not all(v.is_constant() for v in op.operands[1:]):
            bad.append(f"{op.describe()} (weights/bias are not constants)")
            continue
        steps.append(Step(op.opname, op, list(data), op.result))
    if bad:
        raise UnsupportedModelError("the cmsis backend cannot compile these ops of graph "
                                    f"@{graph.name}: " + "; ".join(bad))

    location: Dict[int, Tuple[str, int]] = {}
    for io in inputs:
        location.setdefault(id(alias_root(io.value)), ("input", io.index))
    produced = {id(s.output) for s in steps}
    for io in outputs:
        r = alias_root(io.value)
        if not float_output and id(r) in produced and id(r) not in location:
            location[id(r)] = ("output", io.index)
        else:
            steps.append(Step("dequantize" if float_output else "copy", None, [io.value], None, io.index))
    buffers: List[Buffer] = []
    by_root: Dict[int, Buffer] = {}
    for i, s in enumerate(steps):
        for v in s.inputs:
            b = by_root.get(id(alias_root(v)))
            if b is not None:
                b.end = max(b.end, i)
        if s.output is not None and id(s.output) not in location:
            b = Buffer(s.output, _nbytes(s.output), i, i)
            by_root[id(s.output)] = b
            buffers.append(b)
    placed: List[Buffer] = []
    for b in sorted(buffers, key=lambda b: (-b.size, b.start)):
        spans = sorted((p.offset, p.offset + p.size) for p in placed if p.start <= b.end and b.start <= p.end)
        off = 0
        for lo, hi in spans:
            if off + b.size <= lo:
                break
            off = max(off, -(-hi // ALIGN) * ALIGN)
        b.offset = off
        placed.append(b)
        location[id(b.root)] = ("arena", off)
    arena = max((b.offset + b.size for b in buffers), default=0)
    lower = max((sum(b.size for b in buffers if b.start <= i <= b.end) for i in range(len(steps))), default=0)
    return Plan(inputs, outputs, steps, buffers, location, arena, lower)
