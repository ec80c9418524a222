"""assign-qmn: settle the Qm.n format of every fake-quant point.

Activations (one n per ``activation_groups`` group, see propagate-scales)
start from the range rule ``n0 = W-1 - ceil(log2(max|x|))`` on the group's
calibrated range. With ``search`` and calibration data, the ``objective``
option decides among nearby n (ties keep the smaller n):

* ``output`` (default): first ``consumer`` below, then one sweep in graph
  order in which each 8-bit group tries ``n-2 .. n+2`` with every other
  group fixed and takes the n with the least relative squared error of the
  network's outputs over the calibration samples (for a softmax output: of
  its logits), ``sum (y - y_q)^2 / sum y^2``, when that error is below
  ``OUTPUT_MARGIN`` (0.8, ~1 dB) times the current one.
* ``consumer``: groups settled in graph order, each by the relative error it
  leaves at its consumers' outputs (the values entering the next fake-quant
  points), with the formats before it already in; candidates ``n0-1 .. n0+3``.
  See ``_qmn_search.py``.
* ``input``: ``consumer`` for the groups that quantize a graph input (whose
  range may be set by one loud feature, e.g. MFCC c0), ``tensor`` for the rest.
* ``tensor``: the seed search: each candidate ``n0-1 .. n0+2`` is scored by
  the squared error of fake-quantizing the group's own calibration values,
  ``sum (x - clamp(round(x * 2^n)) * 2^-n)^2``.
* ``range``: the range rule alone (as ``search=false``).

``output``, ``consumer`` and ``input`` cost about (8-bit groups) x (graph ops)
kernel runs; past ``SEARCH_BUDGET`` (a Scan unrolled over many steps) the
groups take ``tensor`` instead, and the report says so.

The consumer searches score 8-bit groups; 16-bit groups use ``tensor``. The
input of a softmax/sigmoid/tanh is scored after the function under
``tensor``, ``sum (f(x) - f(fq(x)))^2`` over ``n0-1 .. n0+4``. Outputs of
softmax, sigmoid and tanh are pinned to Q0.(W-1). 16-bit activations (other
than softmax/sigmoid/tanh inputs) then drop one more fractional bit as a
guard against values beyond the calibration range (at 16 bits the resolution
lost is negligible; saturation is not). Every decision (rule n, chosen n and
the error that chose it) is kept in ``graph.qmn_choices`` for the report.

Weights: ``n_c = Ww-1 - ceil(log2(max|w_c|))`` per output channel (or one n
per tensor), with ``search`` the best of ``n_c-1 .. n_c+2`` by squared error
(n_c-1 wins when max|w_c| is a power of two, which n_c would saturate).
Biases: i32 at the accumulator precision ``n_x + n_c``; when a bias would not
fit int32 there, it is stored ``s_c`` bits coarser and shifted left by
``bias_shift = s_c`` at run time (``n_b = n_x + n_c - s_c``).

Accumulator width: int32 when the worst-case sum fits it at these weight
formats (check-quantized's proof). Otherwise (a 16-bit input or 16-bit weights
over a long dot product, e.g. a dense layer reading 3920 features) int32 would
need n_c lowered until it fits, which on Arm's ML-KWS CNNs left q15 at ~38 dB;
when that costs a 16-bit weight format more than 6 bits (or an 8-bit one any),
the layer keeps n_c and accumulates in int64 instead, marked by an ``i64``
bias (a layer without a bias still lowers n_c).

Calibration data come from the ``data`` option or the pipeline context key
``calib``; without data the range rule alone decides (``search`` is skipped).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from qcc.ir.graph import Graph, Op
from qcc.ir.types import FixedPoint
from qcc.transforms.passmanager import Pass, PassResult, register_pass
from qcc.transforms.pipeline_text import check_option

from ._qmn_util import (UNIT_OUTPUT, WEIGHTED, activation_groups, bits_of, channel_frac_bits,
                        context_value, dequantized_source, fixed_type, frac_bits_for, load_samples,
                        per_channel_type, range_of)
from qcc.quant.weights import degenerate_channels

from .insert_qdq import weight_frac_bits

INT32_MAX = (1 << 31) - 1
# int32 may cost a 16-bit weight format up to 6 bits (at least 10 significant bits stay: per-layer weight
# noise ~60 dB down, and the blocked SMLAD kernels keep running; DS-CNN's 3x3 and 1x1 layers lose 3-5);
# beyond that (CNN's 1120- and 3920-long dot products lose 7-9), or any bit of an 8-bit weight, the layer
# accumulates in int64 instead.
WIDE_AFTER_BITS_LOST = {16: 6, 8: 0}
WIDE_BIAS_MAX = 1 << 46   # an int64-accumulator layer's bias at accumulator precision, far inside int64
# How activation formats are searched: by the error at their consumers' outputs, by the tensor's own
# squared error, or not at all (the range rule n = W-1 - ceil(log2(max|x|))).
# The output sweep moves a format only when the output error drops below this fraction of the current
# one (~1 dB): smaller gains on a few calibration samples did not carry over to unseen ones (README).
# 8-bit groups x graph ops past which the consumer/output searches give way to ``tensor``
# (ML-KWS / MLPerf Tiny CNNs: ~2,000; a 25-step unrolled LSTMCell Scan: ~1,250,000).
SEARCH_BUDGET = 200_000
OUTPUT_MARGIN = 0.8
OBJECTIVES = ("output", "consumer", "input", "tensor", "range")


def _reads_input(graph: Graph, group) -> bool:
    """Whether the group quantizes a graph input (``input``: the consumer search for it alone)."""
    ins = {id(v) for v in graph.inputs}
    return any(id(q.operands[0]) in ins or (q.operands[0].producer is not None and q.operands[0].producer.opname
               == "q.range" and id(q.operands[0].producer.operands[0]) in ins) for q in group)


def _db(rel_err: float) -> str:
    """A relative squared error as an SQNR in dB."""
    return "SQNR inf dB" if rel_err <= 0 else f"SQNR {-10 * np.log10(rel_err):.1f} dB"


def _value_name(v) -> str:
    """How the report names a value: its producer op's name (q.range looked through) or its own."""
    if v.producer is not None and v.producer.opname == "q.range":
        v = v.producer.operands[0]
    return (v.producer.name if v.producer is not None and v.producer.name else v.name) or "?"


def _tensor_name(q: Op) -> str:
    return _value_name(q.operands[0])


def record_choices(graph: Graph, choices: List[Dict]):
    """Keep the format decisions on the graph for the report (``qcc --report``)."""
    graph.qmn_choices = list(choices)


def fake_quant_error(x: np.ndarray, n: int, bits: int) -> float:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = np.clip(np.round(x * 2.0 ** n), lo, hi)
    return float(np.sum((x - q * 2.0 ** -n) ** 2))


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


UNIT_FNS = {"nn.softmax": _softmax, "nn.sigmoid": lambda x: 1 / (1 + np.exp(-x)), "nn.tanh": np.tanh}


def unit_output_error(x: np.ndarray, n: int, bits: int, fn) -> float:
    """Squared error after softmax/sigmoid/tanh: only what survives the function matters (clipping very
    negative logits costs nothing after a softmax, resolution near the top does)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = np.clip(np.round(x * 2.0 ** n), lo, hi) * 2.0 ** -n
    return float(np.sum((fn(x) - fn(q)) ** 2))


def _feeds_unit(graph: Graph, group):
    """The float function of a softmax/sigmoid/tanh fed by a single-member group, else None."""
    if len(group) != 1:
        return None
    deq = [u for u in graph.users(group[0].result) if u.opname == "q.dequantize"]
    users = [u for d in deq for u in graph.users(d.result)]
    if len(users) == 1 and users[0].opname in UNIT_FNS:
        if users[0].opname == "nn.softmax" and users[0].attrs["axis"] not in (-1, users[0].result.type.rank - 1):
            return None
        return UNIT_FNS[users[0].opname]
    return None


def _top_cap(ranges, bits: int):
    """The largest n that still holds the calibrated maximum of a softmax's input (None: no maximum > 0).

    The largest logits decide the top-1 class: saturating them makes near-equal classes tie and
    changes probabilities near 1. Clipping the low end only loses classes with probability ~0, so
    a softmax input may trade its negative range for resolution but never its positive one.
    """
    hi = max((r[1] for r in ranges), default=0.0)
    return frac_bits_for(hi, bits) if hi > 0 else None


def _capped(candidates, top):
    """The candidate n at most ``top`` (the smallest candidate if none is)."""
    kept = [c for c in candidates if top is None or c <= top]
    return kept or [min(candidates)]


def _cap_note(top) -> str:
    return "" if top is None else f"; at most n={top}, which holds the largest calibrated logit"


def _unit_output(graph: Graph, q: Op) -> bool:
    v = q.operands[0]
    if v.producer is not None and v.producer.opname == "q.range":
        v = v.producer.operands[0]
    return v.producer is not None and v.producer.opname in UNIT_OUTPUT


@register_pass
@dataclass
class AssignQmn(Pass):
    """Choose the fractional bits n of every activation, weight and bias (Qm.n formats).

    Before (``insert-qdq`` guessed n = 5 from the range [-1, 3])::

        %1 = q.quantize %0 : tensor<1x4x!q.fixed<i8, 5>>

    After ``-p assign-qmn{search=false}`` the same rule confirms n = 5; with
    search and calibration data, n = 4..7 may win by squared error.
    """

    name = "assign-qmn"
    search: bool = True
    per_channel: bool = True
    data: str = ""
    samples: int = 64
    objective: str = "output"

    def __post_init__(self):
        check_option(self.samples >= 1, "pass 'assign-qmn'", "samples", ">= 1", self.samples)

    def run(self, graph: Graph) -> PassResult:
        check_option(self.objective in OBJECTIVES, "pass 'assign-qmn'", "objective", " or ".join(OBJECTIVES),
                     self.objective)
        groups = activation_groups(graph)
        searching = self.search and self.objective != "range"
        path = (self.data or context_value(self, graph, "calib")) if searching else None
        consumer = bool(path) and self.objective in ("output", "consumer", "input")
        self.budget_note = ""
        work = sum(bits_of(g[0].result.type.dtype) == 8 for g in groups) * len(graph.ops)
        if consumer and work > SEARCH_BUDGET:
            # The consumer/output searches run part of the graph per candidate of every group: quadratic
            # in the graph's size. A Scan unrolled over 25+ steps makes thousands of ops (hours of search),
            # so past the budget each group takes the cheap tensor objective instead.
            consumer = False
            self.budget_note = f"; {self.objective} search skipped ({work:,} group x op units > {SEARCH_BUDGET:,})"
        acts = self._activations(graph, groups, path) if path and not consumer else {}
        changed = 0
        weights = 0
        for op in graph.ops:
            if op.opname in WEIGHTED:
                changed += self._weights(op)  # consumer search measures with the final weights' formats
                weights += 1
        run = None
        if consumer:
            from ._qmn_search import FakeQuantRun
            run = FakeQuantRun(graph, load_samples(graph, path, self.samples))
            first = {id(g[0]): min(run.index[id(q)] for q in g) for g in groups}
            groups = sorted(groups, key=lambda g: first[id(g[0])])
        self.choices: List[Dict] = []
        for group in groups:
            bits = bits_of(group[0].result.type.dtype)
            why = "range rule"
            if any(_unit_output(graph, q) for q in group):
                n0 = n = bits - 1
                why = "pinned: softmax/sigmoid/tanh output"
            else:
                ranges = [r for r in (range_of(q) for q in group) if r is not None]
                m = max((max(abs(lo), abs(hi)) for lo, hi in ranges), default=0.0)
                n0 = n = frac_bits_for(m, bits)
                fn = _feeds_unit(graph, group)
                top = _top_cap(ranges, bits) if fn is UNIT_FNS["nn.softmax"] else None
                if run is not None and bits == 8 and (self.objective != "input" or _reads_input(graph, group)):
                    run.advance(min(run.index[id(q)] for q in group))
                    n, why = self._consumer_choice(run, group, n0, top)
                else:
                    n, why = self._tensor_choice(run, acts, group, n0, bits, fn, top)
                    why += self.budget_note
                if bits == 16 and fn is None:
                    n -= 1  # a guard bit: resolution is plentiful, inputs beyond the calibration range are not
                    why += "; one guard bit (16-bit)"
            for q in group:
                if q.result.type.quant.frac_bits != n:
                    q.result.type = fixed_type(q.result.shape, q.result.type.dtype, n)
                    changed += 1
            self.choices.append({"tensors": [_tensor_name(q) for q in group], "bits": bits,
                                 "rule_n": n0, "n": n, "why": why})
        if run is not None and self.objective == "output":
            changed += self._refine_by_output(graph, run, groups)
        for op in graph.ops:
            if op.opname in WEIGHTED:
                changed += self._weights(op)
        record_choices(graph, self.choices)
        return PassResult(bool(changed), {"groups": len(groups), "layers": weights, "changed": changed,
                                          "searched": bool(acts) or consumer})

    def _refine_by_output(self, graph: Graph, run, groups) -> int:
        """One sweep in graph order: each 8-bit group tries n-2 .. n+2 around its consumer choice, the
        others fixed, and keeps the n with the least relative error of the network's outputs."""
        from ._qmn_search import output_values
        run.reset()
        measured, last = output_values(graph), len(run.ops) - 1
        changed, known = 0, None
        for group, choice in zip(groups, self.choices):
            bits, n1 = choice["bits"], choice["n"]
            if bits != 8 or choice["why"].startswith("pinned"):
                continue
            run.advance(min(run.index[id(q)] for q in group))
            dtype = group[0].result.type.dtype

            def set_n(c):
                for q in group:
                    q.result.type = fixed_type(q.result.shape, dtype, c)

            # the current formats' cost is the previous group's winner: computed once
            costs = {} if known is None else {n1: known}
            for c in range(n1 - 2, n1 + 3):
                if c not in costs:
                    costs[c] = run.cost(group, set_n, c, last, measured)
            n = min(costs, key=lambda c: (costs[c], abs(c - n1), c))
            if costs[n] > OUTPUT_MARGIN * costs[n1]:
                n = n1  # too small a gain to trust beyond the calibration samples
            known = costs[n]
            set_n(n)
            choice["n"] = n
            choice["why"] += f"; network output {_db(costs[n])}" + \
                ("" if n == n1 else f" with n={n} ({_db(costs[n1])} with n={n1})")
            changed += n != n1
        return changed

    @staticmethod
    def _tensor_choice(run, acts, group, n0: int, bits: int, fn, top=None):
        """The n with the least squared error of the group's own values (after the softmax/sigmoid/tanh
        they feed, if any; at most ``top``, see ``_top_cap``); the range rule's n0 without data."""
        if run is not None:  # 16-bit under the consumer objective: values as the formats so far make them
            run.advance(max(run.index[id(q)] for q in group))
            xs = [run.cur[id(q.operands[0])] for q in group]
        else:
            xs = [acts[id(q)] for q in group if id(q) in acts]
        if xs and fn is not None:
            x = xs[0].astype(np.float64)
            return (min(_capped(range(n0 - 1, n0 + 5), top), key=lambda c: (unit_output_error(x, c, bits, fn), c)),
                    "least error after the softmax/sigmoid/tanh" + _cap_note(top))
        if xs:
            x = np.concatenate([a.ravel() for a in xs]).astype(np.float64)
            return (min(range(n0 - 1, n0 + 3), key=lambda c: (fake_quant_error(x, c, bits), c)),
                    "least squared error of the tensor itself")
        return n0, "range rule (no calibration data or no search)"

    @staticmethod
    def _consumer_choice(run, group, n0: int, top=None):
        """The n in n0-1 .. n0+3 (at most ``top``) with the least relative error at the group's consumers
        (see _qmn_search)."""
        last, measured = run.horizon(group)
        dtype = group[0].result.type.dtype

        def set_n(c):
            for q in group:
                q.result.type = fixed_type(q.result.shape, dtype, c)

        costs = {c: run.cost(group, set_n, c, last, measured) for c in _capped(range(n0 - 1, n0 + 4), top)}
        n = min(costs, key=lambda c: (costs[c], c))
        set_n(n)
        gain = "" if n == n0 or n0 not in costs else f" (range rule n={n0}: {_db(costs[n0])})"
        where = ", ".join(sorted({_value_name(v) for v in measured}))
        where = where if len(where) <= 60 else where[:57] + "..."
        return n, f"least error at consumers ({where}): {_db(costs[n])}{gain}{_cap_note(top)}"

    def _activations(self, graph: Graph, groups, path: str) -> Dict[int, np.ndarray]:
        """Real values entering each activation quantize op on the calibration samples."""
        from qcc.sim.interpreter import run_graph_all
        import qcc.sim.qmn  # noqa: F401  (kernels of the q.* ops)
        wanted = {id(q): q.operands[0] for g in groups for q in g}
        seen: Dict[int, List[np.ndarray]] = {k: [] for k in wanted}
        for sample in load_samples(graph, path, self.samples):
            env = run_graph_all(graph, sample)
            for k, v in wanted.items():
                seen[k].append(env[v])
        return {k: np.stack(v) for k, v in seen.items() if v}

    @staticmethod
    def _fit_accumulator(w: np.ndarray, n_w: List[int], bits: int, x_dtype: str, bias=None, n_x: int = 0,
                         n_y=None) -> List[int]:
        """Lower n_c until the worst-case accumulator fits int32, so check-quantized's proof holds
        (matters for 16x16-bit layers): xmax * sum|w_q| below 2^30 (half the int32 range), and with
        the bias at accumulator precision (|b| * 2^(n_x + n_c), whatever bias_shift stores it with)
        and the rounding term 2^(out_shift - 1) added, below 2^31. A large bias thus lowers the
        weights' format instead of overflowing at run time."""
        xmax = 1 << (bits_of(x_dtype) - 1)
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        flat = w.reshape(w.shape[0], -1)
        out = []

        def too_big(c: int, n: int) -> bool:
            weights = xmax * np.abs(np.clip(np.round(flat[c] * 2.0 ** n), lo, hi)).sum()
            if weights >= 1 << 30:
                return True
            if bias is None:
                return False
            shift = n_x + n - n_y if n_y is not None else 30
            rounding = 2.0 ** (shift - 1) if shift > 0 else 0.0
            return weights + np.ceil(abs(bias[c]) * 2.0 ** (n_x + n)) + rounding >= float(1 << 31)

        for c, n in enumerate(n_w):
            while n > -16 and too_big(c, n):
                n -= 1
            out.append(n)
        return out

    def _weights(self, op: Op) -> int:
        changed = 0
        qw = dequantized_source(op.operands[1])
        if qw is None or not qw.operands[0].is_constant():
            return 0
        w = np.asarray(qw.operands[0].constant(), np.float64)
        bits = bits_of(qw.result.type.dtype)
        n_w = weight_frac_bits(w, bits, self.per_channel)
        if self.search:
            flat = w.reshape(w.shape[0], -1)
            if self.per_channel:
                # A degenerate channel keeps its safe format: its weights are zeros in any of them.
                dead = degenerate_channels(w)
                n_w = [n if dead[i] else min(range(n - 1, n + 3), key=lambda c: (fake_quant_error(flat[i], c, bits), c))
                       for i, n in enumerate(n_w)]
            else:
                best = min(range(n_w[0] - 1, n_w[0] + 3), key=lambda c: (fake_quant_error(flat, c, bits), c))
                n_w = [best] * len(n_w)
        src = dequantized_source(op.operands[0])
        qb = dequantized_source(op.operands[2]) if len(op.operands) > 2 else None
        wide = False
        if src is not None:
            bias = None
            if qb is not None and qb.operands[0].is_constant():
                bias = np.asarray(qb.operands[0].constant(), np.float64).reshape(-1)
                bias = np.broadcast_to(bias, (w.shape[0],))
            outs = [u for u in op.graph.users(op.result) if u.opname == "q.quantize"]
            n_y = outs[0].result.type.quant.frac_bits if len(outs) == 1 and \
                isinstance(outs[0].result.type.quant, FixedPoint) else None
            fitted = self._fit_accumulator(w, n_w, bits, src.result.type.dtype, bias,
                                           channel_frac_bits(src.result.type)[0], n_y)
            # Where int32 would cost weight bits (16-bit input or weights over a long dot product), the
            # layer keeps them and accumulates in int64 instead: an i64 bias says so (qcc/ir/ops/qnn.py).
            lost = max((a - b for a, b in zip(n_w, fitted)), default=0)
            wide = bias is not None and lost > WIDE_AFTER_BITS_LOST.get(bits, 0)
            n_w = list(n_w) if wide else fitted
        new_t = per_channel_type(w.shape, qw.result.type.dtype, n_w)
        if new_t != qw.result.type:
            qw.result.type = new_t
            changed += 1
        if qb is not None and src is not None and qb.operands[0].is_constant():
            n_x = channel_frac_bits(src.result.type)[0]
            b = np.abs(np.asarray(qb.operands[0].constant(), np.float64))
            n_b = []
            limit = WIDE_BIAS_MAX if wide else INT32_MAX // 4  # int32 headroom: weights take up to 2^30
            for bc, nc in zip(b, n_w):
                n = n_x + nc
                while bc * 2.0 ** n > limit and n > -31:
                    n -= 1
                n_b.append(n)
            new_b = per_channel_type(b.shape, "i64" if wide else "i32", n_b)
            if new_b != qb.result.type:
                qb.result.type = new_b
                changed += 1
        return changed
