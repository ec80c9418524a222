"""qcc-opt, qcc-sim and qcc: output, files, errors as messages with exit codes, plugins."""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcc.transforms import passmanager as pm
from qcc.tools.cli import opt_main, sim_main
from qcc.tools.compile import main as qcc_main
from qcc.sim.interpreter import run_graph
from qcc.ir.parser import parse, parse_file
from qcc.ir.printer import print_graph

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "custom_pass" / "strength_reduce.py"

SMALL = """\
qcc.graph @net(%x: tensor<2x2xf32>) -> (tensor<2x2xf32> {name = "y"}) {
  %0 = qcc.const dense<[0.0, 0.0]> : tensor<2xf32>
  %1 = nn.add %x, %0 : tensor<2x2xf32>
  %2 = qcc.const dense<[2.0]> : tensor<1xf32>
  %3 = nn.mul %1, %2 : tensor<2x2xf32>
  %4 = nn.relu %3 : tensor<2x2xf32>
  qcc.return %4 : tensor<2x2xf32>
}
"""

BIG_VALUES = ", ".join(f"{i}.0" for i in range(20))
BIG = f"""\
qcc.graph @big(%x: tensor<20xf32>, %z: tensor<20xf32>) -> (tensor<20xf32> {{name = "y"}}, tensor<20xf32> {{name = "w"}}) {{
  %0 = qcc.const dense<[{BIG_VALUES}]> : tensor<20xf32> loc("weights")
  %1 = nn.add %x, %0 : tensor<20xf32>
  %2 = nn.mul %z, %1 : tensor<20xf32>
  qcc.return %1, %2 : tensor<20xf32>, tensor<20xf32>
}}
"""


def run(main, *args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.qir"
    path.write_text(SMALL)
    return path


@pytest.fixture(autouse=True)
def clean_registry():
    """Passes, pipelines and plugins registered by a test are removed after it."""
    with pm.scoped_registry():
        yield


# ---------------------------------------------------------------- qcc-opt
def test_opt_prints_ir_to_stdout(small):
    code, out, err = run(opt_main, small, "-p", "canonicalize")
    assert code == 0 and err == ""
    assert "nn.add" not in out and "nn.mul" in out
    assert print_graph(parse(out)) == out


def test_opt_without_pipeline_normalizes(small):
    code, out, _ = run(opt_main, small)
    assert code == 0 and out == print_graph(parse(SMALL))


def test_opt_reads_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(SMALL))
    code, out, _ = run(opt_main, "-", "-p", "canonicalize")
    assert code == 0 and "nn.relu" in out


def test_opt_writes_qir_and_sidecar(tmp_path):
    src = tmp_path / "big.qir"
    src.write_text(BIG)
    dest = tmp_path / "out" / "net.qir"
    code, out, err = run(opt_main, src, "-p", "dce", "-o", dest)
    assert code == 0 and out == "" and err == ""
    assert "@weights" in dest.read_text() and dest.with_suffix(".npz").is_file()
    g = parse_file(dest)
    x = {"x": np.arange(20, dtype=np.float32), "z": np.ones(20, np.float32)}
    np.testing.assert_array_equal(run_graph(g, x)["y"], 2 * x["x"])
    assert sorted(p.name for p in dest.parent.iterdir()) == ["net.npz", "net.qir"]  # no temp files left


def test_opt_elides_large_constants_on_stdout_unless_asked(tmp_path):
    src = tmp_path / "big.qir"
    src.write_text(BIG)
    _, elided, _ = run(opt_main, src)
    assert "qcc.const @weights" in elided and "19.0" not in elided
    _, whole, _ = run(opt_main, src, "--print-constants-whole")
    assert "19.0" in whole and "@weights" not in whole
    dest = tmp_path / "whole.qir"
    assert run(opt_main, src, "--print-constants-whole", "-o", dest)[0] == 0
    assert "19.0" in dest.read_text() and not dest.with_suffix(".npz").exists()


def test_opt_print_ir_after_all_goes_to_stderr(small):
    code, out, err = run(opt_main, small, "-p", "canonicalize,dce", "--print-ir-after-all")
    assert code == 0
    assert err.count("// -----// IR after ") == 2
    assert err.index("IR after canonicalize") < err.index("IR after dce")
    assert "IR after" not in out


def test_opt_print_ir_after_one_pass(small):
    code, _, err = run(opt_main, small, "-p", "canonicalize,dce", "--print-ir-after", "dce")
    assert code == 0 and err.count("// -----// IR after ") == 1 and "IR after dce" in err


def test_opt_unknown_pass_lists_registered_passes(small):
    code, out, err = run(opt_main, small, "-p", "canonicalize,frobnicate")
    assert code == 1 and out == ""
    assert err.startswith("qcc-opt: error: unknown pass 'frobnicate'; registered passes: ")
    assert "canonicalize" in err and "const-fold" in err and "dce" in err
    assert "Traceback" not in err


def test_opt_bad_option_lists_valid_options(small):
    code, _, err = run(opt_main, small, "-p", "const-fold{limit=3}")
    assert code == 1 and "valid options: max_elements (int)" in err


def test_opt_parse_error_is_file_line_col(tmp_path):
    bad = tmp_path / "bad.qir"
    bad.write_text(SMALL.replace("nn.relu %3", "nn.relu %9"))
    code, out, err = run(opt_main, bad)
    assert code == 1 and out == ""
    assert err.startswith(f"{bad}:6:")
    assert "error:" in err and "^" in err and "Traceback" not in err


def test_opt_failure_writes_nothing(small, tmp_path):
    dest = tmp_path / "never.qir"
    code, _, err = run(opt_main, small, "-p", "canonicalize,nope", "-o", dest)
    assert code == 1 and not dest.exists()
    code, _, err = run(opt_main, small, "-o", tmp_path / "small.qir" / "x.qir")
    assert code == 1 and err.startswith("qcc-opt: error: cannot write")


@pytest.mark.parametrize("args, message", [
    (["missing.qir"], "no such file: missing.qir"),
    (["model.txt"], "cannot tell the format"),
    ([], "no input file given"),
])
def test_opt_input_errors(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.txt").write_text("x")
    code, _, err = run(opt_main, *args)
    assert code == 1 and message in err


def test_opt_list_passes():
    code, out, _ = run(opt_main, "--list-passes")
    assert code == 0
    assert "Passes:" in out and "Pipelines:" in out
    assert "const-fold" in out and "max_elements: int = 1048576" in out


def test_opt_loads_a_plugin_from_outside_the_repo(tmp_path_factory, small):
    outside = tmp_path_factory.mktemp("plugins") / "my_strength_reduce.py"
    assert ROOT not in outside.parents
    shutil.copy(PLUGIN, outside)
    code, out, err = run(opt_main, small, "--load-pass-plugin", outside, "-p", "canonicalize,strength-reduce")
    assert code == 0, err
    assert "nn.mul" not in out and "nn.add %x, %x" in out
    code, out, _ = run(opt_main, "--load-pass-plugin", outside, "--list-passes")
    assert "strength-reduce" in out and "Rewrite x * 2 as x + x." in out


def test_opt_unsupported_model_exits_2(tmp_path, small):
    plugin = tmp_path / "refuse.py"
    plugin.write_text(
        "from qcc.errors import UnsupportedModelError\n"
        "from qcc.transforms.passmanager import Pass, register_pass\n"
        "@register_pass\n"
        "class Refuse(Pass):\n"
        "    '''Refuses every model.'''\n"
        "    name = 'test-refuse'\n"
        "    def run(self, graph):\n"
        "        raise UnsupportedModelError(\"node 'conv_7': op DeformConv is not supported\")\n")
    code, _, err = run(opt_main, small, "--load-pass-plugin", plugin, "-p", "dce,test-refuse")
    assert code == 2
    assert "pass 'test-refuse' failed (after dce): node 'conv_7'" in err


def test_opt_reads_onnx(tmp_path):
    pytest.importorskip("qcc.frontend.loader")
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    zero = numpy_helper.from_array(np.zeros(3, np.float32), "zero")
    node = helper.make_node("Add", ["x", "zero"], ["y"], name="add0")
    g = helper.make_graph([node], "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [zero])
    model = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), model)
    code, out, err = run(opt_main, model, "-p", "canonicalize")
    assert code == 0, err
    assert "nn.add" not in out and "qcc.return %x" in out


def test_installed_console_script_reports_without_traceback(tmp_path):
    exe = shutil.which("qcc-opt")
    if exe is None:
        pytest.skip("qcc-opt is not installed on PATH")
    missing = tmp_path / "missing.qir"
    r = subprocess.run([exe, str(missing)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == f"qcc-opt: error: no such file: {missing}"


# ---------------------------------------------------------------- qcc-sim
def test_sim_npz_in_npz_out(tmp_path, small):
    x = np.array([[1, -2], [3, -4]], np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    code, out, err = run(sim_main, small, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "out.npz")
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as result:
        assert result.files == ["y"]
        np.testing.assert_array_equal(result["y"], np.maximum(2 * x, 0))


def test_sim_single_npy_and_batches(tmp_path, small):
    xs = np.random.default_rng(0).standard_normal((5, 2, 2)).astype(np.float32)
    np.save(tmp_path / "in.npy", xs)
    code, _, err = run(sim_main, small, "--inputs", tmp_path / "in.npy", "-o", tmp_path / "out.npz",
                       "-p", "canonicalize")
    assert code == 0, err
    with np.load(tmp_path / "out.npz") as result:
        np.testing.assert_array_equal(result["y"], np.maximum(2 * xs, 0))


def test_sim_prints_without_output_file(tmp_path, small):
    np.save(tmp_path / "in.npy", np.ones((2, 2), np.float32))
    code, out, _ = run(sim_main, small, "--inputs", tmp_path / "in.npy")
    assert code == 0 and out.startswith("y: float32 [2, 2]")


def test_sim_input_errors(tmp_path):
    src = tmp_path / "big.qir"
    src.write_text(BIG)
    np.save(tmp_path / "one.npy", np.zeros(20, np.float32))
    code, _, err = run(sim_main, src, "--inputs", tmp_path / "one.npy")
    assert code == 1 and "is one .npy array, but graph @big has 2 inputs (x, z)" in err
    np.savez(tmp_path / "wrong.npz", x=np.zeros(20, np.float32), q=np.zeros(20, np.float32))
    code, _, err = run(sim_main, src, "--inputs", tmp_path / "wrong.npz")
    assert code == 1 and "has no array for graph input 'z' (it holds: x, q)" in err
    (tmp_path / "junk.npz").write_text("not numpy")
    code, _, err = run(sim_main, src, "--inputs", tmp_path / "junk.npz")
    assert code == 1 and "is not a readable .npz archive" in err and "Traceback" not in err


# ---------------------------------------------------------------- qcc
def test_qcc_reports_a_missing_model_without_traceback(tmp_path):
    code, _, err = run(qcc_main, tmp_path / "missing.onnx", "-o", tmp_path / "out" / "net.c",
                       "--target", "cortex-m4")
    assert code != 0 and "missing.onnx" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_sim_ignores_label_keys_and_raw_means_stored_integers_both_ways(tmp_path):
    digits = ROOT / "examples" / "digits"
    qmn = ("-p", "qmn", "--calib", digits / "calib.npz")
    code, _, err = run(sim_main, digits / "digits.onnx", *qmn, "--inputs", digits / "test.npz",
                       "-o", tmp_path / "real.npz")
    assert code == 0, err
    assert "ignoring" in err and "labels" in err
    real = np.load(tmp_path / "real.npz")["logits"]
    # The same samples as the stored integers of the graph's q.quantize (pixel/16 in Qm.n is exact: x * 2^n).
    code, ir, _ = run(opt_main, digits / "digits.onnx", *qmn)
    n = int(re.search(r"q\.quantize %input : tensor<1x8x8x1x!q\.fixed<i8, (\d+)>>", ir).group(1))
    x = np.load(digits / "test.npz")["input"]
    np.savez(tmp_path / "q.npz", input=np.clip(np.round(x * 2 ** n), -128, 127).astype(np.int8))
    code, _, err = run(sim_main, digits / "digits.onnx", *qmn, "--inputs", tmp_path / "q.npz", "--raw",
                       "-o", tmp_path / "raw.npz")
    assert code == 0, err
    raw = np.load(tmp_path / "raw.npz")["logits"]
    assert raw.dtype == np.int8 and raw.shape == (360, 1, 10)
    assert real.dtype == np.float32 and np.unique(raw).size > 10
    scale = real[raw != 0][0] / raw[raw != 0][0]  # Qm.n: real = q * 2^-n
    np.testing.assert_array_equal(real, raw.astype(np.float32) * scale)
    code, _, err = run(sim_main, digits / "digits.onnx", *qmn, "--inputs", digits / "test.npz", "--raw")
    assert code == 1 and "needs an integer (stored values, --raw) array" in err
    code, _, err = run(sim_main, digits / "digits.onnx", "--inputs", tmp_path / "q.npz", "--raw")
    assert code == 1 and "need a quantized graph" in err


def test_input_shape_option_is_checked_against_the_model(tmp_path):
    model = ROOT / "examples" / "digits" / "digits.onnx"
    code, out, err = run(opt_main, model, "--input-shape", "input=1x8x8x1", "-p", "dce")
    assert code == 0 and "tensor<1x8x8x1xf32>" in out
    code, _, err = run(opt_main, model, "--input-shape", "input=1x8x8")
    assert code == 1 and "gives 3 dimensions but the model declares 4" in err
    code, _, err = run(opt_main, model, "--input-shape", "input=1x8x9x1")
    assert code == 1 and "dimension 2 is 8 in the model, not 9" in err
    code, _, err = run(opt_main, model, "--input-shape", "nope=1x2")
    assert code == 1 and "the model's inputs are input" in err
    code, _, err = run(opt_main, model, "--input-shape", "input=1xfoo")
    assert code == 1 and "NAME=DxDx" in err
