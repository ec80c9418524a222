"""Model zoo: the architectures MCU users deploy compile under q7, q15 and int8 (issue 11's done-when).

Replicas built in tests/zoo_models.py (random He-initialised weights, realistic
BatchNormalization statistics, a classifier standardised so the winning class
varies with the input): ML-KWS DNN, CNN and DS-CNN-S; a MobileNetV2 (width
0.35, 96x96, every block kind); a SqueezeNet 1.1 (fire modules, ceil_mode max
pools, Dropout); a 1-D conv net (Conv1d, BN1d, MaxPool1d); the ML-KWS CNN as a
torch export writes it (Reshape with a shape constant, Gemm transB=1, BN on a
Gemm's 2-D output). The MLPerf Tiny models are covered by tests that read them
from /work/shared/models (test_backend_models.py, test_accuracy_table.py).

For each model and scheme:

1. the float model: qcc's float interpreter == onnxruntime (rtol 1e-4);
2. ``qcc model.onnx -o DIR/NAME.c --target cortex-m4 --calib calib.npz
   [--bits 16 | --scheme int8]`` through the command's entry point: exit 0;
3. ``TEST_SAMPLES`` fresh inputs (zoo_models.sample_inputs; calibration:
   ``CALIB_SAMPLES`` others from the same distribution) through the integer
   simulator: top-1 agreement with onnxruntime's float logits, SQNR over all
   logits;
4. all models of a scheme in ONE host executable (gcc -Werror,
   -fsanitize=address,undefined; as test_random_models.py): quantized and
   dequantized outputs == the simulator bit for bit on every test input.

Measured (top-1 agreement of 10, SQNR dB; all 21 compile and are bit-exact on
10/10 inputs; fixed seeds) in ``MEASURED``. The low SQNRs (DS-CNN q7 and int8)
come from the replicas' classifier, not the convolutions: ``qcc --report`` on
DS-CNN int8 shows every layer before the classifier at >= 26.7 dB end to end
and the classifier alone at 15.7 dB: it reads pooled features whose
input-dependent part spans a few quantization steps of their range (random
weights, global pooling), amplified by the standardisation.

Floors: ``TOP1_FLOOR`` per scheme (issue 11: q15 and int8 agree with float on
all but one or two of the inputs), SQNR 3 dB under each measured value (a
wrong shift or scale costs far more). Runtime ~90 s on 2 shared cores.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from qcc.backends.cmsis import harness
from onnx_builders import check_against_ort
from random_models import qcc_command, run_qcc
from test_random_models import _compile_parallel, _dispatch_c, _run_ort, sqnr_db
from zoo_models import BUILDERS, SHAPES, sample_inputs

SCHEMES = {"q7": [], "q15": ["--bits", "16"], "int8": ["--scheme", "int8"]}
CALIB_SAMPLES = 32
TEST_SAMPLES = 10
# model -> scheme -> (top-1 agreements of TEST_SAMPLES, SQNR dB), measured.
MEASURED = {
    "kws_dnn": {"q7": (9, 25.7), "q15": (10, 45.2), "int8": (10, 30.1)},
    "kws_cnn": {"q7": (9, 21.1), "q15": (10, 30.2), "int8": (8, 21.1)},
    "kws_dscnn_s": {"q7": (7, 11.2), "q15": (10, 38.8), "int8": (8, 11.3)},
    "mobilenet_v2": {"q7": (8, 17.3), "q15": (9, 26.2), "int8": (8, 24.8)},
    "squeezenet": {"q7": (7, 22.5), "q15": (10, 44.3), "int8": (9, 26.6)},
    "conv1d": {"q7": (10, 25.8), "q15": (10, 51.5), "int8": (10, 32.5)},
    # q7 16.3 dB since the output-error format search became the default (with the old local search
    # and 16 search samples it measured 21.6 dB; top-1 rose from 9 to 10 of 10).
    "kws_cnn_torch": {"q7": (10, 16.3), "q15": (9, 29.4), "int8": (9, 20.3)},
}
TOP1_FLOOR = {"q7": 6, "q15": 8, "int8": 8}
SQNR_MARGIN = 3.0


def sqnr_floor(model: str, scheme: str) -> float:
    return MEASURED[model][scheme][1] - SQNR_MARGIN


def _arena_bytes(header: Path, name: str) -> int:
    return int(re.search(rf"#define {name.upper()}_ARENA_SIZE (\d+)", header.read_text()).group(1))


def _weight_bytes(message: str) -> int:
    """The weight bytes qcc's summary line states ("(arena N bytes, weights M bytes)")."""
    return int(re.search(r"weights (\d+) bytes", message).group(1))


@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_model_zoo(scheme, tmp_path, capsys):
    from qcc.backends.cmsis.plan import make_plan
    from qcc.ir.parser import parse_file
    compiled, rows, failures = [], [], []
    for i, (model_name, builder) in enumerate(BUILDERS.items()):
        name = f"{model_name}_{scheme}"
        folder = tmp_path / name
        folder.mkdir()
        model = builder()
        rng = np.random.default_rng(100 + i)
        xs = sample_inputs(SHAPES[model_name], CALIB_SAMPLES + TEST_SAMPLES, rng)[:, None]
        if scheme == "q7":   # the float check once per model, not per scheme
            check_against_ort(model, {"x": xs[0]}, rtol=1e-4, atol=1e-4)
        onnx.save(model, folder / "model.onnx")
        np.savez(folder / "calib.npz", x=xs[:CALIB_SAMPLES])
        argv = ["model.onnx", "-o", f"c/{name}.c", "--target", "cortex-m4", "--calib", "calib.npz", "--name", name,
                "--emit-ir", "lowered.qir", *SCHEMES[scheme]]
        where = f"\n  reproduce: cd {folder} && {qcc_command(argv)}"
        rc, message = run_qcc(folder, argv, where)
        if rc != 0:
            failures.append(f"{name}: qcc exited with {rc}:\n{message}{where}")
            rows.append(f"{model_name:14s} {scheme:5s} compile FAILED (exit {rc})")
            continue
        graph = parse_file(folder / "lowered.qir")
        gen = SimpleNamespace(plan=make_plan(graph), float_output=False)
        samples = {"x": xs[CALIB_SAMPLES:]}
        want = harness.simulate(graph, gen, samples)
        ref = _run_ort(model, samples["x"]).reshape(TEST_SAMPLES, -1)
        got = want.floats[0].reshape(ref.shape)
        top1 = int(np.sum(ref.argmax(1) == got.argmax(1)))
        db = sqnr_db(ref, got)
        arena = _arena_bytes(folder / "c" / f"{name}.h", name)
        compiled.append(SimpleNamespace(name=name, model=model_name, folder=folder, graph=graph, gen=gen,
                                        samples=samples, want=want, top1=top1, db=db, where=where))
        rows.append(f"{model_name:14s} {scheme:5s} top-1 {top1}/{TEST_SAMPLES} SQNR {db:5.1f} dB "
                    f"arena {arena} B weights {_weight_bytes(message)} B")
    exact = _build_and_compare(tmp_path / "host", compiled)
    with capsys.disabled():
        print("\n" + "\n".join(r + (f" bit-exact {exact.get(r.split()[0], 0)}/{TEST_SAMPLES}"
                                    if "FAILED" not in r else "") for r in rows))
    assert not failures, "\n".join(failures)
    mismatched = [f"{c.name}: host C == simulator on {exact[c.model]}/{TEST_SAMPLES} inputs{c.where}"
                  for c in compiled if exact[c.model] != TEST_SAMPLES]
    assert not mismatched, "\n".join(mismatched)
    low = [f"{c.name}: top-1 {c.top1}/{TEST_SAMPLES} (floor {TOP1_FLOOR[scheme]}), SQNR {c.db:.1f} dB (floor "
           f"{sqnr_floor(c.model, scheme):.1f}){c.where}" for c in compiled
           if c.top1 < TOP1_FLOOR[scheme] or c.db < sqnr_floor(c.model, scheme)]
    assert not low, "\n".join(low)


def _build_and_compare(build: Path, compiled) -> dict:
    """Every model's generated harness main, renamed, in one host executable; returns per model the
    number of test inputs whose outputs (quantized and float) equal the simulator's bit for bit."""
    if not compiled:
        return {}
    build.mkdir()
    fw = compiled[0].folder / "c" / "firmware"
    sources = [fw / "semihost_io.c"]
    for c in compiled:
        out = c.folder / "c"
        entry = build / f"{c.name}_entry.c"
        entry.write_text(f'#define main {c.name}_entry\n#include "{out}/firmware/{c.name}_main.c"\n')
        sources += [out / f"{c.name}.c", out / f"{c.name}_weights.c", entry]
        harness.write_samples(c.folder / "in.bin", c.graph, c.samples)
    (build / "dispatch.c").write_text(_dispatch_c(compiled))
    sources.append(build / "dispatch.c")
    includes = ["-I", str(fw)] + [x for c in compiled for x in ("-I", str(c.folder / "c"))]
    errors = _compile_parallel(sources, build, includes)
    assert not errors, f"host build (-Werror) failed:\n{errors[-8000:]}"
    exe = build / "zoo"
    link = ["gcc", *harness.HOST_CFLAGS, *[str(build / (Path(s).stem + ".o")) for s in sources], "-o", str(exe),
            "-lm"]
    proc = subprocess.run(link, capture_output=True, text=True)
    assert proc.returncode == 0, f"link failed:\n{proc.stderr}"
    proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"host run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
    exact = {}
    for c in compiled:
        got = harness.read_outputs(c.folder / "out.bin", c.gen, TEST_SAMPLES)
        pairs = list(zip(got.quantized, c.want.quantized)) + [
            (a.view(np.uint32), b.view(np.uint32)) for a, b in zip(got.floats, c.want.floats)]
        ok = np.ones(TEST_SAMPLES, bool)
        for a, b in pairs:
            ok &= (a == b).reshape(TEST_SAMPLES, -1).all(1)
        exact[c.model] = int(ok.sum())
    return exact
