"""Moved to `miras.plots` (below the trainer, which draws a run's loss curve); this name is kept for existing
imports."""

from miras.plots import (  # noqa: F401
    plot_accuracy_vs_width,
    plot_loss_curves,
    plot_niah_heatmap,
    plot_position_loss,
)
