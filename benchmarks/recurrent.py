"""Instructions per time step of recurrent (LSTM / GRU) KWS classifiers on Cortex-M4: ``python3 benchmarks/recurrent.py``.

Models (tests/recurrent_models.py, random weights at PyTorch's scale): 49 MFCC frames of 10
features -> LSTM or GRU (linear_before_reset = 1, as PyTorch exports) with H units -> FC 12,
calibrated on the 22 real clips of the shared KWS data. Each is compiled with the ``qcc``
command twice per scheme (q7, q15, int8): whole sequence per call, and ``--stream-state`` (one
frame per call). Both builds go through run.py's bare-ELF path and one ``NAME_run`` call is
emulated with unicorn (instruction counts, repeatable to the instruction); the outputs are
checked against the simulator bit for bit (the streamed call on the first frame from the
reset state). MACs per step: 4H(I + H) for the LSTM, 3H(I + H) for the GRU; the floor is MACs/2.
Prints a markdown table (pasted into results.md) and writes it to --output when given.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


sys.path.insert(0, str(HERE))
import run as bench  # noqa: E402  (benchmarks/run.py: the shared build-and-count machinery)


SCHEMES = {"q7": ["--bits", "8"], "q15": ["--bits", "16"], "int8": ["--scheme", "int8"]}


def with_peepholes(model: onnx.ModelProto, hidden: int, seed: int = 3) -> onnx.ModelProto:
    """The classifier's LSTM with random peepholes P (uniform +-1/sqrt(H), PyTorch's scale)."""
    bound = 1 / np.sqrt(hidden)
    p = np.random.default_rng(seed).uniform(-bound, bound, (1, 3 * hidden)).astype(np.float32)
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    node.input.extend([""] * (7 - len(node.input)) + ["P"])
    model.graph.initializer.append(onnx.numpy_helper.from_array(p, "P"))
    return model


def measure(kind: str, hidden: int, scheme: str, workdir: Path, clips: np.ndarray, peepholes: bool = False) -> dict:
    from recurrent_models import classifier_model
    name = f"{kind.lower()}{'p' if peepholes else ''}{hidden}_{scheme}"
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    model = classifier_model(kind, hidden=hidden, linear_before_reset=1)
    onnx.save(with_peepholes(model, hidden) if peepholes else model, folder / "model.onnx")
    np.save(folder / "calib.npy", clips)
    row = {"model": f"{kind}{' + peepholes' if peepholes else ''} H={hidden}", "scheme": scheme, "steps": 49}
    for mode, extra in (("whole", []), ("stream", ["--stream-state"])):
        out = folder / mode
        cmd = [*bench._qcc_command(), str(folder / "model.onnx"), "-o", str(out / f"{name}.c"), "--target",
               "cortex-m4", "--calib", str(folder / "calib.npy"), *SCHEMES[scheme], "--emit-ir",
               str(out / f"{name}.qir"), *extra]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        graph = bench.load_lowered(out, name)
        sample = clips[0][:, :1] if mode == "stream" else clips[0]
        ins, expected, _ = bench.simulate(graph, sample)
        elf = bench.build_elf(out, name, "cortex-m4")
        counted = bench.count_run(elf, name, [a.tobytes() for a in ins], [a.nbytes for a in expected], "cortex-m4")
        row[f"{mode}_instructions"] = counted["total"]
        row[f"{mode}_exact"] = counted["outputs"] == [a.tobytes() for a in expected]
        row[f"{mode}_arena"] = int(next(line.split()[-1] for line in (out / f"{name}.h").read_text().splitlines()
                                        if "_ARENA_SIZE" in line and line.startswith("#define")))
    gates = 4 if kind == "LSTM" else 3
    row["macs_per_step"] = gates * hidden * (10 + hidden)
    return row


def render(rows) -> str:
    lines = ["| model | scheme | MACs / step | instructions / step (whole sequence / 49) | instr/MAC | "
             "x floor (MACs/2) | one streamed call (1 frame + FC) | arena whole / streamed (bytes) | "
             "ELF == simulator |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        per_step = r["whole_instructions"] / r["steps"]
        lines.append(
            f"| {r['model']} | {r['scheme']} | {r['macs_per_step']:,} | {per_step:,.0f} | "
            f"{per_step / r['macs_per_step']:.2f} | {per_step / (r['macs_per_step'] / 2):.2f} | "
            f"{r['stream_instructions']:,} | {r['whole_arena']:,} / {r['stream_arena']:,} | "
            f"{'yes' if r['whole_exact'] and r['stream_exact'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=str(HERE / "build" / "recurrent"))
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("-o", "--output", help="also write the table here")
    p.add_argument("--schemes", default="q7,q15,int8", help="comma-separated: q7, q15, int8")
    p.add_argument("--peepholes", action="store_true", help="only the LSTM, with peepholes (ONNX input P)")
    args = p.parse_args(argv)
    clips = np.load(bench.MODELS / "kws_dscnn" / "mfcc_real_float.npy").reshape(22, 1, 49, 10).astype(np.float32)
    kinds = ("LSTM",) if args.peepholes else ("LSTM", "GRU")
    rows = [measure(kind, args.hidden, scheme, Path(args.workdir), clips, args.peepholes) for kind in kinds
            for scheme in args.schemes.split(",")]
    table = render(rows)
    print(table)
    if args.output:
        Path(args.output).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
