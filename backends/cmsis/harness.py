"""Run a generated model on many samples: on the host (gcc) or in QEMU (make run).

The generated ``firmware/NAME_main.c`` reads float32 records (every input of
one sample, concatenated) and writes one output record per sample: every
output's quantized values, then every output dequantized to float32 (or only
the floats with ``--float-output``). These helpers write the input file, run
the program and parse its output file, and compute the same records with the
integer simulator, so a test or script compares them byte for byte.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from qcc.ir.graph import Graph

HOST_CFLAGS = ("-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
               "-fno-sanitize-recover=all")


@dataclass
class Outputs:
    quantized: List[np.ndarray]   # per output: [samples, *shape] integers (empty with float outputs)
    floats: List[np.ndarray]      # per output: [samples, *shape] float32


def write_samples(path: Path, graph: Graph, samples: Dict[str, np.ndarray]) -> int:
    """Float32 records for ``samples`` ({input name: [S, *shape]}); returns S."""
    arrays = [np.asarray(samples[v.name], np.float32).reshape((-1,) + v.shape) for v in graph.inputs]
    count = arrays[0].shape[0]
    flat = np.concatenate([a.reshape(count, -1) for a in arrays], axis=1)
    Path(path).write_bytes(np.ascontiguousarray(flat, "<f4").tobytes())
    return count


def read_outputs(path: Path, gen, count: int) -> Outputs:
    plan = gen.plan
    float_output = gen.float_output
    data = Path(path).read_bytes()
    qsizes = [] if float_output else [io.value.type.size * io.value.type.np_dtype.itemsize for io in plan.outputs]
    fsizes = [io.value.type.size * 4 for io in plan.outputs]
    record = sum(qsizes) + sum(fsizes)
    if len(data) != record * count:
        raise RuntimeError(f"{path}: {len(data)} bytes, expected {count} records of {record}")
    raw = np.frombuffer(data, np.uint8).reshape(count, record)
    quantized, floats, at = [], [], 0
    for io, n in zip(plan.outputs if not float_output else [], qsizes):
        dt = io.value.type.np_dtype.newbyteorder("<")
        quantized.append(raw[:, at:at + n].copy().view(dt).reshape((count,) + io.value.shape).astype(io.value.type.np_dtype))
        at += n
    for io, n in zip(plan.outputs, fsizes):
        floats.append(raw[:, at:at + n].copy().view("<f4").reshape((count,) + io.value.shape).astype(np.float32))
        at += n
    return Outputs(quantized, floats)


def simulate(graph: Graph, gen, samples: Dict[str, np.ndarray]) -> Outputs:
    """The simulator's records for the same samples (quantized API outputs and float graph outputs)."""
    import qcc.sim.qmn  # noqa: F401  (registers the integer kernels)
    from qcc.sim.interpreter import run_graph
    from qcc.sim.qmn import dequantize_array
    count = np.asarray(samples[graph.inputs[0].name]).shape[0]
    quantized = [[] for _ in gen.plan.outputs]
    floats = [[] for _ in gen.plan.outputs]
    for i in range(count):
        env = run_graph(graph, {v.name: np.asarray(samples[v.name])[i] for v in graph.inputs}, keep=True)
        for j, io in enumerate(gen.plan.outputs):
            q = env[io.value]
            quantized[j].append(q)
            # Without float outputs the C stops before a float epilogue: its floats dequantize q.
            g = env[io.graph_value] if gen.float_output or not io.epilogue else env[io.dequantized]
            floats[j].append(g if g.dtype == np.float32 else dequantize_array(q, io.value.type.quant)
                             if io.value.type.quant is not None else q.astype(np.float32))
    return Outputs([np.stack(q) for q in quantized] if not gen.float_output else [],
                   [np.stack(f).astype(np.float32) for f in floats])


def build_host(folder: Path, name: str, cc: str = "gcc", extra: Sequence[str] = HOST_CFLAGS) -> Path:
    """Compile the model and its harness for this machine (sanitizers on by default)."""
    folder = Path(folder)
    exe = folder / f"{name}_host"
    cmd = [cc, *extra, "-I", str(folder), "-I", str(folder / "firmware"), str(folder / f"{name}.c"),
           str(folder / f"{name}_weights.c"), str(folder / "firmware" / f"{name}_main.c"),
           str(folder / "firmware" / "semihost_io.c"), "-o", str(exe), "-lm"]  # -lm: float epilogues
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"host build failed:\n{' '.join(cmd)}\n{proc.stderr}")
    return exe


def run_host(exe: Path, inputs: Path, outputs: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(exe), str(inputs), str(outputs)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{exe} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_qemu(folder: Path, inputs: Path, outputs: Path, timeout: float = 600,
             make_vars: Sequence[str] = ()) -> float:
    """`make run` in the output folder (builds the firmware first); returns QEMU's wall time in seconds.

    The firmware's semihosting command line holds 255 characters, so the files
    are named relative to the folder (where QEMU runs).
    """
    folder = Path(folder).resolve()
    inputs, outputs = (Path(p).resolve() for p in (inputs, outputs))
    rel_in, rel_out = (str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p) for p in (inputs, outputs))
    build = subprocess.run(["make", "-s", "-C", str(folder), *make_vars, _elf(folder)],
                           capture_output=True, text=True, timeout=timeout)
    if build.returncode:
        raise RuntimeError(f"firmware build failed:\n{build.stdout}\n{build.stderr}")
    start = time.perf_counter()
    proc = subprocess.run(["make", "-s", "-C", str(folder), *make_vars, "run",
                           f"INPUT={rel_in}", f"OUTPUT={rel_out}"],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"QEMU run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds


def _elf(folder: Path) -> str:
    for line in (Path(folder) / "Makefile").read_text().splitlines():
        if line.startswith("ELF "):
            return line.split(":=", 1)[1].strip()
    raise RuntimeError(f"{folder}/Makefile has no ELF variable")


def tools_missing(*tools: str) -> Optional[str]:
    missing = [t for t in tools if shutil.which(t) is None]
    return ", ".join(missing) if missing else None
