"""The generated C builds with its own Makefile (-Wall -Wextra -Werror) on every Cortex-M core.

The host tests run the portable loops only; the DSP (SMLAD) and MVE (Helium)
branches and the per-target flags compile only for the cores. Here a "layer
zoo" per (scheme, target) -- one float ONNX model with many independent
inputs, each feeding one randomly shaped layer -- goes through the ``qcc``
command for cortex-m0plus, m4, m7, m33 and m55 under qmn q7, qmn q15 and
affine int8, and ``make`` builds its library with the Makefile's flags.
No run: tests/test_backend_*.py and tests/test_random_models.py check the
numbers; this checks that every code path compiles warning-free.

Layers (20 per model, shapes drawn from a numpy generator seeded per scheme
and target): depthwise conv (channel multipliers 1..8, channels 1..17, 1xN /
Nx1 / square kernels, pads, strides, dilations; also 1..5 channels with
multiplier 1..2 next to padding), conv (odd output-channel counts, long 1xN
rows), dense, max/avg pool (padding, count_include_pad), add of two inputs.
All layers of a model share one translation unit, so each (scheme, target)
costs two arm-none-eabi-gcc runs; the 15 builds run two at a time. The object
files must hold SMLAD on the DSP cores (none on the M0+) and VMLADAVA on the
M55: the core-specific branches are what compiled. A failure prints the qcc
command and the layer list that reproduce it.

Regressions this caught (fixed): -Werror=aggressive-loop-optimizations in the
scalar tail of qcc_dot1x2/2x2 (odd Cout >= 3, long rows, DSP cores); an
unused ``zp2`` in the s8 depthwise path with < 4 channels next to padding; a
Jinja crash (no ``zrow``) for s8 gemm convs with input_zp 0 next to padding.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Tuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcc.backends.cmsis import TARGETS
from test_random_models import KNOWN_GAPS
from random_models import AVGPOOL_PAD_COUNTED, qcc_command, run_qcc

CORES = ("cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55")
SCHEMES = {"q7": [], "q15": ["--bits", "16"], "int8": ["--scheme", "int8"]}
LAYERS_PER_MODEL = 20
# VMLADAVA{X}.S8/S16 under either spelling (tests/test_backend_mve.py has the same pattern).
VMLADAVA = re.compile(r"\bvmla(?:da)?vax?[te]?\.s(?:8|16)\b")

needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("make") is None,
                               reason="arm-none-eabi-gcc or make not installed")


class Zoo:
    """Builds one ONNX model of independent layers, one input (and one output) per layer."""

    def __init__(self, seed: int, scheme: str):
        self.rng = np.random.default_rng(seed)
        self.scheme = scheme
        self.nodes, self.inits, self.inputs, self.outputs = [], [], [], []
        self.described: List[str] = []

    def input(self, c, h, w) -> str:
        name = f"in{len(self.inputs)}"
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, c, h, w]))
        return name

    def const(self, array) -> str:
        name = f"k{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def emit(self, op, inputs, what, **attrs) -> str:
        name = f"l{len(self.nodes)}_{op.lower()}"
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        self.described.append(f"{name}: {what}")
        return name

    def output(self, name: str):
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))

    def relu(self, x: str) -> str:
        if self.rng.random() < 0.5:
            return x
        name = f"{x}_relu"
        self.nodes.append(helper.make_node("Relu", [x], [name], name=name))
        return name

    # ------------------------------------------------------------ layers
    def kernel(self) -> Tuple[int, int]:
        shape = self.rng.choice(["square", "1xN", "Nx1"])
        n = int(self.rng.integers(1, 6)) if shape == "square" else int(self.rng.integers(2, 10))
        return {"square": (n, n), "1xN": (1, n), "Nx1": (n, 1)}[shape]

    def conv_layer(self, depthwise: bool, few_channels: bool = False):
        r = self.rng
        c = int(r.integers(1, 6)) if few_channels else int(r.integers(1, 18))
        kh, kw = self.kernel()
        dh, dw = (int(r.integers(1, 3)) if k > 1 else 1 for k in (kh, kw))
        sh, sw = int(r.integers(1, 3)), int(r.integers(1, 3))
        pads = [int(r.integers(0, k)) for k in (kh, kw, kh, kw)]
        if few_channels:  # next to padding: the bounded loops
            side = int(r.integers(0, 4))
            pads[side] = max(1, (kh, kw)[side % 2] - 1)
        # Room for the dilated kernel plus a few output positions.
        h = (kh - 1) * dh + 1 + int(r.integers(0, 6))
        w = (kw - 1) * dw + 1 + int(r.integers(0, 6))
        if depthwise:
            mult = int(r.integers(1, 3)) if few_channels else int(r.integers(1, 9))
            cout, group = c * mult, c
        else:
            cout, group = int(r.integers(1, 18)), 1
        fan_in = kh * kw * c // group
        wgt = r.standard_normal((cout, c // group, kh, kw)) / np.sqrt(fan_in)
        args = [self.input(c, h, w), self.const(wgt), self.const(0.1 * r.standard_normal(cout))]
        what = (f"{'depthwise x' + str(cout // c) if depthwise else 'conv'} {c}->{cout} on {h}x{w}, kernel "
                f"{kh}x{kw}, strides {sh}x{sw}, dilations {dh}x{dw}, pads {pads}")
        y = self.emit("Conv", args, what, kernel_shape=[kh, kw], strides=[sh, sw], pads=pads,
                      dilations=[dh, dw], group=group)
        self.output(self.relu(y))

    def long_row_conv(self):
        """A 1xN conv over a long row with an odd output-channel count >= 3: the 2x2 dot's tail."""
        r = self.rng
        c, kw = int(r.integers(1, 18)), int(r.integers(5, 16))
        cout = int(r.choice([3, 5, 7, 9, 11, 13, 15, 17]))
        h, w = int(r.integers(1, 4)), kw + int(r.integers(8, 40))
        wgt = r.standard_normal((cout, c, 1, kw)) / np.sqrt(c * kw)
        pads = [0, int(r.integers(0, kw)), 0, int(r.integers(0, kw))]
        y = self.emit("Conv", [self.input(c, h, w), self.const(wgt), self.const(0.1 * r.standard_normal(cout))],
                      f"conv {c}->{cout} on {h}x{w}, kernel 1x{kw}, pads {pads}", kernel_shape=[1, kw], pads=pads)
        self.output(self.relu(y))

    def dense_layer(self):
        r = self.rng
        k, units = int(r.integers(1, 200)), int(r.integers(1, 18))
        x = self.input(k, 1, 1)
        flat = f"{x}_flat"
        self.nodes.append(helper.make_node("Flatten", [x], [flat], name=flat, axis=1))
        y = self.emit("Gemm", [flat, self.const(r.standard_normal((units, k)) / np.sqrt(k)),
                               self.const(0.1 * r.standard_normal(units))], f"dense {k}->{units}", transB=1)
        self.output(self.relu(y))

    def pool_layer(self):
        r = self.rng
        c = int(r.integers(1, 18))
        kh, kw = int(r.integers(1, 5)), int(r.integers(1, 5))
        sh, sw = int(r.integers(1, 4)), int(r.integers(1, 4))
        pads = [int(r.integers(0, k)) for k in (kh, kw, kh, kw)]
        h, w = kh + int(r.integers(0, 7)), kw + int(r.integers(0, 7))
        x = self.input(c, h, w)
        if r.random() < 0.5:
            y = self.emit("MaxPool", [x], f"maxpool {c}ch {h}x{w}, kernel {kh}x{kw}, strides {sh}x{sw}, pads {pads}",
                          kernel_shape=[kh, kw], strides=[sh, sw], pads=pads)
        else:
            # int8 refuses count_include_pad over padding (a known gap, tests/test_random_models.py)
            gap = AVGPOOL_PAD_COUNTED in KNOWN_GAPS[self.scheme] and any(pads)
            inc = 0 if gap else int(r.integers(0, 2))
            y = self.emit("AveragePool", [x], f"avgpool {c}ch {h}x{w}, kernel {kh}x{kw}, strides {sh}x{sw}, "
                          f"pads {pads}, count_include_pad {inc}", kernel_shape=[kh, kw], strides=[sh, sw],
                          pads=pads, count_include_pad=inc)
        self.output(y)

    def add_layer(self):
        r = self.rng
        shape = (int(r.integers(1, 18)), int(r.integers(1, 7)), int(r.integers(1, 7)))
        y = self.emit("Add", [self.input(*shape), self.input(*shape)], f"add {shape}")
        self.output(self.relu(y))

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "zoo", self.inputs, self.outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        return model


def zoo_model(seed: int, scheme: str) -> Tuple[onnx.ModelProto, List[str]]:
    z = Zoo(seed, scheme)
    kinds = ["depthwise", "depthwise_few", "depthwise", "conv", "conv", "conv_1xn", "dense", "pool", "add",
             "depthwise", "depthwise_few", "conv", "conv_1xn", "pool"]
    for i in range(LAYERS_PER_MODEL):
        kind = kinds[i % len(kinds)]
        if kind in ("depthwise", "conv", "depthwise_few"):
            z.conv_layer(kind != "conv", few_channels=kind == "depthwise_few")
        elif kind == "conv_1xn":
            z.long_row_conv()
        elif kind == "dense":
            z.dense_layer()
        elif kind == "pool":
            z.pool_layer()
        else:
            z.add_layer()
    return z.model(), z.described



# ---------------------------------------------------------------- the builds
def compile_zoo(folder: Path, scheme: str, target: str, seed: int) -> Tuple[str, str, List[str]]:
    """Writes the zoo model and calibration data, runs qcc; returns (name, command, layer list)."""
    model, layers = zoo_model(seed, scheme)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "zoo.onnx")
    rng = np.random.default_rng(seed)
    calib = {i.name: rng.standard_normal((4,) + tuple(d.dim_value for d in i.type.tensor_type.shape.dim))
             .astype(np.float32) for i in model.graph.input}
    np.savez(folder / "calib.npz", **calib)
    name = f"zoo_{scheme}_{target.replace('-', '_')}"
    argv = ["zoo.onnx", "-o", f"c/{name}.c", "--target", target, "--calib", "calib.npz", *SCHEMES[scheme]]
    command = f"cd {folder} && {qcc_command(argv)}"
    where = f"\nreproduce: {command}\nlayers:\n  " + "\n  ".join(layers)
    rc, message = run_qcc(folder, argv, where)
    assert rc == 0, f"qcc exited with {rc}:\n{message}{where}"
    return name, command, layers


def make_library(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "-C", str(folder / "c"), "all"], capture_output=True, text=True)


CASES = [(scheme, target) for scheme in SCHEMES for target in CORES]


@needs_arm
def test_layer_zoo_builds_with_werror_on_every_target(tmp_path):
    jobs = []
    for i, (scheme, target) in enumerate(CASES):
        folder = tmp_path / f"{scheme}_{target}"
        jobs.append((folder, *compile_zoo(folder, scheme, target, seed=1000 + i)))
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: make_library(job[0]), jobs))
    failures = []
    for (folder, name, command, layers), proc in zip(jobs, results):
        if proc.returncode != 0 or not (folder / "c" / f"lib{name}.a").is_file():
            failures.append(f"{name}: make failed\n  reproduce: {command} && make -C c\n  layers:\n    "
                            + "\n    ".join(layers) + "\n" + (proc.stdout + proc.stderr)[-4000:])
    assert not failures, f"{len(failures)} of {len(jobs)} builds failed:\n" + "\n".join(failures)
    # The core-specific dot products are what compiled: SMLAD on the DSP cores, VMLADAVA on the M55.
    for (folder, name, _, _), (scheme, target) in zip(jobs, CASES):
        dis = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", "armv8.1-m.main" if target == "cortex-m55" else "arm",
                              str(folder / "c" / "build" / f"{name}.o")], capture_output=True, text=True).stdout
        if target == "cortex-m55":
            assert VMLADAVA.search(dis), f"{name}: no VMLADAVA"
        else:
            assert ("smlad" in dis) == TARGETS[target].has_dsp, f"{name}: SMLAD present: {'smlad' in dis}"
