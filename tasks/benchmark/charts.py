"""PNG charts of benchmark scores: per-AU F1 bars and the paper's Figure 4 radar.

Figures are built with matplotlib's object API (Figure + Agg canvas), never
pyplot, so nothing global (backend, current figure) changes, even at call
time, and nothing happens at import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from models.labels import ACTION_UNITS
from tasks.benchmark.metrics import BenchmarkScores

#: Figure 4's axes (SEKE paper §4.5.1): larger is better on each, so MAE enters as 1 − MAE.
RADAR_AXES: tuple[str, ...] = ("Expression acc", "AU F1 mean", "1 − valence MAE", "1 − arousal MAE")


def radar_values(scores: BenchmarkScores) -> list[float | None]:
    """The model's values on RADAR_AXES, in [0, 1] (None where it has no score)."""
    return [
        scores.expression_accuracy,
        scores.au_f1_mean,
        None if scores.valence_mae is None else 1 - scores.valence_mae,
        None if scores.arousal_mae is None else 1 - scores.arousal_mae,
    ]


def _save(figure: Figure, path: Path | str) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(out, format="png", dpi=120)
    return out


def au_f1_chart(models: Sequence[tuple[str, BenchmarkScores]], path: Path | str) -> Path:
    """Grouped bars of positive-class F1 (%) per AU, one bar per model; writes a PNG, returns its path."""
    if not models:
        raise ValueError("au_f1_chart needs at least one (name, scores) pair")
    aus = [au for au in ACTION_UNITS if any(au in scores.au_f1 for _, scores in models)]
    figure = Figure(figsize=(max(6.0, 0.6 * len(aus) * max(1, len(models)) ** 0.5), 4.0), layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / len(models)
    for k, (name, scores) in enumerate(models):
        xs = [i - 0.4 + width * (k + 0.5) for i in range(len(aus))]
        axes.bar(xs, [100 * scores.au_f1.get(au, 0.0) for au in aus], width=width, label=name)
    axes.set_xticks(range(len(aus)), aus, rotation=45)
    axes.set_ylabel("F1, positive class (%)")
    axes.set_ylim(0, 100)
    axes.set_title("Per-AU F1 on FEAB")
    axes.legend(fontsize="small")
    return _save(figure, path)


def radar_chart(models: Sequence[tuple[str, BenchmarkScores]], path: Path | str) -> Path:
    """Figure 4-style radar over RADAR_AXES (a missing score is drawn at 0); writes a PNG."""
    if not models:
        raise ValueError("radar_chart needs at least one (name, scores) pair")
    angles = [2 * math.pi * i / len(RADAR_AXES) for i in range(len(RADAR_AXES))]
    figure = Figure(figsize=(5.5, 5.5), layout="constrained")
    axes = figure.add_subplot(projection="polar")
    for name, scores in models:
        values = [v if v is not None else 0.0 for v in radar_values(scores)]
        axes.plot([*angles, angles[0]], [*values, values[0]], label=name)
        axes.fill([*angles, angles[0]], [*values, values[0]], alpha=0.1)
    axes.set_xticks(angles, RADAR_AXES)
    axes.set_ylim(0, 1)
    axes.set_rlabel_position(360 / len(RADAR_AXES) / 2)  # between two axes, clear of their labels
    axes.set_title("FEAB (axes of the SEKE paper's Figure 4)")
    axes.legend(loc="lower right", fontsize="small", bbox_to_anchor=(1.1, -0.1))
    return _save(figure, path)
