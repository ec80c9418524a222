"""Cortex-M targets of the cmsis backend: compiler flags, QEMU board, linker script.

The same table as examples/firmware/targets.py (tests/test_backend_cmsis.py
checks that they agree); repeated here because the firmware folder is not part
of the installed package.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple


@dataclass(frozen=True)
class Target:
    name: str
    cpu_flags: Tuple[str, ...]
    qemu_machine: str
    linker_script: str

    @property
    def has_dsp(self) -> bool:  # the ACLE __ARM_FEATURE_DSP paths (SMLAD) compile in
        return self.name not in ("cortex-m0", "cortex-m0plus", "cortex-m3")


TARGETS = {t.name: t for t in (
    Target("cortex-m0", ("-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"), "mps2-an385", "mps2.ld"),
    Target("cortex-m0plus", ("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"), "mps2-an385", "mps2.ld"),
    Target("cortex-m3", ("-mcpu=cortex-m3", "-mthumb", "-mfloat-abi=soft"), "mps2-an385", "mps2.ld"),
    Target("cortex-m4", ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
           "mps2-an386", "mps2.ld"),
    Target("cortex-m7", ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
           "mps2-an500", "mps2.ld"),
    Target("cortex-m33", ("-mcpu=cortex-m33", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
           "mps2-an505", "mps2-an505.ld"),
    Target("cortex-m55", ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard", "-mfpu=auto"),
           "mps3-an547", "mps3-an547.ld"),
)}
