"""Qm.n range choice by measured error (assign-qmn objectives), correct-bias, and qcc --calib-samples."""
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper
import pytest

import qcc
import qcc.sim.qmn  # noqa: F401  (qnn kernels)
from conftest import shared_model_path
from onnx_builders import build, run_ort
from qcc.sim.interpreter import run_batched
from qcc.tools.compile import lower, main
from qcc.transforms.passmanager import PassManager


def test_kws_dscnn_default_q7_agrees_with_float_on_real_clips():
    """Issue 13: default 8-bit Qm.n, calibrated on the 22 real MFCC clips, agrees with float on >= 20."""
    model = shared_model_path("kws_dscnn", "kws_dscnn_float.onnx")
    x = np.load(shared_model_path("kws_dscnn", "mfcc_real_float.npy")).astype(np.float32)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"input_1": s[None]})[0] for s in x])
    graph = qcc.load_onnx(str(model))
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "c.npz", input_1=x)
        lower(graph, calib=str(Path(tmp) / "c.npz"), bits=8, scheme="qmn", act_max={}, model_path=str(model))
    got = np.asarray(run_batched(graph, {"input_1": x[:, None]})["Identity"]).reshape(len(x), -1)
    agree = int((got.argmax(1) == ref.argmax(1)).sum())
    assert agree >= 20, f"q7 top-1 agreement {agree}/22"
    # the choice is recorded for the report: the input group was searched at its consumers
    first = graph.qmn_choices[0]
    assert first["tensors"] == ["input_1"] and "consumers" in first["why"]


def _dense_model(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((6, 16)) * 0.05).astype(np.float32)
    b = (rng.standard_normal(6) * 0.1).astype(np.float32)
    model = build([helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1),
                   helper.make_node("Relu", ["h"], ["y"])], {"x": [1, 16]}, ["y"], {"w": w, "b": b})
    path = tmp_path / "fc.onnx"
    onnx.save(model, str(path))
    x = (rng.standard_normal((64, 1, 16)) + 3.0).astype(np.float32)  # a mean far from 0: weight error biases y
    np.savez(tmp_path / "calib.npz", x=x)
    return path, x, np.concatenate([run_ort(model, {"x": s})["y"] for s in x])


@pytest.mark.parametrize("objective", ["tensor", "input"])
def test_correct_bias_reduces_the_mean_output_error(tmp_path, objective):
    path, x, ref = _dense_model(tmp_path)
    means = {}
    for corrected in (False, True):
        g = qcc.load_onnx(str(path))
        pm = PassManager.parse(f"qmn{{objective={objective},correct_bias={str(corrected).lower()}}}")
        for p in pm.passes:
            p.context = {"calib": str(tmp_path / "calib.npz")}
        report = pm.run(g)
        got = np.asarray(run_batched(g, {"x": x})["y"], np.float64).reshape(ref.shape)
        means[corrected] = float(np.abs((ref - got).mean(axis=0)).sum())
        counts = [st["corrected"] for spec, st in report.stats().items() if "correct-bias" in spec]
        assert counts == ([1] if corrected else [])
    assert means[True] < 0.5 * means[False], means


def test_objective_range_keeps_the_seed_rule(tmp_path):
    path, x, _ = _dense_model(tmp_path)
    g = qcc.load_onnx(str(path))
    pm = PassManager.parse("qmn{objective=range}")
    for p in pm.passes:
        p.context = {"calib": str(tmp_path / "calib.npz")}
    pm.run(g)
    # input max ~ 3 + 4 sigma < 8: range rule n = 7 - 3 = 4, kept without search
    assert g.qmn_choices[0]["rule_n"] == g.qmn_choices[0]["n"]
    assert g.qmn_choices[0]["why"].startswith("range rule")


def test_unknown_objective_is_refused():
    with pytest.raises(Exception, match="objective"):
        PassManager.parse("assign-qmn{objective=best}").run(qcc.load_onnx(build(
            [helper.make_node("Relu", ["x"], ["y"])], {"x": [1, 4]}, ["y"])))


@pytest.mark.parametrize("n, message", [(0, "at least 1"), (65, "holds only 64 samples")])
def test_calib_samples_out_of_range_is_an_error_and_writes_nothing(tmp_path, capsys, n, message):
    path, _, _ = _dense_model(tmp_path)
    out = tmp_path / "out" / "fc.c"
    code = main([str(path), "-o", str(out), "--target", "cortex-m4", "--calib", str(tmp_path / "calib.npz"),
                 "--calib-samples", str(n)])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert not out.parent.exists()


def test_calib_samples_uses_the_first_n(tmp_path):
    """--calib-samples 8 equals calibrating on a file holding those 8 samples (byte-identical C)."""
    path, x, _ = _dense_model(tmp_path)
    np.savez(tmp_path / "first8.npz", x=x[:8])
    outs = []
    for tag, extra in (("n", ["--calib", tmp_path / "calib.npz", "--calib-samples", "8"]),
                       ("file", ["--calib", tmp_path / "first8.npz"])):
        out = tmp_path / tag / "fc.c"
        assert main([str(path), "-o", str(out), "--target", "cortex-m4", *map(str, extra)]) == 0
        outs.append((out.read_bytes(), (out.parent / "fc_weights.c").read_bytes()))
    assert outs[0] == outs[1]


def test_report_states_each_format_choice(tmp_path):
    path, _, _ = _dense_model(tmp_path)
    out = tmp_path / "out" / "fc.c"
    assert main([str(path), "-o", str(out), "--target", "cortex-m4", "--calib", str(tmp_path / "calib.npz"),
                 "--report", str(tmp_path / "r.md")]) == 0
    text = (tmp_path / "r.md").read_text()
    section = text[text.index("## Qm.n format choices"):]
    rows = [r for r in section.splitlines() if r.startswith("| x |") or r.startswith("| Gemm")]
    assert rows and rows[0].startswith("| x | 8 |")
    assert "network output SQNR" in rows[0]


def test_format_search_reaches_the_pipeline_and_is_qmn_only(tmp_path, capsys):
    path, _, _ = _dense_model(tmp_path)
    common = [str(path), "--target", "cortex-m4", "--calib", str(tmp_path / "calib.npz")]
    assert main(common + ["-o", str(tmp_path / "a" / "fc.c"), "--format-search", "range",
                          "--report", str(tmp_path / "a.md")]) == 0
    text = (tmp_path / "a.md").read_text()
    assert "| x | 8 | 4 | 4 | range rule" in text and "network output" not in text
    code = main(common + ["-o", str(tmp_path / "b" / "fc.c"), "--scheme", "int8", "--format-search", "tensor"])
    assert code == 1 and "--format-search applies to --scheme qmn" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
