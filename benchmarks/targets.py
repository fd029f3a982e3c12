"""This project's acceptance targets for `miras bench`, checked against the bench.json of a run:

    python benchmarks/targets.py bench-results/bench.json    # the table in markdown; exit status 1 if one is not met

`miras bench` (miras/bench/) measures and reports; what counts as good enough is this project's, the targets of the
issue that asked for the suite, so it lives here and not in the installed package. benchmarks/bench_ops.py and
bench_model.py run the suite and then this check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAIVE_SPEEDUP = 30.0  # chunk_miras over the token loop naive_recurrent_miras: Moneta fwd+bwd, T = 2048
TITANS_SPEEDUP = 50.0  # MLP presets (op + projections) over titans-pytorch's NeuralMemory at its default head dim
# gated_deltanet (the exact delta rule, gradients="per_token") over fla's naive chunked gated delta rule, the same
# function (or the hand-written stand-in), fwd+bwd tokens/s at T = 8192
GDN_SPEEDUP = 2.0
SDPA_FROM_T = 4096  # the op faster than causal SDPA fwd+bwd from this T on
GDN_SDPA_FROM_T = 2048  # gated_deltanet's (exact) op faster than causal SDPA fwd+bwd from this T on
MEMORY_RATIO = 2.2  # peak fwd+bwd memory at the longer of two lengths (twice the shorter) over the shorter
DECODE_RATIO = 1.3  # decode latency per token, longest context over shortest
MATMUL_FRACTION = 0.25  # a linear preset's achieved GFLOP/s as a fraction of the measured float32 matmul's


def targets(results: dict) -> list[dict]:
    """Each target as measured by a run (value, goal, met); a section the run skipped gives no row."""
    rows = []

    def add(check: str, value, goal: str, ok: bool, note: str = "", extrapolated: bool = False) -> None:
        rows.append(
            {
                "check": check,
                "measured": value,
                "target": goal,
                "met": bool(ok),
                "note": note,
                "extrapolated": extrapolated,
            }
        )

    if "naive" in results:
        r = results["naive"]
        add(
            f"{r['preset']} fwd+bwd, T={r['T']}: chunk_miras speed-up over the token loop naive_recurrent_miras",
            r["speedup"],
            f">= {NAIVE_SPEEDUP:g}x",
            r["speedup"] >= NAIVE_SPEEDUP,
        )
        if "speedup_compile_steps" in r:
            add(
                f"{r['preset']} fwd+bwd, T={r['T']}: chunk_miras(compile_steps=True) speed-up over naive_recurrent_miras",
                r["speedup_compile_steps"],
                f">= {NAIVE_SPEEDUP:g}x",
                r["speedup_compile_steps"] >= NAIVE_SPEEDUP,
                "the same run, side by side",
            )
    titans = results.get("titans", {})
    for config in titans.get("configs", []):
        if not config["default_head_dim"]:
            continue
        by_name = {r["name"]: r for r in config["rows"]}
        ref = by_name[config["reference"]]
        for r in config["rows"]:
            if r["name"].startswith("titans_pytorch"):
                continue
            add(
                f"{r['name']} (op + projections) tokens/s / titans-pytorch {config['label']} tokens/s, fwd+bwd, "
                f"x [{titans['B']}, {titans['T']}, {titans['dim']}]",
                r["speedup_vs_titans_pytorch"],
                f">= {TITANS_SPEEDUP:g}x",
                r["speedup_vs_titans_pytorch"] >= TITANS_SPEEDUP,
                f"{r['tokens_per_s']:.0f} vs {ref['tokens_per_s']:.0f} tok/s; same heads ({titans['heads']}), head dim "
                f"({config['head_dim']}), 2-layer MLP memory with expansion 4, memory params {r['memory_params']} vs {ref['memory_params']}"
                + (
                    f"; ceiling at the matmul roof: {r['roof_speedup_vs_titans_pytorch']:.1f}x ({100 * r['fraction_of_matmul']:.0f}% of it reached)"
                    if "roof_speedup_vs_titans_pytorch" in r
                    else ""
                ),
            )
    linear = results.get("linear", {})
    by_name = {r["name"]: r for r in linear.get("rows", [])}
    if "gated_deltanet" in by_name:
        gdn = by_name["gated_deltanet"]
        if linear["reference"] == "fla_naive_chunk":
            add(
                f"gated_deltanet tokens/s / fla naive_chunk_gated_delta_rule tokens/s, fwd+bwd, T={linear['T']}",
                gdn["speedup_vs_fla"],
                f">= {GDN_SPEEDUP:g}x",
                gdn["speedup_vs_fla"] >= GDN_SPEEDUP,
                f"{gdn['tokens_per_s']:.0f} vs {by_name['fla_naive_chunk']['tokens_per_s']:.0f} tok/s",
            )
        else:
            add(
                f"gated_deltanet tokens/s / hand-written chunked gated delta rule tokens/s, fwd+bwd, T={linear['T']}",
                gdn["speedup_vs_standin"],
                f">= {GDN_SPEEDUP:g}x",
                gdn["speedup_vs_standin"] >= GDN_SPEEDUP,
                "fla not installed, so against the stand-in (faster than fla's naive version: a triangular solve where "
                f"fla substitutes row by row); {gdn['tokens_per_s']:.0f} vs {by_name['gdn_standin']['tokens_per_s']:.0f} tok/s",
            )
    for r in results.get("crossover", []):
        check = f"{r['preset']} (chunk {r['chunk_size']}) fwd+bwd faster than causal SDPA from T"
        goal = GDN_SDPA_FROM_T if r["preset"] == "gated_deltanet" else SDPA_FROM_T
        if r["how"] == "measured":
            if r["crossing_T"] is None:
                note = f"faster at every grid T up to {r['max_T']}: the crossing lies below T={r['crossover_T']}"
            else:
                note = f"faster at every grid T from there up to {r['max_T']}; crossing at T ≈ {r['crossing_T']} (interpolated)"
            add(check, r["crossover_T"], f"<= {goal}", r["crossover_T"] <= goal, note)
        else:
            add(
                check,
                r["crossing_T"],
                f"<= {goal}",
                r["crossing_T"] <= goal,
                f"not measured: slower at every grid T up to {r['max_T']}; {r['how']}",
                extrapolated=True,
            )
    for r in results.get("memory_scaling", []):
        t1, t2 = list(r["peak_bytes"])
        add(
            f"{r['preset']} op fwd+bwd peak memory, T={t2} / T={t1}",
            r["ratio"],
            f"<= {MEMORY_RATIO:g}",
            r["ratio"] <= MEMORY_RATIO,
        )
    decode = results.get("model", {}).get("decode", {})
    if "ratio" in decode:
        add(
            f"{decode['model']} LM decode latency per token, context {decode['long']} / {decode['short']}",
            decode["ratio"],
            f"<= {DECODE_RATIO:g}",
            decode["ratio"] <= DECODE_RATIO,
        )
    for r in linear.get("rows", []):
        if "flops_fwdbwd_counted" in r:  # the presets (not the baselines)
            add(
                f"{r['name']} achieved GFLOP/s as % of the measured float32 matmul GFLOP/s, fwd+bwd, T={linear['T']}",
                100 * r["fraction_of_matmul"],
                f">= {100 * MATMUL_FRACTION:g}%",
                r["fraction_of_matmul"] >= MATMUL_FRACTION,
                f"{r['gflops']:.1f} of {linear['matmul']['gflops']:.1f} GFLOP/s ({linear['matmul']['threads']} threads)",
            )
    for r in results.get("compile", []):
        if "speedup" in r:
            err = r[f"max_rel_err_fullgraph_{r['fullgraph']}"]
            note = (
                f"fullgraph={r['fullgraph']} compiles fwd+bwd, output and gradients equal eager's (max rel err "
                f"{err:.1e}); speed-up over eager {r['speedup']:.2f}x at T={r['T']}"
            )
        elif "error_fullgraph_True" in r:  # includes a compiled op that disagrees with eager
            note = f"does not compile with fullgraph=True: {r['error_fullgraph_True'][:100]}"
        else:
            note = "speed-up not measured (run with --compile)"
        add(
            f"torch.compile(chunk_miras) {r['preset']}: graph breaks (torch._dynamo.explain)",
            r["graph_break_count"],
            "0",
            r["graph_break_count"] == 0 and "error_fullgraph_True" not in r,
            note,
        )
    return rows


def verdict(row: dict) -> str:
    """A target row's outcome as the report prints it."""
    return ("met" if row["met"] else "NOT MET") + (" (extrapolated)" if row["extrapolated"] else "")


def markdown(rows: list[dict]) -> str:
    lines = ["| check | measured | target | met | note |", "|---|---|---|---|---|"]
    for r in rows:
        value = f"{r['measured']:.3g}" if isinstance(r["measured"], float) else r["measured"]
        lines.append(f"| {r['check']} | {value} | {r['target']} | {verdict(r)} | {r['note']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/targets.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="the bench.json of a `miras bench` run (or its folder)")
    args = parser.parse_args(argv)
    path = args.results / "bench.json" if args.results.is_dir() else args.results
    if not path.is_file():
        print(
            f"benchmarks/targets.py: {path} does not exist (the results of `miras bench --out DIR` are DIR/bench.json)",
            file=sys.stderr,
        )
        return 2
    rows = targets(json.loads(path.read_text(encoding="utf-8")))
    print(markdown(rows) if rows else f"no target was measured in {path}")
    return 0 if all(r["met"] for r in rows) else 1


def report_after(run_suite, argv: list[str]) -> int:
    """Run the suite (`miras.bench.main(argv)`), then print the targets of its results; the suite's exit status (a
    target not met is a finding of the run, not a failure of it)."""
    from miras.bench import parser

    status = run_suite(argv)
    if status == 0:
        print("\n## Targets (benchmarks/targets.py)\n")
        main([str(parser().parse_args(argv).out / "bench.json")])
    return status


if __name__ == "__main__":
    sys.exit(main())
