"""The comparison report: its numbers are the runs' numbers, cell by cell."""

from __future__ import annotations

import csv
import json
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from conftest import cli_args
from tunelab import cli
from tunelab.report import pareto_front

# Report header -> (summary key, unit in bytes or 1). Written here, apart from report.py, so
# a column that shows the wrong number or the wrong unit fails.
HEADERS = {
    "test accuracy": ("test_accuracy", 1), "test loss": ("test_loss", 1), "test invalid_rate": ("test_invalid_rate", 1),
    "test perplexity": ("test_perplexity", 1), "val. accuracy": ("validation_accuracy", 1),
    "val. perplexity": ("validation_perplexity", 1), "eval loss": ("eval_loss", 1),
    "trainable": ("trainable_params", 1), "added": ("added_params", 1), "total": ("total_params", 1),
    "trainable %": ("trainable_percent", 1), "checkpoint (MB)": ("checkpoint_bytes", 1e6),
    "train time (s)": ("train_time_s", 1), "wall time (s)": ("wall_time_s", 1), "tokens/s": ("tokens_per_second", 1),
    "peak memory (MB)": ("peak_memory_bytes", 1e6), "best epoch": ("best_epoch", 1),
    "best step": ("best_step", 1), "steps": ("steps", 1),
    "weights (MB)": ("memory.weights_bytes", 1e6), "gradients (MB)": ("memory.gradients_bytes", 1e6),
    "optimizer state (MB)": ("memory.optimizer_bytes", 1e6), "activations (MB)": ("memory.activations_bytes", 1e6),
    "forward peak (MB)": ("memory.forward_peak_bytes", 1e6), "backward peak (MB)": ("memory.backward_peak_bytes", 1e6),
}


def summary_value(summary: dict, key: str):
    if key.startswith("memory."):
        return summary["memory"][key.split(".", 1)[1]]
    if key.startswith("test_") and isinstance(summary.get("test"), dict) and key[5:] in summary["test"]:
        return summary["test"][key[5:]]
    return summary[key]


def csv_key(column: str) -> str:
    return column.replace("memory_", "memory.", 1) if column.startswith("memory_") else column


def markdown_tables(text: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Section title -> (headers, rows) of the first table under each `## ` heading."""
    tables = {}
    for section in text.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        if lines:
            split = lambda line: [c.strip() for c in line.strip().strip("|").split(" | ")]  # noqa: E731
            tables[title.strip()] = (split(lines[0]), [split(line) for line in lines[2:]])
    return tables


def check_cell(text: str, value: float, scale: float) -> None:
    """A shown number equals the run's value to the precision it is shown with."""
    number = text.replace(",", "")
    decimals = len(number.split(".")[1]) if "." in number else 0
    tolerance = 0.5 * 10 ** -decimals * scale * (1 + 1e-9)
    assert abs(float(number) * scale - value) <= tolerance, (text, value)


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def html_tables(text: str) -> list[list[list[str]]]:
    parser = _Cells()
    parser.feed(text)
    return parser.tables


def test_every_cell_equals_the_runs_summaries(tiny_run_config, tmp_path, capsys):
    comparison = tmp_path / "comparison"
    summaries = {}
    for name, method in [("head", {"name": "head"}), ("lora", {"name": "lora", "r": 2, "alpha": 4})]:
        cfg = dict(tiny_run_config, method=method, output={"dir": str(comparison / name)},
                   train={**tiny_run_config["train"], "epochs": 2, "eval_every_steps": 3})
        assert cli.main(["train", *cli_args(cfg)]) == 0
        summaries[name] = json.loads((comparison / name / "summary.json").read_text())
    capsys.readouterr()
    assert cli.main(["report", str(comparison)]) == 0
    assert "report.html" in capsys.readouterr().out

    # results.csv: every value exactly as in summary.json
    with open(comparison / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["head", "lora"]
    numeric = [c for c in rows[0] if c not in ("method", "model", "data", "task", "primary_metric", "runs", "seeds")]
    assert {"test_accuracy", "test_loss", "eval_loss", "trainable_params", "total_params", "checkpoint_bytes",
            "train_time_s", "peak_memory_bytes", "memory_activations_bytes"} <= set(numeric)
    for row in rows:
        summary = summaries[row["method"]]
        assert row["model"] == summary["model"] and row["primary_metric"] == "accuracy" and row["runs"] == "1"
        for column in numeric:
            expected = summary_value(summary, csv_key(column))
            assert float(row[column]) == expected, (row["method"], column)
            if isinstance(expected, int):
                assert row[column] == str(expected)

    # report.md: every number equals the summary to the shown precision
    md = (comparison / "report.md").read_text()
    tables = markdown_tables(md)
    checked = 0
    for title in ("Results", "Memory of one training step"):
        headers, body = tables[title]
        assert [r[0] for r in body] == ["head", "lora"]
        for r in body:
            for header, text in zip(headers[1:], r[1:]):
                key, scale = HEADERS[header]
                check_cell(text, summary_value(summaries[r[0]], key), scale)
                checked += 1
    assert checked >= 2 * 20
    for name in ("validation_loss.png", "pareto.png", "time_memory.png", "memory_breakdown.png"):
        assert (comparison / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md

    # report.html: the same cells as report.md, images inline, nothing fetched from elsewhere
    page = (comparison / "report.html").read_text()
    results, memory = html_tables(page)[:2]
    assert results == [tables["Results"][0]] + tables["Results"][1]
    assert memory == [tables["Memory of one training step"][0]] + tables["Memory of one training step"][1]
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert summaries["head"]["git_hash"] in page and summaries["head"]["versions"]["torch"] in page


def fake_run(folder: Path, method: str, seed: int = 0, validation: bool = True, **summary) -> Path:
    """A finished run directory with a chosen summary.json (for report logic apart from training)."""
    folder.mkdir(parents=True)
    base = {"method": method, "model": "m", "data": "d", "task": "classification", "test_accuracy": 0.8,
            "test_loss": 0.5, "eval_loss": 0.45, "validation_accuracy": 0.79, "trainable_params": 1000,
            "added_params": 10, "total_params": 100_000, "trainable_percent": 1.0, "checkpoint_bytes": 4000,
            "train_time_s": 12.5, "wall_time_s": 20.0, "tokens_per_second": 900.0, "peak_memory_bytes": 5e8,
            "peak_memory_kind": "cpu_peak_rss", "best_step": 10, "best_epoch": 1.0, "steps": 10, "device": "cpu",
            "versions": {"torch": "2.13.0"}, "git_hash": "abc",
            "memory": {"weights_bytes": 400_000, "gradients_bytes": 4000, "optimizer_bytes": 8000,
                       "activations_bytes": 100_000, "forward_peak_bytes": 508_000, "backward_peak_bytes": 512_000}}
    base.update(summary)
    (folder / "summary.json").write_text(json.dumps({k: v for k, v in base.items() if v is not None}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}, "train": {"seed": seed}}))
    if validation:
        records = [{"split": "validation", "step": s, "loss": 0.7 - 0.01 * s, "accuracy": 0.5} for s in (5, 10)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_new_summary_format_every_test_metric_and_a_none_row(tmp_path):
    comparison = tmp_path / "c"
    fake_run(comparison / "instruct-lora", "lora", primary_metric="accuracy", higher_is_better=True,
             test={"accuracy": 0.9, "loss": 0.3, "invalid_rate": 0.02, "examples": 50}, test_accuracy=0.9, test_loss=0.3)
    # zero-shot: nothing trained, no curve, no memory breakdown, no train time
    fake_run(comparison / "none", "none", validation=False, trainable_params=0, added_params=0, trainable_percent=0.0,
             checkpoint_bytes=None, train_time_s=None, tokens_per_second=None, memory=None, best_epoch=None,
             test={"accuracy": 0.6, "invalid_rate": 0.3}, test_accuracy=0.6, test_loss=None, eval_loss=None)
    assert cli.main(["report", str(comparison)]) == 0
    rows = {r["method"]: r for r in read_csv(comparison / "results.csv")}
    assert float(rows["instruct-lora"]["test_invalid_rate"]) == 0.02
    assert float(rows["none"]["test_invalid_rate"]) == 0.3 and rows["none"]["train_time_s"] == ""
    assert "test_examples" not in rows["none"] and "test_rougeL" not in rows["none"]  # columns no row has: dropped
    headers, body = markdown_tables((comparison / "report.md").read_text())["Results"]
    assert headers[1:4] == ["test accuracy", "test invalid_rate", "test loss"]  # primary metric first
    none_row = dict(zip(headers, body[[r[0] for r in body].index("none")]))
    assert none_row["trainable"] == "0" and none_row["train time (s)"] == "–"
    assert (comparison / "pareto.png").is_file() and (comparison / "memory_breakdown.png").is_file()


def test_seeds_give_mean_and_sample_std(tmp_path):
    comparison = tmp_path / "c"
    accuracies = [0.80, 0.82, 0.81]
    for seed, acc in enumerate(accuracies):
        fake_run(comparison / f"lora-seed{seed}", "lora", seed=seed, test_accuracy=acc)
    fake_run(comparison / "head", "head", test_accuracy=0.7, trainable_params=10)
    assert cli.main(["report", str(comparison)]) == 0
    rows = {r["method"]: r for r in read_csv(comparison / "results.csv")}
    assert rows["lora"]["runs"] == "3" and rows["lora"]["seeds"] == "0;1;2"
    assert float(rows["lora"]["test_accuracy"]) == pytest.approx(statistics.fmean(accuracies), abs=1e-15)
    assert float(rows["lora"]["test_accuracy_std"]) == pytest.approx(statistics.stdev(accuracies), abs=1e-15)
    assert rows["head"]["test_accuracy_std"] == ""
    headers, body = markdown_tables((comparison / "report.md").read_text())["Results"]
    lora = dict(zip(headers, body[[r[0] for r in body].index("lora")]))
    assert lora["test accuracy"] == "0.8100 ± 0.0100" and lora["runs"] == "3"
    assert lora["trainable"] == "1,000"  # identical across seeds: no ± shown
    assert len(read_csv(comparison / "runs.csv")) == 4


def test_pareto_front():
    points = [("a", 10, 0.70), ("b", 100, 0.80), ("c", 1000, 0.75), ("d", 1000, 0.85), ("e", 10, 0.65)]
    assert pareto_front(points, higher_is_better=True) == ["a", "b", "d"]
    # perplexity: lower is better
    assert pareto_front([("a", 10, 30.0), ("b", 100, 20.0), ("c", 100, 25.0)], higher_is_better=False) == ["a", "b"]


def test_report_across_comparisons(tmp_path, capsys):
    fake_run(tmp_path / "one" / "lora", "lora", test_accuracy=0.8)
    fake_run(tmp_path / "two" / "lora", "lora", test_accuracy=0.7)
    assert cli.main(["report", str(tmp_path / "one"), str(tmp_path / "two")]) == 2
    assert "--output" in capsys.readouterr().err
    assert cli.main(["report", str(tmp_path / "one"), str(tmp_path / "two"), "--output", str(tmp_path / "both")]) == 0
    rows = {r["method"]: r for r in read_csv(tmp_path / "both" / "results.csv")}
    assert float(rows["one/lora"]["test_accuracy"]) == 0.8 and float(rows["two/lora"]["test_accuracy"]) == 0.7


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "no finished runs"),
    (lambda p: None, "is not a directory"),
])
def test_report_bad_input(tmp_path, capsys, make, message):
    make(tmp_path / "x")
    assert cli.main(["report", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_html_renders_in_headless_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    comparison = tmp_path / "c"
    for method, params, acc in [("head", 10, 0.7), ("lora", 1000, 0.8), ("full", 100_000, 0.85)]:
        fake_run(comparison / method, method, trainable_params=params, test_accuracy=acc)
    assert cli.main(["report", str(comparison)]) == 0
    screenshot = tmp_path / "report.png"
    with sync_playwright() as pw:
        # A fresh profile directory; Debian's chromium, never a downloaded browser.
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
            viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto((comparison / "report.html").as_uri())
            page.wait_for_load_state("load")
            rows = page.eval_on_selector_all("table.results tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
            images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    assert rows == ["full", "head", "lora"]  # without a compare.yaml, rows come in name order
    assert len(images) == 4 and all(complete and width > 0 for complete, width in images), images
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # self-contained
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
