"""Out-of-domain sets in a comparison: every final checkpoint evaluated on other data, once, and
the report's section with the same numbers `tunelab eval` gives, paired tests and the ranking."""

from __future__ import annotations

import json

from test_compare import tiny_compare_yaml

from conftest import write_sentiment_csv
from test_write_report import markdown_tables
from tunelab import cli
from tunelab.evaluate import evaluate_run


def test_a_comparison_reports_its_methods_on_another_set(tiny_bert_dir, sentiment_csv, tmp_path, capsys):
    other = write_sentiment_csv(tmp_path / "other-reviews.csv", n=40, seed=7)
    path = tiny_compare_yaml(tmp_path, tiny_bert_dir, sentiment_csv, {"lora": {}, "bitfit": {}}, max_steps=3)
    out = tmp_path / "out"
    assert cli.main(["compare", "--config", str(path), "--output", str(out), "--no-progress",
                     "--eval-set", str(other)]) == 0
    for name in ("lora", "bitfit"):
        saved = json.loads((out / name / "eval" / "other-reviews" / "metrics.json").read_text())
        again = evaluate_run(out / name, None, {"name": str(other)})
        assert saved["accuracy"] == again["accuracy"] and saved["examples"] == again["examples"] == 40
        lines = (out / name / "eval" / "other-reviews" / "predictions.jsonl").read_text().splitlines()
        assert [json.loads(line)["id"] for line in lines] == list(range(40))

    md = (out / "report.md").read_text()
    headers, body = markdown_tables(md)["Out of domain: other-reviews"]
    assert headers[:2] == ["method", "test accuracy"] and sorted(r[0] for r in body) == ["bitfit", "lora"]
    for row in body:
        shown = float(row[1].split(" [")[0])
        saved = json.loads((out / row[0] / "eval" / "other-reviews" / "metrics.json").read_text())
        assert abs(shown - saved["accuracy"]) <= 5e-5 and "[" in row[1]  # with its interval
    section = md[md.index("## Out of domain: other-reviews"):]
    assert "Reference: **" in section and "exact McNemar" in section
    assert "Ranking on other-reviews (best first):" in section
    assert "pairs of methods keep their in-domain order" in section

    # Run again: nothing trains and nothing is evaluated again; the report is the same.
    mtime = (out / "lora" / "eval" / "other-reviews" / "metrics.json").stat().st_mtime_ns
    assert cli.main(["compare", "--config", str(path), "--output", str(out), "--no-progress",
                     "--eval-set", str(other)]) == 0
    assert (out / "lora" / "eval" / "other-reviews" / "metrics.json").stat().st_mtime_ns == mtime
    assert (out / "report.md").read_text().split("## Out of domain")[1] == md.split("## Out of domain")[1]
