"""Record calibrated activation ranges as ``q.range`` ops.

The pass runs the float graph on calibration data, collects statistics of
every tensor a quantized graph will store, picks a range per tensor with a
method of ``qcc.quant.calibration`` and inserts ``q.range {min, max}`` right after
the tensor (all its uses, graph outputs included, move to the ``q.range``).

Tensors that get a range: graph inputs and float results of compute ops.
Not ranged: constants and values computed only from constants, values
already followed by (or produced by) a ``q.range`` (so the pass is
idempotent), and results of data-movement ops that keep their input's
values (``SHARES_INPUT_RANGE``: reshape, transpose, pad, ...), which reuse the
quantization of their input.

Per-tensor overrides ``NAME=M`` set the range ``[-M, M]`` (the ARM KWS
``--act-max conv1=32`` flow). NAME is the producing op's name or the value's
name, or a unique trailing ``/``-separated part of one (``conv2d/BiasAdd``).

Where the options come from: ``data`` (else the context key ``calib``, the
CLI's ``--calib``), ``act_max`` (merged over the context key ``act_max``, a
dict name -> float, which the CLI fills from ``--act-max``). The context is
the dict ``pass.context``, else ``graph.context``, when the driver sets one.
Existing ``q.range`` ops are never changed, overrides included.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np

from qcc.quant.calibration import METHODS, collect_stats, compute_range, describe_formats, load_act_max
from qcc.errors import InputError
from qcc.ir.graph import Graph, Value
from qcc.transforms.passmanager import Pass, PassResult, register_pass
from qcc.transforms.pipeline_text import check_option

SHARES_INPUT_RANGE = frozenset({
    "nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose", "nn.identity",
    "nn.dropout", "nn.pad", "nn.slice", "nn.gather", "nn.cast", "nn.shape"})


def _constant_values(graph: Graph) -> set:
    """ids of values computed from constants alone."""
    const = set()
    for op in graph.ops:
        if op.opname == "qcc.const" or (op.operands and all(id(v) in const for v in op.operands)):
            const.update(id(r) for r in op.results)
    return const


def _is_ranged(graph: Graph, v: Value) -> bool:
    return ((v.producer is not None and v.producer.opname == "q.range")
            or any(u.opname == "q.range" for u in graph.users(v)))


def range_targets(graph: Graph) -> List[Value]:
    """The values ``calibrate`` gives a range, in graph order (ranged ones excluded)."""
    const = _constant_values(graph)
    candidates = list(graph.inputs)
    for op in graph.ops:
        dialect = op.opname.split(".", 1)[0]
        if dialect in ("qcc", "q") or op.opname in SHARES_INPUT_RANGE:
            continue
        candidates += op.results
    return [v for v in candidates
            if v.type.is_float and id(v) not in const and not _is_ranged(graph, v)]


def _names(v: Value) -> List[str]:
    names = [v.name] if v.name else []
    if v.producer is not None and v.producer.name and len(v.producer.results) == 1:
        names.append(v.producer.name)
    return names


def _resolve(graph: Graph, name: str, targets: List[Value]) -> Value:
    """The tensor an override name refers to (exact name, else a unique '/'-suffix)."""
    everything = [v for v in list(graph.inputs) + [r for op in graph.ops for r in op.results]
                  if v.producer is None or v.producer.opname not in ("qcc.const", "q.range")]
    exact = [v for v in everything if name in _names(v)]
    if not exact:
        exact = list({id(v): v for v in everything
                      if any(n.endswith("/" + name) for n in _names(v))}.values())
        if len(exact) > 1:
            raise InputError(f"act-max name '{name}' matches {len(exact)} tensors: "
                             + ", ".join(repr(_names(v)[-1]) for v in exact[:6]) + "; give a longer name")
    if not exact:
        known = sorted({n for v in targets for n in _names(v)})
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        close += [n for n in known if name.lower() in n.lower() and n not in close][:5 - len(close)]
        hint = f"; close matches: {', '.join(repr(n) for n in close)}" if close else ""
        raise InputError(f"act-max names an unknown tensor '{name}'{hint}")
    v = exact[0]
    if v.producer is not None and v.producer.opname in SHARES_INPUT_RANGE:
        raise InputError(f"act-max '{name}' names a {v.producer.opname} result, which shares the range "
                         f"of its input; set the override on the op producing that input")
    return v


@register_pass
@dataclass
class Calibrate(Pass):
    """Run the float graph on calibration data and record each stored tensor's range as q.range.

    Before (``-p 'calibrate{act_max=[x=4,c1=8]}'``, or data from ``--calib``)::

        %0 = nn.conv2d %x, %w, %b {...} loc("c1") : tensor<1x4x4x2xf32>
        qcc.return %0 : tensor<1x4x4x2xf32>

    After::

        %0 = q.range %x {max = 4.0, min = -4.0} : tensor<1x4x4x1xf32>
        %1 = nn.conv2d %0, %w, %b {...} loc("c1") : tensor<1x4x4x2xf32>
        %2 = q.range %1 {max = 8.0, min = -8.0} : tensor<1x4x4x2xf32>
        qcc.return %2 : tensor<1x4x4x2xf32>
    """

    name = "calibrate"
    method: str = "minmax"
    p: float = 99.99
    bits: int = 8
    data: str = ""
    jobs: int = 1
    batch: int = 32
    symmetric: bool = True
    bins: int = 2048
    act_max: List[str] = field(default_factory=list)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"calibrate: unknown method '{self.method}'; choose one of {', '.join(METHODS)}")
        owner = "pass 'calibrate'"
        check_option(0 < self.p <= 100, owner, "p", "a percentile in (0, 100]", self.p)
        check_option(self.bits in (8, 16), owner, "bits", "8 or 16", self.bits)
        check_option(self.jobs >= 0, owner, "jobs", ">= 0 (0 = one process per CPU)", self.jobs)
        check_option(self.batch >= 1, owner, "batch", ">= 1", self.batch)
        check_option(self.bins >= 2, owner, "bins", ">= 2", self.bins)

    def _method_options(self) -> Dict[str, object]:
        if self.method == "percentile":
            return {"p": self.p, "symmetric": self.symmetric}
        if self.method in ("entropy", "mse"):
            return {"bits": self.bits}
        return {}

    def run(self, graph: Graph) -> PassResult:
        # The driver hands settings down on the pass or on the graph; the pass's own wins.
        context = {**(getattr(graph, "context", None) or {}), **(getattr(self, "context", None) or {})}
        targets = range_targets(graph)
        if not targets:
            return PassResult(False, {"ranges": 0, "overrides": 0, "samples": 0})
        overrides = dict(load_act_max(context.get("act_max")))
        overrides.update(load_act_max(self.act_max))
        forced: Dict[int, float] = {}
        for name, m in overrides.items():
            forced[id(_resolve(graph, name, targets))] = m
        need = [v for v in targets if id(v) not in forced]
        data = self.data or context.get("calib") or ""
        ranges: Dict[int, tuple] = {}
        samples = 0
        if need:
            if not data:
                first = ", ".join(repr((_names(v) or ["?"])[-1]) for v in need[:3])
                raise InputError(f"no calibration data for {len(need)} tensor(s) (e.g. {first}): pass --calib "
                                 f"with {describe_formats()} (or calibrate{{data=PATH}}), or give every "
                                 f"tensor a range with --act-max NAME=MAX")
            # An explicit calibrate{jobs=N} wins over the driver's --jobs; 0 means every CPU.
            jobs = self.jobs if self.jobs != 1 else int(context.get("jobs") or 1)
            jobs = jobs or os.cpu_count() or 1
            stats = collect_stats(graph, data, need, batch_size=self.batch, jobs=jobs, bins=self.bins)
            samples = stats[0].count // max(1, int(np.prod(need[0].shape)))
            opts = self._method_options()
            ranges = {id(v): compute_range(s, self.method, **opts) for v, s in zip(need, stats)}
        for v in targets:
            lo, hi = (-forced[id(v)], forced[id(v)]) if id(v) in forced else ranges[id(v)]
            self._insert_range(graph, v, lo, hi)
        return PassResult(True, {"ranges": len(targets), "overrides": len(forced), "samples": samples})

    @staticmethod
    def _insert_range(graph: Graph, v: Value, lo: float, hi: float):
        op = graph.add_op("q.range", [v], {"min": float(lo), "max": float(hi)})
        graph.replace_all_uses(v, op.result)
        graph.set_operand(op, 0, v)  # replace_all_uses redirected the q.range's own operand too
        if v.producer is not None:
            graph.move_after_seq(op, v.producer)  # print right after the producer

