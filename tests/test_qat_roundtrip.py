"""Quantization-aware training round trip (issue 18): export fake-quant QDQ, compile it again.

A float model compiled with ``--scheme qmn`` (or ``int8``) and exported with
``--emit-onnx-qdq`` compiles again with the same scheme and no calibration to
byte-identical C; the export runs in onnxruntime as is, and its JSON states
the formats qcc chose. Power-of-two QDQ models that qcc did not write
(PyTorch's fake-quant export: Q on float weights, float biases) compile with
``--scheme qmn`` bit-exact on the host; other scales are refused, or rounded
with ``--round-scales``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import REPO_ROOT, shared_model_path
from onnx_builders import build
from qcc.backends.cmsis import harness
from qcc.frontend import load_onnx
from qcc.tools.compile import compile_model, main as qcc_main
from qcc.transforms.passmanager import PassManager

DIGITS = REPO_ROOT / "examples" / "digits"
C_FILES = ("net.c", "net.h", "net_weights.c", "Makefile")
needs_gcc = pytest.mark.skipif(harness.tools_missing("gcc") is not None, reason="host gcc is not installed")


def _c_files(folder: Path) -> dict:
    return {f: (folder / f).read_bytes() for f in C_FILES}


def _round_trip(tmp_path: Path, model: Path, calib: Path, scheme: str, **kw):
    """Compile the float model, export its QDQ form, compile that with no calibration; both C outputs."""
    first, second = tmp_path / "first", tmp_path / "second"
    qdq = tmp_path / "exported.onnx"
    compile_model(str(model), str(first / "net.c"), "cortex-m4", calib=str(calib), scheme=scheme,
                  emit_onnx=str(qdq), **kw)
    compile_model(str(qdq), str(second / "net.c"), "cortex-m4", scheme=scheme)  # the formats come with it
    return _c_files(first), _c_files(second), qdq


@pytest.mark.parametrize("scheme", ["qmn", "int8"])
def test_digits_round_trip_is_byte_identical(tmp_path, scheme):
    first, second, qdq = _round_trip(tmp_path, DIGITS / "digits.onnx", DIGITS / "calib.npz", scheme)
    assert first == second
    ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= ops


def test_digits_q15_round_trip_is_byte_identical(tmp_path):
    first, second, _ = _round_trip(tmp_path, DIGITS / "digits.onnx", DIGITS / "calib.npz", "qmn", bits=16)
    assert first == second
    assert b"int16_t" in first["net.c"]


@pytest.mark.parametrize("scheme", ["qmn", "int8"])
def test_kws_dscnn_round_trip_is_byte_identical(tmp_path, scheme):
    model = shared_model_path("kws_dscnn", "kws_dscnn_float.onnx")
    calib = shared_model_path("kws_dscnn", "mfcc_real_float.npy")
    first, second, _ = _round_trip(tmp_path, model, calib, scheme)
    assert first == second


def _qmn_export(tmp_path: Path) -> Path:
    qdq = tmp_path / "digits_qmn.onnx"
    compile_model(str(DIGITS / "digits.onnx"), str(tmp_path / "c" / "net.c"), "cortex-m4",
                  calib=str(DIGITS / "calib.npz"), emit_onnx=str(qdq), emit_ir=str(tmp_path / "net.qir"),
                  format_search="tensor")  # formats on which onnxruntime's half-even rounding stays one step off
    return qdq


def test_export_runs_in_onnxruntime_within_one_step(tmp_path):
    import onnxruntime as ort
    from qcc.sim.interpreter import run_graph
    import qcc.sim.qmn  # noqa: F401  (integer kernels)
    qdq = _qmn_export(tmp_path)
    data = np.load(DIGITS / "test.npz")
    xs, labels = data["input"].reshape(-1, 1, 8, 8, 1)[:120], data["labels"][:120]
    sess = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {"input": x})[0] for x in xs])
    graph = load_onnx(str(qdq))
    PassManager.parse("qmn-qdq").run(graph)
    sim = np.concatenate([run_graph(graph, {"input": x})["logits"] for x in xs])
    step = graph.outputs[0].producer.operands[0].type.quant.scale
    # onnxruntime rounds half to even in float; qcc shifts and rounds half away: at most one step apart
    assert np.abs(got - sim).max() <= step
    assert abs((got.argmax(1) == labels).mean() - (sim.argmax(1) == labels).mean()) <= 0.02


def test_json_states_every_layer_format(tmp_path):
    from qcc.ir.parser import parse_file
    qdq = _qmn_export(tmp_path)
    again = _qmn_export(tmp_path / "again")  # same inputs, same bytes
    assert again.read_bytes() == qdq.read_bytes()
    assert Path(str(again) + ".json").read_bytes() == Path(str(qdq) + ".json").read_bytes()
    formats = json.loads(Path(str(qdq) + ".json").read_text())
    assert formats["format"] == "qcc-qdq-formats/1"
    lowered = {op.name: op for op in parse_file(str(tmp_path / "net.qir")).ops
               if op.opname in ("qnn.conv2d", "qnn.dense")}
    layers = {layer["name"]: layer for layer in formats["layers"]}
    assert set(layers) == set(lowered)
    for name, op in lowered.items():
        layer, tensors = layers[name], formats["tensors"]
        assert tensors[layer["output"]]["frac_bits"] == op.result.type.quant.frac_bits
        assert tensors[layer["input"]]["frac_bits"] == op.operands[0].type.quant.frac_bits
        w_scales = op.operands[1].type.quant.scales
        assert tensors[layer["weight"]]["frac_bits"] == [int(-np.log2(s)) for s in w_scales]
        assert tensors[layer["weight"]]["scale"] == list(w_scales)
        out = tensors[layer["output"]]
        assert out["min"] == -128 * out["scale"] and out["max"] == 127 * out["scale"]


def test_json_of_int8_export_has_zero_points_and_no_frac_bits(tmp_path):
    qdq = tmp_path / "d8.onnx"
    compile_model(str(DIGITS / "digits.onnx"), str(tmp_path / "c" / "net.c"), "cortex-m4",
                  calib=str(DIGITS / "calib.npz"), scheme="int8", emit_onnx=str(qdq))
    tensors = json.loads(Path(str(qdq) + ".json").read_text())["tensors"]
    assert tensors["input/quantized"]["zero_point"] == -128
    assert "frac_bits" not in tensors["input/quantized"]


def test_non_power_of_two_scales_are_refused_or_rounded(tmp_path, capsys):
    qdq = tmp_path / "d8.onnx"
    compile_model(str(DIGITS / "digits.onnx"), str(tmp_path / "c" / "net.c"), "cortex-m4",
                  calib=str(DIGITS / "calib.npz"), scheme="int8", emit_onnx=str(qdq))
    out = tmp_path / "out"
    assert qcc_main([str(qdq), "-o", str(out / "net.c"), "--target", "cortex-m4", "--scheme", "qmn"]) == 2
    err = capsys.readouterr().err
    assert "'input/quantized' has zero point -128" in err and "--scheme int8" in err
    assert "Traceback" not in err and not out.exists()
    # the float model's own int8 scales have zero points: rounding cannot fix those, so use a zp-0 model
    sym = _symmetric_qdq(scale=0.3)
    path = tmp_path / "sym.onnx"
    onnx.save(sym, str(path))
    assert qcc_main([str(path), "-o", str(out / "net.c"), "--target", "cortex-m4", "--scheme", "qmn"]) == 2
    assert "has scale 0.3, not a power of two" in capsys.readouterr().err
    assert qcc_main([str(path), "-o", str(out / "net.c"), "--target", "cortex-m4", "--scheme", "qmn",
                     "--round-scales", "--emit-ir", str(tmp_path / "r.qir")]) == 0
    err = capsys.readouterr().err
    assert "warning: --round-scales:" in err and "xq: scale 0.3 -> 2^-2" in err
    assert "!q.fixed<i8, 2>" in (tmp_path / "r.qir").read_text()


def _symmetric_qdq(scale: float, w_scales=(2.0 ** -6, 2.0 ** -7)) -> onnx.ModelProto:
    """x -> Q/DQ(scale) -> Gemm(DQ(Q(W)) per channel, float bias) -> Relu -> Q/DQ(2^-4): PyTorch's export form."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((2, 6)) * 0.4).astype(np.float32)
    inits = {"w": w, "b": np.array([0.3, -0.7], np.float32),
             "w_s": np.array(w_scales, np.float32), "w_z": np.zeros(2, np.int8),
             "x_s": np.array(scale, np.float32), "x_z": np.array(0, np.int8),
             "y_s": np.array(2.0 ** -4, np.float32), "y_z": np.array(0, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="x_q"),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="x_dq"),
             helper.make_node("QuantizeLinear", ["w", "w_s", "w_z"], ["wq"], name="w_q", axis=0),
             helper.make_node("DequantizeLinear", ["wq", "w_s", "w_z"], ["wd"], name="w_dq", axis=0),
             helper.make_node("Gemm", ["xd", "wd", "b"], ["g"], name="fc", transB=1),
             helper.make_node("Relu", ["g"], ["r"], name="relu"),
             helper.make_node("QuantizeLinear", ["r", "y_s", "y_z"], ["yq"], name="y_q"),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"], name="y_dq")]
    return build(nodes, {"x": [1, 6]}, ["y"], inits)


@needs_gcc
def test_pytorch_style_qdq_compiles_bit_exact_on_host(tmp_path):
    """Q on float weights, a float bias (quantized at n_x + n_w), Gemm, Relu: host C == simulator."""
    from test_backend_cmsis import compile_and_compare
    graph = load_onnx(_symmetric_qdq(scale=2.0 ** -5))
    PassManager.parse("qmn-qdq").run(graph)
    dense = graph.find("qnn.dense")
    assert len(dense) == 1 and dense[0].attrs["act_min"] == 0
    assert dense[0].operands[2].type.quant.scales == (2.0 ** -11, 2.0 ** -12)  # n_x + n_w = 5 + 6, 5 + 7
    rng = np.random.default_rng(1)
    samples = {"x": rng.normal(0, 1.5, (16, 1, 6)).astype(np.float32)}
    compile_and_compare(graph, tmp_path, samples)


def test_round_scales_requantizes_constants():
    """A weight at scale 0.01 becomes 2^-7 (nearest in log2), its integers re-expressed: q' = round(q * 0.01 * 2^7)."""
    from qcc.ir.parser import parse
    graph = parse("""
qcc.graph @w(%x: tensor<1x2xf32>) -> (tensor<1x2xf32> {name = "y"}) {
  %0 = q.quantize %x : tensor<1x2x!q.uniform<i8:f32, 0.125:0>>
  %1 = q.dequantize %0 : tensor<1x2xf32>
  %2 = qcc.const dense<[100, -50, 3, 127]> : tensor<2x2x!q.uniform<i8:f32:0, {0.01:0, 0.25:0}>> loc("w")
  %3 = q.dequantize %2 : tensor<2x2xf32>
  %4 = nn.dense %1, %3 : tensor<1x2xf32>
  qcc.return %4 : tensor<1x2xf32>
}
""")
    pm = PassManager.parse("qdq-to-qmn{round_scales=true}")
    pm.run(graph)
    w = graph.find("qcc.const")[0].result
    assert w.type.quant.scales == (2.0 ** -7, 0.25)
    np.testing.assert_array_equal(w.constant(), [[127, -64], [3, 127]])  # 128 saturates; -64 = round(-64.0)
    assert pm.passes[0].rounded == ["w: scale 0.01 -> 2^-7"]  # only the per-axis weight needed rounding


def test_fold_transpose_dense_is_bit_exact():
    """flatten(transpose(x)) -> qnn.dense equals reshape(x) -> qnn.dense with permuted weight columns."""
    from qcc.ir.graph import Graph
    from qcc.ir.types import FixedPoint, TensorType
    from qcc.sim.interpreter import run_graph
    import qcc.sim.qmn  # noqa: F401  (integer kernels)
    rng = np.random.default_rng(3)
    g = Graph("t")
    x = g.add_input("x", TensorType((1, 3, 2, 5)))
    q = g.add_op("q.quantize", [x], {}, [TensorType((1, 3, 2, 5), "i8", FixedPoint(4))]).result
    t = g.add_op("nn.transpose", [q], {"perm": [0, 3, 1, 2]}, [TensorType((1, 5, 3, 2), "i8", FixedPoint(4))]).result
    f = g.add_op("nn.flatten", [t], {"axis": 1}, [TensorType((1, 30), "i8", FixedPoint(4))]).result
    w = g.add_const(rng.integers(-128, 128, (7, 30)).astype(np.int8))
    d = g.add_op("qnn.dense", [f, w], {"out_shift": [5], "act_min": -128, "act_max": 127},
                 [TensorType((1, 7), "i8", FixedPoint(3))]).result
    g.set_outputs([g.add_op("q.dequantize", [d], {}, [TensorType((1, 7))]).result], ["y"])
    xs = rng.normal(0, 3, (20, 1, 3, 2, 5)).astype(np.float32)
    before = [run_graph(g, {"x": s})["y"] for s in xs]
    PassManager.parse("fold-transpose-dense").run(g)
    assert not g.find("nn.transpose")
    after = [run_graph(g, {"x": s})["y"] for s in xs]
    np.testing.assert_array_equal(np.stack(before), np.stack(after))


def test_qcc_opt_emit_onnx_writes_the_formats_too(tmp_path, capsys):
    from qcc.tools.cli import opt_main
    out = tmp_path / "m.onnx"
    assert opt_main([str(DIGITS / "digits.onnx"), "-p", "qmn", "--calib", str(DIGITS / "calib.npz"),
                     "--emit-onnx", str(out), "-o", str(tmp_path / "m.qir")]) == 0
    formats = json.loads((tmp_path / "m.onnx.json").read_text())
    assert [layer["name"] for layer in formats["layers"]] == ["conv1", "conv2", "dense"]
    assert all("frac_bits" in t for t in formats["tensors"].values())  # every scale 2^-n, zero point 0
    # --round-scales only concerns QDQ models under --scheme qmn: a float model says it was ignored
    assert qcc_main([str(DIGITS / "digits.onnx"), "-o", str(tmp_path / "c" / "net.c"), "--target", "cortex-m4",
                     "--calib", str(DIGITS / "calib.npz"), "--round-scales"]) == 0
    assert "ignoring --round-scales" in capsys.readouterr().err


@needs_gcc
@pytest.mark.parametrize("float_bias", [False, True])
def test_qdq_matmul_add_compiles_to_qmn_dense(tmp_path, float_bias):
    """MatMul(x, DQ(Wq [K, N], axis 1)) + bias (DQ'd int32, or float as torch.export writes it) -> qnn.dense."""
    from test_backend_cmsis import compile_and_compare
    rng = np.random.default_rng(2)
    w_scales = np.array([2.0 ** -6, 2.0 ** -7, 2.0 ** -6], np.float32)
    inits = {"wq": rng.integers(-127, 128, (5, 3)).astype(np.int8), "w_s": w_scales, "w_z": np.zeros(3, np.int8),
             "x_s": np.array(2.0 ** -5, np.float32), "x_z": np.array(0, np.int8),
             "y_s": np.array(2.0 ** -4, np.float32), "y_z": np.array(0, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="x_q"),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="x_dq"),
             helper.make_node("DequantizeLinear", ["wq", "w_s", "w_z"], ["wd"], name="w_dq", axis=1),
             helper.make_node("MatMul", ["xd", "wd"], ["mm"], name="fc/MatMul"),
             helper.make_node("Add", ["mm", "bd"], ["a"], name="fc/Add"),
             helper.make_node("QuantizeLinear", ["a", "y_s", "y_z"], ["yq"], name="y_q"),
             helper.make_node("DequantizeLinear", ["yq", "y_s", "y_z"], ["y"], name="y_dq")]
    if float_bias:
        inits["bd"] = np.array([0.5, -0.25, 0.125], np.float32)
    else:
        inits.update({"bq": np.array([300, -200, 50], np.int32), "b_s": w_scales * 2.0 ** -5,
                      "b_z": np.zeros(3, np.int32)})
        nodes.insert(3, helper.make_node("DequantizeLinear", ["bq", "b_s", "b_z"], ["bd"], name="b_dq", axis=0))
    graph = load_onnx(build(nodes, {"x": [1, 5]}, ["y"], inits))
    PassManager.parse("qmn-qdq").run(graph)
    (dense,) = graph.find("qnn.dense")
    assert [op.opname for op in graph.ops if op.opname.startswith("qnn.")] == ["qnn.dense"]
    assert dense.operands[1].shape == (3, 5) and dense.attrs["out_shift"] == [7, 8, 7]  # n_x + n_w - n_y
    np.testing.assert_array_equal(dense.operands[1].constant(), inits["wq"].T)
    samples = {"x": rng.normal(0, 1.5, (16, 1, 5)).astype(np.float32)}
    compile_and_compare(graph, tmp_path, samples)
