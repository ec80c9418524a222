"""Cycle estimates for Cortex-M cores from an executed Thumb instruction stream.

Instruction counts (benchmarks/count_instructions.py) say how much work a
model does; this module turns the same executed basic blocks into clock
cycles with the per-instruction timings of the cores' technical reference
manuals (TRMs). The estimate of one call is

    cycles = sum over executed blocks b of  cost(b) + (taken(b) ? refill(b) : 0)

where cost(b) sums the instructions' issue cycles with the pairwise rules
below (computed once per distinct block) and taken(b) is read from the
trace: the next executed block does not start where b ends.

Cortex-M3/M4 (ARMv7-M TRM tables; zero-wait-state memory assumed):
  - data processing, MUL/MLA/MLS, SMULL/UMULL/SMLAL/UMLAL (M4), all DSP
    (SMLAD, SXTB16, QADD, SSAT, ...), MOVW/MOVT, IT: 1 cycle
  - SDIV/UDIV: 2..12 (early termination; a fixed `divide` is assumed)
  - LDR/LDRB/LDRH/LDRSB/LDRSH: 2; 1 when it directly follows a single load
    whose loaded register does not feed its address (the TRM's load pipelining)
  - STR with an immediate offset: 1 (write buffer); with a register offset: 2,
    or 1 after a single load
  - an address register written by the previous data-processing instruction:
    +1 (no forwarding path to the address generator)
  - LDRD/STRD: 3; LDM/STM/PUSH/POP: 1 + N registers; VLDR/VSTR: 2 (3 double);
    VPUSH/VPOP/VLDM/VSTM: 1 + N words
  - VMLA/VMLS/VFMA/VFMS family: 3; VDIV/VSQRT: 14; other VFP: 1
  - branches: 1 when not taken; a taken branch, BL, BX, CBZ/CBNZ, a write to
    PC by MOV/ADD/LDR/POP adds the pipeline refill P (1..3); TBB/TBH: 3 + P.
  - M3 only: MLA/MLS 2, SMULL/UMULL 3..5 and SMLAL/UMLAL 4..7 (taken as 4 and 5).

Cortex-M0/M0+ (ARMv6-M, two-stage pipeline on M0+): everything 1 cycle except
loads/stores 2, LDM/STM/PUSH 1 + N, POP 1 + N (3 + N with PC), taken branches 2
(not taken 1), BL 3, BX/BLX 2, MOV/ADD to PC 2, MRS/MSR/DMB/DSB/ISB 3; MULS 1
(the fast multiplier option). The M0 (three stages) adds a cycle to every
taken branch.

Cortex-M7 has no published cycle table. It is approximated as an in-order
dual-issue core: two neighbouring instructions of a block issue in one cycle
unless the younger reads a register the older writes (flags excepted for a
conditional branch), both touch memory as stores, both multiply, the older
is a branch, or the younger is a DSP/SIMD instruction (only the older slot
takes those). Loads take one issue cycle and one extra cycle when their
result is used by the next instruction; a taken branch costs `refill`
(predicted branches, BTAC hit assumed). Its error is larger than M4's (see
benchmarks/README.md).

Each core has three parameter sets: "low" (P = 1, divide 2), "typical"
(P = 2, divide 7) and "high" (P = 3, divide 12); the M7 uses refills 0/1/3.
Nothing here models wait states, flash accelerators, caches or bus contention.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

LOADS = frozenset({"ldr", "ldrb", "ldrh", "ldrsb", "ldrsh", "ldrex", "ldrexb", "ldrexh", "ldrt", "ldrbt", "ldrht",
                   "ldrsbt", "ldrsht", "lda", "ldab", "ldah", "ldaex"})
STORES = frozenset({"str", "strb", "strh", "strex", "strexb", "strexh", "strt", "strbt", "strht", "stl", "stlb",
                    "stlh", "stlex"})
PAIRS = frozenset({"ldrd", "strd"})
MULTIPLE = frozenset({"ldm", "ldmia", "ldmfd", "ldmdb", "ldmea", "stm", "stmia", "stmea", "stmdb", "stmfd", "push",
                      "pop"})
FP_MULTIPLE = frozenset({"vpush", "vpop", "vldm", "vldmia", "vldmdb", "vstm", "vstmia", "vstmdb"})
FP_ACCUMULATE = frozenset({"vmla", "vmls", "vnmla", "vnmls", "vfma", "vfms", "vfnma", "vfnms"})
FP_LONG = frozenset({"vdiv", "vsqrt"})
DIVIDES = frozenset({"sdiv", "udiv"})
LONG_MULTIPLY = frozenset({"smull", "umull"})
LONG_ACCUMULATE = frozenset({"smlal", "umlal"})
MULTIPLIES = frozenset({"mul", "muls", "mla", "mls", "smull", "umull", "smlal", "umlal", "smlad", "smladx",
                        "smlsd", "smlsdx", "smuad", "smuadx", "smusd", "smusdx", "smlalbb", "smlalbt", "smlaltb",
                        "smlaltt", "smlald", "smlaldx", "smlsld", "smlsldx", "smlabb", "smlabt", "smlatb",
                        "smlatt", "smlawb", "smlawt", "smulbb", "smulbt", "smultb", "smultt", "smulwb", "smulwt",
                        "smmul", "smmulr", "smmla", "smmlar", "smmls", "smmlsr", "umaal"})
BRANCHES = frozenset({"b", "bl", "blx", "bx", "cbz", "cbnz", "tbb", "tbh"})
SYSTEM = frozenset({"mrs", "msr", "dmb", "dsb", "isb"})
_IT = re.compile(r"^it[te]{0,3}$")
# ARMv7E-M SIMD and saturating instructions (the M7 issues them only in the older slot).
_DSP = re.compile(r"^(s|u|q|sh|uh|uq)(add|sub|asx|sax)(8|16)$|^q(d?add|d?sub)$|^(s|u)xt(a?b16)$"
                  r"|^sm(la|ls|ua|us)dx?$|^sml(a|s)ldx?$|^(ssat|usat)(16)?$|^pkh(bt|tb)$|^sel$|^usada?8$|^rev")

# capstone's ARM_CC_AL (always) and operand kinds, so this module imports without capstone
_CC_ALWAYS = (15, 0)
_OP_REG, _OP_MEM = 1, 3


@dataclass(frozen=True)
class Insn:
    """What the timing rules need of one instruction."""

    base: str                      # mnemonic without condition, .w/.n width or flag-setting s where it matters
    size: int = 2
    reads: FrozenSet[str] = frozenset()
    writes: FrozenSet[str] = frozenset()
    loaded: FrozenSet[str] = frozenset()          # registers a load writes from memory
    address: FrozenSet[str] = frozenset()         # base and index registers of the memory operand
    register_offset: bool = False                 # [Rn, Rm]: the address has an index register
    registers: int = 0                            # transfer-list length (words) of LDM/STM/PUSH/POP/VPUSH/...
    writes_pc: bool = False

    @property
    def is_load(self) -> bool:
        return self.base in LOADS and not self.writes_pc

    @property
    def is_store(self) -> bool:
        return self.base in STORES

    @property
    def is_memory(self) -> bool:
        return (self.base in LOADS or self.base in STORES or self.base in PAIRS or self.base in MULTIPLE
                or self.base in FP_MULTIPLE or self.base in ("vldr", "vstr"))

    @property
    def is_branch(self) -> bool:
        return self.base in BRANCHES or self.writes_pc


def _base_mnemonic(mnemonic: str, conditional: bool) -> str:
    base = mnemonic.split(".", 1)[0]
    if conditional and not _IT.match(base) and base not in ("cbz", "cbnz"):
        base = base[:-2]  # movgt -> mov, bne -> b
    if base.endswith("s") and base[:-1] in ("mov", "add", "sub", "mul", "lsl", "lsr", "asr", "and", "orr", "eor",
                                            "bic", "mvn", "adc", "sbc", "rsb", "ror", "neg"):
        base = base[:-1]
    return base


def from_capstone(insn) -> Insn:
    """An Insn from a capstone instruction disassembled with ``detail = True``."""
    base = _base_mnemonic(insn.mnemonic, insn.cc not in _CC_ALWAYS)
    reads, writes = (frozenset(insn.reg_name(r) for r in regs) for regs in insn.regs_access())
    regs = [insn.reg_name(op.reg) for op in insn.operands if op.type == _OP_REG]
    mems = [op.mem for op in insn.operands if op.type == _OP_MEM]
    address = frozenset(insn.reg_name(r) for m in mems for r in (m.base, m.index) if r)
    loaded = frozenset(regs) if mems and (base in LOADS or base in ("ldrd", "vldr")) else frozenset()
    registers = 0
    if base in MULTIPLE:
        registers = len(regs) - (0 if base in ("push", "pop") else 1)  # LDM/STM list the base register first
    elif base in FP_MULTIPLE:
        registers = sum(2 if r.startswith("d") else 1 for r in regs)
    elif base in ("vldr", "vstr"):
        registers = sum(2 if r.startswith("d") else 1 for r in regs)
    writes_pc = "pc" in writes and base not in BRANCHES and base != "it"
    return Insn(base, insn.size, reads, writes, loaded, address, any(m.index for m in mems), registers, writes_pc)


@dataclass(frozen=True)
class BlockCycles:
    """Cycles of one block: falling through to the next address, or leaving by a taken branch."""

    fallthrough: int
    taken: int


@dataclass(frozen=True)
class TimingModel:
    """Per-core issue rules with one choice of the TRM's variable terms."""

    core: str                      # "armv7m" (M3/M4), "m3", "armv6m" (M0+), "m0", "m7"
    refill: int = 2                # P: pipeline refill cycles of a taken branch
    divide: int = 7                # SDIV/UDIV cycles

    def block(self, insns: Sequence[Insn]) -> BlockCycles:
        if self.core == "m7":
            return self._dual_issue(insns)
        total, extra, prev = 0, 0, None
        for insn in insns:
            cycles, refill = (self._v6m if self.core in ("armv6m", "m0") else self._v7m)(insn, prev)
            total += cycles
            extra = refill  # only the block's last instruction can leave it
            prev = insn
        return BlockCycles(total, total + extra)

    # ---- ARMv7-M: Cortex-M3 / M4
    def _v7m(self, insn: Insn, prev: Optional[Insn]) -> Tuple[int, int]:
        """(cycles when execution continues at the next instruction, extra cycles when it branches)."""
        b, p = insn.base, self.refill
        if b in ("tbb", "tbh"):
            return 3, p
        if b in BRANCHES:
            return 1, p
        if b in MULTIPLE:
            return 1 + insn.registers, p if insn.writes_pc else 0
        if insn.writes_pc:  # LDR PC / MOV PC / ADD PC
            return (2 if b in LOADS else 1), p
        stall = int(prev is not None and not prev.is_memory and bool(prev.writes & insn.address))
        pipelined = (prev is not None and prev.is_load and prev.base != "ldrd"
                     and not (prev.loaded & insn.address))
        if b in LOADS:
            return (1 if pipelined else 2 + stall), 0
        if b in STORES:
            return (1 if pipelined or not insn.register_offset else 2) + (0 if pipelined else stall), 0
        if b in PAIRS:
            return 3 + stall, 0
        if b in ("vldr", "vstr"):
            return 1 + insn.registers + stall, 0
        if b in FP_MULTIPLE:
            return 1 + insn.registers, 0
        if b in DIVIDES:
            return self.divide, 0
        if b in FP_ACCUMULATE:
            return 3, 0
        if b in FP_LONG:
            return 14, 0
        if self.core == "m3":
            if b in ("mla", "mls"):
                return 2, 0
            if b in LONG_MULTIPLY:
                return 4, 0
            if b in LONG_ACCUMULATE:
                return 5, 0
        return 1, 0

    # ---- ARMv6-M: Cortex-M0+ / M0
    def _v6m(self, insn: Insn, prev: Optional[Insn]) -> Tuple[int, int]:
        b = insn.base
        m0 = int(self.core == "m0")  # three-stage pipeline: one more refill cycle
        if b == "bl":
            return 3 + m0, 0  # always taken (only calls; gcc's far jumps too)
        if b in ("bx", "blx"):
            return 2 + m0, 0
        if b == "b":
            return 1, 1 + m0
        if b == "pop":
            return (3 + m0 + insn.registers, 0) if insn.writes_pc else (1 + insn.registers, 0)
        if b in MULTIPLE:
            return 1 + insn.registers, 0
        if insn.writes_pc:
            return 2 + m0, 0
        if b in LOADS or b in STORES:
            return 2, 0
        if b in SYSTEM:
            return 3, 0
        return 1, 0

    # ---- Cortex-M7: dual issue approximation
    def _dual_issue(self, insns: Sequence[Insn]) -> BlockCycles:
        total, i, n = 0, 0, len(insns)
        while i < n:
            older = insns[i]
            cost = self._m7_issue(older)
            younger = insns[i + 1] if i + 1 < n else None
            if younger is not None and cost == 1 and self._m7_issue(younger) == 1 and _pairs(older, younger):
                i += 2
                after = insns[i] if i < n else None
                used = younger
            else:
                i += 1
                after = younger
                used = older
            total += cost
            # a load's result reaches the next issue group one cycle late
            if after is not None and ((older.loaded | used.loaded) & after.reads):
                total += 1
        last = insns[-1] if insns else None
        return BlockCycles(total, total + (self.refill if last is not None and last.is_branch else 0))

    def _m7_issue(self, insn: Insn) -> int:
        b = insn.base
        if b in MULTIPLE or b in FP_MULTIPLE:
            return 1 + (insn.registers + 1) // 2  # 64-bit data path: two registers a cycle
        if b in PAIRS:
            return 1
        if b in DIVIDES:
            return self.divide
        if b in FP_LONG:
            return 14
        if b in ("tbb", "tbh"):
            return 3
        return 1


def _pairs(older: Insn, younger: Insn) -> bool:
    if older.is_branch or _DSP.match(younger.base):
        return False
    if older.is_store and younger.is_store:
        return False
    if older.base in MULTIPLIES and younger.base in MULTIPLIES:
        return False
    deps = older.writes & younger.reads
    if younger.is_branch:
        deps = deps - {"cpsr", "apsr", "itstate"}
    return not deps and not (older.writes & younger.writes - {"itstate"})


CORES: Dict[str, str] = {"cortex-m0": "m0", "cortex-m0plus": "armv6m", "cortex-m3": "m3", "cortex-m4": "armv7m",
                         "cortex-m7": "m7", "cortex-m33": "armv7m"}
_PARAMETERS = {  # (refill, divide) per estimate
    "low": (1, 2), "typical": (2, 7), "high": (3, 12),
}
_M7_REFILL = {"low": 0, "typical": 1, "high": 3}
ESTIMATES = ("low", "typical", "high")


def timing_models(cpu: str) -> Dict[str, TimingModel]:
    """The low / typical / high models of a target (``cortex-m4``, ...); KeyError if it has none."""
    core = CORES[cpu]
    out = {}
    for name in ESTIMATES:
        refill, divide = _PARAMETERS[name]
        if core == "m7":
            refill = _M7_REFILL[name]
        out[name] = TimingModel(core, refill, divide)
    return out


def block_cycles(models: Dict[str, TimingModel], insns: Sequence[Insn]) -> Dict[str, BlockCycles]:
    return {name: model.block(insns) for name, model in models.items()}


def milliseconds(cycles: float, mhz: float = 120.0) -> float:
    """Wall time of `cycles` at a clock of `mhz` MHz (no wait states)."""
    return cycles / (mhz * 1e3)
