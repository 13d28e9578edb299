"""The report's plots draw the numbers of the rows they are given: read back from the figure."""

from __future__ import annotations

import pytest

from test_write_report import fake_run
from tunelab.report import plots
from tunelab.report.collect import collect
from tunelab.report.rows import results


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions would have written, kept open instead of saved."""
    figures = []
    monkeypatch.setattr(plots, "png", lambda fig: figures.append(fig) or b"png")
    return figures


def test_the_metric_bars_over_two_comparisons_are_each_rows_validation_and_test_values(tmp_path, drawn):
    # two models' comparisons of the same methods: the course's "test/dev accuracy of two models"
    small, base = tmp_path / "compare-small", tmp_path / "compare-base"
    fake_run(small / "full", "full", accuracy=0.7, validation={"loss": 0.6, "accuracy": 0.71})
    fake_run(small / "head", "head", accuracy=0.55, validation={"loss": 0.68, "accuracy": 0.57})
    fake_run(base / "full", "full", accuracy=0.8, validation={"loss": 0.5, "accuracy": 0.78})
    runs, _, _ = collect([small, base])
    found = results(runs)
    colors = {row.name: "C0" for row in found.rows}

    assert plots.metric_bars(found.rows, "accuracy", colors) == b"png"
    ax = drawn[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["compare-small/full", "compare-small/head",
                                                            "compare-base/full"]
    widths = [round(bar.get_width(), 6) for bar in ax.patches]
    assert widths == [0.71, 0.7, 0.57, 0.55, 0.78, 0.8]  # validation then test, row by row
    # the test bar carries its 95 % Wilson interval over the 300 test examples: 0.8 -> about +-0.045
    last_test_bar = ax.containers[-1].errorbar.lines[2][0].get_segments()[0]
    low, high = last_test_bar[:, 0]
    assert low == pytest.approx(0.751, abs=0.002) and high == pytest.approx(0.843, abs=0.002)


def test_rows_without_the_metric_draw_no_bars(tmp_path, drawn):
    fake_run(tmp_path / "c" / "lora", "lora", test={"loss": 0.4}, validation={"loss": 0.4})
    runs, _, _ = collect([tmp_path / "c"])
    assert plots.metric_bars(results(runs).rows, "accuracy", {"lora": "C0"}) is None and not drawn
