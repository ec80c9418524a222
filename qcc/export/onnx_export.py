"""Export a graph back to ONNX, quantized graphs as QDQ, for inspection in familiar tools.

``export_qdq_onnx(graph) -> onnx.ModelProto``; ``write_onnx(graph, path)``
writes it atomically (``qcc-opt ... --emit-onnx out.onnx``, ``qcc ...
--emit-onnx-qdq out.onnx``) with ``out.onnx.json`` beside it, every quantized
tensor's format (``qcc.export.qdq_formats``) for training in the same formats. The model runs in
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

The per-op tables (which ONNX nodes each IR op becomes) live in
``qcc.export.onnx_export_ops``; this module is the walk and the tensor bookkeeping.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qcc.errors import InputError, UnsupportedModelError
from qcc.ir.graph import Graph, Op, Value
from qcc.export.onnx_export_ops import _FLOAT_OPS, _INTEGER_OPS, ONNX_DTYPES, SHAPE_OPS, _shape_op
from qcc.ir.types import PerAxisQuant, TensorType, storage_range

QUANTIZE_TO = ("i8", "u8", "i16", "u16")  # QuantizeLinear output types we emit
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


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
        if id(v) not in self.floats and v.type.dtype == "i64" and v.is_constant():
            self.floats[id(v)] = self._wide_constant(v, name)
        if id(v) not in self.floats:
            self.floats[id(v)] = self.dequantize(self.stored_name(v), v.type, name)
        return self.floats[id(v)]

    def _wide_constant(self, v: Value, name: str) -> str:
        """A 16x8 int64 bias (ONNX's DequantizeLinear takes no int64): the int32 QDQ form when its values
        fit int32 (the same reals), else its float32 reals."""
        array = np.asarray(v.constant(), np.int64)
        if np.abs(array).max(initial=0) < 1 << 31:
            t = TensorType(v.type.shape, "i32", v.type.quant)
            src = self.init(array.astype(np.int32), f"{name}/int32")
            return self.dequantize(src, t, name)
        q = v.type.quant
        scales = np.asarray(q.scales if isinstance(q, PerAxisQuant) else [q.scale], np.float64)
        return self.init((array * scales).astype(np.float32), f"{name}/real")

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
            from qcc.sim.qmn import quantize_array
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


# ---------------------------------------------------------------- API
def export_qdq_onnx(graph: Graph) -> onnx.ModelProto:
    """The graph as an ONNX model; quantized values in QDQ form (see the module docstring)."""
    for op in graph.ops:  # one integer op per cell, with internal formats a QDQ graph cannot state
        if op.opname in ("nn.lstm", "nn.gru", "qnn.lstm", "qnn.gru", "s8.lstm", "s8.gru", "qcc.state"):
            raise UnsupportedModelError(f"ONNX export: {op.describe()} (a recurrent cell) has no QDQ ONNX form yet")
    graph.verify()
    return _Exporter(graph).run()


def onnx_files(graph: Graph, path) -> List[tuple]:
    """``[(path, model bytes), (path.json, formats)]``: the QDQ model and, beside it, every quantized
    tensor's format (``qcc.export.qdq_formats``), for training with the same fake quantization."""
    from qcc.export.qdq_formats import formats_json
    model = export_qdq_onnx(graph)
    path = Path(path)
    return [(path, model.SerializeToString(deterministic=True)),
            (path.with_name(path.name + ".json"), formats_json(model))]


def write_onnx(graph: Graph, path) -> None:
    """Export ``graph`` to ``path`` and its formats to ``path.json``, atomically (all bytes or nothing)."""
    from qcc.fileio import write_files
    files = onnx_files(graph, path)
    try:
        write_files(files)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
