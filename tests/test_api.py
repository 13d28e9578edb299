"""The Python API: the same configs, runs and results as the commands, from one import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import tunelab
from conftest import cli_args
from tunelab import cli
from tunelab.config import load_config, parse_overrides
from tunelab.evaluate import predict_run

LORA = "configs/minilm-l6/rt-snippets-lora.yaml"


def test_import_tunelab_is_light_until_the_api_is_used():
    loaded = subprocess.run([sys.executable, "-c", "import sys, tunelab; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "False"


def test_config_from_yaml_takes_the_command_lines_overrides_in_either_form():
    cli_form = load_config(LORA, parse_overrides(["--train.lr", "1e-3", "--method.r", "16", "--data.labels", "[a,b]"]))
    as_dict = tunelab.Config.from_yaml(LORA, {"train.lr": 1e-3, "method.r": 16, "data.labels": ["a", "b"]})
    as_args = tunelab.Config.from_yaml(LORA, ["--train.lr", "1e-3", "--method.r", "16", "--data.labels", "[a,b]"])
    assert as_dict == as_args == cli_form
    assert as_dict.method.r == 16 and as_dict != tunelab.Config.from_yaml(LORA)
    nested = tunelab.Config.from_yaml(LORA, {"method": {"r": 16}, "train.lr": 1e-3, "data.labels": ["a", "b"]})
    assert nested == cli_form


@pytest.mark.parametrize("overrides, message", [
    ({"lr": 1e-3}, "must name a section and a key"),
    ({"train.lr": -1}, "train.lr"),
    ({"method.rank": 4}, "unknown config key 'method.rank'"),
])
def test_bad_overrides_raise_the_commands_line(overrides, message):
    with pytest.raises(tunelab.UserError, match=message):
        tunelab.Config.from_yaml(LORA, overrides)


def test_train_then_load_predicts_what_the_command_predicts(tiny_run_config, tmp_path):
    cfg = tunelab.Config.from_yaml(None, {k: v for k, v in tiny_run_config.items()})
    summary = tunelab.train(cfg, {"train.epochs": 1})
    assert isinstance(summary, tunelab.Summary) and summary.run_dir == tmp_path / "run"
    assert summary == tunelab.Summary.read(summary.run_dir)  # what summary.json holds
    assert summary.steps == 6  # 42 training examples, batches of 8, the one epoch asked for

    run = tunelab.load(summary.run_dir)
    assert run.label_names == summary.label_names == ["negative", "positive"]
    texts = ["a gripping and beautiful film", "dull, tedious and far too long"]
    predicted = run.predict(texts)
    assert predicted == predict_run(summary.run_dir, texts)  # the `tunelab predict` path
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-6 for p in predicted)

    with pytest.raises(tunelab.UserError, match="already holds a finished run"):  # nothing overwritten
        tunelab.train(cfg)


def test_compare_returns_the_report_with_its_table(tiny_bert_dir, sentiment_csv, tmp_path):
    from test_compare import tiny_compare_yaml

    path = tiny_compare_yaml(tmp_path, tiny_bert_dir, sentiment_csv, {"lora": {}, "bitfit": {}}, epochs=1)
    report = tunelab.compare(path, {"train.max_steps": 2}, output=tmp_path / "out", progress=False)
    assert sorted(report.table["method"]) == ["bitfit", "lora"]
    assert report.html.is_file() and report.plots and all(p.suffix == ".png" for p in report.plots)
    html = report._repr_html_()
    assert "<table" in html and html.count("data:image/png;base64") == len(report.plots)
    assert cli.main(["report", str(tmp_path / "out")]) == 0  # the same directory the command reads


def test_a_comparison_that_fails_raises_with_where_to_look(tiny_bert_dir, sentiment_csv, tmp_path, monkeypatch):
    from test_compare import tiny_compare_yaml

    from tunelab import comparison as compare

    methods = {"broken": {"method": {"name": "ia3"}}, "head": {}}
    path = tiny_compare_yaml(tmp_path, tiny_bert_dir, sentiment_csv, methods, max_steps=2)
    real = compare.train_command
    monkeypatch.setattr(compare, "train_command", lambda run, *args, **kw: real(run, *args, **kw)
                        if run.name != "broken" else [sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(tunelab.UserError, match=r"1 run\(s\) failed: broken; see .*report of the others"):
        tunelab.compare(path, output=tmp_path / "out", progress=False)


def test_cli_args_and_api_make_the_same_run_config(tiny_run_config):
    assert tunelab.Config.from_yaml(None, cli_args(tiny_run_config)) == load_config(None, tiny_run_config)
