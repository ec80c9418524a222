"""check-qdq-model: the ``int8`` pipeline's guard against float models.

The ``int8`` pipeline lowers a pre-quantized (QDQ) model: its scales come from
its QuantizeLinear/DequantizeLinear pairs. A float model has none, and the
pipeline would hand it back unchanged, still float, as if it had worked. This
pass refuses such a graph up front and points to ``int8-calibrated``, which
calibrates a float model first. A graph with any quantization boundary
(``q.quantize``/``q.dequantize``) or integer op passes unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Graph
from qcc.transforms.passmanager import Pass, PassResult, register_pass

BOUNDARIES = ("q.quantize", "q.dequantize")


@register_pass
@dataclass
class CheckQdqModel(Pass):
    """Refuse a float model (no QuantizeLinear/DequantizeLinear) where a QDQ model is required.

    On a QDQ graph nothing changes::

        %1 = q.dequantize %0 : tensor<1x8xf32>
        %2 = nn.relu %1 : tensor<1x8xf32>

    On a float graph (``%0 = nn.conv2d %x, %w, %b ...`` and no q.* op) it fails:
    ``@net is a float model (no QuantizeLinear/DequantizeLinear): the 'int8'
    pipeline compiles QDQ models; quantize it with -p int8-calibrated --calib DATA``.
    """

    name = "check-qdq-model"

    def run(self, graph: Graph) -> PassResult:
        ops = graph.ops
        quantized = any(op.opname in BOUNDARIES or op.opname.startswith(("qnn.", "s8.")) for op in ops)
        compute = [op for op in ops if op.opname.startswith("nn.")]
        if compute and not quantized:
            raise UnsupportedModelError(
                f"@{graph.name} is a float model (no QuantizeLinear/DequantizeLinear, e.g. at "
                f"{compute[0].describe()}): the 'int8' pipeline compiles QDQ models only; quantize a float "
                f"model with -p int8-calibrated --calib DATA (qcc: --scheme int8 --calib DATA)")
        return PassResult(False, {"float_ops": len(compute)})
