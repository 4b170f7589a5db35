"""Small calls of every CUDA C++ kernel, for compute-sanitizer on the GPU machine (benchmarks/device_check.sh):

    compute-sanitizer --tool memcheck --error-exitcode 3 python3 benchmarks/sanitize_cases.py
    compute-sanitizer --tool racecheck --error-exitcode 3 python3 benchmarks/sanitize_cases.py

Each case runs once with backend="cuda" on odd sizes (partial tiles, tails, masked rows), forward and backward
where there is one; a case that raises is printed and the script carries on, exiting 1 at the end. The
sanitizer reports the kernels' own out-of-bounds accesses and shared-memory races; this script only makes
every kernel run. Needs a CUDA GPU and the nvcc build of fastattn._C.
"""
from __future__ import annotations

import os
import sys
import traceback

import torch

import fastattn

# The GPU, or (FASTATTN_CUDA_EMULATE=1, no GPU) the CPU through the emulated build: a dry run of the calls.
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _attention(dt, d, causal, bias, kpm, dropout, hq=4, hkv=2, sq=77, sk=93, b=2):
    g = torch.Generator(device=DEV).manual_seed(d + sq)
    r = lambda *s: torch.randn(*s, generator=g, device=DEV, dtype=torch.float32).to(dt)  # noqa: E731
    grad = d <= 128  # the CUDA backward has head dims 32-128; D = 256 runs the forward only
    q = r(b, hq, sq, d).requires_grad_(grad)
    k, v = r(b, hkv, sk, d).requires_grad_(grad), r(b, hkv, sk, d).requires_grad_(grad)
    kw = {}
    if bias:
        kw["bias"] = r(1, hq, sq, sk).requires_grad_()
    if kpm:
        m = torch.ones(b, sk, dtype=torch.bool, device=DEV)
        m[0, sk // 2:] = False
        kw["key_padding_mask"] = m
    out = fastattn.attention(q, k, v, causal=causal, dropout_p=0.1 if dropout else 0.0, backend="cuda", **kw)
    if grad:
        out.float().square().sum().backward()


def _decode(dt, d):
    g = torch.Generator(device=DEV).manual_seed(d)
    b, hq, hkv, smax = 3, 8, 2, 300
    q = torch.randn(b, hq, d, generator=g, device=DEV).to(dt)
    kc = torch.randn(b, hkv, smax, d, generator=g, device=DEV).to(dt)
    vc = torch.randn(b, hkv, smax, d, generator=g, device=DEV).to(dt)
    lens = torch.tensor([0, 1, 257], dtype=torch.int32, device=DEV)
    fastattn.decode_attention(q, kc, vc, lens, backend="cuda")


def _softmax(dt, n, rows=3):
    x = torch.randn(rows, n, device=DEV).to(dt).requires_grad_()
    y = fastattn.softmax(x, 0.7, backend="cuda")
    y.float().square().sum().backward()


def _sampling(dt, b, v, **kw):
    x = torch.randn(b, v, device=DEV).to(dt)
    fastattn.sample(x, temperature=0.8, seed=1, backend="cuda", **kw)
    fastattn.top_k_top_p_filter(x, temperature=0.8, backend="cuda", **{k: kw[k] for k in kw if k != "min_p"})


def cases():
    for dt in (torch.bfloat16, torch.float16):
        for d in (32, 64, 96, 128, 256):
            yield f"attention {dt} D={d}", lambda dt=dt, d=d: _attention(dt, d, False, False, False, False)
            yield f"decode {dt} D={d}", lambda dt=dt, d=d: _decode(dt, d)
        yield f"attention {dt} D=64 causal bias kpm", lambda dt=dt: _attention(dt, 64, True, True, True, False)
        yield f"attention {dt} D=128 causal dropout", lambda dt=dt: _attention(dt, 128, True, False, False, True)
        yield f"attention {dt} D=128 MQA Sq=1", lambda dt=dt: _attention(dt, 128, True, False, False, False, 4, 1, 1)
    for flag in ("1",):  # the Hopper forward (sm_90a only; elsewhere it falls back to the mma.sync kernel)
        def hopper(flag=flag):
            os.environ["FASTATTN_CUDA_HOPPER"] = flag
            try:
                for d in (64, 128):
                    _attention(torch.bfloat16, d, True, False, False, False, sq=200, sk=333)
            finally:
                os.environ.pop("FASTATTN_CUDA_HOPPER", None)
        yield "attention Hopper forward (FASTATTN_CUDA_HOPPER=1)", hopper
    for dt in (torch.float32, torch.bfloat16):
        for n in (1, 1000, 32769, 152064):  # rows in registers, tails, wide rows (row split / cluster on sm_90)
            yield f"softmax {dt} n={n}", lambda dt=dt, n=n: _softmax(dt, n)
        yield f"softmax {dt} 1 x 262144", lambda dt=dt: _softmax(dt, 262144, rows=1)
        yield f"sample {dt} top-k 50 top-p 0.9 (fast path)", lambda dt=dt: _sampling(dt, 4, 50001, top_k=50, top_p=0.9)
        yield f"sample {dt} B=1 (rows split over CTAs)", lambda dt=dt: _sampling(dt, 1, 131072, top_k=50, top_p=0.9)
        yield f"sample {dt} top-p alone, min-p", lambda dt=dt: _sampling(dt, 3, 32003, top_p=0.8, min_p=0.05)


def main() -> int:
    if DEV == "cpu" and os.environ.get("FASTATTN_CUDA_EMULATE") != "1":
        print("sanitize_cases: needs a CUDA GPU (or FASTATTN_CUDA_EMULATE=1 for a dry run on the CPU)", file=sys.stderr)
        return 2
    failed = 0
    for name, fn in cases():
        try:
            fn()
            if DEV == "cuda":
                torch.cuda.synchronize()
            print(f"ok      {name}", flush=True)
        except Exception:  # noqa: BLE001 - report and go on: the sanitizer's log is the point
            failed += 1
            print(f"FAILED  {name}\n{traceback.format_exc()}", flush=True)
    print(f"sanitize_cases: {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
