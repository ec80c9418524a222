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


def _need_rank3or4(imp, node, a):
    r = imp.rank(node.input[0])
    if r not in (3, 4):
        return f"only 1-D and 2-D spatial ops (3-D NCL or 4-D NCHW input) are supported; input rank is {r}"
    if imp.shape(node.input[0]) is None:
        return "the input shape is not static"
    return None


# 1-D spatial ops (N x C x L: audio, time series) lift as their 2-D form on N x C x 1 x L, between two
# reshapes; canonicalize merges the reshapes between consecutive 1-D layers, so a 1-D conv -> BN pair
# folds like a 2-D one.
def _is_1d(imp, node) -> bool:
    return imp.rank(node.input[0]) == 3


def _attrs_2d(a: dict) -> dict:
    """ONNX 1-D window attributes as 2-D ones with a height-1 window."""
    b = dict(a)
    for key in ("kernel_shape", "strides", "dilations"):
        if key in b:
            b[key] = [1] + list(b[key])
    if "pads" in b:
        begin, end = b["pads"]
        b["pads"] = [0, begin, 0, end]
    return b


def _emit_as_2d(imp, node, opname: str, operands: list, attrs: dict):
    """reshape N x C x L -> N x C x 1 x L, the 2-D op, reshape back to the node's 3-D output."""
    x = imp.value(node.input[0])
    n, c, length = x.shape
    name = imp.node_name(node)
    x4 = imp.emit("nn.reshape", [x], {"shape": [n, c, 1, length]}, node, name=f"{name}/to_2d", outputs=[])
    y4 = imp.emit(opname, [x4] + list(operands), attrs, node, outputs=[])
    yn, yc, _, yl = y4.shape
    imp.emit("nn.reshape", [y4], {"shape": [yn, yc, yl]}, node, name=f"{name}/to_1d")


def _emit_spatial(imp, node, opname: str, one_d: bool, params: list, attrs: dict):
    """The node's op on its first input and ``params``: directly, or for a 1-D input as the 2-D op."""
    if one_d:
        _emit_as_2d(imp, node, opname, params, attrs)
    else:
        imp.emit(opname, [imp.value(node.input[0])] + list(params), attrs, node)


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
    in_hw = imp.shape(node.input[0])[2:]
    pads = resolve_pads(a, (1,) + tuple(in_hw) if len(in_hw) == 1 else in_hw, kernel, strides, dilations)
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
        check=_all(_need_rank3or4, _check_auto_pad, _check_conv))
def _conv(imp, node, a):
    w_shape = imp.shape(node.input[1])
    kernel = list(a.get("kernel_shape", w_shape[2:]))
    if kernel != list(w_shape[2:]):
        raise OpError(f"kernel_shape {kernel} does not match the weights {list(w_shape)}")
    one_d = _is_1d(imp, node)
    if one_d:
        a, kernel, w_shape = _attrs_2d(a), [1] + kernel, tuple(w_shape[:2]) + (1,) + tuple(w_shape[2:])
    strides, dilations, pads = _window_attrs(imp, node, a, kernel)
    attrs = {"strides": strides, "pads": pads, "dilations": dilations, "group": a.get("group", 1)}
    if not one_d:
        imp.emit("nn.conv2d", [imp.value(n) for n in node.input if n], attrs, node)
        return
    w = imp.const(node.input[1])
    if w is not None:  # a constant stays a constant (fold-batchnorm needs it before const-fold runs)
        w4 = imp.add_const(w.reshape(w_shape), name=node.input[1])
    else:
        w4 = imp.emit("nn.reshape", [imp.value(node.input[1])], {"shape": list(w_shape)}, node,
                      name=f"{imp.node_name(node)}/weight_2d", outputs=[])
    _emit_as_2d(imp, node, "nn.conv2d", [w4] + [imp.value(n) for n in node.input[2:] if n], attrs)


# ConvTranspose (2-D) as a stride-1 convolution: zeros inserted between the input elements (s - 1 per gap,
# by reshape -> pad -> reshape), the conv padded with e = d (k - 1) - p (plus output_padding at the end),
# and the kernel flipped with its channel axes swapped per group:
#     W'[g * Co + o, i, a, b] = W[g * Ci + i, o, k_h - 1 - a, k_w - 1 - b]      (Ci = Cin / g, Co = Cout / g)
# Exact: only zeros are added. Pads beyond the kernel extent (a crop) are not supported.
def _conv_transpose_geometry(imp, node, a):
    kernel = list(imp.shape(node.input[1])[2:])
    strides = list(a.get("strides", [1, 1]))
    dilations = list(a.get("dilations", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    extra = list(a.get("output_padding", [0, 0]))
    begin = [d * (k - 1) - p for d, k, p in zip(dilations, kernel, pads[:2])]
    end = [d * (k - 1) - p + o - (s - 1) for d, k, p, o, s in zip(dilations, kernel, pads[2:], extra, strides)]
    return kernel, strides, dilations, begin, end


def _check_conv_transpose(imp, node, a):
    if imp.rank(node.input[0]) != 4 or imp.shape(node.input[0]) is None:
        return f"only 2-D ConvTranspose with a static 4-D NCHW input is supported (rank {imp.rank(node.input[0])})"
    if imp.shape(node.input[1]) is None:
        return "the weight shape is not static"
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID", ""):
        return f"auto_pad '{a['auto_pad']}' is not supported (give explicit pads)"
    if "output_shape" in a:
        return "output_shape is not supported (give pads and output_padding)"
    if imp.const(node.input[1]) is None:
        return "the weights must be a constant"
    _, _, _, begin, end = _conv_transpose_geometry(imp, node, a)
    if min(begin + end) < 0:
        return "pads larger than the dilated kernel extent (a crop) are not supported"
    return None


@lifter("ConvTranspose", attrs=("auto_pad", "dilations", "group", "kernel_shape", "output_padding", "output_shape",
                                "pads", "strides"),
        check=_check_conv_transpose)
def _conv_transpose(imp, node, a):
    kernel, strides, dilations, begin, end = _conv_transpose_geometry(imp, node, a)
    x = imp.value(node.input[0])
    n, c, h, w = x.shape
    name = imp.node_name(node)
    sh, sw = strides
    if (sh, sw) != (1, 1):  # zero insertion: [N,C,H,1,W,1] padded to [N,C,H,sh,W,sw], then merged
        x = imp.emit("nn.reshape", [x], {"shape": [n, c, h, 1, w, 1]}, node, name=f"{name}/spread", outputs=[])
        x = imp.emit("nn.pad", [x], {"pads": [0] * 9 + [sh - 1, 0, sw - 1]}, node, name=f"{name}/zeros",
                     outputs=[])
        x = imp.emit("nn.reshape", [x], {"shape": [n, c, h * sh, w * sw]}, node, name=f"{name}/merge", outputs=[])
    wt = imp.const(node.input[1])
    g = a.get("group", 1)
    ci, co = wt.shape[0] // g, wt.shape[1]
    flipped = wt[:, :, ::-1, ::-1].reshape(g, ci, co, *kernel).transpose(0, 2, 1, 3, 4).reshape(g * co, ci, *kernel)
    w_value = imp.add_const(np.ascontiguousarray(flipped), name=f"{node.input[1]}/conv")
    operands = [x, w_value] + ([imp.value(node.input[2])] if len(node.input) > 2 and node.input[2] else [])
    # the border is the conv's own zero padding
    imp.emit("nn.conv2d", operands, {"strides": [1, 1], "pads": begin + end, "dilations": dilations, "group": g},
             node)


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
    attrs = {"epsilon": a.get("epsilon", 1e-5), "axis": 1}
    params = [imp.value(n) for n in node.input[1:5]]
    # N x C x L: as N x C x 1 x L, next to a 1-D conv
    one_d = imp.rank(node.input[0]) == 3 and imp.shape(node.input[0]) is not None
    _emit_spatial(imp, node, "nn.batchnorm", one_d, params, attrs)


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
        check=_all(_need_rank3or4, _check_auto_pad, _check_maxpool))
def _maxpool(imp, node, a):
    one_d = _is_1d(imp, node)
    a = _attrs_2d(a) if one_d else a
    kernel = list(a["kernel_shape"])
    strides, dilations, pads = _window_attrs(imp, node, a, kernel)
    attrs = {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations,
             "ceil_mode": bool(a.get("ceil_mode", 0))}
    _emit_spatial(imp, node, "nn.maxpool", one_d, [], attrs)


def _check_avgpool(imp, node, a):
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        return f"dilated AveragePool (dilations={list(a['dilations'])}) is not supported"
    return None


@lifter("AveragePool", attrs=("auto_pad", "ceil_mode", "count_include_pad", "dilations", "kernel_shape", "pads",
                              "strides"),
        check=_all(_need_rank3or4, _check_auto_pad, _check_avgpool))
def _avgpool(imp, node, a):
    one_d = _is_1d(imp, node)
    a = _attrs_2d(a) if one_d else a
    kernel = list(a["kernel_shape"])
    strides, _, pads = _window_attrs(imp, node, a, kernel)
    attrs = {"kernel": kernel, "strides": strides, "pads": pads, "ceil_mode": bool(a.get("ceil_mode", 0)),
             "count_include_pad": bool(a.get("count_include_pad", 0))}
    _emit_spatial(imp, node, "nn.avgpool", one_d, [], attrs)


@lifter("GlobalAveragePool", "GlobalMaxPool", check=_need_rank3or4)
def _global_pool(imp, node, a):
    opname = "nn.global_avgpool" if node.op_type == "GlobalAveragePool" else "nn.global_maxpool"
    _emit_spatial(imp, node, opname, _is_1d(imp, node), [], {})


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
                     "Sub", "Mul", "Div", "Flatten", "Constant",
                     # a Loop's condition (loop_lifters.py folds these at import)
                     "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Not", "Xor"}


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
    if a.get("mode", "constant") not in ("constant", "reflect", "edge"):
        return f"Pad mode '{a['mode']}' is not supported (only constant, reflect and edge)"
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
    imp.emit("nn.pad", [x], {"pads": pads, "value": 0.0 if value is None or value.size == 0 else float(value),
                             "mode": a.get("mode", "constant")}, node)


# ---------------------------------------------------------------- Resize (nearest)
# ONNX Resize, mode "nearest": out[o] = in[nearest(x(o))] per resized axis, with the source coordinate x(o)
# of coordinate_transformation_mode (s = the axis scale, n / m the input / output length). Computed in
# float32 in onnxruntime's order of operations: a coordinate that lands on .5 must round the same way.
_F = np.float32
_RESIZE_COORDINATES = {
    "half_pixel": lambda o, s, n, m: (_F(o) + _F(0.5)) / s - _F(0.5),
    "pytorch_half_pixel": lambda o, s, n, m: (_F(o) + _F(0.5)) / s - _F(0.5) if m > 1 else _F(0),
    "asymmetric": lambda o, s, n, m: _F(o) / s,
    "tf_half_pixel_for_nn": lambda o, s, n, m: (_F(o) + _F(0.5)) / s,
    "align_corners": lambda o, s, n, m: _F(o) * _F(n - 1) / _F(m - 1) if m > 1 else _F(0),
}  # half_pixel_symmetric (opset 19) is not matched yet: onnxruntime rounds its .5 cases differently
_RESIZE_NEAREST = {
    "round_prefer_floor": lambda x: math.floor(x) if x == math.floor(x) + 0.5 else round(float(x)),
    "round_prefer_ceil": lambda x: math.ceil(x) if x == math.floor(x) + 0.5 else round(float(x)),
    "floor": lambda x: math.floor(x),
    "ceil": lambda x: math.ceil(x),
}


def _resize_plan(imp, node, a):
    """(per-axis output lengths, per-axis scales) of a Resize, or a reason it is unsupported."""
    shape = imp.shape(node.input[0])
    if shape is None:
        return "the input shape is not static"
    rank = len(shape)
    axes = [ax % rank for ax in a.get("axes", range(rank))]
    scales, sizes = imp.const(_inp(node, 2)), imp.const(_inp(node, 3))
    if _inp(node, 3) and sizes is None or _inp(node, 2) and scales is None:
        return "scales and sizes must be constants"
    if sizes is not None and sizes.size:
        if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            return "keep_aspect_ratio_policy other than stretch is not supported"
        out = list(shape)
        for ax, m in zip(axes, sizes.tolist()):
            out[ax] = int(m)
        return out, [np.float32(out[i]) / np.float32(shape[i]) for i in range(rank)]
    if scales is None or not scales.size:
        return "neither scales nor sizes is given"
    full = [np.float32(1)] * rank
    for ax, s in zip(axes, np.asarray(scales, np.float32).tolist()):
        full[ax] = np.float32(s)
    return [int(math.floor(np.float32(n) * s)) for n, s in zip(shape, full)], full


def _check_resize(imp, node, a):
    if a.get("mode", "nearest") != "nearest":
        return f"mode '{a['mode']}' is not supported (only nearest)"
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    if ctm not in _RESIZE_COORDINATES:
        return f"coordinate_transformation_mode '{ctm}' is not supported"
    if a.get("nearest_mode", "round_prefer_floor") not in _RESIZE_NEAREST:
        return f"nearest_mode '{a['nearest_mode']}' is not supported"
    if a.get("antialias", 0):
        return "antialias is not supported"
    plan = _resize_plan(imp, node, a)
    if isinstance(plan, str):
        return plan
    if any(m < 1 for m in plan[0]) or any(s <= 0 for s in plan[1]):
        return f"the output shape {plan[0]} is empty"
    return None


@lifter("Resize", attrs=("antialias", "axes", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
                         "extrapolation_value", "keep_aspect_ratio_policy", "mode", "nearest_mode"),
        check=_check_resize)
def _resize(imp, node, a):
    """Nearest resize as one constant-index gather per resized axis (exact: it only selects elements)."""
    shape = imp.shape(node.input[0])
    out, scales = _resize_plan(imp, node, a)
    where = _RESIZE_COORDINATES[a.get("coordinate_transformation_mode", "half_pixel")]
    nearest = _RESIZE_NEAREST[a.get("nearest_mode", "round_prefer_floor")]
    resized = [ax for ax in range(len(shape)) if out[ax] != shape[ax] or scales[ax] != 1.0]
    y = imp.value(node.input[0])
    name = imp.node_name(node)
    for k, ax in enumerate(resized):
        n, m = shape[ax], out[ax]
        idx = [min(max(nearest(where(o, scales[ax], n, m)), 0), n - 1) for o in range(m)]
        if idx == list(range(n)):
            continue
        index = imp.add_const(np.array(idx, np.int64), name=f"{name}/index{ax}")
        last = k == len(resized) - 1
        y = imp.emit("nn.gather", [y, index], {"axis": ax}, node, name=name if last else f"{name}/axis{ax}",
                     outputs=None if last else [])
    if imp.values.get(node.output[0]) is not y:  # nothing moved: the identity
        imp.emit("nn.reshape", [y], {"shape": list(out)}, node)


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


