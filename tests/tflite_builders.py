"""Helpers for tests: one-op int8 (or int16) TFLite models, run in TensorFlow Lite Micro's own interpreter.

``one_op_model`` writes a .tflite flatbuffer (schema classes of the PyPI ``tflite``
package) with int8 per-tensor quantized inputs and output; ``run_tflm`` runs it in
the PyPI ``tflite-micro`` interpreter (TFLM's reference kernels). Tests that use
them skip when either package is missing.
"""
from __future__ import annotations

import numpy as np

def _vec(b, start, items, kind):
    """A flatbuffer vector of int32 / float32 / int64 / table offsets."""
    start(b, len(items))
    for x in reversed(items):
        {"i": b.PrependInt32, "f": b.PrependFloat32, "l": b.PrependInt64, "o": b.PrependUOffsetTRelative}[kind](x)
    return b.EndVector()


def one_op_model(opcode, inputs, output, options=None, dtype: str = "int8") -> bytes:
    """inputs/output: (shape, scale, zero_point); options: (BuiltinOptions type, builder fn(b) -> offset);
    ``dtype`` "int8" or "int16": every tensor's type (TFLite's 16x8 activations are int16)."""
    import flatbuffers
    import tflite
    b = flatbuffers.Builder(1024)
    tensors_spec = list(inputs) + [output]
    tensors = []
    for i, (shape, scale, zp) in enumerate(tensors_spec):
        name = b.CreateString(f"t{i}")
        sc = _vec(b, tflite.QuantizationParametersStartScaleVector, [scale], "f")
        zv = _vec(b, tflite.QuantizationParametersStartZeroPointVector, [zp], "l")
        tflite.QuantizationParametersStart(b)
        tflite.QuantizationParametersAddScale(b, sc)
        tflite.QuantizationParametersAddZeroPoint(b, zv)
        q = tflite.QuantizationParametersEnd(b)
        sh = _vec(b, tflite.TensorStartShapeVector, list(shape), "i")
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, sh)
        tflite.TensorAddType(b, getattr(tflite.TensorType, dtype.upper()))
        tflite.TensorAddBuffer(b, 0)
        tflite.TensorAddName(b, name)
        tflite.TensorAddQuantization(b, q)
        tensors.append(tflite.TensorEnd(b))
    opt = options[1](b) if options else None
    ins = _vec(b, tflite.OperatorStartInputsVector, list(range(len(inputs))), "i")
    outs = _vec(b, tflite.OperatorStartOutputsVector, [len(inputs)], "i")
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, ins)
    tflite.OperatorAddOutputs(b, outs)
    if options:
        tflite.OperatorAddBuiltinOptionsType(b, options[0])
        tflite.OperatorAddBuiltinOptions(b, opt)
    op = tflite.OperatorEnd(b)
    tv = _vec(b, tflite.SubGraphStartTensorsVector, tensors, "o")
    gi = _vec(b, tflite.SubGraphStartInputsVector, list(range(len(inputs))), "i")
    go = _vec(b, tflite.SubGraphStartOutputsVector, [len(inputs)], "i")
    ov = _vec(b, tflite.SubGraphStartOperatorsVector, [op], "o")
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tv)
    tflite.SubGraphAddInputs(b, gi)
    tflite.SubGraphAddOutputs(b, go)
    tflite.SubGraphAddOperators(b, ov)
    sg = tflite.SubGraphEnd(b)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddBuiltinCode(b, opcode)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(opcode, 127))
    tflite.OperatorCodeAddVersion(b, 1)
    oc = tflite.OperatorCodeEnd(b)
    tflite.BufferStart(b)
    buf = tflite.BufferEnd(b)
    sgs = _vec(b, tflite.ModelStartSubgraphsVector, [sg], "o")
    ocs = _vec(b, tflite.ModelStartOperatorCodesVector, [oc], "o")
    bufs = _vec(b, tflite.ModelStartBuffersVector, [buf], "o")
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddSubgraphs(b, sgs)
    tflite.ModelAddOperatorCodes(b, ocs)
    tflite.ModelAddBuffers(b, bufs)
    m = tflite.ModelEnd(b)
    b.Finish(m, file_identifier=b"TFL3")
    return bytes(b.Output())


def options(kind: str, **fields):
    """(BuiltinOptions type, builder) of ``<kind>Options`` with ``fields`` (e.g. Alpha=0.1)."""
    import tflite

    def build(b):
        getattr(tflite, kind + "OptionsStart")(b)
        for name, value in fields.items():
            getattr(tflite, f"{kind}OptionsAdd{name}")(b, value)
        return getattr(tflite, kind + "OptionsEnd")(b)
    return getattr(tflite.BuiltinOptions, kind + "Options"), build


def run_tflm(model: bytes, arrays, dtype=np.int8) -> np.ndarray:
    """Output 0 of ``model`` on ``arrays`` (int8, or ``dtype``) in TFLite Micro."""
    from tflite_micro.python.tflite_micro import runtime
    size = sum(np.asarray(a).nbytes for a in arrays)
    it = runtime.Interpreter.from_bytes(model, arena_size=max(16384, 4 * size + 16384) if size > 2048 else None)
    for i, a in enumerate(arrays):
        it.set_input(np.asarray(a, dtype), i)
    it.invoke()
    return it.get_output(0)
