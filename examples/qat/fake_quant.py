"""Fake quantization fixed to qcc's formats, for fine-tuning a PyTorch model.

``qcc --emit-onnx-qdq net.onnx`` writes ``net.onnx.json``: every quantized
tensor's scale, zero point and integer range, and the Conv/Gemm layers in
graph order with the tensors they read and write (see
``qcc/export/qdq_formats.py``). ``attach_formats(model, formats)`` pairs
those layers, in order, with the model's ``nn.Conv2d``/``nn.Linear`` modules
(in ``model.modules()`` order, which for an ``nn.Sequential`` is forward
order) and fake-quantizes, with the formats frozen:

    input   x -> fq(x, s_x)                      per tensor
    weight  W -> fq(W, s_w[c])                   per output channel
    bias    b -> round(b / s_b[c]) * s_b[c]      int32 at s_b = s_x * s_w[c] (qcc's accumulator scale)
    output  y -> fq(act(y), s_y)                 after the ReLU that follows the layer, if any

``fq(v, s) = clamp(round(v / s), qmin, qmax) * s`` is
``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine``: the
forward pass sees exactly the values qcc's integer code stores, and gradients
pass straight through inside the range. Exported with ``torch.onnx.export``,
each fake-quant becomes a QuantizeLinear/DequantizeLinear pair with the same
scale, so qcc compiles the fine-tuned model with ``--scheme qmn`` and no
calibration. (torch rounds half to even where qcc rounds half away from
zero; that differs only on exact ties.)
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

ACTIVATIONS = (nn.ReLU, nn.ReLU6)


class FakeQuant(nn.Module):
    """A frozen per-tensor (axis None) or per-channel fake-quant of one qcc format."""

    def __init__(self, fmt: Dict, axis=None):
        super().__init__()
        self.qmin, self.qmax = int(fmt["quant_min"]), int(fmt["quant_max"])
        self.axis = axis if isinstance(fmt["scale"], list) else None
        if self.axis is None:
            self.scale, self.zero_point = float(fmt["scale"]), int(fmt["zero_point"])
        else:
            self.register_buffer("scales", torch.tensor(fmt["scale"], dtype=torch.float32))
            self.register_buffer("zero_points", torch.tensor(fmt["zero_point"], dtype=torch.int32))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(v, self.scale, self.zero_point, self.qmin, self.qmax)
        return torch.fake_quantize_per_channel_affine(v, self.scales, self.zero_points, self.axis,
                                                      self.qmin, self.qmax)


class QuantizedLayer(nn.Module):
    """A Conv2d/Linear whose input, weight and bias are fake-quantized to qcc's formats."""

    def __init__(self, layer: nn.Module, tensors: Dict, entry: Dict):
        super().__init__()
        self.layer = layer
        self.fq_input = FakeQuant(tensors[entry["input"]])
        self.fq_weight = FakeQuant(tensors[entry["weight"]], axis=0)
        bias = tensors.get(entry.get("bias", ""))
        scales = bias["scale"] if bias else []
        self.register_buffer("bias_scale", torch.tensor(scales if isinstance(scales, list) else [scales],
                                                        dtype=torch.float32))

    def quantized_bias(self) -> torch.Tensor:
        b, s = self.layer.bias, self.bias_scale
        return b + (torch.round(b / s) * s - b).detach()  # straight-through; int32 does not saturate here

    @torch.no_grad()
    def freeze_bias(self) -> None:
        """Store the quantized bias in the parameter itself (an export then holds a plain constant)."""
        if self.layer.bias is not None and self.bias_scale.numel():
            self.layer.bias.copy_(self.quantized_bias())
            self.bias_scale = torch.empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fq_input(x)
        w = self.fq_weight(self.layer.weight)
        b = self.quantized_bias() if self.layer.bias is not None and self.bias_scale.numel() else self.layer.bias
        if isinstance(self.layer, nn.Conv2d):
            c = self.layer
            return nn.functional.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)
        return nn.functional.linear(x, w, b)


def _layers_in_order(model: nn.Module) -> List[tuple]:
    """(parent, child name, module) of every Conv2d/Linear, in module order."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, (nn.Conv2d, nn.Linear)):
                found.append((parent, name, child))
    return found


def freeze_biases(model: nn.Module) -> nn.Module:
    """Before ``torch.onnx.export``: biases become their quantized values (qcc quantizes float biases
    at ``s_x * s_w[c]``, so it recovers the same integers)."""
    for m in model.modules():
        if isinstance(m, QuantizedLayer):
            m.freeze_bias()
    return model


def attach_formats(model: nn.Module, formats: Dict) -> nn.Module:
    """Wrap the model's layers in place with qcc's formats (``formats`` is the parsed JSON); returns it."""
    layers, tensors = formats["layers"], formats["tensors"]
    modules = _layers_in_order(model)
    if len(modules) != len(layers):
        raise ValueError(f"the model has {len(modules)} Conv2d/Linear layers, the formats {len(layers)}")
    for (parent, name, module), entry in zip(modules, layers):
        setattr(parent, name, QuantizedLayer(module, tensors, entry))
        out = FakeQuant(tensors[entry["output"]])
        names = [n for n, _ in parent.named_children()]
        nxt = names[names.index(name) + 1] if names.index(name) + 1 < len(names) else None
        act = getattr(parent, nxt) if nxt is not None else None
        if isinstance(act, ACTIVATIONS):  # quantize after the ReLU, where qcc's layer clamps
            setattr(parent, nxt, nn.Sequential(act, out))
        else:
            setattr(parent, name, nn.Sequential(getattr(parent, name), out))
    return model
