"""Kernels of the ``f32`` dialect (``qcc/ir/ops/f32.py``): the float interpreter's own.

A float layer kept by ``--float-layers`` runs exactly as the float model's
layer does in the interpreter (float32, numpy), so ``qcc-sim`` and
``qcc-eval`` give the mixed graph's result: the integer layers bit-exact, the
float layers the interpreter's float32 values between an exact dequantize
and the simulator's quantize.
"""
from __future__ import annotations

from qcc.ir.ops.f32 import FLOAT_LAYER_OPS, f32_name
from qcc.sim.interpreter import KERNELS

for _name in FLOAT_LAYER_OPS:
    KERNELS[f32_name(_name)] = KERNELS[_name]
