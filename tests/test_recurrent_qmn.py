"""Qm.n LSTM / GRU (qnn.lstm, qnn.gru): accuracy against float on real speech features, and the C
kernels equal to the simulator bit for bit (host gcc with sanitizers; one batched QEMU M4 run;
-Werror builds for M0+, M4, M7 and M55).

Models (tests/recurrent_models.py): KWS-shaped classifiers (49 MFCC frames of 10 features ->
LSTM/GRU with 32 units -> FC 12, as PyTorch exports a batch_first classifier) and ML-KWS's CRNN
(conv front end -> recurrent cells -> FC). Weights are random with PyTorch's initialisation scale.
"""
from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from qcc.backends.cmsis import harness
from qcc.backends.cmsis.generate import generate
from qcc.fileio import write_files
from qcc.sim.interpreter import run_graph

from conftest import shared_model_path
from recurrent_models import (classifier_model, crnn_model, scan_gru_model, scan_lstm_model, torch_style_model,
                              unrolled_lstm_model)
from test_backend_cmsis import compile_and_compare, needs_arm, needs_gcc
from test_qmn import quantize


@pytest.fixture(scope="module")
def mfcc():
    """22 real speech clips, 49 frames x 10 MFCC features (MLPerf Tiny KWS inputs)."""
    return np.load(shared_model_path("kws_dscnn", "mfcc_real_float.npy")).reshape(22, 49, 10)


def _lowered(model, tmp_path, bits, xs):
    onnx.save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", input=xs)
    return quantize(tmp_path / "model.onnx", f"qmn{{bits={bits}}}", tmp_path / "calib.npz")


def _logits(graph, xs):
    return np.stack([run_graph(graph, {"input": x})["logits"] for x in xs])


def sqnr_db(ref, got):
    noise = np.sum((ref.astype(np.float64) - got) ** 2)
    return math.inf if noise == 0 else 10 * math.log10(np.sum(ref.astype(np.float64) ** 2) / noise)


# Measured (22 clips, hidden 32): LSTM q7 26.6 dB, q15 56.2 dB; GRU (linear_before_reset 1) q7 27.8 dB,
# q15 46.9 dB; GRU (0) q7 27.9 dB, q15 47.0 dB; top-1 agreement 22/22 in every case.
@pytest.mark.parametrize("kind, lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
@pytest.mark.parametrize("bits, min_db", [(8, 22.0), (16, 42.0)])
def test_kws_classifier_accuracy_vs_float(tmp_path, mfcc, kind, lbr, bits, min_db):
    xs = mfcc.reshape(22, 1, 49, 10)
    fl, fake, q = _lowered(classifier_model(kind, hidden=32, linear_before_reset=lbr), tmp_path, bits, xs)
    assert {op.opname for op in q.ops} >= {"qnn." + kind.lower(), "qnn.dense"}
    assert not [op for op in q.ops if op.opname in ("nn.lstm", "nn.gru")]
    ref, got = _logits(fl, xs), _logits(q, xs)
    assert sqnr_db(ref, got) > min_db, sqnr_db(ref, got)
    assert np.mean(ref.argmax(-1) == got.argmax(-1)) >= 0.9


@needs_gcc
@pytest.mark.parametrize("kind, lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1)])
@pytest.mark.parametrize("bits", [8, 16])
def test_classifier_c_matches_simulator(tmp_path, mfcc, kind, lbr, bits):
    xs = mfcc.reshape(22, 1, 49, 10)
    _, _, q = _lowered(classifier_model(kind, hidden=12, linear_before_reset=lbr), tmp_path, bits, xs)
    gen, got = compile_and_compare(q, tmp_path / "c", {"input": xs[:8]})
    assert "qnn." + kind.lower() in {s.kind for s in gen.plan.steps}
    assert len(np.unique(got.quantized[0])) > 8


@needs_gcc
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bits, min_db", [(8, 22.0), (16, 42.0)])
def test_torch_style_classifier(tmp_path, mfcc, kind, bits, min_db):
    """torch.onnx.export's form (Constant zero states, Squeeze, Transpose, Gather of the last step).
    Measured: LSTM q7 25.8 dB, q15 55.4 dB; GRU q7 26.4 dB, q15 46.5 dB."""
    xs = mfcc.reshape(22, 1, 49, 10)
    fl, _, q = _lowered(torch_style_model(kind, hidden=16), tmp_path, bits, xs)
    ref, got = _logits(fl, xs), _logits(q, xs)
    assert sqnr_db(ref, got) > min_db, sqnr_db(ref, got)
    assert np.mean(ref.argmax(-1) == got.argmax(-1)) >= 0.85
    compile_and_compare(q, tmp_path / "c", {"input": xs[:4]})


@needs_gcc
@pytest.mark.parametrize("bits, min_db", [(8, 24.0), (16, 50.0)])
def test_crnn_accuracy_and_c_matches_simulator(tmp_path, mfcc, bits, min_db):
    """Conv front end -> LSTM -> GRU (linear_before_reset 0) -> GRU (1) -> FC: every cell kind in one model.
    Measured: q7 31.1 dB, q15 56.6 dB, top-1 22/22."""
    xs = mfcc.reshape(22, 1, 1, 49, 10)
    model = crnn_model([("LSTM", 0), ("GRU", 0), ("GRU", 1)], hidden=16)
    fl, _, q = _lowered(model, tmp_path, bits, xs)
    kinds = [op.opname for op in q.ops]
    assert kinds.count("qnn.gru") == 2 and "qnn.lstm" in kinds and "qnn.conv2d" in kinds
    ref, got = _logits(fl, xs), _logits(q, xs)
    assert sqnr_db(ref, got) > min_db, sqnr_db(ref, got)
    assert np.mean(ref.argmax(-1) == got.argmax(-1)) >= 0.9
    compile_and_compare(q, tmp_path / "c", {"input": xs[:6]})


@needs_arm
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="qemu-system-arm not installed")
def test_crnn_on_qemu_m4(tmp_path, mfcc):
    """One firmware: q15 CRNN with all three cell kinds, 6 clips, on the M4 board (SMLAD paths)."""
    xs = mfcc.reshape(22, 1, 1, 49, 10)
    _, _, q = _lowered(crnn_model([("LSTM", 0), ("GRU", 0), ("GRU", 1)], hidden=16), tmp_path, 16, xs)
    samples = {"input": xs[:6]}
    gen = generate(q, "net", "cortex-m4")
    write_files({tmp_path / "fw" / k: v for k, v in gen.files.items()})
    count = harness.write_samples(tmp_path / "in.bin", q, samples)
    harness.run_qemu(tmp_path / "fw", tmp_path / "in.bin", tmp_path / "out.bin")
    got = harness.read_outputs(tmp_path / "out.bin", gen, count)
    want = harness.simulate(q, gen, samples)
    for a, b in zip(got.quantized, want.quantized):
        np.testing.assert_array_equal(a, b)
    assert len(np.unique(got.quantized[0])) > 8


@needs_arm
@pytest.mark.parametrize("bits", [8, 16])
def test_recurrent_kernels_build_with_werror_on_every_core(tmp_path, mfcc, bits):
    """The DSP/MVE dot paths of the cells compile warning-free; SMLAD on DSP cores, none on the M0+."""
    xs = mfcc.reshape(22, 1, 1, 49, 10)
    _, _, q = _lowered(crnn_model([("LSTM", 0), ("GRU", 0), ("GRU", 1)], hidden=6), tmp_path, bits, xs)
    for target in ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m55"):
        out = tmp_path / target
        write_files({out / k: v for k, v in generate(q, "net", target).files.items()})
        proc = subprocess.run(["make", "-s", "-C", str(out), "all"], capture_output=True, text=True)
        assert proc.returncode == 0, target + proc.stdout + proc.stderr
        dis = subprocess.run(["arm-none-eabi-objdump", "-d", str(out / "build" / "net.o")],
                             capture_output=True, text=True).stdout
        if target in ("cortex-m4", "cortex-m7"):
            assert "smlad" in dis, target
        if target == "cortex-m0plus":
            assert "smlad" not in dis


@needs_gcc
@pytest.mark.parametrize("form, bits, min_db", [("scan", 16, 45.0), ("scan-proj", 8, 15.0), ("unrolled", 8, 15.0),
                                                ("scan-gru", 16, 45.0)])
def test_tf_cell_forms_compile_and_c_matches_simulator(tmp_path, mfcc, form, bits, min_db):
    """tf2onnx's Scan (with and without num_proj) and unrolled LSTMCell forms compile under Qm.n: the
    plain LSTMCell and GRUCell Scans as one qnn.lstm / qnn.gru (qcc/frontend/tf_cells.py), the projected
    Scan and the unrolled cells as per-step ops (dense, gathers for the gate split, tables, mul, add).
    Small (6 / 4 steps, 8 units, 8 clips scaled by 1/30) to stay cheap; on 20 / 8 steps, 16 units and 22
    clips we measured: scan q7 20.1 dB / q15 60.6 dB, with projection q7 26.2 / q15 69.5, unrolled
    q7 21.5 / q15 61.7; a GRUCell Scan (12 steps) q7 16.6 / q15 63.5."""
    if form == "scan-gru":
        model, xs = scan_gru_model(steps=6, hidden=8), mfcc[:8, :6].reshape(8, 6, 1, 10) / 30
    elif form == "unrolled":
        model, xs = unrolled_lstm_model(steps=4, hidden=8), mfcc[:8, :4].reshape(8, 1, 4, 10) / 30
    else:
        model = scan_lstm_model(steps=6, hidden=8, proj=4 if form == "scan-proj" else 0)
        xs = mfcc[:8, :6].reshape(8, 6, 1, 10) / 30
    fl, _, q = _lowered(model, tmp_path, bits, xs.astype(np.float32))
    assert not [op for op in q.ops if op.opname.startswith("nn.") and op.opname not in
                ("nn.reshape", "nn.gather", "nn.concat", "nn.squeeze", "nn.unsqueeze", "nn.transpose")]
    ref, got = _logits(fl, xs), _logits(q, xs)
    assert sqnr_db(ref, got) > min_db, sqnr_db(ref, got)
    if form in ("scan", "unrolled"):  # one q15 and one q7 build: the C of these ops is tested elsewhere too
        compile_and_compare(q, tmp_path / "c", {"input": xs[:3].astype(np.float32)})
