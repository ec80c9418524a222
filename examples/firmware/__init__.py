"""Bare-metal firmware for QEMU's Cortex-M boards, installed as ``qcc.firmware``.

Startup code, semihosting I/O, one linker script per board memory map and the
target table (``targets.py``, ``targets.mk``). The cmsis back end copies these
files into every output folder so ``make run`` works from there alone.
"""
