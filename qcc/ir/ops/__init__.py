"""The built-in op definitions, one module per dialect: ``core`` (qcc.const, qcc.return),
``nn``, ``nn_shape`` and ``nn_recurrent`` (float compute, shape and recurrent ops), ``quant`` (q.quantize,
q.dequantize, q.range), ``qnn`` and ``qnn_softmax`` (Qm.n integer ops), ``qnn_s8``
(affine int8 ops), ``qnn_s8_recurrent`` (int8 LSTM/GRU). Each registers its ops with ``qcc.ir.registry`` on import."""
from qcc.ir.ops import core, nn, nn_recurrent, nn_shape, qnn, qnn_s8, qnn_s8_recurrent, qnn_softmax, quant  # noqa: F401
