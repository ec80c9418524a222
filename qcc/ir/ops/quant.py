"""Quantization ops: the boundary between real and stored integer values."""
from __future__ import annotations

from qcc.ir.registry import AttrSpec, OpDef, OpError, register_op


def _verify_quantize(op):
    src, dst = op.operands[0].type, op.results[0].type
    if not src.is_float:
        raise OpError(f"quantizes a float tensor, got {src.dtype}")
    if dst.quant is None:
        raise OpError("result must have a quantized type")


def _verify_dequantize(op):
    src, dst = op.operands[0].type, op.results[0].type
    if src.quant is None:
        raise OpError("operand must have a quantized type")
    if not dst.is_float:
        raise OpError(f"result must be float, got {dst.dtype}")


def _same_shape(op):
    return [None]  # the result type is explicit; only the shape is checked in verify


def _verify_same_shape(op):
    if op.operands[0].type.shape != op.results[0].type.shape:
        raise OpError("operand and result shapes differ")


register_op(OpDef("q.quantize", operands=["x"],
                  verify_fn=lambda op: (_verify_same_shape(op), _verify_quantize(op)),
                  summary="Round x / scale + zero_point half away from zero and saturate."))
register_op(OpDef("q.dequantize", operands=["x"],
                  verify_fn=lambda op: (_verify_same_shape(op), _verify_dequantize(op)),
                  summary="(q - zero_point) * scale as float."))


def _verify_range(op):
    _verify_same_shape(op)
    if op.attrs["min"] > op.attrs["max"]:
        raise OpError(f"min {op.attrs['min']} > max {op.attrs['max']}")


register_op(OpDef("q.range", operands=["x"],
                  attrs={"min": AttrSpec("float"), "max": AttrSpec("float")},
                  infer=lambda op: [op.operands[0].type], verify_fn=_verify_range,
                  summary="Identity on floats that records the calibrated real range of x "
                          "(written by 'calibrate', consumed by 'insert-qdq')."))
