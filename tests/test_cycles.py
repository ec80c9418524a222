"""The cycle model (backends/cmsis/cycles.py) on hand-written assembly.

Each function below is assembled with arm-none-eabi-gcc, run once under
unicorn by benchmarks/count_instructions.py, and its estimated cycles are
compared with the sum worked out by hand from the TRM cycle tables (the
comment beside each instruction). "typical" uses a branch refill P = 2 and
SDIV = 7; "low" P = 1, SDIV = 2; "high" P = 3, SDIV = 12.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qcc.backends.cmsis import cycles

REPO = Path(__file__).resolve().parents[1]
CC = "arm-none-eabi-gcc"

# Cortex-M4 (ARMv7E-M). Every function returns with `bx lr` (1 + P).
M4_SOURCE = r"""
    .syntax unified
    .thumb
    .macro func name
    .global \name
    .type \name, %function
    .p2align 2
    .thumb_func
\name:
    .endm

    func smlad_loop          @ r3 iterations of one SMLAD
    movs r3, #100            @ 1
1:  smlad r0, r1, r2, r0     @ 1
    subs r3, #1              @ 1
    bne 1b                   @ 1 + P taken (99 times), 1 not taken
    bx lr
    .size smlad_loop, . - smlad_loop

    func three_loads         @ the TRM's pipelining example: 4 cycles
    ldr r0, [r1, r0]         @ 2
    ldr r1, [r2]             @ 1: pipelined, r0 does not feed the address
    ldr r2, [r3, #4]         @ 1
    bx lr
    .size three_loads, . - three_loads

    func dependent_loads     @ the second address is the first load's result
    ldr r0, [r1]             @ 2
    ldr r0, [r0]             @ 2: not pipelined
    bx lr
    .size dependent_loads, . - dependent_loads

    func address_stall       @ an ALU result used as an address
    adds r1, #4              @ 1
    ldr r0, [r1]             @ 2 + 1 stall
    bx lr
    .size address_stall, . - address_stall

    func stores              @ STR [Rn,#imm] 1; STR [Rn,Rm] 2; STR after LDR 1
    str r0, [r1, #4]         @ 1
    str r0, [r1, r2]         @ 2
    ldr r3, [r1]             @ 2
    str r3, [r1, r2]         @ 1: pipelined behind the load
    bx lr
    .size stores, . - stores

    func push_pop            @ 1 + N each; POP {.., pc} adds P
    push {r4, r5, r6, r7, lr}  @ 6
    mov r4, r0               @ 1
    pop {r4, r5, r6, r7, pc}   @ 6 + P
    .size push_pop, . - push_pop

    func divide              @ SDIV: 2..12 (early termination)
    sdiv r0, r0, r1          @ divide
    bx lr
    .size divide, . - divide

    func it_block            @ IT 1, conditional instructions 1 whether or not they execute
    cmp r0, #0               @ 1
    ite gt                   @ 1
    movgt r0, #1             @ 1
    movle r0, #2             @ 1
    bx lr
    .size it_block, . - it_block

    func long_multiply       @ M4: SMLAL and UMULL are single cycle (M3: 4..7 and 3..5)
    smlal r0, r1, r2, r3     @ 1
    umull r2, r3, r0, r1     @ 1
    bx lr
    .size long_multiply, . - long_multiply

    func call_leaf           @ BL 1 + P, then the callee
    push {r4, lr}            @ 3
    bl leaf                  @ 1 + P
    pop {r4, pc}             @ 3 + P
    .size call_leaf, . - call_leaf

    func leaf
    adds r0, #1              @ 1
    bx lr                    @ 1 + P
    .size leaf, . - leaf
"""

# Cortex-M0+ (ARMv6-M, two-stage pipeline): loads 2, taken branch 2, BL 3, BX 2.
M0PLUS_SOURCE = r"""
    .syntax unified
    .thumb
    .global muls_loop
    .type muls_loop, %function
    .thumb_func
muls_loop:
    movs r3, #50             @ 1
1:  muls r0, r1, r0          @ 1 (fast multiplier)
    ldr r2, [r1]             @ 2
    subs r3, #1              @ 1
    bne 1b                   @ 2 taken (49 times), 1 not taken
    bx lr                    @ 2
    .size muls_loop, . - muls_loop
"""

# Cortex-M7: the dual-issue approximation (no published table; see the module docstring).
M7_SOURCE = r"""
    .syntax unified
    .thumb
    .global pairs_loop
    .type pairs_loop, %function
    .thumb_func
pairs_loop:
    movs r3, #10             @ \ one cycle: independent
    movs r2, #0              @ /
1:  adds r0, #1              @ \ one cycle
    adds r1, #1              @ /
    smlad r2, r0, r1, r2     @ DSP: only in the older slot, and it reads r0/r1 just written ...
    subs r3, #1              @ ... so SMLAD + SUBS pair: one cycle
    bne 1b                   @ alone (older of nothing): one cycle, + refill when taken
    bx lr                    @ one cycle + refill
    .size pairs_loop, . - pairs_loop
"""


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def counter():
    for module in ("unicorn", "capstone", "elftools"):
        pytest.importorskip(module)
    if shutil.which(CC) is None:
        pytest.skip(f"{CC} is not installed")
    return _load("qcc_cycles_count_instructions", REPO / "benchmarks" / "count_instructions.py")


def _assemble(tmp_path_factory, source: str, cpu: str) -> Path:
    d = tmp_path_factory.mktemp(cpu)
    (d / "f.s").write_text(source)
    subprocess.run([CC, f"-mcpu={cpu}", "-mthumb", "-nostdlib", "-nostartfiles", "-Wl,-e,0", "-Wl,-Ttext=0x1000",
                    "f.s", "-o", "f.elf"], cwd=d, check=True, capture_output=True)
    return d / "f.elf"


@pytest.fixture(scope="module")
def m4_elf(counter, tmp_path_factory):
    return _assemble(tmp_path_factory, M4_SOURCE, "cortex-m4")


def _cycles(counter, elf, func, args=(), cpu="cortex-m4"):
    result = counter.count_calls(elf, func, args if callable(args) else list(args), cpu)
    return result, result["cycles"]


def _by_refill(p_dependent):
    """{estimate: cycles} from a function of (P, SDIV cycles)."""
    return {"low": p_dependent(1, 2), "typical": p_dependent(2, 7), "high": p_dependent(3, 12)}


def test_smlad_loop(counter, m4_elf):
    result, got = _cycles(counter, m4_elf, "smlad_loop", [0, 0x0001_0002, 0x0003_0004])
    assert result["return"] == 100 * (1 * 3 + 2 * 4)  # the loop really ran 100 times
    assert result["total"] == 1 + 3 * 100 + 1
    assert got == _by_refill(lambda p, _: 1 + 2 * 100 + 99 * (1 + p) + 1 + (1 + p))
    assert got["typical"] == 502


def test_load_pipelining(counter, m4_elf):
    buf = bytes(range(16))
    assert _cycles(counter, m4_elf, "three_loads", [0, buf, buf, buf])[1] == _by_refill(lambda p, _: 4 + 1 + p)

    def setup(machine):  # a word holding its own address: ldr r0, [r0] stays in bounds
        pointer_to_self = machine.alloc(bytes(4))
        machine.uc.mem_write(pointer_to_self, pointer_to_self.to_bytes(4, "little"))
        return [0, pointer_to_self]
    _, got = _cycles(counter, m4_elf, "dependent_loads", setup)
    assert got == _by_refill(lambda p, _: 2 + 2 + 1 + p)
    assert _cycles(counter, m4_elf, "address_stall", [0, bytes(8)])[1] == _by_refill(lambda p, _: 1 + 3 + 1 + p)


def test_stores(counter, m4_elf):
    result, got = _cycles(counter, m4_elf, "stores", [0x11223344, bytes(16), 8])
    assert result["buffers"][0][4:8] == bytes.fromhex("44332211")
    assert got == _by_refill(lambda p, _: 1 + 2 + 2 + 1 + 1 + p)


def test_push_pop_and_calls(counter, m4_elf):
    result, got = _cycles(counter, m4_elf, "push_pop", [7])
    assert result["return"] == 7
    assert got == _by_refill(lambda p, _: 6 + 1 + 6 + p)
    result, got = _cycles(counter, m4_elf, "call_leaf", [41])
    assert result["return"] == 42
    assert got == _by_refill(lambda p, _: 3 + (1 + p) + 1 + (1 + p) + 3 + p)
    # the callee's cycles belong to it and, inclusively, to its caller
    assert result["inclusive_cycles"]["leaf"] == result["exclusive_cycles"]["leaf"] == 1 + (1 + 2)
    assert result["inclusive_cycles"]["call_leaf"] == got["typical"]
    assert sum(result["exclusive_cycles"].values()) == got["typical"]


def test_divide_it_and_long_multiply(counter, m4_elf):
    result, got = _cycles(counter, m4_elf, "divide", [100, 7])
    assert result["return"] == 14
    assert got == _by_refill(lambda p, div: div + 1 + p)
    for x, expected in ((5, 1), (-5 & 0xFFFF_FFFF, 2)):
        result, got = _cycles(counter, m4_elf, "it_block", [x])
        assert result["return"] == expected
        assert got == _by_refill(lambda p, _: 4 + 1 + p)  # the same on both paths
    assert _cycles(counter, m4_elf, "long_multiply", [1, 2, 3, 4])[1] == _by_refill(lambda p, _: 2 + 1 + p)


def test_cortex_m0plus(counter, tmp_path_factory):
    elf = _assemble(tmp_path_factory, M0PLUS_SOURCE, "cortex-m0plus")
    result, got = _cycles(counter, elf, "muls_loop", [1, bytes(4)], cpu="cortex-m0plus")
    assert result["total"] == 1 + 4 * 50 + 1
    # no variable terms on the M0+: the three estimates agree
    assert got == {k: 1 + 4 * 50 + 49 * 2 + 1 + 2 for k in cycles.ESTIMATES}


def test_cortex_m7_dual_issue(counter, tmp_path_factory):
    elf = _assemble(tmp_path_factory, M7_SOURCE, "cortex-m7")
    result, got = _cycles(counter, elf, "pairs_loop", cpu="cortex-m7")
    assert result["total"] == 2 + 5 * 10 + 1
    # per iteration: (adds, adds) 1 + (smlad, subs) 1 + bne 1, + refill when taken
    refill = {"low": 0, "typical": 1, "high": 3}
    assert got == {k: 1 + 10 * 3 + 9 * r + (1 + r) for k, r in refill.items()}
    assert got["typical"] < result["total"]  # dual issue: fewer cycles than instructions


def test_cycles_at_least_instructions_on_m4(counter, m4_elf):
    for func, args in (("smlad_loop", [0, 1, 1]), ("call_leaf", [1]), ("stores", [0, bytes(16), 8])):
        result = counter.count_calls(m4_elf, func, args)
        assert result["cycles"]["low"] >= result["total"]
        assert result["cycles"]["low"] <= result["cycles"]["typical"] <= result["cycles"]["high"]


def test_milliseconds():
    assert cycles.milliseconds(120_000) == pytest.approx(1.0)
    assert cycles.milliseconds(8_724_000, mhz=120) == pytest.approx(72.7)


# ---------------------------------------------------------------- qcc --report
DIGITS = REPO / "examples" / "digits"


def _qcc_report(tmp_path, target: str, suffix: str) -> Path:
    from qcc.tools.compile import main
    report = tmp_path / f"r{suffix}"
    assert main([str(DIGITS / "digits.onnx"), "-o", str(tmp_path / "out" / "digits.c"), "--target", target,
                 "--calib", str(DIGITS / "calib.npz"), "--report", str(report),
                 "--max-recompute", "0"]) == 0  # whole-tensor layers: one C function each, named l<i>_<op>
    return report


def test_qcc_report_has_per_layer_cycles(counter, tmp_path):
    import json
    report = json.loads(_qcc_report(tmp_path, "cortex-m4", ".json").read_text())
    cyc = report["cycles"]
    assert cyc["cpu"] == "cortex-m4" and cyc["clock_mhz"] == 120 and cyc["input"] == "zeros"
    assert list(cyc["layers"]) == [layer["fn"] for layer in report["layers"]]
    total = cyc["cycles"]
    assert cyc["instructions"] <= total["low"] <= total["typical"] <= total["high"]
    for fn, layer in cyc["layers"].items():
        assert layer["cycles"] >= layer["instructions"] > 0, fn
    assert sum(layer["cycles"] for layer in cyc["layers"].values()) <= total["typical"]
    # conv2 holds 73,728 of the 78,976 MACs: it dominates
    assert max(cyc["layers"], key=lambda fn: cyc["layers"][fn]["cycles"]) == "l1_conv2"


def test_qcc_report_markdown_and_targets_without_a_model(counter, tmp_path, monkeypatch):
    text = _qcc_report(tmp_path, "cortex-m4", ".md").read_text()
    section = text.split("## Estimated cycles per layer (cortex-m4, one call on an all-zero input)")[1]
    assert " ms at 120 MHz" in section
    rows = [line for line in section.splitlines() if line.startswith("| l") and not line.startswith("| layer")]
    assert [row.split(" | ")[0][2:] for row in rows] == ["l0_conv1", "l1_conv2", "l2_maxpool", "l3_avgpool",
                                                         "l4_dense"]
    m55 = _qcc_report(tmp_path / "m55", "cortex-m55", ".md").read_text()
    assert "(no cycle estimate: no cycle model for cortex-m55 (unicorn cannot emulate it))" in m55
    assert "## Estimated cycles per layer" not in m55
    monkeypatch.setenv("QCC_REPORT_CYCLES", "0")  # the opt-out benchmarks/run.py uses
    off = _qcc_report(tmp_path / "off", "cortex-m4", ".md").read_text()
    assert "(no cycle estimate: QCC_REPORT_CYCLES=0)" in off and "## Estimated cycles per layer" not in off


# ---------------------------------------------------------------- QEMU instruction counts (the M55's)
def test_count_in_trace():
    qemu_count = _load("qcc_cycles_qemu_count", REPO / "benchmarks" / "qemu_count.py")
    trace = ["Trace 0: 0x7f00 [00000000/10000040/00000150/ff000201] main",
             "Trace 0: 0x7f01 [00000000/10000044/00000150/ff000201] main",
             "Trace 0: 0x7f02 [00000000/10001538/00000150/ff000201] net_run",
             "other log text",
             "Trace 0: 0x7f03 [00000000/1000153a/00000150/ff000201] net_run",
             "Trace 0: 0x7f04 [00000000/10002000/00000150/ff000201] memcpy",
             "Trace 0: 0x7f05 [00000000/1000153c/00000150/ff000201] net_run",
             "Trace 0: 0x7f06 [00000000/10000048/00000150/ff000201] main",
             "Trace 0: 0x7f07 [00000000/10001538/00000150/ff000201] net_run"]
    assert qemu_count.count_in_trace(trace, "net_run") == 4  # its callee (memcpy) included
    with pytest.raises(qemu_count.QemuCountError, match="never entered"):
        qemu_count.count_in_trace(trace, "other_run")
    with pytest.raises(qemu_count.QemuCountError, match="never returned"):
        qemu_count.count_in_trace(trace[:6], "net_run")


def test_qemu_count_equals_unicorn_count_on_the_m4(counter, tmp_path):
    import numpy as np
    for tool in ("qemu-system-arm", "make"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    qemu_count = _load("qcc_cycles_qemu_count", REPO / "benchmarks" / "qemu_count.py")
    from qcc.tools.compile import main
    assert main([str(DIGITS / "digits.onnx"), "-o", str(tmp_path / "digits.c"), "--target", "cortex-m4",
                 "--calib", str(DIGITS / "calib.npz"), "--report", str(tmp_path / "r.json")]) == 0
    x = np.random.default_rng(0).uniform(-2, 18, 64).astype("<f4")  # past the pixel range: saturation too
    x.tofile(tmp_path / "in.bin")
    n = qemu_count.count_run(tmp_path, "digits", tmp_path / "in.bin", tmp_path / "out.bin")
    # unicorn on the same firmware ELF, NAME_run called with the bytes the firmware quantized (Qm.n:
    # round half away from zero, saturate)
    import json
    frac = json.loads((tmp_path / "r.json").read_text())["inputs"][0]["frac_bits"]
    scaled = x.astype(np.float64) * 2.0 ** frac
    q = np.clip(np.sign(scaled) * np.floor(np.abs(scaled) + 0.5), -128, 127).astype(np.int8)
    result = counter.count_calls(tmp_path / "digits.elf", "digits_run", [q.tobytes(), bytearray(10)])
    assert result["buffers"][1] == (tmp_path / "out.bin").read_bytes()[:10]  # both computed the same outputs
    assert n == result["total"] > 100_000
