"""SASS cost of design options for a memory-bound sampling pass 1 (issue 15, item 1): compiled, never run.

Each option is a small Triton kernel with the streaming loop of one pass over fp32 logits (BLOCK-wide tiles,
8 warps, as the v1 kernel), compiled for sm_90a through fastattn.bench.static's capture (specialised exactly as a
launch). Prints, per option, registers, spills and the loop's SASS instructions per tile, per element, and the
issue time of that one pass at 128 x 131072 on an H200 against the read floor (15.8 us).

    PYTHONPATH=. python benchmarks/static_sampling_options.py

STATIC FIGURES FROM A COMPILE, NOT MEASUREMENTS. These kernels are measuring devices, not fastattn kernels.
"""
from __future__ import annotations

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fastattn.bench import static  # noqa: E402
from fastattn.bench.sass import H200  # noqa: E402


@triton.jit
def _pass_option(x_ptr, stride_b, V, n_tiles, tdiv, rcp, piv_ptr, out_ptr,
                 DIV_RN: tl.constexpr, RESCALE: tl.constexpr, STATS: tl.constexpr, NB: tl.constexpr,
                 NPIV: tl.constexpr, BLOCK: tl.constexpr):
    """One streaming pass over a row: max, sum of exp, optionally first argmax / NaN / +inf counts (STATS), a
    NB-bin count histogram (NB > 0), or count and mass above NPIV pivots (NPIV > 0)."""
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_b
    cols = tl.arange(0, BLOCK)
    x0 = tl.load(x_row + cols, mask=cols < V, other=float("-inf"))
    if DIV_RN:
        top = tl.max(tl.math.div_rn(x0, tdiv), 0) + 24.0
    else:
        top = tl.max(x0 * rcp, 0) + 24.0
    m_v = tl.full([BLOCK], float("-inf"), tl.float32)
    s_v = tl.zeros([BLOCK], tl.float32)
    a_v = tl.zeros([BLOCK], tl.int32)
    bad_v = tl.zeros([BLOCK], tl.int32)
    hist = tl.zeros([NB if NB > 0 else 1], tl.int32)
    if NPIV > 0:
        piv = tl.load(piv_ptr + tl.arange(0, NPIV))
        c_v = tl.zeros([BLOCK, NPIV], tl.int32)
        e_v = tl.zeros([BLOCK, NPIV], tl.float32)
    for i in range(0, n_tiles):
        o = i * BLOCK + cols
        x = tl.load(x_row + o, mask=o < V, other=float("-inf"))
        if DIV_RN:
            z = tl.math.div_rn(x, tdiv)
        else:
            z = x * rcp
        if STATS:
            bad_v += ((z != z) | (z == float("inf"))).to(tl.int32)
            a_v = tl.where(z > m_v, o, a_v)
        if RESCALE:
            m_new = tl.maximum(m_v, z)
            sh = tl.where(m_new == float("-inf"), 0.0, m_new)
            s_v = s_v * tl.exp(m_v - sh) + tl.exp(z - sh)
            m_v = m_new
        else:  # a fixed shift (first tile's max + headroom); redo the pass in the rare case the max exceeds it
            m_v = tl.maximum(m_v, z)
            s_v += tl.exp2((z - top) * 1.4426950408889634)
        if NB > 0:
            d = tl.minimum(tl.maximum((top - z) * 8.0, 0.0), NB - 1.0).to(tl.int32)
            hist += tl.histogram(d, NB, mask=o < V)
        if NPIV > 0:
            gt = z[:, None] > piv[None, :]
            c_v += gt.to(tl.int32)
            e_v += tl.where(gt, tl.exp2((z[:, None] - top) * 1.4426950408889634), 0.0)
    res = tl.max(m_v, 0) + tl.sum(s_v, 0) + tl.sum(hist, 0).to(tl.float32) + tl.max(a_v, 0).to(tl.float32)
    res += tl.sum(bad_v, 0).to(tl.float32)
    if NPIV > 0:
        res += tl.sum(tl.sum(c_v, 0).to(tl.float32) + tl.sum(e_v, 0), 0)
    tl.store(out_ptr + row, res)


OPTIONS = [
    # name, DIV_RN, RESCALE, STATS, NB, NPIV
    ("v1 pass 1 (div_rn, per-element rescale, stats, 512 bins)", True, True, True, 512, 0),
    ("v1 pass 1 with 128 bins", True, True, True, 128, 0),
    ("v1 pass 1 without histogram", True, True, True, 0, 0),
    ("fixed shift instead of rescale, 512 bins", True, False, True, 512, 0),
    ("fixed shift, no histogram", True, False, True, 0, 0),
    ("fixed shift, no histogram, no argmax/NaN stats", True, False, False, 0, 0),
    ("fixed shift, 2 pivots (count + mass)", True, False, True, 0, 2),
    ("fixed shift, 4 pivots (count + mass)", True, False, True, 0, 4),
    ("x * (1/T) instead of div_rn, fixed shift, no histogram", False, False, True, 0, 0),
    ("x * (1/T), fixed shift, 2 pivots", False, False, True, 0, 2),
    ("x * (1/T), fixed shift, no stats, no histogram (max + sum only)", False, False, False, 0, 0),
]


def main() -> int:
    b, v, block, warps = 128, 131072, 2048, 8
    tools = static.find_tools()
    cache = static.Cache(True)
    floor_us = b * v * 4 / (H200.copy_tbps * 1e12) * 1e6
    print(f"one pass over fp32 {b}x{v}, BLOCK {block}, {warps} warps; read floor {floor_us:.1f} us "
          f"(issue 15 target: all passes together <= {floor_us / 2:.1f} us)\n")
    print("| option | regs | spill st/ld | loop SASS / tile | per element (thread) | issue µs (one pass) |")
    print("|---|---|---|---|---|---|")
    for name, div_rn, rescale, stats, nb, npiv in OPTIONS:
        x = torch.empty((b, v), dtype=torch.float32, device="meta")
        out = torch.empty((b,), dtype=torch.float32, device="meta")
        piv = torch.empty((max(npiv, 1),), dtype=torch.float32, device="meta")
        with static.capture_launches() as launches:
            _pass_option[(b,)](x, x.stride(0), v, triton.cdiv(v, block), 0.8, 1.25, piv, out, DIV_RN=div_rn,
                               RESCALE=rescale, STATS=stats, NB=nb, NPIV=npiv, BLOCK=block, num_warps=warps)
        row = static.compile_triton(launches[0], 90, tools, cache, False)
        if row.error:
            print(f"| {name} | ERROR {row.error} |")
            continue
        loop = max((lp for lp in row.loops if lp.py and "for i in range" in lp.py), key=lambda lp: lp.own,
                   default=None)
        n = loop.own if loop else 0
        per_elem = n / (block / (32 * warps))
        issue = n * (v // block) * warps * -(-b // H200.sms) / (4 * H200.clock_ghz * 1e9) * 1e6
        print(f"| {name} | {row.regs} | {row.spill_stores}/{row.spill_loads} | {n} | {per_elem:.1f} | {issue:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
