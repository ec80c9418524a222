"""lower-quantized: fake-quant float ops -> integer ``qnn.*`` ops (see qcc/ir/ops/qnn.py).

The pass walks the graph in order and keeps, for each float value known to be
``dequantize(q)``, its integer twin ``q``. A float op whose activation inputs
all have twins becomes its integer op, reading the twins:

    conv/dense   out_shift[c] = n_x + n_w[c] - n_y,  bias_shift[c] = n_x + n_w[c] - n_b[c]
                 act relu -> act_min = 0; relu6 -> act_max = min(storage max, 6 * 2^n_y)
    add          n_c = max(n_a, n_b); a_shift = n_c - n_a, b_shift = n_c - n_b, out_shift = n_c - n_y
    max pool     same format in and out (global pools: the whole plane as kernel)
    avg pool     out_shift = n_x - n_y (the mean rounds once into the output format)
    relu, clip   qnn.requantize with out_shift 0 and the clamp [round(lo * 2^n), round(hi * 2^n)]
    reshape, flatten, squeeze, transpose, concat, pad   the same op on integers (pad value * 2^n)
    softmax      qnn.softmax (exp table), output Q0.7 / Q0.15
    sigmoid/tanh qnn.lut (i8) or qnn.lut_interp (i16), output Q0.7 / Q0.15
    lstm, gru    qnn.lstm / qnn.gru: see _lower_recurrent.py
    scale_shift (depthwise 1x1 qnn.conv2d), mul, sub, leaky_relu, hard_sigmoid, hard_swish:
                 see _lower_elementwise.py

Output formats of conv/dense/add come from the fake-quant pair after them; a
``q.quantize`` of a value that already has a twin becomes nothing (same
format) or a ``qnn.requantize`` (shift ``n_src - n_dst``). Weights and biases
are quantized here (round half away from zero). NCHW convs and pools are
wrapped in integer transposes to NHWC (adjacent inverse transposes cancel);
``to-nhwc`` first avoids them. ``float_output`` keeps a trailing softmax,
sigmoid or tanh in float on the dequantized logits. Ops that cannot be lowered
raise ``UnsupportedModelError`` naming the node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Graph, Op, Value
from qcc.ir.ops.qnn_softmax import (lut_interp_table, lut_table, softmax_table, softmax_table_shift)
from qcc.transforms.passmanager import Pass, PassResult, register_pass
from qcc.transforms.rewriter import Rewriter
from qcc.sim.qmn import quantize_array, round_half_away
from qcc.ir.types import TensorType, storage_range

from ._lower_elementwise import ElementwiseLowerings
from ._lower_recurrent import RecurrentLowerings
from ._qmn_util import bits_of, channel_frac_bits, fixed_type, frac_bits, qdq_after

SHAPE_OPS = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose")
NCHW_TO_NHWC, NHWC_TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def _shifts(values):
    values = [int(v) for v in values]
    return values[:1] if len(set(values)) == 1 else values


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@register_pass
@dataclass
class LowerQuantized(ElementwiseLowerings, RecurrentLowerings, Pass):
    """Replace fake-quant float ops by integer qnn ops with shift requantization.

    Before::

        %2 = q.dequantize %1 : tensor<1x4xf32>               // %1: !q.fixed<i8, 5>
        %3 = nn.dense %2, %w, %b {act = "relu"} : tensor<1x3xf32>
        %4 = q.range %3 {max = 2.0, min = 0.0} : tensor<1x3xf32>
        %5 = q.quantize %4 : tensor<1x3x!q.fixed<i8, 6>>

    After ``-p lower-quantized``::

        %3 = qnn.dense %1, %wq, %bq {act_max = 127, act_min = 0, bias_shift = [0],
                                     out_shift = [6]} : tensor<1x3x!q.fixed<i8, 6>>
    """

    name = "lower-quantized"
    float_output: bool = False

    def run(self, graph: Graph) -> PassResult:
        self.graph, self.rw = graph, Rewriter(graph)
        self.twin: Dict[int, Value] = {}
        self.nhwc: Dict[int, Value] = {}  # NCHW twin -> the NHWC value it was transposed from
        lowered = 0
        for op in graph.ops:
            if not graph.contains(op):
                continue
            lowered += self._visit(op)
        for i, v in enumerate(graph.outputs):
            if v.producer is not None and v.producer.opname != "q.dequantize" and id(v) in self.twin:
                t = self.twin[id(v)]
                d = self.rw.create_op("q.dequantize", [t], {}, [TensorType(v.shape)], name=v.producer.name)
                graph.outputs[i] = d.result
        for r in graph.find("q.range"):
            graph.replace_all_uses(r.result, r.operands[0])
        from .dce import DeadCodeElimination
        DeadCodeElimination().run(graph)
        return PassResult(bool(lowered), {"lowered": lowered})

    # ------------------------------------------------------------ dispatch
    def _visit(self, op: Op) -> int:
        name = op.opname
        if name == "q.dequantize":
            self.twin[id(op.result)] = op.operands[0]
            return 0
        if name in ("q.range", "nn.identity", "nn.dropout"):
            if id(op.operands[0]) in self.twin:
                self.twin[id(op.result)] = self.twin[id(op.operands[0])]
            return 0
        if name == "q.quantize":
            return self._quantize(op)
        if name.startswith("f32."):
            return 0  # a float layer (--float-layers): it reads the dequantized values
        if not any(id(v) in self.twin for v in op.operands):
            return 0
        handler = getattr(self, "_" + name.replace(".", "_"), None)
        if handler is None:
            raise UnsupportedModelError(
                f"lower-quantized cannot lower {op.describe()} to integer ops (no Qm.n kernel for "
                f"'{name}'); keep it out of the quantized region or rewrite the model")
        new = handler(op)
        if new is None:
            return 0
        for r, v in zip(op.results, new if isinstance(new, list) else [new]):  # recurrent ops: several
            self.twin[id(r)] = v
        return 1

    def _x(self, op: Op, i: int = 0) -> Value:
        v = op.operands[i]
        if id(v) not in self.twin:
            raise UnsupportedModelError(f"lower-quantized: operand {i} of {op.describe()} is not quantized "
                                        f"(no calibrated range reaches it; run calibrate and insert-qdq first)")
        return self.twin[id(v)]

    def _out_type(self, op: Op) -> TensorType:
        qdq = qdq_after(self.graph, op.result)
        if qdq is None:
            raise UnsupportedModelError(f"lower-quantized: the result of {op.describe()} has no fake-quant "
                                        f"format (run calibrate, insert-qdq and assign-qmn first)")
        return qdq[1].result.type

    def _quantize(self, op: Op) -> int:
        src = op.operands[0]
        dst = op.result.type
        if src.is_constant():
            arr = quantize_array(src.constant(), dst.quant, dst.np_dtype)
            self.graph.replace_all_uses(op.result, self.rw.create_const(arr, src.producer.name, like=op.result))
            return 1
        twin = self.twin.get(id(src))
        if twin is None:
            return 0  # a float -> integer boundary (graph input)
        if twin.type == dst:
            self.graph.replace_all_uses(op.result, twin)
            return 1
        lo, hi = storage_range(dst.dtype)
        rq = self.rw.create_op("qnn.requantize", [twin], {
            "out_shift": [frac_bits(twin.type) - frac_bits(dst)], "act_min": lo, "act_max": hi}, [dst],
            name=op.name, before=op)
        self.graph.replace_all_uses(op.result, rq.result)
        return 1

    def _create(self, opname, operands, attrs, rtype, op: Op) -> Value:
        return self.rw.create_op(opname, operands, attrs, [rtype], name=op.name, before=op).result

    # ------------------------------------------------------------ layout helpers
    def _to_nhwc(self, v: Value, op: Op) -> Value:
        if id(v) in self.nhwc:
            return self.nhwc[id(v)]
        n, c, h, w = v.shape
        return self._create("nn.transpose", [v], {"perm": NCHW_TO_NHWC}, v.type.with_shape((n, h, w, c)), op)

    def _from_nhwc(self, v: Value, op: Op) -> Value:
        n, h, w, c = v.shape
        out = self._create("nn.transpose", [v], {"perm": NHWC_TO_NCHW}, v.type.with_shape((n, c, h, w)), op)
        self.nhwc[id(out)] = v
        return out

    def _nhwc_in(self, op: Op) -> Value:
        x = self._x(op)
        return self._to_nhwc(x, op) if op.attrs.get("layout", "NHWC") == "NCHW" else x

    def _nhwc_out(self, op: Op, y: Value) -> Value:
        return self._from_nhwc(y, op) if op.attrs.get("layout", "NHWC") == "NCHW" else y

    @staticmethod
    def _nhwc_type(op: Op, t: TensorType) -> TensorType:
        if op.attrs.get("layout", "NHWC") == "NCHW":
            n, c, h, w = op.result.shape
            return t.with_shape((n, h, w, c))
        return t.with_shape(op.result.shape)

    # ------------------------------------------------------------ requant parameters
    def _clamp(self, op: Op, t: TensorType):
        lo, hi = storage_range(t.dtype)
        act = op.attrs.get("act", "none")
        if act == "relu":
            return 0, hi
        if act == "relu6":
            return 0, min(hi, int(round_half_away(6.0 * 2.0 ** frac_bits(t))))
        if act != "none":
            raise UnsupportedModelError(f"lower-quantized cannot fuse act '{act}' of {op.describe()} into a "
                                        f"shift requantization (only relu and relu6); run legalize-qmn first "
                                        f"(part of the qmn pipeline) to split it into its own op")
        return lo, hi

    def _weighted(self, op: Op, x: Value, out_t: TensorType):
        w = self._x(op, 1)
        if not w.is_constant():
            raise UnsupportedModelError(f"lower-quantized: weights of {op.describe()} are not constant")
        n_x, n_y = frac_bits(x.type), frac_bits(out_t)
        n_w = channel_frac_bits(w.type) * (w.shape[0] if len(channel_frac_bits(w.type)) == 1 else 1)
        attrs = {"out_shift": _shifts([n_x + nw - n_y for nw in n_w])}
        operands = [x, w]
        if len(op.operands) > 2:
            b = self._x(op, 2)
            n_b = channel_frac_bits(b.type) * (b.shape[0] if len(channel_frac_bits(b.type)) == 1 else 1)
            attrs["bias_shift"] = _shifts([n_x + nw - nb for nw, nb in zip(n_w, n_b)])
            operands.append(b)
        attrs["act_min"], attrs["act_max"] = self._clamp(op, out_t)
        return operands, attrs

    # ------------------------------------------------------------ handlers
    def _nn_conv2d(self, op: Op) -> Value:
        out_t = self._out_type(op)
        x = self._nhwc_in(op)
        operands, attrs = self._weighted(op, x, out_t)
        if op.attrs["layout"] == "NCHW":
            w = operands[1]
            arr = np.ascontiguousarray(w.constant().transpose(0, 2, 3, 1))
            operands[1] = self.rw.create_const(arr, w.producer.name, like=w, before=op)
        for k in ("strides", "pads", "dilations", "group"):
            attrs[k] = op.attrs[k]
        y = self._create("qnn.conv2d", operands, attrs, self._nhwc_type(op, out_t), op)
        return self._nhwc_out(op, y)

    def _nn_dense(self, op: Op) -> Value:
        out_t = self._out_type(op)
        operands, attrs = self._weighted(op, self._x(op), out_t)
        return self._create("qnn.dense", operands, attrs, out_t.with_shape(op.result.shape), op)

    def _nn_add(self, op: Op) -> Value:
        a, b = self._x(op, 0), self._x(op, 1)
        if a.shape != b.shape:
            raise UnsupportedModelError(f"lower-quantized: {op.describe()} broadcasts {list(a.shape)} with "
                                        f"{list(b.shape)}; qnn.add needs equal shapes")
        return self._aligned_pair("qnn.add", a, b, op)

    def _pool(self, op: Op, opname: str, kernel, strides, pads, extra) -> Value:
        x = self._nhwc_in(op)
        out_t = x.type
        if opname == "qnn.avgpool" and qdq_after(self.graph, op.result) is not None:
            out_t = self._out_type(op)
            extra = {**extra, "out_shift": frac_bits(x.type) - frac_bits(out_t)}
        lo, hi = storage_range(out_t.dtype)
        attrs = {"kernel": list(kernel), "strides": list(strides), "pads": list(pads), "act_min": lo,
                 "act_max": hi, **extra}
        y = self._create(opname, [x], attrs, self._nhwc_type(op, out_t), op)
        return self._nhwc_out(op, y)

    def _window_pool(self, op: Op, opname: str, extra) -> Value:
        a = op.attrs
        if a.get("dilations", [1, 1]) != [1, 1]:
            raise UnsupportedModelError(f"lower-quantized: dilated pooling in {op.describe()} is not supported")
        if a["ceil_mode"]:
            h, w = (op.operands[0].shape[2:] if a["layout"] == "NCHW" else op.operands[0].shape[1:3])
            floor_h = (h + a["pads"][0] + a["pads"][2] - a["kernel"][0]) // a["strides"][0] + 1
            floor_w = (w + a["pads"][1] + a["pads"][3] - a["kernel"][1]) // a["strides"][1] + 1
            oh, ow = (op.result.shape[2:] if a["layout"] == "NCHW" else op.result.shape[1:3])
            if (oh, ow) != (floor_h, floor_w):
                raise UnsupportedModelError(f"lower-quantized: ceil_mode pooling in {op.describe()} needs "
                                            f"partial windows, which qnn pools do not have")
        return self._pool(op, opname, a["kernel"], a["strides"], a["pads"], extra)

    def _nn_maxpool(self, op: Op) -> Value:
        return self._window_pool(op, "qnn.maxpool", {})

    def _nn_avgpool(self, op: Op) -> Value:
        return self._window_pool(op, "qnn.avgpool", {"count_include_pad": op.attrs["count_include_pad"]})

    def _global(self, op: Op, opname: str) -> Value:
        s = op.operands[0].shape
        hw = s[2:] if op.attrs["layout"] == "NCHW" else s[1:3]
        return self._pool(op, opname, hw, [1, 1], [0, 0, 0, 0], {})

    def _nn_global_avgpool(self, op: Op) -> Value:
        return self._global(op, "qnn.avgpool")

    def _nn_global_maxpool(self, op: Op) -> Value:
        return self._global(op, "qnn.maxpool")

    def _shape_op(self, op: Op) -> Value:
        x = self._x(op)
        rest = list(op.operands[1:])
        return self._create(op.opname, [x] + rest, dict(op.attrs), x.type.with_shape(op.result.shape), op)

    _nn_reshape = _nn_flatten = _nn_squeeze = _nn_unsqueeze = _nn_transpose = _nn_gather = _shape_op

    def _nn_pad(self, op: Op) -> Value:
        x = self._x(op)
        attrs = dict(op.attrs)
        value = int(round_half_away(op.attrs["value"] * 2.0 ** frac_bits(x.type)))
        lo, hi = storage_range(x.type.dtype)
        attrs["value"] = float(min(max(value, lo), hi))
        return self._create("nn.pad", [x], attrs, x.type.with_shape(op.result.shape), op)

    def _nn_concat(self, op: Op) -> Value:
        # A constant part (a recurrence's zero initial state at step 0) takes the format of the first
        # quantized part.
        first = next(self.twin[id(v)] for v in op.operands if id(v) in self.twin)
        xs = [self._x(op, i) if not (v.is_constant() and id(v) not in self.twin) else
              self.rw.create_const(quantize_array(v.constant(), first.type.quant, first.type.np_dtype),
                                   v.producer.name, like=first, before=op)
              for i, v in enumerate(op.operands)]
        t = xs[0].type
        for i, x in enumerate(xs):
            if x.type.dtype != t.dtype or x.type.quant != t.quant:
                lo, hi = storage_range(t.dtype)
                xs[i] = self._create("qnn.requantize", [x], {"out_shift": [frac_bits(x.type) - frac_bits(t)],
                                                              "act_min": lo, "act_max": hi},
                                     t.with_shape(x.shape), op)
        return self._create("nn.concat", xs, dict(op.attrs), t.with_shape(op.result.shape), op)

    def _requant_clamp(self, op: Op, lo_real: float, hi_real: float) -> Value:
        x = self._x(op)
        n = frac_bits(x.type)
        lo, hi = storage_range(x.type.dtype)
        if np.isfinite(lo_real):
            lo = max(lo, int(round_half_away(lo_real * 2.0 ** n)))
        if np.isfinite(hi_real):
            hi = min(hi, int(round_half_away(hi_real * 2.0 ** n)))
        return self._create("qnn.requantize", [x], {"out_shift": [0], "act_min": lo, "act_max": max(lo, hi)},
                            x.type, op)

    def _nn_relu(self, op: Op) -> Value:
        return self._requant_clamp(op, 0.0, np.inf)

    def _nn_clip(self, op: Op) -> Value:
        return self._requant_clamp(op, op.attrs["min"], op.attrs["max"])

    def _trailing(self, op: Op) -> bool:
        """With float_output, a unit-output op whose result only reaches graph outputs stays float."""
        if not self.float_output:
            return False
        qdq = qdq_after(self.graph, op.result)
        if qdq is not None:
            self.graph.replace_all_uses(qdq[2].result, op.result)
        return True

    def _unit(self, op: Op, make) -> Optional[Value]:
        if self._trailing(op):
            return None
        x = self._x(op)
        bits = bits_of(x.type.dtype)
        out_t = fixed_type(op.result.shape, x.type.dtype, bits - 1)
        opname, attrs = make(x, frac_bits(x.type), bits)
        return self._create(opname, [x], attrs, out_t, op)

    def _nn_softmax(self, op: Op) -> Optional[Value]:
        if op.attrs["axis"] not in (-1, op.result.type.rank - 1):
            raise UnsupportedModelError(f"lower-quantized: {op.describe()} is over axis {op.attrs['axis']}; "
                                        f"integer softmax runs over the last axis")

        def make(x, n, bits):
            ts = softmax_table_shift(x.type.dtype, n)
            return "qnn.softmax", {"axis": -1, "table": softmax_table(n, ts), "table_shift": ts}
        return self._unit(op, make)

    def _pointwise(self, op: Op, fn) -> Optional[Value]:
        def make(x, n, bits):
            if bits == 8:
                return "qnn.lut", {"table": lut_table(fn, n, 7)}
            return "qnn.lut_interp", {"table": lut_interp_table(fn, n, 15)}
        return self._unit(op, make)

    def _nn_sigmoid(self, op: Op) -> Optional[Value]:
        return self._pointwise(op, _sigmoid)

    def _nn_tanh(self, op: Op) -> Optional[Value]:
        return self._pointwise(op, np.tanh)

