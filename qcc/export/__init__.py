"""Export to ONNX: ``onnx_export`` (float, fake-quant QDQ and lowered graphs) with the
per-op tables of ``onnx_export_ops``."""
