"""Firmware harness under QEMU (examples/firmware) and the instruction counter
(benchmarks/count_instructions.py) under unicorn."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FIRMWARE_DIR = REPO / "examples" / "firmware"
COUNTER_PATH = REPO / "benchmarks" / "count_instructions.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


targets = _load("qcc_firmware_targets", FIRMWARE_DIR / "targets.py")

needs_gcc = pytest.mark.skipif(
    shutil.which(targets.CC) is None, reason=f"{targets.CC} not installed (Debian: gcc-arm-none-eabi)"
)
needs_qemu = pytest.mark.skipif(
    shutil.which(targets.QEMU) is None, reason=f"{targets.QEMU} not installed (Debian: qemu-system-arm)"
)
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")

ALL_TARGETS = list(targets.TARGETS)


# --------------------------------------------------------------------------
# targets.py and targets.mk say the same


@needs_make
@pytest.mark.parametrize("name", ALL_TARGETS)
def test_targets_mk_matches_targets_py(name):
    target = targets.TARGETS[name]

    def make_var(var):
        proc = subprocess.run(
            ["make", "-s", "--no-print-directory", "-f", "targets.mk", f"QCC_TARGET={name}", f"print-{var}"],
            cwd=FIRMWARE_DIR, capture_output=True, text=True, check=True,
        )
        return proc.stdout.strip()

    assert make_var("QCC_CPU_FLAGS").split() == list(target.cpu_flags)
    assert make_var("QCC_QEMU_MACHINE") == target.qemu_machine
    assert Path(make_var("QCC_LINKER_SCRIPT")).name == target.linker_script
    assert target.linker_script_path.is_file()
    origin = re.search(r"RAM\s*\(rwx\)\s*:\s*ORIGIN\s*=\s*(0x[0-9a-fA-F]+)", target.linker_script_path.read_text())
    assert int(origin.group(1), 16) == target.ram[0]


@needs_make
def test_targets_mk_rejects_unknown_target():
    proc = subprocess.run(
        ["make", "-s", "-f", "targets.mk", "QCC_TARGET=cortex-m99", "print-QCC_CPU_FLAGS"],
        cwd=FIRMWARE_DIR, capture_output=True, text=True,
    )
    assert proc.returncode != 0 and "unknown QCC_TARGET 'cortex-m99'" in proc.stderr


def test_get_target_names_known_targets():
    assert targets.get_target("cortex-m4").qemu_machine == "mps2-an386"
    with pytest.raises(ValueError, match="cortex-m0plus"):
        targets.get_target("m4")


def test_parse_hex_lines_picks_its_tag():
    out = b"hello\nrec 00ff10\nout 01\nrec \nrecord 02\n"
    assert targets.parse_hex_lines(out, "rec") == [b"\x00\xff\x10", b""]


# --------------------------------------------------------------------------
# Firmware on every board


@pytest.fixture(scope="module")
def records():
    return bytes([1, 2, 3, 4, 0x10, 0x20, 0x30, 0xFF, 0x7F, 0x80, 0x00, 0xFE])


@needs_gcc
@needs_qemu
@pytest.mark.parametrize("name", ALL_TARGETS)
def test_selftest_runs_on_board(name, tmp_path, records):
    """printf, .data/.bss, float math, fopen/fread/fwrite and exit code 3."""
    target = targets.TARGETS[name]
    elf = targets.build(target, [FIRMWARE_DIR / "selftest.c"], tmp_path / "fw.elf",
                        ["-O2", "-Wall", "-Wextra", "-Werror"])
    (tmp_path / "in.bin").write_bytes(records)
    proc = targets.run(target, elf, ["in.bin", "out.bin"], cwd=tmp_path, timeout=60)
    stdout = proc.stdout.decode()
    assert proc.returncode == 3, f"{name} on {target.qemu_machine}: rc={proc.returncode}\n{stdout}\n{proc.stderr}"
    assert "sum of squares 1027\n" in stdout  # sum p^2 over the first 8 primes
    assert "scaled 3081\n" in stdout  # 1027 * 1.5 * 2 in float
    assert targets.parse_hex_lines(stdout, "rec") == [
        bytes((b + 1) & 0xFF for b in records[i : i + 4]) for i in range(0, len(records), 4)
    ]
    assert "records 3 status 0\n" in stdout
    assert (tmp_path / "out.bin").read_bytes() == sum(records).to_bytes(4, "little")


EXIT_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "none";
    printf("mode %s\n", mode);
    if (!strcmp(mode, "ret0")) return 0;
    if (!strcmp(mode, "exit42")) exit(42);              /* newlib exit -> _exit */
    if (!strcmp(mode, "fault")) return (int)*(volatile unsigned *)0xFFFFFFF0u;
    return 7;
}
"""


@needs_gcc
@needs_qemu
@pytest.mark.parametrize("name", ["cortex-m0plus", "cortex-m4", "cortex-m33", "cortex-m55"])
def test_exit_codes_reach_the_host(name, tmp_path):
    target = targets.TARGETS[name]
    src = tmp_path / "exitcode.c"
    src.write_text(EXIT_PROGRAM)
    elf = targets.build(target, [src], tmp_path / "exit.elf")
    expected = {"ret0": 0, "exit42": 42, "other": 7, "fault": 128 + 3}  # 3 = HardFault
    for mode, code in expected.items():
        proc = targets.run(target, elf, [mode], cwd=tmp_path, timeout=30)
        assert proc.returncode == code, f"{name} {mode}: {proc.stdout!r} {proc.stderr!r}"
        assert f"mode {mode}\n".encode() in proc.stdout
    assert b"fault" in proc.stdout  # the fault handler says why the run ended


@needs_make
@needs_gcc
@needs_qemu
def test_makefile_builds_and_runs(tmp_path, records):
    (tmp_path / "in.bin").write_bytes(records)
    out = tmp_path / "m7.elf"
    make = ["make", "-s", "--no-print-directory", "-C", str(FIRMWARE_DIR), "TARGET=cortex-m7", f"OUT={out}"]
    subprocess.run(make, check=True, capture_output=True)
    # make -C runs QEMU in the firmware folder: give host paths in full.
    args = f"ARGS=arg={tmp_path / 'in.bin'},arg={tmp_path / 'out.bin'}"
    proc = subprocess.run([*make, "run", args], cwd=tmp_path,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    # make reports the recipe's exit status 3 as its own failure (status 2).
    assert "Error 3" in proc.stderr, proc.stderr
    assert "records 3 status 0" in proc.stdout
    assert (tmp_path / "out.bin").read_bytes() == sum(records).to_bytes(4, "little")


# --------------------------------------------------------------------------
# Instruction counting


DOT_SOURCE = r"""
#include <stdint.h>
__attribute__((noipa)) int32_t dot_q15(const int16_t *a, const int16_t *b, int n)
{
    int32_t acc = 0;
    for (int i = 0; i < n; i++)
        acc += (int32_t)a[i] * b[i];
    return acc;
}
float dot_f32(const float *a, const float *b, int n)
{
    float acc = 0.0f;
    for (int i = 0; i < n; i++)
        acc += a[i] * b[i];
    return acc;
}
int32_t two_dots(const int16_t *a, const int16_t *b, int n)
{
    return dot_q15(a, b, n) - 3 * dot_q15(b, a, n);
}
int32_t add_six(int a, int b, int c, int d, int e, int f) { return a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f; }
void semihost_write0(const char *s)
{
    register const char *r1 __asm__("r1") = s;
    register int r0 __asm__("r0") = 4;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
}
"""


@pytest.fixture(scope="module")
def counter():
    pytest.importorskip("unicorn")
    pytest.importorskip("capstone")
    pytest.importorskip("elftools")
    return _load("qcc_count_instructions", COUNTER_PATH)


@pytest.fixture(scope="module")
def dot_elf(tmp_path_factory):
    if shutil.which(targets.CC) is None:
        pytest.skip(f"{targets.CC} not installed (Debian: gcc-arm-none-eabi)")
    d = tmp_path_factory.mktemp("dot")
    (d / "dot.c").write_text(DOT_SOURCE)
    cmd = [targets.CC, *targets.TARGETS["cortex-m4"].cpu_flags, "-O2", "-nostdlib", "-ffreestanding",
           "-Wl,-e,dot_q15", "dot.c", "-o", "dot.elf"]
    subprocess.run(cmd, cwd=d, check=True, capture_output=True)
    return d / "dot.elf"


def _loop_length(counter, elf, func):
    """Instructions in the function's one loop: from a backward branch's
    target to the branch, read from the disassembly."""
    import capstone

    machine = counter.Machine(elf)
    start, size = machine.symbols[func]
    cs = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
    insns = list(cs.disasm(machine.read(start, size), start))
    loops = []
    for i, insn in enumerate(insns):
        if insn.mnemonic.startswith("b") and insn.op_str.startswith("#"):
            target = int(insn.op_str[1:], 0)
            if start <= target < insn.address:
                loops.append(sum(1 for j in insns[: i + 1] if j.address >= target))
    assert len(loops) == 1, f"expected one loop in {func}: {[(i.mnemonic, i.op_str) for i in insns]}"
    return loops[0]


def _q15(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-32768, 32768, n, dtype=np.int16), rng.integers(-32768, 32768, n, dtype=np.int16)


def _count_q15(counter, elf, n, func="dot_q15"):
    a, b = _q15(n)
    return counter.count_calls(elf, func, [a.tobytes(), b.tobytes(), n])


def _expected_dot(a, b):
    return int(np.dot(a.astype(np.int64), b.astype(np.int64))) & 0xFFFF_FFFF


def test_count_is_repeatable_and_linear(counter, dot_elf):
    per_iteration = _loop_length(counter, dot_elf, "dot_q15")
    counts = {}
    for n in (16, 32, 64, 257):
        first = _count_q15(counter, dot_elf, n)
        again = _count_q15(counter, dot_elf, n)
        assert first["total"] == again["total"]
        a, b = _q15(n)
        assert first["return"] == _expected_dot(a, b)
        counts[n] = first["total"]
    for n in (16, 32):
        assert counts[2 * n] - counts[n] == n * per_iteration
    overhead = counts[16] - 16 * per_iteration
    assert counts[257] == overhead + 257 * per_iteration
    assert counter.count_calls(dot_elf, "dot_q15", [0, 0, 0])["total"] < overhead  # the n <= 0 early exit


def test_float_code_runs_and_scales(counter, dot_elf):
    per_iteration = _loop_length(counter, dot_elf, "dot_f32")
    rng = np.random.default_rng(1)
    totals = {}
    for n in (10, 20):
        a = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        result = counter.count_calls(dot_elf, "dot_f32", [a.tobytes(), b.tobytes(), n])
        totals[n] = result["total"]
        assert result["return_float"] == pytest.approx(float(np.dot(a, b)), rel=1e-5)
        assert result["buffers"] == [a.tobytes(), b.tobytes()]  # inputs untouched
    assert totals[20] - totals[10] == 10 * per_iteration


def test_inclusive_and_exclusive_per_function(counter, dot_elf):
    n = 40
    a, b = _q15(n)
    single = _count_q15(counter, dot_elf, n)["total"]
    result = counter.count_calls(dot_elf, "two_dots", [a.tobytes(), b.tobytes(), n])
    assert result["return"] == (_expected_dot(a, b) - 3 * _expected_dot(b, a)) & 0xFFFF_FFFF
    assert result["exclusive"]["dot_q15"] == 2 * single
    assert result["inclusive"]["dot_q15"] == 2 * single
    assert result["inclusive"]["two_dots"] == result["total"]
    assert result["exclusive"]["two_dots"] == result["total"] - 2 * single
    assert sum(result["exclusive"].values()) == result["total"]


def test_stack_arguments_and_callable_setup(counter, dot_elf):
    assert counter.count_calls(dot_elf, "add_six", [1, 2, 3, 4, 5, 6])["return"] == 91

    def setup(machine):
        a = machine.alloc(np.arange(8, dtype=np.int16).tobytes())
        return [a, a, 8]

    assert counter.count_calls(dot_elf, "dot_q15", setup)["return"] == sum(i * i for i in range(8))


def test_semihosting_in_counted_code_is_an_error(counter, dot_elf):
    with pytest.raises(counter.EmulationError, match="BKPT"):
        counter.count_calls(dot_elf, "semihost_write0", [0])


def test_bad_calls_are_reported(counter, dot_elf):
    with pytest.raises(KeyError, match="no function symbol 'nope'"):
        counter.count_calls(dot_elf, "nope")
    with pytest.raises(counter.EmulationError, match="did not return within 50"):
        _count = counter.count_calls(dot_elf, "dot_q15", [counter.HEAP_BASE, counter.HEAP_BASE, 1000], limit=50)
    with pytest.raises(counter.EmulationError, match="UNMAPPED"):
        counter.count_calls(dot_elf, "dot_q15", [0x9000_0000, 0x9000_0000, 4])


def test_cli_prints_counts(counter, dot_elf, tmp_path):
    n = 12
    a, b = _q15(n)
    (tmp_path / "a.bin").write_bytes(a.tobytes())
    (tmp_path / "b.bin").write_bytes(b.tobytes())
    cmd = [sys.executable, str(COUNTER_PATH), str(dot_elf), "two_dots",
           "--in", "a.bin", "--in", "b.bin", "--arg", str(n), "--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    assert result["total"] == counter.count_calls(dot_elf, "two_dots", [a.tobytes(), b.tobytes(), n])["total"]
    assert result["buffers"] == [a.tobytes().hex(), b.tobytes().hex()]
    table = subprocess.run(cmd[:-1], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    # columns: inclusive, exclusive instructions, inclusive estimated cycles
    assert re.search(r"^two_dots\s+\d+\s+\d+\s+\d+$", table, re.M) and "dot_q15" in table
    assert f"estimated cortex-m4 cycles: {result['cycles']['typical']} " in table
