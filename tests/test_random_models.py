"""Random-model differential test: hypothesis-generated float ONNX models through the ``qcc`` command.

For each scheme (qmn q7, qmn q15, affine int8) hypothesis draws random models
(tests/random_models.py: conv incl. 1xN/Nx1, strides, pads, dilations and
groups, depthwise with channel multipliers, batchnorm, relu/relu6/leaky relu,
max/avg pools incl. ceil_mode and count_include_pad, global pools, residual
add, concat, dense, softmax). Each model, with random calibration data, goes
through the real driver (``qcc.tools.compile.main``, the ``qcc`` command's
entry point, error policy included):

    qcc model.onnx -o DIR/NAME.c --target cortex-m4 --calib calib.npz --name NAME [--bits 16 | --scheme int8]

and then

1. exit 0, or a known gap: exit 2 whose message names only nodes with a
   feature listed for the scheme in ``KNOWN_GAPS`` (or an entry of
   ``MESSAGE_GAPS``, matched by exit code and message), leaving no output
   files; refusals are counted and printed per feature. Any other refusal,
   exit code or a traceback fails;
2. the integer simulator on the lowered graph (``--emit-ir``) against
   onnxruntime on the float model: SQNR at least ``SQNR_FLOOR[scheme]`` dB;
3. after all examples, every compiled model goes into ONE host executable
   (gcc -Werror -fsanitize=address,undefined; each model's generated harness
   main renamed and called in turn), which runs each model on its samples; its
   quantized and float outputs must equal the simulator's bit for bit.

A failure prints what reproduces it: the hypothesis example (a ``ModelSpec``
repr; with ``from random_models import *``, ``build_model(eval(repr))``
rebuilds the model), and the folder holding
``model.onnx``, ``calib.npz``, ``command.sh`` (the exact qcc command, run in
that folder), the C in ``c/`` and, for a mismatch, ``in.bin``/``out.bin``.

Environment:
  QCC_RANDOM_EXAMPLES  examples per run over the three schemes, split evenly
                       (default 210); a nightly job sets e.g. 2000.
  QCC_RANDOM_SEED      an integer draws a different set of models; unset, the
                       examples are derandomized (the same models every run).
  QCC_RANDOM_DIR       write the examples there (kept after the run) instead
                       of pytest's temporary folder.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings, strategies as st

from qcc.backends.cmsis import harness
from random_models import (FEATURES, ModelSpec, build_model, model_specs, node_features, qcc_command,
                           run_qcc)

SCHEMES = {"q7": [], "q15": ["--bits", "16"], "int8": ["--scheme", "int8"]}
TARGET = "cortex-m4"
CALIB_SAMPLES = 8
TEST_SAMPLES = 3      # the first calibration samples: in range, so the floor measures arithmetic, not clipping

# Known gaps, per scheme: feature -> why; the one table to edit (delete an entry
# when its feature lands). A refusal (exit 2) is a known gap only when every
# compute node its message names has one of the scheme's features
# (random_models.node_features); any other refusal fails the test. Entries in
# MESSAGE_GAPS are errors recognised by exit code and message instead.
Q15_ACCUMULATOR = "q15 accumulator headroom"
KNOWN_GAPS: Dict[str, Dict[str, str]] = {
    "q7": {},
    "q15": {},
    "int8": {},
}
MESSAGE_GAPS = {Q15_ACCUMULATOR: (1, r"check-quantized.*int32 accumulator can overflow")}
# Share of examples drawn with the scheme's known gaps left in (the rest leave them out, so that most
# examples compile): they check that each refusal is clean and names its node.
WITH_GAPS_SHARE = 4   # one in four

# Floors (dB) of SQNR(onnxruntime float, simulator dequantized) over each
# model's test samples. Measured (min / 5th percentile / median over the
# compiled examples): derandomized, 70 per scheme: q7 29.3 / 30.0 / 37.6, q15
# 57.3 / 67.8 / 75.7, int8 25.6 / 28.1 / 39.5; QCC_RANDOM_SEED=12345, 200 per
# scheme: q7 22.5 / 29.1 / 35.7, q15 41.8 / 60.5 / 75.1, int8 20.4 / 25.8 /
# 38.3. The floors sit about 10 dB under the worst seen: small rounding slips
# are the bit-exact comparison's job; what the floor catches is a wrong scale,
# shift or sign, which costs far more (one bit of shift is ~0 dB).
SQNR_FLOOR = {"q7": 12.0, "q15": 30.0, "int8": 12.0}

HOST_CFLAGS = harness.HOST_CFLAGS


def example_count() -> int:
    return int(os.environ.get("QCC_RANDOM_EXAMPLES", "210"))


# ---------------------------------------------------------------- refusals
def refused_nodes(message: str) -> List[str]:
    """The ONNX node names of the compute ops a refusal names: ``node "bn5" (BatchNormalization)`` as
    check-legal lists them, or ``'nn.maxpool' op "maxpool3"`` from a later pass; the
    q.quantize/q.dequantize around a float island are not the refused feature."""
    onnx_terms = re.findall(r'node "([^"]+)" \((\w+)\)', message)
    return [name for name, _ in onnx_terms] + [
        name for op, name in re.findall(r"'([\w.]+)' op \"([^\"]+)\"", message)
        if op not in ("q.quantize", "q.dequantize")]


# ---------------------------------------------------------------- one run
def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    noise = float(np.sum((ref - got) ** 2))
    signal = float(np.sum(ref ** 2))
    if noise == 0.0:
        return float("inf")
    return 10 * np.log10(max(signal, 1e-30) / noise)


@dataclass
class Compiled:
    name: str
    folder: Path
    graph: object
    gen: object
    samples: Dict[str, np.ndarray]
    command: str
    spec: ModelSpec
    want: object   # harness.Outputs of the simulator


@dataclass
class Session:
    scheme: str
    root: Path
    compiled: List[Compiled] = field(default_factory=list)
    refusals: Counter = field(default_factory=Counter)
    sqnrs: List[float] = field(default_factory=list)
    examples: int = 0

    def reproduce(self, folder: Path, spec: ModelSpec, command: str) -> str:
        return (f"\n  reproduce: cd {folder} && {command}\n  spec: {spec!r}\n"
                f"  QCC_RANDOM_SEED={os.environ.get('QCC_RANDOM_SEED', '(derandomized)')}")

    def compile(self, spec: ModelSpec):
        from qcc.ir.parser import parse_file
        self.examples += 1
        name = f"r{self.examples}_{self.scheme}"
        folder = self.root / name
        shutil.rmtree(folder, ignore_errors=True)  # hypothesis may replay an example
        folder.mkdir(parents=True)
        model = build_model(spec)
        onnx.save(model, folder / "model.onnx")
        rng = np.random.default_rng(spec.seed)
        calib = rng.standard_normal((CALIB_SAMPLES,) + spec.shape).astype(np.float32)
        np.savez(folder / "calib.npz", x=calib)
        argv = ["model.onnx", "-o", f"c/{name}.c", "--target", TARGET, "--calib", "calib.npz", "--name", name,
                "--emit-ir", "lowered.qir", *SCHEMES[self.scheme]]
        command = qcc_command(argv)
        (folder / "command.sh").write_text(command + "\n")
        where = self.reproduce(folder, spec, command)
        rc, message = run_qcc(folder, argv, where)
        gaps = KNOWN_GAPS[self.scheme]
        matched = [f for f, (code, pattern) in MESSAGE_GAPS.items() if f in gaps and rc == code
                   and re.search(pattern, message)]
        if matched:
            self._refused(matched, folder, where)
            return
        if rc == 2:
            feats = node_features(model)
            named = refused_nodes(message)
            unknown = [n for n in named if not feats.get(n, set()) & set(gaps)]
            assert named and not unknown, (f"qcc refused node(s) {unknown or '(none named)'} with no feature in "
                                           f"KNOWN_GAPS[{self.scheme!r}] (exit 2):\n{message}{where}")
            self._refused(sorted({f for n in named for f in feats[n]} & set(gaps)), folder, where)
            return
        assert rc == 0, f"qcc exited with {rc}:\n{message}{where}"
        graph = parse_file(folder / "lowered.qir")
        from qcc.backends.cmsis.plan import make_plan
        gen = SimpleNamespace(plan=make_plan(graph), float_output=False)  # what harness.simulate/read_outputs read
        samples = {"x": calib[:TEST_SAMPLES]}
        want = harness.simulate(graph, gen, samples)
        ref = _run_ort(model, samples["x"])
        db = sqnr_db(ref, want.floats[0].reshape(ref.shape))
        self.sqnrs.append(db)
        assert db >= SQNR_FLOOR[self.scheme], (
            f"simulator vs onnxruntime: SQNR {db:.1f} dB < floor {SQNR_FLOOR[self.scheme]} dB{where}")
        self.compiled.append(Compiled(name, folder, graph, gen, samples, command, spec, want))

    def _refused(self, features: List[str], folder: Path, where: str):
        assert not (folder / "c").exists(), f"a refusal left output files{where}"
        for f in features:
            self.refusals[f] += 1
        shutil.rmtree(folder)

    # ------------------------------------------------------------ the batched host build
    def build_and_compare(self):
        if not self.compiled:
            return
        build = self.root / "host"
        build.mkdir(parents=True, exist_ok=True)
        fw = self.compiled[0].folder / "c" / "firmware"
        sources = [fw / "semihost_io.c"]
        entries = []
        for c in self.compiled:
            out = c.folder / "c"
            entry = build / f"{c.name}_entry.c"
            # The generated harness main, renamed so that one executable holds every model's.
            entry.write_text(f'#define main {c.name}_entry\n#include "{out}/firmware/{c.name}_main.c"\n')
            sources += [out / f"{c.name}.c", out / f"{c.name}_weights.c", entry]
            entries.append(c)
            harness.write_samples(c.folder / "in.bin", c.graph, c.samples)
        dispatch = build / "dispatch.c"
        dispatch.write_text(_dispatch_c(entries))
        sources.append(dispatch)
        includes = ["-I", str(fw)] + [x for c in self.compiled for x in ("-I", str(c.folder / "c"))]
        errors = _compile_parallel(sources, build, includes)
        assert not errors, f"host build (-Werror) failed:\n{errors[-8000:]}{self.blame(errors)}"
        objs = [str(build / (Path(src).stem + ".o")) for src in sources]
        exe = build / "random_models"
        link = ["gcc", *HOST_CFLAGS, *objs, "-o", str(exe), "-lm"]
        proc = subprocess.run(link, capture_output=True, text=True)
        assert proc.returncode == 0, f"link failed:\n{' '.join(link)}\n{proc.stderr}"
        proc = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
        # The dispatcher prints "running NAME" before each model: a sanitizer abort blames the last one.
        running = re.findall(r"^running (\S+)$", proc.stdout, re.M)
        assert proc.returncode == 0, (f"host run failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                                      f"{proc.stderr[-6000:]}{self.blame(' '.join(running[-1:]))}")
        mismatches = []
        for c in self.compiled:
            got = harness.read_outputs(c.folder / "out.bin", c.gen, TEST_SAMPLES)
            pairs = list(zip(got.quantized, c.want.quantized)) + [
                (a.view(np.uint32), b.view(np.uint32)) for a, b in zip(got.floats, c.want.floats)]
            for a, b in pairs:
                if not np.array_equal(a, b):
                    bad = np.argwhere(a != b)
                    where = tuple(int(i) for i in bad[0])
                    mismatches.append(f"{c.name}: host C != simulator at {len(bad)} values, first {where}: "
                                      f"{a[where]} != {b[where]}{self.reproduce(c.folder, c.spec, c.command)}")
                    break
        assert not mismatches, f"{len(mismatches)} of {len(self.compiled)} models differ:\n" + "\n".join(mismatches)

    def blame(self, text: str) -> str:
        """Reproduction notes for the models whose names appear in ``text``."""
        return "".join(f"\n{c.name}:{self.reproduce(c.folder, c.spec, c.command)}"
                       for c in self.compiled if re.search(rf"\b{c.name}\b", text))

    def summary(self) -> str:
        s = np.array(self.sqnrs) if self.sqnrs else np.array([np.nan])
        finite = s[np.isfinite(s)] if np.isfinite(s).any() else np.array([np.nan])
        gaps = ", ".join(f"{k} x{v}" for k, v in sorted(self.refusals.items())) or "none"
        return (f"[{self.scheme}] {self.examples} examples: {len(self.compiled)} compiled and bit-exact on the host, "
                f"{self.examples - len(self.compiled)} refused (known gaps: {gaps}); SQNR dB min "
                f"{np.min(finite):.1f}, p5 {np.percentile(finite, 5):.1f}, median {np.median(finite):.1f}")


def _run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, {"x": x[i]})[0] for i in range(len(x))])


def _dispatch_c(entries: List[Compiled]) -> str:
    decls = "".join(f"int {c.name}_entry(int argc, char **argv);\n" for c in entries)
    calls = "".join(
        f'    {{ char *args[] = {{"{c.name}", "{c.folder}/in.bin", "{c.folder}/out.bin", 0}};\n'
        f'      printf("running {c.name}\\n");\n      fflush(stdout);\n'
        f'      int rc = {c.name}_entry(3, args);\n'
        f'      if (rc) {{ printf("{c.name}: exit %d\\n", rc); failed++; }} }}\n' for c in entries)
    return ("#include <stdio.h>\n" + decls + "int main(void)\n{\n    int failed = 0;\n" + calls +
            "    return failed ? 1 : 0;\n}\n")


def _compile_parallel(sources: List[Path], build: Path, includes: List[str]) -> str:
    """gcc -c in two batches at once (the CI machine has two cores); returns gcc's errors, if any."""
    halves = [sources[0::2], sources[1::2]]

    def compile_batch(batch):
        cmd = ["gcc", *HOST_CFLAGS, *includes, "-c", *map(str, batch)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=build)
        return proc.stderr if proc.returncode else ""

    with ThreadPoolExecutor(2) as pool:
        return "".join(pool.map(compile_batch, [h for h in halves if h]))


# ---------------------------------------------------------------- the test
@pytest.mark.skipif(shutil.which("gcc") is None, reason="host gcc not installed")
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_random_models_match_simulator_and_onnxruntime(scheme, tmp_path, capsys):
    root = Path(os.environ["QCC_RANDOM_DIR"]) / scheme if os.environ.get("QCC_RANDOM_DIR") else tmp_path
    session = Session(scheme, root)
    count = -(-example_count() // len(SCHEMES))
    env_seed = os.environ.get("QCC_RANDOM_SEED")
    options = settings(max_examples=count, deadline=None, database=None, derandomize=env_seed is None,
                       suppress_health_check=list(HealthCheck), print_blob=True,
                       phases=(Phase.explicit, Phase.generate, Phase.shrink))

    gaps = frozenset(KNOWN_GAPS[scheme]) & frozenset(FEATURES)  # the ones the generator can leave out
    # The gap-free branches first: hypothesis leans towards the first branch of one_of.
    specs = st.one_of(*[model_specs(avoid=gaps)] * (WITH_GAPS_SHARE - 1), model_specs()) if gaps else model_specs()

    @options
    @given(spec=specs)
    def compile_one(spec):
        session.compile(spec)

    if env_seed is not None:
        compile_one = hypothesis_seed(int(env_seed))(compile_one)
    compile_one()
    session.build_and_compare()
    with capsys.disabled():  # the counts show in a passing run's output too
        print("\n" + session.summary())
    assert len(session.compiled) >= count // 2, session.summary()  # most examples compile: not a table of refusals
