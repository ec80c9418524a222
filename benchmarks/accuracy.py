"""Accuracy side by side: qcc's quantization schemes against onnxruntime's and TFLite's.

    python3 benchmarks/accuracy.py              # writes benchmarks/accuracy.md and prints it
    python3 benchmarks/accuracy.py --digits-only -o /tmp/acc.md

For every model (examples/digits, and the float ic_resnet8 / kws_dscnn under
../shared/models when present) one row per scheme, each run on the same
evaluation inputs:

- float: the float ONNX model in onnxruntime, the reference of every other row;
- qcc qmn q7 / q15: ``qcc.tools.compile.lower(scheme="qmn", bits=8|16)`` (Qm.n fixed
  point), run by qcc's integer simulator (``qcc.sim.interpreter.run_batched`` with
  the qnn kernels of ``qcc.sim.qmn``: the emitted C equals it bit for bit);
- qcc int8: ``lower(scheme="int8")``, the ``int8-calibrated`` pipeline (TFLite-style
  affine int8, weights per output channel), run by the s8 simulator;
- onnxruntime int8: ``onnxruntime.quantization.quantize_static`` on the same
  calibration samples (QDQ format, per_channel=True, activations and weights
  QInt8, MinMax calibration), run by onnxruntime;
- TFLite int8 (shared models only): the published full-int8 model
  (``*_int8_qdq.onnx``) run by qcc's s8 simulator, which reproduces TFLite Micro
  bit for bit (checked here against ``golden_int8.npz`` ``output_tflm``), on the
  int8 golden inputs; its float reference is the float model on those inputs
  dequantized, ``x = (q - zp) * scale``.

Columns, over N evaluation samples with float outputs ``f`` and dequantized
quantized outputs ``y`` (each [N, classes])::

    test accuracy   = #{argmax y_i == label_i}          (digits: test.npz labels)
    top-1 agreement = #{argmax y_i == argmax f_i}
    SQNR            = 10 log10(sum f^2 / sum (f - y)^2) dB   (inf when y == f)
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = Path(os.environ.get("QCC_MODELS", REPO.parent / "shared" / "models"))
DIGITS = REPO / "examples" / "digits"

# (row label, scheme, bits) of qcc's own variants, in table order.
QCC_VARIANTS = (("qcc qmn q7", "qmn", 8), ("qcc qmn q15", "qmn", 16), ("qcc int8 per-channel", "int8", 8))
ORT_LABEL = "onnxruntime quantize_static int8"
TFLITE_LABEL = "TFLite int8 model (== TFLite Micro)"


@dataclass
class Case:
    """One model: its float ONNX, calibration and evaluation samples (leading sample axis)."""
    name: str
    model: Path
    calib: np.ndarray
    inputs: np.ndarray
    labels: Optional[np.ndarray] = None
    int8_model: Optional[Path] = None       # the published int8 QDQ model, when there is one
    int8_golden: Optional[Path] = None      # its golden_int8.npz
    notes: tuple = ()


@dataclass
class Row:
    model: str
    scheme: str
    samples: int
    correct: Optional[int]      # against labels; None without labels
    agree: Optional[int]        # top-1 agreement with the float reference; None for the reference itself
    sqnr_db: Optional[float]
    seconds: float
    note: str = ""


def digits_case() -> Case:
    test = np.load(DIGITS / "test.npz")
    return Case("digits", DIGITS / "digits.onnx", np.load(DIGITS / "calib.npz")["input"], test["input"],
                labels=test["labels"])


def shared_cases(models: Path = MODELS) -> List[Case]:
    ic, kws = models / "ic_resnet8", models / "kws_dscnn"
    ic_inputs = np.load(ic / "golden_float.npz")["input"]
    return [
        Case("ic_resnet8", ic / "ic_resnet8_float.onnx", ic_inputs, ic_inputs,
             int8_model=ic / "ic_resnet8_int8_qdq.onnx", int8_golden=ic / "golden_int8.npz",
             notes=("calibrated and evaluated on the same 20 `golden_float.npz` inputs (1 real CIFAR-10 image, "
                    "9 smooth random, 10 noise): calibration and evaluation inputs coincide, so the ranges cover "
                    "the evaluation data exactly and the qcc and onnxruntime rows are optimistic (the TFLite "
                    "model was calibrated by MLPerf Tiny on its own data)",)),
        Case("kws_dscnn", kws / "kws_dscnn_float.onnx", np.load(kws / "mfcc_real_float.npy"),
             np.load(kws / "golden_float.npz")["input"],
             int8_model=kws / "kws_dscnn_int8_qdq.onnx", int8_golden=kws / "golden_int8.npz",
             notes=("calibrated on the 22 MFCCs of `mfcc_real_float.npy`, evaluated on the 20 "
                    "`golden_float.npz` inputs; 19 of those are calibration samples rounded to the int8 model's "
                    "input grid (max difference 0.29 = half its input scale 0.585), so here too calibration and "
                    "evaluation data nearly coincide",)),
    ]


# ---------------------------------------------------------------- runners
def _batch(x: np.ndarray, shape) -> np.ndarray:
    """Samples [N, ...] reshaped to [N, *input_shape] (inputs are batch 1)."""
    return np.asarray(x, dtype=np.float32).reshape(len(x), *shape)


def float_outputs(model: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    xs = _batch(x, inp.shape)
    return np.concatenate([sess.run(None, {inp.name: s})[0].reshape(1, -1) for s in xs])


def qcc_outputs(model: Path, calib: np.ndarray, x: np.ndarray, scheme: str, bits: int) -> np.ndarray:
    """Quantize with qcc's driver pipeline, then run the integer simulator on ``x``."""
    import qcc
    import qcc.sim.qmn  # noqa: F401  (qnn kernels)
    import qcc.sim.s8  # noqa: F401  (s8 kernels)
    from qcc.tools.compile import lower
    from qcc.sim.interpreter import run_batched
    graph = qcc.load_onnx(str(model))
    inp = graph.inputs[0]
    with tempfile.TemporaryDirectory() as tmp:
        # The calibration file keyed by the graph's input name (golden_float.npz keys it `input`).
        path = Path(tmp) / "calib.npz"
        np.savez(path, **{inp.name: _batch(calib, inp.shape)})
        lower(graph, calib=str(path), bits=bits, scheme=scheme, act_max={}, model_path=str(model))
    out = run_batched(graph, {inp.name: _batch(x, inp.shape)})[graph.output_names[0]]
    return np.asarray(out, dtype=np.float32).reshape(len(x), -1)


def ort_outputs(model: Path, calib: np.ndarray, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        """The calibration samples, one feed dict at a time."""

        def __init__(self, name: str, samples: np.ndarray):
            self._it = iter([{name: s} for s in samples])

        def get_next(self):
            return next(self._it, None)

    inp = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(model), str(out), Reader(inp.name, _batch(calib, inp.shape)),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        xs = _batch(x, inp.shape)
        return np.concatenate([sess.run(None, {inp.name: s})[0].reshape(1, -1) for s in xs])


def tflite_int8(case: Case):
    """(dequantized int8 outputs, float outputs on the dequantized inputs, bit-exact count vs TFLite Micro)."""
    import qcc
    import qcc.sim.qmn  # noqa: F401
    import qcc.sim.s8  # noqa: F401
    from qcc.tools.compile import lower_qdq
    from qcc.sim.interpreter import run_batched
    golden = np.load(case.int8_golden)
    graph = qcc.load_onnx(str(case.int8_model))
    lower_qdq(graph, scheme="int8", model_path=str(case.int8_model))
    inp = graph.inputs[0]
    q_in = golden["input"]
    q_out = run_batched(graph, {inp.name: q_in.reshape(len(q_in), *inp.shape)})[graph.output_names[0]]
    q_out = np.asarray(q_out).reshape(len(q_in), -1)
    exact = int(sum(np.array_equal(a, b) for a, b in zip(q_out, golden["output_tflm"].reshape(len(q_in), -1))))
    x = (q_in.astype(np.float32) - np.float32(golden["input_zero_point"])) * np.float32(golden["input_scale"])
    y = (q_out.astype(np.float32) - np.float32(golden["output_zero_point"])) * np.float32(golden["output_scale"])
    return y, float_outputs(case.model, x), exact


# ---------------------------------------------------------------- metrics
def sqnr_db(ref: np.ndarray, y: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - y.astype(np.float64)) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(signal / noise)


def make_row(case: Case, scheme: str, ref: np.ndarray, y: np.ndarray, seconds: float,
             labels: Optional[np.ndarray], note: str = "", reference: bool = False) -> Row:
    top = y.argmax(axis=1)
    return Row(case.name, scheme, len(y),
               correct=None if labels is None else int((top == labels).sum()),
               agree=None if reference else int((top == ref.argmax(axis=1)).sum()),
               sqnr_db=None if reference else sqnr_db(ref, y), seconds=seconds, note=note)


def _timed(fn: Callable[[], np.ndarray]):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def evaluate(case: Case, log=None) -> List[Row]:
    """Every scheme's row for one model."""
    def step(label, fn):
        out, dt = _timed(fn)
        if log:
            log(f"{case.name}: {label} ({dt:.1f} s)")
        return out, dt

    ref, dt = step("float", lambda: float_outputs(case.model, case.inputs))
    rows = [make_row(case, "float (reference)", ref, ref, dt, case.labels, reference=True)]
    for label, scheme, bits in QCC_VARIANTS:
        y, dt = step(label, lambda: qcc_outputs(case.model, case.calib, case.inputs, scheme, bits))
        rows.append(make_row(case, label, ref, y, dt, case.labels))
    y, dt = step(ORT_LABEL, lambda: ort_outputs(case.model, case.calib, case.inputs))
    rows.append(make_row(case, ORT_LABEL, ref, y, dt, case.labels))
    if case.int8_model is not None:
        (y, fref, exact), dt = step(TFLITE_LABEL, lambda: tflite_int8(case))
        rows.append(make_row(case, TFLITE_LABEL, fref, y, dt, None,
                             note=f"bit-exact with TFLite Micro on {exact}/{len(y)}"))
    return rows


# ---------------------------------------------------------------- the report
def _count(n: Optional[int], total: int) -> str:
    return "n/a" if n is None else f"{n}/{total} ({100.0 * n / total:.2f}%)"


def _db(v: Optional[float]) -> str:
    if v is None:
        return "(reference)"
    return "inf" if v == float("inf") else f"{v:.1f}"


def markdown(rows: List[Row], cases: List[Case]) -> str:
    import onnxruntime as ort
    lines = ["# Accuracy: qcc's quantization schemes side by side", "",
             "Generated by `python3 benchmarks/accuracy.py`; every quantized row is compared with the float "
             "model (onnxruntime) on the same inputs. Test accuracy needs labels (digits only); top-1 "
             "agreement and output SQNR (dB, on the dequantized outputs) are against the float model.", "",
             "| model | scheme | samples | test accuracy | top-1 agreement with float | output SQNR vs float (dB) "
             "| note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        agree = "(reference)" if r.agree is None else _count(r.agree, r.samples)
        lines.append(f"| {r.model} | {r.scheme} | {r.samples} | {_count(r.correct, r.samples)} | {agree} "
                     f"| {_db(r.sqnr_db)} | {r.note} |")
    lines += ["", "## Notes", "",
              "- qcc qmn q7 / q15: `qcc.tools.compile.lower(scheme='qmn', bits=8|16)`, the driver's `qmn` pipeline "
              "(percentile 99.99 calibration, per-channel weight formats, format search), run by qcc's integer "
              "simulator (the emitted C equals it bit for bit).",
              "- qcc int8 per-channel: `lower(scheme='int8')`, the `int8-calibrated` pipeline (TFLite rules: "
              "MinMax asymmetric int8 activations, symmetric per-output-channel int8 weights, int32 bias, "
              "softmax output 1/256 : -128), run by the s8 simulator.",
              f"- {ORT_LABEL}: onnxruntime {ort.__version__} `quantize_static` on the same calibration samples "
              "through a CalibrationDataReader: QDQ format, per_channel=True, activations **QInt8** (signed), "
              "weights QInt8, default MinMax calibration, no pre-processing; run by onnxruntime's CPU provider.",
              f"- {TFLITE_LABEL}: the published full-int8 MLPerf Tiny model (`*_int8_qdq.onnx`, calibrated by "
              "its authors on their own data) run by qcc's s8 simulator on the 20 int8 golden inputs of "
              "`golden_int8.npz`; its float reference is the float model on those inputs dequantized with "
              "`input_scale`/`input_zero_point` (the same values as `golden_float.npz` `input` to float "
              "rounding), and its outputs are dequantized with `output_scale`/`output_zero_point`. The note "
              "column counts outputs equal to TFLite Micro's `output_tflm` bit for bit. digits has no "
              "TFLite model.",
              "- ic_resnet8 and kws_dscnn end in softmax: SQNR is measured on the probabilities; their "
              "golden inputs have no labels (test accuracy n/a)."]
    for case in cases:
        lines += [f"- {case.name}: {n}" for n in case.notes]
    lines += ["- digits: calibrated on the 200 samples of `calib.npz`, evaluated on the 360 labeled "
              "samples of `test.npz` (float accuracy 357/360 per examples/digits/README.md)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="qcc quantization accuracy against float, onnxruntime and TFLite.")
    p.add_argument("-o", "--output", default=str(HERE / "accuracy.md"), help="the Markdown file to write")
    p.add_argument("--digits-only", action="store_true", help="only examples/digits (no shared models)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cases = [digits_case()]
    if not args.digits_only:
        if (MODELS / "ic_resnet8").is_dir() and (MODELS / "kws_dscnn").is_dir():
            cases += shared_cases()
        else:
            print(f"accuracy: {MODELS} has no ic_resnet8/kws_dscnn: digits only", file=sys.stderr)
    rows: List[Row] = []
    for case in cases:
        rows += evaluate(case, log=lambda m: print(f"accuracy: {m}", file=sys.stderr))
    text = markdown(rows, cases)
    Path(args.output).write_text(text)
    print(text, end="")
    print(f"accuracy: wrote {args.output} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
