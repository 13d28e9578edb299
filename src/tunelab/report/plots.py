"""The report's plots, one function each: the PNG, or None where the runs have no data for it.

matplotlib is imported inside the functions, with the Agg backend (no display needed): the
``tunelab compare`` process imports this package and must stay light.
"""

from __future__ import annotations

import io
from typing import Any

from tunelab.report.document import Image
from tunelab.report.inference import served_ms
from tunelab.report.labels import place_labels
from tunelab.report.rows import Pareto, Results, Row

Colors = dict[str, Any]
"""Row name -> its matplotlib color, the same in every plot."""


def make_plots(results: Results, trials: dict[str, list[dict[str, Any]]] | None = None) -> list[Image]:
    """Every plot the runs have data for, in the order the report shows them; ``trials``: a
    tuned comparison's trials by method (tunelab.report.tuning)."""
    rows, metric = results.rows, results.pareto.metric
    plt = pyplot()
    colors = {row.name: plt.get_cmap("tab10")(i % 10) for i, row in enumerate(rows)}
    for name in trials or {}:
        colors.setdefault(name, plt.get_cmap("tab10")(len(colors) % 10))
    made = [
        ("validation_loss.png", "Validation loss per method", validation_loss(rows, colors)),
        ("metric.png", f"Validation (light) and test {metric} per method" + error_bars_said(rows, f"test_{metric}"),
         metric_bars(rows, metric, colors)),
        ("pareto.png", pareto_caption(rows, metric), pareto(rows, results.pareto, colors)),
        ("time_memory.png", "Train time and peak memory", time_memory(rows, colors)),
        ("memory_breakdown.png", "Memory breakdown per method", memory_breakdown(rows)),
        ("inference.png", f"Test {metric} against inference latency", inference_latency(rows, metric, colors)),
        ("forgetting.png", f"Test {metric} against the change in general-text perplexity",
         forgetting(rows, metric, colors)),
    ]
    made += [(plot.file, plot.caption, scatter(rows, plot, colors)) for plot in task_scatters(rows)]
    made.append(("tuning.png", "Validation objective of every trial against its learning rate (chosen: star; pruned: "
                 "hollow, at its last validation)", tuning_curves(trials or {}, colors)))
    return [Image(file, title, png) for file, title, png in made if png is not None]


def task_scatters(rows: list[Row]) -> list:
    """The plots the rows' tasks declare (tunelab.tasks.metrics.Scatter), each once."""
    from tunelab.tasks import TASKS

    found = {}
    for row in rows:
        task = row.runs[0].summary.task
        plot = TASKS.options(task).scatter if task in TASKS.names() else None
        if plot is not None:
            found.setdefault(plot.file, plot)
    return list(found.values())


def validation_loss(rows: list[Row], colors: Colors) -> bytes | None:
    """Validation loss against optimizer steps, every run of every method in one figure."""
    curved = [row for row in rows if any(r.validation for r in row.runs)]
    if not curved:
        return None
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    for row in curved:
        for i, run in enumerate(row.runs):
            records = [rec for rec in run.validation if "loss" in rec]
            ax.plot([rec["step"] for rec in records], [rec["loss"] for rec in records], marker="o",
                    color=colors[row.name], label=row.name if i == 0 else None,  # one legend entry per method
                    alpha=1.0 if len(row.runs) == 1 else 0.6)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation loss")
    ax.set_title("Validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return png(fig)


def pareto(rows: list[Row], front: Pareto, colors: Colors) -> bytes | None:
    """The primary test metric against trainable parameters (log x), the Pareto front starred."""
    if not front.points:
        return None
    import matplotlib.ticker

    metric, on_front = front.metric, set(front.front)
    by_name = {row.name: row for row in rows}
    # Taller with more points, so that the labels of a crowd find room beside it.
    fig, ax = pyplot().subplots(figsize=(7.5, max(4.5, 1.5 + 0.22 * len(front.points))))
    for name, params, score in front.points:
        x = max(params, 1)  # zero-shot rows train nothing; log axes start at 1
        ax.errorbar(x, score, yerr=error_bar(by_name[name], f"test_{metric}", score),
                    fmt="*" if name in on_front else "o", markersize=13 if name in on_front else 7,
                    color=colors[name], capsize=3)
    ordered = [p for p in sorted(front.points, key=lambda p: p[1]) if p[0] in on_front]
    ax.step([max(p[1], 1) for p in ordered], [p[2] for p in ordered], where="post", color="gray",
            linestyle="--", linewidth=1, label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: labels stay readable
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Test {metric} against trainable parameters (stars: Pareto front)")
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.12, y=0.1)  # room for the labels of the outermost points
    label_points(ax, [(max(params, 1), score, name + (" (0 trained)" if params == 0 else ""))
                      for name, params, score in front.points])
    ax.legend(fontsize=8, loc="best")
    return png(fig)


def error_bar(row: Row, key: str, value: float) -> list[list[float]]:
    """Below and above ``value``: the 95 % Wilson interval of a proportion, else one standard
    deviation across seeds, else none."""
    interval = row.interval(key)
    if interval:
        return [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]
    std = row.std(key) or 0.0
    return [[std], [std]]


def pareto_caption(rows: list[Row], metric: str) -> str:
    """The Pareto plot's title in the report, saying what its error bars are."""
    return f"Test {metric} against trainable parameters" + error_bars_said(rows, f"test_{metric}")


def error_bars_said(rows: list[Row], key: str) -> str:
    """What :func:`error_bar` drew for ``key``, as the end of a caption ("" where it drew none)."""
    bars = []
    if any(row.interval(key) for row in rows):
        bars.append("95 % Wilson interval over the test examples (at the seeds' mean where there are several)")
    if any(row.interval(key) is None and row.std(key) for row in rows):
        bars.append("± one standard deviation across seeds")
    return f"; bars: {' or '.join(bars)}" if bars else ""


def metric_bars(rows: list[Row], metric: str, colors: Colors) -> bytes | None:
    """The primary metric per method, validation (light) above test (with its error bar): the
    course's bar plot of dev and test accuracy, for methods or, over two comparisons, models."""
    scored = [row for row in rows if row.mean(f"test_{metric}") is not None
              or row.mean(f"validation_{metric}") is not None]
    if not scored:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(scored) + 1.5))
    height = 0.38
    for i, row in enumerate(scored):
        validation, test = row.mean(f"validation_{metric}"), row.mean(f"test_{metric}")
        if validation is not None:
            ax.barh(i - height / 2, validation, height, color=colors[row.name], alpha=0.4)
        if test is not None:
            ax.barh(i + height / 2, test, height, color=colors[row.name], capsize=3,
                    xerr=error_bar(row, f"test_{metric}", test))
    ax.set_yticks(range(len(scored)), [row.name for row in scored])
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.set_title(f"Validation (light) and test {metric} per method")
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def label_points(ax, labelled: list[tuple[float, float, str]]) -> None:
    """Each (x, y, text) labelled beside its point, no two labels overlapping (see labels.py),
    with a thin leader line where a label had to move away from its point."""
    ax.set_xlim(ax.get_xlim())  # fixed now: the points become axes coordinates below
    ax.set_ylim(ax.get_ylim())
    to_axes = ax.transData + ax.transAxes.inverted()
    points = [tuple(to_axes.transform((x, y))) for x, y, _ in labelled]
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    # Under the points and bars (zorder 2), so that no label hides data; over the grid, on a light backdrop.
    backdrop = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.75}
    texts = [ax.text(0, 0, text, transform=ax.transAxes, fontsize=8, va="center", ha="left", bbox=backdrop,
                     zorder=1.5) for *_, text in labelled]
    extents = [t.get_window_extent(renderer) for t in texts]
    sizes = [(e.width / frame.width, e.height / frame.height) for e in extents]
    for text, (x, y), box in zip(texts, points, place_labels(points, sizes)):
        text.set_position((box.x0, box.centre_y))
        if abs(box.centre_y - y) > box.height / 2:
            ax.annotate("", xy=(x, y), xycoords="axes fraction", textcoords="axes fraction",
                        xytext=(box.x0 if box.x0 > x else box.x1, box.centre_y),
                        arrowprops={"arrowstyle": "-", "linewidth": 0.5, "color": "gray"})


def time_memory(rows: list[Row], colors: Colors) -> bytes | None:
    """Train time and peak memory per method, side by side as horizontal bars."""
    timed = [row for row in rows if row.mean("train_time_s") is not None or row.mean("peak_memory_bytes") is not None]
    if not timed:
        return None
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 0.45 * len(timed) + 1.5))
    labels = [row.name for row in timed]
    for ax, key, label, scale in [(axes[0], "train_time_s", "train time (s)", 1.0),
                                  (axes[1], "peak_memory_bytes", "peak memory (MB)", 1e6)]:
        values = [(row.mean(key) or 0) / scale for row in timed]
        errors = [(row.std(key) or 0) / scale for row in timed]
        ax.barh(labels, values, xerr=errors, color=[colors[n] for n in labels], capsize=3)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
    axes[1].set_yticklabels([])  # the left panel names the methods for both
    fig.suptitle("Train time and peak memory")
    return png(fig)


def inference_latency(rows: list[Row], metric: str, colors: dict[str, Any]) -> bytes | None:
    """The primary test metric against batch-1 latency: merged (filled) and, where that differs,
    unmerged (hollow, joined by a line)."""
    points = [(row, *served_ms(row), row.mean(f"test_{metric}")) for row in rows]
    points = [p for p in points if p[1] is not None and p[3] is not None]
    if len(points) < 2:
        return None
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    for row, ms, merged, score in points:
        ax.plot(ms, score, "o", markersize=8, color=colors[row.name])
        unmerged = row.mean("inference_batch1_ms")
        if merged and unmerged is not None:
            ax.plot([ms, unmerged], [score, score], "-", color=colors[row.name], linewidth=1)
            ax.plot(unmerged, score, "o", markersize=8, markerfacecolor="none", color=colors[row.name])
    ax.set_xlabel("ms per example at batch 1 (hollow: unmerged)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Test {metric} against inference latency")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.1)
    label_points(ax, [(ms, score, row.name) for row, ms, _, score in points])
    return png(fig)


def forgetting(rows: list[Row], metric: str, colors: Colors) -> bytes | None:
    """The primary test metric against how much training raised the perplexity of general text."""
    points = [(row.name, row.mean("forgetting_increase"), row.mean(f"test_{metric}")) for row in rows]
    points = [p for p in points if p[1] is not None and p[2] is not None]
    if len(points) < 2:
        return None
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    for name, increase, score in points:
        ax.plot(100 * increase, score, "o", markersize=8, color=colors[name])
    ax.axvline(0, color="gray", linewidth=1, linestyle="--")
    ax.set_xlabel("change in general-text perplexity after training (%)")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Test {metric} against forgetting")
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.1)
    label_points(ax, [(100 * increase, score, name) for name, increase, score in points])
    return png(fig)


MEMORY_PARTS = [("memory_weights_bytes", "weights", "#4c72b0"),
                ("memory_optimizer_bytes", "optimizer state", "#dd8452"),
                ("memory_activations_bytes", "activations", "#55a868"),
                ("memory_gradients_bytes", "gradients", "#c44e52")]
"""The stacked parts of one step's memory (column key, label, color), bottom first."""


def memory_breakdown(rows: list[Row]) -> bytes | None:
    """Memory of one step per method: weights, optimizer state, activations, and in backward
    the gradients too; one stacked bar for the forward peak and one for the backward peak."""
    profiled = [row for row in rows if row.mean("memory_weights_bytes") is not None]
    if not profiled:
        return None
    labels, stacks = [], []
    for row in profiled:
        for phase in ("forward", "backward"):
            labels.append(f"{row.name} · {phase}")
            # Gradients exist only once backward has run.
            stacks.append([0 if phase == "forward" and key == "memory_gradients_bytes" else (row.mean(key) or 0) / 1e6
                           for key, _, _ in MEMORY_PARTS])
    fig, ax = pyplot().subplots(figsize=(8, 0.32 * len(labels) + 1.5))
    left = [0.0] * len(labels)
    for j, (_, part, color) in enumerate(MEMORY_PARTS):
        widths = [stack[j] for stack in stacks]
        ax.barh(labels, widths, left=left, color=color, label=part)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("MB (one training step, counted bytes)")
    ax.set_title("Memory breakdown: forward and backward peak per method")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    return png(fig)


def scatter(rows: list[Row], plot, colors: Colors) -> bytes | None:
    """Two columns against each other, one point per method (e.g. DPO's reward-KL frontier, figure 2)."""
    points = [(row.name, row.mean(plot.x), row.mean(plot.y)) for row in rows]
    points = [p for p in points if p[1] is not None and p[2] is not None]
    if not points:
        return None
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    for name, x, y in points:
        ax.plot(x, y, "o", markersize=8, color=colors[name])
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(plot.x_label)
    ax.set_ylabel(plot.y_label)
    ax.set_title(plot.title)
    ax.grid(alpha=0.3)
    return png(fig)


def tuning_curves(trials: dict[str, list[dict[str, Any]]], colors: Colors) -> bytes | None:
    """Each method's trials: the validation objective against the learning rate (log x)."""
    from tunelab.tuning import chosen

    tuned = {entry: records for entry, records in trials.items() if any("train.lr" in r["params"] for r in records)}
    if not tuned:
        return None
    fig, ax = pyplot().subplots(figsize=(7.5, 4.5))
    for entry, records in tuned.items():
        done = sorted((r["params"]["train.lr"], r["value"]) for r in records if r["state"] == "complete")
        if done:
            ax.plot(*zip(*done), marker="o", color=colors[entry], label=entry)
        pruned = [(r["params"]["train.lr"], r["last_value"]) for r in records
                  if r["state"] == "pruned" and r.get("last_value") is not None]
        if pruned:
            ax.plot(*zip(*pruned), "o", markerfacecolor="none", color=colors[entry])
        best = chosen(records)
        if best is not None:
            ax.plot(best["params"]["train.lr"], best["value"], "*", markersize=14, color=colors[entry])
    first = next(iter(tuned.values()))[0]
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"validation {first['metric']}")
    ax.set_title("Tuning: every trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return png(fig)


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buffer.getvalue()
