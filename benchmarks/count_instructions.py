"""Count the instructions a Cortex-M function executes, by emulation: the command line.

    python3 benchmarks/count_instructions.py ELF FUNCTION [--arg INT] [--in FILE] [--zeros N] [--cpu CPU] [--json]

The engine (unicorn + capstone, per-block counting, per-function attribution,
cycle estimates) lives in the cmsis back end, qcc.backends.cmsis.emulator, so
``qcc --report`` can use it too; this file re-exports it for the benchmark
harness and the tests, which load it by path.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from qcc.backends.cmsis import cycles as timing
from qcc.backends.cmsis.emulator import (  # noqa: F401  (re-exported)
    CPU_MODELS, DEFAULT_LIMIT, HEAP_BASE, HEAP_SIZE, RETURN_ADDRESS, STACK_BASE, STACK_SIZE, UNKNOWN, Buffer,
    EmulationError, Machine, count_calls)


class _OrderedArg(argparse.Action):
    """Keeps --arg/--in/--zeros in command-line order as one argument list."""

    def __call__(self, parser, namespace, value, option_string=None):
        items = getattr(namespace, "call_args", None) or []
        if option_string == "--arg":
            items.append(int(value, 0))
        elif option_string == "--in":
            items.append(Path(value).read_bytes())
        else:
            items.append(bytearray(int(value, 0)))
        namespace.call_args = items


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Count instructions of one call to a function in an ARM ELF (unicorn).")
    p.add_argument("elf")
    p.add_argument("function")
    p.add_argument("--arg", action=_OrderedArg, metavar="INT", help="a word argument (0x.. accepted)")
    p.add_argument("--in", action=_OrderedArg, metavar="FILE", help="a buffer with this file's bytes; passes its address")
    p.add_argument("--zeros", action=_OrderedArg, metavar="N", help="a zeroed N-byte buffer; passes its address")
    p.add_argument("--cpu", default="cortex-m4", choices=sorted(CPU_MODELS))
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="stop after this many instructions")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON (buffers as hex)")
    ns = p.parse_args(argv)
    try:
        result = count_calls(ns.elf, ns.function, getattr(ns, "call_args", None) or [], ns.cpu, ns.limit)
    except (EmulationError, KeyError, ValueError, OSError) as exc:
        print(f"count_instructions: error: {exc}", file=sys.stderr)
        return 1
    if ns.json:
        result["buffers"] = [b.hex() for b in result["buffers"]]
        print(json.dumps(result, indent=2))
        return 0
    print(f"{ns.function}: {result['total']} instructions, r0 = {result['return']:#x}")
    if "cycles" in result:
        c = result["cycles"]
        print(f"estimated {ns.cpu} cycles: {c['typical']} (low {c['low']}, high {c['high']}), "
              f"{timing.milliseconds(c['typical']):.3f} ms at 120 MHz")
    width = max(len(n) for n in result["inclusive"] | result["exclusive"])
    cyc = result.get("inclusive_cycles", {})
    print(f"{'function':<{width}}  {'inclusive':>12}  {'exclusive':>12}  {'incl. cycles':>12}")
    for name in sorted(result["inclusive"] | result["exclusive"], key=lambda n: -result["inclusive"].get(n, 0)):
        print(f"{name:<{width}}  {result['inclusive'].get(name, 0):>12}  {result['exclusive'].get(name, 0):>12}"
              f"  {cyc.get(name, 0):>12}")
    for i, buf in enumerate(result["buffers"]):
        print(f"buffer{i} {buf.hex()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
