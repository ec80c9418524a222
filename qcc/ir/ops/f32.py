"""The ``f32`` dialect: float layers kept out of quantization (``--float-layers``).

``f32.X`` is ``nn.X`` with the same operands, attributes, shape rule and
verifier (so the same float32 math), under another name so that the
quantizing passes (insert-qdq, quantize-affine, lower-quantized, lower-qdq)
leave it alone. In a lowered graph an ``f32`` op reads float tensors, which
come from a ``q.dequantize`` (exact: ``(q - zp) * scale``, or ``q * 2^-n``)
or another ``f32`` op, and its result reaches integer layers through a
``q.quantize`` (round half away from zero, saturate). These ops are outside
the bit-exact integer contract: the C runs them in float32 and agrees with
the interpreter within a tolerance (ARCHITECTURE.md, numerics contract).
"""
from __future__ import annotations

import dataclasses

from qcc.ir.registry import get_op, register_op

from . import nn  # noqa: F401  (the nn ops these mirror are registered first)

# The float layers --float-layers can keep (the ops of the MLPerf Tiny / ML-KWS CNNs and DNNs).
FLOAT_LAYER_OPS = ("nn.conv2d", "nn.dense", "nn.add", "nn.sub", "nn.mul", "nn.relu", "nn.clip", "nn.leaky_relu",
                   "nn.sigmoid", "nn.tanh", "nn.softmax", "nn.maxpool", "nn.avgpool", "nn.global_avgpool",
                   "nn.global_maxpool")


def f32_name(opname: str) -> str:
    """``nn.conv2d`` -> ``f32.conv2d``."""
    return "f32." + opname.split(".", 1)[1]


def nn_name(opname: str) -> str:
    """``f32.conv2d`` -> ``nn.conv2d``."""
    return "nn." + opname.split(".", 1)[1]


for _name in FLOAT_LAYER_OPS:
    _nn = get_op(_name)
    register_op(dataclasses.replace(_nn, name=f32_name(_name),
                                    summary=f"{_name} kept in float32 (--float-layers): {_nn.summary}"))
