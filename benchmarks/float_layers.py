"""qcc --float-layers on the MLPerf Tiny DS-CNN: what keeping the worst layer in float buys and costs.

    python benchmarks/float_layers.py [--out FOLDER] [--layers NAME,...]

The worst layer is picked from the compile report as a user would: the integer layer with the lowest
own SQNR (the layer alone, on the float model's inputs to it), unless --layers names others.
Per build (cortex-m4, -O3): top-1 agreement of the simulator with the float model over the 22 real
speech clips (mfcc_real_float.npy, also the calibration data), output SQNR (dB, softmax outputs),
flash = text + data of libNAME.a, the planned arena, and the instructions of one NAME_run call
(unicorn, all-zero input; the float conv's instruction count does not depend on the data).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from mixed_bits import SHARED, measure  # noqa: E402


def instructions(folder: Path) -> int:
    from qcc.backends.cmsis import profile
    from qcc.backends.cmsis.generate import generate
    from qcc.ir.parser import parse_file
    gen = generate(parse_file(str(folder / "net.qir")), "net", "cortex-m4")
    return profile.layer_cycles(gen)["instructions"]


def worst_layer(folder: Path) -> str:
    """The layer of the report's quantization table (report.md) with the lowest own SQNR."""
    rows = []
    for line in (folder / "report.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0].startswith("`") and cells[7] not in ("-", "own SQNR dB"):
            rows.append((float(cells[7]), cells[0].strip("`")))
    return min(rows)[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="keep the builds here (default: a temporary folder)")
    ap.add_argument("--layers", default="", help="layers to keep in float (default: the report's worst)")
    args = ap.parse_args(argv)
    root = Path(args.out or tempfile.mkdtemp(prefix="qcc_float_layers_"))
    model = SHARED / "kws_dscnn_float.onnx"
    rows = []
    for bits in (8, 16):
        base = root / f"q{bits}"
        r = measure(model, base, bits=bits, report=str(base / "report.md"))
        layers = [n for n in args.layers.split(",") if n] or [worst_layer(base)]
        rows.append((f"q{bits - 1}", r, instructions(base)))
        kept = root / f"q{bits}_float"
        r = measure(model, kept, bits=bits, float_layers=layers)
        rows.append((f"q{bits - 1} --float-layers {','.join(layers)}", r, instructions(kept)))
    print("| build | top-1 agree | SQNR dB | flash B | arena B | instructions |")
    print("|---|---:|---:|---:|---:|---:|")
    for build, r, n in rows:
        print(f"| `{build}` | {r['agree']}/{r['clips']} | {r['sqnr']:.2f} | {r['flash']:,} | {r['arena']:,} | {n:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
