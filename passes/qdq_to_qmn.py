"""qdq-to-qmn: read a QDQ model's power-of-two scales as Qm.n formats.

A QDQ model whose scales are all powers of two with zero point 0 (what a
Qm.n fine-tune, or qcc's own ``--emit-onnx-qdq`` of a ``--scheme qmn``
compile, produces) already states every format: a QuantizeLinear/
DequantizeLinear pair with scale ``s = 2^-n`` and zero point 0 on an
``iW`` tensor is ``!q.fixed<iW, n>`` (Qm.n with ``m = W-1-n``), because

    real = s * (q - 0) = q * 2^-n.

Activations (per tensor) become ``FixedPoint(n)``; per-axis weights and
biases keep ``PerAxisQuant`` with their power-of-two scales (the per-channel
Qm.n form ``lower-quantized`` reads), per-tensor ones become ``FixedPoint``.
The graph is then exactly the fake-quant picture ``assign-qmn`` leaves, and
``lower-quantized`` turns it into ``qnn.*`` ops with
``out_shift = n_x + n_w - n_y`` and ``bias_shift = n_x + n_w - n_b``.

Integer shape ops between a quantize and its dequantize (an exporter's
``Q -> Transpose -> Reshape -> DQ``) move after the dequantize, where they
act on reals; moving values commutes with ``q * 2^-n``, so nothing changes
numerically, and every quantize then meets its dequantize directly (the
pairing ``lower-quantized`` reads output formats from). For the same reason
a quantize after float shape ops (``avgpool -> Flatten -> Q``) gets a copy
on the layer's own result, so the layer rounds once into the format.

A MatMul on dequantized constant weights ``[K, N]`` (with a following Add
of a bias vector) becomes ``nn.dense`` on the transposed weights, as
canonicalize makes of a Gemm.

A float bias constant of a conv/dense whose input and weights are Qm.n (how
PyTorch exports fake-quantized layers: QDQ on activations and weights only)
is quantized like ``assign-qmn`` quantizes biases, i32 at the accumulator
precision ``n_b = n_x + n_w[c]``, coarser only when ``|b| * 2^n_b`` would
pass 2^29 (``lower-quantized`` then shifts it left by ``n_x + n_w - n_b``).

A scale that is not a power of two (or a zero point other than 0) is an
error naming the tensor. With ``round_scales`` the scale is replaced by the
nearest power of two in the log domain, ``n = round(-log2 s)``; constant
data are requantized to the new scale, ``q' = clamp(round_half_away(q * s *
2^n))``, and every rounded tensor is listed in the pass statistics
(``rounded``: ``name: scale -> 2^-n``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Graph, Value
from qcc.ir.types import FixedPoint, PerAxisQuant, TensorType, UniformQuant, storage_range
from qcc.sim.qmn import round_half_away
from qcc.transforms.passmanager import Pass, PassResult, register_pass, register_pipeline

from ._qmn_util import WEIGHTED, channel_frac_bits, per_channel_type

QMN_DTYPES = ("i8", "i16", "i32")
MOVES = ("nn.reshape", "nn.flatten", "nn.transpose", "nn.squeeze", "nn.unsqueeze")
BIAS_LIMIT = (2 ** 31 - 1) // 4  # as assign-qmn: the weighted sum may take the rest of int32
SHAPE_OPS = ("nn.transpose", "nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze")


def pow2_exponent(scale: float) -> Optional[int]:
    """n with scale == 2^-n exactly, else None."""
    mantissa, exp = math.frexp(scale)
    return 1 - exp if mantissa == 0.5 else None


def nearest_exponent(scale: float) -> int:
    """n minimizing |log2(scale) + n| (ties to the finer format)."""
    return int(math.floor(-math.log2(scale) + 0.5))


@register_pass
@dataclass
class QdqToQmn(Pass):
    """Turn power-of-two, zero-point-0 QDQ types into Qm.n formats.

    Before::

        %0 = q.quantize %x : tensor<1x4x!q.uniform<i8:f32, 0.0625:0>>
        %1 = q.dequantize %0 : tensor<1x4xf32>

    After ``-p qdq-to-qmn``::

        %0 = q.quantize %x : tensor<1x4x!q.fixed<i8, 4>>
        %1 = q.dequantize %0 : tensor<1x4xf32>
    """

    name = "qdq-to-qmn"
    round_scales: bool = False

    def run(self, graph: Graph) -> PassResult:
        self.rounded: List[str] = []
        changed = self._sink_shape_ops(graph) + self._quantize_before_shape_ops(graph)
        changed += sum(self._matmul_to_dense(graph, op) for op in graph.find("nn.matmul"))
        for v in self._quantized_values(graph):
            before = len(self.rounded)
            new = self._qmn_type(v)
            if new != v.type:
                if v.is_constant() and len(self.rounded) > before:
                    self._requantize_const(v, new)
                v.type = new
                changed += 1
        biases = sum(self._quantize_float_bias(graph, op) for op in graph.ops if op.opname in WEIGHTED)
        changed += biases + sum(self._widen_bias(op) for op in graph.ops if op.opname in WEIGHTED)
        return PassResult(bool(changed), {"converted": changed, "biases": biases, "rounded": list(self.rounded)})

    @staticmethod
    def _sink_shape_ops(graph: Graph) -> int:
        """dequantize(shape_op(q)) -> shape_op(dequantize(q)), last ops first so chains move whole."""
        moved = 0
        for op in reversed(graph.ops):
            if op.opname not in SHAPE_OPS or op.result.type.quant is None or graph.is_output(op.result):
                continue
            users = graph.users(op.result)
            if not users or any(u.opname != "q.dequantize" for u in users):
                continue
            src = op.operands[0]
            dq = graph.add_op("q.dequantize", [src], {}, [TensorType(src.shape)], name=users[0].name)
            moved_op = graph.add_op(op.opname, [dq.result] + list(op.operands[1:]), dict(op.attrs),
                                    [TensorType(op.result.shape)], name=op.name)
            for u in users:
                graph.replace_all_uses(u.result, moved_op.result)
                graph.erase_op(u)
            graph.erase_op(op)
            moved += 1
        return moved

    @staticmethod
    def _quantize_before_shape_ops(graph: Graph) -> int:
        """layer -> float shape ops -> quantize: quantize the layer's result itself (same per-tensor
        format), so the layer rounds once into it (PyTorch exports ``avgpool -> Flatten -> Q``)."""
        added = 0
        for q in graph.find("q.quantize"):
            if isinstance(q.result.type.quant, PerAxisQuant):
                continue
            v, chain = q.operands[0], []
            while (v.producer is not None and v.producer.opname in SHAPE_OPS and graph.users(v) == [chain[-1] if chain
                   else q] and not graph.is_output(v)):
                chain.append(v.producer)
                v = v.producer.operands[0]
            if not chain or v.producer is None or v.producer.opname in ("q.dequantize", "qcc.const"):
                continue
            if graph.users(v) != [chain[-1]] or graph.is_output(v):
                continue
            q2 = graph.add_op("q.quantize", [v], {}, [q.result.type.with_shape(v.shape)], name=q.name)
            d2 = graph.add_op("q.dequantize", [q2.result], {}, [TensorType(v.shape)], name=q.name)
            graph.set_operand(chain[-1], 0, d2.result)
            added += 1
        return added

    @staticmethod
    def _matmul_to_dense(graph: Graph, mm) -> int:
        """matmul(x, dequantize(Wq [K, N])) (+ a bias vector) -> dense(x, dequantize(Wq.T), bias).

        Wq is a quantized constant or the quantize of a float one; a per-axis
        format over N (axis 1) becomes axis 0 of the transposed weights.
        """
        x, w = mm.operands
        dq = w.producer
        if x.type.rank != 2 or w.type.rank != 2 or dq is None or dq.opname != "q.dequantize":
            return 0
        src = dq.operands[0]
        quant_op = src.producer if src.producer is not None and src.producer.opname == "q.quantize" else None
        const = quant_op.operands[0] if quant_op is not None else src
        if not const.is_constant():
            return 0
        q = src.type.quant
        if isinstance(q, PerAxisQuant):
            q = PerAxisQuant(1 - q.axis, q.scales, q.zero_points)
        arr = np.ascontiguousarray(const.constant().T)
        new_t = TensorType(arr.shape, src.type.dtype, q)
        wt = graph.add_op("qcc.const", [], {"value": arr}, [TensorType(arr.shape, const.type.dtype,
                                                                         const.type.quant if quant_op else q)],
                          name=const.producer.name).result
        if quant_op is not None:
            wt = graph.add_op("q.quantize", [wt], {}, [new_t], name=quant_op.name).result
        wd = graph.add_op("q.dequantize", [wt], {}, [TensorType(arr.shape)], name=dq.name).result
        operands, result = [x, wd], mm.result
        users = graph.users(mm.result)
        if len(users) == 1 and users[0].opname == "nn.add" and not graph.is_output(mm.result):
            add = users[0]
            bias = add.operands[1] if add.operands[0] is mm.result else add.operands[0]
            p = bias.producer
            vector = tuple(bias.shape) == (arr.shape[0],) and add.attrs.get("act", "none") == "none"
            if vector and p is not None and (bias.is_constant() or (p.opname == "q.dequantize"
                                                                    and p.operands[0].is_constant())):
                operands.append(bias)
                result = add.result
        dense = graph.add_op("nn.dense", operands, {}, [result.type], name=mm.name)
        graph.replace_all_uses(result, dense.result)
        for op in ([result.producer] if result is not mm.result else []) + [mm, dq, quant_op, const.producer]:
            if op is not None and not any(graph.has_uses(r) or graph.is_output(r) for r in op.results):
                graph.erase_op(op)  # the old weights, once nothing else reads them
        return 1

    @staticmethod
    def _quantize_float_bias(graph: Graph, op) -> int:
        """Fake-quantize a float bias constant at the accumulator precision n_x + n_w[c]."""
        if len(op.operands) < 3 or not op.operands[2].is_constant() or not op.operands[2].type.is_float:
            return 0
        formats = []
        for v in op.operands[:2]:
            p = v.producer
            if p is None or p.opname != "q.dequantize":
                return 0
            formats.append(p.operands[0].type)
        if not all(isinstance(t.quant, (FixedPoint, PerAxisQuant)) for t in formats):
            return 0
        n_x = channel_frac_bits(formats[0])[0]
        b = op.operands[2]
        n_w = channel_frac_bits(formats[1]) * (b.shape[0] if len(channel_frac_bits(formats[1])) == 1 else 1)
        mags = np.abs(np.asarray(b.constant(), np.float64)).reshape(-1)
        n_b = []
        for bc, nw in zip(mags, n_w):
            n = n_x + nw
            while bc * 2.0 ** n > BIAS_LIMIT and n > -31:
                n -= 1
            n_b.append(n)
        qt = per_channel_type(b.shape, "i32", n_b)
        q = graph.add_op("q.quantize", [b], {}, [qt], name=b.producer.name)
        d = graph.add_op("q.dequantize", [q.result], {}, [TensorType(b.shape)], name=b.producer.name)
        graph.set_operand(op, 2, d.result)
        return 1

    @staticmethod
    def _widen_bias(op) -> int:
        """An int64 accumulator (``i64`` bias) where assign-qmn would have chosen one: the weights at their
        formats take half of int32 or more for the worst input (assign-qmn keeps every int32 layer
        below that), as a layer that qcc compiled with an int64 accumulator and exported comes back."""
        if len(op.operands) < 3:
            return 0
        x = op.operands[0]
        while x.producer is not None and x.producer.opname in MOVES:  # shape ops not yet moved off the integers
            x = x.producer.operands[0]
        px, pw, pb = x.producer, op.operands[1].producer, op.operands[2].producer
        if any(p is None or p.opname != "q.dequantize" for p in (px, pw, pb)):
            return 0
        x_t, w, b = px.operands[0].type, pw.operands[0], pb.operands[0]
        if not isinstance(x_t.quant, FixedPoint) or b.type.dtype != "i32" or x_t.dtype not in ("i8", "i16"):
            return 0
        if w.is_constant():
            w_q = np.asarray(w.constant(), np.int64)
        elif w.producer is not None and w.producer.opname == "q.quantize" and w.producer.operands[0].is_constant():
            n_w = np.asarray(channel_frac_bits(w.type), np.float64).reshape((-1,) + (1,) * (w.type.rank - 1))
            lo, hi = storage_range(w.type.dtype)
            w_q = np.clip(round_half_away(np.asarray(w.producer.operands[0].constant(), np.float64) * 2.0 ** n_w),
                          lo, hi)
        else:
            return 0
        xmax = 1 << (15 if x_t.dtype == "i16" else 7)
        if float(np.abs(w_q).reshape(w_q.shape[0], -1).sum(axis=1).max(initial=0)) * xmax < 2.0 ** 30:
            return 0
        if b.is_constant():
            b.producer.attrs["value"] = np.asarray(b.constant(), np.int64)
        b.type = TensorType(b.type.shape, "i64", b.type.quant)
        return 1

    @staticmethod
    def _quantized_values(graph: Graph) -> List[Value]:
        values = [v for v in graph.inputs if v.type.quant is not None]
        for op in graph.ops:
            values += [r for r in op.results if r.type.quant is not None]
        return values

    @staticmethod
    def _label(v: Value) -> str:
        if v.name:
            return v.name
        return v.producer.name or v.producer.opname if v.producer is not None else "?"

    def _exponent(self, v: Value, scale: float, zero_point: int) -> int:
        what = f"tensor '{v.name}'" if v.name or v.producer is None else f"the result of {v.producer.describe()}"
        if zero_point != 0:
            raise UnsupportedModelError(f"qdq-to-qmn: {what} has zero point {zero_point}; Qm.n needs zero "
                                        f"point 0 (compile this QDQ model with --scheme int8)")
        n = pow2_exponent(scale)
        if n is not None:
            return n
        if not self.round_scales:
            raise UnsupportedModelError(f"qdq-to-qmn: {what} has scale {scale:.7g}, not a power of two; Qm.n "
                                        f"needs scales 2^-n (pass --round-scales to round it to the nearest "
                                        f"power of two, or compile with --scheme int8)")
        n = nearest_exponent(scale)
        self.rounded.append(f"{self._label(v)}: scale {scale:.7g} -> 2^-{n}")
        return n

    def _qmn_type(self, v: Value) -> TensorType:
        t = v.type
        if t.dtype not in QMN_DTYPES:
            raise UnsupportedModelError(f"qdq-to-qmn: tensor '{self._label(v)}' is stored as {t.dtype}; Qm.n "
                                        f"stores i8 or i16 (i32 biases)")
        q = t.quant
        if isinstance(q, FixedPoint):
            return t
        if isinstance(q, UniformQuant):
            return TensorType(t.shape, t.dtype, FixedPoint(self._exponent(v, q.scale, q.zero_point)))
        assert isinstance(q, PerAxisQuant)
        ns = [self._exponent(v, s, z) for s, z in zip(q.scales, q.zero_points)]
        return TensorType(t.shape, t.dtype, PerAxisQuant(q.axis, tuple(2.0 ** -n for n in ns), (0,) * len(ns)))

    @staticmethod
    def _requantize_const(v: Value, new: TensorType):
        """Re-express a constant's integers in its rounded power-of-two scales."""
        old_q, arr = v.type.quant, v.constant().astype(np.float64)
        if isinstance(old_q, PerAxisQuant):
            shape = [1] * arr.ndim
            shape[old_q.axis] = -1
            old_s = np.asarray(old_q.scales).reshape(shape)
            new_s = np.asarray(new.quant.scales).reshape(shape)
        else:
            old_s, new_s = old_q.scale, new.quant.scale
        lo, hi = storage_range(new.dtype)
        q = np.clip(round_half_away(arr * old_s / new_s), lo, hi).astype(new.np_dtype)
        v.producer.attrs["value"] = q


def _pipeline(options) -> list:
    round_scales = str(options.get("round_scales", False)).lower()
    float_output = str(options.get("float_output", False)).lower()
    return ["canonicalize", "fold-batchnorm", "fuse-activation", f"qdq-to-qmn{{round_scales={round_scales}}}",
            f"lower-quantized{{float_output={float_output}}}", "canonicalize", "fold-transpose-dense", "to-nhwc",
            "const-fold", "dce", "check-quantized"]


register_pipeline(
    "qmn-qdq", _pipeline,
    "Compile a power-of-two QDQ model (a Qm.n fine-tune, or qcc's own export) to qnn ops, no calibration",
    {"round_scales": bool, "float_output": bool})
