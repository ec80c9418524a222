"""Count the instructions (and estimate the cycles) a Cortex-M function executes, by emulation.

Needs the bench extra (unicorn, capstone, pyelftools); nothing in qcc imports
this module unless asked to emulate. The command line is
benchmarks/count_instructions.py.

QEMU does not count instructions; unicorn (QEMU's CPU core as a library)
does the work here. The ELF's PT_LOAD segments are copied to their run
addresses (p_vaddr, so .data already holds its initial values and .bss is
zero without running any startup code), a stack and a scratch heap are
mapped, argument buffers are placed on the heap, and the named function is
called like the AAPCS says: r0-r3 carry the first four word arguments, the
rest go on the stack, LR holds a magic return address where emulation stops.

Counting: a block hook sees every translated block as it executes; capstone
disassembles each distinct (address, size) block once and the block's
instruction count is cached. Instructions skipped by an IT condition count
as executed, as on hardware (they take an issue slot).

Per-function attribution: each block belongs to the function symbol whose
[st_value, st_value + st_size) range holds the block's address.
  exclusive[f] = instructions executed in blocks inside f.
  inclusive[f] = instructions executed while f is on the shadow call stack
                 (f itself plus everything it calls), each instruction
                 counted once per function even under recursion.
The shadow stack pushes a frame when a block that ends in BL/BLX leads to
another block, and pops frames when execution reaches a frame's return
address (the instruction after the call). Blocks outside any symbol
(e.g. veneers) count towards "<unknown>" exclusively.

Cycles: each distinct block is also priced once by the target's timing
model (qcc.backends.cmsis.cycles: TRM cycle tables, zero wait states) as
"cycles if it falls through" and "cycles if it leaves by a taken branch";
which of the two applies is known when the next block starts (taken when
it does not start at the block's end; the counted function's final return
is taken). Cycles are attributed to functions like instructions, using the
call stack as it was when the block ran. Three estimates are summed: low,
typical and high (the TRM's variable terms: branch refill, divide time).

Semihosting traps (BKPT 0xAB) or any other exception inside the counted
call are errors: they would make counts depend on the host.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import capstone
import unicorn
import unicorn.arm_const as uc_arm
from elftools.elf.elffile import ELFFile

from . import cycles as timing

PAGE = 0x1000
HEAP_BASE = 0x6000_0000  # external-RAM region of the Armv7-M map: free on the MPS2/3 boards
HEAP_SIZE = 16 << 20
STACK_SIZE = 1 << 20
STACK_BASE = HEAP_BASE + HEAP_SIZE + PAGE  # a guard page between heap and stack
RETURN_ADDRESS = 0x7FFF_F000  # where the counted function "returns" to
DEFAULT_LIMIT = 2_000_000_000

CPU_MODELS = {
    "cortex-m0": uc_arm.UC_CPU_ARM_CORTEX_M0,
    "cortex-m0plus": uc_arm.UC_CPU_ARM_CORTEX_M0,
    "cortex-m3": uc_arm.UC_CPU_ARM_CORTEX_M3,
    "cortex-m4": uc_arm.UC_CPU_ARM_CORTEX_M4,
    "cortex-m7": uc_arm.UC_CPU_ARM_CORTEX_M7,
    "cortex-m33": uc_arm.UC_CPU_ARM_CORTEX_M33,
}

_ARG_REGS = (uc_arm.UC_ARM_REG_R0, uc_arm.UC_ARM_REG_R1, uc_arm.UC_ARM_REG_R2, uc_arm.UC_ARM_REG_R3)
_CALL_MNEMONICS = {"bl", "blx"}
UNKNOWN = "<unknown>"


class EmulationError(RuntimeError):
    """The counted call did not run to its return (fault, trap, limit)."""


def _align_up(x: int, a: int = PAGE) -> int:
    return (x + a - 1) // a * a


@dataclass
class Buffer:
    address: int
    size: int


@dataclass
class _Block:
    count: int
    ends_in_call: bool
    end: int  # address after the block's last instruction
    fallthrough: tuple = ()  # cycles (low, typical, high) when execution continues at `end`
    taken: tuple = ()        # cycles when the block leaves by a taken branch


@dataclass
class Machine:
    """An emulated Cortex-M with one ELF loaded; alloc() places argument data."""

    elf_path: Path
    cpu: str = "cortex-m4"
    uc: unicorn.Uc = field(init=False)
    symbols: dict[str, tuple[int, int]] = field(init=False)  # name -> (start, size), Thumb bit cleared
    buffers: list[Buffer] = field(init=False, default_factory=list)
    _heap_top: int = field(init=False, default=HEAP_BASE)

    def __post_init__(self) -> None:
        if self.cpu not in CPU_MODELS:
            raise ValueError(f"unknown cpu {self.cpu!r}; known: {', '.join(CPU_MODELS)}")
        self.uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
        self.uc.ctl_set_cpu_model(CPU_MODELS[self.cpu])
        self.symbols = {}
        with open(self.elf_path, "rb") as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_ARM":
                raise ValueError(f"{self.elf_path}: not an ARM ELF ({elf['e_machine']})")
            self._load_segments(elf)
            self._read_symbols(elf)
        self.uc.mem_map(HEAP_BASE, HEAP_SIZE)
        self.uc.mem_map(STACK_BASE, STACK_SIZE)
        self.uc.mem_map(RETURN_ADDRESS, PAGE)
        # No FPU enable step: unicorn models no System Control Space, so
        # CPACR cannot be written, and its M-profile reset already grants
        # CP10/CP11 access (tests/test_firmware.py runs VFP code to check).
        # Were that to change, the first VFP instruction would raise a
        # NOCP UsageFault, reported by the exception hook below.

    def _load_segments(self, elf: ELFFile) -> None:
        mapped: list[tuple[int, int]] = []
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or seg["p_memsz"] == 0:
                continue
            start = seg["p_vaddr"] // PAGE * PAGE
            end = _align_up(seg["p_vaddr"] + seg["p_memsz"])
            # Segments may share a page; map only what is not mapped yet.
            for lo, hi in sorted(mapped):
                if lo <= start < hi:
                    start = hi
                if lo < end <= hi:
                    end = lo
            if start < end:
                self.uc.mem_map(start, end - start)
                mapped.append((start, end))
            self.uc.mem_write(seg["p_vaddr"], seg.data())  # the rest stays zero (.bss)
        for lo, hi in mapped:
            if hi > HEAP_BASE and lo < RETURN_ADDRESS + PAGE:
                raise ValueError(f"{self.elf_path}: a segment at {lo:#x} overlaps the emulator's heap/stack")

    def _read_symbols(self, elf: ELFFile) -> None:
        symtab = elf.get_section_by_name(".symtab")
        if symtab is None:
            raise ValueError(f"{self.elf_path}: no symbol table (was it stripped?)")
        for sym in symtab.iter_symbols():
            if sym["st_info"]["type"] == "STT_FUNC" and sym.name:
                self.symbols[sym.name] = (sym["st_value"] & ~1, sym["st_size"])
        ranges = sorted((start, start + size, name) for name, (start, size) in self.symbols.items() if size)
        self._range_starts = [r[0] for r in ranges]
        self.entries = {start for start, _ in self.symbols.values()}
        self._ranges = ranges

    def function_at(self, address: int) -> str:
        i = bisect.bisect_right(self._range_starts, address) - 1
        if i >= 0:
            start, end, name = self._ranges[i]
            if start <= address < end:
                return name
        return UNKNOWN

    def alloc(self, data: Union[bytes, bytearray, memoryview, int], align: int = 8) -> int:
        """Places bytes (or that many zero bytes, given an int) on the heap."""
        payload = bytes(data)  # an int n gives n zero bytes
        addr = _align_up(self._heap_top, align)
        if addr + len(payload) > HEAP_BASE + HEAP_SIZE:
            raise ValueError(f"argument buffers exceed the {HEAP_SIZE >> 20} MiB emulator heap")
        self.uc.mem_write(addr, payload)
        self._heap_top = addr + len(payload)
        self.buffers.append(Buffer(addr, len(payload)))
        return addr

    def read(self, address: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(address, size))


ArgsSetup = Union[Callable[[Machine], Sequence[int]], Sequence[Union[int, bytes, bytearray]]]


def _resolve_args(machine: Machine, args_setup: ArgsSetup) -> list[int]:
    if callable(args_setup):
        return [int(a) for a in args_setup(machine)]
    out = []
    for a in args_setup:
        out.append(machine.alloc(a) if isinstance(a, (bytes, bytearray, memoryview)) else int(a))
    return out


class _Counter:
    """Block hook state: totals, per-function counts and the shadow stack."""

    def __init__(self, machine: Machine):
        self.machine = machine
        self.disasm = capstone.Cs(capstone.CS_ARCH_ARM, capstone.CS_MODE_THUMB | capstone.CS_MODE_MCLASS)
        self.disasm.detail = True  # register reads/writes and operands for the timing model
        self.models = timing.timing_models(machine.cpu) if machine.cpu in timing.CORES else {}
        self.blocks: dict[tuple[int, int], _Block] = {}
        self.total = 0
        self.exclusive: dict[str, int] = {}
        self.inclusive: dict[str, int] = {}
        self.cycles = [0, 0, 0]  # low, typical, high
        self.exclusive_cycles: dict[str, int] = {}
        self.inclusive_cycles: dict[str, int] = {}
        self.previous: tuple | None = None  # (block, its function, the functions on the stack) awaiting its exit
        self.stack: list[tuple[str, int]] = []  # (function, return address)
        self.pending_return: int | None = None  # set when the last block ended in a call

    def block_info(self, address: int, size: int) -> _Block:
        key = (address, size)
        info = self.blocks.get(key)
        if info is None:
            code = self.machine.read(address, size)
            insns = list(self.disasm.disasm(code, address))
            if sum(i.size for i in insns) != size:
                raise EmulationError(f"capstone could not decode the block at {address:#x} ({size} bytes)")
            if any(i.mnemonic == "bkpt" for i in insns):
                raise EmulationError(f"BKPT (semihosting) in the counted code at {address:#x}")
            info = _Block(len(insns), insns[-1].mnemonic in _CALL_MNEMONICS, address + size)
            if self.models:
                priced = [timing.from_capstone(i) for i in insns]
                costs = [self.models[name].block(priced) for name in timing.ESTIMATES]
                info.fallthrough = tuple(c.fallthrough for c in costs)
                info.taken = tuple(c.taken for c in costs)
            self.blocks[key] = info
        return info

    def settle(self, next_address: int) -> None:
        """Prices the previous block now that the address executed after it is known."""
        if self.previous is None or not self.models:
            return
        info, func, names = self.previous
        self.previous = None
        spent = info.fallthrough if next_address == info.end else info.taken
        for i in range(3):
            self.cycles[i] += spent[i]
        typical = spent[1]
        self.exclusive_cycles[func] = self.exclusive_cycles.get(func, 0) + typical
        for name in names:
            self.inclusive_cycles[name] = self.inclusive_cycles.get(name, 0) + typical

    def on_block(self, uc, address: int, size: int, _user) -> None:
        self.settle(address)
        if address == RETURN_ADDRESS:
            return
        info = self.block_info(address, size)
        func = self.machine.function_at(address)
        # Thumb-1 gcc also uses BL as a far jump inside a large function (B
        # reaches only +-2 KiB on ARMv6-M): only a BL landing on a function's
        # entry (or outside every symbol, e.g. a veneer) is a call.
        if self.pending_return is not None and (address in self.machine.entries or func == UNKNOWN):
            self.stack.append((func, self.pending_return))
            self.pending_return = None
        else:
            self.pending_return = None
            # Returning to a caller pops every frame above it.
            for depth in range(len(self.stack) - 1, 0, -1):
                if self.stack[depth][1] == address:
                    del self.stack[depth:]
                    break
            else:
                if self.stack and self.stack[-1][0] != func and func != UNKNOWN:
                    # A tail call (B to another function) replaces the frame.
                    self.stack[-1] = (func, self.stack[-1][1])
        self.total += info.count
        self.exclusive[func] = self.exclusive.get(func, 0) + info.count
        names = {name for name, _ in self.stack}
        for name in names:
            self.inclusive[name] = self.inclusive.get(name, 0) + info.count
        self.previous = (info, func, names)
        if info.ends_in_call:
            self.pending_return = info.end


def count_calls(
    elf_path: str | Path,
    func: str,
    args_setup: ArgsSetup = (),
    cpu: str = "cortex-m4",
    limit: int = DEFAULT_LIMIT,
) -> dict:
    """Calls `func` in the ELF once and counts executed instructions.

    args_setup: a sequence of ints (passed as they are) and bytes (copied to
    the heap, their address passed), or a callable taking the Machine (use
    machine.alloc) and returning the argument words. Returns a dict:
      total:       instructions executed from entry to return
      return:      r0 after the call (the int/pointer return value, unsigned)
      return_float: s0 after the call (a hard-float ABI float return value)
      exclusive:   {function: instructions in its own blocks}
      inclusive:   {function: instructions while it was on the call stack}
      buffers:     contents of every allocated buffer after the call, in order
      blocks:      number of distinct translated blocks seen
      cycles:      {"low", "typical", "high"} estimated cycles (absent for a CPU without a timing model)
      inclusive_cycles, exclusive_cycles: typical cycles by function, like inclusive/exclusive
    """
    machine = Machine(Path(elf_path), cpu)
    if func not in machine.symbols:
        raise KeyError(f"{elf_path}: no function symbol {func!r}")
    entry = machine.symbols[func][0]
    args = _resolve_args(machine, args_setup)
    uc = machine.uc

    sp = STACK_BASE + STACK_SIZE
    stacked = args[4:]
    sp -= 4 * len(stacked)
    sp &= ~7  # AAPCS: 8-byte aligned at a public interface
    for i, word in enumerate(stacked):
        uc.mem_write(sp + 4 * i, (word & 0xFFFF_FFFF).to_bytes(4, "little"))
    for reg, word in zip(_ARG_REGS, args):
        uc.reg_write(reg, word & 0xFFFF_FFFF)
    uc.reg_write(uc_arm.UC_ARM_REG_SP, sp)
    uc.reg_write(uc_arm.UC_ARM_REG_LR, RETURN_ADDRESS | 1)

    counter = _Counter(machine)
    counter.stack.append((func, RETURN_ADDRESS))
    errors: list[str] = []

    def on_interrupt(uc_, intno, _user):
        pc = uc_.reg_read(uc_arm.UC_ARM_REG_PC)
        errors.append(f"exception {intno} at pc={pc:#x} (semihosting or a fault) inside {func}")
        uc_.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_BLOCK, counter.on_block)
    uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
    try:
        uc.emu_start(entry | 1, RETURN_ADDRESS, count=limit)
    except unicorn.UcError as exc:
        pc = uc.reg_read(uc_arm.UC_ARM_REG_PC)
        raise EmulationError(f"{func}: {exc} at pc={pc:#x} ({machine.function_at(pc)})") from exc
    if errors:
        raise EmulationError("; ".join(errors))
    pc = uc.reg_read(uc_arm.UC_ARM_REG_PC)
    if pc & ~1 != RETURN_ADDRESS:
        raise EmulationError(f"{func} did not return within {limit} instructions (pc={pc:#x})")
    counter.settle(RETURN_ADDRESS)  # the final return is a taken branch

    return {
        "function": func,
        "cpu": machine.cpu,
        "total": counter.total,
        "return": uc.reg_read(uc_arm.UC_ARM_REG_R0),
        "return_float": struct.unpack("<f", struct.pack("<I", uc.reg_read(uc_arm.UC_ARM_REG_S0)))[0],
        "exclusive": dict(sorted(counter.exclusive.items())),
        "inclusive": dict(sorted(counter.inclusive.items())),
        "buffers": [machine.read(b.address, b.size) for b in machine.buffers],
        "blocks": len(counter.blocks),
        **({"cycles": dict(zip(timing.ESTIMATES, counter.cycles)),
            "exclusive_cycles": dict(sorted(counter.exclusive_cycles.items())),
            "inclusive_cycles": dict(sorted(counter.inclusive_cycles.items()))} if counter.models else {}),
    }
