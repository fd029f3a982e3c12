"""Smoke tests of the benchmark suite: tiny shapes, seconds. They check that the correctness gate runs (and fails
loudly), that the FLOP formulas and the gated-delta-rule stand-in are right, and that a run writes its reports."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from benchmarks.targets import main as check_targets
from benchmarks.targets import targets, verdict
from miras import presets
from miras.bench import baselines, main, ops
from miras.bench.timing import Settings, compare, peak_memory

CPU = torch.device("cpu")
SETTINGS = Settings(CPU, torch.float32, repeats=1, warmup=0, slow_repeats=1)


@pytest.mark.parametrize(
    "name", ["gated_deltanet", "deltanet", "mamba2", "linear_attention", "moneta", "memora", "titans", "ttt_linear"]
)
def test_op_flop_formula_matches_flop_counter(name):
    # T = 2.5 chunks: a short last chunk; moneta/memora have a lag token, titans momentum, ttt_linear one layer.
    spec = presets.get(name)
    call = ops.op_call(ops.chunk_miras, spec, ops.Shape(2, 2, 8), 40, 16, CPU, torch.float32)
    assert ops.counted_flops(ops.forward_fn(call.output)) == ops.op_matmul_flops(spec, 2, 40, 2, 8, 8, 16)


def test_chunked_gated_delta_rule_matches_token_loop():
    g = torch.Generator().manual_seed(0)
    B, T, H, D = 2, 37, 3, 8
    q, k = (F.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1) for _ in range(2))
    v = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    beta = 0.5 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    log_alpha = torch.log(0.9 + 0.1 * torch.rand(B, T, H, generator=g, dtype=torch.float64))
    want = baselines.gated_delta_rule_loop(q, k, v, beta, log_alpha)
    got = baselines.chunk_gated_delta_rule(q, k, v, beta, log_alpha, chunk_size=16)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_correctness_gate_fails_loudly(monkeypatch):
    def broken(*args, **kwargs):
        o, state = ops.naive_recurrent_miras(*args, **kwargs)
        return 1.001 * o, state

    monkeypatch.setattr(ops, "chunk_miras", broken)
    with pytest.raises(ops.CorrectnessError, match="gated_deltanet"):
        ops.check_correctness(["gated_deltanet"], CPU)


def test_peak_memory_sees_cpu_allocations():
    def fn():
        x = torch.ones(1024, 1024)  # 4 MiB, alive together with y
        y = x * 2
        return float(y[0, 0])

    assert 8 * 2**20 <= peak_memory(fn, CPU) < 9 * 2**20


def test_compare_round_robin_counts():
    calls = []
    timings = compare(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        device=CPU,
        repeats={"a": 3, "b": 1},
        warmup=1,
        warmup_fns={"b": lambda: calls.append("b0")},
    )
    assert calls == ["a", "b0", "a", "b", "a", "a"]
    assert [len(t.samples) for t in timings.values()] == [3, 1]


def _row(T, op, sdpa):
    return {"preset": "p", "chunk_size": 64, "T": T, "fwdbwd": {"median_s": op}, "sdpa_fwdbwd": {"median_s": sdpa}}


def test_grid_sets_every_preset_against_the_same_sdpa_samples():
    settings = Settings(CPU, torch.float32, repeats=3, warmup=0, slow_repeats=1)
    rows = ops.run_grid(settings, ops.Shape(1, 1, 8), ["retnet", "gated_deltanet", "retnet"], [16, 32], [8, 16])
    assert [(r["preset"], r["chunk_size"], r["T"]) for r in rows] == [
        (name, chunk, T) for name in ("retnet", "gated_deltanet") for chunk in (8, 16) for T in (16, 32)
    ]
    for T in (16, 32):
        at_T = [r for r in rows if r["T"] == T and r["chunk_size"] == 8]
        assert at_T[0]["sdpa_fwdbwd"]["samples_s"] == at_T[1]["sdpa_fwdbwd"]["samples_s"]
        assert at_T[0]["fwdbwd"]["samples_s"] != at_T[1]["fwdbwd"]["samples_s"]
        assert len(at_T[0]["sdpa_fwdbwd"]["samples_s"]) == 3
    assert not any("sdpa_fwdbwd" in r for r in rows if r["chunk_size"] == 16)


def test_sdpa_crossover_measured_interpolated_and_extrapolated():
    # Slower at 2048 (ratio 1/2), faster at 4096 (ratio 2): linear in log-log, the ratio is 1 half-way, at 2048·√2.
    measured = ops.sdpa_crossover(
        [_row(1024, 2.0, 1.0), _row(2048, 4.0, 2.0), _row(4096, 4.0, 8.0), _row(8192, 8.0, 32.0)]
    )[0]
    assert (measured["crossover_T"], measured["crossing_T"], measured["how"]) == (
        4096,
        round(2048 * 2**0.5),
        "measured",
    )
    below = ops.sdpa_crossover([_row(512, 1.0, 2.0), _row(1024, 2.0, 8.0)])[0]
    assert (below["crossover_T"], below["crossing_T"]) == (512, None)
    # From the largest T with op ∝ T, SDPA ∝ T²: equal when 8·(T/4096) = 4·(T/4096)², i.e. T = 8192, however the
    # slopes between the grid points look (here the op's is 1.6 and SDPA's 1.7: fitted laws would give 4096·2^10).
    extrapolated = ops.sdpa_crossover([_row(2048, 8.0 / 2**1.6, 4.0 / 2**1.7), _row(4096, 8.0, 4.0)])[0]
    assert extrapolated["how"].startswith("extrapolated") and extrapolated["crossing_T"] == 8192
    assert extrapolated["crossover_T"] is None


def test_sdpa_target_rows_per_preset():
    crossover = ops.sdpa_crossover(
        [_row(2048, 4.0, 2.0), _row(4096, 4.0, 8.0)] + [{**_row(T, 8.0, 1.0), "preset": "q"} for T in (2048, 4096)]
    )
    rows = targets({"crossover": crossover})
    assert [(r["measured"], r["met"]) for r in rows] == [(4096, True), (32768, False)]
    assert [verdict(r) for r in rows] == ["met", "NOT MET (extrapolated)"]


def test_titans_section_skips_without_titans_pytorch(monkeypatch):
    monkeypatch.setitem(sys.modules, "titans_pytorch", None)  # makes the import raise ImportError
    assert "skipped: titans-pytorch not importable" in ops.run_titans(SETTINGS)["skipped"]


def test_titans_section_matches_memory_and_checks_the_default_head_dim():
    pytest.importorskip("titans_pytorch")
    result = ops.run_titans(
        SETTINGS, preset_names=("yaad",), dim=32, heads=2, head_dims=(None, 8), chunk=8, B=1, T=16, compile_steps=False
    )
    default, small = result["configs"]
    assert (default["head_dim"], default["default_head_dim"], small["head_dim"], small["default_head_dim"]) == (
        32,
        True,
        8,
        False,
    )
    for config in result["configs"]:
        rows = {r["name"]: r for r in config["rows"]}
        assert list(rows) == ["titans_pytorch", "titans_pytorch batch_size=64", "yaad"]
        # the matmul ceiling: yaad's counted FLOPs at the matmul rate, as a ratio to titans-pytorch's measured tok/s
        ours, ref = rows["yaad"], rows["titans_pytorch"]
        assert "roof_tokens_per_s" not in ref and 0 < ours["fraction_of_matmul"] < 1
        assert ours["roof_tokens_per_s"] > ours["tokens_per_s"]
        assert ours["roof_speedup_vs_titans_pytorch"] == pytest.approx(ours["roof_tokens_per_s"] / ref["tokens_per_s"])
        # The same MLP memory: NeuralMemory's weights plus its LayerNorm gain (heads × head dim).
        assert rows["titans_pytorch"]["memory_params"] == rows["yaad"]["memory_params"] + 2 * config["head_dim"]
    checks = [r for r in targets({"titans": result}) if "yaad" in r["check"]]
    assert len(checks) == 1 and "NeuralMemory(dim=32, chunk_size=8, heads=2)" in checks[0]["check"]


def test_fla_loads_from_its_file_without_triton(tmp_path, monkeypatch):
    # A stand-in fla package whose ops/__init__ fails like the real one without triton; its naive file is our stand-in.
    naive = tmp_path / "fla" / "ops" / "gated_delta_rule" / "naive.py"
    naive.parent.mkdir(parents=True)
    (tmp_path / "fla" / "__init__.py").write_text("")
    (tmp_path / "fla" / "ops" / "__init__.py").write_text("import triton_that_is_not_installed\n")
    naive.write_text(
        "from miras.bench.baselines import chunk_gated_delta_rule\n\n"
        "def naive_chunk_gated_delta_rule(q, k, v, g, beta, chunk_size, scale):\n"
        "    assert scale == 1.0\n"
        "    return chunk_gated_delta_rule(q, k, v, beta, g, chunk_size), None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    before = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "fla"}
    try:
        for name in before:
            del sys.modules[name]
        fn, how = baselines.fla_chunk_gated_delta_rule()
    finally:  # the failed import leaves the fake `fla` in sys.modules
        for name in [m for m in sys.modules if m.split(".")[0] == "fla"]:
            del sys.modules[name]
        sys.modules.update(before)
    assert fn is not None and str(naive) in how
    assert ops._check_gdn(fn, CPU) <= 1e-8


TINY = [
    "--presets",
    "gated_deltanet",
    "--batch",
    "1",
    "--heads",
    "1",
    "--head-dim",
    "8",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--slow-repeats",
    "1",
]


def test_main_writes_reports(tmp_path, capsys):
    argv = [
        "--only",
        "grid",
        "linear",
        "compile",
        *TINY,
        "--presets",
        "gated_deltanet",
        "gated_deltanet+compile_steps",
        "--seq-lens",
        "16",
        "32",
        "--linear-T",
        "64",
        "--compile-presets",
        "gated_deltanet",
        "--compile-T",
        "16",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert {"correctness", "grid", "crossover", "linear", "compile"} <= set(results)
    assert {r["preset"] for r in results["correctness"]} >= {"gated_deltanet", "gated_deltanet+compile_steps"}
    assert [r["preset"] for r in results["crossover"]] == ["gated_deltanet", "gated_deltanet+compile_steps"]
    checks = " ".join(r["check"] for r in targets(results))  # the project's targets read what miras bench measured
    # The gated-delta-rule row names fla's reference when fla-core is installed, else the hand-written stand-in.
    for words in ("causal SDPA", "gated_deltanet tokens/s / ", "matmul", "graph breaks"):
        assert words in checks
    text = (tmp_path / "bench.md").read_text()
    assert "## Op time and peak memory" in text and "## torch.compile of the op" in text
    assert "target" not in text.lower() and "targets" not in results  # miras bench measures and reports, no more
    capsys.readouterr()
    status = check_targets([str(tmp_path)])  # benchmarks/targets.py: the table, and 1 when a target is not met
    table = capsys.readouterr().out
    assert "| check | measured | target | met | note |" in table and "causal SDPA" in table
    assert status == (1 if "NOT MET" in table else 0)
    assert (tmp_path / "time_vs_T.png").stat().st_size > 0


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--tf32", "--device", "cpu"], "--tf32 is for CUDA GPUs, but --device is cpu"),
        (["--device", "gpu"], "--device: 'gpu' is not a device; choose one of auto, cpu, cuda or cuda:N"),
        pytest.param(
            ["--device", "cuda"],
            "--device: cuda was asked for but torch sees no CUDA device",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA"),
        ),
    ],
)
def test_bad_device_flags_are_refused_before_anything_runs(tmp_path, capsys, argv, problem):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert problem in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["--batch", "0"], "argument --batch: must be >= 1, got 0"),
        (["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        (["--threads", "-3"], "argument --threads: must be >= 1, got -3"),
        (["--seq-lens", "512", "0"], "argument --seq-lens: must be >= 1, got 0"),
        (["--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    ],
)
def test_bad_counts_are_refused_by_the_parser(tmp_path, capsys, argv, problem):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and problem in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_main_model_and_memory_sections(tmp_path):
    argv = [
        "--only",
        "naive",
        "memory",
        "model",
        *TINY,
        "--naive-T",
        "16",
        "--memory-T",
        "32",
        "64",
        "--memory-presets",
        "gated_deltanet",
        "--train-seq-lens",
        "16",
        "--decode-contexts",
        "8",
        "16",
        "--decode-steps",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    checks = " ".join(r["check"] for r in targets(results))
    for words in ("naive_recurrent_miras", "chunk_miras(compile_steps=True) speed-up", "peak memory", "decode latency"):
        assert words in checks
    assert "## Model level" in (tmp_path / "bench.md").read_text()
    trained = {r["model"] for r in results["model"]["train"]["rows"]}
    assert trained == {"moneta", "moneta --compile", "transformer"}
