"""Cortex-M targets of the cmsis backend: compiler flags, QEMU board, linker script.

The table itself lives with the firmware (``qcc.firmware.targets``, the
checkout's examples/firmware) so the Makefiles, the firmware self-tests and
the back end read one source.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from qcc.firmware.targets import TARGETS as _FIRMWARE_TARGETS


@dataclass(frozen=True)
class Target:
    name: str
    cpu_flags: Tuple[str, ...]
    qemu_machine: str
    linker_script: str
    ram_bytes: int = 0  # the data region of the target's board (its linker script): the arena lives there

    @property
    def has_dsp(self) -> bool:  # the ACLE __ARM_FEATURE_DSP paths (SMLAD) compile in
        return self.name not in ("cortex-m0", "cortex-m0plus", "cortex-m3")


TARGETS = {name: Target(name, tuple(t.cpu_flags), t.qemu_machine, t.linker_script, t.ram[1])
           for name, t in _FIRMWARE_TARGETS.items()}
