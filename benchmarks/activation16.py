"""16x8 sigmoid / tanh / LeakyReLU (``s8.activation16``, issue 13): instructions per element on Cortex-M.

    python3 benchmarks/activation16.py [--out benchmarks/activation16.md]

One graph of 1024 int16 elements through each kernel (TFLite Micro's int16 parameters for several
input scales), compiled for cortex-m4 and cortex-m0plus with ``arm-none-eabi-gcc -O3`` into the bare
ELF of ``qcc --report`` (backends/cmsis/profile.py); one ``NAME_run`` call emulated with unicorn on
uniformly random int16 codes (a seeded generator) and counted instruction by instruction per layer.
Saturated codes skip the table, so the counts depend on the input scale. Flash: the 256-entry uint16
sigmoid(i/24) table (512 bytes, one per file, shared with the int8 LSTM).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZE = 1024


def graph():
    from qcc.ir.graph import Graph
    from qcc.ir.types import TensorType, UniformQuant
    from qcc.sim import s16_activation
    g = Graph("act16")
    xin = g.add_input("codes", TensorType((1, SIZE)))
    x = g.add_op("q.quantize", [xin], result_types=[TensorType((1, SIZE), "i16", UniformQuant(1.0, 0))]).result
    rows, outs = [], []

    def add(label, function, mult, shift):
        op = g.add_op("s8.activation16", [x], dict(function=function, multiplier=list(mult), shift=list(shift),
                                                     act_min=-32768, act_max=32767), name=f"a{len(rows)}")
        op.result.type = op.result.type.with_quant("i16", UniformQuant(2.0 ** -15, 0))
        outs.append(g.add_op("q.dequantize", [op.result], result_types=[TensorType((1, SIZE))]).result)
        rows.append(label)
    for s_in in (2.0 ** -12, 0.001, 0.0001):
        for function in ("logistic", "tanh"):
            add(f"{function}, input scale {s_in:g}", function, *[[v] for v in
                                                                 s16_activation.logistic_tanh_params(s_in, function)])
    for alpha in (0.1, -0.3):
        add(f"leaky_relu, alpha {alpha}", "leaky_relu", *s16_activation.leaky_relu_params(0.001, 0.0007, alpha))
    g.set_outputs(outs, [f"y{i}" for i in range(len(outs))])
    return g, rows


def count(g, target: str, codes: bytes):
    from qcc.backends.cmsis import emulator, profile
    from qcc.backends.cmsis.generate import generate
    gen = generate(g, "act16", target)
    out_sizes = [t.value.type.size * t.value.type.np_dtype.itemsize for t in gen.plan.outputs]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for rel, data in gen.files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        elf = profile.build_bare_elf(folder, gen.name, gen.target, attribution=True)
        counted = emulator.count_calls(elf, "act16_run", [codes] + [bytearray(n) for n in out_sizes], target)
    per_fn = profile.merged_by_function(counted["inclusive"])
    return [per_fn.get(info["fn"], 0) / SIZE for info in gen.layers]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    g, rows = graph()
    codes = np.random.default_rng(0).integers(-32768, 32768, SIZE).astype(np.int16).tobytes()
    cols = {t: count(g, t, codes) for t in ("cortex-m4", "cortex-m0plus")}
    lines = ["| kernel | cortex-m4 instr/element | cortex-m0plus instr/element |", "|---|---|---|"]
    lines += [f"| {r} | {cols['cortex-m4'][i]:.1f} | {cols['cortex-m0plus'][i]:.1f} |" for i, r in enumerate(rows)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text("# 16x8 activations: instructions per element (benchmarks/activation16.py)\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
