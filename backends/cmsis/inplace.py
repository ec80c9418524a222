"""When may a layer write its output over the input it reads for the last time?

The kernels in ``templates/ops`` write output elements in increasing flat
(row-major) index order, each exactly once, and compute element ``o`` from
reads that all happen before ``o`` is stored (the accumulator or value is
complete before the store). So with the input at byte ``ib`` (element size
``si``) and the output at ``ob = ib + d`` (element size ``so``), storing
element ``o`` destroys nothing still needed iff its bytes end at or below
every input element read *later*:

    ob + (o + 1) * so  <=  ib + si * m(o + 1)      for every o,

where ``m(k)`` is the smallest input index read by outputs ``k, k+1, ...``
(+inf when none). Hence the largest legal displacement is

    D = min over o of  si * m(o + 1) - (o + 1) * so

and any ``d <= D`` is safe. Elementwise kernels (``y[i] = f(x[i])``, same
element size) give ``D = 0``: the classic in-place op. A stride-1 3x3
"same" convolution over [H, W, C] gives ``D = -(W + 1) * C`` bytes: the
output starts one row and one pixel below the input, i.e. the kernel is run
in place with a "row buffer" of W + 1 pixels that costs no code at all,
just that displacement (output row y lands on input row y - 1, which no later
output reads). The C of such a layer drops ``restrict`` (the two pointers now
alias), and the template loop orders this module relies on are those of
conv2d.j2 (n, oy, ox, oc), maxpool.j2 / avgpool.j2 (n, oy, ox, c) and the
flat loops of requantize/add/lut/lut_interp.j2, and their affine int8 twins
s8_conv2d.j2, s8_maxpool.j2 / s8_avgpool.j2, s8_requantize.j2, s8_lut.j2, s8_activation16.j2, and s8_add.j2 / s8_mul.j2
(which read ``a[ia]`` and ``b[ib]`` before storing ``y[o]``, output order; only an operand of the
result's size, read at ``ia = o``, is a candidate: D = 0).

Blocks. The s8 depthwise kernel keeps ``uint32_t acc[Cout]`` per pixel: it
reads the whole window of a pixel for all its channels, then stores the pixel's
``B = Cout`` outputs. Stores then only need to spare the reads of *later
blocks*, so the bound is taken at block ends only:

    D = min over k >= 1 of  si * m(k*B) - k*B * so

(``B = 1`` is the rule above; a block of B is never tighter since it drops
constraints). Run last to first (``reverse``), block k stores after its own
reads and before those of blocks k-1, ..., 0, so
``d >= si * (M(k*B - 1) + 1) - k*B * so`` for every k >= 1, with M the
largest index read by outputs 0..k*B-1.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from qcc.ir.graph import Op

from .layers_s8 import is_s16_depthwise, is_s8_depthwise

ELEMENTWISE = frozenset({"qnn.requantize", "qnn.lut", "qnn.lut_interp", "qnn.add", "s8.requantize", "s8.add",
                         "s8.sub", "s8.mul", "s8.lut", "s8.activation16"})
CONVS = frozenset({"qnn.conv2d", "s8.conv2d"})
WINDOWED = CONVS | {"qnn.maxpool", "qnn.avgpool", "s8.maxpool", "s8.avgpool"}
INPLACE_OPS = ELEMENTWISE | WINDOWED
# Kernels whose template can also run the output loops from the last element to the first
# (conv2d.j2 / s8_conv2d.j2 with L.reverse): a positive displacement then is legal, so chains need not drift.
REVERSIBLE = CONVS
_INF = np.iinfo(np.int64).max // 4


def _valid_tap(start: np.ndarray, taps: int, step: int, size: int, last: bool) -> np.ndarray:
    """First (or last) in-bounds coordinate start + k*step (k < taps) per window, or -1 when none is."""
    k = np.arange(taps)
    coords = start[:, None] + k[None, :] * step
    ok = (coords >= 0) & (coords < size)
    pick = np.where(ok, coords, -1).max(axis=1) if last else np.where(ok, coords, _INF).min(axis=1)
    return np.where(ok.any(axis=1), pick, -1)


def read_bounds(op: Op, operand: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Per output flat index, the smallest and largest flat index of operand ``operand`` it reads.

    (_INF, -1) for an output that reads nothing. None when the kernel's access
    pattern is not modelled (the op is never run in place).
    """
    y = op.result
    x = op.operands[operand]
    if op.opname in ELEMENTWISE:
        if x.type.size != y.type.size:
            return None
        idx = np.arange(y.type.size, dtype=np.int64)
        return idx, idx
    if op.opname not in WINDOWED or operand != 0 or x.type.rank != 4:
        return None
    n, h, w, c = x.shape
    _, oh, ow, oc_n = y.shape
    if op.opname in CONVS:
        _, kh, kw, cg = op.operands[1].shape
        sh, sw = op.attrs["strides"]
        dh, dw = op.attrs["dilations"]
        cog = oc_n // op.attrs["group"]
        chan = (np.arange(oc_n) // cog) * cg            # first input channel of each output channel's group
    else:
        kh, kw = op.attrs["kernel"]
        sh, sw = op.attrs["strides"]
        dh = dw = 1
        cg = 1
        chan = np.arange(oc_n)                          # pools read their own channel only
    pt, pl = op.attrs["pads"][0], op.attrs["pads"][1]
    bounds = []
    for last in (False, True):
        iy = _valid_tap(np.arange(oh, dtype=np.int64) * sh - pt, kh, dh, h, last)
        ix = _valid_tap(np.arange(ow, dtype=np.int64) * sw - pl, kw, dw, w, last)
        reads = (iy[:, None, None] * w + ix[None, :, None]) * c + chan[None, None, :] + (cg - 1 if last else 0)
        none = (iy[:, None, None] < 0) | (ix[None, :, None] < 0)
        batch = (np.arange(n, dtype=np.int64) * (h * w * c))[:, None, None, None]
        reads = np.where(none[None], -1 if last else _INF, reads[None] + batch)
        bounds.append(reads.reshape(-1))
    return bounds[0], bounds[1]


def store_block(op: Op) -> int:
    """Outputs the kernel stores together, after all of their reads (1: each store right after its own reads)."""
    if is_s8_depthwise(op) or is_s16_depthwise(op):
        return op.result.shape[-1]   # s8_conv2d.j2's / s16_conv2d.j2's depthwise paths: acc[Cout] per pixel
    return 1


def max_displacement(op: Op, operand: int) -> Optional[int]:
    """Largest ``out_byte_offset - in_byte_offset`` that keeps the forward kernel exact, or None."""
    b = read_bounds(op, operand)
    if b is None:
        return None
    m = b[0]
    si = op.operands[operand].type.np_dtype.itemsize
    so = op.result.type.np_dtype.itemsize
    blk = store_block(op)
    # suffix minimum: later[k - 1] = smallest read by outputs kB, kB+1, ... (k >= 1)
    later = np.minimum.accumulate(m[::-1])[::-1][blk::blk]
    ends = np.arange(blk, m.size, blk, dtype=np.int64)
    bound = np.where(later >= _INF, _INF, si * later - ends * so)
    return int(bound.min(initial=_INF))


def min_displacement_reversed(op: Op, operand: int) -> Optional[int]:
    """Smallest displacement that keeps the kernel exact when it runs its outputs last to first, or None.

    Mirror image of the forward rule: storing element ``o`` must start at or
    above the end of every input element read later (by outputs o-1, ..., 0):
    ``ob + o*so >= ib + si*(M(o-1) + 1)`` with M(k) the largest index read by
    outputs 0..k. Only kernels with a reversed loop (REVERSIBLE) run this way.
    """
    if op.opname not in REVERSIBLE or (op.opname == "s8.conv2d" and op.result.type.dtype == "i16"):
        return None   # s16_conv2d.j2 (the 16x8 s8.conv2d) runs forward only
    b = read_bounds(op, operand)
    if b is None:
        return None
    mx = b[1]
    si = op.operands[operand].type.np_dtype.itemsize
    so = op.result.type.np_dtype.itemsize
    blk = store_block(op)
    starts = np.arange(blk, mx.size, blk, dtype=np.int64)
    before = np.maximum.accumulate(mx)[starts - 1]   # largest read by outputs 0..kB-1
    bound = np.where(before < 0, -_INF, si * (before + 1) - starts * so)
    return int(bound.max(initial=-_INF))
