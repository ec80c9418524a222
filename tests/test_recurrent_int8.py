"""Float ONNX LSTM/GRU models under ``--scheme int8``: quantize-recurrent's s8.lstm / s8.gru.

* Accuracy: KWS-shaped classifiers (tests/recurrent_models.py: 49 steps x 10 MFCC features ->
  LSTM/GRU (H = 32) -> last h -> Gemm, random weights scaled as PyTorch initialises them,
  +-1/sqrt(H)), calibrated and evaluated on the 22 real-speech clips of the shared kws_dscnn
  folder: logits SQNR and top-1 agreement with float (measured: LSTM 29.3 dB, 22/22; GRU 31.5 dB,
  22/22; GRU with linear_before_reset 31.4 dB, 21/22).
* Bit-exactness: one model holding an LSTM and a GRU of each ``linear_before_reset`` (odd hidden
  and input sizes: the blocked matrix-vector products' tails), compiled by ``qcc``; the C equals
  the simulator on the host (gcc + ASan/UBSan) and in QEMU (Cortex-M4, DSP path), and the library
  builds with -Werror on M0+, M4, M7 and M55 (SMLAD on the M4, VMLADAVA on the M55).
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
from recurrent_models import cell_weights, classifier_model
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
    """One input, three recurrent layers side by side (LSTM H=13, GRU lbr=0 H=7, GRU lbr=1 H=16)."""
    nodes = [helper.make_node("Transpose", ["input"], ["xt"], perm=[1, 0, 2], name="to_time_major")]
    inits, outs = {}, []
    for j, (kind, hidden, lbr) in enumerate([("LSTM", 13, 0), ("GRU", 7, 0), ("GRU", 16, 1)]):
        w, r, b, attrs = _cell(kind, hidden, seed=10 + j, lbr=lbr)
        inits.update({f"W{j}": w, f"R{j}": r, f"B{j}": b})
        nodes.append(helper.make_node(kind, ["xt", f"W{j}", f"R{j}", f"B{j}"], [f"Y{j}"], name=f"{kind.lower()}{j}",
                                      **attrs))
        outs.append(f"Y{j}")
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
    assert sorted(op.opname for op in g.ops if op.opname.startswith("s8.")) == ["s8.gru", "s8.gru", "s8.lstm"]
    got = _run_and_compare(tmp_path, g, {"input": data[:, None]}, "cortex-m4", "host")
    assert all(len(np.unique(q)) > 20 for q in got.quantized)   # real sequences, not saturated constants


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
                         ("cortex-m55", VMLADAVA)]:
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
