"""Evaluation figures from plain Python data, written as PNG files.

Figures are built on matplotlib's object API with the Agg canvas, never pyplot, so plotting needs no display, keeps
no global figure state and is safe to call from training loops. Files are written atomically and durably
(miras/io_atomic.py), so a reader never sees a half-written PNG.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from miras.io_atomic import write_bytes_atomic


def plot_accuracy_vs_width(
    results: Mapping[str, Mapping[int, float]],
    path: str | os.PathLike,
    *,
    title: str = "MQAR",
    xlabel: str = "model width",
    tick_every_point: bool = True,
) -> None:
    """Zoology's MQAR figure: accuracy against model width (log2 axis), one line per model; with another `xlabel`
    (e.g. state size) the same figure against that quantity.

    results: model name -> {width (d_model), or the other quantity: accuracy in [0, 1]}. tick_every_point: a plain
    tick at every x of the points (widths), rather than the axis's own powers of two (state sizes, which differ per
    model).
    """
    fig, ax = _figure()
    for name, by_width in results.items():
        widths = sorted(by_width)
        ax.plot(widths, [by_width[w] for w in widths], marker="o", label=name)
    ax.set_xscale("log", base=2)
    if tick_every_point:
        widths = sorted({w for by_width in results.values() for w in by_width})
        ax.set_xticks(widths, [str(w) for w in widths])  # plain widths rather than powers of two
        ax.minorticks_off()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_accuracy_curves(
    panels: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]], path: str | os.PathLike, *, title: str = "MQAR"
) -> None:
    """Learning curves: accuracy against training step, one panel per key of `panels` (side by side, e.g. one per
    model width) and one line per model in each.

    panels: panel title -> model name -> [(step, accuracy in [0, 1]), ...]; empty panels are left out.
    """
    panels = {name: lines for name, lines in panels.items() if lines}
    fig = Figure(figsize=(4.0 * max(1, len(panels)), 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(panels)), sharey=True, squeeze=False)[0]
    for ax, (name, lines) in zip(axes, panels.items()):
        for model, points in lines.items():
            ax.plot(
                [s for s, _ in points], [a for _, a in points], marker="o" if len(points) < 30 else None, label=model
            )
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("accuracy")
    fig.suptitle(title)
    _save(fig, path)


def plot_niah_heatmap(
    accuracy: Mapping[tuple[int, float], float], path: str | os.PathLike, *, title: str = "needle in a haystack"
) -> None:
    """Needle depth (rows) x context length (columns) heatmap of accuracy in [0, 1], e.g. from `niah_accuracy`.

    accuracy: (context_len, depth) -> accuracy; cells missing from the mapping are left blank.
    """
    lengths = sorted({length for length, _ in accuracy})
    depths = sorted({depth for _, depth in accuracy})
    grid = [[accuracy.get((length, depth), math.nan) for length in lengths] for depth in depths]
    fig, ax = _figure()
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(length) for length in lengths])
    ax.set_yticks(range(len(depths)), [f"{depth:.0%}" for depth in depths])
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy")
    _save(fig, path)


def plot_position_loss(
    curves: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    title: str = "loss by position",
    log_x: bool = True,
) -> None:
    """Mean loss at each token position, one line per model (e.g. NLLAccumulator.position_loss().tolist()).

    curves: model name -> loss per position (NaN gaps are skipped). log_x spreads out the early positions, where
    the loss changes fastest.
    """
    fig, ax = _figure()
    for name, losses in curves.items():
        # Index i is the (i+1)-th prediction; 1-based x keeps position 0 on a log axis.
        ax.plot(range(1, len(losses) + 1), losses, label=name, linewidth=1)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_loss_curves(
    series: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike, *, title: str = "loss"
) -> None:
    """Loss against training step, one line per series, e.g. {"train": [(step, loss), ...], "val": [...]}."""
    fig, ax = _figure()
    for name, points in series.items():
        steps = [step for step, _ in points]
        ax.plot(steps, [loss for _, loss in points], marker="o" if len(points) < 30 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6.4, 4.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())
