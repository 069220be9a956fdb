"""The plots of ``BENCHMARKS.md``, from the harness's results: top-1 against measured latency per
workload, and the ILP's predicted fronts with and without issue 10's families."""

from __future__ import annotations

import os
from pathlib import Path

from bench.report import _LABEL, _ORDER, _label
from bench.verdict import LONG

__all__ = ["plot_fronts", "plot_workload"]


def _save(figure, png: Path) -> Path:
    """Lay out and write the figure as PNG, atomically."""
    figure.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(png.name + ".tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, png)
    return png


def plot_workload(result: dict, png: Path) -> Path:
    """Top-1 against measured latency, one panel per table, one line per method across budgets."""
    from matplotlib.backends.backend_agg import (
        FigureCanvasAgg,  # no pyplot: no global state
    )
    from matplotlib.figure import Figure

    w = result["workload"]
    figure = Figure(figsize=(5.5 * len(w["tables"]), 4.2), dpi=110)
    FigureCanvasAgg(figure)
    for i, table in enumerate(w["tables"]):
        axes = figure.add_subplot(1, len(w["tables"]), i + 1)
        for method in _ORDER:
            rows = sorted(
                (r for r in result["rows"] if r["method"] == method), key=lambda r: r["latency"][table]["median_ms"]
            )
            if not rows:
                continue
            x = [r["latency"][table]["median_ms"] for r in rows]
            y = [r["top1"] for r in rows]
            style = (
                {"marker": "*", "markersize": 14, "linestyle": "none", "color": "black"}
                if method == "teacher"
                else {"marker": "x", "linestyle": "none"}
                if method.endswith(LONG)
                else {"marker": "o"}
            )
            axes.plot(x, y, label=_LABEL[method], **style)
            for r, xi, yi in zip(rows, x, y):
                if r["budget"] != "-":
                    axes.annotate(r["budget"], (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes.set_xlabel(f"measured latency on {table} (ms, median)")
        axes.set_ylabel("test top-1 (%)")
        axes.set_title(f"{_label(result)}: {w['model']} at {w['img_size']} px, {table}")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return _save(figure, png)


def plot_fronts(result: dict, png: Path) -> Path:
    """Predicted drop against budget, with every family and without those of issue 10."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    front = result["analysis"]["fronts"]
    figure = Figure(figsize=(6.5, 4.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, drops in front["fronts"].items():
        points = [(f, d) for f, d in zip(front["factors"], drops) if d is not None]
        if points:
            style = {"linewidth": 2.5} if name in ("all", "without new") else {"linestyle": "--", "linewidth": 1}
            axes.plot(*zip(*points), marker="o", markersize=3, label=name, **style)
    axes.set_xlabel(f"budget (x the teacher's predicted latency on {result['analysis']['table']})")
    axes.set_ylabel(f"predicted drop (summed {result['analysis']['score']})")
    axes.set_title(f"{_label(result)}: ILP optimum with and without the families of issue 10")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return _save(figure, png)
