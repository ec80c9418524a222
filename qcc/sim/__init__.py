"""Reference execution: ``interpreter`` (runs any graph, float ops included), with the
integer kernels of ``qmn`` (fixed point Qm.n) and ``s8`` (affine int8, TFLite/CMSIS-NN
arithmetic) that the emitted C matches bit for bit."""
from qcc.sim import f32, qmn, qmn_recurrent, recurrent, s8, s8_recurrent, s16_activation  # noqa: F401  (register the f32, recurrent and integer kernels)
