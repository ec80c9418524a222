"""The ONNX frontend: ``importer`` (per-import state, shape and dtype tables), ``lifters`` (one
lifter per ONNX op type), ``qdq_lifters`` (QuantizeLinear/DequantizeLinear), ``loader``
(``load_onnx``, and ``load_model`` for .onnx or .qir by suffix)."""
from qcc.frontend.loader import load_model, load_onnx

__all__ = ["load_model", "load_onnx"]
