"""Turn the suite's results dict into bench.json, bench.md (tables) and time_vs_T.png. What the numbers should reach is
not here: this project's targets are benchmarks/targets.py, outside the package.

Every file is written atomically and durably (miras/io_atomic.py), so an interrupted run
never leaves a half-written report behind.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from miras.io_atomic import write_bytes_atomic


def say(message: str) -> None:
    """Progress on stdout, flushed: a long run shows where it is."""
    print(message, flush=True)


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def _f(x) -> str:
    """Table cells: integers above 100, three significant digits below."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_f(c) for c in row) + " |" for row in rows),
        "",
    ]


def _ms(d: dict | None) -> float | None:
    return None if d is None else 1e3 * d["median_s"]


def _mib(n: int | None) -> float | None:
    return None if n is None else n / 2**20


def _end_load(meta: dict) -> str:
    return f", {meta['load_average_at_end'][0]:.1f} at the end" if "load_average_at_end" in meta else ""


def markdown(results: dict) -> str:
    meta = results["meta"]
    out = [
        f"# miras bench ({meta['date']})",
        "",
        f"`{meta['command']}` on {meta['device_name']} ({meta['cpu_count']} cores, load average "
        f"{meta['load_average_at_start'][0]:.1f} at the start{_end_load(meta)}), torch {meta['torch']}, torch threads: {meta['threads']}, dtype {meta['dtype']}{' with TF32 matmuls' if meta.get('tf32') else ''}; "
        f"B={meta['shape']['batch']}, H={meta['shape']['heads']}, K=V={meta['shape']['head_dim']}. Times are medians of "
        f"{meta['repeats']} round-robin samples after {meta['warmup']} warm-up call(s) ({meta['slow_repeats']} for the slow references). "
        f"Peak memory: {meta['memory_method']}.",
        "",
    ]
    if "correctness" in results:
        out += ["## Correctness (float64, chunk vs token loop, output and every gradient)", ""]
        out += _table(
            ["preset", "T", "chunk", "max rel err", "tol"],
            [
                [r["preset"], r["T"], r["chunk_size"], f"{r['max_rel_err']:.1e}", f"{r['tol']:g}"]
                for r in results["correctness"]
            ],
        )
    if results.get("grid"):
        out += [
            "## Op time and peak memory",
            "",
            "fwd is inference (no_grad); fwd+bwd computes the gradient of every input. "
            "SDPA: causal `scaled_dot_product_attention`, same B, H, head dim.",
            "",
        ]
        out += _table(
            [
                "preset",
                "chunk",
                "T",
                "fwd ms",
                "fwd+bwd ms",
                "fwd+bwd tok/s",
                "peak fwd MiB",
                "peak fwd+bwd MiB",
                "RSS rise fwd+bwd MiB",
                "SDPA fwd+bwd ms",
                "SDPA peak fwd+bwd MiB",
                "SDPA time / op time",
            ],
            [
                [
                    r["preset"],
                    r["chunk_size"],
                    r["T"],
                    _ms(r["fwd"]),
                    _ms(r["fwdbwd"]),
                    r["fwdbwd"]["tokens_per_s"],
                    _mib(r["fwd"]["peak_bytes"]),
                    _mib(r["fwdbwd"]["peak_bytes"]),
                    _mib(r["fwdbwd"].get("rss_rise_bytes")),
                    _ms(r.get("sdpa_fwdbwd")),
                    _mib(r.get("sdpa_fwdbwd", {}).get("peak_bytes")),
                    r["sdpa_fwdbwd"]["median_s"] / r["fwdbwd"]["median_s"] if "sdpa_fwdbwd" in r else None,
                ]
                for r in results["grid"]
            ],
        )
    if results.get("crossover"):
        out += [
            "## Crossover with causal SDPA (fwd+bwd)",
            "",
            "From T: the smallest grid T from which the op is faster at every larger grid T. Crossing: interpolated "
            "between that T and the grid T below it, or, when the op is slower at every grid T, extrapolated from the "
            "largest T with op ∝ T and SDPA ∝ T² (labelled).",
            "",
        ]
        out += _table(
            ["preset", "chunk", "op faster from T", "crossing T", "how", "op faster at T", "grid up to T"],
            [
                [
                    r["preset"],
                    r["chunk_size"],
                    r["crossover_T"],
                    r["crossing_T"],
                    r["how"],
                    ", ".join(map(str, r["faster_at_T"])) or "none",
                    r["max_T"],
                ]
                for r in results["crossover"]
            ],
        )
    if "naive" in results:
        r = results["naive"]
        out += ["## Chunk vs token loop (`naive_recurrent_miras`)", ""]
        out += _table(
            [
                "preset",
                "T",
                "chunk",
                "chunk fwd+bwd ms",
                "compile_steps fwd+bwd ms",
                "naive fwd+bwd ms",
                "speed-up",
                "speed-up (compile_steps)",
            ],
            [
                [
                    r["preset"],
                    r["T"],
                    r["chunk_size"],
                    _ms(r["chunk"]),
                    _ms(r.get("chunk_compile_steps")),
                    _ms(r["naive"]),
                    r["speedup"],
                    r.get("speedup_compile_steps"),
                ]
            ],
        )
    if "linear" in results:
        r = results["linear"]
        out += [
            f"## Linear-memory presets vs the chunked gated delta rule, and the matmul roof (T={r['T']}, chunk {r['chunk_size']})",
            "",
            f"fla: {r['fla']}. `fla_naive_chunk` is fla's pure-PyTorch `naive_chunk_gated_delta_rule` (the reference of "
            "the gated_deltanet comparison when fla is installed); `gdn_standin` our hand-written chunked gated delta rule "
            "(`miras/bench/baselines.py`, a triangular solve where fla substitutes row by row); both checked against a "
            "token loop. The same function: gated_deltanet and deltanet take per-token gradients (the exact delta "
            "rule), and gated_deltanet was checked against the gated delta rule's token loop before timing; "
            "`gated_deltanet/per_chunk` takes a chunk's gradients at its anchor (mini-batch GD), a different, "
            "cheaper function; mamba2 (retnet's op) and linear_attention have no delta correction. FLOPs: matmuls "
            "only, bwd = 2x fwd (`op_matmul_flops`). float32 matmul "
            f"{'x'.join(map(str, r['matmul']['shape']))}, same threads, same round-robin: {r['matmul']['gflops']:.1f} GFLOP/s.",
            "",
        ]
        out += _table(
            [
                "name",
                "fwd+bwd ms",
                "tok/s",
                "x fla tok/s",
                "x stand-in tok/s",
                "GFLOP (formula)",
                "GFLOP (counted)",
                "GFLOP/s",
                "% of matmul",
            ],
            [
                [
                    x["name"],
                    _ms(x),
                    x["tokens_per_s"],
                    x["speedup_vs_fla"],
                    x["speedup_vs_standin"],
                    x["flops_fwdbwd"] / 1e9,
                    x["flops_fwdbwd_counted"] / 1e9 if "flops_fwdbwd_counted" in x else None,
                    x["gflops"],
                    100 * x["fraction_of_matmul"],
                ]
                for x in r["rows"]
            ],
        )
    if "titans" in results:
        r = results["titans"]
        out += ["## MLP presets vs titans-pytorch `NeuralMemory`", ""]
        if "skipped" in r:
            out += [r["skipped"], ""]
        else:
            out += [
                f"x [B={r['B']}, T={r['T']}, dim={r['dim']}], {r['heads']} heads, chunk {r['chunk_size']}, fwd+bwd to x and "
                f"every parameter. Ours: {r['ours']}, with NeuralMemory's memory: the same heads and head dim, a 2-layer "
                "MLP with expansion 4, GELU, LayerNorm and residual (memory params: NeuralMemory's also count a "
                "learnable LayerNorm gain; its params also count the template MLP its per-head weights are copied "
                "from, which gets no gradient). `titans_pytorch` is NeuralMemory with its defaults (batch_size=None: every "
                "chunk's gradient at the initial weights, scanned), the reference of the ratios; `batch_size=64` updates "
                "the weights after every chunk, like our mini-batch GD. Still different: NeuralMemory retrieves once per "
                "chunk with the last finished chunk's weights, ours reads every token's own W_t; its momentum and decay "
                "gates are per chunk; each preset has its own bias and retention (titans is the closest). The first "
                "configuration is NeuralMemory's default (head dim = dim, ~172 tok/s on 2 cores); the second is at the "
                "op's head dim 64. The matmul roof: "
                "our fwd+bwd's matmul FLOPs (torch's FlopCounterMode) all at the float32 matmul rate timed in the same "
                "round-robin, nothing else: the highest ratio any implementation of the same computation could reach on "
                "this machine. `+compile_steps`: chunk_miras(compile_steps=True).",
                "",
            ]
            for config in r["configs"]:
                out += [
                    f"**{config['label']}**, head dim {config['head_dim']}"
                    + (" (NeuralMemory's default)" if config["default_head_dim"] else ""),
                    "",
                ]
                out += _table(
                    [
                        "name",
                        "params",
                        "memory params",
                        "fwd+bwd ms",
                        "tok/s",
                        f"x {config['reference']}",
                        "GFLOP fwd+bwd (counted)",
                        "% of matmul",
                        f"x {config['reference']} at the matmul roof",
                    ],
                    [
                        [
                            x["name"],
                            x["params"],
                            x["memory_params"],
                            _ms(x),
                            x["tokens_per_s"],
                            x["speedup_vs_titans_pytorch"],
                            x["flops_fwdbwd_counted"] / 1e9 if "flops_fwdbwd_counted" in x else None,
                            100 * x["fraction_of_matmul"] if "fraction_of_matmul" in x else None,
                            x.get("roof_speedup_vs_titans_pytorch"),
                        ]
                        for x in config["rows"]
                    ],
                )
    if results.get("memory_scaling"):
        lens = list(results["memory_scaling"][0]["peak_bytes"])
        out += [
            "## Peak training memory of the op (fwd+bwd) vs T",
            "",
            "Peak: tensor memory (see the method above). RSS rise: the process's resident set (CPU only; glibc keeps "
            "freed memory and fragments, so it is larger).",
            "",
        ]
        out += _table(
            [
                "preset",
                "chunk",
                *[f"peak T={T} MiB" for T in lens],
                "ratio",
                *[f"RSS rise T={T} MiB" for T in lens],
                "RSS ratio",
            ],
            [
                [
                    r["preset"],
                    r["chunk_size"],
                    *map(_mib, r["peak_bytes"].values()),
                    r["ratio"],
                    *map(_mib, r.get("rss_rise_bytes", {T: None for T in lens}).values()),
                    r.get("rss_ratio"),
                ]
                for r in results["memory_scaling"]
            ],
        )
    if results.get("compile"):
        out += [
            "## torch.compile of the op",
            "",
            "Graphs and breaks: `torch._dynamo.explain` of the forward. With `--compile`: "
            "`torch.compile(chunk_miras, fullgraph=True)` (fullgraph=False if that fails), checked against the eager op "
            "first (float64, T=37, output and every gradient), then its first fwd+bwd call (compilation included), "
            "then eager vs compiled fwd+bwd side by side.",
            "",
        ]
        out += _table(
            [
                "preset",
                "T",
                "graphs",
                "breaks",
                "fullgraph",
                "first call s",
                "eager ms",
                "compiled ms",
                "speed-up",
                "first break / error",
            ],
            [
                [
                    r["preset"],
                    r["T"],
                    r["graph_count"],
                    r["graph_break_count"],
                    r.get("fullgraph", "not compiled"),
                    r.get(f"first_call_s_fullgraph_{r.get('fullgraph')}"),
                    _ms(r.get("eager")),
                    _ms(r.get("compiled")),
                    r.get("speedup"),
                    (r["break_reasons"][:1] or [r.get("error_fullgraph_True", "")])[0][:120]
                    .replace("|", "/")
                    .replace("\n", " "),
                ]
                for r in results["compile"]
            ],
        )
    out += _model_markdown(results.get("model", {}))
    if results.get("fidelity"):
        out += _fidelity_markdown(results["fidelity"])
    return "\n".join(out)


def _model_markdown(model: dict) -> list[str]:
    if not model:
        return []
    out = ["## Model level", ""]
    train = model.get("train", {})
    if train.get("rows"):
        out += [f"Training step (fwd+bwd+AdamW), {train['config']}.", ""]
        out += _table(
            ["model", "params", "T", "batch", "step ms", "tokens/s"],
            [[r["model"], r["params"], r["T"], r["batch"], _ms(r), r["tokens_per_s"]] for r in train["rows"]],
        )
    decode = model.get("decode", {})
    if decode.get("rows"):
        out += [f"Decode latency per token after a prompt of the given length ({decode['how']}).", ""]
        out += _table(["model", "context", "ms / token"], [[r["model"], r["context"], _ms(r)] for r in decode["rows"]])
    return out


def plot_time_vs_T(results: dict, path: Path) -> bool:
    """fwd+bwd time against T (log-log) for each preset and chunk size of the grid, and causal SDPA. False when
    the grid has fewer than two lengths."""
    grid = results.get("grid", [])
    if len({r["T"] for r in grid}) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in dict.fromkeys((r["preset"], r["chunk_size"]) for r in grid):
        pts = sorted((r["T"], 1e3 * r["fwdbwd"]["median_s"]) for r in grid if (r["preset"], r["chunk_size"]) == key)
        ax.plot(*zip(*pts), marker="o", label=f"{key[0]} (chunk {key[1]})")
    sdpa: dict[int, float] = {}
    for r in grid:  # one SDPA curve: the first measurement at each T
        if "sdpa_fwdbwd" in r:
            sdpa.setdefault(r["T"], 1e3 * r["sdpa_fwdbwd"]["median_s"])
    if sdpa:
        ax.plot(*zip(*sorted(sdpa.items())), marker="s", linestyle="--", color="black", label="causal SDPA")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="T (tokens per sequence)",
        ylabel="fwd+bwd time (ms)",
        title=f"op fwd+bwd, B={results['meta']['shape']['batch']}, H={results['meta']['shape']['heads']}, "
        f"K=V={results['meta']['shape']['head_dim']}, {results['meta']['device_name']}",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return True


def write_all(results: dict, out_dir: Path) -> list[Path]:
    """bench.json, bench.md and (with at least two lengths in the grid) time_vs_T.png; returns the paths written."""
    paths = [out_dir / "bench.json", out_dir / "bench.md"]
    atomic_write(paths[0], (json.dumps(results, indent=2, default=str) + "\n").encode())
    atomic_write(paths[1], markdown(results).encode())
    if plot_time_vs_T(results, out_dir / "time_vs_T.png"):
        paths.append(out_dir / "time_vs_T.png")
    return paths


def _fidelity_markdown(section: dict) -> list[str]:
    """bench.md's fidelity section (miras/bench/fidelity.py)."""
    out = [
        f"## Fidelity: distance from the per-token rule (tiny layer at init, T={section['seq_len']}, "
        f"B={section['batch']}, float64)",
        "",
        "‖o_C − o_1‖ / ‖o_1‖: the op at chunk C against the same op at chunk 1 (every token's gradient at the state "
        "the previous token left). `gradients=per_token` is exact at any chunk size; `per_chunk` is mini-batch GD "
        "inside a chunk. For the non-linear retentions both in-chunk step rules are shown; `raw` is the paper's "
        "literal parallel scheme, `default` marks the preset's own.",
        "",
    ]
    header = ["preset", "gradients", "inchunk_steps", "default", *(f"chunk {c}" for c in section["chunk_sizes"])]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for r in section["rows"]:
        cells = [
            r["preset"],
            r["gradients"],
            r["inchunk_steps"] or "—",
            "yes" if r["default"] else "",
            *(f"{100 * r[f'chunk_{c}']:.3g}%" for c in section["chunk_sizes"]),
        ]
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "Cost of the scaled in-chunk steps (fwd+bwd, side by side):",
        "",
        "| preset | T | raw ms | scaled ms | scaled / raw |",
        "|---|---|---|---|---|",
    ]
    for s in section["speed"]:
        out.append(
            f"| {s['preset']} | {s['T']} | {1e3 * s['raw']['median_s']:.1f} | {1e3 * s['scaled']['median_s']:.1f} | "
            f"{s['scaled_over_raw']:.3f} |"
        )
    return out + [""]
