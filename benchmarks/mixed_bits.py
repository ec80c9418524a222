"""qcc --bits mixed against all-8 and all-16 on keyword spotters: accuracy, SQNR, flash, arena.

    python benchmarks/mixed_bits.py [--models dscnn,cnn,dnn144,...] [--out FOLDER]

Models: the MLPerf Tiny DS-CNN (trained; ../shared/models/kws_dscnn) and ML-KWS-shaped DNN-S/M/L
(3 FC of 144/256/436) and CNN (tests/kws_models.py; synthetic weights with trained-like statistics).
Data: the 22 real speech MFCC clips (mfcc_real_float.npy), used both to calibrate and to score.

Per build: top-1 agreement of the integer simulator with the float model over the 22 clips,
output SQNR (dB, softmax outputs), flash = text + data of libNAME.a built by the generated Makefile
(arm-none-eabi-gcc -O3, cortex-m4: code + weights), and the planned arena. Builds: --bits 8, 16,
mixed (default: the knee of the promotion curve, at most within 1 dB of all-16), and mixed with
--max-flash at 75% of the all-16 estimate the search reports.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
SHARED = (REPO / ".." / "shared" / "models" / "kws_dscnn").resolve()
CLIPS = SHARED / "mfcc_real_float.npy"


def model_path(name: str, folder: Path) -> Path:
    if name == "dscnn":
        return SHARED / "kws_dscnn_float.onnx"
    import kws_models
    model = kws_models.cnn() if name == "cnn" else kws_models.dnn(int(name[3:]))
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    return path


def lib_flash(folder: Path, name: str) -> int:
    subprocess.run(["make", "-s", "-C", str(folder), "all"], check=True, capture_output=True)
    out = subprocess.run(["arm-none-eabi-size", "-t", str(folder / f"lib{name}.a")], check=True,
                         capture_output=True, text=True).stdout.splitlines()[-1].split()
    return int(out[0]) + int(out[1])


def measure(model: Path, folder: Path, **options) -> dict:
    from qcc.frontend.loader import load_model
    from qcc.ir.parser import parse_file
    from qcc.sim.interpreter import run_graph
    from qcc.tools.compile import compile_model
    import qcc.sim.qmn  # noqa: F401
    gen = compile_model(str(model), str(folder / "net.c"), "cortex-m4", calib=str(CLIPS),
                        emit_ir=str(folder / "net.qir"), **options)
    lowered, ref = parse_file(str(folder / "net.qir")), load_model(str(model))
    clips = np.load(CLIPS)
    agree, signal, noise = 0, 0.0, 0.0
    for x in clips:
        q = next(iter(run_graph(lowered, {"input_1": x[None]}).values())).astype(np.float64)
        f = next(iter(run_graph(ref, {"input_1": x[None]}).values())).astype(np.float64)
        agree += int(np.argmax(q) == np.argmax(f))
        signal += float(np.sum(f * f))
        noise += float(np.sum((f - q) ** 2))
    m = getattr(gen, "mixed_bits", None) or {}
    wide = sum(1 for layer in m.get("layers", []) if layer["bits"] == 16)
    return {"agree": agree, "clips": len(clips), "sqnr": 10 * np.log10(signal / noise) if noise else 999.0,
            "flash": lib_flash(folder, "net"), "arena": gen.plan.arena_size, "weights": gen.weight_bytes,
            "wide": f"{wide}/{len(m['layers'])}" if m else "", "flash_estimate": m.get("all16_flash_bytes")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="dscnn,cnn,dnn144,dnn256,dnn436")
    ap.add_argument("--out", default=None, help="keep the builds here (default: a temporary folder)")
    args = ap.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="qcc_mixed_"))
    print("| model | build | 16-bit units | top-1 agree | SQNR dB | flash B (% of all-16) | arena B |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models.split(","):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        model = model_path(name, folder)
        rows = [("--bits 8", measure(model, folder / "b8", bits=8)),
                ("--bits 16", measure(model, folder / "b16", bits=16)),
                ("--bits mixed", measure(model, folder / "mixed", bits="mixed"))]
        budget = int(0.75 * rows[2][1]["flash_estimate"])
        rows.append((f"--bits mixed --max-flash {budget}",
                     measure(model, folder / "mixed75", bits="mixed", max_flash=budget)))
        full = rows[1][1]["flash"]
        for build, r in rows:
            print(f"| {name} | `{build}` | {r['wide']} | {r['agree']}/{r['clips']} | {r['sqnr']:.2f} | "
                  f"{r['flash']:,} ({100 * r['flash'] / full:.0f}%) | {r['arena']:,} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
