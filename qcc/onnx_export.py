"""Export a graph back to ONNX, quantized graphs as QDQ, for inspection in familiar tools.

``export_qdq_onnx(graph) -> onnx.ModelProto``; ``write_onnx(graph, path)``
writes it atomically (``qcc-opt ... --emit-onnx out.onnx``). The model runs in
onnxruntime and opens in Netron. Every IR value becomes one ONNX tensor in
its *storage* type: f32 values stay float, quantized values are integer
tensors (i8/i16/u8/u16, i32 constants) and a ``DequantizeLinear`` gives their
real value where a float op reads them:

    quantized type              QuantizeLinear / DequantizeLinear parameters
    !q.uniform<i8:f32, s:z>     scale s, zero point z (per tensor)
    !q.uniform<i8:f32:a, {..}>  axis a, one scale and zero point per index
    !q.fixed<iN, n>             scale 2^-n, zero point 0 (i16 needs opset 21)

Float graphs export op for op (NHWC convolutions and pools are wrapped in
Transposes to ONNX's NCHW, weights transposed in the initializer).
``q.quantize`` / ``q.dequantize`` become ``QuantizeLinear`` /
``DequantizeLinear``; ``q.range`` is dropped; quantized constants become
integer initializers. Integer ops (``qnn.*``, ``s8.*``) become the standard QDQ
picture of a quantized layer: their float equivalent reading dequantized
inputs, the clamp ``[act_min, act_max]`` as Relu/Clip on reals
``(act - zp) * scale``, and a ``QuantizeLinear`` into the result's format.
Integer shape ops (reshape, transpose, pad, ...) stay on the integers.

The QDQ form is an approximation of qcc's integer arithmetic, meant for
checking the quantization: onnxruntime computes in float and rounds half to
even where qcc's simulator (the contract for the C code) shifts and rounds
half away from zero, so outputs differ by about one step of the output
format on some elements. ``qnn.lut`` becomes the float Sigmoid/Tanh its table
samples (else an exact Gather on the table); ``qnn.softmax`` / ``s8.softmax``
become Softmax. Ops without an ONNX equivalent raise ``UnsupportedModelError``
naming the op. The same graph always gives the same bytes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import InputError, UnsupportedModelError
from .graph import Graph, Op, Value
from .types import FixedPoint, PerAxisQuant, TensorType, storage_range

ONNX_DTYPES = {"f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE, "i8": TensorProto.INT8,
               "i16": TensorProto.INT16, "i32": TensorProto.INT32, "i64": TensorProto.INT64,
               "u8": TensorProto.UINT8, "u16": TensorProto.UINT16, "bool": TensorProto.BOOL}
QUANTIZE_TO = ("i8", "u8", "i16", "u16")  # QuantizeLinear output types we emit
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
SHAPE_OPS = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose", "nn.concat",
             "nn.pad", "nn.slice", "nn.gather", "nn.shape", "nn.cast", "nn.identity", "nn.dropout")
ELEMENTWISE = {"nn.add": "Add", "nn.sub": "Sub", "nn.mul": "Mul", "nn.div": "Div"}
UNARY = {"nn.relu": "Relu", "nn.sigmoid": "Sigmoid", "nn.tanh": "Tanh"}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class _RealOperands:
    """An op's operands as float tensors, dequantized only when a builder reads them."""

    def __init__(self, ex: "_Exporter", values: Sequence[Value], name: str):
        self.ex, self.values, self.name = ex, list(values), name

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.ex.float_of(v, self.name) for v in self.values[i]]
        return self.ex.float_of(self.values[i], self.name)

    def __iter__(self):
        return iter(self[:])


class _Exporter:
    def __init__(self, graph: Graph):
        self.g = graph
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self.used: set = set()
        self.node_names: set = set()
        self.stored: Dict[int, str] = {}   # id(value) -> its ONNX tensor (storage type)
        self.floats: Dict[int, str] = {}   # id(value) -> its dequantized float tensor
        self.value_info: List[onnx.ValueInfoProto] = []
        self.qparam_cache: Dict[tuple, tuple] = {}
        self.pending: Dict[int, tuple] = {}  # id(const value) -> (array, name) not yet an initializer
        self.alias: Dict[int, Value] = {}    # id(q.range result) -> its operand
        self.pending_dq: Dict[int, tuple] = {}  # id(q.dequantize result) -> (operand, node name, output)
        self.opset = 21 if any(self._needs_opset21(t) for t in self._all_types()) else 13

    # ------------------------------------------------------------ names and tensors
    def _all_types(self):
        yield from (v.type for v in self.g.inputs)
        for op in self.g.ops:
            yield from (r.type for r in op.results)

    @staticmethod
    def _needs_opset21(t: TensorType) -> bool:
        return t.quant is not None and t.dtype in ("i16", "u16")

    def fresh(self, base: str) -> str:
        base = base or "t"
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name

    def node(self, op_type: str, inputs: Sequence[str], name: str, outputs=None, **attrs) -> str:
        """Append a node; returns its (first) output. ``outputs`` defaults to one fresh tensor."""
        node_name, k = name, 1
        while node_name in self.node_names:
            node_name, k = f"{name}_{k}", k + 1
        self.node_names.add(node_name)
        outputs = list(outputs) if outputs else [self.fresh(name if "/" in name else f"{name}/{op_type}")]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=node_name, **attrs))
        return outputs[0]

    def init(self, array: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values, base: str) -> str:
        return self.init(np.asarray(values, np.int64), base)

    def value_name(self, v: Value) -> str:
        if v.name:
            return v.name
        op = v.producer
        suffix = f":{v.index}" if len(op.results) > 1 else ""
        if op.opname in ("q.quantize", "q.dequantize"):  # their op names repeat the layer's
            src = self.resolve(op.operands[0])
            base = self.pending[id(src)][1] if id(src) in self.pending else self.stored.get(id(src), "x")
            if id(src) in self.pending_dq:
                base = self.pending_dq[id(src)][2]
            return f"{base}/{'quantized' if op.opname == 'q.quantize' else 'dequantized'}"
        if op.name:
            return op.name + suffix
        return op.opname.replace(".", "_") + suffix

    # ------------------------------------------------------------ quantization parameters
    def qparams(self, t: TensorType, hint: str):
        """(scale, zero point, axis or None) initializers for a quantized type (shared when equal)."""
        q = t.quant
        np_dtype = t.np_dtype
        if isinstance(q, PerAxisQuant):
            key = ("axis", t.dtype, q.axis, q.scales, q.zero_points)
            scale, zp, axis = np.asarray(q.scales, np.float32), np.asarray(q.zero_points, np_dtype), q.axis
        else:
            key = ("tensor", t.dtype, float(q.scale), int(q.zero_point))
            scale, zp, axis = np.array(q.scale, np.float32), np.array(q.zero_point, np_dtype), None
        if key not in self.qparam_cache:
            self.qparam_cache[key] = (self.init(scale, f"{hint}/scale"), self.init(zp, f"{hint}/zero_point"), axis)
        return self.qparam_cache[key]

    def dequantize(self, src: str, t: TensorType, name: str, out: Optional[str] = None) -> str:
        scale, zp, axis = self.qparams(t, src)
        kw = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", [src, scale, zp], f"{name}/DequantizeLinear",
                         [out] if out else [self.fresh(f"{src}/dequantized")], **kw)

    def quantize(self, src: str, t: TensorType, name: str, out: str, op: Op) -> str:
        if t.dtype not in QUANTIZE_TO:
            raise UnsupportedModelError(f"ONNX export: {op.describe()} produces {t}; QuantizeLinear "
                                        f"has no {t.dtype} output (use i8/u8/i16/u16 activations)")
        scale, zp, axis = self.qparams(t, out)
        kw = {} if axis is None else {"axis": axis}
        return self.node("QuantizeLinear", [src, scale, zp], f"{name}/QuantizeLinear", [out], **kw)

    def resolve(self, v: Value) -> Value:
        while id(v) in self.alias:
            v = self.alias[id(v)]
        return v

    def stored_name(self, v: Value) -> str:
        """``v``'s ONNX tensor in its storage type (constants become initializers on first use)."""
        v = self.resolve(v)
        if id(v) in self.pending_dq:
            src, name, out = self.pending_dq.pop(id(v))
            self.stored[id(v)] = self.dequantize(self.stored_name(src), self.resolve(src).type, name, out)
        if id(v) in self.pending:
            array, name = self.pending.pop(id(v))
            self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
            self.stored[id(v)] = name
        return self.stored[id(v)]

    def float_of(self, v: Value, name: str) -> str:
        """The real value of ``v`` as a float tensor (a DequantizeLinear for quantized values)."""
        v = self.resolve(v)
        if v.type.quant is None:
            return self.stored_name(v)
        if id(v) not in self.floats:
            self.floats[id(v)] = self.dequantize(self.stored_name(v), v.type, name)
        return self.floats[id(v)]

    def float_transposed(self, v: Value, perm: Sequence[int], name: str) -> str:
        """``v`` transposed by ``perm`` as floats; constants are transposed in the initializer."""
        if not v.is_constant():
            return self.node("Transpose", [self.float_of(v, name)], f"{name}/Transpose_weights", perm=list(perm))
        data = np.transpose(v.constant(), perm)
        t = v.type.with_shape(data.shape)
        if isinstance(t.quant, PerAxisQuant):
            q = t.quant
            t = TensorType(t.shape, t.dtype, PerAxisQuant(list(perm).index(q.axis), q.scales, q.zero_points))
        src = self.init(data, f"{self.pending[id(v)][1] if id(v) in self.pending else self.stored[id(v)]}.nchw")
        return src if t.quant is None else self.dequantize(src, t, name)

    # ------------------------------------------------------------ the walk
    def run(self) -> onnx.ModelProto:
        g = self.g
        outputs = {}
        for v, n in zip(g.outputs, g.output_names):  # name producing tensors after the graph outputs
            if v.producer is not None and id(v) not in outputs and n not in self.used:
                outputs[id(v)] = n
                self.used.add(n)
        inputs = []
        for v in g.inputs:
            self.used.add(v.name)
            self.stored[id(v)] = v.name
            inputs.append(helper.make_tensor_value_info(v.name, ONNX_DTYPES[v.type.dtype], list(v.shape)))
        for op in g.ops:
            names = [outputs.pop(id(r)) if id(r) in outputs else self.fresh(self.value_name(r))
                     for r in op.results]
            self.emit(op, names)
            for r, n in zip(op.results, names):
                if op.opname not in ("qcc.const", "q.range") and names:
                    self.value_info.append(helper.make_tensor_value_info(
                        n, ONNX_DTYPES[r.type.dtype], list(r.shape)))
        graph_outputs = []
        for v, n in zip(g.outputs, g.output_names):
            if self.stored_name(v) != n:  # a graph input, a dropped q.range or a repeated output
                self.node("Identity", [self.stored_name(v)], n, [n])
            graph_outputs.append(helper.make_tensor_value_info(n, ONNX_DTYPES[v.type.dtype], list(v.shape)))
        produced = {o for n in self.nodes for o in n.output} - set(g.output_names)
        value_info = [vi for vi in self.value_info if vi.name in produced]
        graph = helper.make_graph(self.nodes, g.name, inputs, graph_outputs, self.inits, value_info=value_info,
                                  doc_string="Exported by qcc for inspection. Integer layers are shown in "
                                             "QDQ form, which approximates qcc's integer arithmetic "
                                             "(float math, round half to even).")
        model = helper.make_model(graph, producer_name="qcc", opset_imports=[helper.make_opsetid("", self.opset)])
        model.ir_version = 10 if self.opset >= 21 else 8
        return model

    def emit(self, op: Op, names: List[str]):
        name = op.name or names[0]
        kind = op.opname
        if kind == "qcc.const":  # becomes an initializer when something reads it as stored
            self.pending[id(op.result)] = (op.attrs["value"], names[0])
            return
        if kind == "q.range":
            self.alias[id(op.result)] = op.operands[0]
            return
        for r, n in zip(op.results, names):
            self.stored[id(r)] = n
        if kind == "q.quantize" and self.resolve(op.operands[0]).is_constant():
            # A quantized constant (weights, bias): an integer initializer, rounded as qcc rounds.
            from .simulator import quantize_array
            t = op.result.type
            data = quantize_array(self.resolve(op.operands[0]).constant(), t.quant, t.np_dtype)
            self.stored.pop(id(op.result))
            self.pending[id(op.result)] = (data, names[0])
        elif kind == "q.quantize":
            self.quantize(self.stored_name(op.operands[0]), op.result.type, name, names[0], op)
        elif kind == "q.dequantize":  # emitted on first use: NHWC layers may read the integers instead
            self.stored.pop(id(op.result))
            self.pending_dq[id(op.result)] = (op.operands[0], name, names[0])
        elif kind in SHAPE_OPS:
            _shape_op(self, op, name, names[0])
        else:
            # A compute op: the float op on real inputs, then clamp and quantize when the result is integer.
            result = op.result.type
            build = _FLOAT_OPS.get(kind) or _INTEGER_OPS.get(kind)
            if build is None:
                raise UnsupportedModelError(f"ONNX export: {op.describe()} has no ONNX equivalent")
            if result.quant is None and not result.is_float:
                raise UnsupportedModelError(f"ONNX export: {op.describe()} computes an integer result "
                                            f"of type {result} without quantization parameters")
            xs = _RealOperands(self, op.operands, name)
            if result.quant is None:
                y = build(self, op, xs, name, names[0])
                if y != names[0]:
                    self.node("Identity", [y], f"{name}/Identity", [names[0]])
            else:
                y = build(self, op, xs, name, self.fresh(f"{names[0]}/float"))
                if y is not None:  # None: the builder wrote the integer result itself
                    self.quantize(self.clamp(op, y, name), result, name, names[0], op)

    # ------------------------------------------------------------ shared float builders
    def act(self, y: str, act: str, alpha: float, name: str, out: str) -> str:
        if act == "none":
            return self.node("Identity", [y], f"{name}/Identity", [out]) if y != out else out
        if act == "relu":
            return self.node("Relu", [y], f"{name}/Relu", [out])
        if act == "relu6":
            return self.node("Clip", [y, self.init(np.array(0, np.float32), f"{name}/min"),
                                      self.init(np.array(6, np.float32), f"{name}/max")], f"{name}/Clip", [out])
        return self.node("LeakyRelu", [y], f"{name}/LeakyRelu", [out], alpha=float(alpha))

    def nchw(self, op: Op, xs, layout: str, name: str) -> str:
        """The op's first operand as NCHW floats. A per-tensor quantized input is transposed as
        integers before its DequantizeLinear: onnxruntime's transpose optimizer mishandles
        DQ -> Transpose -> AveragePool (its QLinearAveragePool then rejects the scale)."""
        if layout == "NCHW":
            return xs[0]
        v = self.resolve(op.operands[0])
        if v.producer is not None and v.producer.opname == "q.dequantize":
            v = self.resolve(v.producer.operands[0])
        if v.type.quant is None or isinstance(v.type.quant, PerAxisQuant):
            return self.node("Transpose", [xs[0]], f"{name}/Transpose_in", perm=TO_NCHW)
        xi = self.node("Transpose", [self.stored_name(v)], f"{name}/Transpose_in", perm=TO_NCHW)
        return self.dequantize(xi, v.type.with_shape([v.shape[p] for p in TO_NCHW]), name)

    def back(self, y: str, layout: str, name: str, out: str) -> str:
        if layout == "NCHW":
            return self.node("Identity", [y], f"{name}/Identity", [out])
        return self.node("Transpose", [y], f"{name}/Transpose_out", [out], perm=TO_NHWC)

    def conv(self, op: Op, xs, name, out, layout, act="none", alpha=0.0, nhwc_weights=None):
        a = op.attrs
        x = self.nchw(op, xs, layout, name)
        if nhwc_weights is None:
            nhwc_weights = layout == "NHWC"
        w = self.float_transposed(op.operands[1], TO_NCHW, name) if nhwc_weights else xs[1]
        mid_needed = layout == "NHWC" or act != "none"
        y = self.node("Conv", [x, w] + xs[2:3], name, None if mid_needed else [out],
                      strides=list(a["strides"]), pads=list(a["pads"]), dilations=list(a["dilations"]),
                      group=int(a["group"]))
        if act != "none":
            y = self.act(y, act, alpha, name, out if layout == "NCHW" else self.fresh(f"{name}/act"))
        return y if y == out else self.back(y, layout, name, out)

    def dense(self, op: Op, xs, name, out, act="none", alpha=0.0):
        mid = out if act == "none" else self.fresh(f"{name}/linear")
        if op.operands[0].type.rank == 2:
            y = self.node("Gemm", xs[:3], name, [mid], transB=1)
        else:
            wt = self.float_transposed(op.operands[1], [1, 0], name)
            if len(xs) > 2:
                y = self.node("MatMul", [xs[0], wt], f"{name}/MatMul")
                y = self.node("Add", [y, xs[2]], name, [mid])
            else:
                y = self.node("MatMul", [xs[0], wt], name, [mid])
        return self.act(y, act, alpha, name, out) if act != "none" else y

    def pool(self, op_type: str, op: Op, xs, name: str, out: str, layout: str, **extra):
        a = op.attrs
        y = self.node(op_type, [self.nchw(op, xs, layout, name)], name, None if layout == "NHWC" else [out],
                      kernel_shape=list(a["kernel"]), strides=list(a["strides"]), pads=list(a["pads"]), **extra)
        return y if layout == "NCHW" else self.back(y, layout, name, out)

    def integer_nhwc(self, op: Op, name: str, build) -> None:
        """An NHWC integer layer as Transpose (integers) -> DQ -> NCHW float op -> Q -> Transpose.

        Transposing the stored integers keeps each float op directly between its
        DequantizeLinear and QuantizeLinear: the node group onnxruntime's QDQ
        fusion expects.
        """
        x, y = op.operands[0], op.result
        x_t = TensorType(tuple(x.shape[p] for p in TO_NCHW), x.type.dtype, x.type.quant)
        y_t = TensorType(tuple(y.shape[p] for p in TO_NCHW), y.type.dtype, y.type.quant)
        xi = self.node("Transpose", [self.stored_name(x)], f"{name}/Transpose_in", perm=TO_NCHW)
        xf = self.dequantize(xi, x_t, name)
        yf = build(xf, self.fresh(f"{name}/float"))
        yi = self.quantize(self.clamp(op, yf, name), y_t, name, self.fresh(f"{name}/nchw"), op)
        self.node("Transpose", [yi], f"{name}/Transpose_out", [self.stored[id(y)]], perm=TO_NHWC)

    def clamp(self, op: Op, y: str, name: str) -> str:
        """The integer clamp [act_min, act_max] as a float Relu/Clip before the QuantizeLinear."""
        t = op.result.type
        lo, hi = storage_range(t.dtype)
        a_lo, a_hi = op.attrs.get("act_min", lo), op.attrs.get("act_max", hi)
        zp, scale = t.quant.zero_point, t.quant.scale
        if a_lo == zp and a_hi == hi:
            return self.node("Relu", [y], f"{name}/Relu")
        if a_lo > lo or a_hi < hi:
            bounds = [self.init(np.array((a - zp) * scale, np.float32), f"{name}/{k}")
                      for a, k in ((a_lo, "min"), (a_hi, "max"))]
            return self.node("Clip", [y] + bounds, f"{name}/Clip")
        return y


# ---------------------------------------------------------------- op tables
def _shape_op(ex: _Exporter, op: Op, name: str, out: str):
    """Data movement: the same ONNX op on the stored tensors (exact on integers too)."""
    a, k = op.attrs, op.opname
    xs = [ex.stored_name(v) for v in op.operands]
    if k == "nn.reshape":
        shape = xs[1] if len(xs) > 1 else ex.ints(op.result.shape, f"{name}/shape")
        ex.node("Reshape", [xs[0], shape], name, [out])
    elif k == "nn.flatten":
        ex.node("Flatten", xs, name, [out], axis=int(a["axis"]))
    elif k in ("nn.squeeze", "nn.unsqueeze"):
        ex.node("Squeeze" if k == "nn.squeeze" else "Unsqueeze", [xs[0], ex.ints(a["axes"], f"{name}/axes")],
                name, [out])
    elif k == "nn.transpose":
        ex.node("Transpose", xs, name, [out], perm=list(a["perm"]))
    elif k == "nn.concat":
        ex.node("Concat", xs, name, [out], axis=int(a["axis"]))
    elif k == "nn.pad":
        value = ex.init(np.array(a["value"], op.operands[0].type.np_dtype), f"{name}/value")
        ex.node("Pad", [xs[0], ex.ints(a["pads"], f"{name}/pads"), value], name, [out], mode="constant")
    elif k == "nn.slice":
        ex.node("Slice", xs, name, [out])
    elif k == "nn.gather":
        ex.node("Gather", xs, name, [out], axis=int(a["axis"]))
    elif k == "nn.shape":
        ex.node("Shape", xs, name, [out])
    elif k == "nn.cast":
        ex.node("Cast", xs, name, [out], to=ONNX_DTYPES[a["to"]])
    else:  # identity, dropout
        ex.node("Identity", xs, name, [out])


def _nn_elementwise(ex, op, xs, name, out):
    mid = out if op.attrs["act"] == "none" else ex.fresh(f"{name}/{ELEMENTWISE[op.opname]}")
    y = ex.node(ELEMENTWISE[op.opname], xs, name, [mid])
    if mid == out:
        return y
    return ex.act(y, op.attrs["act"], op.attrs["act_alpha"], name, out)


def _nn_clip(ex, op, xs, name, out):
    bounds = [ex.init(np.array(op.attrs[k], np.float32), f"{name}/{k}") if np.isfinite(op.attrs[k]) else ""
              for k in ("min", "max")]
    while bounds and bounds[-1] == "":
        bounds.pop()
    return ex.node("Clip", [xs[0]] + bounds, name, [out])


def _nn_hard_swish(ex, op, xs, name, out):
    if ex.opset >= 14:
        return ex.node("HardSwish", xs, name, [out])
    # x * hard_sigmoid(x) with alpha 1/6, beta 1/2 is the definition of HardSwish
    h = ex.node("HardSigmoid", xs, f"{name}/HardSigmoid", alpha=1 / 6, beta=0.5)
    return ex.node("Mul", [xs[0], h], name, [out])


def _nn_batchnorm(ex, op, xs, name, out):
    rank, axis = op.operands[0].type.rank, op.attrs["axis"] % op.operands[0].type.rank
    if axis == 1:
        return ex.node("BatchNormalization", xs, name, [out], epsilon=float(op.attrs["epsilon"]))
    shape = ex.ints([-1] + [1] * (rank - 1 - axis), f"{name}/channel_shape")
    scale, bias, mean, var = (ex.node("Reshape", [p, shape], f"{name}/Reshape") for p in xs[1:])
    eps = ex.init(np.array(op.attrs["epsilon"], np.float32), f"{name}/epsilon")
    std = ex.node("Sqrt", [ex.node("Add", [var, eps], f"{name}/AddEpsilon")], f"{name}/Sqrt")
    norm = ex.node("Div", [ex.node("Sub", [xs[0], mean], f"{name}/Sub"), std], f"{name}/Div")
    return ex.node("Add", [ex.node("Mul", [norm, scale], f"{name}/Mul"), bias], name, [out])


def _nn_scale_shift(ex, op, xs, name, out):
    rank, axis = op.operands[0].type.rank, op.attrs["axis"] % op.operands[0].type.rank
    shape = ex.ints([-1] + [1] * (rank - 1 - axis), f"{name}/channel_shape")
    scale, shift = (ex.node("Reshape", [p, shape], f"{name}/Reshape") for p in xs[1:])
    return ex.node("Add", [ex.node("Mul", [xs[0], scale], f"{name}/Mul"), shift], name, [out])


def _nn_reduce_mean(ex, op, xs, name, out):
    keep = int(op.attrs["keepdims"])
    if ex.opset >= 18:
        return ex.node("ReduceMean", [xs[0], ex.ints(op.attrs["axes"], f"{name}/axes")], name, [out], keepdims=keep)
    return ex.node("ReduceMean", xs, name, [out], axes=list(op.attrs["axes"]), keepdims=keep)


def _nn_global_pool(op_type):
    def build(ex, op, xs, name, out):
        layout = op.attrs["layout"]
        y = ex.node(op_type, [ex.nchw(op, xs, layout, name)], name, None if layout == "NHWC" else [out])
        return ex.back(y, layout, name, out) if layout == "NHWC" else y
    return build


_FLOAT_OPS = {
    **{k: _nn_elementwise for k in ELEMENTWISE},
    **{k: (lambda t: lambda ex, op, xs, name, out: ex.node(t, xs, name, [out]))(t) for k, t in UNARY.items()},
    "nn.clip": _nn_clip,
    "nn.leaky_relu": lambda ex, op, xs, name, out: ex.node("LeakyRelu", xs, name, [out], alpha=op.attrs["alpha"]),
    "nn.hard_sigmoid": lambda ex, op, xs, name, out: ex.node("HardSigmoid", xs, name, [out],
                                                             alpha=op.attrs["alpha"], beta=op.attrs["beta"]),
    "nn.hard_swish": _nn_hard_swish,
    "nn.softmax": lambda ex, op, xs, name, out: ex.node("Softmax", xs, name, [out], axis=int(op.attrs["axis"])),
    "nn.conv2d": lambda ex, op, xs, name, out: ex.conv(op, xs, name, out, op.attrs["layout"],
                                                       op.attrs["act"], op.attrs["act_alpha"]),
    "nn.dense": lambda ex, op, xs, name, out: ex.dense(op, xs, name, out, op.attrs["act"], op.attrs["act_alpha"]),
    "nn.gemm": lambda ex, op, xs, name, out: ex.node(
        "Gemm", xs, name, [out], alpha=op.attrs["alpha"], beta=op.attrs["beta"],
        transA=int(op.attrs["trans_a"]), transB=int(op.attrs["trans_b"])),
    "nn.matmul": lambda ex, op, xs, name, out: ex.node("MatMul", xs, name, [out]),
    "nn.batchnorm": _nn_batchnorm,
    "nn.scale_shift": _nn_scale_shift,
    "nn.maxpool": lambda ex, op, xs, name, out: ex.pool(
        "MaxPool", op, xs, name, out, op.attrs["layout"], dilations=list(op.attrs["dilations"]),
        ceil_mode=int(op.attrs["ceil_mode"])),
    "nn.avgpool": lambda ex, op, xs, name, out: ex.pool(
        "AveragePool", op, xs, name, out, op.attrs["layout"], ceil_mode=int(op.attrs["ceil_mode"]),
        count_include_pad=int(op.attrs["count_include_pad"])),
    "nn.global_avgpool": _nn_global_pool("GlobalAveragePool"),
    "nn.global_maxpool": _nn_global_pool("GlobalMaxPool"),
    "nn.reduce_mean": _nn_reduce_mean,
}


# ---------------------------------------------------------------- integer ops in QDQ form
def _table_function(op: Op, tables):
    """The float map (sigmoid or tanh) whose table ``op`` holds, or None."""
    table = np.asarray(op.attrs["table"], np.int64)
    x, y = op.operands[0].type, op.result.type
    if not (isinstance(x.quant, FixedPoint) and isinstance(y.quant, FixedPoint)):
        return None
    for fn, onnx_op in ((_sigmoid, "Sigmoid"), (np.tanh, "Tanh")):
        if np.array_equal(table, tables(fn, x.quant.frac_bits, y.quant.frac_bits)):
            return onnx_op
    return None


def _qnn_lut(ex, op, xs, name, out):
    from .ops.qnn_softmax import lut_table
    fn = _table_function(op, lut_table)
    if fn is not None:
        return ex.node(fn, xs, name, [out])
    # Not a map we know: look the table up exactly, y = table[x + 128], then back to reals.
    t = op.result.type
    table = ex.init(np.asarray(op.attrs["table"], t.np_dtype), f"{name}/table")
    idx = ex.node("Cast", [ex.stored_name(op.operands[0])], f"{name}/Cast", to=TensorProto.INT32)
    idx = ex.node("Add", [idx, ex.init(np.array(128, np.int32), f"{name}/offset")], f"{name}/Index")
    ex.node("Gather", [table, idx], f"{name}/Gather", [ex.stored[id(op.result)]])
    return None


def _qnn_lut_interp(ex, op, xs, name, out):
    from .ops.qnn_softmax import lut_interp_table
    fn = _table_function(op, lut_interp_table)
    if fn is None:
        raise UnsupportedModelError(f"ONNX export: {op.describe()} interpolates a table that is neither "
                                    f"sigmoid nor tanh; it has no ONNX equivalent")
    return ex.node(fn, xs, name, [out])


def _integer_conv(ex, op, xs, name, out):
    ex.integer_nhwc(op, name, lambda x, y: ex.conv(op, [x] + xs[1:], name, y, "NCHW", nhwc_weights=True))


def _integer_pool(op_type):
    def build(ex, op, xs, name, out):
        # qnn.avgpool counts the padding only when asked; s8.avgpool never does
        extra = {"count_include_pad": int(op.attrs.get("count_include_pad", False))} if op_type == "AveragePool" else {}
        ex.integer_nhwc(op, name, lambda x, y: ex.pool(op_type, op, [x], name, y, "NCHW", **extra))
    return build


def _softmax(ex, op, xs, name, out):
    return ex.node("Softmax", xs, name, [out], axis=-1)


def _requantize(ex, op, xs, name, out):
    return xs[0]  # the clamp and the QuantizeLinear into the new format are the whole op


_INTEGER_OPS = {
    "qnn.conv2d": _integer_conv,
    "qnn.dense": (lambda ex, op, xs, name, out: ex.dense(op, xs, name, out)),
    "qnn.add": (lambda ex, op, xs, name, out: ex.node("Add", xs, name, [out])),
    "qnn.requantize": (_requantize),
    "qnn.maxpool": _integer_pool("MaxPool"),
    "qnn.avgpool": _integer_pool("AveragePool"),
    "qnn.lut": _qnn_lut,
    "qnn.lut_interp": _qnn_lut_interp,
    "qnn.softmax": _softmax,
    "s8.conv2d": _integer_conv,
    "s8.dense": (lambda ex, op, xs, name, out: ex.dense(op, xs, name, out)),
    "s8.add": (lambda ex, op, xs, name, out: ex.node("Add", xs, name, [out])),
    "s8.requantize": (_requantize),
    "s8.maxpool": _integer_pool("MaxPool"),
    "s8.avgpool": _integer_pool("AveragePool"),
    "s8.softmax": _softmax,
}


# ---------------------------------------------------------------- API
def export_qdq_onnx(graph: Graph) -> onnx.ModelProto:
    """The graph as an ONNX model; quantized values in QDQ form (see the module docstring)."""
    graph.verify()
    return _Exporter(graph).run()


def write_onnx(graph: Graph, path) -> None:
    """Export ``graph`` and write it to ``path`` atomically (all bytes or nothing)."""
    from .fileio import write_files
    data = export_qdq_onnx(graph).SerializeToString(deterministic=True)
    try:
        write_files([(Path(path), data)])
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
