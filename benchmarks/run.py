"""qcc benchmark harness: one command, ``python3 benchmarks/run.py``, writes benchmarks/results.md.

For every model it runs the ``qcc`` command per target, builds the emitted C
with arm-none-eabi-gcc -O3 into a bare ELF (entry = NAME_run, no startup code,
no semihosting: only what NAME_run reaches is linked), and measures:

- instructions of one NAME_run call on a real sample, by emulation
  (count_instructions.py: unicorn + capstone, machine-independent and repeatable),
  and estimated cycles of the same executed blocks with the target's timing
  model (qcc.backends.cmsis.cycles: TRM tables, zero wait states), in ms at 120 MHz;
  per layer from a second build in which gcc keeps each layer a function
  (``ATTRIBUTION_FLAGS``), because at plain -O3 gcc inlines the static layer
  functions into NAME_run;
- MACs of the lowered graph: conv2d = |y| * KH * KW * Cin/group, dense = |y| * K
  (depthwise is conv2d with Cin/group = 1); the floor MACs/2 (SMLAD does 2 MACs);
- flash = .text + .rodata + .data load image of the bare ELF (pyelftools);
- RAM = NAME_ARENA_SIZE (inside .bss), .bss, .data and the stack high-water mark:
  the emulator's stack is filled with a word pattern before the call, and the
  deepest word no longer holding it after the call bounds the stack used;
- the ELF's outputs against the integer simulator on that sample (bit for bit),
  and accuracy: the simulator (qcc.sim.interpreter.run_graph on the lowered IR from
  --emit-ir) on every golden sample against the float model (top-1 agreement),
  and the digits test-set accuracy;
- compile time: wall-clock of the qcc command (a report column only).

``--quick`` runs the digits model on cortex-m4 only (the smoke test uses it).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from qcc.backends.cmsis import profile

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODELS = Path(os.environ.get("QCC_MODELS", REPO.parent / "shared" / "models"))
DIGITS = REPO / "examples" / "digits"
# The bare-ELF build is the cmsis back end's (qcc --report builds the same way for its per-layer cycles).
CC, CFLAGS, ATTRIBUTION_FLAGS = profile.CC, profile.CFLAGS, profile.ATTRIBUTION_FLAGS
BuildError = profile.BuildError
build_elf = profile.build_bare_elf  # (folder, name, target, attribution=False) -> folder/build-{o3|layers}/NAME.elf
# Emulated with unicorn (instructions and estimated cycles), then the M55 in QEMU (instructions only:
# unicorn has no M55 and no Helium; qemu_count.py).
UNICORN_TARGETS = ("cortex-m4", "cortex-m0plus", "cortex-m7")
QEMU_TARGETS = ("cortex-m55",)
TARGETS = UNICORN_TARGETS + QEMU_TARGETS
STACK_FILL = 0xC0DEC0DE


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


counter = _load("qcc_bench_count_instructions", HERE / "count_instructions.py")
tiny_models = _load("qcc_bench_tiny_models", HERE / "tiny_models.py")
report_md = _load("qcc_bench_report_md", HERE / "report_md.py")
qemu_count = _load("qcc_bench_qemu_count", HERE / "qemu_count.py")
layer_rows, _layer_counts = report_md.layer_rows, report_md._layer_counts  # the harness and tests use them
CLOCK_MHZ = report_md.CLOCK_MHZ


# ---------------------------------------------------------------- the models
@dataclass
class ModelSpec:
    """One benchmark row: how to compile the model and what to compare it with."""
    name: str                      # C name / output stem
    model: Path
    scheme: str                    # qcc --scheme
    calib: Optional[Callable[[], np.ndarray]]  # float calibration inputs (None: pre-quantized)
    samples: Callable[[], np.ndarray]          # golden inputs, one per leading index
    reference: Callable[[], np.ndarray]        # reference outputs on those samples
    reference_name: str                         # what `reference` is
    labels: Optional[Callable[[], np.ndarray]] = None
    counted: int = 0                            # index of the sample whose call is counted
    anchor_instructions: Optional[float] = None  # CMSIS-NN v7 on M4 (DESIGN.md)
    anchor_activation_bytes: Optional[int] = None  # TFLite Micro planner
    exact_reference: bool = False               # reference is integer and must match bit for bit
    mlperf_task: Optional[str] = None            # "kws" / "ic" / "vww": published MLPerf Tiny latencies to compare with
    optimize: str = "speed"                      # qcc --optimize
    accuracy: bool = True                        # measure accuracy (the seeded tiny_models.py builds: no)
    qcc_args: tuple = ()                         # extra qcc options (e.g. ("--max-recompute", "0"))


def _npz(path: Path, key: str) -> Callable[[], np.ndarray]:
    return lambda: np.load(path)[key]


def _onnx_outputs(model: Path, samples: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    def run():
        import onnxruntime
        sess = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return np.concatenate([sess.run(None, {name: x.astype(np.float32)})[0] for x in samples()])
    return run


def model_specs(quick: bool) -> List[ModelSpec]:
    digits_test = _npz(DIGITS / "test.npz", "input")
    specs = [ModelSpec(
        "digits", DIGITS / "digits.onnx", "qmn", _npz(DIGITS / "calib.npz", "input"), digits_test,
        _onnx_outputs(DIGITS / "digits.onnx", digits_test), "float model (onnxruntime)",
        labels=_npz(DIGITS / "test.npz", "labels"))]
    if quick:
        return specs
    ic, kws = MODELS / "ic_resnet8", MODELS / "kws_dscnn"
    specs += [
        ModelSpec("ic_resnet8", ic / "ic_resnet8_float.onnx", "qmn", _npz(ic / "golden_float.npz", "input"),
                  _npz(ic / "golden_float.npz", "input"), _npz(ic / "golden_float.npz", "onnx_output"),
                  "float model (onnxruntime)", anchor_instructions=29.86e6, anchor_activation_bytes=49_152,
                  mlperf_task="ic"),
        ModelSpec("kws_dscnn", kws / "kws_dscnn_float.onnx", "qmn", lambda: np.load(kws / "mfcc_real_float.npy"),
                  _npz(kws / "golden_float.npz", "input"), _npz(kws / "golden_float.npz", "onnx_output"),
                  "float model (onnxruntime)", anchor_instructions=7.84e6, anchor_activation_bytes=16_000,
                  mlperf_task="kws"),
        ModelSpec("ic_resnet8_int8", ic / "ic_resnet8_int8_qdq.onnx", "int8", None,
                  _npz(ic / "golden_int8.npz", "input"), _npz(ic / "golden_int8.npz", "output_tflm"),
                  "TFLite Micro int8", anchor_instructions=29.86e6, anchor_activation_bytes=49_152,
                  exact_reference=True, mlperf_task="ic"),
        ModelSpec("kws_dscnn_int8", kws / "kws_dscnn_int8_qdq.onnx", "int8", None,
                  _npz(kws / "golden_int8.npz", "input"), _npz(kws / "golden_int8.npz", "output_tflm"),
                  "TFLite Micro int8", anchor_instructions=7.84e6, anchor_activation_bytes=16_000,
                  exact_reference=True, mlperf_task="kws"),
    ]
    # --optimize size beside the default speed (both bit-exact; benchmarks/versus_cmsis_nn.py compares them
    # with CMSIS-NN itself).
    specs += [dataclasses.replace(s, name=s.name + "_size", optimize="size", mlperf_task=None)
              for s in specs if s.scheme == "int8"]
    # The seeded MobileNetV1-0.25 (VWW shape) and FC autoencoder of tiny_models.py, quantized by qcc's int8
    # pipeline (random weights: speed and size only, no accuracy).
    tiny = tiny_models.write(HERE / "build" / "tiny_models")
    for name, (model, calib) in tiny.items():
        sample = (lambda n: lambda: tiny_models.calibration(n, 1, seed=7))(name)
        specs.append(ModelSpec(f"{name}_int8", model, "int8", (lambda c: lambda: np.load(c))(calib), sample,
                               sample, "-", accuracy=False, mlperf_task=TINY_TASKS.get(name)))
    return specs


# The seeded tiny models that stand for an MLPerf Tiny task in the latency table (report_md.py); the
# autoencoder has no published latency quoted here, so it stays out of that table.
TINY_TASKS = {"vww_mobilenet": "vww"}


# ---------------------------------------------------------------- compile, build, count
class Unsupported(Exception):
    """qcc refused the model (a "not yet supported" row), or crashed (FAILED)."""

    def __init__(self, message: str, status: str = "not yet supported"):
        super().__init__(message)
        self.status = status


def _qcc_command() -> List[str]:
    exe = shutil.which("qcc")
    return [exe] if exe else [sys.executable, "-c", "import sys; from qcc.tools.compile import main; sys.exit(main())"]


def run_qcc(spec: ModelSpec, target: str, folder: Path) -> tuple[Path, float]:
    """Compiles the model with the qcc command; returns (output folder, wall seconds)."""
    out = folder / target
    cmd = [*_qcc_command(), str(spec.model), "-o", str(out / f"{spec.name}.c"), "--target", target,
           "--emit-ir", str(out / f"{spec.name}.qir"), "--report", str(out / "report.json")]
    if spec.scheme != "qmn":
        cmd += ["--scheme", spec.scheme]
    if spec.optimize != "speed":
        cmd += ["--optimize", spec.optimize]
    cmd += list(spec.qcc_args)
    if spec.calib is not None:
        folder.mkdir(parents=True, exist_ok=True)
        calib = folder / "calib.npy"
        np.save(calib, spec.calib().astype(np.float32))
        cmd += ["--calib", str(calib)]
    start = time.perf_counter()
    # The report's own cycle estimate (an all-zero input) would repeat the counting done here on a real sample.
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "QCC_REPORT_CYCLES": "0"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr or proc.stdout).strip().splitlines() if l.strip()] or ["(no message)"]
        # A QccError exits 1 or 2 with one message line; a traceback is a qcc bug.
        raise Unsupported(lines[-1], "FAILED" if "Traceback" in proc.stderr else "not yet supported")
    return out, seconds


def elf_sections(elf: Path) -> Dict[str, int]:
    from elftools.elf.elffile import ELFFile
    with open(elf, "rb") as f:
        sizes = {s.name: s["sh_size"] for s in ELFFile(f).iter_sections()}
    return {k: sizes.get(k, 0) for k in (".text", ".rodata", ".ARM.exidx", ".data", ".bss")}


def count_run(elf: Path, name: str, inputs: Sequence[bytes], output_sizes: Sequence[int], cpu: str) -> dict:
    """One NAME_run call: instruction counts, outputs, and the stack high-water mark in bytes."""
    machines = []

    def setup(machine):
        machines.append(machine)
        # Paint the whole emulated stack; the call's frames overwrite the top of it.
        machine.uc.mem_write(counter.STACK_BASE, STACK_FILL.to_bytes(4, "little") * (counter.STACK_SIZE // 4))
        return [machine.alloc(b) for b in inputs] + [machine.alloc(n) for n in output_sizes]

    result = counter.count_calls(elf, f"{name}_run", setup, cpu)
    words = np.frombuffer(machines[0].read(counter.STACK_BASE, counter.STACK_SIZE), "<u4")
    touched = np.flatnonzero(words != STACK_FILL)
    result["stack_bytes"] = int((len(words) - touched[0]) * 4) if touched.size else 0
    result["outputs"] = result["buffers"][len(inputs):]
    return result


def count_in_qemu(out: Path, name: str, graph, sample: np.ndarray, expected: Sequence[np.ndarray]) -> dict:
    """One NAME_run call of qcc's firmware in QEMU: {"total": instructions, "outputs": its quantized outputs}.

    The firmware reads float32 records and quantizes them itself, as the simulator's q.quantize does;
    a graph whose input is already integer (the int8 QDQ models) gets (q - zero_point) * scale, which
    quantizes back to q. Its output record starts with the quantized outputs."""
    from qcc.backends.cmsis import harness
    x = graph.inputs[0]
    values = sample.reshape((1,) + x.shape)
    quant = x.type.quant
    if quant is not None:  # affine (scale, zero point) or Qm.n (scale 2^-frac_bits, zero point 0)
        scale = getattr(quant, "scale", None) or 2.0 ** -quant.frac_bits
        values = (values.astype(np.float64) - getattr(quant, "zero_point", 0)) * scale
    harness.write_samples(out / "count_input.bin", graph, {x.name: values})
    total = qemu_count.count_run(out, name, out / "count_input.bin", out / "count_output.bin")
    data, outputs, at = (out / "count_output.bin").read_bytes(), [], 0
    for e in expected:
        outputs.append(data[at:at + e.nbytes])
        at += e.nbytes
    return {"total": total, "outputs": outputs}


# ---------------------------------------------------------------- the lowered graph
def load_lowered(out: Path, name: str):
    import qcc.sim.qmn  # noqa: F401  (registers the integer kernels)
    import qcc.sim.s8  # noqa: F401
    from qcc.ir.parser import parse_file
    return parse_file(out / f"{name}.qir")


def macs_by_op(graph) -> Dict[str, int]:
    """Multiply-accumulates of each integer conv2d / dense, by op name."""
    out = {}
    for op in graph.ops:
        kind = op.opname.split(".", 1)[-1]
        if op.opname.startswith("nn.") or kind not in ("conv2d", "dense"):
            continue
        w = op.operands[1].shape
        out[op.name] = op.result.type.size * (int(np.prod(w[1:])) if kind == "conv2d" else w[1])
    return out


def simulate(graph, sample: np.ndarray):
    """(NAME_run's input buffers, its expected output buffers, the graph's outputs) for one sample.

    The benchmark models have one input; NAME_run takes the quantized inputs, then the
    quantized outputs (what each final q.dequantize reads), in graph order."""
    from qcc.sim.interpreter import run_graph
    x = graph.inputs[0]
    env = run_graph(graph, {x.name: sample.reshape(x.shape).astype(x.type.np_dtype)}, keep=True)
    ins = []
    for v in graph.inputs:
        q = next((u for u in graph.users(v) if u.opname == "q.quantize"), None)
        ins.append(env[q.result] if q is not None else env[v])
    outs = []
    for v in graph.outputs:
        src = v.producer.operands[0] if v.producer is not None and v.producer.opname == "q.dequantize" else v
        outs.append(env[src])
    return ins, outs, [env[v] for v in graph.outputs]


# ---------------------------------------------------------------- one model
@dataclass
class Result:
    spec: ModelSpec
    error: Optional[str] = None
    status: str = "not yet supported"                       # what an error row says
    compile_seconds: float = 0.0
    report: dict = field(default_factory=dict)
    macs: int = 0
    layer_macs: Dict[str, int] = field(default_factory=dict)
    counts: Dict[str, dict] = field(default_factory=dict)   # cpu -> count_run result (-O3 build)
    layers: Optional[dict] = None                           # count_run result with per-layer functions (M4)
    layers_inlined: bool = False                            # gcc inlined layers at -O3: layers from ATTRIBUTION_FLAGS
    sections: Dict[str, int] = field(default_factory=dict)
    matches: Dict[str, bool] = field(default_factory=dict)  # cpu -> ELF outputs == simulator, bit for bit
    accuracy: dict = field(default_factory=dict)

    @property
    def elf_matches_simulator(self) -> bool:
        return bool(self.matches) and all(self.matches.values())


def measure(spec: ModelSpec, workdir: Path, targets: Sequence[str] = TARGETS, accuracy: bool = True) -> Result:
    res = Result(spec)
    folder = workdir / spec.name
    try:
        outs = {}
        for target in targets:
            outs[target], seconds = run_qcc(spec, target, folder)
            if target == targets[0]:
                res.compile_seconds = seconds
    except Unsupported as exc:
        res.error, res.status = str(exc), exc.status
        return res
    try:
        _measure_compiled(res, outs, targets, accuracy)
    except (BuildError, counter.EmulationError, qemu_count.QemuCountError) as exc:
        # A bug in the generated C, not a model qcc declines: reported as FAILED.
        res.error, res.status = str(exc), "FAILED"
    return res


def _measure_compiled(res: Result, outs: Dict[str, Path], targets: Sequence[str], accuracy: bool) -> None:
    spec = res.spec
    main = outs[targets[0]]
    res.report = json.loads((main / "report.json").read_text())
    graph = load_lowered(main, spec.name)
    by_op = macs_by_op(graph)
    res.macs = sum(by_op.values())
    res.layer_macs = {layer["fn"]: by_op.get(layer["name"], 0) for layer in res.report["layers"]}
    samples = spec.samples()
    for target in targets:  # each target has its own lowering, so its own simulator reference
        t_graph = graph if target == targets[0] else load_lowered(outs[target], spec.name)
        t_ins, t_expected, _ = simulate(t_graph, samples[spec.counted])
        if target in QEMU_TARGETS:
            res.counts[target] = count_in_qemu(outs[target], spec.name, t_graph, samples[spec.counted], t_expected)
            res.matches[target] = res.counts[target]["outputs"] == [a.tobytes() for a in t_expected]
            continue
        elf = build_elf(outs[target], spec.name, target)
        counted = count_run(elf, spec.name, [a.tobytes() for a in t_ins], [a.nbytes for a in t_expected], target)
        res.counts[target] = counted
        res.matches[target] = counted["outputs"] == [a.tobytes() for a in t_expected]
        if target == targets[0]:
            res.sections = elf_sections(elf)
            in_bytes, out_sizes = [a.tobytes() for a in t_ins], [a.nbytes for a in t_expected]
    if set(_layer_counts(res.counts[targets[0]])) >= {layer["fn"] for layer in res.report["layers"]}:
        res.layers = res.counts[targets[0]]  # every layer is still a function at -O3
    else:
        res.layers_inlined = True
        res.layers = count_run(build_elf(main, spec.name, targets[0], attribution=True), spec.name, in_bytes,
                               out_sizes, targets[0])
    if accuracy and spec.accuracy:
        res.accuracy = measure_accuracy(spec, graph, samples)


def measure_accuracy(spec: ModelSpec, graph, samples: np.ndarray) -> dict:
    reference = spec.reference()
    quantized = [simulate(graph, s)[1][0].reshape(-1) for s in samples]
    top_q = np.array([int(np.argmax(q)) for q in quantized])
    top_ref = reference.reshape(len(samples), -1).argmax(axis=1)
    acc = {"samples": len(samples), "top1_agree": int((top_q == top_ref).sum())}
    if spec.exact_reference:
        acc["bit_exact"] = sum(int(np.array_equal(q, r.reshape(-1))) for q, r in zip(quantized, reference))
    if spec.labels is not None:
        labels = spec.labels()
        acc["float_correct"] = int((top_ref == labels).sum())
        acc["quant_correct"] = int((top_q == labels).sum())
    return acc


# ---------------------------------------------------------------- the report (layout in report_md.py)
def tool_versions() -> Dict[str, str]:
    import capstone
    import elftools
    import unicorn
    import qcc
    gcc = subprocess.run([CC, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    return {"qcc": f"{qcc.__version__} (git {commit}, uncommitted changes may apply)", "gcc": gcc,
            "unicorn": unicorn.__version__, "capstone": capstone.__version__, "pyelftools": elftools.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def render(results: Sequence[Result], targets: Sequence[str]) -> str:
    return report_md.render(results, targets, cc=CC, attribution_flags=ATTRIBUTION_FLAGS, versions=tool_versions())



def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Benchmark qcc's generated C (instructions, memory, accuracy).")
    p.add_argument("--quick", action="store_true", help="digits on cortex-m4 only")
    p.add_argument("-o", "--output", default=str(HERE / "results.md"), help="the markdown file to write")
    p.add_argument("--workdir", default=str(HERE / "build"), help="where generated C and ELFs go (kept)")
    p.add_argument("--only", action="append", default=[], metavar="MODEL", help="run just these models")
    args = p.parse_args(argv)
    targets = TARGETS[:1] if args.quick else TARGETS
    specs = [s for s in model_specs(args.quick) if not args.only or s.name in args.only]
    unknown = set(args.only) - {s.name for s in specs}
    if unknown:
        p.error(f"unknown model(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(s.name for s in model_specs(args.quick))}")
    results = []
    for spec in specs:
        start = time.perf_counter()
        print(f"[bench] {spec.name} ...", file=sys.stderr, flush=True)
        results.append(measure(spec, Path(args.workdir), targets))
        print(f"[bench] {spec.name} done in {time.perf_counter() - start:.1f} s"
              + (f" ({results[-1].status}: {results[-1].error})" if results[-1].error else ""), file=sys.stderr)
    Path(args.output).write_text(render(results, targets))
    print(f"[bench] wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
