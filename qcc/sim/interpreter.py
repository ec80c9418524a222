"""The float reference interpreter: runs a graph op by op with numpy.

Each op name maps to a kernel ``fn(op, *arrays) -> array | list[array]`` in the
public registry ``KERNELS``; register more with ``@kernel("dialect.op")`` (the
integer simulator adds its quantized kernels this way). Float kernels compute
in float32 like onnxruntime; convolutions and matrix products go through BLAS
in float32 too, so results differ from onnxruntime only by summation order.

    outs = run_graph(g, {"input_1": x})             # {output name: array}
    every = run_graph_all(g, {"input_1": x})        # {Value: array}, inputs included
    batch = run_batched(g, {"input_1": xs})         # xs with one extra leading axis
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Sequence, Union

import numpy as np

from qcc.errors import IRError, InputError
from qcc.ir.graph import Graph, Op, Value
from qcc.ir.ops.nn import window_out
from qcc.ir.ops.nn_shape import resolve_reshape, slice_indices

Kernel = Callable[..., Union[np.ndarray, List[np.ndarray]]]
KERNELS: Dict[str, Kernel] = {}


class MissingKernelError(IRError):
    """The interpreter has no kernel for an op (e.g. a backend-only op)."""


def kernel(*opnames: str):
    """Register ``fn(op, *arrays)`` as the interpreter kernel of ``opnames``."""
    def register(fn: Kernel) -> Kernel:
        for name in opnames:
            KERNELS[name] = fn
        return fn
    return register


# ---------------------------------------------------------------- running
def _check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> Dict[Value, np.ndarray]:
    env: Dict[Value, np.ndarray] = {}
    unknown = set(inputs) - {v.name for v in graph.inputs}
    if unknown:
        raise InputError(f"graph @{graph.name} has no input named {', '.join(sorted(unknown))} "
                         f"(inputs: {', '.join(v.name for v in graph.inputs)})")
    for v in graph.inputs:
        if v.name not in inputs:
            raise InputError(f"missing value for graph input '{v.name}' {list(v.shape)}")
        a = np.asarray(inputs[v.name])
        if a.shape != v.shape:
            hint = ""
            if a.ndim == len(v.shape) and a.shape[1:] == v.shape[1:]:
                hint = f"; to run {a.shape[0]} samples, stack them on an extra leading axis: {[a.shape[0], *v.shape]}"
            raise InputError(f"input '{v.name}' has shape {list(a.shape)}, the graph expects {list(v.shape)}{hint}")
        if a.dtype.kind not in "fiub" or (a.dtype.kind == "f" and a.dtype.itemsize > 8):
            raise InputError(f"input '{v.name}' has dtype {a.dtype}; graph input '{v.name}' takes real numbers "
                             f"({v.type.dtype}): give a float or integer array")
        env[v] = a.astype(v.type.np_dtype, copy=False)
    return env


def run_op(op: Op, arrays: Sequence[np.ndarray]) -> List[np.ndarray]:
    """Run one op's kernel and check its results against the op's result types."""
    fn = KERNELS.get(op.opname)
    if fn is None:
        raise MissingKernelError(f"the interpreter has no kernel for {op.describe()}")
    out = fn(op, *arrays)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(outs) != len(op.results):
        raise IRError(f"kernel of {op.describe()} gave {len(outs)} results, the op has {len(op.results)}")
    checked = []
    for r, a in zip(op.results, outs):
        a = np.asarray(a)
        want = r.type.np_dtype
        if a.dtype != want:
            if not (a.dtype.kind == "f" and want.kind == "f"):
                raise IRError(f"kernel of {op.describe()} returned {a.dtype} for a {r.type.dtype} result")
            a = a.astype(want)
        if a.shape != r.shape:
            raise IRError(f"kernel of {op.describe()} returned shape {list(a.shape)}, "
                          f"the result type says {list(r.shape)}")
        checked.append(a)
    return checked


def run_graph_all(graph: Graph, inputs: Mapping[str, np.ndarray]) -> Dict[Value, np.ndarray]:
    """Every value of the graph (inputs, constants, intermediates, outputs) by Value."""
    env = _check_inputs(graph, inputs)
    for op in graph.ops:
        for r, a in zip(op.results, run_op(op, [env[v] for v in op.operands])):
            env[r] = a
    return env


def run_graph(graph: Graph, inputs: Mapping[str, np.ndarray], *, keep: bool = False) -> dict:
    """Outputs by name; with ``keep`` the dict also holds every value keyed by its Value."""
    env = run_graph_all(graph, inputs)
    outs = {name: env[v] for name, v in zip(graph.output_names, graph.outputs)}
    if keep:
        outs.update(env)
    return outs


def run_batched(graph: Graph, arrays: Union[Mapping[str, np.ndarray], Sequence[np.ndarray]]) -> Dict[str, np.ndarray]:
    """Run on one sample, or on many when every input has one extra leading axis (stacked outputs)."""
    if not isinstance(arrays, Mapping):
        arrays = list(arrays)
        if len(arrays) != len(graph.inputs):
            raise InputError(f"graph @{graph.name} takes {len(graph.inputs)} inputs, got {len(arrays)} arrays")
        arrays = {v.name: a for v, a in zip(graph.inputs, arrays)}
    arrays = {k: np.asarray(a) for k, a in arrays.items()}
    by_name = {v.name: v for v in graph.inputs}
    batched = {k: arrays[k].ndim == by_name[k].type.rank + 1 for k in arrays if k in by_name}
    if not any(batched.values()):
        return run_graph(graph, arrays)
    if not all(batched.values()):
        raise InputError("either every input or none carries the extra leading sample axis")
    counts = {arrays[k].shape[0] for k in batched}
    if len(counts) != 1:
        raise InputError(f"inputs hold different numbers of samples: {sorted(counts)}")
    if not counts.copy().pop():
        raise InputError("the inputs hold no samples (their leading sample axis is 0 long)")
    runs = [run_graph(graph, {k: a[i] for k, a in arrays.items()}) for i in range(counts.pop())]
    return {name: np.stack([r[name] for r in runs]) for name in graph.output_names}


# ---------------------------------------------------------------- helpers
def apply_act(y: np.ndarray, op: Op) -> np.ndarray:
    act = op.attrs.get("act", "none")
    if act == "relu":
        return np.maximum(y, 0)
    if act == "relu6":
        return np.clip(y, 0, 6)
    if act == "leaky_relu":
        return np.where(y >= 0, y, y * np.float32(op.attrs["act_alpha"]))
    return y


def _f32(a):
    return np.asarray(a, dtype=np.float32)


def _to_nchw(x, layout):
    return x.transpose(0, 3, 1, 2) if layout == "NHWC" else x


def _from_nchw(y, layout):
    return np.ascontiguousarray(y.transpose(0, 2, 3, 1)) if layout == "NHWC" else y


def _windows(x, kernel, strides, dilations, out_hw):
    """[N, C, OH, OW, KH, KW] view of an already padded NCHW array."""
    n, c, _, _ = x.shape
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, (n, c, out_hw[0], out_hw[1], kernel[0], kernel[1]),
        (s[0], s[1], s[2] * strides[0], s[3] * strides[1], s[2] * dilations[0], s[3] * dilations[1]),
        writeable=False)


def _pad_hw(x, pads, value, extra=(0, 0)):
    pt, pl, pb, pr = pads
    return np.pad(x, ((0, 0), (0, 0), (pt, pb + extra[0]), (pl, pr + extra[1])), constant_values=value)


# ---------------------------------------------------------------- kernels
@kernel("qcc.const")
def _const(op):
    return op.attrs["value"]


@kernel("nn.conv2d")
def _conv2d(op, x, w, b=None):
    a = op.attrs
    layout, g = a["layout"], a["group"]
    x = _to_nchw(_f32(x), layout)
    w = _f32(w).transpose(0, 3, 1, 2) if layout == "NHWC" else _f32(w)
    cout, cin_g, kh, kw = w.shape
    n, c, h, wd = x.shape
    out_hw = (window_out(h, kh, a["strides"][0], a["dilations"][0], a["pads"][0], a["pads"][2]),
              window_out(wd, kw, a["strides"][1], a["dilations"][1], a["pads"][1], a["pads"][3]))
    cols = _windows(_pad_hw(x, a["pads"], 0.0), (kh, kw), a["strides"], a["dilations"], out_hw)
    if g == 1:
        y = np.tensordot(cols, w, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)
    else:
        cols = cols.reshape(n, g, cin_g, *out_hw, kh, kw)
        y = np.einsum("ngchwij,gocij->ngohw", cols, w.reshape(g, cout // g, cin_g, kh, kw),
                      optimize=True).reshape(n, cout, *out_hw)
    if b is not None:
        y = y + _f32(b).reshape(1, -1, 1, 1)
    return _from_nchw(apply_act(y.astype(np.float32), op), layout)


@kernel("nn.dense")
def _dense(op, x, w, b=None):
    y = _f32(x) @ _f32(w).T
    if b is not None:
        y = y + _f32(b).reshape(-1)
    return apply_act(y, op)


@kernel("nn.gemm")
def _gemm(op, a, b, c=None):
    a = _f32(a).T if op.attrs["trans_a"] else _f32(a)
    b = _f32(b).T if op.attrs["trans_b"] else _f32(b)
    y = np.float32(op.attrs["alpha"]) * (a @ b)
    if c is not None:
        y = y + np.float32(op.attrs["beta"]) * _f32(c)
    return y


@kernel("nn.matmul")
def _matmul(op, a, b):
    return np.matmul(a, b)


def _binary(fn):
    def run(op, a, b):
        return apply_act(fn(a, b), op)
    return run


kernel("nn.add")(_binary(np.add))
kernel("nn.sub")(_binary(np.subtract))
kernel("nn.mul")(_binary(np.multiply))


@kernel("nn.div")
def _div(op, a, b):
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":  # ONNX integer Div truncates toward zero
        return np.trunc(a / b).astype(a.dtype)
    return apply_act(np.divide(a, b), op)


def _per_channel(p, rank, axis):
    shape = [1] * rank
    shape[axis % rank] = -1
    return _f32(p).reshape(shape)


@kernel("nn.batchnorm")
def _batchnorm(op, x, scale, bias, mean, var):
    r, ax = x.ndim, op.attrs["axis"]
    inv = _per_channel(scale, r, ax) / np.sqrt(_per_channel(var, r, ax) + np.float32(op.attrs["epsilon"]))
    return (_f32(x) - _per_channel(mean, r, ax)) * inv + _per_channel(bias, r, ax)


@kernel("nn.scale_shift")
def _scale_shift(op, x, scale, shift):
    return _f32(x) * _per_channel(scale, x.ndim, op.attrs["axis"]) + _per_channel(shift, x.ndim, op.attrs["axis"])


kernel("nn.relu")(lambda op, x: np.maximum(x, np.zeros((), x.dtype)))
kernel("nn.identity", "nn.dropout")(lambda op, x: x)
kernel("nn.tanh")(lambda op, x: np.tanh(x))
kernel("nn.clip")(lambda op, x: np.minimum(np.maximum(x, op.attrs["min"]), op.attrs["max"]).astype(x.dtype))
kernel("nn.leaky_relu")(lambda op, x: np.where(x >= 0, x, x * np.float32(op.attrs["alpha"])))


@kernel("nn.sigmoid")
def _sigmoid(op, x):
    # Split by sign so exp never overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


@kernel("nn.hard_sigmoid")
def _hard_sigmoid(op, x):
    return np.clip(np.float32(op.attrs["alpha"]) * x + np.float32(op.attrs["beta"]), 0, 1).astype(x.dtype)


@kernel("nn.hard_swish")
def _hard_swish(op, x):
    return (x * np.clip(x * np.float32(1 / 6) + np.float32(0.5), 0, 1)).astype(x.dtype)


@kernel("nn.softmax")
def _softmax(op, x):
    axis = op.attrs["axis"]
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _pool_geometry(op, x):
    """Padded NCHW input geometry: output size and the extra end padding ceil_mode needs."""
    a = op.attrs
    _, _, h, w = x.shape
    dil = a.get("dilations", [1, 1])
    out, extra = [], []
    for i, n in enumerate((h, w)):
        o = window_out(n, a["kernel"][i], a["strides"][i], dil[i], a["pads"][i], a["pads"][i + 2], a["ceil_mode"])
        need = (o - 1) * a["strides"][i] + (a["kernel"][i] - 1) * dil[i] + 1
        out.append(o)
        extra.append(max(0, need - (n + a["pads"][i] + a["pads"][i + 2])))
    return out, extra, dil


@kernel("nn.maxpool")
def _maxpool(op, x):
    x = _to_nchw(x, op.attrs["layout"])
    out, extra, dil = _pool_geometry(op, x)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    cols = _windows(_pad_hw(x, op.attrs["pads"], low, extra), op.attrs["kernel"], op.attrs["strides"], dil, out)
    return _from_nchw(cols.max(axis=(4, 5)), op.attrs["layout"])


@kernel("nn.avgpool")
def _avgpool(op, x):
    a = op.attrs
    x = _to_nchw(_f32(x), a["layout"])
    out, extra, dil = _pool_geometry(op, x)
    cols = _windows(_pad_hw(x, a["pads"], 0.0, extra), a["kernel"], a["strides"], dil, out)
    # The divisor counts window cells on real input, plus explicit padding when
    # count_include_pad; the extra cells ceil_mode adds never count.
    mask = np.ones((1, 1) + x.shape[2:], np.float32)
    mask = _pad_hw(mask, a["pads"], 1.0 if a["count_include_pad"] else 0.0, extra)
    if extra[0]:
        mask[:, :, mask.shape[2] - extra[0]:, :] = 0
    if extra[1]:
        mask[:, :, :, mask.shape[3] - extra[1]:] = 0
    count = _windows(mask, a["kernel"], a["strides"], dil, out).sum(axis=(4, 5))
    return _from_nchw(cols.sum(axis=(4, 5)) / count, a["layout"])


@kernel("nn.global_avgpool")
def _global_avgpool(op, x):
    axes = (1, 2) if op.attrs["layout"] == "NHWC" else (2, 3)
    return np.mean(_f32(x), axis=axes, keepdims=True)


@kernel("nn.global_maxpool")
def _global_maxpool(op, x):
    axes = (1, 2) if op.attrs["layout"] == "NHWC" else (2, 3)
    return np.max(x, axis=axes, keepdims=True)


@kernel("nn.reduce_mean")
def _reduce_mean(op, x):
    return np.mean(x, axis=tuple(op.attrs["axes"]), keepdims=op.attrs["keepdims"]).astype(x.dtype)


@kernel("nn.reshape")
def _reshape(op, x, shape=None):
    target = op.attrs["shape"] or resolve_reshape(x.shape, shape.tolist())
    return x.reshape(target)


kernel("nn.flatten")(lambda op, x: x.reshape(op.results[0].shape))
kernel("nn.squeeze")(lambda op, x: x.reshape(op.results[0].shape))
kernel("nn.unsqueeze")(lambda op, x: x.reshape(op.results[0].shape))
kernel("nn.transpose")(lambda op, x: np.ascontiguousarray(x.transpose(op.attrs["perm"])))
kernel("nn.concat")(lambda op, *xs: np.concatenate(xs, axis=op.attrs["axis"]))
kernel("nn.shape")(lambda op, x: np.array(x.shape, dtype=np.int64))
kernel("nn.expand")(lambda op, x, shape=None: np.broadcast_to(x, op.results[0].shape).copy())


@kernel("nn.pad")
def _pad(op, x):
    pads, r, mode = op.attrs["pads"], x.ndim, op.attrs["mode"]
    widths = [(max(pads[i], 0), max(pads[i + r], 0)) for i in range(r)]
    if mode != "constant":  # ONNX reflect and edge are numpy's (reflect mirrors without the edge)
        return np.pad(x, widths, mode=mode)
    # Negative pads crop: pad by the positive part, then slice the negative part away.
    y = np.pad(x, widths, constant_values=np.asarray(op.attrs["value"]).astype(x.dtype))
    crop = tuple(slice(max(-pads[i], 0), y.shape[i] - max(-pads[i + r], 0)) for i in range(r))
    return y[crop]


@kernel("nn.gather")
def _gather(op, x, indices):
    axis = op.attrs["axis"] % x.ndim
    idx = np.where(indices < 0, indices + x.shape[axis], indices)
    return np.take(x, idx, axis=axis)


@kernel("nn.cast")
def _cast(op, x):
    return x.astype(op.results[0].type.np_dtype)


@kernel("nn.slice")
def _slice(op, x, starts, ends, axes=None, steps=None):
    n = len(starts)
    axes = list(range(n)) if axes is None else [a % x.ndim for a in axes.tolist()]
    steps = [1] * n if steps is None else steps.tolist()
    for axis, s, e, st in zip(axes, starts.tolist(), ends.tolist(), steps):
        x = np.take(x, slice_indices(x.shape[axis], s, e, st), axis=axis)
    return x
