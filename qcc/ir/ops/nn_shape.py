"""Data-movement and shape ops of the nn dialect (ONNX semantics).

Shape arguments are attributes whenever they are known at import time. Two ops
may take them as operands instead, because ONNX models compute them:

* ``nn.reshape(x, shape?)``: with attribute ``shape`` (resolved at import:
  literal dims, a 0 is a zero-size dim; one -1 is still inferred) and one
  operand, or ``shape = []`` and a second i64 operand. A constant
  second operand is resolved by the shape rule with ONNX's rules (0 copies the
  input dimension, -1 takes what is left).
* ``nn.slice(x, starts, ends, axes?, steps?)``: ONNX Slice. Its shape rule
  needs constant starts/ends/axes/steps; otherwise the result type must be
  given (the frontend takes it from ONNX shape inference).
"""
from __future__ import annotations

import numpy as np

from qcc.ir.types import TensorType, DTYPES
from qcc.ir.registry import OpDef, OpError, attr, attrs, register_op


def _norm_axis(axis, rank, what="axis"):
    if not -rank <= axis < max(rank, 1):
        raise OpError(f"{what} {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def resolve_reshape(in_shape, shape, allowzero=False):
    """ONNX Reshape target resolution: 0 copies (unless allowzero), one -1 is inferred."""
    out = [int(d) for d in shape]
    for i, d in enumerate(out):
        if d == 0 and not allowzero:
            if i >= len(in_shape):
                raise OpError(f"reshape target {list(shape)}: 0 at index {i} has no input dimension to copy")
            out[i] = in_shape[i]
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise OpError(f"bad reshape target {list(shape)}")
    size = int(np.prod(in_shape, dtype=np.int64))
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if known == 0 or size % known:
            raise OpError(f"cannot reshape {list(in_shape)} to {list(shape)}")
        out[out.index(-1)] = size // known
    if int(np.prod(out, dtype=np.int64)) != size:
        raise OpError(f"cannot reshape {list(in_shape)} ({size} elements) to {out}")
    return tuple(out)


def _reshape_rule(op):
    x = op.operands[0].type
    if op.attrs["shape"]:
        if len(op.operands) > 1:
            raise OpError("give the target shape as the attribute or as an operand, not both")
        # An attribute shape is literal: a 0 there is a real zero-size dim, not "copy".
        return [x.with_shape(resolve_reshape(x.shape, op.attrs["shape"], allowzero=True))]
    if len(op.operands) < 2:
        raise OpError("needs a 'shape' attribute or a shape operand")
    target = op.operands[1].constant()
    if target is None:
        return [None]  # computed at run time: the result type is given explicitly
    return [x.with_shape(resolve_reshape(x.shape, target.tolist()))]


register_op(OpDef("nn.reshape", operands=["x", "shape?"], attrs=attrs(attr("shape", "ints", [])),
                  infer=_reshape_rule, summary="the same elements in a new shape"))


def expand_shape(in_shape, target) -> tuple:
    """ONNX Expand's result shape: numpy broadcasting of ``in_shape`` against ``target``."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(tuple(in_shape), tuple(int(t) for t in target)))
    except ValueError:
        raise OpError(f"cannot expand {list(in_shape)} to {list(target)}: the shapes do not broadcast") from None


def _expand_rule(op):
    x = op.operands[0].type
    if len(op.operands) > 1:
        target = op.operands[1].constant()
        if target is None:
            return [None]  # computed at run time: the result type is given explicitly
        return [x.with_shape(expand_shape(x.shape, target.tolist()))]
    return [x.with_shape(expand_shape(x.shape, op.attrs["shape"]))]


register_op(OpDef("nn.expand", operands=["x", "shape?"], attrs=attrs(attr("shape", "ints", [])),
                  infer=_expand_rule,
                  summary="ONNX Expand: x broadcast (numpy rules) against the target shape; folds away on "
                          "constants (PyTorch's zero initial states)"))


def _flatten_rule(op):
    x = op.operands[0].type
    axis = op.attrs["axis"]
    if not 0 <= axis <= x.rank:
        raise OpError(f"flatten axis {axis} out of range for rank {x.rank}")
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return [x.with_shape((outer, int(np.prod(x.shape[axis:], dtype=np.int64))))]


register_op(OpDef("nn.flatten", operands=["x"], attrs=attrs(attr("axis", "int", 1)), infer=_flatten_rule,
                  summary="reshape to [prod(dims[:axis]), prod(dims[axis:])]"))


def _squeeze_rule(op):
    x = op.operands[0].type
    axes = {_norm_axis(a, x.rank) for a in op.attrs["axes"]}
    for a in axes:
        if x.shape[a] != 1:
            raise OpError(f"cannot squeeze axis {a} of size {x.shape[a]}")
    return [x.with_shape(tuple(d for i, d in enumerate(x.shape) if i not in axes))]


def _unsqueeze_rule(op):
    x = op.operands[0].type
    rank = x.rank + len(op.attrs["axes"])
    axes = {_norm_axis(a, rank) for a in op.attrs["axes"]}
    if len(axes) != len(op.attrs["axes"]):
        raise OpError(f"repeated axes {op.attrs['axes']}")
    dims = iter(x.shape)
    return [x.with_shape(tuple(1 if i in axes else next(dims) for i in range(rank)))]


register_op(OpDef("nn.squeeze", operands=["x"], attrs=attrs(attr("axes", "ints")), infer=_squeeze_rule,
                  summary="drop the listed size-1 axes"))
register_op(OpDef("nn.unsqueeze", operands=["x"], attrs=attrs(attr("axes", "ints")), infer=_unsqueeze_rule,
                  summary="insert size-1 axes at the listed positions of the result"))


def _transpose_rule(op):
    x = op.operands[0].type
    perm = op.attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise OpError(f"perm {perm} is not a permutation of {x.rank} axes")
    return [x.with_shape(tuple(x.shape[p] for p in perm))]


register_op(OpDef("nn.transpose", operands=["x"], attrs=attrs(attr("perm", "ints")), infer=_transpose_rule,
                  summary="y.shape[i] = x.shape[perm[i]]"))


def _concat_rule(op):
    first = op.operands[0].type
    axis = _norm_axis(op.attrs["axis"], first.rank)
    total = 0
    for v in op.operands:
        s = v.shape
        if len(s) != first.rank or any(s[i] != first.shape[i] for i in range(first.rank) if i != axis):
            raise OpError(f"cannot concatenate {list(s)} with {list(first.shape)} on axis {axis}")
        total += s[axis]
    return [first.with_shape(first.shape[:axis] + (total,) + first.shape[axis + 1:])]


register_op(OpDef("nn.concat", operands=["*inputs"], attrs=attrs(attr("axis", "int")), infer=_concat_rule,
                  summary="join along one axis"))


def _pad_rule(op):
    x = op.operands[0].type
    pads = op.attrs["pads"]
    if len(pads) != 2 * x.rank:
        raise OpError(f"pads needs {2 * x.rank} values (all begins, then all ends), got {len(pads)}")
    shape = tuple(d + pads[i] + pads[i + x.rank] for i, d in enumerate(x.shape))
    if any(d < 0 for d in shape):
        raise OpError(f"pads {pads} crop more than the input {list(x.shape)}")
    return [x.with_shape(shape)]


PAD_MODES = ("constant", "reflect", "edge")


def _verify_pad(op):
    mode, pads, x = op.attrs["mode"], op.attrs["pads"], op.operands[0].type
    if mode not in PAD_MODES:
        raise OpError(f"mode must be one of {', '.join(PAD_MODES)}, got '{mode}'")
    if mode != "constant" and any(p < 0 for p in pads):
        raise OpError(f"{mode} padding cannot crop (negative pads {pads})")
    for i, d in enumerate(x.shape):
        most = max(pads[i], pads[i + x.rank])
        # reflect mirrors about the edge element without repeating it, so it reaches d - 1 cells out
        if (mode == "reflect" and most > d - 1) or (mode == "edge" and most > 0 and d == 0):
            raise OpError(f"{mode} padding of {most} on axis {i} needs more than the {d} input elements")


register_op(OpDef("nn.pad", operands=["x"], attrs=attrs(attr("pads", "ints"), attr("value", "float", 0.0),
                                                       attr("mode", "str", "constant")),
                  infer=_pad_rule, verify_fn=_verify_pad,
                  summary="padding; pads in ONNX order [b0, b1, ..., e0, e1, ...]; mode constant (value), "
                          "reflect (mirror without the edge) or edge (repeat the edge)"))

register_op(OpDef("nn.shape", operands=["x"], infer=lambda op: [TensorType((op.operands[0].type.rank,), "i64")],
                  summary="the shape of x as an i64 vector"))


def _gather_rule(op):
    x, idx = op.operands[0].type, op.operands[1].type
    if idx.dtype not in ("i32", "i64"):
        raise OpError(f"indices must be i32 or i64, got {idx.dtype}")
    axis = _norm_axis(op.attrs["axis"], x.rank)
    return [x.with_shape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])]


register_op(OpDef("nn.gather", operands=["x", "indices"], attrs=attrs(attr("axis", "int", 0)),
                  infer=_gather_rule, summary="np.take(x, indices, axis)"))


def _cast_rule(op):
    to = op.attrs["to"]
    if to not in DTYPES:
        raise OpError(f"unknown element type '{to}'")
    return [TensorType(op.operands[0].shape, to)]


register_op(OpDef("nn.cast", operands=["x"], attrs=attrs(attr("to", "str")), infer=_cast_rule,
                  summary="convert elements to another type (float to int truncates toward zero)"))


def slice_indices(dim, start, end, step):
    """ONNX Slice clamping for one axis -> the selected indices."""
    if step == 0:
        raise OpError("slice step must not be 0")
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return np.arange(start, end, step, dtype=np.int64)


def slice_params(op):
    """Per-axis (axis, start, end, step) of a slice with constant parameters, else None."""
    arrays = [v.constant() for v in op.operands[1:]]
    if any(a is None for a in arrays):
        return None
    x = op.operands[0].type
    starts, ends = arrays[0].tolist(), arrays[1].tolist()
    axes = arrays[2].tolist() if len(arrays) > 2 else list(range(len(starts)))
    steps = arrays[3].tolist() if len(arrays) > 3 else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise OpError("starts, ends, axes and steps differ in length")
    return [(_norm_axis(a, x.rank), s, e, st) for a, s, e, st in zip(axes, starts, ends, steps)]


def _slice_rule(op):
    params = slice_params(op)
    if params is None:
        return [None]
    x = op.operands[0].type
    shape = list(x.shape)
    for axis, s, e, st in params:
        shape[axis] = len(slice_indices(x.shape[axis], s, e, st))
    return [x.with_shape(shape)]


register_op(OpDef("nn.slice", operands=["x", "starts", "ends", "axes?", "steps?"], infer=_slice_rule,
                  summary="ONNX Slice: x[starts:ends:steps] on the listed axes"))
