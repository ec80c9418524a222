"""The MVE (Helium) dot products of the cmsis back end on Cortex-M55, in QEMU's mps3-an547.

helpers.j2 gives qcc_dot_*, qcc_dot1x2_* and qcc_dot2x2_* an integer-MVE branch
(VLDRB/VLDRH, VMLADAVA across 16 int8 or 8 int16 lanes, a VCTP-predicated
tail) ahead of the DSP (SMLAD) and portable loops. All three compute
acc + sum(a[i] * b[i]) modulo 2^32, so results are equal bit for bit:

- the helpers alone, every (x, w) type pair, lengths 0..70 around the vector
  widths, unaligned starts and accumulators that wrap, against numpy (int64
  sums reduced mod 2^32), on the host (portable), the M4 (SMLAD) and the M55;
- random lowered q7/q15 and affine int8 graphs, examples/digits (q7, q15) and
  the kws int8 QDQ model (vs TFLite Micro's outputs) on the M55 == simulator.

Each M55 object file must contain VMLADAVA (binutils prints its alias VMLAVA),
so the MVE branch is what ran. No speed is claimed: QEMU does not count
cycles and unicorn has no M55 model.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qcc.backends.cmsis import generate, harness
from qcc.backends.cmsis.generate import SHORT_CTYPES, _environment

from test_backend_cmsis import random_graph, random_inputs
from test_backend_models import DIGITS, check, compile_onnx, digits_test, _digits_accuracy  # noqa: F401 (fixture)
from test_backend_s8 import CompiledModel, _assert_bit_exact, _run_and_compare, conv_edge_case_graph
from test_backend_s8 import random_inputs as s8_random_inputs, random_s8_graph

needs_qemu = pytest.mark.skipif(harness.tools_missing("arm-none-eabi-gcc", "qemu-system-arm", "make") is not None,
                                reason="arm-none-eabi-gcc, qemu-system-arm or make not installed")
M55 = "cortex-m55"


def _firmware_targets():
    """examples/firmware/targets.py (build and QEMU helpers), installed as qcc.firmware.targets."""
    try:
        import qcc.firmware.targets as fw
    except ImportError:
        pytest.skip("qcc.firmware (examples/firmware) is not installed")
    return fw

# VMLADAVA{X}.S8/S16 under either spelling; objdump needs the architecture to decode MVE at all.
VMLADAVA = re.compile(r"\bvmla(?:da)?vax?[te]?\.s(?:8|16)\b")


def disassemble(obj: Path) -> str:
    return subprocess.run(["arm-none-eabi-objdump", "-d", "-m", "armv8.1-m.main", str(obj)],
                          capture_output=True, text=True, check=True).stdout


def assert_mve_in(obj: Path):
    dis = disassemble(obj)
    assert VMLADAVA.search(dis), f"{obj}: no VMLADAVA, the MVE branch was not compiled"
    assert "vctp." in dis  # the predicated tail


# ---------------------------------------------------------------- the helpers alone
PAIRS = [("s8", "s8"), ("s8", "s16"), ("s16", "s8"), ("s16", "s16")]
LENGTHS = [*range(0, 35), 47, 48, 49, 63, 64, 65, 70]
OFFSETS = (0, 1)              # element offsets: unaligned starts for the int8 loads
DX, DW = 37, 71               # second-row distances (odd, so the rows are unaligned too)
SIZE = 1 + DW + max(LENGTHS)  # elements per operand array
ACC0 = (2147483000, -5, -2147483000, 123456)  # starting accumulators, two close to the int32 edges

HELPER_TEST_C = """\
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#endif
#include "semihost_io.h"
{helpers}
{arrays}
static const int lengths[] = {{{lengths}}};
static const int offsets[] = {{{offsets}}};
static uint32_t results[{count}];

int main(void)
{{
    int r = 0;
    for (unsigned li = 0; li < sizeof lengths / sizeof lengths[0]; li++)
        for (unsigned oi = 0; oi < sizeof offsets / sizeof offsets[0]; oi++) {{
            const int n = lengths[li], o = offsets[oi];
{calls}
        }}
    qcc_print_hex("dots", results, sizeof results);
    return r == {count} ? 0 : 1;
}}
"""

CALLS_C = """\
            {{
                uint32_t acc[4] = {{{acc0}u, {acc1}u, {acc2}u, {acc3}u}};
                results[r++] = (uint32_t)qcc_dot_{xs}_{ws}(a_{xs} + o, b_{ws} + o, n, (int32_t)acc[0]);
                qcc_dot1x2_{xs}_{ws}(a_{xs} + o, b_{ws} + o, {dw}, n, acc);
                results[r++] = acc[0];
                results[r++] = acc[1];
                acc[0] = {acc0}u;
                acc[1] = {acc1}u;
                qcc_dot2x2_{xs}_{ws}(a_{xs} + o, {dx}, b_{ws} + o, {dw}, n, acc);
                memcpy(results + r, acc, sizeof acc);
                r += 4;
            }}"""


def operand_arrays(seed: int = 0) -> dict:
    """a_s8, b_s8, a_s16, b_s16: random values with runs of the extremes (whose products wrap int16 sums)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, dtype in (("s8", np.int8), ("s16", np.int16)):
        info = np.iinfo(dtype)
        for which in "ab":
            v = rng.integers(info.min, info.max + 1, SIZE).astype(dtype)
            v[5:25] = info.min if which == "a" else info.max
            v[40:60] = info.min
            out[f"{which}_{name}"] = v
    return out


def helper_test_source(arrays: dict) -> str:
    env = _environment()
    env.globals["ctypes"] = SHORT_CTYPES
    helpers = str(env.get_template("helpers.j2").module.helpers(PAIRS))
    decls = "\n".join(f"static const {SHORT_CTYPES[k.split('_')[1]]} {k}[{SIZE}] = {{{', '.join(map(str, v.tolist()))}}};"
                      for k, v in arrays.items())
    accs = {f"acc{i}": a & 0xFFFFFFFF for i, a in enumerate(ACC0)}
    calls = "\n".join(CALLS_C.format(xs=xs, ws=ws, dx=DX, dw=DW, **accs) for xs, ws in PAIRS)
    return HELPER_TEST_C.format(helpers=helpers, arrays=decls, lengths=", ".join(map(str, LENGTHS)),
                                offsets=", ".join(map(str, OFFSETS)), count=len(expected_results(arrays)),
                                calls=calls)


def expected_results(arrays: dict) -> np.ndarray:
    """What the C writes, in its order, from int64 sums reduced mod 2^32."""
    out = []
    for n in LENGTHS:
        for o in OFFSETS:
            for xs, ws in PAIRS:
                a, b = arrays[f"a_{xs}"].astype(np.int64), arrays[f"b_{ws}"].astype(np.int64)
                dot = lambda x, w: int(a[o + x:o + x + n] @ b[o + w:o + w + n])
                out.append(ACC0[0] + dot(0, 0))
                out += [ACC0[0] + dot(0, 0), ACC0[1] + dot(0, DW)]
                out += [ACC0[0] + dot(0, 0), ACC0[1] + dot(0, DW), ACC0[2] + dot(DX, 0), ACC0[3] + dot(DX, DW)]
    return np.array(out, np.int64) & 0xFFFFFFFF


def test_helper_reference_wraps():
    # The test data does leave int32 in some sums, so the modulo-2^32 contract is exercised.
    arrays = operand_arrays()
    want = expected_results(arrays)
    assert len(want) == len(LENGTHS) * len(OFFSETS) * len(PAIRS) * 7
    full = []
    for n in LENGTHS:
        a, b = arrays["a_s16"].astype(np.int64), arrays["b_s16"].astype(np.int64)
        full.append(ACC0[0] + int(a[:n] @ b[:n]))
    assert max(full) > 2**31 - 1 or min(full) < -2**31


@pytest.mark.parametrize("where", ["host", "cortex-m4", M55])
def test_dot_helpers_match_reference(tmp_path, where):
    fw = _firmware_targets()
    if where == "host" and harness.tools_missing("gcc"):
        pytest.skip("host gcc not installed")
    if where != "host" and fw.tools_missing():
        pytest.skip("arm-none-eabi-gcc or qemu-system-arm not installed")
    arrays = operand_arrays()
    src = tmp_path / "dots.c"
    src.write_text(helper_test_source(arrays))
    flags = ["-O2", "-Wall", "-Wextra", "-Werror"]
    if where == "host":
        exe = tmp_path / "dots"
        subprocess.run(["gcc", "-std=c99", *flags, "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                        f"-I{fw.FIRMWARE_DIR}", str(src), str(fw.FIRMWARE_DIR / "semihost_io.c"), "-o", str(exe)],
                       check=True, capture_output=True)
        proc = subprocess.run([str(exe)], capture_output=True, timeout=60)
    else:
        target = fw.get_target(where)
        exe = fw.build(target, [src], tmp_path / "dots.elf", flags)
        if where == M55:
            assert_mve_in(exe)
        proc = fw.run(target, exe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (payload,) = fw.parse_hex_lines(proc.stdout, "dots")
    got = np.frombuffer(payload, "<u4").astype(np.int64)
    want = expected_results(arrays)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{where}: {bad.size} of {want.size} dot results differ, first at {bad[:5]}"


# ---------------------------------------------------------------- lowered graphs on the M55
def run_m55(folder: Path, graph, samples):
    """Generate for cortex-m55, run in QEMU, compare with the simulator bit for bit; checks MVE was compiled."""
    got = _run_and_compare(folder, graph, samples, M55, "qemu")
    assert_mve_in(folder / "build" / "net.o")
    return got


@needs_qemu
@pytest.mark.parametrize("bits", [8, 16])
def test_random_qmn_graph_on_m55(tmp_path, bits):
    g = random_graph(bits, 1)
    run_m55(tmp_path, g, random_inputs(g, 6, 1))


@needs_qemu
def test_random_s8_graphs_on_m55(tmp_path):
    g = random_s8_graph(3)
    run_m55(tmp_path / "random", g, s8_random_inputs(g, 6, 3))
    g = conv_edge_case_graph(1)
    run_m55(tmp_path / "edges", g, s8_random_inputs(g, 5, 1))


@needs_qemu
@pytest.mark.parametrize("bits", [8, 16])
def test_digits_on_m55(tmp_path, digits_test, bits):
    samples, labels = digits_test
    graph, gen, folder = compile_onnx(tmp_path, DIGITS / "digits.onnx", DIGITS / "calib.npz", bits, M55)
    got, want = check(graph, gen, folder, samples, "qemu")
    assert_mve_in(folder / "build" / "net.o")
    assert _digits_accuracy(got, labels) == _digits_accuracy(want, labels) >= 350


@needs_qemu
def test_kws_int8_on_m55_matches_tflite_micro(tmp_path, monkeypatch):
    # test_backend_s8's compiled QDQ model (skips when the shared models are absent), generated for the M55.
    import test_backend_s8
    monkeypatch.setattr(test_backend_s8, "generate", lambda graph, name, target, **kw: generate(graph, name, M55, **kw))
    model = CompiledModel("kws_dscnn", tmp_path)
    assert model.gen.target == M55
    harness.run_qemu(tmp_path, tmp_path / "in.bin", tmp_path / "qemu_out.bin")
    assert_mve_in(tmp_path / "build" / "net.o")
    _assert_bit_exact(model.outputs(tmp_path / "qemu_out.bin"), model.tflm, "QEMU Cortex-M55 vs TFLite Micro")
    _assert_bit_exact(model.simulated(), model.tflm, "simulator vs TFLite Micro")
