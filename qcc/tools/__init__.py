"""The command-line drivers: ``cli`` (qcc-opt, qcc-sim and the shared error policy),
``compile`` (qcc) and ``report`` (the per-layer quantization report)."""
