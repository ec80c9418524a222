"""ONNX / QDQ export (qcc.export.onnx_export): the exported models run in onnxruntime and agree with qcc.

Float graphs must match the original model tightly. Lowered integer graphs
are exported in QDQ form, an approximation (float math, round half to even),
so they are held to the simulator within about one step of the output format.
"""
import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qcc
import qcc.sim.qmn  # noqa: F401  (integer kernels)
import qcc.sim.s8  # noqa: F401
from qcc.errors import UnsupportedModelError
from qcc.ir.graph import Graph
from qcc.sim.interpreter import run_graph
from qcc.export.onnx_export import export_qdq_onnx, write_onnx
from qcc.ir.registry import OpDef, is_registered, register_op, same_as_operand
from qcc.ir.ops.qnn_softmax import lut_table
from qcc.transforms.passmanager import PassManager, parse_pipeline
from qcc.ir.types import FixedPoint, TensorType

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
MODELS = Path("/work/shared/models")
if not MODELS.is_dir():
    MODELS = ROOT.parent / "shared" / "models"
KWS = MODELS / "kws_dscnn"
needs_kws = pytest.mark.skipif(not (KWS / "kws_dscnn_int8_qdq.onnx").is_file(),
                               reason=f"{KWS} (MLPerf Tiny KWS model) is absent")
FLOAT_PASSES = "fold-batchnorm,canonicalize,fuse-activation,to-nhwc,const-fold,dce"


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_ort(sess, xs):
    name = sess.get_inputs()[0].name
    shape = sess.get_inputs()[0].shape
    return np.stack([sess.run(None, {name: x.reshape(shape)})[0] for x in xs])


def run_qcc(g, xs):
    return np.stack([run_graph(g, {g.inputs[0].name: x.reshape(g.inputs[0].shape)})[g.output_names[0]]
                     for x in xs])


def digits_test():
    data = np.load(DIGITS / "test.npz")
    return data["input"], data["labels"]


# The exporter's tests pin the local format search (objective=tensor; the q15 case also its former
# 16 search samples): onnxruntime rounds half to
# even where qcc rounds half away, and whether those one-step differences compound across layers
# into more than one output step depends on the formats chosen, not on the export.
def qmn_digits(pipeline="qmn{objective=tensor}", stop_before=None):
    g = qcc.load_onnx(str(DIGITS / "digits.onnx"))
    passes = parse_pipeline(pipeline)
    for p in passes:
        p.context = {"calib": str(DIGITS / "calib.npz")}
    if stop_before:
        passes = passes[:[p.name for p in passes].index(stop_before)]
    PassManager(passes).run(g)
    return g


def output_lsb(g):
    deq = g.outputs[0].producer
    assert deq.opname == "q.dequantize"
    return deq.operands[0].type.quant.scale


def op_types(model):
    return {n.op_type for n in model.graph.node}


# ---------------------------------------------------------------- float graphs
def test_float_digits_matches_the_original_model():
    xs, _ = digits_test()
    g = qcc.load_onnx(str(DIGITS / "digits.onnx"))
    PassManager.parse(FLOAT_PASSES).run(g)
    assert any(op.attrs.get("layout") == "NHWC" for op in g.ops), "to-nhwc should leave NHWC convs to export"
    model = export_qdq_onnx(g)
    assert model.opset_import[0].version == 13
    assert {"QuantizeLinear", "DequantizeLinear"}.isdisjoint(op_types(model))
    ref = ort.InferenceSession(str(DIGITS / "digits.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run_ort(session(model), xs), run_ort(ref, xs), rtol=1e-5, atol=1e-5)
    names = {n.name for n in model.graph.node}
    assert {"conv1", "conv2", "dense"} <= names  # node names come from the op names


def test_export_is_deterministic():
    g = qmn_digits()
    a = export_qdq_onnx(g).SerializeToString(deterministic=True)
    b = export_qdq_onnx(copy.deepcopy(g)).SerializeToString(deterministic=True)
    assert a == b


# ---------------------------------------------------------------- fake-quant graphs
def test_fake_quant_digits_matches_the_interpreter():
    xs, _ = digits_test()
    g = qmn_digits(stop_before="lower-quantized")
    model = export_qdq_onnx(g)
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(model)
    onnx.checker.check_model(model, full_check=True)
    # Known limit: onnxruntime's extended optimizations fail on Transpose -> AveragePool ->
    # Transpose -> QuantizeLinear (its QLinearAveragePool fusion rejects the scale), the shape
    # to-nhwc leaves in a fake-quant graph; basic optimizations run the same math.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got, want = run_ort(sess, xs), run_qcc(g, xs)
    lsb = output_lsb(g)
    diff = np.abs(got - want) / lsb
    assert diff.max() <= 1 + 1e-6  # one step where round-half-even and half-away-from-zero differ


@needs_kws
def test_imported_qdq_model_round_trips_exactly():
    """A QDQ model imported without passes exports to the same computation."""
    path = KWS / "kws_dscnn_int8_qdq.onnx"
    xs = np.load(KWS / "golden_int8.npz")["input"][:10]
    model = export_qdq_onnx(qcc.load_onnx(str(path)))
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(run_ort(session(model), xs), run_ort(ref, xs))


# ---------------------------------------------------------------- lowered integer graphs
@pytest.mark.parametrize("pipeline, opset", [("qmn{objective=tensor}", 13), ("qmn{bits=16,objective=tensor,samples=16}", 21)])
def test_lowered_qmn_digits_agrees_with_the_simulator(pipeline, opset):
    xs, labels = digits_test()
    g = qmn_digits(pipeline)
    assert any(op.opname.startswith("qnn.") for op in g.ops)
    model = export_qdq_onnx(g)
    assert model.opset_import[0].version == opset  # int16 QuantizeLinear needs opset 21
    got, sim = run_ort(session(model), xs), run_qcc(g, xs)
    lsb = np.abs(got - sim).reshape(len(xs), -1) / output_lsb(g)
    assert np.mean(lsb <= 1 + 1e-6) >= 0.99 and lsb.max() <= 2 + 1e-6
    got_top1, sim_top1 = got.reshape(len(xs), -1).argmax(1), sim.reshape(len(xs), -1).argmax(1)
    assert np.mean(got_top1 == sim_top1) >= 0.99
    assert abs(int(np.sum(got_top1 == labels)) - int(np.sum(sim_top1 == labels))) <= 2


@needs_kws
def test_lowered_int8_kws_agrees_with_the_simulator():
    g = qcc.load_onnx(str(KWS / "kws_dscnn_int8_qdq.onnx"))
    PassManager.parse("int8").run(g)
    assert any(op.opname == "s8.conv2d" for op in g.ops)
    xs = np.load(KWS / "golden_int8.npz")["input"]
    model = export_qdq_onnx(g)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT8
    got = run_ort(session(model), xs).astype(np.int64).reshape(len(xs), -1)
    sim = run_qcc(g, xs).astype(np.int64).reshape(len(xs), -1)
    diff = np.abs(got - sim)
    # The softmax output (scale 1/256) amplifies a one-step logit difference on a few elements.
    assert np.mean(diff <= 1) >= 0.95
    assert np.sum(got.argmax(1) == sim.argmax(1)) >= 19


# ---------------------------------------------------------------- small graphs
def _lut_graph(table):
    g = Graph("lut")
    x = g.add_input("x", TensorType((1, 16), "f32"))
    q = g.add_op("q.quantize", [x], result_types=[TensorType((1, 16), "i8", FixedPoint(4))], name="quant").result
    r = g.add_op("q.range", [x], {"min": -8.0, "max": 8.0}, name="range").result  # dropped on export
    y = g.add_op("qnn.lut", [q], {"table": table}, [TensorType((1, 16), "i8", FixedPoint(7))], name="act").result
    out = g.add_op("q.dequantize", [y], result_types=[TensorType((1, 16), "f32")], name="out").result
    g.set_outputs([out, r], ["y", "x_range"])
    return g


@pytest.mark.parametrize("fn, onnx_op", [(lambda v: 1 / (1 + np.exp(-v)), "Sigmoid"), (np.tanh, None)])
def test_lut_exports_the_function_it_samples_or_the_exact_table(fn, onnx_op):
    table = lut_table(fn, 4, 7)
    if onnx_op is None:  # tanh's table reversed: a map qcc cannot name, looked up exactly
        table = table[::-1]
    g = _lut_graph(table)
    model = export_qdq_onnx(g)
    assert (onnx_op or "Gather") in op_types(model)
    sess = session(model)
    x = np.linspace(-8, 8, 16, dtype=np.float32).reshape(1, 16)
    got = sess.run(None, {"x": x})
    want = run_graph(g, {"x": x})
    np.testing.assert_array_equal(got[1], x)
    assert np.max(np.abs(got[0] - want["y"])) <= (2 ** -7 if onnx_op else 0)


def test_op_without_onnx_equivalent_names_the_op():
    if not is_registered("test.frobnicate"):
        register_op(OpDef("test.frobnicate", operands=["x"], infer=same_as_operand(0), summary="test only"))
    g = Graph("bad")
    x = g.add_input("x", TensorType((2,), "f32"))
    g.set_outputs([g.add_op("test.frobnicate", [x], name="frob1").result], ["y"])
    with pytest.raises(UnsupportedModelError, match=r"'test.frobnicate' op \"frob1\" has no ONNX equivalent"):
        export_qdq_onnx(g)


def test_write_onnx_is_atomic_on_error(tmp_path):
    g = Graph("bad")
    x = g.add_input("x", TensorType((2,), "f32"))
    q = g.add_op("q.quantize", [x], result_types=[TensorType((2,), "i32", FixedPoint(3))], name="wide").result
    g.set_outputs([q], ["y"])
    out = tmp_path / "m.onnx"
    with pytest.raises(UnsupportedModelError, match="\"wide\".*no i32 output"):
        write_onnx(g, out)
    assert not out.exists()


# ---------------------------------------------------------------- CLI
def test_qcc_opt_emit_onnx(tmp_path):
    out = tmp_path / "digits_qmn.onnx"
    cmd = [sys.executable, "-m", "qcc.tools.cli", str(DIGITS / "digits.onnx"), "-p", "qmn",
           "--calib", str(DIGITS / "calib.npz"), "--emit-onnx", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # the IR goes to -o only when ONNX is emitted
    model = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= op_types(model)
    xs, _ = digits_test()
    assert run_ort(session(model), xs[:4]).shape == (4, 1, 10)


def test_qcc_opt_emit_onnx_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    from qcc.tools.cli import opt_main
    assert opt_main([str(DIGITS / "digits.onnx"), "--emit-onnx", str(blocker / "m.onnx")]) == 1
