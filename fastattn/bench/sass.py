"""Reading compiler output without a GPU: ptxas -v logs, nvdisasm listings, and occupancy on an H100/H200.

Pure text processing (no torch, no triton), so that fastattn.bench.static and the tests share one parser.

- ``parse_ptxas(log)``: per entry function, registers, spill stores/loads, stack frame, static shared memory.
- ``parse_sass(text)``: per function, the instructions of an ``nvdisasm -c -gi`` listing (address, opcode,
  source file and line when the cubin has line info) and its loops: a branch to an address at or before itself
  closes a loop whose body is [target, branch].
- ``instruction_mix(instrs)``: counts of the instruction classes the report prints.
- ``occupancy(regs, smem, threads)``: resident blocks and warps per SM, as cuda_occupancy.h computes them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

# ----------------------------------------------------------------------------------------------------------
# The card the static figures are computed for (an H200 SXM; an H100 SXM differs only in clock and bandwidth)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Card:
    name: str = "H200 SXM"
    sms: int = 132
    clock_ghz: float = 1.98          # boost clock
    copy_tbps: float = 4.25          # a device-to-device copy reaches about this (read + write), TB/s
    bf16_tflops: float = 989.0       # dense tensor-core peak
    l2_bytes: int = 50 * 1024 * 1024
    regs_per_sm: int = 65536
    sub_partitions: int = 4          # schedulers per SM: 4 warp-instructions issued per clock at most
    reg_unit: int = 256              # registers are allocated per warp in units of 256
    max_regs_per_thread: int = 255
    regs_per_block: int = 65536
    smem_per_sm: int = 233472        # 228 KB
    smem_per_block: int = 232448     # 227 KB usable by one block
    smem_reserved: int = 1024        # reserved by the driver for every block
    smem_unit: int = 128
    max_threads_per_sm: int = 2048
    max_blocks_per_sm: int = 32


H200 = Card()


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(regs: int, smem: int, threads: int, card: Card = H200) -> Tuple[int, int, str]:
    """(blocks per SM, warps per SM, limiter) for a block of ``threads`` threads using ``regs`` registers a
    thread and ``smem`` bytes of shared memory (static + dynamic). 0 blocks: the block does not fit at all."""
    warps = max(1, -(-threads // 32))
    limits = {"blocks": card.max_blocks_per_sm, "threads": card.max_threads_per_sm // (warps * 32)}
    reg_per_warp = _round_up(max(regs, 1) * 32, card.reg_unit)
    if regs > card.max_regs_per_thread or reg_per_warp * _round_up(warps, card.sub_partitions) > card.regs_per_block:
        limits["registers"] = 0
    else:
        warps_per_sub = (card.regs_per_sm // card.sub_partitions) // reg_per_warp
        limits["registers"] = (warps_per_sub * card.sub_partitions) // warps
    need = _round_up(smem + card.smem_reserved, card.smem_unit)
    limits["shared memory"] = 0 if smem > card.smem_per_block else card.smem_per_sm // need
    limiter = min(limits, key=lambda k: (limits[k], k != "registers"))
    blocks = limits[limiter]
    return blocks, blocks * warps, limiter


# ----------------------------------------------------------------------------------------------------------
# ptxas -v
# ----------------------------------------------------------------------------------------------------------

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_BARS = re.compile(r"used (\d+) barriers")


def parse_ptxas(log: str) -> Dict[str, dict]:
    """{mangled name: {arch, regs, spill_stores, spill_loads, stack, smem, barriers}} from a ``ptxas -v``
    log (nvcc -Xptxas -v prints the same lines)."""
    out: Dict[str, dict] = {}
    cur: Optional[dict] = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = out.setdefault(m.group(1), {"arch": m.group(2), "regs": 0, "spill_stores": 0, "spill_loads": 0,
                                              "stack": 0, "smem": 0, "barriers": 0})
            continue
        if cur is None:
            continue
        m = _PROPS.search(line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = (int(g) for g in m.groups())
        m = _USED.search(line)
        if m:
            cur["regs"] = int(m.group(1))
            s = _SMEM.search(line)
            cur["smem"] = int(s.group(1)) if s else 0
            b = _BARS.search(line)
            cur["barriers"] = int(b.group(1)) if b else 0
    return out


# ----------------------------------------------------------------------------------------------------------
# nvdisasm -c -gi
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Instr:
    addr: int
    op: str                 # opcode with modifiers, e.g. HGMMA.64x128x16.F32.BF16
    text: str
    file: Optional[str]
    line: Optional[int]
    target: Optional[str] = None   # branch target label

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


@dataclass
class Loop:
    start: int              # first address of the body (the branch target)
    end: int                # address of the closing branch
    size: int               # instructions in [start, end]
    own: int = 0            # of them, not inside a loop nested in this one
    depth: int = 0          # 0: outermost
    parent: Optional[int] = None  # index of the enclosing loop


@dataclass
class Function:
    name: str
    instrs: List[Instr] = field(default_factory=list)
    labels: Dict[str, int] = field(default_factory=dict)
    loops: List[Loop] = field(default_factory=list)

    def in_range(self, lo: int, hi: int) -> List[Instr]:
        return [i for i in self.instrs if lo <= i.addr <= hi]


_FUNC = re.compile(r"^\s*\.section\s+\.text\.([^,\s]+)")
_LABEL = re.compile(r"^(\.L_x_\d+|\.L_\w+):")
_INSTR = re.compile(r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+(.*?)\s*;")
_LOC = re.compile(r'//## File "([^"]+)", line (\d+)')
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")
_TARGET = re.compile(r"`\((\.L_\w+)\)")


def parse_sass(text: str) -> Dict[str, Function]:
    """Functions of an ``nvdisasm -c [-g|-gi]`` listing, with their loops found."""
    funcs: Dict[str, Function] = {}
    cur: Optional[Function] = None
    pending: List[str] = []
    file = line = None
    for raw in text.splitlines():
        m = _FUNC.match(raw)
        if m:
            cur = funcs.setdefault(m.group(1), Function(m.group(1)))
            pending, file, line = [], None, None
            continue
        if cur is None:
            continue
        m = _LOC.search(raw)
        if m:
            file, line = m.group(1), int(m.group(2))
            continue
        m = _LABEL.match(raw)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.match(raw)
        if m:
            addr = int(m.group(1), 16)
            body = _PRED.sub("", m.group(2).strip())
            op = body.split()[0] if body else ""
            t = _TARGET.search(body)
            ins = Instr(addr, op, body, file, line, t.group(1) if t and op.startswith(("BRA", "JMP")) else None)
            cur.instrs.append(ins)
            for lab in pending:
                cur.labels[lab] = addr
            pending = []
    for f in funcs.values():
        _find_loops(f)
    return funcs


def _find_loops(f: Function) -> None:
    loops = []
    for ins in f.instrs:
        if ins.target is None or ins.target not in f.labels:
            continue
        tgt = f.labels[ins.target]
        if tgt < ins.addr:  # (a branch to itself is the idle loop after EXIT)
            loops.append(Loop(tgt, ins.addr, 0))
    # Several back edges to one header (a `continue`) are one loop: keep the widest.
    by_start: Dict[int, Loop] = {}
    for lp in loops:
        if lp.start not in by_start or lp.end > by_start[lp.start].end:
            by_start[lp.start] = lp
    loops = sorted(by_start.values(), key=lambda lp: (lp.start, -lp.end))
    addrs = [i.addr for i in f.instrs if i.op != "NOP"]
    for lp in loops:
        lp.size = sum(1 for a in addrs if lp.start <= a <= lp.end)
    for i, lp in enumerate(loops):
        parents = [j for j, o in enumerate(loops) if j != i and o.start <= lp.start and lp.end <= o.end
                   and (o.start, -o.end) < (lp.start, -lp.end)]
        if parents:
            lp.parent = max(parents, key=lambda j: (loops[j].start, -loops[j].end))
            lp.depth = len(parents)
    for i, lp in enumerate(loops):
        lp.own = lp.size - sum(c.size for c in loops if c.parent == i)
    f.loops = loops


# ----------------------------------------------------------------------------------------------------------
# Instruction classes
# ----------------------------------------------------------------------------------------------------------

TENSOR_CORE = ("HMMA", "HGMMA", "IMMA", "IGMMA", "QGMMA", "BMMA", "UTCHMMA", "UTCQMMA", "UTCIMMA")
MIX_COLUMNS = ("HMMA", "HGMMA", "LDSM", "LDGSTS", "UTMALDG", "BAR", "MUFU", "SHFL", "LDG", "STG", "LDS", "STS",
               "ATOM", "LDL", "STL")


def instruction_mix(instrs: List[Instr]) -> Dict[str, int]:
    """Counts per class: HMMA (mma.sync), HGMMA (wgmma), LDSM (ldmatrix), LDGSTS (cp.async), UTMALDG (TMA
    loads), BAR (barriers), MUFU (exp2, rcp, ...), SHFL, global/shared/local loads and stores, atomics (ATOM,
    ATOMS, RED), and "total" (every instruction but NOP) and "tensor" (all tensor-core instructions)."""
    mix = {k: 0 for k in MIX_COLUMNS}
    mix["tensor"] = mix["total"] = 0
    for ins in instrs:
        b = ins.base
        if b == "NOP":
            continue
        mix["total"] += 1
        if b in TENSOR_CORE:
            mix["tensor"] += 1
        if b in ("ATOMS", "ATOMG", "RED", "REDG", "ATOM"):
            b = "ATOM"
        elif b.startswith("UTMALDG") or b == "UBLKCP":
            b = "UTMALDG"
        if b in mix:
            mix[b] += 1
    return mix
