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
    predicated: bool = False
    # nvdisasm -gi's whole location of inlined code, innermost first: ((file, line), (file of its call, line of
    # the call), ...); file / line above are the last (outermost) of these
    chain: Tuple[Tuple[str, int], ...] = ()

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


@dataclass
class Loop:
    start: int              # address of the loop header (the target of its back edges)
    end: int                # highest address in the body
    size: int               # instructions (not NOP) in the body, nested loops included
    own: int = 0            # of them, not inside a loop nested in this one
    depth: int = 0          # 0: outermost
    parent: Optional[int] = None  # index of the enclosing loop
    addrs: frozenset = frozenset()  # addresses of the body's instructions


@dataclass
class Function:
    name: str
    instrs: List[Instr] = field(default_factory=list)
    labels: Dict[str, int] = field(default_factory=dict)
    loops: List[Loop] = field(default_factory=list)

    def in_range(self, lo: int, hi: int) -> List[Instr]:
        return [i for i in self.instrs if lo <= i.addr <= hi]

    def in_loop(self, lp: "Loop", own: bool = False) -> List[Instr]:
        """The instructions of a loop's body (own: not those of loops nested in it)."""
        skip = set()
        if own:
            for c in self.loops:
                if c.parent is not None and self.loops[c.parent] is lp:
                    skip |= c.addrs
        return [i for i in self.instrs if i.addr in lp.addrs and i.addr not in skip]

    @property
    def outside_loops(self) -> int:
        """Instructions (not NOP) in no loop: what runs once per program."""
        inside = set().union(*(lp.addrs for lp in self.loops)) if self.loops else set()
        return sum(1 for i in self.instrs if i.op != "NOP" and i.addr not in inside)


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
    chain: List[Tuple[str, int]] = []
    in_loc = False  # the previous line was a location line: this one continues its chain
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
            chain = (chain if in_loc else []) + [(file, line)]
            in_loc = True
            continue
        in_loc = False
        m = _LABEL.match(raw)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.match(raw)
        if m:
            addr = int(m.group(1), 16)
            raw_body = m.group(2).strip()
            body = _PRED.sub("", raw_body)
            op = body.split()[0] if body else ""
            t = _TARGET.search(body)
            ins = Instr(addr, op, body, file, line, t.group(1) if t else None, predicated=body != raw_body,
                        chain=tuple(chain))
            cur.instrs.append(ins)
            for lab in pending:
                cur.labels[lab] = addr
            pending = []
    for f in funcs.values():
        _find_loops(f)
    return funcs


_ENDS_BLOCK = ("BRA", "BRX", "JMP", "JMX", "EXIT", "RET", "CALL", "BPT")


def _find_loops(f: Function) -> None:
    """Natural loops of the control-flow graph: a back edge u -> h where h dominates u; the body is h plus every
    block that reaches u without passing h. Back edges to one header are one loop. (A branch to a lower
    address is not enough: out-of-line slow paths placed after EXIT, e.g. mbarrier wait retries, jump back
    into the main path without forming a loop.)"""
    ins = f.instrs
    if not ins:
        f.loops = []
        return
    index = {i.addr: k for k, i in enumerate(ins)}
    targets = {f.labels[i.target] for i in ins if i.target in f.labels}
    leaders = {0}
    for k, i in enumerate(ins):
        if i.addr in targets:
            leaders.add(k)
        if i.base in _ENDS_BLOCK and k + 1 < len(ins):
            leaders.add(k + 1)
    starts = sorted(leaders)
    blocks = [(a, b - 1) for a, b in zip(starts, starts[1:] + [len(ins)])]     # instruction index ranges
    block_of = {}
    for n, (a, b) in enumerate(blocks):
        for k in range(a, b + 1):
            block_of[k] = n
    succ: List[List[int]] = [[] for _ in blocks]
    for n, (a, b) in enumerate(blocks):
        last = ins[b]
        tgt = f.labels.get(last.target) if last.target else None
        falls = b + 1 < len(ins)
        if last.base in ("BRA", "JMP"):
            if tgt is not None:
                succ[n].append(block_of[index[tgt]])
            if last.predicated and falls:
                succ[n].append(n + 1)
        elif last.base in ("EXIT", "RET", "BPT"):
            if last.predicated and falls:
                succ[n].append(n + 1)
        elif last.base == "CALL":
            if tgt is not None:
                succ[n].append(block_of[index[tgt]])
            if falls:
                succ[n].append(n + 1)
        elif last.base in ("BRX", "JMX"):  # indirect: any label may follow
            succ[n] += sorted({block_of[index[f.labels[t]]] for t in f.labels if f.labels[t] in index})
            if falls:
                succ[n].append(n + 1)
        elif falls:
            succ[n].append(n + 1)
    # reachable blocks in reverse postorder, then iterative dominators (bitsets as ints)
    order, seen, stack = [], {0}, [(0, iter(succ[0]))]
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            order.append(node)
            stack.pop()
        elif nxt not in seen:
            seen.add(nxt)
            stack.append((nxt, iter(succ[nxt])))
    rpo = order[::-1]
    preds: Dict[int, List[int]] = {n: [] for n in rpo}
    for n in rpo:
        for m in succ[n]:
            preds[m].append(n)
    full = (1 << len(blocks)) - 1
    dom = {n: full for n in rpo}
    dom[0] = 1
    changed = True
    while changed:
        changed = False
        for n in rpo[1:]:
            d = full
            for p in preds[n]:
                d &= dom[p]
            d |= 1 << n
            if d != dom[n]:
                dom[n], changed = d, True
    bodies: Dict[int, set] = {}
    for u in rpo:
        for h in succ[u]:
            if (dom[u] >> h) & 1:               # back edge u -> h
                body = bodies.setdefault(h, {h})
                work = [u]
                while work:
                    x = work.pop()
                    if x not in body:
                        body.add(x)
                        work += preds.get(x, [])
    loops = []
    for h, body in bodies.items():
        addrs = frozenset(ins[k].addr for n in body for k in range(blocks[n][0], blocks[n][1] + 1))
        size = sum(1 for a in addrs if ins[index[a]].op != "NOP")
        loops.append(Loop(ins[blocks[h][0]].addr, max(addrs), size, addrs=addrs))
    loops.sort(key=lambda lp: (lp.start, -lp.size))
    for i, lp in enumerate(loops):
        outer = [j for j, o in enumerate(loops) if j != i and lp.addrs < o.addrs]
        if outer:
            lp.parent = min(outer, key=lambda j: loops[j].size)
            lp.depth = len(outer)
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
