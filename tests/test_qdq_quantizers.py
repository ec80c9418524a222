"""QDQ models from other quantizers compile with ``qcc`` and no calibration data.

- onnxruntime's ``quantize_static`` (QDQ format) on a small float CNN built
  here (NHWC input through a Transpose, conv, depthwise, pointwise, residual
  add, max and average pooling, Reshape, MatMul + int8 bias Add): per tensor
  and per channel, int8 and uint8 activations, QInt8 weights; and on an MLP
  with asymmetric QUInt8 weights (the s8 dense kernel's weight zero point).
- the MLPerf Tiny float models (kws_dscnn, ic_resnet8) quantized the same way
  once per session (module fixture).
- hand-built NNCF-style graphs: uint8 activations with zero point 0, ReLU kept
  as its own node; one with a float island, which is refused naming the nodes.
- weight-only ("hybrid") models: dequantized at import, then quantized like a
  float model (``--calib`` required).

Each compiled model: host C (gcc, ASan/UBSan) == the integer simulator bit
for bit; top-1 agreement with the float model at least onnxruntime's own
agreement (running the same QDQ model, graph optimizations off) minus one
sample. The simulator's agreement with onnxruntime is measured, not assumed.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import shared_model_path
from qcc.backends.cmsis import generate, harness
from qcc.ir.parser import parse_file
from qcc.tools.compile import compile_model, main as qcc_main

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
QuantType, QuantFormat = quantization.QuantType, quantization.QuantFormat

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
needs_qemu = pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                                reason="arm-none-eabi-gcc, make or qemu-system-arm not installed")


# ---------------------------------------------------------------- models
def _model(nodes, inputs: Dict[str, list], output: str, out_shape, inits: Dict[str, np.ndarray],
           opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                             for n, s in inputs.items()],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def small_cnn(seed: int = 0) -> onnx.ModelProto:
    """NHWC float input -> Transpose -> conv, depthwise + batchnorm (onnxruntime leaves it unfolded, with
    quantized gamma and beta), pointwise, residual add, pools (a global one), dense (10 classes)."""
    r = np.random.default_rng(seed)
    W = lambda *s: (r.standard_normal(s) * 0.4).astype(np.float32)  # noqa: E731
    inits = dict(w1=W(8, 3, 3, 3), b1=W(8), wd=W(8, 1, 3, 3), bd=W(8), w2=W(8, 8, 1, 1), b2=W(8),
                 wf=W(8, 10), bf=W(10), shape=np.array([1, 8], np.int64),
                 gamma=(1 + W(8)), beta=W(8), mean=W(8), var=(1 + np.abs(W(8))))
    n = helper.make_node
    nodes = [n("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2], name="to_nchw"),
             n("Conv", ["xt", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "wd", "bd"], ["c2"], pads=[1, 1, 1, 1], group=8, name="depthwise"),
             n("BatchNormalization", ["c2", "gamma", "beta", "mean", "var"], ["n2"], name="batchnorm"),
             n("Relu", ["n2"], ["r2"], name="relu2"),
             n("Conv", ["r2", "w2", "b2"], ["c3"], name="pointwise"),
             n("Add", ["c3", "r1"], ["a"], name="residual"),
             n("Relu", ["a"], ["r3"], name="relu3"),
             n("MaxPool", ["r3"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="maxpool"),
             n("AveragePool", ["p1"], ["p2"], kernel_shape=[2, 2], strides=[2, 2], name="avgpool"),
             n("GlobalAveragePool", ["p2"], ["p3"], name="global_avgpool"),  # its own output scale in ORT
             n("Reshape", ["p3", "shape"], ["f"], name="flatten"),
             n("MatMul", ["f", "wf"], ["m"], name="fc"),
             n("Add", ["m", "bf"], ["y"], name="fc_bias")]
    return _model(nodes, {"x": [1, 8, 8, 3]}, "y", [1, 10], inits)


def small_mlp(seed: int = 1) -> onnx.ModelProto:
    """MatMul + Add, ReLU, Gemm (onnxruntime quantizes the Gemm bias to int32)."""
    r = np.random.default_rng(seed)
    inits = dict(w1=(r.standard_normal((48, 24)) * 0.3 + 0.1).astype(np.float32),
                 b1=r.standard_normal(24).astype(np.float32),
                 w2=(r.standard_normal((24, 10)) * 0.3).astype(np.float32), b2=r.standard_normal(10).astype(np.float32))
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["m1"], name="fc1"), n("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
             n("Relu", ["a1"], ["h"], name="relu"),
             n("Gemm", ["h", "w2", "b2"], ["y"], name="fc2")]
    return _model(nodes, {"x": [1, 48]}, "y", [1, 10], inits)


class _Reader(quantization.CalibrationDataReader):
    def __init__(self, name: str, data: np.ndarray):
        self.items = iter([{name: d[None]} for d in data])

    def get_next(self):
        return next(self.items, None)


def ort_quantize(float_path: Path, out: Path, data: np.ndarray, *, per_channel: bool, activations, weights,
                 input_name: str = "x") -> Path:
    quantization.quantize_static(str(float_path), str(out), _Reader(input_name, data), quant_format=QuantFormat.QDQ,
                                 per_channel=per_channel, activation_type=activations, weight_type=weights)
    return out


def ort_run(model, x: np.ndarray) -> np.ndarray:
    """onnxruntime on each sample, graph optimizations off (the QDQ model's own float arithmetic)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: xi[None]})[0][0] for xi in x])


# ---------------------------------------------------------------- compile and compare
class Compiled:
    """``qcc MODEL -o folder/net.c`` without --calib; host C and simulator records of ``x``."""

    def __init__(self, model: Path, folder: Path, x: np.ndarray, target: str = "cortex-m4"):
        compile_model(str(model), str(folder / "net.c"), target, emit_ir=str(folder / "net.qir"))
        self.graph, self.folder, self.x = parse_file(folder / "net.qir"), folder, x
        # The lowered graph read back generates the very files qcc wrote (the simulator runs this graph).
        self.gen = generate(self.graph, "net", target)
        for rel, data in self.gen.files.items():
            assert (folder / rel).read_bytes() == data, rel
        self.name = self.graph.inputs[0].name
        self.count = harness.write_samples(folder / "in.bin", self.graph, {self.name: x})
        self.sim = harness.simulate(self.graph, self.gen, {self.name: x[:, None]})

    def host(self) -> harness.Outputs:
        exe = harness.build_host(self.folder, self.gen.name)
        harness.run_host(exe, self.folder / "in.bin", self.folder / "host.bin")
        return harness.read_outputs(self.folder / "host.bin", self.gen, self.count)

    def simulated_floats(self) -> np.ndarray:
        return self.sim.floats[0].reshape(self.count, -1)


def assert_bit_exact(got: harness.Outputs, want: harness.Outputs, what: str):
    for g, w in zip(got.quantized, want.quantized):
        same = int((g.reshape(len(g), -1) == w.reshape(len(w), -1)).all(axis=1).sum())
        assert same == len(w), f"{what}: {same}/{len(w)} samples bit-exact"


def top1_agreement(a: np.ndarray, b: np.ndarray) -> int:
    return int((a.reshape(len(a), -1).argmax(1) == b.reshape(len(b), -1).argmax(1)).sum())


def check_accuracy(compiled: Compiled, qdq_path: Path, float_model, x: np.ndarray, record: dict):
    """qcc's top-1 agreement with the float model >= onnxruntime's (same QDQ model) - 1 sample."""
    reference = ort_run(float_model, x)
    by_ort = ort_run(qdq_path, x)
    ours = compiled.simulated_floats()
    q = compiled.gen.plan.outputs[0].value.type.quant
    record.update(samples=len(x), qcc_top1=top1_agreement(ours, reference), ort_top1=top1_agreement(by_ort, reference),
                  sim_equals_ort=int(np.all(np.abs(ours - by_ort.reshape(ours.shape)) < q.scale / 2, axis=1).sum()),
                  max_lsb=float(np.max(np.abs(ours - by_ort.reshape(ours.shape))) / q.scale))
    print(f"{qdq_path.parent.name}/{qdq_path.name}: {record}")
    assert record["qcc_top1"] >= record["ort_top1"] - 1, record


CNN_CASES = [(False, QuantType.QInt8), (True, QuantType.QInt8), (False, QuantType.QUInt8), (True, QuantType.QUInt8)]


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn")
    model = small_cnn()
    onnx.save(model, folder / "cnn.onnx")
    calib = np.random.default_rng(1).standard_normal((16, 8, 8, 3)).astype(np.float32)
    test = np.random.default_rng(2).standard_normal((40, 8, 8, 3)).astype(np.float32)
    return folder, model, calib, test


@needs_gcc
@pytest.mark.parametrize("per_channel,activations", CNN_CASES,
                         ids=[f"{'per_channel' if p else 'per_tensor'}-{a.name}" for p, a in CNN_CASES])
def test_onnxruntime_qdq_cnn_compiles_bit_exact(cnn, tmp_path, per_channel, activations):
    folder, model, calib, test = cnn
    qdq = ort_quantize(folder / "cnn.onnx", tmp_path / "cnn_qdq.onnx", calib, per_channel=per_channel,
                       activations=activations, weights=QuantType.QInt8)
    compiled = Compiled(qdq, tmp_path / "out", test)
    assert all(op.opname.startswith(("s8.", "q.", "qcc.", "nn.reshape", "nn.transpose")) for op in compiled.graph.ops)
    kinds = [op.opname for op in compiled.graph.ops]
    assert {"s8.conv2d", "s8.add", "s8.maxpool", "s8.avgpool", "s8.dense"} <= set(kinds)
    assert kinds.count("s8.conv2d") == 4  # conv1, depthwise, the batchnorm (depthwise 1x1), pointwise
    assert kinds.count("s8.avgpool") == 2 and "s8.requantize" in kinds  # global pool: then its own scale
    # the API stays float in, int8 out: uint8 activations were re-centred to int8 (zero point - 128)
    assert compiled.gen.plan.inputs[0].value.type.dtype == "i8"
    assert_bit_exact(compiled.host(), compiled.sim, "host C vs simulator")
    check_accuracy(compiled, qdq, model, test, {})


@needs_gcc
def test_uint8_weights_dense_uses_the_weight_zero_point(tmp_path):
    model = small_mlp()
    onnx.save(model, tmp_path / "mlp.onnx")
    calib = np.random.default_rng(3).standard_normal((16, 48)).astype(np.float32)
    test = np.random.default_rng(4).standard_normal((40, 48)).astype(np.float32)
    qdq = ort_quantize(tmp_path / "mlp.onnx", tmp_path / "mlp_qdq.onnx", calib, per_channel=False,
                       activations=QuantType.QUInt8, weights=QuantType.QUInt8)
    compiled = Compiled(qdq, tmp_path / "out", test)
    dense = [op for op in compiled.graph.ops if op.opname == "s8.dense"]
    assert len(dense) == 2 and all(op.attrs["weight_zp"] != 0 for op in dense), [op.attrs for op in dense]
    assert_bit_exact(compiled.host(), compiled.sim, "host C vs simulator")
    check_accuracy(compiled, qdq, model, test, {})


def test_uint8_conv_weights_are_refused_naming_the_nodes(cnn, tmp_path, capsys):
    folder, _, calib, _ = cnn
    qdq = ort_quantize(folder / "cnn.onnx", tmp_path / "q.onnx", calib, per_channel=False,
                       activations=QuantType.QUInt8, weights=QuantType.QUInt8)
    assert qcc_main([str(qdq), "-o", str(tmp_path / "out" / "net.c"), "--target", "cortex-m4"]) == 2
    err = capsys.readouterr().err
    for node in ("conv1", "depthwise", "pointwise"):
        assert f'node "{node}" (Conv): the weights are asymmetric' in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- MLPerf Tiny float models through onnxruntime
MLPERF_CASES = [("kws_dscnn", True, QuantType.QInt8), ("kws_dscnn", False, QuantType.QUInt8),
                ("ic_resnet8", True, QuantType.QInt8), ("ic_resnet8", False, QuantType.QUInt8)]


MLPERF_IDS = [f"{m}-{'pc' if p else 'pt'}-{a.name}" for m, p, a in MLPERF_CASES]


@pytest.fixture(scope="module", params=MLPERF_CASES, ids=MLPERF_IDS)
def mlperf(request, tmp_path_factory):
    name, per_channel, activations = request.param
    float_path = shared_model_path(name, f"{name}_float.onnx")
    if name == "kws_dscnn":
        calib = np.load(shared_model_path(name, "mfcc_real_float.npy")).astype(np.float32)
    else:
        calib = np.load(shared_model_path(name, "golden_float.npz"))["input"].astype(np.float32)
    test = np.load(shared_model_path(name, "golden_float.npz"))["input"].astype(np.float32)
    folder = tmp_path_factory.mktemp(name)
    qdq = ort_quantize(float_path, folder / "qdq.onnx", calib, per_channel=per_channel, activations=activations,
                       weights=QuantType.QInt8, input_name="input_1")
    return Compiled(qdq, folder / "out", test), qdq, onnx.load(str(float_path)), test


@needs_gcc
def test_onnxruntime_quantized_mlperf_model_host_c_equals_simulator(mlperf):
    compiled, qdq, float_model, test = mlperf
    assert_bit_exact(compiled.host(), compiled.sim, "host C vs simulator")
    check_accuracy(compiled, qdq, float_model, test, {})


@needs_qemu
@pytest.mark.parametrize("mlperf", MLPERF_CASES[:1], indirect=True, ids=MLPERF_IDS[:1])
def test_onnxruntime_quantized_kws_on_qemu_m4(mlperf):
    compiled = mlperf[0]
    harness.run_qemu(compiled.folder, compiled.folder / "in.bin", compiled.folder / "qemu.bin")
    got = harness.read_outputs(compiled.folder / "qemu.bin", compiled.gen, compiled.count)
    assert_bit_exact(got, compiled.sim, "QEMU Cortex-M4 vs simulator")


# ---------------------------------------------------------------- hand-built NNCF-style graphs
class QDQBuilder:
    """Writes QDQ ONNX the way NNCF does: int8 input, uint8 (zero point 0) after a kept ReLU,
    int8 per-channel symmetric weights, float biases."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], {}, 0

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def qdq(self, x: str, scale: float, zp: int, dtype=np.uint8) -> str:
        s, z = self._name("scale"), self._name("zp")
        self.inits[s], self.inits[z] = np.array(scale, np.float32), np.array(zp, dtype)
        q, dq = self._name("q"), self._name("dq")
        self.nodes += [helper.make_node("QuantizeLinear", [x, s, z], [q], name=f"{x}_Q"),
                       helper.make_node("DequantizeLinear", [q, s, z], [dq], name=f"{x}_DQ")]
        return dq

    def weights(self, shape, axis: int = 0) -> str:
        w = (self.rng.standard_normal(shape) * 0.3).astype(np.float32)
        other = tuple(i for i in range(w.ndim) if i != axis)
        scale = (np.abs(w).max(axis=other) / 127).astype(np.float32)
        q = np.clip(np.round(w / np.expand_dims(scale, other)), -127, 127).astype(np.int8)
        name = self._name("w")
        self.inits[name + "_q"], self.inits[name + "_s"] = q, scale
        self.inits[name + "_z"] = np.zeros(scale.shape, np.int8)
        self.nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"], [name],
                                           axis=axis, name=f"{name}_DQ"))
        return name

    def bias(self, n: int) -> str:
        name = self._name("b")
        self.inits[name] = (self.rng.standard_normal(n) * 0.1).astype(np.float32)
        return name

    def node(self, op: str, inputs, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, list(inputs), [name], name=name, **attrs))
        return name

    def model(self, output: str, out_shape) -> onnx.ModelProto:
        return _model(self.nodes, {"x": [1, 4, 6, 6]}, output, out_shape, self.inits, opset=14)  # HardSwish


def nncf_style(island: bool = False, tail: bool = False) -> onnx.ModelProto:
    b = QDQBuilder()
    x = b.qdq("x", 0.03, 0, np.int8)
    h = b.node("Conv", [x, b.weights((8, 4, 3, 3)), b.bias(8)], "conv1", pads=[1, 1, 1, 1])
    h = b.qdq(b.node("Relu", [h], "relu1"), 0.02, 0)
    if island:  # NNCF leaves HardSwish and a squeeze-excite-like conv in float between DQ and Q
        h = b.node("HardSwish", [h], "hardswish")
        h = b.node("Conv", [h, b.weights((8, 8, 1, 1)), b.bias(8)], "float_conv")
    h = b.node("Conv", [h, b.weights((8, 1, 3, 3)), b.bias(8)], "depthwise", pads=[1, 1, 1, 1], group=8)
    h = b.qdq(b.node("Relu", [h], "relu2"), 0.02, 0)
    h = b.qdq(b.node("GlobalAveragePool", [h], "gap"), 0.02, 0)
    h = b.node("Flatten", [h], "flatten")
    y = b.node("Gemm", [h, b.weights((5, 8)), b.bias(5)], "fc", transB=1)
    if not tail:
        y = b.qdq(y, 0.05, 0, np.int8)
    return b.model(y, [1, 5])


@needs_gcc
def test_nncf_style_qdq_graph_compiles_bit_exact(tmp_path):
    model = nncf_style()
    onnx.save(model, tmp_path / "nncf.onnx")
    x = np.random.default_rng(7).standard_normal((30, 1, 4, 6, 6)).astype(np.float32)[:, 0]
    compiled = Compiled(tmp_path / "nncf.onnx", tmp_path / "out", x)
    kinds = [op.opname for op in compiled.graph.ops]
    assert kinds.count("s8.conv2d") == 2 and kinds.count("s8.dense") == 1 and "s8.avgpool" in kinds, kinds
    assert_bit_exact(compiled.host(), compiled.sim, "host C vs simulator")
    by_ort = ort_run(model, x).reshape(len(x), -1)
    ours = compiled.simulated_floats()
    q = compiled.gen.plan.outputs[0].value.type.quant
    # float biases become int32 at s_in * s_w: the integer run stays within 2 output steps of onnxruntime's
    assert np.max(np.abs(ours - by_ort)) <= 2 * q.scale + 1e-6, np.max(np.abs(ours - by_ort)) / q.scale


@pytest.mark.parametrize("kind", ["island", "tail"])
def test_float_island_or_tail_is_refused_naming_the_nodes(tmp_path, capsys, kind):
    onnx.save(nncf_style(island=kind == "island", tail=kind == "tail"), tmp_path / "m.onnx")
    assert qcc_main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out" / "net.c"), "--target", "cortex-m4"]) == 2
    err = capsys.readouterr().err
    if kind == "island":
        assert 'node "hardswish" (HardSwish): a float island' in err
        assert 'node "float_conv" (Conv)' in err
    else:
        assert 'node "fc" (Gemm): a float op after the last DequantizeLinear' in err
    assert "nothing was written" in err and "Traceback" not in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- weight-only ("hybrid") models
def weight_only() -> onnx.ModelProto:
    b = QDQBuilder(3)
    h = b.node("Conv", ["x", b.weights((8, 4, 3, 3)), b.bias(8)], "conv1", pads=[1, 1, 1, 1])
    h = b.node("Relu", [h], "relu1")
    h = b.node("GlobalAveragePool", [h], "gap")
    h = b.node("Flatten", [h], "flatten")
    return b.model(b.node("Gemm", [h, b.weights((5, 8)), b.bias(5)], "fc", transB=1), [1, 5])


@pytest.mark.parametrize("scheme", ["qmn", "int8"])
def test_weight_only_model_needs_calibration_then_compiles(tmp_path, capsys, scheme):
    model = weight_only()
    onnx.save(model, tmp_path / "hybrid.onnx")
    args = [str(tmp_path / "hybrid.onnx"), "-o", str(tmp_path / "out" / "net.c"), "--target", "cortex-m4",
            "--scheme", scheme]
    assert qcc_main(args) == 1
    err = capsys.readouterr().err
    assert "weight-only quantized" in err and "pass --calib" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    calib = np.random.default_rng(8).standard_normal((16, 1, 4, 6, 6)).astype(np.float32)
    np.save(tmp_path / "calib.npy", calib)
    emit = ["--emit-ir", str(tmp_path / "out" / "net.qir")]
    assert qcc_main(args + ["--calib", str(tmp_path / "calib.npy")] + emit) == 0
    graph = parse_file(tmp_path / "out" / "net.qir")
    prefix = "s8." if scheme == "int8" else "qnn."
    assert any(op.opname.startswith(prefix + "conv2d") for op in graph.ops)
    # the weights the float model ran with are the dequantized int8 ones: the integer model tracks them
    from qcc.sim.interpreter import run_graph
    x = calib[:8, 0]
    got = np.stack([run_graph(graph, {"x": xi[None]})[graph.output_names[0]][0] for xi in x])
    want = ort_run(model, x)
    assert top1_agreement(got, want) >= 7


# ---------------------------------------------------------------- s8.dense with a weight zero point
def dense_weight_zp_graph(seed: int, weight_zp: int = 15):
    """x -> s8.dense (weight_zp, 7 outputs: the paired and the odd-channel path) -> s8.dense (8 outputs)."""
    from qcc.ir.graph import Graph
    from qcc.ir.types import TensorType, UniformQuant
    from qcc.sim.s8 import quantize_multiplier
    rng = np.random.default_rng(seed)
    g = Graph(f"dense_wzp{seed}")
    xf = g.add_input("x", TensorType((2, 37)))
    x = g.add_op("q.quantize", [xf], result_types=[TensorType((2, 37), "i8", UniformQuant(0.0625, 9))]).result
    reals = {}

    def dense(v, n, name, zp_out):
        k = v.shape[1]
        w = rng.integers(-128, 128, (n, k)).astype(np.int8)
        b = rng.integers(-4000, 4000, n).astype(np.int32)
        real = 1.0 / (np.sqrt(k) * 120.0)
        pairs = [quantize_multiplier(real * f) for f in rng.uniform(0.7, 1.4, n)]
        attrs = dict(input_zp=v.type.quant.zero_point, output_zp=zp_out, weight_zp=weight_zp,
                     multiplier=[p[0] for p in pairs], shift=[p[1] for p in pairs])
        op = g.add_op("s8.dense", [v, g.add_const(w), g.add_const(b)], attrs, name=name)
        op.result.type = op.result.type.with_quant("i8", UniformQuant(0.0625, zp_out))
        reals[name] = (w, b, [m * 2.0 ** (s - 31) for m, s in pairs])
        return op.result

    h = dense(x, 7, "fc1", -5)
    y = dense(h, 8, "fc2", 3)
    g.set_outputs([g.add_op("q.dequantize", [y], result_types=[TensorType(y.shape)]).result], ["y"])
    g.verify()
    return g, reals


def test_dense_weight_zero_point_simulator_matches_the_formula():
    import qcc.sim.s8  # noqa: F401  (registers the s8 kernels)
    from qcc.sim.interpreter import run_graph
    g, reals = dense_weight_zp_graph(0)
    xq = np.random.default_rng(1).integers(-128, 128, (2, 37))
    env = run_graph(g, {"x": ((xq - 9) * 0.0625).astype(np.float32)}, keep=True)
    fc1 = next(op for op in g.ops if op.name == "fc1")
    w, b, m = reals["fc1"]
    acc = b + (xq - 9) @ (w.astype(np.int64) - 15).T   # acc = bias + sum((x - zp_in) * (w - zp_w))
    want = np.clip(np.floor(acc * np.asarray(m) + 0.5) - 5, -128, 127)
    got = env[fc1.result]
    assert np.max(np.abs(got - want)) <= 1 and np.mean(got == want) > 0.8, (got, want)
    assert len(np.unique(got)) > 4  # real arithmetic, not saturation


@needs_gcc
@pytest.mark.parametrize("seed", [0, 1])
def test_dense_weight_zero_point_host_c_equals_simulator(tmp_path, seed):
    from test_backend_s8 import _run_and_compare, random_inputs
    g, _ = dense_weight_zp_graph(seed)
    got = _run_and_compare(tmp_path, g, random_inputs(g, 8, seed), "cortex-m4", "host")
    assert len(np.unique(got.quantized[0])) > 4


@needs_qemu
def test_dense_weight_zero_point_on_qemu_m4(tmp_path):
    from test_backend_s8 import _run_and_compare, random_inputs
    g, _ = dense_weight_zp_graph(2)
    _run_and_compare(tmp_path, g, random_inputs(g, 6, 2), "cortex-m4", "qemu")


def test_cmsis_nn_kernels_leave_a_weight_zero_point_to_qcc():
    from qcc.backends.cmsis.cmsis_nn import fallback_reason
    g, _ = dense_weight_zp_graph(0)
    dense = [op for op in g.ops if op.opname == "s8.dense"]
    assert all("weight zero point" in fallback_reason(op) for op in dense)
    dense[0].attrs["weight_zp"] = 0
    assert fallback_reason(dense[0]) is None
