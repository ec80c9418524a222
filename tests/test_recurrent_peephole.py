"""LSTM peepholes (ONNX LSTM input P = [p_i, p_o, p_f]): i and f add p * c_{t-1}, o adds p * c_t.

* float: nn.lstm's ``peepholes`` attribute, the interpreter against onnxruntime;
* Qm.n: qnn.lstm's int16 peepholes, the product with the cell state shifted into the gate's Q3.12;
  close to float, the C equal to the simulator (host gcc with sanitizers);
* int8: s8.lstm's peepholes as TFLite's integer LSTM has them (symmetric int16 cell-to-gate weights,
  the product with the int16 cell state requantized into the gate's int16 pre-activation); close to
  float, the C equal to the simulator on the host and, with the Q15 cell, in QEMU (Cortex-M4).
  No external vectors exist for it (CMSIS-NN's LSTM has no peepholes): the simulator states
  TFLite's reference arithmetic (lstm_eval.cc, VectorBatchVectorCwiseProductAccumulate).
"""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import onnx
import pytest
from onnx import helper

from qcc.sim.interpreter import run_graph

from onnx_builders import build, check_against_ort, rand
from recurrent_models import cell_weights
from test_backend_s8 import needs_gcc, needs_qemu

STEPS, INPUTS = 12, 5


def peephole_model(hidden: int = 6, seed: int = 0, outputs=("Y", "Y_h", "Y_c"), peep_scale: float = 0.5,
                   initial: bool = False):
    """One LSTM node with random peepholes (|p| <= peep_scale), optionally constant initial states."""
    w, r, b = cell_weights("LSTM", INPUTS, hidden, seed)
    rng = np.random.default_rng(seed + 5)
    inits = {"W": w, "R": r, "B": b, "P": rng.uniform(-peep_scale, peep_scale, (1, 3 * hidden)).astype(np.float32)}
    names = ["X", "W", "R", "B", "", "", "", "P"]
    if initial:
        inits["h0"] = rng.uniform(-0.5, 0.5, (1, 1, hidden)).astype(np.float32)
        inits["c0"] = rng.uniform(-1, 1, (1, 1, hidden)).astype(np.float32)
        names[5:7] = ["h0", "c0"]
    outs = [o if o in outputs else "" for o in ("Y", "Y_h", "Y_c")]
    while not outs[-1]:
        outs.pop()
    node = helper.make_node("LSTM", names, outs, hidden_size=hidden, name="lstm_p")
    return build([node], {"X": [STEPS, 1, INPUTS]}, list(outputs), inits, opset=14)


# ---------------------------------------------------------------- float
@pytest.mark.parametrize("initial", [False, True])
def test_float_peepholes_match_onnxruntime(initial):
    model = peephole_model(initial=initial, peep_scale=1.5)
    g = check_against_ort(model, {"X": rand(STEPS, 1, INPUTS, seed=3)})
    (op,) = g.find("nn.lstm")
    assert op.operands[6].shape == (18,)
    # the peepholes change the numbers (a test of nothing otherwise)
    plain = [i for i in model.graph.initializer if i.name == "P"][0]
    plain.CopyFrom(onnx.numpy_helper.from_array(np.zeros((1, 18), np.float32), "P"))
    from qcc.frontend import load_onnx
    x = rand(STEPS, 1, INPUTS, seed=3)
    assert np.abs(run_graph(load_onnx(model), {"X": x})["Y"] - run_graph(g, {"X": x})["Y"]).max() > 1e-2


# ---------------------------------------------------------------- Qm.n
def _sqnr(ref, got) -> float:
    ref = np.asarray(ref, np.float64)
    return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())


@needs_gcc
@pytest.mark.parametrize("bits, min_db", [(8, 30.0), (16, 55.0)])   # measured 35.5 and 58.8 dB at worst
def test_qmn_peepholes_follow_float_and_the_c_equals_the_simulator(tmp_path, bits, min_db):
    from test_backend_cmsis import compile_and_compare
    from test_qmn import quantize
    xs = np.stack([rand(STEPS, 1, INPUTS, seed=30 + k) for k in range(16)])
    onnx.save(peephole_model(hidden=7, initial=True), tmp_path / "lstm.onnx")
    np.savez(tmp_path / "calib.npz", X=xs)
    fl, _, q = quantize(tmp_path / "lstm.onnx", f"qmn{{bits={bits}}}", tmp_path / "calib.npz")
    (op,) = q.find("qnn.lstm")
    assert len(op.operands) == 7 and op.operands[6].type.dtype == "i16"
    for name in q.output_names:
        want = np.stack([run_graph(fl, {"X": x})[name] for x in xs])
        got = np.stack([run_graph(q, {"X": x})[name] for x in xs])
        print(f"q{bits - 1} {name}: {_sqnr(want, got):.1f} dB")
        assert _sqnr(want, got) > min_db, (name, _sqnr(want, got))
    gen, out = compile_and_compare(q, tmp_path, {"X": xs[:4]})
    assert b"qcc_gate_peep_q12(" in gen.files["net.c"]
    assert all(len(np.unique(v)) > 10 for v in out.quantized)


# ---------------------------------------------------------------- int8 (TFLite's integer LSTM with peepholes)
def _int8(tmp_path, model, xs):
    import qcc
    tmp_path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, tmp_path / "lstm.onnx")
    np.save(tmp_path / "calib.npy", xs)
    g = qcc.load_onnx(tmp_path / "lstm.onnx")
    qcc.PassManager.parse(f"int8-calibrated{{data={tmp_path / 'calib.npy'}}}").run(g)
    return qcc.load_onnx(tmp_path / "lstm.onnx"), g


def _int8_inputs(n: int = 24):
    return np.stack([rand(STEPS, 1, INPUTS, seed=60 + k) for k in range(n)])


@needs_gcc
def test_int8_peepholes_follow_float_and_the_c_equals_the_simulator(tmp_path):
    from test_backend_s8 import _run_and_compare
    xs = _int8_inputs()
    fl, g = _int8(tmp_path, peephole_model(hidden=7, initial=True, outputs=("Y", "Y_h")), xs)
    (op,) = g.find("s8.lstm")
    assert op.operands[6].type.dtype == "i16" and len(op.attrs["peephole_multiplier"]) == 3
    assert np.abs(op.operands[6].constant()).max() == 32767   # symmetric int16, per gate
    for name in g.output_names:
        want = np.stack([run_graph(fl, {"X": x})[name] for x in xs])
        got = np.stack([run_graph(g, {"X": x})[name] for x in xs])
        print(f"int8 {name}: {_sqnr(want, got):.1f} dB")
        assert _sqnr(want, got) > 33.0, (name, _sqnr(want, got))   # 41.3 and 39.4 dB; 19.7 without peepholes
    out = _run_and_compare(tmp_path, g, {"X": xs[:6]}, "cortex-m4", "host")
    assert all(len(np.unique(v)) > 10 for v in out.quantized)


@needs_qemu
def test_peephole_kernels_on_qemu_m4(tmp_path):
    """The int8 and the Q15 peephole cells on a Cortex-M4 (DSP path) equal the simulator."""
    from test_backend_s8 import _run_and_compare
    from test_qmn import quantize
    xs = _int8_inputs(8)
    _, g = _int8(tmp_path / "s8", peephole_model(hidden=7, initial=True, outputs=("Y", "Y_h")), xs)
    _run_and_compare(tmp_path / "s8", g, {"X": xs[:3]}, "cortex-m4", "qemu")
    onnx.save(peephole_model(hidden=7, initial=True), tmp_path / "lstm.onnx")
    np.savez(tmp_path / "calib.npz", X=xs)
    _, _, q = quantize(tmp_path / "lstm.onnx", "qmn{bits=16}", tmp_path / "calib.npz")
    _run_and_compare(tmp_path / "q15", q, {"X": xs[:3]}, "cortex-m4", "qemu")


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("make") is None,
                    reason="arm-none-eabi-gcc or make not installed")
def test_peephole_kernels_build_warning_free_on_every_core(tmp_path):
    from qcc.backend_registry import get_backend
    from qcc.fileio import write_files
    from test_qmn import quantize
    xs = _int8_inputs(8)
    _, g = _int8(tmp_path / "s8", peephole_model(hidden=7, initial=True, outputs=("Y", "Y_h")), xs)
    onnx.save(peephole_model(hidden=7, initial=True), tmp_path / "lstm.onnx")
    np.savez(tmp_path / "calib.npz", X=xs)
    _, _, q = quantize(tmp_path / "lstm.onnx", "qmn{bits=8}", tmp_path / "calib.npz")
    for graph, kind in ((g, "s8"), (q, "q7")):
        for target in ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m55"):
            folder = tmp_path / f"{kind}-{target}"
            write_files({folder / k: v for k, v in get_backend("cmsis").generate(graph, "net", target).files.items()})
            done = subprocess.run(["make", "-s", "-C", str(folder), "all"], capture_output=True, text=True)
            assert done.returncode == 0, f"{kind} {target}: {done.stdout}{done.stderr}"


# ---------------------------------------------------------------- Y_c under int8
@needs_gcc
def test_int8_final_cell_state_is_the_int16_cell(tmp_path):
    """Y_c read under int8: the kernel's int16 cell state at 2^p, dequantized; close to float, C == simulator."""
    from test_backend_s8 import _run_and_compare
    xs = _int8_inputs()
    fl, g = _int8(tmp_path, peephole_model(hidden=5, outputs=("Y_h", "Y_c")), xs)
    (op,) = g.find("s8.lstm")
    cell = op.results[2]
    assert cell.type.dtype == "i16" and cell.type.quant.scale == 2.0 ** op.attrs["cell_scale_power"]
    assert [u.opname for u in g.users(cell)] == ["nn.reshape"]
    want = np.stack([run_graph(fl, {"X": x})["Y_c"] for x in xs])
    got = np.stack([run_graph(g, {"X": x})["Y_c"] for x in xs])
    print(f"int8 Y_c: {_sqnr(want, got):.1f} dB")
    assert _sqnr(want, got) > 40.0
    out = _run_and_compare(tmp_path, g, {"X": xs[:4]}, "cortex-m4", "host")
    assert out.quantized[1].dtype == np.int16 and len(np.unique(out.quantized[1])) > 10


def test_int8_final_cell_state_feeding_a_layer_is_refused(tmp_path, capsys):
    from qcc.tools.compile import main as qcc_main
    model = peephole_model(hidden=5, outputs=("Y_h", "Y_c"))
    rng = np.random.default_rng(1)
    model.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((5, 2)).astype(np.float32),
                                                                "fc_w"))
    model.graph.node.append(helper.make_node("MatMul", ["Y_c", "fc_w"], ["z"], name="fc"))
    model.graph.output[1].CopyFrom(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None))
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _int8_inputs(4))
    code = qcc_main([str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out" / "net.c"), "--target", "cortex-m4",
                     "--scheme", "int8", "--calib", str(tmp_path / "calib.npy")])
    err = capsys.readouterr().err
    assert code == 2 and 'node "lstm_p" (LSTM)' in err and "final cell state (Y_c) feeds other layers" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- --stream-state
@pytest.mark.parametrize("scheme", ["qmn", "int8"])
def test_peephole_cell_streams(tmp_path, scheme):
    """One frame per call (stream-state: h and c kept, the peepholes stay a constant) == the whole sequence."""
    import copy
    from qcc.sim.recurrent import run_stream
    from qcc.transforms.passmanager import PassManager
    from test_qmn import quantize
    xs = _int8_inputs(8)
    model = peephole_model(hidden=5, outputs=("Y_h",))
    if scheme == "int8":
        _, g = _int8(tmp_path, model, xs)
    else:
        onnx.save(model, tmp_path / "lstm.onnx")
        np.savez(tmp_path / "calib.npz", X=xs)
        _, _, g = quantize(tmp_path / "lstm.onnx", "qmn{bits=16}", tmp_path / "calib.npz")
    s = copy.deepcopy(g)
    PassManager.parse("stream-state{frames=1}").run(s)
    assert len(s.find("qcc.state")) == 2
    outs = run_stream(s, [{"X": f[None]} for f in xs[0]])
    np.testing.assert_array_equal(outs[-1]["Y_h"], run_graph(g, {"X": xs[0]})["Y_h"])


# ---------------------------------------------------------------- the ops: text form, verifiers, scales
def test_peephole_ops_round_trip_and_verify(tmp_path):
    import copy
    from qcc.errors import OpError
    from qcc.ir.parser import parse
    from qcc.ir.printer import print_graph
    from test_qmn import quantize
    xs = _int8_inputs(8)
    _, g = _int8(tmp_path, peephole_model(hidden=3, outputs=("Y", "Y_h")), xs)
    onnx.save(peephole_model(hidden=3), tmp_path / "q.onnx")
    np.savez(tmp_path / "calib.npz", X=xs)
    _, _, q = quantize(tmp_path / "q.onnx", "qmn{bits=8}", tmp_path / "calib.npz")
    for graph, opname in ((g, "s8.lstm"), (q, "qnn.lstm")):
        text = print_graph(graph, elide_over=None)
        again = parse(text)
        again.verify()
        assert print_graph(again, elide_over=None) == text
        bad = copy.deepcopy(graph)
        (op,) = bad.find(opname)
        if opname == "s8.lstm":
            op.attrs["peephole_shift"] = [0, 0]
            with pytest.raises(OpError, match="'peephole_multiplier' and 'peephole_shift' need 3 entries"):
                op.opdef.verify(op)
        else:
            from qcc.ir.types import FixedPoint, TensorType
            op.operands[6].type = TensorType((9,), "i8", FixedPoint(7))
            with pytest.raises(OpError, match="peepholes p must be i16"):
                op.opdef.verify(op)


def test_int8_peephole_scale_keeps_the_product_inside_int32():
    """A peephole so large against the cell scale that TFLite's multiplier would exceed 1 takes a coarser
    scale: no left shift of the 2^30 product, values past the clip saturate the gate either way."""
    import importlib
    quantize_recurrent = importlib.import_module("qcc.passes.quantize_recurrent")
    p_q, mults = quantize_recurrent._peepholes(np.array([50.0, -0.01, 1.0] * 3), 3, 2)
    assert all(s <= 0 for _, s in mults)
    assert p_q[0] == 32767 and p_q[1] == -round(0.01 / (0.999 * 2.0 ** -14))


@needs_gcc
def test_int8_peephole_cell_streams_in_c(tmp_path):
    """The streamed int8 peephole cell in C (host, sanitizers): one frame per call, the state kept in the
    arena, equals the simulator's stream call by call (and so the whole sequence)."""
    import copy
    from qcc.backends.cmsis import harness
    from qcc.backends.cmsis.generate import generate
    from qcc.fileio import write_files
    from qcc.sim.recurrent import run_stream
    from qcc.transforms.passmanager import PassManager
    xs = _int8_inputs(8)
    _, g = _int8(tmp_path, peephole_model(hidden=5, outputs=("Y_h",)), xs)
    s = copy.deepcopy(g)
    PassManager.parse("stream-state{frames=1}").run(s)
    gen = generate(s, "net", "cortex-m4")
    folder = tmp_path / "stream"
    write_files({folder / k: v for k, v in gen.files.items()})
    frames = {"X": xs[0].reshape(STEPS, 1, 1, INPUTS)}
    count = harness.write_samples(folder / "in.bin", s, frames)
    harness.run_host(harness.build_host(folder, gen.name), folder / "in.bin", folder / "out.bin")
    got = harness.read_outputs(folder / "out.bin", gen, count)
    want = run_stream(s, [{"X": f} for f in frames["X"]])
    np.testing.assert_array_equal(got.floats[0], np.stack([w["Y_h"] for w in want]))
    np.testing.assert_array_equal(got.floats[0][-1], run_graph(g, {"X": xs[0]})["Y_h"])
