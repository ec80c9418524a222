"""quantize-affine: calibrated ranges -> TFLite-style affine int8 QDQ form.

Turns the ``q.range`` ops of ``calibrate`` and the float weights into exactly
the QDQ form ``lower-qdq`` matches (the form ``qdq_lifters`` imports from QDQ
ONNX), using TFLite's post-training quantization rules:

Activations, asymmetric per tensor (``GetAsymmetricQuantizationParams``, float32)::

    min' = min(min, 0), max' = max(max, 0)      (0 must be exactly representable)
    s    = (max' - min') / 255
    zp   = clamp(round(-128 - min' / s), -128, 127)

``q.range %x`` becomes ``q.dequantize(q.quantize %x)`` with that type. Results
that TFLite requires to keep their input's parameters take them from the input
instead of their own range: max / average pooling (global too) and the shape ops (reshape,
transpose, pad, constant-index gather, ...; these move to the integer side: ``DQ -> reshape`` becomes
``reshape -> DQ``; a pad's value v becomes the stored round_half_away(v / s) + zp, TFLite's PAD). Softmax and sigmoid outputs are fixed at s = 1/256, zp = -128,
tanh at s = 1/128, zp = 0 (TFLite's int8 kernels require these). A float constant
operand of an add, sub or mul is quantized per tensor with the asymmetric rule over its
own values (clamp(round_half_away(k / s) + zp)), as TFLite quantizes constant inputs. A concat
keeps its own range and becomes an integer ``nn.concat`` whose inputs with other
parameters are rescaled by ``s8.requantize`` (m = s_in / s_out, TFLite's rule
that concat inputs and output share parameters).

Weights of ``nn.conv2d`` / ``nn.dense``, symmetric per output channel (axis 0)::

    s_w[c] = max |w[c]| / 127    (1 for an all-zero channel),
    w_q    = clamp(round_half_away(w / s_w[c]), -127, 127)            int8
    b_q    = clamp(round_half_away(b / (s_in * s_w[c])), int32)       int32

each stored as a constant with a per-axis quant type followed by ``q.dequantize``
(``per_channel=false``: one scale for the whole tensor). ``s_in`` is the scale of
the layer's dequantized input, so a layer is quantized only once its input is.

``float_output=true`` keeps a trailing ``nn.softmax`` / ``nn.sigmoid`` /
``nn.tanh`` (alone or chained, e.g. sigmoid -> tanh) whose result only reaches
graph outputs in float: the ``q.range`` on its result is dropped instead of
becoming a quantize/dequantize pair, so the op runs on the dequantized logits
after the last ``q.dequantize`` (the back end's float epilogue, outside the
bit-exact integer contract), as ``qmn{float_output=true}`` does.

``bits=16`` is TFLite's 16x8 mode: activations symmetric int16, ``s = max(|min|, |max|) / 32767``,
zero point 0 (softmax output 1/32768), weights int8 as above, biases int64 (clamped to 2^47);
``lower-qdq`` lowers the result to the s8 ops on int16.

Mixed widths (``int8-calibrated{mixed=true}``, ``qcc --scheme int8 --bits mixed``): the pipeline
context's ``affine_widths`` maps q.range ops (by ``seq``) to 8 or 16 (``passes/mixed_bits_affine.py``
chooses them); a range not in the map takes ``bits``. A layer runs at its output's width, inputs
included, as in TFLite: an input of the other width is first converted, ``Q_w(DQ(x))`` with the
parameters its calibrated range has at width w (int8 asymmetric, int16 symmetric), which
``lower-qdq`` turns into an ``s8.requantize`` between widths (TFLite's QUANTIZE int8 <-> int16).
A layer's bias is int64 when its input is int16, int32 otherwise.

The pipeline ``int8-calibrated`` (float model -> s8 ops) is registered here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from qcc.errors import InputError, PassError
from qcc.ir.graph import Graph, Op, Value
from qcc.transforms.passmanager import Pass, PassResult, make_pass, register_pass, register_pipeline, registered_passes
from qcc.quant.weights import describe_degenerate, safe_channel_max_abs
from qcc.sim.s8 import quantize_multiplier
from qcc.ir.types import PerAxisQuant, TensorType, UniformQuant

SHARES_INPUT_QUANT = frozenset({"nn.maxpool", "nn.avgpool", "nn.global_avgpool", "nn.global_maxpool"})
# Shape ops the int8 graph runs on quantized tensors directly (qdq_lifters.SHAPE_OPS), and constant
# padding (its value quantized with the input's parameters: a zero pads with the zero point).
INTEGER_SHAPE_OPS = frozenset({"nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose", "nn.pad",
                               "nn.gather"})
WEIGHTED = {"nn.conv2d": (1, 2), "nn.dense": (1, 2)}  # opname -> (weight operand, bias operand)
# Ops float_output keeps in float when they end the graph (the back end's float epilogue).
FLOAT_EPILOGUE_OPS = frozenset({"nn.softmax", "nn.sigmoid", "nn.tanh"})
SOFTMAX_QUANT = UniformQuant(1.0 / 256, -128)
# Output parameters TFLite's int8 kernels require (lower-qdq's s8.lut tables assume them).
FIXED_OUTPUT_QUANT = {"nn.softmax": SOFTMAX_QUANT, "nn.sigmoid": UniformQuant(1.0 / 256, -128),
                      "nn.tanh": UniformQuant(1.0 / 128, 0)}
# Elementwise ops whose constant operand is quantized like an activation (TFLite: per tensor, asymmetric).
ELEMENTWISE_CONST_OPS = frozenset({"nn.add", "nn.sub", "nn.mul"})
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def asymmetric_params(lo: float, hi: float) -> UniformQuant:
    """TFLite's int8 activation parameters for the real range [lo, hi] (float32 arithmetic)."""
    lo, hi = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    if hi == lo:  # a constant-zero tensor: any scale represents it exactly
        return UniformQuant(1.0, 0)
    scale = np.float32((hi - lo) / np.float32(255))
    zp_from_min = np.float32(-128) - lo / scale
    zp = int(np.clip(round_half_away(np.float64(zp_from_min)), -128, 127))
    return UniformQuant(float(scale), zp)


def symmetric16_params(lo: float, hi: float) -> UniformQuant:
    """TFLite's 16x8 activation parameters: symmetric int16, s = max(|lo|, |hi|) / 32767, zp 0 (float32)."""
    amax = np.float32(max(abs(lo), abs(hi)))
    if amax == 0:
        return UniformQuant(1.0, 0)
    return UniformQuant(float(np.float32(amax / np.float32(32767))), 0)


# TFLite's fixed int16 output parameters (softmax, logistic, tanh).
FIXED_OUTPUT_QUANT16 = {"nn.softmax": UniformQuant(1.0 / 32768, 0), "nn.sigmoid": UniformQuant(1.0 / 32768, 0),
                        "nn.tanh": UniformQuant(1.0 / 32768, 0)}
ACT_DTYPE = {8: "i8", 16: "i16"}
ACT_RANGE = {8: (-128, 127), 16: (-32768, 32767)}


def symmetric_weights(w: np.ndarray, per_channel: bool):
    """(int8 weights, per-output-channel float32 scales) with round half away from zero."""
    w = np.asarray(w, np.float32)
    n = w.shape[0]
    if per_channel:  # a degenerate channel takes the largest channel's scale (qcc.quant.weights)
        amax = safe_channel_max_abs(w).astype(np.float32)
    else:
        amax = np.full(n, np.abs(w).max())
    scales = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    shape = (n,) + (1,) * (w.ndim - 1)
    q = np.clip(round_half_away(w.astype(np.float64) / scales.reshape(shape)), -127, 127)
    return q.astype(np.int8), scales


def _dq_input_quant(v: Value) -> Optional[UniformQuant]:
    """The per-tensor i8 (or, 16x8, i16) type behind a ``q.dequantize`` result, or None."""
    p = v.producer
    if p is None or p.opname != "q.dequantize":
        return None
    q = p.operands[0].type.quant
    return q if isinstance(q, UniformQuant) and p.operands[0].type.dtype in ("i8", "i16") else None


def _only_reaches_outputs(graph: Graph, v: Value) -> bool:
    """True when ``v`` is a graph output or feeds only q.range / float epilogue ops that end at
    graph outputs, so nothing integer reads it (a float epilogue may chain: sigmoid -> tanh)."""
    work = [v]  # a worklist, not recursion: an epilogue chain may be long
    while work:
        v = work.pop()
        users = graph.users(v)
        if not users and not graph.is_output(v):
            return False
        if any(u.opname not in FLOAT_EPILOGUE_OPS | {"q.range"} for u in users):
            return False
        work.extend(u.result for u in users)
    return True


@register_pass
@dataclass
class QuantizeAffine(Pass):
    """Replace q.range by TFLite int8 quantize/dequantize pairs and quantize weights and biases.

    Before (``-p quantize-affine``)::

        %1 = q.range %x {max = 1.0, min = 0.0} : tensor<1x4x4x1xf32>
        %2 = nn.conv2d %1, %w, %b {layout = "NHWC", ...} : tensor<1x4x4x2xf32>
        %3 = q.range %2 {max = 2.0, min = -1.0} : tensor<1x4x4x2xf32>

    After::

        %1 = q.quantize %x : tensor<1x4x4x1x!q.uniform<i8:f32, 0.003921569:-128>>
        %2 = q.dequantize %1 : tensor<1x4x4x1xf32>
        %w = qcc.const ... : tensor<2x3x3x1x!q.per_axis<i8:f32:0, {...}>>
        %3 = q.dequantize %w ...
        %b = qcc.const ... : tensor<2x!q.per_axis<i32:f32:0, {...}>>
        %4 = q.dequantize %b ...
        %5 = nn.conv2d %2, %3, %4 ...
        %6 = q.quantize %5 : tensor<...x!q.uniform<i8:f32, 0.011764706:-43>>
        %7 = q.dequantize %6 : tensor<1x4x4x2xf32>
    """

    name = "quantize-affine"
    per_channel: bool = True
    float_output: bool = False
    bits: int = 8   # 16: TFLite's 16x8 mode (symmetric int16 activations, int8 weights, int64 biases)

    def run(self, graph: Graph) -> PassResult:
        if self.bits not in ACT_DTYPE:
            raise InputError(f"quantize-affine: bits must be 8 or 16, got {self.bits}")
        self.dtype = ACT_DTYPE[self.bits]
        ctx = getattr(self, "context", None)
        self.widths = (ctx.get("affine_widths") if isinstance(ctx, dict) else None) or {}
        self.ranges: Dict[int, tuple] = {}  # id(stored value) -> its calibrated (min, max)
        stats = {"activations": 0, "shared": 0, "weights": 0, "shape_ops": 0}
        for op in graph.ops:
            # (a concat converts its inputs itself: one s8.requantize each, to the output's parameters)
            if self.widths and not op.opname.startswith("q.") and op.opname not in ("qcc.const", "nn.concat") \
                    and op.opname not in INTEGER_SHAPE_OPS:
                self._convert_inputs(graph, op, stats)
            if op.opname == "q.range" and self._keeps_float(graph, op):
                graph.replace_all_uses(op.result, op.operands[0])
                graph.erase_op(op)
                stats["float_output"] = stats.get("float_output", 0) + 1
            elif op.opname == "q.range":
                self._quantize_range(graph, op, stats)
            elif op.opname in WEIGHTED:
                self._quantize_weights(graph, op, stats)
            elif op.opname in INTEGER_SHAPE_OPS:
                self._sink_dequantize(graph, op, stats)
            elif op.opname in ELEMENTWISE_CONST_OPS:
                self._quantize_constant_operand(graph, op, stats)
        changed = any(stats.values())
        return PassResult(changed, stats)

    # ------------------------------------------------------------ widths
    def _bits_of(self, rng: Op) -> int:
        return self.widths.get(rng.seq, self.bits)

    def _convert_inputs(self, graph: Graph, op: Op, stats: Dict[str, int]):
        """Mixed widths: give ``op`` its inputs at its own width (that of the range on its result)."""
        rng = next((u for u in graph.users(op.result) if u.opname == "q.range"), None) if op.results else None
        if rng is None or self._keeps_float(graph, rng):  # a float epilogue reads the dequantized input as is
            return
        bits = self._bits_of(rng)
        dtype = ACT_DTYPE[bits]
        for i, v in enumerate(op.operands):
            in_q = _dq_input_quant(v)
            if in_q is None or v.producer.operands[0].type.dtype == dtype:
                continue
            stored = v.producer.operands[0]
            lo, hi = self._range_of(stored)
            quant = (asymmetric_params if bits == 8 else symmetric16_params)(lo, hi)
            # its own dequantize: lower-qdq lowers Q(DQ x) only where the DQ feeds nothing else
            own = graph.add_op("q.dequantize", [stored], {}, [TensorType(v.shape, "f32")], name=op.name).result
            q = graph.add_op("q.quantize", [own], {}, [TensorType(v.shape, dtype, quant)], name=op.name)
            dq = graph.add_op("q.dequantize", [q.result], {}, [TensorType(v.shape, "f32")], name=op.name)
            graph.set_operand(op, i, dq.result)
            self.ranges[id(q.result)] = (lo, hi)
            stats["conversions"] = stats.get("conversions", 0) + 1

    def _range_of(self, stored: Value) -> tuple:
        """The calibrated range behind a stored tensor (through integer shape ops), else its type's range."""
        v = stored
        while id(v) not in self.ranges and v.producer is not None and v.producer.opname in INTEGER_SHAPE_OPS:
            v = v.producer.operands[0]
        if id(v) in self.ranges:
            return self.ranges[id(v)]
        q = stored.type.quant
        lo, hi = ACT_RANGE[8 if stored.type.dtype == "i8" else 16]
        return float(q.scale) * (lo - q.zero_point), float(q.scale) * (hi - q.zero_point)

    # ------------------------------------------------------------ activations
    def _keeps_float(self, graph: Graph, rng: Op) -> bool:
        """With float_output: is ``rng`` the range of a trailing softmax/sigmoid/tanh (left float)?"""
        p = rng.operands[0].producer
        return self.float_output and p is not None and p.opname in FLOAT_EPILOGUE_OPS \
            and _only_reaches_outputs(graph, rng.result)

    def _quantize_range(self, graph: Graph, rng: Op, stats: Dict[str, int]):
        x = rng.operands[0]
        producer = x.producer
        bits = self._bits_of(rng)
        dtype = ACT_DTYPE[bits]
        quant = None
        if producer is not None and producer.opname in SHARES_INPUT_QUANT:
            quant = _dq_input_quant(producer.operands[0])  # TFLite: pooling keeps s and zp
            stats["shared"] += quant is not None
        elif producer is not None and producer.opname in FIXED_OUTPUT_QUANT:
            quant = (FIXED_OUTPUT_QUANT if bits == 8 else FIXED_OUTPUT_QUANT16)[producer.opname]
        if quant is None:
            quant = (asymmetric_params if bits == 8 else symmetric16_params)(rng.attrs["min"], rng.attrs["max"])
        if producer is not None and producer.opname == "nn.concat" and \
                self._integer_concat(graph, rng, quant, bits):
            stats["concats"] = stats.get("concats", 0) + 1
            return
        q = graph.add_op("q.quantize", [x], {}, [TensorType(x.shape, dtype, quant)], name=rng.name)
        self.ranges[id(q.result)] = (float(rng.attrs["min"]), float(rng.attrs["max"]))
        dq = graph.add_op("q.dequantize", [q.result], {}, [TensorType(x.shape, "f32")], name=rng.name)
        graph.replace_all_uses(rng.result, dq.result)
        graph.erase_op(rng)
        if producer is not None:
            graph.move_after_seq(q, producer)
            graph.move_after_seq(dq, q)
        stats["activations"] += 1

    def _integer_concat(self, graph: Graph, rng: Op, out_q: UniformQuant, bits: int) -> bool:
        """Q(concat(DQ(x_i))) -> DQ(concat(requantize(x_i))): TFLite gives every concat input the
        output's parameters, rescaling (s8.requantize, m = s_i / s_out) the inputs that differ; a float
        constant input is stored with the output's parameters."""
        concat = rng.operands[0].producer
        if any(_dq_input_quant(v) is None and not _float_constant(v) for v in concat.operands) \
                or all(_float_constant(v) for v in concat.operands) or graph.users(concat.result) != [rng] \
                or graph.is_output(concat.result):
            return False
        stored = []
        lo, hi = ACT_RANGE[bits]
        dtype = ACT_DTYPE[bits]
        for v in concat.operands:
            if _float_constant(v):  # a constant part (a zero initial state, say): stored with the output's parameters
                c = np.asarray(v.constant(), np.float64)
                q = np.clip(round_half_away(c / np.float64(np.float32(out_q.scale))) + out_q.zero_point, lo, hi)
                kc = graph.add_const(q.astype(np.int8 if bits == 8 else np.int16),
                                     name=(v.producer.name or v.name or "k") + ".q", quant=out_q)
                kc.name = kc.producer.name
                stored.append(kc)
                continue
            x = v.producer.operands[0]
            in_q = x.type.quant
            if in_q != out_q or x.type.dtype != dtype:
                mult, shift = quantize_multiplier(in_q.scale / out_q.scale)
                x = graph.add_op("s8.requantize", [x], dict(
                    input_zp=in_q.zero_point, output_zp=out_q.zero_point, multiplier=[mult], shift=[shift],
                    act_min=lo, act_max=hi),
                    [TensorType(x.shape, dtype, out_q)], name=concat.name).result
            stored.append(x)
        cat = graph.add_op("nn.concat", stored, dict(concat.attrs),
                           [TensorType(concat.result.shape, dtype, out_q)],
                           name=concat.name)
        dq = graph.add_op("q.dequantize", [cat.result], {}, [concat.result.type], name=concat.name)
        graph.replace_all_uses(rng.result, dq.result)
        graph.erase_op(rng)
        graph.erase_op(concat)
        return True

    def _sink_dequantize(self, graph: Graph, op: Op, stats: Dict[str, int]):
        """DQ -> shape op  ==>  shape op on the int8 tensor -> DQ (the form lower-qdq expects)."""
        x = op.operands[0]
        if _dq_input_quant(x) is None:
            return
        stored = x.producer.operands[0]
        out = op.result
        attrs = dict(op.attrs)
        if op.opname == "nn.pad":  # TFLite PAD / PADV2: the pad value quantized with the tensor's parameters
            q = stored.type.quant
            value = round_half_away(np.float64(attrs["value"]) / np.float64(np.float32(q.scale))) + q.zero_point
            lo, hi = ACT_RANGE[8 if stored.type.dtype == "i8" else 16]
            if not lo <= value <= hi:
                return
            attrs["value"] = float(value)
        moved = graph.add_op(op.opname, [stored] + list(op.operands[1:]), attrs,
                             [TensorType(out.shape, stored.type.dtype, stored.type.quant)],
                             name=op.name)
        dq = graph.add_op("q.dequantize", [moved.result], {}, [out.type], name=op.name)
        graph.replace_all_uses(out, dq.result)
        graph.erase_op(op)
        graph.move_after_seq(moved, x.producer)
        graph.move_after_seq(dq, moved)
        stats["shape_ops"] += 1

    def _quantize_constant_operand(self, graph: Graph, op: Op, stats: Dict[str, int]):
        """x + k, x - k, k - x, x * k: the float constant k becomes DQ(int8 k) with asymmetric per-tensor parameters of its
        own range (TFLite's rule for constant inputs of ADD/MUL), once the other operand is quantized."""
        for i in (0, 1):
            k, other = op.operands[i], op.operands[1 - i]
            c = k.constant()
            if c is None or not k.type.is_float or _dq_input_quant(other) is None:
                continue
            c = np.asarray(c, np.float32)
            bits = 8 if other.producer.operands[0].type.dtype == "i8" else 16  # the layer's width
            quant = (asymmetric_params if bits == 8 else symmetric16_params)(float(c.min()), float(c.max()))
            lo, hi = ACT_RANGE[bits]
            stored = np.clip(round_half_away(c.astype(np.float64) / np.float64(np.float32(quant.scale)))
                             + quant.zero_point, lo, hi).astype(np.int8 if bits == 8 else np.int16)
            kc = graph.add_const(stored, name=(k.producer.name or k.name or "k") + ".q", quant=quant)
            kc.name = kc.producer.name
            graph.set_operand(op, i, QuantizeAffine._dequantize(graph, kc, k.type))
            stats["constants"] = stats.get("constants", 0) + 1

    # ------------------------------------------------------------ weights and biases
    def _quantize_weights(self, graph: Graph, op: Op, stats: Dict[str, int]):
        w_index, b_index = WEIGHTED[op.opname]
        in_q = _dq_input_quant(op.operands[0])
        w_v = op.operands[w_index]
        if in_q is None or w_v.constant() is None or not w_v.type.is_float:
            return  # input not quantized (no calibrated range) or weights not a float constant
        w_q, s_w = symmetric_weights(w_v.constant(), self.per_channel)
        graph.notes += describe_degenerate(graph.source_name(op), w_v.constant())
        w_quant = PerAxisQuant(0, tuple(float(s) for s in s_w), (0,) * len(s_w))
        wc = graph.add_const(w_q, name=(w_v.producer.name or w_v.name or "w") + ".q", quant=w_quant)
        wc.name = wc.producer.name
        graph.set_operand(op, w_index, self._dequantize(graph, wc, w_v.type))
        if len(op.operands) > b_index:
            b_v = op.operands[b_index]
            b = b_v.constant()
            if b is None:
                raise PassError(f"{op.describe()}: the bias is not a constant; quantize-affine needs "
                                f"const-fold before it")
            s_b = (np.float64(in_q.scale) * s_w.astype(np.float64))
            # int32, or int64 in the 16x8 mode (bounded by 2^47, TFLite's int16 accumulator limit)
            wide = op.operands[0].producer.operands[0].type.dtype == "i16"
            lo, hi = (-(1 << 47), (1 << 47) - 1) if wide else (INT32_MIN, INT32_MAX)
            b_q = np.clip(round_half_away(np.asarray(b, np.float64).reshape(-1) / s_b), lo, hi)
            b_quant = PerAxisQuant(0, tuple(float(s) for s in s_b), (0,) * len(s_b))
            bc = graph.add_const(b_q.astype(np.int64 if wide else np.int32).reshape(b_v.shape),
                                 name=(b_v.producer.name or b_v.name or "b") + ".q", quant=b_quant)
            bc.name = bc.producer.name
            graph.set_operand(op, b_index, self._dequantize(graph, bc, b_v.type))
        stats["weights"] += 1

    @staticmethod
    def _dequantize(graph: Graph, stored: Value, float_type: TensorType) -> Value:
        return graph.add_op("q.dequantize", [stored], {}, [TensorType(float_type.shape, "f32")]).result


# ---------------------------------------------------------------- the pipeline
# canonicalize first: it merges the reshapes around 1-D layers lifted as 2-D, so their BN folds.
FLOAT_CLEANUP = ("canonicalize", "fold-batchnorm", "canonicalize", "fuse-activation", "legalize-affine",
                 "legalize-pool", "to-nhwc", "const-fold", "dce")
DEFAULTS = {"bits": 8, "method": "minmax", "p": 99.99, "per_channel": True, "data": "", "fc_rounding": "double",
            "float_output": False, "float_layers": "", "mixed": False, "target_sqnr": 0.0, "max_flash": 0,
            "max_ram": 0}


def _build(options) -> List:
    o = {**DEFAULTS, **options}
    if o["bits"] not in (8, 16):  # 16: TFLite's 16x8 mode (int16 activations, int8 weights)
        raise InputError(f"int8-calibrated quantizes to 8 or 16 bits (16x8), got bits={o['bits']}")
    if o["mixed"] and o["bits"] != 8:  # the search starts all-8 and promotes layers to 16x8
        raise InputError(f"int8-calibrated{{mixed=true}} starts from bits=8, got bits={o['bits']}")
    known = registered_passes()
    passes: List = [name for name in FLOAT_CLEANUP if name in known]
    # Every op must have an int8 kernel before calibration spends any time.
    passes.append(make_pass("check-legal", {"scheme": "int8", "float_output": str(o["float_output"]),
                                            "bits": str(o["bits"])}))
    calibrate = {"method": o["method"]}
    if o["method"] == "percentile":
        calibrate["p"] = str(o["p"])
        calibrate["symmetric"] = "false"  # affine ranges: clip each side separately
    if o["data"]:
        calibrate["data"] = o["data"]
    passes.append(make_pass("calibrate", calibrate))
    if o["float_layers"]:  # kept float after calibration, so the integer tensors around them keep ranges
        passes.append(make_pass("float-layers", {"layers": o["float_layers"]}))
    if o["mixed"]:  # per-layer int8/int16 (passes/mixed_bits_affine.py), handed to quantize-affine
        search = {k: str(o[k]) for k in ("target_sqnr", "max_flash", "max_ram") if o[k]}
        passes.append(make_pass("mixed-bits-affine", dict(search, per_channel=str(o["per_channel"]),
                                                          **({"data": o["data"]} if o["data"] else {}))))
    passes.append(make_pass("quantize-affine", {"per_channel": str(o["per_channel"]),
                                                "float_output": str(o["float_output"]), "bits": str(o["bits"])}))
    # nn.lstm / nn.gru -> s8.lstm / s8.gru (the LSTM's cell scale from the calibration data's trace)
    passes.append(make_pass("quantize-recurrent", {"data": o["data"]} if o["data"] else {}))
    passes.append(make_pass("lower-qdq", {"fc_rounding": o["fc_rounding"]}))
    passes += ["canonicalize", "dce", "check-quantized"]
    return passes


register_pipeline(
    "int8-calibrated", _build,
    "Quantize a float model with calibrated TFLite-style affine int8 and lower it to s8 ops",
    {"bits": int, "method": str, "p": float, "per_channel": bool, "data": str, "fc_rounding": str,
     "float_output": bool, "float_layers": str, "mixed": bool, "target_sqnr": float, "max_flash": int,
     "max_ram": int})


def _float_constant(v: Value) -> bool:
    return v.type.is_float and v.constant() is not None
