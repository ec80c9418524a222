"""Shared helpers of the Qm.n passes (insert-qdq, propagate-scales, assign-qmn, lower-quantized).

The fake-quant form these passes share, per activation tensor ``%x``::

    %r = q.range %x {min, max}                      (from calibrate)
    %q = q.quantize %r : tensor<..x!q.fixed<i8, n>>
    %d = q.dequantize %q : tensor<..xf32>            (every former user of %x reads %d)

and per conv/dense weight and bias constant ``%w``/``%b``::

    %qw = q.quantize %w : tensor<..x!q.uniform<i8:f32:0, {2^-n0, 2^-n1, ...}>>   (per channel)
    %qb = q.quantize %b : tensor<..x!q.uniform<i32:f32:0, {2^-(nx+n0-s0), ...}>>  (s = bias_shift)

The float interpreter runs this graph (fake-quant reference); ``lower-quantized``
turns it into ``qnn.*`` ops. A format is ``(dtype, n)``: value = q * 2^-n.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from qcc.ir.graph import Graph, Op, Value
from qcc.ir.types import FixedPoint, PerAxisQuant, TensorType, storage_range

# Ops whose output format is the input's: integer versions move or compare stored values.
FORMAT_PRESERVING = ("nn.maxpool", "nn.global_maxpool", "nn.reshape", "nn.flatten", "nn.squeeze",
                     "nn.unsqueeze", "nn.transpose", "nn.pad", "nn.gather", "nn.relu", "nn.identity",
                     "nn.dropout")
# Fixed output format Q0.(W-1), whatever the input format.
UNIT_OUTPUT = ("nn.softmax", "nn.sigmoid", "nn.tanh")
# Layers with constant weights (operand 1, output channels on axis 0) and bias (operand 2);
# scale_shift's per-channel scale and shift quantize like a depthwise 1x1 conv's.
WEIGHTED = ("nn.conv2d", "nn.dense", "nn.scale_shift")


def dtype_for_bits(bits: int) -> str:
    if bits not in (8, 16):
        raise ValueError(f"Qm.n supports 8 or 16 bits, got {bits}")
    return f"i{bits}"


def bits_of(dtype: str) -> int:
    return int(dtype[1:])


def frac_bits_for(max_abs: float, bits: int) -> int:
    """n = W-1 - ceil(log2(max|x|)): the largest n whose range still holds max|x|."""
    if not max_abs > 0 or not math.isfinite(max_abs):
        return bits - 1
    n = bits - 1 - math.ceil(math.log2(max_abs))
    return int(max(-16, min(n, 2 * bits)))


def fixed_type(shape, bits_or_dtype, n: int) -> TensorType:
    dtype = bits_or_dtype if isinstance(bits_or_dtype, str) else dtype_for_bits(bits_or_dtype)
    return TensorType(tuple(shape), dtype, FixedPoint(int(n)))


def per_channel_type(shape, dtype: str, ns: Sequence[int], axis: int = 0) -> TensorType:
    return TensorType(tuple(shape), dtype, PerAxisQuant(axis, tuple(2.0 ** -int(n) for n in ns), (0,) * len(ns)))


def channel_frac_bits(t: TensorType) -> List[int]:
    """Fractional bits per output channel of a fixed-point or power-of-two per-axis type."""
    q = t.quant
    if isinstance(q, FixedPoint):
        return [q.frac_bits]
    if isinstance(q, PerAxisQuant):
        return [int(round(-math.log2(s))) for s in q.scales]
    raise ValueError(f"not a Qm.n type: {t}")


def frac_bits(t: TensorType) -> int:
    if not isinstance(t.quant, FixedPoint):
        raise ValueError(f"not a per-tensor Qm.n type: {t}")
    return t.quant.frac_bits


def qdq_after(graph: Graph, v: Value) -> Optional[Tuple[Optional[Op], Op, Op]]:
    """(q.range or None, q.quantize, q.dequantize) that fake-quantizes ``v``, if any."""
    for user in graph.users(v):
        rng = None
        cur = user
        if cur.opname == "q.range":
            rng = cur
            users = graph.users(cur.result)
            cur = next((u for u in users if u.opname == "q.quantize"), None)
            if cur is None:
                continue
        if cur.opname != "q.quantize":
            continue
        deq = next((u for u in graph.users(cur.result) if u.opname == "q.dequantize"), None)
        if deq is not None:
            return rng, cur, deq
    return None


MOVES_VALUES = ("nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze", "nn.transpose", "nn.pad", "nn.gather",
                "nn.identity", "nn.dropout", "q.range")


def dequantized_source(v: Value) -> Optional[Op]:
    """The q.quantize behind a dequantized float value ``v`` (``v = dequantize(quantize(..))``),
    looking through ops that only move values (their result keeps the format)."""
    p = v.producer
    while p is not None and p.opname in MOVES_VALUES:
        p = p.operands[0].producer
    if p is None or p.opname != "q.dequantize":
        return None
    q = p.operands[0].producer
    return q if q is not None and q.opname == "q.quantize" else None


def activation_groups(graph: Graph) -> List[List[Op]]:
    """Activation q.quantize ops that must share one format, as groups (singletons included).

    A format-preserving op ties its output's quantize to its input's; a concat
    ties its inputs and its output. Union-find over quantize ops.
    """
    quants = [op for op in graph.ops if op.opname == "q.quantize" and isinstance(op.result.type.quant, FixedPoint)
              and not op.operands[0].is_constant()]
    parent: Dict[int, Op] = {id(q): q for q in quants}

    def find(q):
        while parent[id(q)] is not q:
            parent[id(q)] = parent[id(parent[id(q)])]
            q = parent[id(q)]
        return q

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra is not rb:
            parent[id(rb)] = ra

    for op in graph.ops:
        if op.opname not in FORMAT_PRESERVING and op.opname != "nn.concat":
            continue
        out = qdq_after(graph, op.result)
        ins = [dequantized_source(v) for v in op.operands[:1 if op.opname != "nn.concat" else None]]
        ins = [q for q in ins if q is not None and id(q) in parent]
        if out is not None and id(out[1]) in parent:
            for q in ins:
                union(q, out[1])
        elif op.opname == "nn.concat":
            for q in ins[1:]:
                union(ins[0], q)
    groups: Dict[int, List[Op]] = {}
    for q in quants:
        groups.setdefault(id(find(q)), []).append(q)
    return list(groups.values())


def range_of(q: Op) -> Optional[Tuple[float, float]]:
    p = q.operands[0].producer
    if p is not None and p.opname == "q.range":
        return p.attrs["min"], p.attrs["max"]
    return None


def load_samples(graph: Graph, path: str, limit: int) -> List[Dict[str, np.ndarray]]:
    """Up to ``limit`` calibration samples ``{input name: array}`` from a data path."""
    from qcc.quant.calibration_data import CalibrationData
    out: List[Dict[str, np.ndarray]] = []
    for batch in CalibrationData(path, graph).batches(min(limit, 64)):
        n = next(iter(batch.values())).shape[0]
        for i in range(n):
            out.append({k: a[i] for k, a in batch.items()})
            if len(out) >= limit:
                return out
    return out


def context_value(p, graph: Graph, key: str):
    """A pipeline-wide setting (e.g. ``calib``) handed down by the driver, if any."""
    for holder in (p, graph):
        ctx = getattr(holder, "context", None)
        if isinstance(ctx, dict) and ctx.get(key) not in (None, ""):
            return ctx[key]
    return None


def storage_bounds(dtype: str) -> Tuple[int, int]:
    return storage_range(dtype)
