"""Float ONNX LSTM/GRU models under ``--scheme int8``: quantize-recurrent's s8.lstm / s8.gru.

* Accuracy: KWS-shaped classifiers (tests/recurrent_models.py: 49 steps x 10 MFCC features ->
  LSTM/GRU (H = 32) -> last h -> Gemm, random weights scaled as PyTorch initialises them,
  +-1/sqrt(H)), calibrated and evaluated on the 22 real-speech clips of the shared kws_dscnn
  folder: logits SQNR and top-1 agreement with float (measured: LSTM 29.3 dB, 22/22; GRU 31.5 dB,
  22/22; GRU with linear_before_reset 31.4 dB, 21/22).
* Bit-exactness: one model holding an LSTM and a GRU of each ``linear_before_reset`` (odd hidden
  and input sizes: the blocked matrix-vector products' tails), compiled by ``qcc``; the C equals
  the simulator on the host (gcc + ASan/UBSan) and in QEMU (Cortex-M4, DSP path), and the library
  builds with -Werror on M0+, M4, M7, M33 and M55 (SMLAD on the DSP cores, VMLADAVA on the M55).
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import qcc
import qcc.passes  # noqa: F401  (registers the pipelines)
from qcc.backend_registry import get_backend
from qcc.fileio import write_files
from qcc.sim.interpreter import run_graph

from conftest import shared_model_path
from onnx_builders import build
from recurrent_models import cell_weights, classifier_model, recurrent_node_model
from test_backend_s8 import _run_and_compare, needs_gcc, needs_qemu

STEPS, FEATURES = 49, 10
VMLADAVA = r"\bvmla(?:da)?vax?[te]?\.s(?:8|16)\b"   # as tests/test_target_builds.py matches it


def _mfcc() -> np.ndarray:
    return np.load(shared_model_path("kws_dscnn", "mfcc_real_float.npy"))[..., 0]   # [22, 49, 10]


def _cell(kind: str, hidden: int, seed: int, lbr: int = 0):
    w, r, b = cell_weights(kind, FEATURES, hidden, seed)
    attrs = {"hidden_size": hidden}
    if kind == "GRU":
        attrs["linear_before_reset"] = lbr
    return w, r, b, attrs


def three_cells():
    """One input, three recurrent layers side by side (LSTM H=13 with its final h, GRU lbr=0 H=7, GRU lbr=1 H=16)."""
    nodes = [helper.make_node("Transpose", ["input"], ["xt"], perm=[1, 0, 2], name="to_time_major")]
    inits, outs = {}, []
    for j, (kind, hidden, lbr) in enumerate([("LSTM", 13, 0), ("GRU", 7, 0), ("GRU", 16, 1)]):
        w, r, b, attrs = _cell(kind, hidden, seed=10 + j, lbr=lbr)
        inits.update({f"W{j}": w, f"R{j}": r, f"B{j}": b})
        ys = [f"Y{j}", f"Yh{j}"] if kind == "LSTM" else [f"Y{j}"]   # the LSTM's final h too
        nodes.append(helper.make_node(kind, ["xt", f"W{j}", f"R{j}", f"B{j}"], ys, name=f"{kind.lower()}{j}", **attrs))
        outs += ys
    return build(nodes, {"input": [1, STEPS, FEATURES]}, outs, inits, opset=14)


def _lower(tmp_path: Path, model, name: str, data: np.ndarray):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    np.save(tmp_path / "calib.npy", data)
    g = qcc.load_onnx(path)
    qcc.PassManager.parse(f"int8-calibrated{{data={tmp_path / 'calib.npy'}}}").run(g)
    return qcc.load_onnx(path), g


@pytest.mark.parametrize("kind,lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
def test_classifier_agrees_with_float(tmp_path, kind, lbr):
    data = _mfcc()
    fg, g = _lower(tmp_path, classifier_model(kind, hidden=32, linear_before_reset=lbr), kind, data)
    assert f"s8.{kind.lower()}" in {op.opname for op in g.ops}
    assert not any(op.opname.startswith("nn.") and op.opname not in ("nn.gather", "nn.reshape") for op in g.ops)
    fl = np.concatenate([run_graph(fg, {"input": x[None]})["logits"] for x in data])
    qt = np.concatenate([run_graph(g, {"input": x[None]})["logits"] for x in data])
    sqnr = 10 * np.log10((fl ** 2).sum() / ((fl - qt) ** 2).sum())
    agree = (fl.argmax(1) == qt.argmax(1)).mean()
    print(f"{kind} lbr={lbr}: SQNR {sqnr:.1f} dB, top-1 agreement {agree * 22:.0f}/22")
    assert len(np.unique(fl.argmax(1))) >= 4   # the float model separates the clips at all
    assert sqnr > 25.0 and agree >= 20 / 22


@needs_gcc
def test_c_equals_simulator_on_host(tmp_path):
    data = _mfcc()
    _, g = _lower(tmp_path, three_cells(), "cells", data)
    kinds = sorted(op.opname for op in g.ops if op.opname.startswith("s8."))
    assert kinds == ["s8.gru", "s8.gru", "s8.lstm", "s8.requantize"]   # the final h, rescaled to its own range
    got = _run_and_compare(tmp_path, g, {"input": data[:, None]}, "cortex-m4", "host")
    assert [q.shape[1:] for q in got.quantized] == [(STEPS, 1, 1, 13), (1, 1, 13), (STEPS, 1, 1, 7), (STEPS, 1, 1, 16)]
    assert all(len(np.unique(q)) > 20 for q in got.quantized)   # real values, not saturated constants


@needs_qemu
def test_c_equals_simulator_on_qemu_m4(tmp_path):
    data = _mfcc()
    _, g = _lower(tmp_path, three_cells(), "cells", data)
    _run_and_compare(tmp_path, g, {"input": data[:4, None]}, "cortex-m4", "qemu")


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("make") is None,
                    reason="arm-none-eabi-gcc or make not installed")
def test_builds_warning_free_on_every_core(tmp_path):
    data = _mfcc()
    _, g = _lower(tmp_path, three_cells(), "cells", data)
    for target, insn in [("cortex-m0plus", None), ("cortex-m4", r"\bsmlad\b"), ("cortex-m7", r"\bsmlad\b"),
                         ("cortex-m33", r"\bsmlad\b"), ("cortex-m55", VMLADAVA)]:
        folder = tmp_path / target
        gen = get_backend("cmsis").generate(g, "net", target)
        write_files({folder / k: v for k, v in gen.files.items()})
        done = subprocess.run(["make", "-s", "-C", str(folder), "all"], capture_output=True, text=True)
        assert done.returncode == 0, f"{target}: {done.stdout}{done.stderr}"
        objs = list(folder.rglob("net.o"))
        assert objs, f"{target}: no object file"
        arch = ["-m", "armv8.1-m.main"] if target == "cortex-m55" else []
        dis = subprocess.run(["arm-none-eabi-objdump", "-d", *arch, str(objs[0])], capture_output=True, text=True).stdout
        if insn:
            assert re.search(insn, dis), f"{target}: no {insn} in the recurrent kernels"
        else:
            assert "smlad" not in dis


# ---------------------------------------------------------------- the ops, the pass and the back end on small graphs
def _small_graph(c_is_output: bool = False):
    """x -> s8.lstm (T=4, I=3, H=5) and s8.gru (lbr 0 and 1) -> their y sequences, random parameters."""
    from qcc.ir.graph import Graph
    from qcc.ir.types import TensorType, UniformQuant
    rng = np.random.default_rng(3)
    g = Graph("cells")
    xf = g.add_input("x", TensorType((4, 3)))
    x = g.add_op("q.quantize", [xf], result_types=[TensorType((4, 3), "i8", UniformQuant(0.05, 3))]).result
    outs = []
    common = dict(hidden_size=5, input_zp=3, output_zp=-2, output_multiplier=1517534016, output_shift=-23)
    specs = [("s8.lstm", 4, dict(cell_scale_power=-12, forget_multiplier=1 << 30, forget_shift=-14,
                                  input_to_cell_multiplier=1 << 30, input_to_cell_shift=-17)),
             ("s8.gru", 3, dict(linear_before_reset=0)), ("s8.gru", 3, dict(linear_before_reset=1))]
    for kind, gates, extra in specs:
        operands = [x, g.add_const(rng.integers(-127, 128, (gates * 5, 3)).astype(np.int8)),
                    g.add_const(rng.integers(-127, 128, (gates * 5, 5)).astype(np.int8)),
                    g.add_const(rng.integers(-3000, 3000, gates * 5 * (1 if kind == "s8.lstm" else 2)).astype(np.int32)),
                    g.add_const(rng.integers(-20, 20, (1, 5)).astype(np.int8))]
        if kind == "s8.lstm":
            operands.append(g.add_const(rng.integers(-900, 900, (1, 5)).astype(np.int16)))
        op = g.add_op(kind, operands, dict(common, input_multiplier=[1300000000] * gates, input_shift=[-1] * gates,
                                           recurrent_multiplier=[1200000000] * gates, recurrent_shift=[-2] * gates,
                                           **extra), name=f"{kind[3:]}{len(outs)}")
        op.results[0].type = op.results[0].type.with_quant("i8", UniformQuant(0.01, -2))
        outs.append(g.add_op("q.dequantize", [op.results[0]], result_types=[TensorType((4, 5))]).result)
        if c_is_output and kind == "s8.lstm":
            op.results[2].type = op.results[2].type.with_quant("i16", UniformQuant(2.0 ** -12, 0))
            outs.append(g.add_op("q.dequantize", [op.results[2]], result_types=[TensorType((1, 5))]).result)
    g.set_outputs(outs, [f"y{j}" for j in range(len(outs))])
    g.verify()
    return g


def test_text_form_round_trips_and_runs():
    from qcc.ir.parser import parse
    from qcc.ir.printer import print_graph_with_resources
    g = _small_graph()
    text, resources = print_graph_with_resources(g)
    assert "s8.lstm" in text and text.count("s8.gru") == 2
    again = parse(text, resources=resources)
    assert print_graph_with_resources(again)[0] == text
    x = np.linspace(-6, 6, 12, dtype=np.float32).reshape(4, 3)
    a, b = run_graph(g, {"x": x}), run_graph(again, {"x": x})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        assert len(np.unique(a[k])) > 4


@pytest.mark.parametrize("op_index, change, message", [
    (0, lambda op: op.attrs.update(cell_clip=0), "cell_clip"),
    (0, lambda op: op.attrs.update(input_multiplier=[1, 2, 3]), "one per gate"),
    (1, lambda op: op.attrs.update(linear_before_reset=2), "linear_before_reset"),
    (1, lambda op: op.attrs.update(output_zp=200), "output_zp"),
])
def test_verifier_names_the_problem(op_index, change, message):
    from qcc.errors import IRError
    g = _small_graph()
    op = [o for o in g.ops if o.opname in ("s8.lstm", "s8.gru")][op_index]
    change(op)
    with pytest.raises(IRError, match=message):
        g.verify()


def test_c_is_deterministic():
    gen = get_backend("cmsis")
    a, b = gen.generate(_small_graph(), "net", "cortex-m4").files, gen.generate(_small_graph(), "net", "cortex-m4").files
    assert a == b


LSTM_AFTER_QUANTIZE_AFFINE = """
qcc.graph @m(%x: tensor<2x1xf32>) -> (tensor<2x1xf32> {name = "y"}) {
  %0 = q.quantize %x : tensor<2x1x!q.uniform<i8:f32, 0.0078125:0>>
  %1 = q.dequantize %0 : tensor<2x1xf32>
  %2 = qcc.const dense<[0.5, -0.25, 0.125, 1.0]> : tensor<4x1xf32> loc("cell.w")
  %3 = qcc.const dense<[0.3, -0.3, 0.6, 0.1]> : tensor<4x1xf32> loc("cell.r")
  %4 = qcc.const dense<[0.1, 0.0, -0.1, 0.2, 0.0, 0.05, 0.0, 0.1]> : tensor<8xf32> loc("cell.b")
  %5 = qcc.const dense<[0.0]> : tensor<1x1xf32> loc("cell.h0")
  %6 = qcc.const dense<[0.0]> : tensor<1x1xf32> loc("cell.c0")
  %7, %8, %9 = nn.lstm %1, %2, %3, %4, %5, %6 {hidden_size = 1} : tensor<2x1xf32>, tensor<1x1xf32>, tensor<1x1xf32> loc("cell")
  %10 = q.quantize %7 : tensor<2x1x!q.uniform<i8:f32, 0.0078125:0>>
  %11 = q.dequantize %10 : tensor<2x1xf32>
  qcc.return %11 : tensor<2x1xf32>
}
"""


def test_lstm_without_calibration_data_names_the_node():
    from qcc.errors import QccError
    from qcc.ir.parser import parse
    from qcc.transforms.passmanager import PassManager
    g = parse(LSTM_AFTER_QUANTIZE_AFFINE)
    with pytest.raises(QccError, match=r'"cell".*cell-state scale needs calibration data'):
        PassManager.parse("quantize-recurrent").run(g)


def test_lstm_cell_scale_comes_from_the_calibration_trace(tmp_path):
    from qcc.ir.parser import parse
    from qcc.sim.recurrent import lstm_float
    from qcc.transforms.passmanager import PassManager
    x = np.linspace(-1, 1, 2 * 8, dtype=np.float32).reshape(8, 2, 1)
    np.save(tmp_path / "calib.npy", x)
    g = parse(LSTM_AFTER_QUANTIZE_AFFINE)
    PassManager.parse(f"quantize-recurrent{{data={tmp_path / 'calib.npy'}}}").run(g)
    op = next(o for o in g.ops if o.opname == "s8.lstm")
    w, r, b = np.array([[0.5], [-0.25], [0.125], [1.0]]), np.array([[0.3], [-0.3], [0.6], [0.1]]), \
        np.array([0.1, 0.0, -0.1, 0.2, 0.0, 0.05, 0.0, 0.1])
    cmax = 0.0
    for sample in x:
        xq = np.round(sample / 0.0078125) * 0.0078125   # what the graph feeds the LSTM
        trace: dict = {}
        lstm_float(xq, w, r, b, np.zeros((1, 1)), np.zeros((1, 1)), trace=trace)
        cmax = max(cmax, float(np.abs(trace["c"]).max()))
    p = op.attrs["cell_scale_power"]
    assert 2.0 ** (p + 14) < cmax <= 2.0 ** (p + 15)    # the smallest power of two covering the cell range
    assert (op.attrs["input_to_cell_multiplier"], op.attrs["input_to_cell_shift"]) == (1 << 30, -29 - p)


def test_qcc_compiles_a_float_lstm_with_calibration(tmp_path, capsys):
    from qcc.tools.compile import main as qcc_main
    data = _mfcc()
    onnx.save(classifier_model("LSTM", hidden=16), tmp_path / "kws_lstm.onnx")
    np.save(tmp_path / "calib.npy", data)
    code = qcc_main([str(tmp_path / "kws_lstm.onnx"), "-o", str(tmp_path / "out" / "net.c"), "--target", "cortex-m4",
                     "--scheme", "int8", "--calib", str(tmp_path / "calib.npy")])
    assert code == 0, capsys.readouterr().err
    c = (tmp_path / "out" / "net.c").read_text()
    assert "s8.lstm" in c and "qcc_s16_activation" in c


@pytest.mark.parametrize("kind, change, message", [
    ("s8.lstm", dict(output_shift=2), "'output_shift' 2 > 0"),
    ("s8.lstm", dict(forget_shift=1), "'forget_shift' 1 > 0"),
    ("s8.gru", dict(input_shift=[20, 20, 20]), "input-to-gate int32 accumulator of gate row"),
    ("s8.gru", dict(recurrent_shift=[0, 21, 0]), "recurrent-to-gate int32 accumulator of gate row"),
])
def test_check_quantized_proves_the_recurrent_accumulators(kind, change, message):
    from qcc.errors import QccError
    from qcc.transforms.passmanager import PassManager
    g = _small_graph()
    assert PassManager.parse("check-quantized").run(g).records[0].result.stats["layers"] == 3
    next(o for o in g.ops if o.opname == kind).attrs.update(change)
    with pytest.raises(QccError, match=re.escape(message)):
        PassManager.parse("check-quantized").run(g)


@pytest.mark.parametrize("kind, initial, outputs, message", [
    ("LSTM", "input", ("Y", "Y_h"), 'node "lstm1" (LSTM): its weights, bias or initial states are computed at run'),
    ("GRU", "input", ("Y",), 'node "gru1" (GRU): its weights, bias or initial states are computed at run time'),
])
def test_refusals_name_the_node_before_calibration(tmp_path, capsys, kind, initial, outputs, message):
    from qcc.tools.compile import main as qcc_main
    onnx.save(recurrent_node_model(kind, steps=4, inputs=3, hidden=2, initial=initial, outputs=outputs),
              tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", not_an_input=np.zeros((2, 3), np.float32))  # would fail calibration
    code = qcc_main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out" / "net.c"), "--target", "cortex-m4",
                     "--scheme", "int8", "--calib", str(tmp_path / "calib.npz")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def _random_cells(seed: int):
    """Cells with drawn sizes and parameters, corner paths included: cell scales whose tanh rescale shifts
    left (p > -12) or right, small cell clips, shifts of both signs, zero points at the int8 ends, H and I of 1."""
    from qcc.ir.graph import Graph
    from qcc.ir.types import TensorType, UniformQuant
    rng = np.random.default_rng(seed)
    g = Graph(f"random_cells{seed}")
    t = int(rng.integers(1, 7))
    i = int(rng.choice([1, 2, 5, 8, 13]))
    xf = g.add_input("x", TensorType((t, i)))
    zx = int(rng.choice([-128, -3, 0, 77, 127]))
    x = g.add_op("q.quantize", [xf], result_types=[TensorType((t, i), "i8", UniformQuant(0.05, zx))]).result
    outs = []
    for j, (kind, gates, lbr) in enumerate([("s8.lstm", 4, 0), ("s8.lstm", 4, 0), ("s8.gru", 3, 0), ("s8.gru", 3, 1)]):
        h = int(rng.choice([1, 2, 3, 6, 9]))
        zh = int(rng.choice([-128, -5, 0, 42, 127]))
        mult = lambda: int(rng.integers(1 << 30, 1 << 31))  # noqa: E731
        attrs = dict(hidden_size=h, input_zp=zx, output_zp=zh, output_multiplier=mult(),
                     output_shift=int(rng.integers(-24, -18)),
                     input_multiplier=[mult() for _ in range(gates)],
                     input_shift=[int(s) for s in rng.integers(-6, 2, gates)],
                     recurrent_multiplier=[mult() for _ in range(gates)],
                     recurrent_shift=[int(s) for s in rng.integers(-6, 1, gates)])
        operands = [x, g.add_const(rng.integers(-127, 128, (gates * h, i)).astype(np.int8)),
                    g.add_const(rng.integers(-127, 128, (gates * h, h)).astype(np.int8)),
                    g.add_const(rng.integers(-20000, 20000, gates * h * (1 if gates == 4 else 2)).astype(np.int32)),
                    g.add_const(rng.integers(-128, 128, (1, h)).astype(np.int8))]
        if kind == "s8.lstm":
            p = int(rng.choice([-15, -13, -11, -10]))
            attrs.update(cell_scale_power=p, cell_clip=int(rng.choice([300, 32767])),
                         forget_multiplier=1 << 30, forget_shift=-14,
                         input_to_cell_multiplier=1 << 30, input_to_cell_shift=min(0, -29 - p))
            operands.append(g.add_const(rng.integers(-32768, 32768, (1, h)).astype(np.int16)))
        else:
            attrs["linear_before_reset"] = lbr
        op = g.add_op(kind, operands, attrs, name=f"cell{j}")
        op.results[0].type = op.results[0].type.with_quant("i8", UniformQuant(0.01, zh))
        op.results[1].type = op.results[1].type.with_quant("i8", UniformQuant(0.01, zh))
        outs.append(g.add_op("q.dequantize", [op.results[0]], result_types=[TensorType((t, h))]).result)
        outs.append(g.add_op("q.dequantize", [op.results[1]], result_types=[TensorType((1, h))]).result)
        if kind == "s8.lstm":   # the final cell state, int16 at 2^p
            op.results[2].type = op.results[2].type.with_quant("i16", UniformQuant(2.0 ** attrs["cell_scale_power"], 0))
            outs.append(g.add_op("q.dequantize", [op.results[2]], result_types=[TensorType((1, h))]).result)
    g.set_outputs(outs, [f"out{j}" for j in range(len(outs))])
    g.verify()
    return g


@needs_gcc
@pytest.mark.parametrize("seed", [0, 1])
def test_random_cells_c_equals_simulator_on_host(tmp_path, seed):
    from qcc.transforms.passmanager import PassManager
    g = _random_cells(seed)
    PassManager.parse("check-quantized").run(g)   # every accumulator provably inside int32
    rng = np.random.default_rng(seed + 100)
    x = rng.uniform(-7, 7, (8,) + g.inputs[0].shape).astype(np.float32)
    x[0] = 1e9   # saturated input codes
    got = _run_and_compare(tmp_path, g, {"x": x}, "cortex-m4", "host")
    assert sum(len(np.unique(q)) for q in got.quantized) > 12


# ---------------------------------------------------------------- --stream-state with the int8 cells
def _streamed(graph, frames=1):
    import copy
    from qcc.transforms.passmanager import PassManager
    s = copy.deepcopy(graph)
    PassManager.parse(f"stream-state{{frames={frames}}}").run(s)
    return s


@pytest.mark.parametrize("kind, lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
def test_simulator_stream_equals_whole_sequence(tmp_path, kind, lbr):
    from qcc.sim.recurrent import run_stream
    data = _mfcc()
    _, q = _lower(tmp_path, classifier_model(kind, hidden=12, linear_before_reset=lbr), kind, data)
    s = _streamed(q)
    assert len(s.find("qcc.state")) == (2 if kind == "LSTM" else 1)
    for clip in data[:2]:
        whole = run_graph(q, {"input": clip[None]})["logits"]
        outs = run_stream(s, [{"input": clip[None, t:t + 1]} for t in range(STEPS)])
        np.testing.assert_array_equal(outs[-1]["logits"], whole)
        assert not np.array_equal(outs[0]["logits"], whole)   # the state really carries the sequence


@needs_gcc
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_c_stream_equals_whole_sequence(tmp_path, kind):
    """49 calls of one frame (h int8, an LSTM's cell int16, kept in the arena) == one call of 49 frames.
    The harness never calls net_reset(): an initial state that is not zero bytes (the GRU's h0 is its
    zero point) is set by the first invoke."""
    from qcc.backends.cmsis import harness
    data = _mfcc()
    _, q = _lower(tmp_path, classifier_model(kind, hidden=12, linear_before_reset=1), kind, data)
    whole = _run_and_compare(tmp_path / "whole", q, {"input": data[:1, None]}, "cortex-m4", "host")
    s = _streamed(q)
    gen = get_backend("cmsis").generate(s, "net", "cortex-m4")
    assert sum(v.type.size * v.type.np_dtype.itemsize for v in gen.plan.states) == 12 + (24 if kind == "LSTM" else 0)
    if kind == "GRU":
        assert any(np.any(v.producer.attrs["value"]) for v in gen.plan.states)
    folder = tmp_path / "stream"
    write_files({folder / k: v for k, v in gen.files.items()})
    frames = {"input": data[0].reshape(STEPS, 1, 1, FEATURES)}
    count = harness.write_samples(folder / "in.bin", s, frames)
    harness.run_host(harness.build_host(folder, gen.name), folder / "in.bin", folder / "out.bin")
    got = harness.read_outputs(folder / "out.bin", gen, count)
    np.testing.assert_array_equal(got.quantized[0][-1], whole.quantized[0][0])
    from qcc.sim.recurrent import run_stream   # every call, the first from the initial state, as simulated
    want = run_stream(s, [{"input": f} for f in frames["input"]])
    np.testing.assert_array_equal(got.floats[0], np.stack([w["logits"] for w in want]))


@needs_gcc
@pytest.mark.parametrize("form", ["unrolled", "scan"])
def test_tf_cell_forms_compile_under_int8(tmp_path, form):
    """tf2onnx's unrolled and Scan LSTMCell forms under int8: the concat of each step's input with the
    constant zero initial state takes the concat's own parameters (the state stored as zp), so every
    step is integer; host C == simulator, and the logits follow float."""
    from recurrent_models import scan_lstm_model, unrolled_lstm_model
    data = _mfcc()
    if form == "unrolled":
        model, xs = unrolled_lstm_model(steps=4, hidden=8), data[:, :4].reshape(22, 1, 4, 10) / 30
    else:
        model, xs = scan_lstm_model(steps=6, hidden=8), data[:, :6].reshape(22, 6, 1, 10) / 30
    fg, g = _lower(tmp_path, model, form, xs.astype(np.float32))
    # integer from the input's quantize to the output's dequantize
    assert sorted(op.opname for op in g.ops if op.opname.startswith("q.")) == ["q.dequantize", "q.quantize"]
    name = g.output_names[0]
    fl = np.concatenate([run_graph(fg, {"input": x})[name] for x in xs.astype(np.float32)])
    qt = np.concatenate([run_graph(g, {"input": x})[name] for x in xs.astype(np.float32)])
    assert 10 * np.log10((fl ** 2).sum() / ((fl - qt) ** 2).sum()) > 15.0
    _run_and_compare(tmp_path, g, {"input": xs[:3].astype(np.float32)}, "cortex-m4", "host")
