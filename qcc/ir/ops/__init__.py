"""The built-in op definitions, one module per dialect: ``core`` (qcc.const, qcc.return),
``nn``, ``f32`` (float layers kept out of quantization), ``nn_shape`` and ``nn_recurrent`` (float compute, shape and recurrent ops), ``quant`` (q.quantize,
q.dequantize, q.range), ``qnn``, ``qnn_softmax`` and ``qnn_recurrent`` (Qm.n integer ops), ``qnn_s8``
and ``qnn_s8_recurrent`` (affine int8 ops; int8 LSTM/GRU), ``qnn_s16`` (the 16x8 mode's int16 activations).
Each registers its ops with ``qcc.ir.registry`` on import."""
from qcc.ir.ops import (core, f32, nn, nn_recurrent, nn_shape, qnn, qnn_recurrent, qnn_s8, qnn_s8_recurrent,  # noqa: F401
                        qnn_s16, qnn_softmax, quant)
