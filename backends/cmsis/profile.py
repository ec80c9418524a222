"""Per-layer instructions and estimated cycles of generated C, by building it and emulating one call.

    from qcc.backends.cmsis import profile
    profile.layer_cycles(gen)   # gen: cmsis.generate(...)'s GeneratedModel
    # {"cpu": "cortex-m4", "clock_mhz": 120, "input": "zeros", "instructions": 4_882_574,
    #  "cycles": {"low": ..., "typical": ..., "high": ...},
    #  "layers": {"l0_conv1": {"instructions": ..., "cycles": ...}, ...}}

The model's C is built with arm-none-eabi-gcc -O3 into a bare ELF whose entry
is NAME_run (nothing else linked: no startup code, no semihosting), with
gcc's inlining of the static layer functions turned off (ATTRIBUTION_FLAGS)
so each layer stays a function; emulator.count_calls runs NAME_run once and
sums each layer's executed instructions and cycles inclusively (the layer and
what it calls). Cycles are cycles.py's estimates for the target's core:
typical, and the low/high bounds of the TRM's variable terms.

The input is all zero bytes: the generated kernels branch on data only in
saturation and a few activation paths, so the count is close to that of a
real input (benchmarks/run.py counts a real sample). Without the bench extra
(unicorn, capstone, pyelftools), arm-none-eabi-gcc, or a timing model for the
target, or with QCC_REPORT_CYCLES=0 in the environment (benchmarks/run.py sets
it: it counts real samples itself), layer_cycles returns None and
``unavailable_reason`` says why.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

from . import cycles

CC = "arm-none-eabi-gcc"
CFLAGS = ("-O3", "-std=c99", "-Wall", "-Wextra", "-Werror", "-ffunction-sections", "-fdata-sections")
# Keep each layer a function so instructions can be attributed to it; helpers
# declared `static inline` (the dot products) are still inlined.
ATTRIBUTION_FLAGS = ("-fno-inline-functions-called-once", "-fno-inline-small-functions", "-fno-inline-functions")
CLOCK_MHZ = 120


class BuildError(RuntimeError):
    """arm-none-eabi-gcc rejected the generated C."""


def linker_script(target: str, entry: str) -> str:
    """A linker script for the target's memory map that keeps only what `entry` reaches."""
    from qcc.firmware.targets import get_target
    t = get_target(target)
    return (f"MEMORY {{\n  FLASH (rx) : ORIGIN = {t.code[0]:#x}, LENGTH = {t.code[1]:#x}\n"
            f"  RAM (rwx) : ORIGIN = {t.ram[0]:#x}, LENGTH = {t.ram[1]:#x}\n}}\n"
            f"ENTRY({entry})\nSECTIONS {{\n"
            "  .text : { *(.text .text.*) } > FLASH\n"
            "  .rodata : ALIGN(4) { *(.rodata .rodata.*) } > FLASH\n"
            "  .ARM.exidx : { *(.ARM.exidx*) } > FLASH\n"
            "  .data : ALIGN(4) { *(.data .data.*) } > RAM AT > FLASH\n"
            "  .bss : ALIGN(4) { *(.bss .bss.*) *(COMMON) } > RAM\n}\n")


def build_bare_elf(src: Path, name: str, target: str, attribution: bool = False) -> Path:
    """NAME.c and NAME_weights.c of folder `src` linked alone into src/build-{o3|layers}/NAME.elf (entry NAME_run)."""
    from qcc.firmware.targets import get_target
    build = src / f"build-{'layers' if attribution else 'o3'}"
    build.mkdir(exist_ok=True)
    cpu_flags = get_target(target).cpu_flags
    flags = [*cpu_flags, *CFLAGS, *(ATTRIBUTION_FLAGS if attribution else ())]
    objects = []
    for source in (f"{name}.c", f"{name}_weights.c"):
        obj = build / (Path(source).stem + ".o")
        _check_call([CC, *flags, "-c", str(src / source), "-o", str(obj)])
        objects.append(str(obj))
    script = build / "bare.ld"
    script.write_text(linker_script(target, f"{name}_run"))
    elf = build / f"{name}.elf"
    _check_call([CC, *cpu_flags, "-nostartfiles", "-Wl,--gc-sections", f"-T{script}", *objects, "-o", str(elf)])
    return elf


def _check_call(cmd: Sequence[str]) -> None:
    import re
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        first = next((l for l in proc.stderr.splitlines() if "error" in l), proc.stderr.strip()[:300])
        raise BuildError(re.sub(r"\S*/([^/\s]+\.[ch]:)", r"\1", first.strip()))  # file names, not build paths


def merged_by_function(counts: Dict[str, int]) -> Dict[str, int]:
    """Per-function counts with gcc's clones (l1_conv2.constprop.0) merged into their origin."""
    merged: Dict[str, int] = {}
    for fn, n in counts.items():
        base = fn.split(".", 1)[0]
        merged[base] = merged.get(base, 0) + n
    return merged


def unavailable_reason(gen) -> Optional[str]:
    """Why layer_cycles cannot run here on `gen` (None when it can)."""
    if os.environ.get("QCC_REPORT_CYCLES", "1") == "0":
        return "QCC_REPORT_CYCLES=0"
    missing = [m for m in ("unicorn", "capstone", "elftools") if importlib.util.find_spec(m) is None]
    if missing:
        return f"the bench extra is not installed (missing {', '.join(missing)}; pip install 'qcc[bench]')"
    if shutil.which(CC) is None:
        return f"{CC} is not on PATH"
    if gen.target not in cycles.CORES:
        return f"no cycle model for {gen.target} (unicorn cannot emulate it)"
    if getattr(gen, "kernels", "qcc") != "qcc":
        return f"--kernels {gen.kernels} links Arm's library, which this estimate does not build"
    return None


def layer_cycles(gen) -> Optional[dict]:
    """Per-layer instructions and estimated cycles of one NAME_run call on an all-zero input, or None.

    Costs a build and an emulation: about a second for digits, 5-10 s for ResNet-8 (22 M instructions)."""
    if unavailable_reason(gen) is not None:
        return None
    from . import emulator
    plan = gen.plan
    in_sizes = [t.value.type.size * t.value.type.np_dtype.itemsize for t in plan.inputs]
    out_sizes = [t.value.type.size * (4 if gen.float_output else t.value.type.np_dtype.itemsize)
                 for t in plan.outputs]
    with tempfile.TemporaryDirectory(prefix="qcc-cycles-") as tmp:
        folder = Path(tmp)
        for rel, data in gen.files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        elf = build_bare_elf(folder, gen.name, gen.target, attribution=True)
        counted = emulator.count_calls(elf, f"{gen.name}_run", [bytes(n) for n in in_sizes] + [bytearray(n) for n in out_sizes],
                                       gen.target)
    instructions = merged_by_function(counted["inclusive"])
    spent = merged_by_function(counted["inclusive_cycles"])
    # a streamed layer runs as several band kernels (stream.py): its figures are their sum
    layers = {info["fn"]: {"instructions": sum(instructions.get(f, 0) for f in info.get("fns", [info["fn"]])),
                           "cycles": sum(spent.get(f, 0) for f in info.get("fns", [info["fn"]]))}
              for info in gen.layers}
    return {"cpu": gen.target, "clock_mhz": CLOCK_MHZ, "input": "zeros", "instructions": counted["total"],
            "cycles": counted["cycles"], "layers": layers}
