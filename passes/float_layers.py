"""float-layers: keep the named layers in float32 between an exact dequantize and a quantize.

Runs on the calibrated float graph (after ``calibrate``, before ``insert-qdq``
/ ``quantize-affine``). Each named op ``nn.X`` becomes ``f32.X`` (same
operands, attributes and float32 math; ``qcc/ir/ops/f32.py``), which the
quantizing passes leave alone, so after lowering:

    integer -> float edge   q.dequantize: real = (q - zp) * scale, or q * 2^-n (exact in float32
                            for 8/16-bit storage and the formats qcc picks)
    float -> integer edge   q.quantize: clamp(round_half_away(x / scale) + zp), the simulator's
    float -> float edge     nothing: the calibrated ``q.range`` between two kept layers (through
                            reshape/flatten/squeeze) is removed, so they chain in float

The integer tensors around the float layers keep their calibrated ranges.
Names are op names: the ONNX node names, or the layer names the report
shows. A name that matches no op is an ``InputError`` listing close
matches (a node folded or fused away, such as a Relu fused into its Conv, is
named as such); an op outside ``FLOAT_LAYER_OPS`` is refused naming it.

Before (calibrated)::

    %1 = nn.conv2d %0, %w, %b {act = "relu", ...} : tensor<1x8x8x4xf32> loc("conv1")
    %2 = q.range %1 {max = 3.5, min = 0.0} : tensor<1x8x8x4xf32>
    %3 = nn.global_avgpool %2 {layout = "NHWC"} : tensor<1x1x1x4xf32> loc("pool")

After ``-p 'float-layers{layers="conv1,pool"}'``::

    %1 = f32.conv2d %0, %w, %b {act = "relu", ...} : tensor<1x8x8x4xf32> loc("conv1")
    %2 = f32.global_avgpool %1 {layout = "NHWC"} : tensor<1x1x1x4xf32> loc("pool")
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Dict, List

from qcc.errors import InputError, UnsupportedModelError
from qcc.ir.graph import Graph, Value
from qcc.ir.ops.f32 import FLOAT_LAYER_OPS, f32_name
from qcc.transforms.passmanager import Pass, PassResult, register_pass

# Ops that only re-view their operand's bytes: a float chain may pass through them.
VIEW_OPS = frozenset({"nn.reshape", "nn.flatten", "nn.squeeze", "nn.unsqueeze"})


def split_names(text: str) -> List[str]:
    """``"a, b"`` -> ``["a", "b"]`` (empty parts dropped)."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _float_only(graph: Graph, v: Value) -> bool:
    """Every use of ``v`` is a kept float layer (directly or through view ops); not a graph output."""
    if graph.is_output(v):
        return False
    users = graph.users(v)
    return bool(users) and all(u.opname.startswith("f32.") or
                               (u.opname in VIEW_OPS and u.operands[0] is v and _float_only(graph, u.result))
                               for u in users)


def _from_float_layer(v: Value) -> bool:
    while v.producer is not None and v.producer.opname in VIEW_OPS | {"q.range"}:
        v = v.producer.operands[0]
    return v.producer is not None and v.producer.opname.startswith("f32.")


def _kernel_limit(op) -> str:
    """Why the float32 C kernel does not cover this instance ('' when it does)."""
    act = op.attrs.get("act", "none")
    if act not in ("none", "relu", "relu6", "leaky_relu"):
        return f"the fused activation '{act}' has no float32 C kernel"
    if op.opname in ("nn.add", "nn.sub", "nn.mul") and not (
            op.operands[0].shape == op.operands[1].shape == op.result.shape):
        return (f"a float {op.opname[3:]} needs operands of one shape ({list(op.operands[0].shape)} vs "
                f"{list(op.operands[1].shape)}); broadcasting float layers are not built")
    if op.opname in ("nn.conv2d", "nn.dense") and not all(v.is_constant() for v in op.operands[1:]):
        return "the weights/bias are computed at run time, not constants"
    return ""


@register_pass
@dataclass
class FloatLayers(Pass):
    """Keep the named layers float (f32 ops) and chain adjacent ones without a quantize round trip.

    Before::

        %1 = nn.dense %0, %w, %b : tensor<1x4xf32> loc("fc1")
        %2 = q.range %1 {max = 2.0, min = -2.0} : tensor<1x4xf32>
        %3 = nn.softmax %2 : tensor<1x4xf32> loc("sm")

    After ``-p 'float-layers{layers="fc1,sm"}'``::

        %1 = f32.dense %0, %w, %b : tensor<1x4xf32> loc("fc1")
        %2 = f32.softmax %1 : tensor<1x4xf32> loc("sm")
    """

    name = "float-layers"
    layers: str = ""   # comma-separated op names

    def run(self, graph: Graph) -> PassResult:
        names = split_names(self.layers)
        by_name: Dict[str, list] = {}
        for op in graph.ops:
            if op.name and op.opname not in ("qcc.const", "q.range", "q.quantize", "q.dequantize"):
                by_name.setdefault(op.name, []).append(op)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise InputError("--float-layers: " + "; ".join(self._unknown(graph, n, list(by_name)) for n in missing))
        kept = 0
        for n in dict.fromkeys(names):
            # A name may also label helper ops (a layout transpose keeps its layer's name): keep the layer.
            layers = [op for op in by_name[n] if op.opname in FLOAT_LAYER_OPS or op.opname.startswith("f32.")]
            if not layers:
                op = by_name[n][0]
                raise UnsupportedModelError(
                    f"--float-layers: {graph.source_name(op)} is {op.opname}, which has no float32 C kernel; "
                    f"float layers can be {', '.join(o.split('.', 1)[1] for o in FLOAT_LAYER_OPS)}")
            for op in layers:
                if op.opname.startswith("f32."):
                    continue
                why = _kernel_limit(op)
                if why:
                    raise UnsupportedModelError(f"--float-layers: {graph.source_name(op)}: {why}")
                new = graph.add_op(f32_name(op.opname), list(op.operands), dict(op.attrs),
                                   [r.type for r in op.results], name=op.name)
                graph.move_after_seq(new, op)  # prints where the layer was
                for old, r in zip(op.results, new.results):
                    graph.replace_all_uses(old, r)
                graph.erase_op(op)
                kept += 1
        chained = 0
        for r in graph.find("q.range"):
            if _from_float_layer(r.operands[0]) and _float_only(graph, r.result):
                graph.replace_all_uses(r.result, r.operands[0])
                graph.erase_op(r)
                chained += 1
        return PassResult(bool(kept or chained), {"float_layers": kept, "float_edges": chained})

    @staticmethod
    def _unknown(graph: Graph, name: str, known: List[str]) -> str:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" (close matches: {', '.join(repr(c) for c in close)})" if close else ""
        if name in graph.source_ops:
            return (f"node \"{name}\" ({graph.source_ops[name]}) is no longer a layer of its own (folded or "
                    f"fused into another during lowering); name the layer it became part of{hint}")
        return f"no layer named '{name}'{hint}"
