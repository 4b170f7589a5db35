"""Checks of the benchmark suite itself (no timing): the FLOP/byte formulas against docs/benchmarks.md's figures, the
plans, and the CPU command end to end on one small section. `pytest benchmarks/test_bench_suite.py`.
(`--benchmark-only` skips these: they use no benchmark fixture.)"""
from __future__ import annotations

import json

import pytest

from fastattn.bench import __main__ as cli
from fastattn.bench import formulas, runner
from fastattn.bench.core import Options


def test_formulas_match_anchors():
    # attention: 4·B·H·S²·D, halved when causal; backward 2.5x
    assert formulas.attention_fwd_flops(32, 16, 512, 512, 128) == 4 * 32 * 16 * 512 * 512 * 128
    assert formulas.attention_fwd_flops(1, 1, 8, 8, 4, causal=True) == 4 * 8 * 8 * 4 / 2
    assert formulas.attention_bwd_flops(2, 3, 5, 7, 11) == 2.5 * 4 * 2 * 3 * 5 * 7 * 11
    # decode, B=1, 8 KV heads, KV 1k, D=128, bf16: 11.6 µs -> 361 GB/s (docs/benchmarks.md)
    gbps = formulas.gbps(formulas.decode_bytes(1, 8, 1024, 128, 2), 11.6e-3)
    assert gbps == pytest.approx(361, rel=0.01)
    # softmax fp32 1x32k: 15.5 µs -> 17 GB/s; sampling floor 1x32k fp32 at 4252 GB/s: 0.03 µs
    assert formulas.gbps(formulas.softmax_bytes(1, 32768, 4), 15.5e-3) == pytest.approx(16.9, rel=0.01)
    floor_us = formulas.floor_ms(formulas.sampling_floor_bytes(1, 32768, 4), 4252) * 1e3
    assert floor_us == pytest.approx(0.031, rel=0.02)


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_gpu_plans(mode):
    cases, _ = runner.plan(Options(mode=mode, device="cuda"))
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique (pytest-benchmark compares by them)"
    sections = {c.section for c in cases}
    assert {"attention_fwd", "attention_bwd", "decode", "mask_fwd", "mask_bwd", "dropout_fwd", "dropout_bwd",
            "softmax", "sampling"} <= sections
    drop = [c for c in cases if c.section.startswith("dropout")]
    assert {"fastattn-triton", "fastattn-triton no dropout", "fastattn-cuda no dropout"} <= {
        p.name for p in drop[0].providers}
    attn = next(c for c in cases if c.section == "attention_fwd")
    names = {p.name for p in attn.providers}
    assert {"fastattn-triton", "fastattn-cuda", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math"} <= names
    for c in cases:
        if c.section.startswith("attention"):
            assert c.params["B"] * c.params["S"] == 16384 and c.params["H"] * c.params["D"] == 2048


@pytest.mark.parametrize("passname", ["fwd", "bwd"])
def test_dropout_check_sees_the_mask(passname):
    """The dropout section's float64 check follows the (seed, offset) every provider's call draws: the torch
    backend's output passes it, and the same output checked against another seed does not."""
    import torch

    case = next(c for c in runner.plan(Options(mode="quick", device="cpu", passes=[passname]), ["dropout"])[0])
    inp = case.make_inputs(torch.device("cpu"))
    prov = next(p for p in case.providers if p.name == "fastattn-torch")
    out = prov.build(inp)()
    err = case.check(inp, out)
    assert err < 2e-2, err
    p, seed, offset = inp["dropout"]
    wrong = dict(inp, dropout=(p, seed + 1, offset))
    wrong.pop("_ref")
    assert case.check(wrong, out) > 0.1
    again = prov.build(inp)()  # the fixed generator state: the same draw on every call
    for a, b in zip(out if isinstance(out, tuple) else (out,), again if isinstance(again, tuple) else (again,)):
        assert torch.equal(a, b)


def test_filters():
    cases, _ = runner.plan(Options(mode="full", device="cuda", head_dims=[64], backends=["triton"],
                                   baselines=["cudnn"]), ["attention"])
    assert cases and all(c.params["D"] == 64 for c in cases)
    assert {p.name for c in cases for p in c.providers} == {"fastattn-triton", "sdpa-cudnn"}
    with pytest.raises(ValueError):
        runner.sections_for(["no-such-op"])


def test_cli_list_and_cpu_run(tmp_path, capsys):
    assert cli.main(["--list", "--quick", "--device", "cuda"]) == 0
    assert "attention_fwd-B4-H16-S4096-D128-causal0-bf16" in capsys.readouterr().out
    out = tmp_path / "res"
    rc = cli.main(["--quick", "--device", "cpu", "--op", "softmax", "--dtype", "fp32", "--backend", "torch",
                   "--out", str(out), "--no-progress", "--quiet"])
    assert rc == 0
    report = (out / "report.md").read_text()
    assert "correctness only" in report and "Softmax with temperature" in report
    doc = json.loads((out / "results.json").read_text())
    rows = [r for r in doc["rows"] if r["provider"] == "fastattn-torch"]
    assert rows and all(r["status"] == "ok" and r["err"] < 1e-6 for r in rows)
    assert {"gpu", "driver", "torch", "triton", "git_sha", "date"} <= set(doc["env"])
    assert (out / "results.csv").read_text().startswith("gpu,driver,torch,triton")
