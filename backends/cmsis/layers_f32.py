"""Contexts of the float layers (``f32.*``, ``--float-layers``) and their boundaries.

A float layer's C (``templates/ops/f32_*.j2``) is a plain float32 loop nest
mirroring the interpreter kernel it stands for (``qcc/sim/interpreter.py``):
products summed in a float32 accumulator in the weights' order, the bias
added after the sum, then the fused activation. The sums' order differs from
numpy's BLAS/pairwise order, so results agree within float rounding, not bit
for bit (ARCHITECTURE.md: numerics contract).

Boundaries between integer and float tensors inside the graph:

    q.dequantize   y = (float)(q - zp) * scale      (exact: scale 2^-n, or the stored f32 scale)
    q.quantize     the simulator's rounding: NaN -> zp, clamp to [-1e9, 1e9], round half away, + zp, saturate

Fused edges: a dequantize read only by one float layer, and a quantize of a
float layer's result read by nothing else, run inside that layer's kernel
(each element dequantized as it is loaded, quantized as it is stored: the
same per-element arithmetic, so the same bits), so a lone float layer needs
no float buffer. Float tensors between chained float layers take 4 bytes per
element in the arena (plan.py counts them so).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Op
from qcc.ir.types import FixedPoint, UniformQuant

F32_HANDLED_ATTRS = {
    "f32.conv2d": {"strides", "pads", "dilations", "group", "layout", "act", "act_alpha"},
    "f32.dense": {"act", "act_alpha"},
    "f32.add": {"act", "act_alpha"}, "f32.sub": {"act", "act_alpha"}, "f32.mul": {"act", "act_alpha"},
    "f32.relu": set(), "f32.clip": {"min", "max"}, "f32.leaky_relu": {"alpha"},
    "f32.sigmoid": set(), "f32.tanh": set(), "f32.softmax": {"axis"},
    "f32.maxpool": {"kernel", "strides", "pads", "ceil_mode", "layout", "dilations"},
    "f32.avgpool": {"kernel", "strides", "pads", "ceil_mode", "layout", "count_include_pad"},
    "f32.global_avgpool": {"layout"}, "f32.global_maxpool": {"layout"},
    "q.quantize": set(), "q.dequantize": set(),
}
# op -> template kind (templates/ops/<kind>.j2, one macro of that name)
F32_KINDS = {"f32.conv2d": "f32_conv2d", "f32.dense": "f32_dense", "f32.add": "f32_binary", "f32.sub": "f32_binary",
             "f32.mul": "f32_binary", "f32.relu": "f32_unary", "f32.clip": "f32_unary",
             "f32.leaky_relu": "f32_unary", "f32.sigmoid": "f32_unary", "f32.tanh": "f32_unary",
             "f32.softmax": "f32_softmax", "f32.maxpool": "f32_pool", "f32.avgpool": "f32_pool",
             "f32.global_avgpool": "f32_pool", "f32.global_maxpool": "f32_pool",
             "q.quantize": "f32_quantize", "q.dequantize": "f32_dequantize"}
INT_TYPES = {"i8": "int8_t", "i16": "int16_t", "i32": "int32_t"}
QUANTIZE_CLAMP = 1.0e9  # qcc.sim.qmn.QUANTIZE_CLAMP: the scaled value is clamped first


def fused_dequantize(graph, v):
    """The integer tensor behind ``v`` when ``v`` is a q.dequantize result read only by one float layer (the
    layer then dequantizes as it loads); None otherwise."""
    d = v.producer
    if d is None or d.opname != "q.dequantize" or d.operands[0].is_constant() or graph.is_output(v):
        return None
    users = graph.users(v)
    if not users or any(u is not users[0] for u in users) or not users[0].opname.startswith("f32."):
        return None
    return d.operands[0]


def fused_quantize(graph, op: Op):
    """The q.quantize result a float layer stores directly (its result's only use), or None."""
    if graph.is_output(op.result):
        return None
    users = graph.users(op.result)
    if len(users) != 1 or users[0].opname != "q.quantize" or len(graph.uses(op.result)) != 1:
        return None
    return users[0].result


def step_values(graph, op: Op):
    """(data inputs, output) of a float layer's step, fused edges applied."""
    data = op.operands[:1] if op.opname in ("f32.conv2d", "f32.dense") else list(op.operands)
    data = [fused_dequantize(graph, v) or v for v in data]
    return data, fused_quantize(graph, op) or op.result


def _io(op: Op, data, out) -> dict:
    """The load helpers (one per data input) and the store of a float layer's kernel."""
    loads = []
    for k, v in enumerate(data):
        ld = {"fn": f"ld{k}", "ct": "float" if v.type.is_float else INT_TYPES[v.type.dtype],
              "int": not v.type.is_float}
        if ld["int"]:
            ld["zp"], ld["scale"] = _scale(op, v.type.quant)
        loads.append(ld)
    st = {"ct": "float", "int": False}
    if not out.type.is_float:
        st = {**_quantize(op, out.type), "ct": INT_TYPES[out.type.dtype], "int": True}
    return {"loads": loads, "st": st, "xt": loads[0]["ct"], "yt": st["ct"]}


def c_float(x: float) -> str:
    """An exact C literal of float32 ``x`` (hex float)."""
    v = float(np.float32(x))
    if not math.isfinite(v):
        raise UnsupportedModelError(f"a float layer constant is {v}; float layers need finite constants")
    if v == 0.0:
        return "-0.0f" if math.copysign(1.0, v) < 0 else "0.0f"
    mant, exp = v.hex().split("p")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}p{exp}f"


def _act(op: Op, var: str) -> str:
    """C statement applying the fused activation to ``var`` (the interpreter's apply_act)."""
    act = op.attrs.get("act", "none")
    if act == "relu":
        return f"{var} = {var} > 0.0f ? {var} : 0.0f;"
    if act == "relu6":
        return f"{var} = {var} > 0.0f ? ({var} < 6.0f ? {var} : 6.0f) : 0.0f;"
    if act == "leaky_relu":
        return f"{var} = {var} >= 0.0f ? {var} : {var} * {c_float(op.attrs['act_alpha'])};"
    if act != "none":
        raise UnsupportedModelError(f"{op.describe()}: activation '{act}' has no float C kernel")
    return ""


def _nhwc(op: Op):
    if op.attrs.get("layout", "NHWC") != "NHWC":
        raise UnsupportedModelError(f"{op.describe()}: float layers run in NHWC layout (to-nhwc runs first in "
                                    f"the pipelines); this one is {op.attrs['layout']}")


def build_f32(builder, op: Op, fn: str) -> dict:
    """The template context of float layer or boundary ``op`` (``builder``: layers.LayerBuilder)."""
    kind = op.opname.split(".", 1)[1]
    if op.opname == "q.quantize":
        return {"size": op.result.type.size, **_quantize(op, op.result.type)}
    if op.opname == "q.dequantize":
        q = op.operands[0].type.quant
        zp, scale = _scale(op, q)
        return {"xt": INT_TYPES[op.operands[0].type.dtype], "size": op.result.type.size, "zp": zp, "scale": scale}
    ctx = _io(op, *step_values(op.graph, op))
    ctx.update(_layer(builder, op, fn, kind))
    return ctx


def _layer(builder, op: Op, fn: str, kind: str) -> dict:
    if kind == "conv2d":
        return _conv2d(builder, op, fn)
    if kind == "dense":
        x = op.operands[0]
        nout, k = op.operands[1].shape
        return {"m": x.type.size // k, "k": k, "nout": nout, "act": _act(op, "acc"),
                **_weights(builder, op, fn, np.asarray(op.operands[1].constant(), np.float32))}
    if kind in ("add", "sub", "mul"):
        a, b = op.operands
        if a.shape != b.shape or a.shape != op.result.shape:
            raise UnsupportedModelError(f"{op.describe()}: a float {kind} needs operands of one shape "
                                        f"({list(a.shape)} vs {list(b.shape)}); broadcasting is not built")
        return {"size": op.result.type.size, "sym": {"add": "+", "sub": "-", "mul": "*"}[kind],
                "act": _act(op, "v")}
    if kind in ("relu", "clip", "leaky_relu", "sigmoid", "tanh"):
        return {"size": op.result.type.size, "expr": _unary_expr(op, kind), "libm": kind in ("sigmoid", "tanh")}
    if kind == "softmax":
        shape = list(op.result.shape)
        axis = op.attrs["axis"] % len(shape)
        return {"outer": int(np.prod(shape[:axis], dtype=np.int64)), "n": shape[axis],
                "inner": int(np.prod(shape[axis + 1:], dtype=np.int64))}
    return _pool(op, kind)


def _scale(op: Op, q):
    if isinstance(q, FixedPoint):
        return 0, c_float(2.0 ** -q.frac_bits)
    if isinstance(q, UniformQuant):
        return q.zero_point, c_float(q.scale)
    raise UnsupportedModelError(f"{op.describe()}: a float layer boundary needs one scale per tensor, got {q}")


def _quantize(op: Op, t) -> dict:
    info = np.iinfo(t.np_dtype)
    q = t.quant
    ctx = {"yt": INT_TYPES[t.dtype],
           "qmin": int(info.min), "qmax": int(info.max), "clamp": c_float(QUANTIZE_CLAMP),
           "clamp_i": int(QUANTIZE_CLAMP), "rt": "int64_t" if t.dtype == "i32" else "int32_t",
           "suffix": "LL" if t.dtype == "i32" else ""}
    if isinstance(q, FixedPoint):   # exact: scaling by a power of two
        ctx.update(zp=0, scale_op="*", scale=c_float(2.0 ** q.frac_bits))
    elif isinstance(q, UniformQuant):  # the simulator divides in float32
        ctx.update(zp=q.zero_point, scale_op="/", scale=c_float(q.scale))
    else:
        raise UnsupportedModelError(f"{op.describe()}: a float layer boundary needs one scale per tensor, got {q}")
    return ctx


def _unary_expr(op: Op, kind: str) -> str:
    if kind == "relu":
        return "v > 0.0f ? v : 0.0f"
    if kind == "leaky_relu":
        return f"v >= 0.0f ? v : v * {c_float(op.attrs['alpha'])}"
    if kind == "sigmoid":  # split by sign as the interpreter does, so expf never overflows
        return "v >= 0.0f ? 1.0f / (1.0f + expf(-v)) : expf(v) / (1.0f + expf(v))"
    if kind == "tanh":
        return "tanhf(v)"
    lo, hi = op.attrs["min"], op.attrs["max"]
    expr = "v"
    if not math.isinf(lo) or lo > 0:
        expr = f"({expr} < {c_float(lo)} ? {c_float(lo)} : {expr})"
    if not math.isinf(hi) or hi < 0:
        expr = f"({expr} > {c_float(hi)} ? {c_float(hi)} : {expr})"
    return expr


def _weights(builder, op: Op, fn: str, w: np.ndarray) -> dict:
    wsym = builder.add_const(f"{builder.prefix}_{fn}_w", "f32", w, f"{op.name} float weights {list(w.shape)}")
    b = op.operands[2].constant() if len(op.operands) > 2 else None
    bsym: Optional[str] = None
    if b is not None:
        bsym = builder.add_const(f"{builder.prefix}_{fn}_b", "f32", np.asarray(b, np.float32).ravel(),
                                 f"{op.name} float bias")
    return {"w": wsym, "b": bsym}


def _conv2d(builder, op: Op, fn: str) -> dict:
    _nhwc(op)
    n, h, w, c = op.operands[0].shape
    cout, kh, kw, cg = op.operands[1].shape
    _, oh, ow, _ = op.result.shape
    g = op.attrs["group"]
    sh, sw = op.attrs["strides"]
    dh, dw = op.attrs["dilations"]
    pt, pl, _, _ = op.attrs["pads"]
    ctx = _weights(builder, op, fn, np.asarray(op.operands[1].constant(), np.float32))
    ctx.update(n=n, h=h, w_=w, c=c, oh=oh, ow=ow, cout=cout, kh=kh, kw=kw, cg=cg, cog=cout // g, sh=sh, sw=sw,
               dh=dh, dw=dw, pt=pt, pl=pl, act=_act(op, "acc"))
    return ctx


def _pool(op: Op, kind: str) -> dict:
    _nhwc(op)
    n, h, w, c = op.operands[0].shape
    _, oh, ow, _ = op.result.shape
    if kind.startswith("global_"):
        kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, include = h, w, 1, 1, 0, 0, 0, 0, 1, 1, False
    else:
        kh, kw = op.attrs["kernel"]
        sh, sw = op.attrs["strides"]
        pt, pl, pb, pr = op.attrs["pads"]
        dh, dw = op.attrs.get("dilations", [1, 1])
        include = op.attrs.get("count_include_pad", False)
    return {"n": n, "h": h, "w_": w, "c": c, "oh": oh, "ow": ow, "kh": kh, "kw": kw, "sh": sh, "sw": sw,
            "pt": pt, "pl": pl, "pb": pb, "pr": pr, "dh": dh, "dw": dw, "include_pad": include,
            "max": kind.endswith("maxpool")}
