"""Row-streamed execution (issue 15): arena, instructions and code size with and without streaming.

    python3 benchmarks/streaming.py [--out benchmarks/streaming.md]

For each model: the memory plan with streaming (the default ``--max-recompute 10%``)
and without (``0``), both compiled for cortex-m4 with ``arm-none-eabi-gcc -O3``
into the bare ELF of ``qcc --report`` (profile.py), one ``NAME_run`` call
emulated with unicorn on a real sample (a golden input when the model has
one, else zeros) and counted instruction by instruction; the outputs of the
two builds are compared byte for byte. Arena = NAME_ARENA_SIZE (input and
output included); .text from the ELF.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = Path("/work/shared/models")
sys.path.insert(0, str(ROOT / "tests"))


def _lower(path, pipeline: str, calib=None):
    import qcc
    import qcc.passes  # noqa: F401
    g = qcc.load_onnx(str(path))
    pm = qcc.PassManager.parse(pipeline)
    if calib is not None:
        for p in pm.passes:
            p.context = {"calib": str(calib)}
    pm.run(g)
    return g


def models(tmp: Path):
    """(name, scheme, lowered graph, quantized sample or None, TFLite Micro arena or None)."""
    from stream_models import calibration, fc_autoencoder, mobilenet_v1_025
    import onnx
    out = []
    for name, tflm in (("ic_resnet8", 49152), ("kws_dscnn", 16000)):
        gold = np.load(MODELS / name / "golden_int8.npz")
        out.append((name, "int8", _lower(MODELS / name / f"{name}_int8_qdq.onnx", "int8"), gold["input"][0], tflm))
        floats = np.load(MODELS / name / "golden_float.npz")["input"]
        calib = tmp / f"{name}_calib.npy"
        np.save(calib, (np.load(MODELS / name / "mfcc_real_float.npy") if name == "kws_dscnn" else floats)
                .astype(np.float32))
        out.append((name, "qmn", _lower(MODELS / name / f"{name}_float.onnx", "qmn", calib), None, tflm))
    for name, model, shape in (("mobilenet_v1_025", mobilenet_v1_025(), (96, 96, 3)),
                               ("fc_autoencoder", fc_autoencoder(), (640,))):
        onnx.save(model, tmp / f"{name}.onnx")
        np.savez(tmp / f"{name}.npz", x=calibration(shape, 8)[:, None])
        out.append((name, "int8", _lower(tmp / f"{name}.onnx", "int8-calibrated", tmp / f"{name}.npz"), None, None))
    return out


def measure(graph, sample, folder: Path, max_recompute: float) -> dict:
    from qcc.backends.cmsis import generate
    from qcc.backends.cmsis import emulator
    from qcc.backends.cmsis.plan import memory_report
    from qcc.backends.cmsis.profile import build_bare_elf
    from qcc.fileio import write_files
    from elftools.elf.elffile import ELFFile
    gen = generate(graph, "net", "cortex-m4", max_recompute=max_recompute)
    write_files({folder / k: v for k, v in gen.files.items()})
    elf = build_bare_elf(folder, "net", "cortex-m4")
    plan = gen.plan
    x = plan.inputs[0].value
    data = (np.asarray(sample).astype(x.type.np_dtype).tobytes() if sample is not None
            else bytes(x.type.size * x.type.np_dtype.itemsize))
    y = plan.outputs[0].value
    counted = emulator.count_calls(elf, "net_run", [data, bytearray(y.type.size * y.type.np_dtype.itemsize)],
                                   "cortex-m4")
    with open(elf, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")["sh_size"]
    st = memory_report(plan)["streaming"]
    return {"arena": plan.arena_size, "instructions": counted["total"], "text": text, "out": counted["buffers"][1],
            "chains": st["chains"], "extra": st["extra_mac_ratio"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "streaming.md"))
    ns = p.parse_args(argv)
    rows = ["| model | scheme | arena streamed | arena whole-tensor | TFLite Micro activations | chains (layers, band rows, halos) "
            "| repeated MACs | instructions streamed | instructions whole | extra instructions | .text streamed "
            "| .text whole | same output |", "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    with tempfile.TemporaryDirectory(prefix="qcc-stream-") as tmp:
        tmp = Path(tmp)
        for name, scheme, graph, sample, tflm in models(tmp):
            s = measure(graph, sample, tmp / f"{name}_{scheme}_s", 0.10)
            w = measure(graph, sample, tmp / f"{name}_{scheme}_w", 0.0)
            chains = "; ".join(f"{len(c['layers'])}, {c['band_rows']}, {c['mode']}" for c in s["chains"]) or "-"
            rows.append(f"| {name} | {scheme} | {s['arena']:,} | {w['arena']:,} | {f'{tflm:,}' if tflm else '-'} | "
                        f"{chains} | {100 * s['extra']:.1f}% | {s['instructions']:,} | {w['instructions']:,} | "
                        f"{100 * (s['instructions'] / w['instructions'] - 1):+.1f}% | {s['text']:,} | {w['text']:,} | "
                        f"{'yes' if s['out'] == w['out'] else 'NO'} |")
            print(rows[-1], flush=True)
    Path(ns.out).write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
