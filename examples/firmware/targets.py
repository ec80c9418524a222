"""Cortex-M targets for firmware built by qcc and run under QEMU.

One record per ``--target``: the compiler's CPU flags, the QEMU board that
runs it, and the linker script for that board's memory map. ``targets.mk``
says the same for Makefiles (a test checks both agree). Helpers here build
a firmware ELF from C sources plus this folder's startup and semihosting
I/O, run it in QEMU, and parse the ``<tag> <hex>`` lines of semihost_io.h.

Boards (QEMU 7.2): mps2-an385 has a Cortex-M3, and ARMv6-M code (M0, M0+)
is a subset of ARMv7-M, so it runs there too; the other boards carry the
target's own core. M33 and M55 boot in the secure state, so their scripts
use the secure aliases of code and data memory.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

FIRMWARE_DIR = Path(__file__).resolve().parent
STARTUP_SOURCES = (FIRMWARE_DIR / "startup.c", FIRMWARE_DIR / "semihost_io.c")
CC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"


@dataclass(frozen=True)
class Target:
    name: str
    cpu_flags: tuple[str, ...]
    qemu_machine: str
    linker_script: str  # file name inside FIRMWARE_DIR
    code: tuple[int, int]  # (origin, length) of the code region
    ram: tuple[int, int]  # (origin, length) of the data region

    @property
    def linker_script_path(self) -> Path:
        return FIRMWARE_DIR / self.linker_script

    @property
    def has_fpu(self) -> bool:
        return "-mfloat-abi=hard" in self.cpu_flags


_MIB = 1 << 20
_MPS2 = dict(linker_script="mps2.ld", code=(0x0000_0000, 4 * _MIB), ram=(0x2000_0000, 4 * _MIB))

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("cortex-m0", ("-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"), "mps2-an385", **_MPS2),
        Target("cortex-m0plus", ("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"), "mps2-an385", **_MPS2),
        Target("cortex-m3", ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"), "mps2-an385", **_MPS2),
        Target(
            "cortex-m4",
            ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
            "mps2-an386",
            **_MPS2,
        ),
        Target(
            "cortex-m7",
            ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
            "mps2-an500",
            **_MPS2,
        ),
        Target(
            "cortex-m33",
            ("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
            "mps2-an505",
            linker_script="mps2-an505.ld",
            code=(0x1000_0000, 4 * _MIB),
            ram=(0x3800_0000, 4 * _MIB),
        ),
        Target(
            # -mfpu=auto: the M55's own FPU and MVE (helium) from -mcpu.
            "cortex-m55",
            ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard", "-mfpu=auto"),
            "mps3-an547",
            linker_script="mps3-an547.ld",
            code=(0x1000_0000, 512 << 10),
            ram=(0x3000_0000, 512 << 10),
        ),
    )
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}") from None


def tools_missing() -> list[str]:
    """Names of the cross compiler / emulator not on PATH (empty if both are)."""
    return [tool for tool in (CC, QEMU) if shutil.which(tool) is None]


def firmware_cflags(target: Target) -> list[str]:
    return [*target.cpu_flags, "-std=c99", "-ffunction-sections", "-fdata-sections", f"-I{FIRMWARE_DIR}"]


def firmware_ldflags(target: Target) -> list[str]:
    return [
        *target.cpu_flags,
        "--specs=rdimon.specs",
        "-nostartfiles",
        f"-L{FIRMWARE_DIR}",
        f"-T{target.linker_script_path}",
        "-Wl,--gc-sections",
    ]


def build_command(
    target: Target, sources: Sequence[str | Path], output: str | Path, extra_cflags: Sequence[str] = ("-O2",)
) -> list[str]:
    """The one arm-none-eabi-gcc call that compiles and links a firmware ELF."""
    srcs = [str(s) for s in (*sources, *STARTUP_SOURCES)]
    return [CC, *firmware_cflags(target), *extra_cflags, *srcs, *firmware_ldflags(target), "-o", str(output)]


def build(target: Target, sources: Sequence[str | Path], output: str | Path, extra_cflags: Sequence[str] = ("-O2",)) -> Path:
    cmd = build_command(target, sources, output, extra_cflags)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"firmware build failed for {target.name}:\n{' '.join(cmd)}\n{proc.stderr}")
    return Path(output)


def qemu_command(target: Target, elf: str | Path, args: Sequence[str] = ()) -> list[str]:
    """QEMU invocation; args reach main's argv[1:] through semihosting."""
    for arg in args:
        # QEMU splits -semihosting-config on commas; the firmware splits argv on spaces.
        if "," in arg or " " in arg:
            raise ValueError(f"semihosting argument {arg!r} may not contain ',' or ' '")
    semihosting = "enable=on,target=native," + ",".join(f"arg={a}" for a in (Path(elf).name, *args))
    return [QEMU, "-M", target.qemu_machine, "-nographic", "-monitor", "none",
            "-semihosting-config", semihosting, "-kernel", str(elf)]


def run(
    target: Target, elf: str | Path, args: Sequence[str] = (), cwd: str | Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess:
    """Runs the firmware; relative host paths in fopen() resolve against cwd."""
    return subprocess.run(
        qemu_command(target, elf, args), cwd=cwd, stdin=subprocess.DEVNULL,
        capture_output=True, timeout=timeout,
    )


_HEX_LINE = re.compile(r"^(\S+) ([0-9a-f]*)$")


def parse_hex_lines(stdout: str | bytes, tag: str) -> list[bytes]:
    """The payloads of every ``<tag> <hex>`` line, in order (qcc_print_hex)."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode("utf-8", "replace")
    out = []
    for line in stdout.splitlines():
        m = _HEX_LINE.match(line.rstrip("\r"))
        if m and m.group(1) == tag:
            out.append(bytes.fromhex(m.group(2)))
    return out
