"""Per-op ONNX lifters for the frontend, each with the checks that decide support.

A lifter is registered for one or more ONNX op types with the attributes it
understands and an optional ``check(imp, node, attrs) -> reason | None``. The
frontend runs every check before lifting anything, so a model with several
unsupported nodes fails once, listing all of them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from onnx import TensorProto, defs, helper, numpy_helper

from qcc.errors import OpError
from qcc.frontend.importer import MAX_OPSET, ONNX_DTYPES, Importer, onnx_dtype_name
from qcc.ir.ops.nn_shape import resolve_reshape


@dataclass
class Lifter:
    fn: Callable
    attrs: Tuple[str, ...]
    check: Optional[Callable]


LIFTERS: Dict[str, Lifter] = {}


def lifter(*op_types: str, attrs: Tuple[str, ...] = (), check: Optional[Callable] = None):
    def register(fn):
        for t in op_types:
            LIFTERS[t] = Lifter(fn, tuple(attrs), check)
        return fn
    return register


def node_attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


# ---------------------------------------------------------------- checking
def _collect_constants(imp: Importer):
    """Record Constant node values so checks can see constant inputs (Clip bounds, Pad pads, ...)."""
    for node in imp.model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _constant_value(node)
            if value is not None:
                imp.consts[node.output[0]] = value
                imp.const_op_names[node.output[0]] = imp.node_name(node)


def check_model(imp: Importer) -> List[Tuple[str, str, str]]:
    """(node name, op type, reason) for every node qcc cannot lift."""
    _collect_constants(imp)
    problems = []
    for node in imp.model.graph.node:
        why = _check_node(imp, node)
        if why:
            problems.append((imp.node_name(node), node.op_type, why))
    return problems


def _check_node(imp: Importer, node) -> Optional[str]:
    if node.domain not in ("", "ai.onnx"):
        return f"custom domain '{node.domain}' is not supported"
    lift = LIFTERS.get(node.op_type)
    if lift is None:
        return f"qcc has no lowering for ONNX op {node.op_type}"
    if imp.opset > MAX_OPSET:
        new, old = defs.get_schema(node.op_type, imp.opset), defs.get_schema(node.op_type, MAX_OPSET)
        if ([i.name for i in new.inputs], [o.name for o in new.outputs]) != \
                ([i.name for i in old.inputs], [o.name for o in old.outputs]):
            return f"{node.op_type} changed after opset {MAX_OPSET} (model uses opset {imp.opset})"
    a = node_attrs(node)
    unknown = sorted(set(a) - set(lift.attrs))
    if unknown:
        return f"attribute{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not supported"
    for name in list(node.input) + list(node.output):
        elem = imp.types.get(name, (None, 0))[1]
        if name and elem and elem not in ONNX_DTYPES:
            return f"tensor '{name}' has element type {onnx_dtype_name(elem)}, which qcc does not support"
    return _check_values(imp, node) or (lift.check(imp, node, a) if lift.check else None)


def _check_values(imp: Importer, node) -> Optional[str]:
    """Constants that would silently give wrong numbers, and integer graph inputs cast to float."""
    for name in node.input:
        c = imp.const(name)
        if c is not None and c.dtype.kind == "f" and c.size and not np.isfinite(c).all():
            return f"constant '{name}' holds NaN or infinite values"
    if node.op_type == "Div" and len(node.input) > 1:
        d = imp.const(node.input[1])
        if d is not None and d.size and (np.asarray(d) == 0).any():
            at = int(np.flatnonzero(np.asarray(d).reshape(-1) == 0)[0])
            return f"divides by constant '{node.input[1]}', which is 0 at element {at}"
    graph_inputs = {i.name for i in imp.model.graph.input} - set(imp.consts)
    if node.op_type == "Cast" and node.input and node.input[0] in graph_inputs:
        elem = imp.types.get(node.input[0], (None, 0))[1]
        if elem not in (0, TensorProto.FLOAT):
            return (f"casts graph input '{node.input[0]}' ({onnx_dtype_name(elem)}) to float: qcc's C API "
                    f"takes float inputs (quantized by NAME_quantize_input); declare the input float and "
                    f"remove the Cast (the pixel values stay the same numbers)")
    return None


def lift_node(imp: Importer, node):
    LIFTERS[node.op_type].fn(imp, node, node_attrs(node))


def _axis(axis: int, rank: int, what: str = "axis") -> int:
    """An ONNX axis made non-negative; one outside [-rank, rank) is an error, never wrapped around."""
    if not -rank <= int(axis) < max(rank, 1):
        raise OpError(f"{what} {axis} is out of range for an input of rank {rank}")
    return int(axis) % rank if rank else 0


def _inp(node, i) -> str:
    return node.input[i] if len(node.input) > i else ""


def _need_rank4(imp, node, a):
    r = imp.rank(node.input[0])
    if r != 4:
        return f"only 2-D spatial ops (4-D NCHW input) are supported; input rank is {r}"
    if imp.shape(node.input[0]) is None:
        return "the input shape is not static"
    return None


def _need_consts(*indices):
    def check(imp, node, a):
        for i in indices:
            name = _inp(node, i)
            if name and imp.const(name) is None:
                return f"input {i} ('{name}') must be a constant (initializer or Constant)"
        return None
    return check


def _all(*checks):
    def check(imp, node, a):
        for c in checks:
            why = c(imp, node, a)
            if why:
                return why
        return None
    return check


# ---------------------------------------------------------------- geometry
def resolve_pads(a: dict, in_hw, kernel, strides, dilations) -> List[int]:
    """Explicit [top, left, bottom, right] pads for any ONNX auto_pad mode."""
    mode = a.get("auto_pad", "NOTSET") or "NOTSET"
    if mode == "NOTSET":
        return list(a.get("pads", [0, 0, 0, 0]))
    if mode == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for n, k, s, d in zip(in_hw, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        # SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the beginning.
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin + end


def _window_attrs(imp, node, a, kernel):
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    pads = resolve_pads(a, imp.shape(node.input[0])[2:], kernel, strides, dilations)
    return strides, dilations, pads


def _check_auto_pad(imp, node, a):
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER", ""):
        return f"unknown auto_pad '{a['auto_pad']}'"
    return None


# ---------------------------------------------------------------- conv, dense, elementwise
def _check_conv(imp, node, a):
    if imp.shape(node.input[1]) is None:
        return "the weight shape is not static"
    return None


@lifter("Conv", attrs=("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"),
        check=_all(_need_rank4, _check_auto_pad, _check_conv))
def _conv(imp, node, a):
    w_shape = imp.shape(node.input[1])
    kernel = list(a.get("kernel_shape", w_shape[2:]))
    if kernel != list(w_shape[2:]):
        raise OpError(f"kernel_shape {kernel} does not match the weights {list(w_shape)}")
    strides, dilations, pads = _window_attrs(imp, node, a, kernel)
    operands = [imp.value(n) for n in node.input if n]
    imp.emit("nn.conv2d", operands, {"strides": strides, "pads": pads, "dilations": dilations,
                                     "group": a.get("group", 1)}, node)


@lifter("Gemm", attrs=("alpha", "beta", "transA", "transB"))
def _gemm(imp, node, a):
    imp.emit("nn.gemm", [imp.value(n) for n in node.input if n],
             {"alpha": a.get("alpha", 1.0), "beta": a.get("beta", 1.0),
              "trans_a": bool(a.get("transA", 0)), "trans_b": bool(a.get("transB", 0))}, node)


@lifter("MatMul")
def _matmul(imp, node, a):
    imp.emit("nn.matmul", [imp.value(n) for n in node.input], {}, node)


_SIMPLE = {"Add": "nn.add", "Sub": "nn.sub", "Mul": "nn.mul", "Div": "nn.div", "Relu": "nn.relu",
           "Sigmoid": "nn.sigmoid", "Tanh": "nn.tanh", "HardSwish": "nn.hard_swish", "Identity": "nn.identity"}


@lifter(*_SIMPLE)
def _simple(imp, node, a):
    imp.emit(_SIMPLE[node.op_type], [imp.value(n) for n in node.input], {}, node)


@lifter("LeakyRelu", attrs=("alpha",))
def _leaky_relu(imp, node, a):
    imp.emit("nn.leaky_relu", [imp.value(node.input[0])], {"alpha": a.get("alpha", 0.01)}, node)


@lifter("HardSigmoid", attrs=("alpha", "beta"))
def _hard_sigmoid(imp, node, a):
    imp.emit("nn.hard_sigmoid", [imp.value(node.input[0])],
             {"alpha": a.get("alpha", 0.2), "beta": a.get("beta", 0.5)}, node)


@lifter("Clip", check=_need_consts(1, 2))
def _clip(imp, node, a):
    lo, hi = imp.const(_inp(node, 1)), imp.const(_inp(node, 2))
    imp.emit("nn.clip", [imp.value(node.input[0])],
             {"min": -math.inf if lo is None else float(lo), "max": math.inf if hi is None else float(hi)}, node)


def _check_batchnorm(imp, node, a):
    if a.get("training_mode", 0):
        return "training_mode=1 is not supported (inference only)"
    if any(imp.is_used(o) for o in node.output[1:]):
        return "the running mean/variance outputs are used (training mode)"
    return None


@lifter("BatchNormalization", attrs=("epsilon", "momentum", "training_mode"), check=_check_batchnorm)
def _batchnorm(imp, node, a):
    imp.emit("nn.batchnorm", [imp.value(n) for n in node.input[:5]],
             {"epsilon": a.get("epsilon", 1e-5), "axis": 1}, node)


def _check_softmax(imp, node, a):
    if imp.opset < 13 and imp.shape(node.input[0]) is None:
        return "opset < 13 Softmax needs a static input shape"
    return None


@lifter("Softmax", attrs=("axis",), check=_check_softmax)
def _softmax(imp, node, a):
    x = imp.value(node.input[0])
    rank = len(x.shape)
    if imp.opset >= 13:
        imp.emit("nn.softmax", [x], {"axis": _axis(a.get("axis", -1), rank)}, node)
        return
    # Before opset 13 Softmax flattens dims [axis:] into one; that is a single-axis
    # softmax only when the trailing dims are all 1, else reshape around it.
    axis = _axis(a.get("axis", 1), rank)
    if int(np.prod(x.shape[axis + 1:], dtype=np.int64)) == 1:
        imp.emit("nn.softmax", [x], {"axis": axis}, node)
        return
    name = imp.node_name(node)
    flat = [int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64))]
    y = imp.emit("nn.reshape", [x], {"shape": flat}, node, name=f"{name}/flatten", outputs=[])
    y = imp.emit("nn.softmax", [y], {"axis": 1}, node, outputs=[])
    imp.emit("nn.reshape", [y], {"shape": list(x.shape)}, node, name=f"{name}/unflatten")


# ---------------------------------------------------------------- pooling and reductions
def _check_maxpool(imp, node, a):
    if len(node.output) > 1 and imp.is_used(node.output[1]):
        return "the Indices output is not supported"
    return None


@lifter("MaxPool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides"),
        check=_all(_need_rank4, _check_auto_pad, _check_maxpool))
def _maxpool(imp, node, a):
    kernel = list(a["kernel_shape"])
    strides, dilations, pads = _window_attrs(imp, node, a, kernel)
    imp.emit("nn.maxpool", [imp.value(node.input[0])],
             {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations,
              "ceil_mode": bool(a.get("ceil_mode", 0))}, node)


def _check_avgpool(imp, node, a):
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return f"dilated AveragePool (dilations={list(a['dilations'])}) is not supported"
    return None


@lifter("AveragePool", attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads",
                              "strides"),
        check=_all(_need_rank4, _check_auto_pad, _check_avgpool))
def _avgpool(imp, node, a):
    kernel = list(a["kernel_shape"])
    strides, _, pads = _window_attrs(imp, node, a, kernel)
    imp.emit("nn.avgpool", [imp.value(node.input[0])],
             {"kernel": kernel, "strides": strides, "pads": pads, "ceil_mode": bool(a.get("ceil_mode", 0)),
              "count_include_pad": bool(a.get("count_include_pad", 0))}, node)


@lifter("GlobalAveragePool", "GlobalMaxPool", check=_need_rank4)
def _global_pool(imp, node, a):
    opname = "nn.global_avgpool" if node.op_type == "GlobalAveragePool" else "nn.global_maxpool"
    imp.emit(opname, [imp.value(node.input[0])], {}, node)


@lifter("ReduceMean", attrs=("axes", "keepdims", "noop_with_empty_axes"), check=_need_consts(1))
def _reduce_mean(imp, node, a):
    x = imp.value(node.input[0])
    axes = a.get("axes")
    if _inp(node, 1):
        axes = imp.const(node.input[1]).tolist()
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            imp.emit("nn.identity", [x], {}, node)
            return
        axes = list(range(len(x.shape)))
    imp.emit("nn.reduce_mean", [x], {"axes": sorted(_axis(ax, len(x.shape), "axes") for ax in axes),
                                     "keepdims": bool(a.get("keepdims", 1))}, node)


# ---------------------------------------------------------------- shapes and data movement
_SHAPE_CHAIN_ONNX = {"Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Reshape", "Identity", "Add",
                     "Sub", "Mul", "Div", "Flatten", "Constant"}


def _static_value(imp, name: str, depth: int = 0) -> bool:
    """Whether ``name`` is computable at import time from constants and static shapes."""
    if not name or imp.const(name) is not None:
        return True
    node = imp.producers.get(name)
    if node is None or depth > 50:
        return False
    if node.op_type == "Shape":
        return imp.shape(node.input[0]) is not None
    return node.op_type in _SHAPE_CHAIN_ONNX and all(_static_value(imp, n, depth + 1) for n in node.input)


def _check_reshape(imp, node, a):
    if imp.const(node.input[1]) is None and imp.shape(node.output[0]) is None \
            and not _static_value(imp, node.input[1]):
        return "the target shape is computed from run-time data, so the result shape is unknown"
    return None


@lifter("Reshape", attrs=("allowzero",), check=_check_reshape)
def _reshape(imp, node, a):
    x = imp.value(node.input[0])
    target = imp.const(node.input[1])
    if target is None:
        imp.emit("nn.reshape", [x, imp.value(node.input[1])], {"shape": []}, node)
    else:
        shape = resolve_reshape(x.shape, target.tolist(), bool(a.get("allowzero", 0)))
        imp.emit("nn.reshape", [x], {"shape": list(shape)}, node)


@lifter("Flatten", attrs=("axis",))
def _flatten(imp, node, a):
    x = imp.value(node.input[0])
    axis = a.get("axis", 1)
    imp.emit("nn.flatten", [x], {"axis": axis + len(x.shape) if axis < 0 else axis}, node)


@lifter("Squeeze", attrs=("axes",), check=_need_consts(1))
def _squeeze(imp, node, a):
    x = imp.value(node.input[0])
    axes = imp.const(_inp(node, 1)).tolist() if _inp(node, 1) else a.get("axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    imp.emit("nn.squeeze", [x], {"axes": sorted(_axis(ax, len(x.shape), "axes") for ax in axes)}, node)


@lifter("Unsqueeze", attrs=("axes",), check=_need_consts(1))
def _unsqueeze(imp, node, a):
    x = imp.value(node.input[0])
    axes = imp.const(_inp(node, 1)).tolist() if _inp(node, 1) else a["axes"]
    rank = len(x.shape) + len(axes)
    imp.emit("nn.unsqueeze", [x], {"axes": sorted(_axis(ax, rank, "axes") for ax in axes)}, node)


@lifter("Transpose", attrs=("perm",))
def _transpose(imp, node, a):
    x = imp.value(node.input[0])
    perm = a.get("perm", list(reversed(range(len(x.shape)))))
    imp.emit("nn.transpose", [x], {"perm": list(perm)}, node)


@lifter("Concat", attrs=("axis",))
def _concat(imp, node, a):
    xs = [imp.value(n) for n in node.input if n]
    imp.emit("nn.concat", xs, {"axis": _axis(a["axis"], len(xs[0].shape))}, node)


def _check_pad(imp, node, a):
    if a.get("mode", "constant") != "constant":
        return f"Pad mode '{a['mode']}' is not supported (only constant)"
    return _need_consts(1, 2, 3)(imp, node, a)


@lifter("Pad", attrs=("mode",), check=_check_pad)
def _pad(imp, node, a):
    x = imp.value(node.input[0])
    rank = len(x.shape)
    given = imp.const(node.input[1]).tolist()
    value = imp.const(_inp(node, 2))
    axes = imp.const(_inp(node, 3))
    pads = [0] * (2 * rank)
    axes = list(range(rank)) if axes is None else [_axis(ax, rank, "axes") for ax in axes.tolist()]
    for i, ax in enumerate(axes):
        pads[ax], pads[ax + rank] = given[i], given[i + len(axes)]
    imp.emit("nn.pad", [x], {"pads": pads, "value": 0.0 if value is None or value.size == 0 else float(value)},
             node)


def _check_dropout(imp, node, a):
    mode = imp.const(_inp(node, 2))
    if _inp(node, 2) and (mode is None or bool(mode)):
        return "training_mode must be a constant false"
    if len(node.output) > 1 and imp.is_used(node.output[1]):
        return "the mask output is not supported"
    return None


@lifter("Dropout", attrs=("ratio", "seed"), check=_check_dropout)
def _dropout(imp, node, a):
    imp.emit("nn.dropout", [imp.value(node.input[0])], {}, node)


def _constant_value(node) -> Optional[np.ndarray]:
    a = node_attrs(node)
    if "value" in a:
        if a["value"].data_type not in ONNX_DTYPES:
            return None
        try:
            return numpy_helper.to_array(a["value"])
        except Exception as e:  # corrupt tensor data
            raise OpError(f"its value tensor has unreadable data ({type(e).__name__})") from None
    if "value_float" in a:
        return np.array(a["value_float"], np.float32)
    if "value_floats" in a:
        return np.array(a["value_floats"], np.float32)
    if "value_int" in a:
        return np.array(a["value_int"], np.int64)
    if "value_ints" in a:
        return np.array(a["value_ints"], np.int64)
    return None


def _check_constant(imp, node, a):
    if _constant_value(node) is None:
        kind = next(iter(a), "nothing")
        return f"Constant with {kind} is not supported (numeric tensors only)"
    return None


@lifter("Constant", attrs=("value", "value_float", "value_floats", "value_int", "value_ints", "sparse_value",
                           "value_string", "value_strings"), check=_check_constant)
def _constant(imp, node, a):
    pass  # recorded by _collect_constants; becomes a qcc.const where an op uses it


@lifter("Shape", attrs=("start", "end"))
def _shape(imp, node, a):
    x = imp.value(node.input[0])
    rank = len(x.shape)
    start, end = a.get("start", 0), a.get("end", rank)
    start, end = [min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end)]
    if (start, end) == (0, rank):
        imp.emit("nn.shape", [x], {}, node)
        return
    name = imp.node_name(node)
    s = imp.emit("nn.shape", [x], {}, node, outputs=[])
    bounds = [imp.add_const(np.array([v], np.int64), f"{name}/{k}") for k, v in (("start", start), ("end", end))]
    imp.emit("nn.slice", [s, *bounds], {}, node, name=f"{name}/slice")


@lifter("Gather", attrs=("axis",))
def _gather(imp, node, a):
    x = imp.value(node.input[0])
    imp.emit("nn.gather", [x, imp.value(node.input[1])], {"axis": _axis(a.get("axis", 0), len(x.shape))}, node)


def _check_cast(imp, node, a):
    if a["to"] not in ONNX_DTYPES:
        return f"cast to {onnx_dtype_name(a['to'])} is not supported"
    return None


@lifter("Cast", attrs=("to", "saturate"), check=_check_cast)
def _cast(imp, node, a):
    imp.emit("nn.cast", [imp.value(node.input[0])], {"to": ONNX_DTYPES[a["to"]]}, node)


@lifter("Slice")
def _slice(imp, node, a):
    operands = [imp.value(n) for n in node.input[:3]]
    axes, steps = _inp(node, 3), _inp(node, 4)
    if axes:
        operands.append(imp.value(axes))
    elif steps:  # steps given without axes: the default axes are 0..len(starts)-1
        n = operands[1].shape[0]
        operands.append(imp.add_const(np.arange(n, dtype=np.int64), f"{imp.node_name(node)}/axes"))
    if steps:
        operands.append(imp.value(steps))
    imp.emit("nn.slice", operands, {}, node)


