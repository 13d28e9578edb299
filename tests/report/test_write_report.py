"""The comparison report, end to end: its numbers are the runs' numbers, cell by cell."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from conftest import cli_args
from tunelab import cli

# Report header -> (where summary.json holds the number, unit in bytes or 1). Written here, apart
# from the report package, so a column that shows the wrong number or the wrong unit fails.
HEADERS = {
    "test accuracy": ("test.accuracy", 1), "test loss": ("test.loss", 1), "test invalid_rate": ("test.invalid_rate", 1),
    "test perplexity": ("test.perplexity", 1), "val. accuracy": ("validation.accuracy", 1),
    "val. perplexity": ("validation.perplexity", 1), "eval loss": ("validation.loss", 1),
    "trainable": ("trainable_params", 1), "added": ("added_params", 1), "total": ("total_params", 1),
    "trainable %": ("trainable_percent", 1), "checkpoint (MB)": ("checkpoint_bytes", 1e6),
    "train time (s)": ("train_time_s", 1), "wall time (s)": ("wall_time_s", 1), "tokens/s": ("tokens_per_second", 1),
    "peak memory (MB)": ("peak_memory_bytes", 1e6), "best epoch": ("best_epoch", 1),
    "best step": ("best_step", 1), "steps": ("steps", 1),
    "weights (MB)": ("memory.weights_bytes", 1e6), "gradients (MB)": ("memory.gradients_bytes", 1e6),
    "optimizer state (MB)": ("memory.optimizer_bytes", 1e6), "activations (MB)": ("memory.activations_bytes", 1e6),
    "forward peak (MB)": ("memory.forward_peak_bytes", 1e6), "backward peak (MB)": ("memory.backward_peak_bytes", 1e6),
    "ms / example, batch 1": ("inference.batch1_ms", 1),
    "merged: ms / example, batch 1": ("inference.merged.batch1_ms", 1),
    "ms / example, eval batch": ("inference.batch_ms", 1),
    "merged: ms / example, eval batch": ("inference.merged.batch_ms", 1),
    "examples/s": ("inference.examples_per_s", 1),
}


def summary_value(summary: dict, path: str):
    """The number at ``path`` in summary.json: ``test.accuracy`` is ``summary["test"]["accuracy"]``."""
    value = summary
    for key in path.split("."):
        value = value[key]
    return value


def summary_path(column: str) -> str:
    """Where summary.json holds the number of a results.csv column (the column keys predate
    the nested format: ``test_accuracy``, ``eval_loss``, ``memory_weights_bytes``)."""
    if column == "eval_loss":
        return "validation.loss"
    if column.startswith("test_") and column.endswith("_before"):
        return "before." + column.removeprefix("test_").removesuffix("_before")
    if column.startswith("inference_merged_"):
        return "inference.merged." + column.removeprefix("inference_merged_")
    for split in ("test", "validation", "memory", "inference"):
        if column.startswith(split + "_"):
            return f"{split}.{column.removeprefix(split + '_')}"
    return column


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


def wilson(p: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval by its closed form, written here apart from the report package."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def check_cell(text: str, value: float, scale: float, examples: int | None = None) -> None:
    """A shown number equals the run's value to the precision it is shown with; where the
    cell also shows an interval ``[low, high]``, it is the Wilson interval over ``examples`` for
    a proportion, and for any other metric (``examples`` None) an interval around the value."""
    text, _, interval = text.partition(" [")
    if interval:
        shown = [float(bound) for bound in interval.rstrip("]").split(", ")]
        if examples is None:
            assert shown[0] - 0.005 <= value <= shown[1] + 0.005 and shown[0] < shown[1], (text, interval, value)
        else:
            assert shown == [round(bound, 2) for bound in wilson(value, examples)], (text, interval, value, examples)
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


def check_results_csv(path: Path, summaries: dict[str, dict]) -> None:
    """results.csv: every value exactly as in summary.json, the Wilson bounds appended."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["head", "lora"]
    intervals = [c for c in rows[0] if c.endswith(("_ci_low", "_ci_high"))]
    numeric = [c for c in rows[0] if c not in ("method", "model", "data", "task", "primary_metric", "runs", "seeds")
               and c not in intervals]
    # appended: Wilson's for the accuracy, a bootstrap over the examples' losses for the loss
    assert list(rows[0])[-4:] == intervals == ["test_accuracy_ci_low", "test_accuracy_ci_high", "test_loss_ci_low",
                                               "test_loss_ci_high"]
    assert {"test_accuracy", "test_loss", "eval_loss", "trainable_params", "total_params", "checkpoint_bytes",
            "train_time_s", "peak_memory_bytes", "memory_activations_bytes"} <= set(numeric)
    for row in rows:
        summary = summaries[row["method"]]
        assert row["model"] == summary["model"] and row["primary_metric"] == "accuracy" and row["runs"] == "1"
        for column in numeric:
            expected = summary_value(summary, summary_path(column))
            assert float(row[column]) == expected, (row["method"], column)
            if isinstance(expected, int):
                assert row[column] == str(expected)
        low, high = wilson(summary["test"]["accuracy"], summary["test"]["examples"])
        assert float(row["test_accuracy_ci_low"]) == pytest.approx(low, abs=1e-12)
        assert float(row["test_accuracy_ci_high"]) == pytest.approx(high, abs=1e-12)
        assert float(row["test_loss_ci_low"]) < summary["test"]["loss"] < float(row["test_loss_ci_high"])


def check_paired(comparison: Path, summaries: dict[str, dict]) -> None:
    """Where both runs wrote predictions.jsonl, the paired table's b and c are counted from them."""
    files = [comparison / name / "predictions.jsonl" for name in ("head", "lora")]
    if not all(f.is_file() for f in files):
        return
    head, lora = ({r["id"]: r["correct"] for r in map(json.loads, f.read_text().splitlines())} for f in files)
    # the reference is the better one on validation (the first of equals), never on test
    validation = {name: summaries[name]["validation"]["accuracy"] for name in ("head", "lora")}
    best = "head" if validation["head"] >= validation["lora"] else "lora"
    best_correct, other_correct = (head, lora) if best == "head" else (lora, head)
    b = sum(best_correct[i] and not other_correct[i] for i in head)
    c = sum(other_correct[i] and not best_correct[i] for i in head)
    headers, body = markdown_tables((comparison / "report.md").read_text())[f"Paired tests against {best}"]
    cells = dict(zip(headers, body[0]))
    assert cells["test"] == "exact McNemar" and int(cells["examples"]) == len(head)
    assert [int(cells[f"only {best} right (b)"]), int(cells["only this right (c)"])] == [b, c], (headers, body)


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

    check_results_csv(comparison / "results.csv", summaries)
    check_paired(comparison, summaries)

    # report.md: every number equals the summary to the shown precision
    md = (comparison / "report.md").read_text()
    tables = markdown_tables(md)
    checked = 0
    for title in ("Results", "Memory of one training step", "Inference cost"):
        headers, body = tables[title]
        assert [r[0] for r in body] == ["head", "lora"]
        for r in body:
            for header, text in zip(headers[1:], r[1:]):
                key, scale = HEADERS[header]
                if text == "–":  # head-only cannot be merged: no merged numbers, an empty cell
                    assert header.startswith("merged") and r[0] == "head", (r[0], header)
                    continue
                proportion = header == "test accuracy"
                check_cell(text, summary_value(summaries[r[0]], key), scale,
                           summaries[r[0]]["test"]["examples"] if proportion else None)
                checked += 1
    assert checked >= 2 * 23
    assert "merged: ms / example, batch 1" in tables["Inference cost"][0]  # LoRA folds into the weights
    for name in ("validation_loss.png", "metric.png", "pareto.png", "time_memory.png", "memory_breakdown.png",
                 "inference.png"):
        assert (comparison / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md

    # report.html: the same cells as report.md, images inline, nothing fetched from elsewhere
    page = (comparison / "report.html").read_text()
    results, memory = [t for t in html_tables(page) if t[0] in (tables["Results"][0],
                                                                 tables["Memory of one training step"][0])]
    assert results == [tables["Results"][0]] + tables["Results"][1]
    assert memory == [tables["Memory of one training step"][0]] + tables["Memory of one training step"][1]
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 6 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<link" not in page
    assert summaries["head"]["git_hash"] in page and summaries["head"]["versions"]["torch"] in page


def fake_run(folder: Path, method: str, seed: int = 0, curve: bool = True, accuracy: float = 0.8,
             **summary) -> Path:
    """A finished run directory with a chosen summary.json in the format the training loop writes
    (for report logic apart from training): ``accuracy`` is the test accuracy unless ``test`` is
    given whole; a key given as None is left out; ``curve`` writes validation records."""
    folder.mkdir(parents=True)
    base = {"method": method, "model": "m", "data": "d", "task": "classification", "primary_metric": "accuracy",
            "higher_is_better": True, "select_metric": "loss",
            "test": {"loss": 0.5, "accuracy": accuracy, "examples": 300},
            "validation": {"loss": 0.45, "accuracy": 0.79},
            "before": None, "trainable_params": 1000, "added_params": 10, "total_params": 100_000,
            "trainable_percent": 1.0, "checkpoint_bytes": 4000, "train_time_s": 12.5, "wall_time_s": 20.0,
            "tokens_per_second": 900.0, "train_examples": 200, "test_examples": 300, "peak_memory_bytes": 5e8,
            "peak_memory_kind": "cpu_peak_rss", "best_step": 10, "best_epoch": 1.0, "steps": 10, "stopped_early": False,
            "device": "cpu", "num_processes": 1, "versions": {"torch": "2.13.0"}, "git_hash": "abc",
            "memory": {"weights_bytes": 400_000, "gradients_bytes": 4000, "optimizer_bytes": 8000,
                       "activations_bytes": 100_000, "forward_peak_bytes": 508_000, "backward_peak_bytes": 512_000}}
    base.update(summary)
    (folder / "summary.json").write_text(json.dumps({k: v for k, v in base.items() if v is not None}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}, "train": {"seed": seed}}))
    if curve:
        records = [{"split": "validation", "step": s, "loss": 0.7 - 0.01 * s, "accuracy": 0.5} for s in (5, 10)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_new_summary_format_every_test_metric_and_a_none_row(tmp_path):
    comparison = tmp_path / "c"
    fake_run(comparison / "instruct-lora", "lora",
             test={"accuracy": 0.9, "loss": 0.3, "invalid_rate": 0.02, "examples": 50})
    # zero-shot: nothing trained, no curve, no memory breakdown, no train time, no test or validation loss
    fake_run(comparison / "none", "none", curve=False, trainable_params=0, added_params=0, trainable_percent=0.0,
             checkpoint_bytes=None, train_time_s=None, tokens_per_second=None, memory=None, best_epoch=None,
             test={"accuracy": 0.6, "invalid_rate": 0.3}, validation={"accuracy": 0.79})
    assert cli.main(["report", str(comparison)]) == 0
    rows = {r["method"]: r for r in read_csv(comparison / "results.csv")}
    assert float(rows["instruct-lora"]["test_invalid_rate"]) == 0.02
    assert float(rows["none"]["test_invalid_rate"]) == 0.3 and rows["none"]["train_time_s"] == ""
    assert "test_examples" not in rows["none"] and "test_rougeL" not in rows["none"]  # columns no row has: dropped
    assert rows["none"]["test_loss"] == "" and rows["none"]["eval_loss"] == ""
    assert float(rows["instruct-lora"]["eval_loss"]) == 0.45  # validation["loss"]
    headers, body = markdown_tables((comparison / "report.md").read_text())["Results"]
    assert headers[1:4] == ["test accuracy", "test loss", "test invalid_rate"]  # primary first, then the task's order
    none_row = dict(zip(headers, body[[r[0] for r in body].index("none")]))
    assert none_row["trainable"] == "0" and none_row["train time (s)"] == "–"
    assert (comparison / "pareto.png").is_file() and (comparison / "memory_breakdown.png").is_file()


def as_previous_loop_wrote_it(summary_file: Path) -> None:
    """Rewrite a summary.json the way the training loop did before each number was held once:
    every metric nested and flat too (``test_<metric>``, ``validation_<metric>``, ``eval_loss``,
    ``test_<metric>_before``)."""
    summary = json.loads(summary_file.read_text())
    flat = {f"test_{k}": v for k, v in summary["test"].items()}
    flat["eval_loss"] = summary["validation"].get("loss")
    flat.update({f"validation_{k}": v for k, v in summary["validation"].items() if k != "loss"})
    flat.update({f"test_{k}_before": v for k, v in (summary.get("before") or {}).items()})
    summary_file.write_text(json.dumps({**summary, **flat}))


def test_a_summary_of_the_previous_loop_gives_the_same_report(tmp_path):
    comparison = tmp_path / "c"
    fake_run(comparison / "lora", "lora", accuracy=0.8)
    fake_run(comparison / "full", "full", accuracy=0.85, trainable_params=100_000,
             test={"loss": 0.4, "accuracy": 0.85, "score_accuracy": 0.83, "invalid_rate": 0.01, "examples": 300})
    outputs = ("results.csv", "runs.csv", "report.md", "report.html")
    assert cli.main(["report", str(comparison)]) == 0
    now = {name: (comparison / name).read_bytes() for name in outputs}
    for summary_file in comparison.glob("*/summary.json"):
        as_previous_loop_wrote_it(summary_file)
    assert cli.main(["report", str(comparison)]) == 0
    assert {name: (comparison / name).read_bytes() for name in outputs} == now


def test_lm_runs_show_the_base_models_numbers_beside_theirs(tmp_path):
    comparison = tmp_path / "c"
    for method, perplexity in [("lora", 20.0), ("full", 18.5)]:
        fake_run(comparison / method, method, task="lm", primary_metric="perplexity", higher_is_better=False,
                 test={"loss": 3.0, "perplexity": perplexity, "tokens": 4096},
                 validation={"loss": 3.1, "perplexity": perplexity + 1, "tokens": 2048},
                 before={"loss": 3.5, "perplexity": 33.0, "tokens": 4096})
    assert cli.main(["report", str(comparison)]) == 0
    rows = {r["method"]: r for r in read_csv(comparison / "results.csv")}
    assert float(rows["full"]["test_perplexity"]) == 18.5 and float(rows["full"]["test_perplexity_before"]) == 33.0
    assert float(rows["lora"]["validation_perplexity"]) == 21.0 and float(rows["lora"]["eval_loss"]) == 3.1
    assert list(rows["lora"])[7] == "test_perplexity"  # the primary metric first
    md = (comparison / "report.md").read_text()
    assert "Best test perplexity: **full** (18.5000)." in md  # lower is better
    assert "Pareto front (test perplexity against trainable parameters, fewest first): full." in md


def test_seeds_give_mean_and_sample_std(tmp_path):
    comparison = tmp_path / "c"
    accuracies = [0.80, 0.82, 0.81]
    for seed, acc in enumerate(accuracies):
        fake_run(comparison / f"lora-seed{seed}", "lora", seed=seed, accuracy=acc)
    fake_run(comparison / "head", "head", accuracy=0.7, trainable_params=10)
    assert cli.main(["report", str(comparison)]) == 0
    rows = {r["method"]: r for r in read_csv(comparison / "results.csv")}
    assert rows["lora"]["runs"] == "3" and rows["lora"]["seeds"] == "0;1;2"
    assert float(rows["lora"]["test_accuracy"]) == pytest.approx(statistics.fmean(accuracies), abs=1e-15)
    assert float(rows["lora"]["test_accuracy_std"]) == pytest.approx(statistics.stdev(accuracies), abs=1e-15)
    assert rows["head"]["test_accuracy_std"] == ""
    headers, body = markdown_tables((comparison / "report.md").read_text())["Results"]
    lora = dict(zip(headers, body[[r[0] for r in body].index("lora")]))
    assert lora["test accuracy"] == "0.8100 ± 0.0100 [0.76, 0.85]" and lora["runs"] == "3"  # Wilson at the mean
    assert lora["trainable"] == "1,000"  # identical across seeds: no ± shown
    assert len(read_csv(comparison / "runs.csv")) == 4


def test_report_across_comparisons(tmp_path, capsys):
    fake_run(tmp_path / "one" / "lora", "lora", accuracy=0.8)
    fake_run(tmp_path / "two" / "lora", "lora", accuracy=0.7)
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
        fake_run(comparison / method, method, trainable_params=params, accuracy=acc)
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
    assert len(images) == 5 and all(complete and width > 0 for complete, width in images), images
    assert all(url.startswith(("file:", "data:")) for url in requests), requests  # self-contained
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
