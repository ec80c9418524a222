"""quantize-recurrent: calibrated float ``nn.lstm`` / ``nn.gru`` -> ``s8.lstm`` / ``s8.gru``.

Runs in ``int8-calibrated`` after ``quantize-affine``, which has given the
op's input x a ``DQ(Q(x))`` pair and each result that is used a ``Q`` from its
calibrated range. The scales follow TFLite's integer LSTM (8x8_16, no layer
norm, ``quantize_lstm`` in its converter):

    x: the int8 parameters quantize-affine chose (s_x, zp_x)
    h (= every row of y): y's int8 parameters (s_h, zp_h); a used final h is
        rescaled (s8.requantize) to its own calibrated parameters when they differ; a read final
        cell state (ONNX Y_c) is the kernel's int16 cell state at 2^p, dequantized to float
    weights: symmetric int8 per gate matrix, s_w[k] = max|W_k| / 127 (likewise R_k)
    gate inputs: Q3.12 (2^-12), so input_mult[k] = s_x s_w[k] / 2^-12,
        recurrent_mult[k] = s_h s_r[k] / 2^-12; gate outputs Q0.15
    LSTM bias: round((Wb_k + Rb_k) / (s_x s_w[k])), int32, on the input path
    LSTM cell state: int16 at 2^p, p = ceil(log2(max |c|)) - 15 over every step of the
        calibration data (the float kernel's trace); forget mult 2^-15, input-to-cell
        2^(-30 - p), output 2^-30 / s_h; cell_clip 32767 (ONNX has no clip here)
    LSTM peepholes: symmetric int16 per gate, s_p[k] = max|P_k| / 32767; mult s_p[k] 2^p / 2^-12
    GRU biases: round(Wb_k / (s_x s_w[k])) on the input path, round(Rb_k / (s_h s_r[k]))
        on the recurrent path; output mult 2^-30 / s_h (qcc/ir/ops/qnn_s8_recurrent.py)

The cell range needs calibration data (``data``, else the context's ``calib``):
the pass runs the graph on the first ``samples`` samples and the float LSTM with
its trace (as ``calibrate-recurrent`` does for Qm.n, which widens a q.range instead).

Before (``-p quantize-recurrent{data=calib.npz}``)::

    %1 = q.dequantize %0 : tensor<49x10xf32>
    %2, %3, %4 = nn.lstm %1, %w, %r, %b, %h0, %c0 {hidden_size = 16} : ...
    %5 = q.quantize %2 : tensor<49x16x!q.uniform<i8:f32, 0.0078:3>>

After::

    %2, %3, %4 = s8.lstm %0, %wq, %rq, %bq, %h0q, %c0q {cell_scale_power = -14, ...}
        : tensor<49x16x!q.uniform<i8:f32, 0.0078:3>>, tensor<1x16xi8>, tensor<1x16xi16>
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from qcc.errors import InputError, UnsupportedModelError
from qcc.ir.graph import Graph, Op, Value
from qcc.ir.types import TensorType, UniformQuant
from qcc.quant.calibration_data import iter_calibration_batches
from qcc.sim.interpreter import run_graph_all
from qcc.sim.recurrent import lstm_float
from qcc.sim.s8 import quantize_multiplier
from qcc.transforms.passmanager import Pass, PassResult, register_pass
from qcc.transforms.pipeline_text import check_option

from .quantize_affine import round_half_away, symmetric_weights

RECURRENT = ("nn.lstm", "nn.gru")
GATE_SCALE = 2.0 ** -12          # Q3.12 gate inputs
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _i8_quant(v: Value) -> Optional[UniformQuant]:
    q = v.type.quant
    return q if isinstance(q, UniformQuant) and v.type.dtype == "i8" else None


def _dequantized_input(x: Value) -> Optional[Value]:
    p = x.producer
    if p is None or p.opname != "q.dequantize" or _i8_quant(p.operands[0]) is None:
        return None
    return p.operands[0]


def _sole_quantize(graph: Graph, v: Value) -> Optional[Op]:
    users = graph.users(v)
    if len(users) == 1 and users[0].opname == "q.quantize" and _i8_quant(users[0].result) and not graph.is_output(v):
        return users[0]
    return None


def _read(graph: Graph, v: Value) -> bool:
    """Does anything read ``v``, looking through the Q/DQ pairs quantize-affine put on every result?"""
    if graph.is_output(v):
        return True
    return any(u.opname not in ("q.quantize", "q.dequantize") or _read(graph, u.result) for u in graph.users(v))


MOVES = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose")


def _read_as_float(graph: Graph, v: Value) -> bool:
    """Is ``v`` read only through layout ops ending in q.dequantize (a float output)?"""
    if graph.is_output(v):
        return False
    return all(u.opname == "q.dequantize" or (u.opname in MOVES and _read_as_float(graph, u.result))
               for u in graph.users(v))


def _retype_moves(graph: Graph, v: Value, dtype: str, quant) -> None:
    for u in graph.users(v):
        if u.opname in MOVES:
            u.result.type = TensorType(u.result.shape, dtype, quant)
            _retype_moves(graph, u.result, dtype, quant)


def _erase_unread(graph: Graph, v: Value):
    for u in graph.users(v):
        for r in u.results:
            _erase_unread(graph, r)
        graph.erase_op(u)


def _mult(m: float):
    return quantize_multiplier(float(m))


def _per_gate(w: np.ndarray, gates: int):
    """Symmetric int8 per gate block: (int8 [gates*H, K], scales [gates])."""
    blocks = np.split(np.asarray(w, np.float32), gates)
    qs, ss = zip(*(symmetric_weights(b, per_channel=False) for b in blocks))
    return np.concatenate(qs), np.array([float(np.asarray(s).reshape(-1)[0]) for s in ss])


def _bias(b: np.ndarray, scales: np.ndarray) -> np.ndarray:
    per_row = np.repeat(scales, b.size // scales.size)
    return np.clip(round_half_away(np.asarray(b, np.float64) / per_row), INT32_MIN, INT32_MAX).astype(np.int32)


def _cell_power(cmax: float) -> int:
    """TFLite's power-of-two cell scale: 2^p with 2^(p + 15) >= max |c|. p stays in [-30, 2]: at most
    2^2 keeps the tanh rescale inside int32, at least 2^-30 keeps i * g's multiplier 2^(-30 - p) <= 1."""
    if not cmax > 0 or not math.isfinite(cmax):
        return -15
    return int(min(2, max(-30, math.ceil(math.log2(cmax)) - 15)))


def _peepholes(p: np.ndarray, hidden: int, cell_power: int):
    """TFLite's cell-to-gate weights: each gate's vector (i, o, f) symmetric int16 at max|p_k| / 32767,
    and its product with the cell state (2^cell_power) brought to the gate's 2^-12."""
    qs, mults = [], []
    # A product of two int16 reaches 2^30: its multiplier must stay below 1 (no left shift), so a
    # peephole that large against the cell scale takes a coarser scale (its term saturates the gate anyway).
    coarsest = 0.999 * GATE_SCALE / 2.0 ** cell_power
    for k in range(3):
        pk = p[k * hidden:(k + 1) * hidden]
        scale = min(float(np.abs(pk).max(initial=0.0)) / 32767, coarsest) or 1.0
        qs.append(np.clip(round_half_away(pk / scale), -32767, 32767).astype(np.int16))
        mults.append(_mult(scale * 2.0 ** cell_power / GATE_SCALE))
    return np.concatenate(qs), mults


@register_pass
@dataclass
class QuantizeRecurrent(Pass):
    """Lower calibrated nn.lstm / nn.gru (between quantize-affine's DQ and Q) to s8.lstm / s8.gru."""

    name = "quantize-recurrent"
    data: str = ""
    batch: int = 32
    samples: int = 256   # calibration samples whose cell states set the LSTM cell scale

    def __post_init__(self):
        check_option(self.batch >= 1, "pass 'quantize-recurrent'", "batch", ">= 1", self.batch)
        check_option(self.samples >= 1, "pass 'quantize-recurrent'", "samples", ">= 1", self.samples)

    def run(self, graph: Graph) -> PassResult:
        ops = [op for op in graph.ops if op.opname in RECURRENT]
        if not ops:
            return PassResult(False, {})
        for op in ops:
            why = self._why_not(graph, op)
            if why:
                raise UnsupportedModelError(f"{graph.source_name(op)}: cannot quantize to int8: {why}")
        lstms = [op for op in ops if op.opname == "nn.lstm"]
        cmax = self._cell_ranges(graph, lstms) if lstms else {}
        stats = {"lstm": 0, "gru": 0}
        for op in ops:
            self._lower(graph, op, cmax.get(id(op), 0.0))
            stats["lstm" if op.opname == "nn.lstm" else "gru"] += 1
        return PassResult(True, stats)

    @staticmethod
    def _why_not(graph: Graph, op: Op) -> str:
        if _dequantized_input(op.operands[0]) is None:
            return "its input has no calibrated int8 range"
        if any(v.constant() is None for v in op.operands[1:]):
            return "its weights, bias or initial states are not constants"
        if _sole_quantize(graph, op.results[0]) is None:
            return "its output sequence y is not quantized to int8 (used in float, or a graph output of its own)"
        for r in op.results[1:]:
            if graph.users(r) and _sole_quantize(graph, r) is None:
                return "a final state is used in float"
        q_c = _sole_quantize(graph, op.results[2]) if op.opname == "nn.lstm" else None
        if q_c is not None and not _read_as_float(graph, q_c.result):
            return ("its final cell state (ONNX Y_c) feeds integer layers: Y_c keeps the int16 cell state's "
                    "scale, which only a float output (or a layout op before one) reads")
        return ""

    # ------------------------------------------------------------ calibration of the cell state
    def _cell_ranges(self, graph: Graph, lstms: List[Op]) -> Dict[int, float]:
        context = {**(getattr(graph, "context", None) or {}), **(getattr(self, "context", None) or {})}
        data = self.data or context.get("calib") or ""
        if not data:
            raise InputError(f"{graph.source_name(lstms[0])}: the int8 LSTM's cell-state scale needs calibration "
                             f"data: pass --calib (or quantize-recurrent{{data=PATH}})")
        cmax = {id(op): 0.0 for op in lstms}
        seen = 0
        for batch in iter_calibration_batches(data, graph, self.batch):
            n = len(next(iter(batch.values())))
            for j in range(min(n, self.samples - seen)):
                env = run_graph_all(graph, {k: a[j] for k, a in batch.items()})
                for op in lstms:
                    trace: dict = {}
                    lstm_float(*(env[v] for v in op.operands), trace=trace)
                    c = np.abs(np.asarray(trace.get("c", np.zeros(1)), np.float64))
                    c0 = np.abs(np.asarray(env[op.operands[5]], np.float64))
                    cmax[id(op)] = max(cmax[id(op)], float(c.max(initial=0.0)), float(c0.max(initial=0.0)))
            seen += min(n, self.samples - seen)
            if seen >= self.samples:
                break
        return cmax

    # ------------------------------------------------------------ the rewrite
    def _lower(self, graph: Graph, op: Op, cmax: float):
        lstm = op.opname == "nn.lstm"
        gates = 4 if lstm else 3
        hidden = op.attrs["hidden_size"]
        x = _dequantized_input(op.operands[0])
        qx = _i8_quant(x)
        q_y = _sole_quantize(graph, op.results[0])
        qh = q_y.result.type.quant
        w, r, b = (np.asarray(v.constant(), np.float32) for v in op.operands[1:4])
        w_q, s_w = _per_gate(w, gates)
        r_q, s_r = _per_gate(r, gates)
        sx, sh = float(np.float32(qx.scale)), float(np.float32(qh.scale))
        in_m = [_mult(sx * s / GATE_SCALE) for s in s_w]
        rec_m = [_mult(sh * s / GATE_SCALE) for s in s_r]
        out_m = _mult(2.0 ** -30 / sh)
        attrs = dict(hidden_size=hidden, input_zp=qx.zero_point, output_zp=qh.zero_point,
                     input_multiplier=[m for m, _ in in_m], input_shift=[s for _, s in in_m],
                     recurrent_multiplier=[m for m, _ in rec_m], recurrent_shift=[s for _, s in rec_m],
                     output_multiplier=out_m[0], output_shift=out_m[1])
        h0 = np.asarray(op.operands[4].constant(), np.float64)
        h0_q = np.clip(round_half_away(h0 / sh) + qh.zero_point, -128, 127).astype(np.int8)
        operands = [x, graph.add_const(w_q, name=f"{op.name}.w.q"), graph.add_const(r_q, name=f"{op.name}.r.q")]
        if lstm:
            bias = _bias(b[:4 * hidden] + b[4 * hidden:], sx * s_w)
            p = _cell_power(cmax)
            c0 = np.asarray(op.operands[5].constant(), np.float64)
            c0_q = np.clip(round_half_away(c0 / 2.0 ** p), -32768, 32767).astype(np.int16)
            fm, fs = _mult(2.0 ** -15)
            im, is_ = _mult(2.0 ** (-30 - p))
            attrs.update(cell_scale_power=p, cell_clip=32767, forget_multiplier=fm, forget_shift=fs,
                         input_to_cell_multiplier=im, input_to_cell_shift=is_)
            operands += [graph.add_const(bias, name=f"{op.name}.b.q"), graph.add_const(h0_q, name=f"{op.name}.h0.q"),
                         graph.add_const(c0_q, name=f"{op.name}.c0.q")]
            if len(op.operands) > 6:
                p_q, mults = _peepholes(np.asarray(op.operands[6].constant(), np.float64), hidden, p)
                attrs.update(peephole_multiplier=[m for m, _ in mults], peephole_shift=[s for _, s in mults])
                operands.append(graph.add_const(p_q, name=f"{op.name}.p.q"))
            types = [TensorType(op.results[0].shape, "i8", qh), TensorType((1, hidden), "i8", qh),
                     TensorType((1, hidden), "i16", UniformQuant(2.0 ** p, 0))]
        else:
            bias = np.concatenate([_bias(b[:3 * hidden], sx * s_w), _bias(b[3 * hidden:], sh * s_r)])
            attrs["linear_before_reset"] = op.attrs["linear_before_reset"]
            operands += [graph.add_const(bias, name=f"{op.name}.b.q"), graph.add_const(h0_q, name=f"{op.name}.h0.q")]
            types = [TensorType(op.results[0].shape, "i8", qh), TensorType((1, hidden), "i8", qh)]
        new = graph.add_op("s8." + op.opname.split(".")[1], operands, attrs, types, name=op.name)
        graph.move_after_seq(new, op)
        graph.replace_all_uses(q_y.result, new.results[0])
        graph.erase_op(q_y)
        self._final_h(graph, op, new)
        if lstm:
            self._final_c(graph, op, new)
        for res in op.results:   # the Q/DQ pairs of final states nothing reads
            _erase_unread(graph, res)
        graph.erase_op(op)

    @staticmethod
    def _final_c(graph: Graph, op: Op, new: Op):
        """A read Y_c: the kernel's int16 cell state at 2^p, dequantized where the graph reads it
        (in place of the int8 format quantize-affine gave it: exact, and no int16 -> int8 op needed)."""
        q = _sole_quantize(graph, op.results[2])
        if q is None or not _read(graph, q.result):
            return
        c = new.results[2]
        _retype_moves(graph, q.result, c.type.dtype, c.type.quant)
        graph.replace_all_uses(q.result, c)
        graph.erase_op(q)

    @staticmethod
    def _final_h(graph: Graph, op: Op, new: Op):
        q = _sole_quantize(graph, op.results[1])
        if q is None or not _read(graph, q.result):
            return
        want = q.result.type.quant
        h = new.results[1]
        have = h.type.quant
        if (have.scale, have.zero_point) != (want.scale, want.zero_point):
            m, s = quantize_multiplier(have.scale / want.scale)
            h = graph.add_op("s8.requantize", [h], dict(input_zp=have.zero_point, output_zp=want.zero_point,
                                                        multiplier=[m], shift=[s], act_min=-128, act_max=127),
                             [TensorType(h.shape, "i8", want)], name=op.name).result
        graph.replace_all_uses(q.result, h)
        graph.erase_op(q)
