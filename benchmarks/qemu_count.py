"""Count the instructions of one NAME_run call in QEMU, for a core unicorn cannot emulate (the Cortex-M55).

unicorn has no Cortex-M55 model and no Helium (MVE); QEMU has both but no
instruction counter. Two of its options make one: ``-singlestep`` translates
every instruction as its own block, and ``-d exec,nochain`` logs each block
it executes ("Trace 0: HOST [cs_base/PC/flags/cflags] SYMBOL"), so the log
has one line per executed instruction. qcc's generated firmware (its
Makefile, startup code and semihosting main) runs one sample, which goes
through NAME_run; the count is the lines from NAME_run's first instruction up
to the first one back in its caller (everything NAME_run calls included).
The log streams through a FIFO: on disk it would hold a line per instruction.

Instructions skipped by an IT condition are logged (they take an issue slot),
as count_instructions.py counts them: on the same ELF both counters agree
to the instruction (tests/test_cycles.py checks it on the M4). No cycles:
there is no M55 timing model here.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Sequence


class QemuCountError(RuntimeError):
    """The firmware did not build, QEMU failed, or the trace never entered the function."""


def _makefile_var(folder: Path, var: str) -> str:
    for line in (folder / "Makefile").read_text().splitlines():
        if line.split(":=")[0].strip() == var and ":=" in line:
            return line.split(":=", 1)[1].strip()
    raise QemuCountError(f"{folder}/Makefile has no {var}")


def count_in_trace(lines, func: str) -> int:
    """Instructions from the first line in `func` to the first line back in the function that called it."""
    caller, count, previous = None, 0, None
    for line in lines:
        end = line.rfind("] ")
        if end < 0 or not line.startswith("Trace"):
            continue
        symbol = line[end + 2:].strip()
        if caller is None:
            if symbol == func:
                caller, count = previous, 1
            previous = symbol
            continue
        if symbol == caller:
            return count
        count += 1
    raise QemuCountError(f"the trace never {'entered' if caller is None else 'returned from'} {func}")


def count_run(folder: Path, name: str, inputs: Path, outputs: Path, qemu: str = "qemu-system-arm",
              extra_make: Sequence[str] = (), timeout: float = 900) -> int:
    """Builds the firmware in `folder` (qcc's output) and counts NAME_run's instructions on the first record."""
    folder = Path(folder).resolve()
    elf = _makefile_var(folder, "ELF")
    build = subprocess.run(["make", "-s", "-C", str(folder), *extra_make, elf], capture_output=True, text=True,
                           timeout=timeout)
    if build.returncode:
        raise QemuCountError(f"firmware build failed:\n{build.stdout}\n{build.stderr}")
    machine = _makefile_var(folder, "QEMU_MACHINE")
    with tempfile.TemporaryDirectory(prefix="qcc-qemu-trace-") as tmp:
        fifo = Path(tmp) / "trace"
        os.mkfifo(fifo)
        result: dict = {}

        def read():
            try:
                with open(fifo, errors="replace") as f:
                    result["count"] = count_in_trace(f, f"{name}_run")
                    for _ in f:  # drain, so QEMU never blocks on a full pipe
                        pass
            except QemuCountError as exc:
                result["error"] = exc

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        cmd = [qemu, "-M", machine, "-nographic", "-monitor", "none", "-singlestep", "-d", "exec,nochain",
               "-D", str(fifo), "-semihosting-config",
               f"enable=on,target=native,arg={elf},arg={Path(inputs).resolve()},arg={Path(outputs).resolve()}",
               "-kernel", elf]
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        # QEMU has exited and closed its end. Had it never opened the FIFO, the reader would wait in open()
        # for ever: opening and closing a writer here ends that wait (and is harmless otherwise).
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader left
            pass
        reader.join(timeout)
    if proc.returncode:
        raise QemuCountError(f"QEMU exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    if "error" in result:
        raise result["error"]
    if "count" not in result:
        raise QemuCountError("no trace was read")
    return result["count"]
