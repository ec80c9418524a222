"""The formats of a QDQ ONNX model as JSON, for training with the same fake quantization.

``tensor_formats(model) -> dict`` reads every QuantizeLinear/DequantizeLinear
of a QDQ model (qcc's export, ``qcc --emit-onnx-qdq FILE`` writes it to
``FILE.json``) and states, per quantized tensor, what a fake-quant op in a
training framework needs (``torch.fake_quantize_per_tensor_affine`` /
``..._per_channel_affine`` take exactly ``scale, zero_point, quant_min,
quant_max`` and the axis)::

    {"format": "qcc-qdq-formats/1",
     "tensors": {"conv1/nchw": {"dtype": "int8", "quant_min": -128, "quant_max": 127,
                                "scale": 0.03125, "zero_point": 0, "axis": null,
                                "min": -4.0, "max": 3.96875, "frac_bits": 5,
                                "float": "conv1/Relu_out"}, ...},
     "layers": [{"name": "conv1", "op_type": "Conv", "input": "conv1/Transpose_in",
                 "weight": "conv1.weight.nchw", "bias": "conv1.bias", "output": "conv1/nchw"}, ...]}

A tensor is keyed by its integer (stored) ONNX name; ``float`` names the
float tensor a QuantizeLinear reads, when there is one. The representable
real range is ``[(quant_min - zp) * scale, (quant_max - zp) * scale]`` (lists
per index along ``axis`` for per-axis tensors). ``frac_bits`` is given when
every scale is a power of two ``2^-n`` with zero point 0: the tensor is then
Qm.n fixed point with ``n`` fractional bits (qcc's ``--scheme qmn`` format).
``layers`` lists the Conv/Gemm/MatMul nodes in graph order with the
quantized tensors they read (through their DequantizeLinear) and the one
their result is quantized into (through Relu/Clip), so a training script can
pair them with its own modules by order. The output is deterministic.
"""
from __future__ import annotations

import json
import math
from typing import Dict, List, Optional

import numpy as np
import onnx
from onnx import numpy_helper

FORMAT = "qcc-qdq-formats/1"
LAYER_OPS = ("Conv", "Gemm", "MatMul")
PASS_THROUGH = ("Relu", "Clip", "Identity")  # between a layer and its QuantizeLinear


def _pow2_exponent(scale: float) -> Optional[int]:
    mantissa, exp = math.frexp(scale)
    return 1 - exp if mantissa == 0.5 else None


def _entry(dtype: int, scale: np.ndarray, zp: np.ndarray, axis: Optional[int]) -> dict:
    np_dtype = onnx.helper.tensor_dtype_to_np_dtype(dtype)
    info = np.iinfo(np_dtype)
    scales = [float(s) for s in np.ravel(scale)]
    zps = [int(z) for z in np.ravel(zp)] if zp is not None else [0] * len(scales)
    lo = [(info.min - z) * s for s, z in zip(scales, zps)]
    hi = [(info.max - z) * s for s, z in zip(scales, zps)]
    ns = [_pow2_exponent(s) if z == 0 else None for s, z in zip(scales, zps)]
    per_axis = np.ndim(scale) == 1 and np.size(scale) > 1  # a 1-element axis is the per-tensor case
    one = (lambda xs: xs) if per_axis else (lambda xs: xs[0])
    out = {"dtype": np_dtype.name, "quant_min": int(info.min), "quant_max": int(info.max),
           "scale": one(scales), "zero_point": one(zps), "axis": axis if per_axis else None,
           "min": one(lo), "max": one(hi)}
    if all(n is not None for n in ns):
        out["frac_bits"] = one(ns)
    return out


def tensor_formats(model: onnx.ModelProto) -> Dict:
    """Every quantized tensor's format and every layer's quantized operands (see the module docstring)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def array(name: str) -> Optional[np.ndarray]:
        if name in inits:
            return numpy_helper.to_array(inits[name])
        p = producers.get(name)
        if p is not None and p.op_type == "Constant":
            return numpy_helper.to_array(p.attribute[0].t)
        return None

    tensors: Dict[str, dict] = {}
    dq_source: Dict[str, str] = {}  # DequantizeLinear output -> its integer input
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        stored = n.output[0] if n.op_type == "QuantizeLinear" else n.input[0]
        scale = array(n.input[1])
        zp = array(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if scale is None:
            continue  # computed scales: not a static format
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)  # ONNX's default axis
        dtype = zp.dtype if zp is not None else np.dtype(np.uint8)
        entry = tensors.setdefault(stored, _entry(onnx.helper.np_dtype_to_tensor_dtype(dtype), scale, zp, axis))
        if n.op_type == "QuantizeLinear":
            entry["float"] = n.input[0]
        else:
            dq_source[n.output[0]] = stored

    def quantized_result(name: str) -> Optional[str]:
        while True:
            users = consumers.get(name, [])
            if len(users) != 1:
                return None
            u = users[0]
            if u.op_type == "QuantizeLinear":
                return u.output[0]
            if u.op_type not in PASS_THROUGH:
                return None
            name = u.output[0]

    layers = []
    for n in g.node:
        if n.op_type not in LAYER_OPS:
            continue
        layer = {"name": n.name, "op_type": n.op_type}
        for role, i in (("input", 0), ("weight", 1), ("bias", 2)):
            if i < len(n.input) and n.input[i] in dq_source:
                layer[role] = dq_source[n.input[i]]
        out = quantized_result(n.output[0])
        if out is None and n.op_type == "MatMul":  # MatMul + Add (bias) -> QuantizeLinear
            users = consumers.get(n.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add":
                add = users[0]
                other = [i for i in add.input if i != n.output[0]]
                if other and other[0] in dq_source:
                    layer["bias"] = dq_source[other[0]]
                out = quantized_result(add.output[0])
        if out is not None:
            layer["output"] = out
        layers.append(layer)
    return {"format": FORMAT, "tensors": tensors, "layers": layers}


def formats_json(model: onnx.ModelProto) -> bytes:
    return (json.dumps(tensor_formats(model), indent=1) + "\n").encode()
