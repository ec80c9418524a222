"""qcc on Arm's pretrained ML-KWS models (DNN, CNN, DS-CNN; S/M/L): q7, q15, --bits mixed, int8, 16x8.

    python benchmarks/mlkws_pretrained.py --onnx DIR --data DIR [--models DNN_S,...] [--builds q7,...]

Neither the models nor the clips are in the repository: DIR/<MODEL>.onnx are the frozen graphs of
github.com/ARM-software/ML-KWS-for-MCU (Pretrained_models/) converted with tf2onnx (input: the flat
MFCC tensor); DIR/<MODEL>_calib.npy holds calibration samples [S, 1, N] and DIR/<MODEL>_eval.npz
`x` [E, 1, N] held-out samples and `label` (the float model's top-1, so "agree" is agreement with
float). One JSON line per build: top-1 agreement and SQNR of the softmax outputs (integer simulator
== the C) against onnxruntime's float run, flash = text + data of libnet.a (the generated Makefile,
arm-none-eabi-gcc -O3, cortex-m4: code + weights), the planned arena, and for mixed the units at 16
bits and why the search stopped.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BUILDS = {"q7": {"bits": 8}, "q15": {"bits": 16}, "mixed": {"bits": "mixed"},
          "int8": {"scheme": "int8", "bits": 8}, "int16": {"scheme": "int8", "bits": 16}}


def lib_flash(folder: Path) -> int:
    subprocess.run(["make", "-s", "-C", str(folder), "all"], check=True, capture_output=True)
    out = subprocess.run(["arm-none-eabi-size", "-t", str(folder / "libnet.a")], check=True, capture_output=True,
                         text=True).stdout.splitlines()[-1].split()
    return int(out[0]) + int(out[1])


def measure(model: Path, calib: Path, data: Path, folder: Path, **options) -> dict:
    import onnxruntime as ort
    from qcc.ir.parser import parse_file
    from qcc.sim.interpreter import run_graph
    from qcc.tools.compile import compile_model
    import qcc.sim.qmn  # noqa: F401
    import qcc.sim.s8  # noqa: F401
    gen = compile_model(str(model), str(folder / "net.c"), "cortex-m4", calib=str(calib),
                        emit_ir=str(folder / "net.qir"), **options)
    lowered = parse_file(str(folder / "net.qir"))
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    agree, signal, noise, xs = 0, 0.0, 0.0, np.load(data)["x"]
    for x in xs:
        f = sess.run(None, {name: x.astype(np.float32)})[0].astype(np.float64)
        q = next(iter(run_graph(lowered, {lowered.inputs[0].name: x}).values())).astype(np.float64).reshape(f.shape)
        agree += int(np.argmax(q) == np.argmax(f))
        signal += float(np.sum(f * f))
        noise += float(np.sum((f - q) ** 2))
    r = {"agree": agree, "clips": len(xs), "sqnr": round(10 * np.log10(signal / noise), 1) if noise else 999.0,
         "flash": lib_flash(folder), "arena": gen.plan.arena_size}
    m = getattr(gen, "mixed_bits", None)
    if m:
        r.update(units=f"{sum(1 for u in m['layers'] if u['bits'] == 16)}/{len(m['layers'])}",
                 stopped_by=m.get("stopped_by"))
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--models", default="DNN_S,DNN_M,DNN_L,CNN_S,CNN_M,CNN_L,DS_CNN_S,DS_CNN_M,DS_CNN_L")
    ap.add_argument("--builds", default=",".join(BUILDS))
    ap.add_argument("--out", default=None, help="keep the builds here (default: a temporary folder)")
    args = ap.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="qcc_mlkws_"))
    for model in args.models.split(","):
        for build in args.builds.split(","):
            folder = root / model / build
            folder.mkdir(parents=True, exist_ok=True)
            r = measure(args.onnx / f"{model}.onnx", args.data / f"{model}_calib.npy",
                        args.data / f"{model}_eval.npz", folder, **BUILDS[build])
            print(json.dumps({"model": model, "build": build, **r}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
