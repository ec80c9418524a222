"""16x8 QDQ models from onnxruntime's quantizer (int16 activations, int8 weights) compile bit-exact.

The real DS-CNN (MLPerf Tiny KWS) quantized by ``quantize_static(activation_type=QInt16,
weight_type=QInt8, ActivationSymmetric)``, in both forms onnxruntime emits (ONNX opset 21
QuantizeLinear/DequantizeLinear with int16 zero points, and its ``com.microsoft`` contrib ops):
both give the same C, every layer (the final int16 softmax included) an s8 op on int16; on all 22
real-speech clips the host C (ASan/UBSan) equals the simulator bit for bit, top-1 equals the float
model's, and the outputs stay within 0.03 of the float probabilities (measured 0.020; onnxruntime's
own run of the QDQ model: 0.022). ORT's default asymmetric int16 compiles too, with a note: each
tensor gets the symmetric scale covering its range (normalize-qdq), the same checks hold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcc.backend_registry import get_backend
from qcc.backends.cmsis import harness
from qcc.fileio import write_files
from qcc.ir.parser import parse_file

from conftest import shared_model_path
from random_models import run_qcc
from test_backend_s8 import needs_gcc

quantization = pytest.importorskip("onnxruntime.quantization")


def _quantize(folder: Path, symmetric: bool, contrib: bool, unsigned: bool = False) -> Path:
    src = shared_model_path("kws_dscnn", "kws_dscnn_float.onnx")
    clips = np.load(shared_model_path("kws_dscnn", "mfcc_real_float.npy")).astype(np.float32)
    name = onnx.load(src).graph.input[0].name

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: c[None]} for c in clips])

        def get_next(self):
            return next(self.it, None)

    out = folder / f"dscnn_16x8{'_sym' if symmetric else ''}{'_ms' if contrib else ''}{'_u16' if unsigned else ''}.onnx"
    quantization.quantize_static(
        str(src), str(out), Reader(), quant_format=quantization.QuantFormat.QDQ,
        activation_type=getattr(quantization.QuantType, "QUInt16" if unsigned else "QInt16"),
        weight_type=quantization.QuantType.QInt8, per_channel=True,
        extra_options={"ActivationSymmetric": symmetric, "UseQDQContribOps": contrib})
    return out


@needs_gcc
def test_onnxruntime_16x8_dscnn_bit_exact_and_top1(tmp_path):
    clips = np.load(shared_model_path("kws_dscnn", "mfcc_real_float.npy")).astype(np.float32)
    texts = {}
    for contrib in (False, True):
        model = _quantize(tmp_path, True, contrib)
        domains = {n.domain for n in onnx.load(model).graph.node if n.op_type == "QuantizeLinear"}
        assert domains == ({"com.microsoft"} if contrib else {""})
        folder = tmp_path / ("ms" if contrib else "onnx")
        folder.mkdir()
        rc, err = run_qcc(folder, [str(model), "-o", "c/net.c", "--target", "cortex-m4", "--emit-ir", "net.qir",
                                   "--emit-onnx", "export.onnx"])
        assert rc == 0, err
        texts[contrib] = (folder / "c" / "net.c").read_bytes()
    assert texts[False] == texts[True]
    # The exported QDQ ONNX (int64 biases as int32 DequantizeLinear) runs in onnxruntime like the input model.
    exported = ort.InferenceSession(str(tmp_path / "onnx" / "export.onnx"), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(str(tmp_path / "dscnn_16x8_sym.onnx"), providers=["CPUExecutionProvider"])
    run = lambda s: np.concatenate([s.run(None, {s.get_inputs()[0].name: c[None]})[0] for c in clips])
    assert (run(exported).argmax(1) == run(original).argmax(1)).all()

    graph = parse_file(tmp_path / "onnx" / "net.qir")
    kinds = {op.opname for op in graph.ops if op.opname.startswith("s8.")}
    assert {"s8.conv2d", "s8.dense", "s8.avgpool", "s8.softmax"} <= kinds
    assert {op.result.type.dtype for op in graph.ops if op.opname.startswith("s8.")} == {"i16"}
    gen = get_backend("cmsis").generate(graph, "net", "cortex-m4")
    out = tmp_path / "host"
    write_files({out / k: v for k, v in gen.files.items()})
    samples = {graph.inputs[0].name: clips.reshape((len(clips),) + graph.inputs[0].shape)}
    want = harness.simulate(graph, gen, samples)
    count = harness.write_samples(out / "in.bin", graph, samples)
    harness.run_host(harness.build_host(out, "net"), out / "in.bin", out / "out.bin")
    got = harness.read_outputs(out / "out.bin", gen, count)
    assert got.quantized[0].dtype == np.int16
    assert np.array_equal(got.quantized[0], want.quantized[0]), "host C != simulator"
    _assert_close_to_float(want, clips)


def _host_vs_simulator(folder: Path, graph, clips: np.ndarray):
    """Host C (ASan/UBSan) and simulator on every clip: (C outputs, simulator outputs)."""
    gen = get_backend("cmsis").generate(graph, "net", "cortex-m4")
    write_files({folder / k: v for k, v in gen.files.items()})
    samples = {graph.inputs[0].name: clips.reshape((len(clips),) + graph.inputs[0].shape)}
    want = harness.simulate(graph, gen, samples)
    count = harness.write_samples(folder / "in.bin", graph, samples)
    harness.run_host(harness.build_host(folder, "net"), folder / "in.bin", folder / "out.bin")
    return harness.read_outputs(folder / "out.bin", gen, count), want


def _assert_close_to_float(want, clips: np.ndarray):
    """The simulator's probabilities: top-1 equal to the float DS-CNN's on every clip, within 0.03."""
    src = shared_model_path("kws_dscnn", "kws_dscnn_float.onnx")
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    iname = sess.get_inputs()[0].name
    ref = np.concatenate([sess.run(None, {iname: c[None]})[0] for c in clips]).reshape(len(clips), -1)
    probs = want.floats[0].reshape(len(clips), -1)
    assert (probs.argmax(1) == ref.argmax(1)).sum() == len(clips)
    assert np.abs(probs - ref).max() < 0.03


@needs_gcc
def test_onnxruntime_uint16_activations_are_recentred(tmp_path):
    """QUInt16 symmetric (zero point 32768) becomes int16 with zero point 0 exactly: the same 16x8 graph."""
    model = _quantize(tmp_path, True, False, unsigned=True)
    m = onnx.load(model)
    zp_names = {n.input[2] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    zps = {int(onnx.numpy_helper.to_array(i)) for i in m.graph.initializer if i.name in zp_names}
    assert zps == {32768}
    rc, err = run_qcc(tmp_path, [str(model), "-o", "c/net.c", "--target", "cortex-m4", "--emit-ir", "net.qir"])
    assert rc == 0, err
    graph = parse_file(tmp_path / "net.qir")
    assert {op.result.type.dtype for op in graph.ops if op.opname.startswith("s8.")} == {"i16"}
    clips = np.load(shared_model_path("kws_dscnn", "mfcc_real_float.npy")).astype(np.float32)
    got, want = _host_vs_simulator(tmp_path / "host", graph, clips)
    assert np.array_equal(got.quantized[0], want.quantized[0]), "host C != simulator"


@needs_gcc
def test_float_dscnn_with_scheme_int8_bits_16(tmp_path):
    """qcc --scheme int8 --bits 16 (calibrated on the clips): every layer 16x8, C == simulator, top-1 == float."""
    src = shared_model_path("kws_dscnn", "kws_dscnn_float.onnx")
    calib = shared_model_path("kws_dscnn", "mfcc_real_float.npy")
    clips = np.load(calib).astype(np.float32)
    rc, err = run_qcc(tmp_path, [str(src), "-o", "c/net.c", "--target", "cortex-m4", "--scheme", "int8",
                                 "--bits", "16", "--calib", str(calib), "--emit-ir", "net.qir"])
    assert rc == 0, err
    graph = parse_file(tmp_path / "net.qir")
    ops = [op for op in graph.ops if op.opname.startswith("s8.")]
    assert {op.result.type.dtype for op in ops} == {"i16"} and any(op.opname == "s8.softmax" for op in ops)
    assert all(op.operands[2].type.dtype == "i64" for op in ops if op.opname in ("s8.conv2d", "s8.dense"))
    got, want = _host_vs_simulator(tmp_path / "host", graph, clips)
    assert np.array_equal(got.quantized[0], want.quantized[0]), "host C != simulator"
    _assert_close_to_float(want, clips)


@needs_gcc
def test_asymmetric_int16_becomes_symmetric_and_keeps_its_clamps(tmp_path):
    """ORT's default int16 (asymmetric: ReLU outputs at zero point -32768) compiles with a note: each tensor
    gets the symmetric scale covering its range and the range's clamp (the folded ReLU) as the layer's
    bounds. C == simulator, top-1 == float on every clip, probabilities as close as the symmetric model's."""
    model = _quantize(tmp_path, False, False)
    m = onnx.load(model)
    zp_names = {n.input[2] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert -32768 in {int(onnx.numpy_helper.to_array(i)) for i in m.graph.initializer if i.name in zp_names}
    rc, err = run_qcc(tmp_path, [str(model), "-o", "c/net.c", "--target", "cortex-m4", "--emit-ir", "net.qir"])
    assert rc == 0, err
    assert "nonzero zero point" in err and "ActivationSymmetric" in err
    graph = parse_file(tmp_path / "net.qir")
    ops = [op for op in graph.ops if op.opname.startswith("s8.")]
    assert {op.result.type.dtype for op in ops} == {"i16"}
    assert all(op.result.type.quant.zero_point == 0 for op in ops)
    # the ReLUs the zero points held are clamps at 0 again
    assert sum(op.attrs["act_min"] == 0 for op in ops if op.opname == "s8.conv2d") >= 8
    clips = np.load(shared_model_path("kws_dscnn", "mfcc_real_float.npy")).astype(np.float32)
    got, want = _host_vs_simulator(tmp_path / "host", graph, clips)
    assert np.array_equal(got.quantized[0], want.quantized[0]), "host C != simulator"
    _assert_close_to_float(want, clips)


def test_16x8_refuses_table_activations_before_calibration(tmp_path):
    """--scheme int8 --bits 16 names the hard swish (TFLite Micro has no int16 HARD_SWISH) before calibrating:
    exit 2, no output."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w")
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         onnx.helper.make_node("HardSwish", ["h"], ["y"], name="hsw")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 14)]), tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", x=np.ones((2, 1, 8), np.float32))
    rc, err = run_qcc(tmp_path, ["m.onnx", "-o", "c/net.c", "--target", "cortex-m4", "--scheme", "int8", "--bits", "16",
                                 "--calib", "calib.npz"])
    assert rc == 2 and 'node "hsw" (HardSwish): no 16x8' in err and "--scheme int8 --bits 16" in err
    assert "HARD_SWISH" in err
    assert not (tmp_path / "c").exists()
