"""mixed-bits: choose 8 or 16 bits per layer (Qm.n), promoting where it buys the most SQNR per byte.

Runs on the fake-quant graph between ``propagate-scales`` and ``assign-qmn``
(``qmn{mixed=true}``; ``qcc --bits mixed``). Units of promotion to i16 (q15),
with ``unit=tensor`` (the default): each conv/dense/scale_shift weight tensor,
and each activation group (``activation_groups``); with ``unit=layer``: a
layer's weights together with the group of its output. An op that needs one
storage type in and out (average pool, add, sub, mul, softmax, sigmoid, tanh,
table activations) ties its inputs' and its output's groups into one unit.
Depthwise layers of one shape (DS-CNN's and MobileNet's repeated blocks) run
one shared function in C while their widths agree, so their inputs, their
weights and their outputs are three units (a promotion keeps them one
function instead of splitting off a copy; ML-KWS DS-CNN-S: 12 units instead
of 21, a mix at 29.2 dB instead of 26.2 dB for the same flash).
Tensor units let weights and activations part ways where it pays: measured on
KWS models, 16-bit activations with 8-bit weights buy most of the SQNR for no
flash. The combinations this produces are conv/dense with input, weights and
output each i8 or i16 (all have kernels); a format change between units is a
``qnn.requantize`` (a rounded shift and a saturation), which
``lower-quantized`` inserts.

Score of a choice (a set of promoted units): the fake-quant graph with those
bits, formats settled by ``assign-qmn`` exactly as the pipeline will, run by
the float interpreter on the calibration samples::

    SQNR = 10 log10(sum y_float^2 / sum (y_float - y_fakequant)^2)    over every output

Search (deterministic; lazy greedy): start all-8; each unit's priority is the
output noise power ``sum (y_float - y_fakequant)^2`` its promotion removes, per
byte (bytes = its extra weight bytes + its extra activation bytes, one per
element each). Noise powers of independent roundings add, so a unit's gain
barely depends on the others (a gain in dB would: the noisiest layer masks the
rest). Take the unit of best priority after re-scoring it against the
current choice (ties: graph order), until the SQNR
reaches ``target_sqnr`` or no unit fits the budgets (under a budget, also
when the best promotion gains nothing). With neither a target nor a budget
the search stops at the knee of its curve of noise removed against bytes
spent, or at the all-16-bit SQNR minus 1 dB if that comes first: the knee is
where the best promotion's priority falls below the average of the whole
way from all-8 to all-16::

    priority(best) < (noise(all-8) - noise(all-16)) / (extra bytes of every unit)

Greedy order makes that curve concave (each step removes less noise per
byte than the one before), so this is the point farthest above the chord
from all-8 to all-16: past it, every byte buys less than the average byte
of an all-16 build. (A fixed dB target below all-16 would promote nearly
everything on models whose 16-bit build is far better than they need.)

    flash = weight bytes + bias bytes (4 per output channel) + code (CODE_BYTES per layer,
            once per depthwise shape and widths, + CODE_BYTES_FIXED)
    ram   = the largest sum of integer activation tensors alive at once, a layer's input
            until it runs and its output from then on (an estimate of the planned arena,
            which in-place layers approach; the driver checks the real plan afterwards)

The pass leaves the chosen storage types with insert-qdq's provisional formats,
so the ``assign-qmn`` after it produces exactly the graph that was scored.
The choice and what each promotion bought go to ``context["mixed_bits"]``
(the compile report prints it).

Before (``insert-qdq{bits=8}``)::

    %3 = q.quantize %2 : tensor<16x8x!qa0>           // weights of dense "fc1", i8
    %6 = q.quantize %5 : tensor<1x16x!q.fixed<i8, 4>>  // fc1's output

After ``-p mixed-bits{unit=layer}`` (fc1 promoted)::

    %3 = q.quantize %2 : tensor<16x8x!qa1>           // i16 weights
    %6 = q.quantize %5 : tensor<1x16x!q.fixed<i16, 12>>
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, List

import numpy as np

from qcc.errors import InputError
from qcc.ir.graph import Graph, Op
from qcc.transforms.passmanager import Pass, PassResult, register_pass
from qcc.transforms.pipeline_text import check_option

from ._qmn_util import (FORMAT_PRESERVING, WEIGHTED, activation_groups, channel_frac_bits, context_value,
                        dequantized_source, fixed_type, frac_bits_for, load_samples, per_channel_type,
                        qdq_after, range_of)
from .assign_qmn import AssignQmn
from .insert_qdq import bias_type, weight_frac_bits

# Flash of the specialized C (estimates, not promises), measured with arm-none-eabi-gcc -O3 for
# cortex-m4: a conv layer's function takes 0.4-3.6 KB (ML-KWS DS-CNN-S q7: 3.6 KB for the first conv,
# 2.3 KB per depthwise, 0.35 KB per pointwise), a dense one ~0.4 KB, the API functions (run, quantize
# input, dequantize output) ~1.5 KB. Depthwise layers of one shape and one choice of widths are one
# function (the backend's share.py), so they count once.
CODE_BYTES = {"nn.conv2d": 1800, "nn.scale_shift": 1800, "nn.dense": 400}
CODE_BYTES_FIXED = 1500


def is_depthwise(op: Op) -> bool:
    return op.opname == "nn.conv2d" and 1 < op.attrs.get("group", 1) == op.operands[1].shape[0]


def code_signature(op: Op) -> tuple:
    """What makes two layers' kernels the same C but for their tables: op, shapes, attributes."""
    return (op.opname, op.operands[0].shape, op.operands[1].shape, op.result.shape,
            repr(sorted(op.attrs.items())))


def noise_power(ref: List[np.ndarray], got: List[np.ndarray]) -> float:
    return sum(float(np.sum(np.square(r.astype(np.float64) - g.astype(np.float64)))) for r, g in zip(ref, got))


def to_db(signal: float, noise: float) -> float:
    """SQNR in dB (inf when exact); capped at +-999 so reports stay finite numbers."""
    if noise <= 0.0:
        return 999.0
    return max(-999.0, min(999.0, 10.0 * math.log10(signal / noise))) if signal > 0 else -999.0


def _tensor_name(q: Op) -> str:
    """What a user knows an activation quantize point by: its op name, else the graph input it reads."""
    v = q.operands[0]
    while not q.name and v.producer is not None and v.producer.opname == "q.range":
        v = v.producer.operands[0]
    return q.name or (v.name if v.producer is None else v.producer.name) or "?"


class _Units:
    """Union-find over activation groups (indices 0..G-1) and layers' weight quantize ops (G..)."""

    def __init__(self, graph: Graph, split: bool = False):
        self.groups = activation_groups(graph)
        self.group_of = {id(q): i for i, g in enumerate(self.groups) for q in g}
        self.weights: List[Op] = []      # weight q.quantize per weighted layer
        self.layers: List[Op] = []       # the layer reading it
        parent = list(range(len(self.groups)))

        def find(i):
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        def union(a, b):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

        families: Dict[tuple, List[tuple]] = {}
        for op in graph.ops:
            if op.opname.startswith("q.") or op.opname == "qcc.const":
                continue
            qdq = qdq_after(graph, op.result)
            out = self.group_of.get(id(qdq[1])) if qdq is not None else None
            if op.opname in WEIGHTED:
                qw = dequantized_source(op.operands[1])
                if qw is None or not qw.operands[0].is_constant():
                    continue
                parent.append(len(parent))
                self.weights.append(qw)
                self.layers.append(op)
                if out is not None and not split:
                    union(len(parent) - 1, out)
                if is_depthwise(op):
                    families.setdefault(code_signature(op), []).append(
                        (self.group_of.get(id(dequantized_source(op.operands[0]))), len(parent) - 1, out))
            elif op.opname not in FORMAT_PRESERVING and op.opname != "nn.concat":
                # Kernels that keep the storage type: inputs and output in one unit.
                tied = [self.group_of.get(id(dequantized_source(v))) for v in op.operands if not v.is_constant()]
                tied = [g for g in tied + [out] if g is not None]
                for g in tied[1:]:
                    union(tied[0], g)
        # Depthwise layers of one shape run one shared function while their widths agree (the backend's
        # share.py): their inputs, weights and outputs are promoted together, so a promotion keeps them
        # one function instead of splitting off a copy per width.
        for members in families.values():
            for slot in range(3):
                ids = [m[slot] for m in members if m[slot] is not None]
                for other in ids[1:]:
                    union(ids[0], other)
        roots = sorted({find(i) for i in range(len(parent))})
        index = {r: k for k, r in enumerate(roots)}
        self.unit = [index[find(i)] for i in range(len(parent))]
        self.count = len(roots)
        G = len(self.groups)
        self.names = []
        for k in range(self.count):
            layers = [self.layers[i - G].name + (" (weights)" if split else "")
                      for i in range(G, len(parent)) if self.unit[i] == k]
            acts = [_tensor_name(self.groups[i][0]) for i in range(G) if self.unit[i] == k]
            self.names.append(", ".join(layers) if layers else "tensor " + (acts[0] if acts else "?"))
        # Extra bytes of promoting each unit: one per weight element and per activation element.
        self.weight_elems = [0] * self.count
        self.act_elems = [0] * self.count
        for i, qw in enumerate(self.weights):
            self.weight_elems[self.unit[G + i]] += int(qw.result.type.size)
        for i, g in enumerate(self.groups):
            self.act_elems[self.unit[i]] += sum(int(q.result.type.size) for q in g)

    def group_unit(self, i: int) -> int:
        return self.unit[i]

    def weight_unit(self, i: int) -> int:
        return self.unit[len(self.groups) + i]


@register_pass
@dataclass
class MixedBits(Pass):
    """Choose i8 or i16 per layer by greedy SQNR gain per byte, within flash/RAM budgets.

    Before (all 8-bit, from ``insert-qdq{bits=8}``)::

        %6 = q.quantize %5 : tensor<1x16x!q.fixed<i8, 4>>

    After ``-p mixed-bits{target_sqnr=40}`` a promoted layer's weights and output are i16::

        %6 = q.quantize %5 : tensor<1x16x!q.fixed<i16, 12>>
    """

    name = "mixed-bits"
    target_sqnr: float = 0.0   # dB; 0: the knee of the promotion curve, at most the all-16-bit SQNR minus 1 dB
    max_flash: int = 0         # bytes; 0: no budget
    max_ram: int = 0           # bytes; 0: no budget
    per_channel: bool = True
    search: bool = True        # assign-qmn's format search
    data: str = ""
    samples: int = 16          # assign-qmn's samples
    objective: str = "output"  # assign-qmn's objective: each candidate is scored as the final build assigns it
    eval_samples: int = 64     # calibration samples each candidate is scored on
    unit: str = "tensor"       # tensor: weights and activations apart; layer: a layer's weights + output

    def __post_init__(self):
        owner = "pass 'mixed-bits'"
        check_option(math.isfinite(self.target_sqnr) and self.target_sqnr >= 0, owner, "target_sqnr",
                     "a finite number of dB >= 0 (0: within 1 dB of all-16-bit)", self.target_sqnr)
        check_option(self.max_flash >= 0, owner, "max_flash", ">= 0 bytes (0: no budget)", self.max_flash)
        check_option(self.max_ram >= 0, owner, "max_ram", ">= 0 bytes (0: no budget)", self.max_ram)
        check_option(self.samples >= 1, owner, "samples", ">= 1", self.samples)
        check_option(self.eval_samples >= 1, owner, "eval_samples", ">= 1", self.eval_samples)
        check_option(self.unit in ("layer", "tensor"), owner, "unit", "layer or tensor", self.unit)

    # ------------------------------------------------------------ run
    def run(self, graph: Graph) -> PassResult:
        path = self.data or context_value(self, graph, "calib")
        if not path:
            raise InputError("mixed-bits needs calibration data to score the bit choices (the 'data' option "
                             "or --calib)")
        self.graph, self.units = graph, self._make_units(graph)
        self.samples_in = load_samples(graph, path, self.eval_samples)
        self.reference = self._float_outputs()
        self.signal = sum(float(np.sum(np.square(r.astype(np.float64)))) for r in self.reference)
        self.scores: Dict[FrozenSet[int], float] = {}  # noise power per choice
        u = self.units
        all8, all16 = frozenset(), frozenset(range(u.count))
        s8, s16 = self._db(all8), self._db(all16)
        target = self.target_sqnr if self.target_sqnr > 0 else s16 - 1.0
        flash8, ram8 = self.flash(all8), self.ram(all8)
        for budget, key, need, what in ((self.max_flash, "--max-flash", flash8, "flash"),
                                        (self.max_ram, "--max-ram", ram8, "RAM")):
            if budget and need > budget:
                raise InputError(f"{key} {budget} bytes cannot be met: the all-8-bit build already needs about "
                                 f"{need} bytes of {what} (the smallest qcc can reach)")
        chosen, cur = all8, s8
        steps = []
        priority = {k: self._gain(all8, k) for k in range(u.count)}
        fresh = set(range(u.count))
        # Default stopping rule (no target, no budget): the knee of the promotion curve, where the next
        # promotion removes less output noise per byte than going from all-8 to all-16 does on average.
        knee = not (self.target_sqnr or self.max_flash or self.max_ram)
        total_bytes = sum(u.weight_elems[k] + u.act_elems[k] for k in range(u.count)) + \
            max(0, self.code(all16) - self.code(all8))
        average = (self._score(all8) - self._score(all16)) / max(1, total_bytes)
        stop, stop_priority = "target", None
        while cur < target:
            cands = [k for k in range(u.count) if k not in chosen and self._fits(chosen | {k})]
            if not cands:
                stop = "budget"
                break
            while True:
                best = min(cands, key=lambda k: (-priority[k], k))
                if best in fresh:
                    break
                priority[best] = self._gain(chosen, best)
                fresh.add(best)
            if priority[best] <= 0 and (self.max_flash or self.max_ram):
                stop = "budget"
                break  # under a budget, bytes that buy no SQNR are better left unspent
            if knee and priority[best] < average:
                stop, stop_priority = "knee", priority[best]
                break
            chosen = chosen | {best}
            before, cur = cur, self._db(chosen)
            steps.append({"layer": u.names[best], "sqnr_db": round(cur, 2), "gain_db": round(cur - before, 2),
                          "bytes": self._bytes(chosen - {best}, best), "noise_per_byte": priority[best]})
            fresh = set()
        if self.target_sqnr > 0 and cur < target:
            raise InputError(f"--target-sqnr {self.target_sqnr:g} dB cannot be met"
                             + (" within the budget" if self.max_flash or self.max_ram else "")
                             + f": the best reachable is {cur:.2f} dB ({len(chosen)} of {u.count} units at 16 "
                             f"bits; all-16-bit gives {s16:.2f} dB)")
        self._apply(chosen)
        summary = {"target_sqnr_db": round(target, 2), "sqnr_db": round(cur, 2), "stopped_by": stop,
                   "knee_noise_per_byte": average if knee else None, "stop_noise_per_byte": stop_priority,
                   "all8_sqnr_db": round(s8, 2), "all16_sqnr_db": round(s16, 2),
                   "flash_bytes": self.flash(chosen), "all8_flash_bytes": flash8,
                   "all16_flash_bytes": self.flash(all16),
                   "ram_bytes": self.ram(chosen), "all8_ram_bytes": ram8, "all16_ram_bytes": self.ram(all16),
                   "max_flash": self.max_flash, "max_ram": self.max_ram, "evaluations": len(self.scores),
                   "samples": len(self.samples_in), "steps": steps,
                   "layers": [{"layer": u.names[k], "bits": 16 if k in chosen else 8} for k in range(u.count)]}
        ctx = getattr(self, "context", None)
        if isinstance(ctx, dict):
            ctx["mixed_bits"] = summary
        return PassResult(True, {"units": u.count, "promoted": len(chosen), "evaluations": len(self.scores),
                                 "sqnr_db": round(cur, 2)})

    def _make_units(self, graph: Graph):
        """The units of promotion (a subclass for another scheme gives its own, with the same fields:
        count, names, weight_elems, act_elems; and its own _score, _apply, flash, ram)."""
        return _Units(graph, self.unit == "tensor")

    # ------------------------------------------------------------ scoring
    def _gain(self, chosen: FrozenSet[int], k: int) -> float:
        """Output noise power removed by promoting unit ``k`` on top of ``chosen``, per extra byte (its
        weight and activation bytes, and the code it adds: a depthwise layer no longer shared)."""
        return (self._score(chosen) - self._score(chosen | {k})) / self._bytes(chosen, k)

    def _bytes(self, chosen: FrozenSet[int], k: int) -> int:
        u = self.units
        code = max(0, self.code(chosen | {k}) - self.code(chosen))
        return max(1, u.weight_elems[k] + u.act_elems[k] + code)

    def _db(self, chosen: FrozenSet[int]) -> float:
        return to_db(self.signal, self._score(chosen))

    def _score(self, chosen: FrozenSet[int]) -> float:
        if chosen not in self.scores:
            from qcc.sim.interpreter import run_graph
            import qcc.sim.qmn  # noqa: F401  (kernels of the q.* ops)
            self._apply(chosen)
            assign = AssignQmn(search=self.search, per_channel=self.per_channel, data=self.data,
                               samples=self.samples, objective=self.objective)
            assign.context = getattr(self, "context", None)
            assign.run(self.graph)
            names = self.graph.output_names
            got = [run_graph(self.graph, s)[n] for s in self.samples_in for n in names]
            self.scores[chosen] = noise_power(self.reference, got)
        return self.scores[chosen]

    def _float_outputs(self) -> List[np.ndarray]:
        """The float model's outputs on the samples: a copy of the graph with every fake-quant pair bypassed."""
        from qcc.sim.interpreter import run_graph
        import qcc.sim.qmn  # noqa: F401
        g = self.graph.copy()
        for op in list(g.ops):
            if op.opname == "q.dequantize" and op.operands[0].producer.opname == "q.quantize":
                g.replace_all_uses(op.result, op.operands[0].producer.operands[0])
        return [run_graph(g, s)[n] for s in self.samples_in for n in g.output_names]

    def _apply(self, chosen: FrozenSet[int]) -> None:
        """Storage types of ``chosen`` with insert-qdq's provisional formats (assign-qmn refines them)."""
        u = self.units
        for i, group in enumerate(u.groups):
            bits = 16 if u.group_unit(i) in chosen else 8
            for q in group:
                r = range_of(q)
                n = frac_bits_for(max(abs(r[0]), abs(r[1])) if r else 0.0, bits)
                q.result.type = fixed_type(q.result.shape, bits, n)
        for i, (qw, layer) in enumerate(zip(u.weights, u.layers)):
            bits = 16 if u.weight_unit(i) in chosen else 8
            w = np.asarray(qw.operands[0].constant(), np.float64)
            n_w = weight_frac_bits(w, bits, self.per_channel)
            qw.result.type = per_channel_type(w.shape, f"i{bits}", n_w)
            qb = dequantized_source(layer.operands[2]) if len(layer.operands) > 2 else None
            if qb is not None and qb.operands[0].is_constant():
                src = dequantized_source(layer.operands[0])
                n_x = channel_frac_bits(src.result.type)[0] if src is not None else bits - 1
                qb.result.type = bias_type(qb.result.shape, n_x, n_w)

    # ------------------------------------------------------------ budgets
    def flash(self, chosen: FrozenSet[int]) -> int:
        u = self.units
        total = CODE_BYTES_FIXED + self.code(chosen)
        for i, qw in enumerate(u.weights):
            total += int(qw.result.type.size) * (2 if u.weight_unit(i) in chosen else 1)
            total += 4 * int(qw.result.shape[0])
        return total

    def code(self, chosen: FrozenSet[int]) -> int:
        """Estimated bytes of layer code under ``chosen``: one function per depthwise shape and widths
        (shared), one per other layer."""
        u = self.units
        kernels = {}
        for i, layer in enumerate(u.layers):
            key = (code_signature(layer), self._layer_widths(chosen, i)) if is_depthwise(layer) else i
            kernels[key] = CODE_BYTES[layer.opname]
        return sum(kernels.values())

    def _layer_widths(self, chosen: FrozenSet[int], i: int):
        """(input, weight, output) bits of weighted layer ``i`` under ``chosen``."""
        u = self.units

        def act_bits(q) -> int:
            g = u.group_of.get(id(q)) if q is not None else None
            return 16 if g is not None and u.group_unit(g) in chosen else 8
        layer = u.layers[i]
        out = qdq_after(self.graph, layer.result)
        return (act_bits(dequantized_source(layer.operands[0])), 16 if u.weight_unit(i) in chosen else 8,
                act_bits(out[1] if out is not None else None))

    def ram(self, chosen: FrozenSet[int]) -> int:
        """Peak of the integer activation bytes alive at once, in graph order (no in-place reuse)."""
        u = self.units
        ops = self.graph.ops
        pos = {id(op): i for i, op in enumerate(ops)}
        live = np.zeros(len(ops) + 1, np.int64)
        for i, group in enumerate(u.groups):
            size = 2 if u.group_unit(i) in chosen else 1
            for q in group:
                last = pos[id(q)]
                stack = [q.result]
                while stack:  # the quantized tensor lives until its last reader (through dequantize/moves)
                    v = stack.pop()
                    for user in self.graph.users(v):
                        last = max(last, pos[id(user)])
                        if user.opname in ("q.dequantize", "nn.reshape", "nn.flatten", "nn.squeeze",
                                           "nn.unsqueeze", "nn.identity", "nn.dropout"):
                            stack.append(user.result)
                    if self.graph.is_output(v):
                        last = len(ops)
                live[pos[id(q)]:last + 1] += size * int(q.result.type.size)
        return int(live.max(initial=0))

    def _fits(self, chosen: FrozenSet[int]) -> bool:
        return (not self.max_flash or self.flash(chosen) <= self.max_flash) and \
               (not self.max_ram or self.ram(chosen) <= self.max_ram)
