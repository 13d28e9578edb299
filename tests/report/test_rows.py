"""From summaries to rows: which number of summary.json lands in which results.csv column."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.report import pareto_front
from tunelab.report.collect import Run
from tunelab.report.paired import reference_row
from tunelab.report.rows import Pareto, make_rows, primary_metric, run_values, scores
from tunelab.summary import Summary


def run(name: str, **summary) -> Run:
    return Run(name, Path(name), Summary.from_dict(summary), {}, [])


def test_run_values_keep_the_results_csv_keys():
    values = run_values(run(
        "lora", primary_metric="perplexity", higher_is_better=False,
        test={"loss": 3.0, "perplexity": 20.0, "tokens": 4096}, validation={"loss": 3.1, "perplexity": 22.0},
        before={"loss": 3.5, "perplexity": 33.0, "tokens": 4096}, trainable_params=10, steps=5,
        memory={"weights_bytes": 100, "cuda_forward_peak_bytes": 7}))
    assert {k: v for k, v in values.items() if v is not None} == {
        "test_loss": 3.0, "test_perplexity": 20.0, "test_tokens": 4096,
        "test_loss_before": 3.5, "test_perplexity_before": 33.0, "test_tokens_before": 4096,
        "validation_perplexity": 22.0, "eval_loss": 3.1, "trainable_params": 10, "steps": 5,
        "memory_weights_bytes": 100, "memory_cuda_forward_peak_bytes": 7}


def test_flat_keys_of_older_summaries_are_not_read_twice():
    # The previous loop wrote every metric nested and flat; the nested mappings are the truth.
    values = run_values(run("lora", test={"accuracy": 0.8}, validation={"loss": 0.4, "accuracy": 0.7},
                            test_accuracy=0.1, eval_loss=0.2, validation_accuracy=0.3, test_accuracy_before=0.0))
    assert values["test_accuracy"] == 0.8 and values["eval_loss"] == 0.4 and values["validation_accuracy"] == 0.7
    assert "test_accuracy_before" not in values


def test_scores_leave_out_counts_and_flags():
    assert (scores({"accuracy": 0.9, "examples": 300, "valid": True, "name": "x", "loss": 1})
            == {"accuracy": 0.9, "loss": 1})
    assert scores(None) == {}


def test_primary_metric_of_older_runs():
    assert primary_metric(Summary.from_dict({})) == ("accuracy", True)
    assert primary_metric(Summary.from_dict({"primary_metric": "perplexity"})) == ("perplexity", False)
    assert primary_metric(Summary.from_dict({"primary_metric": "rougeL", "higher_is_better": True})) == ("rougeL", True)


def test_pareto_front():
    points = [("a", 10, 0.70), ("b", 100, 0.80), ("c", 1000, 0.75), ("d", 1000, 0.85), ("e", 10, 0.65)]
    assert pareto_front(points, higher_is_better=True) == ["a", "b", "d"]
    # perplexity: lower is better
    assert pareto_front([("a", 10, 30.0), ("b", 100, 20.0), ("c", 100, 25.0)], higher_is_better=False) == ["a", "b"]


def test_pareto_of_rows_fewest_parameters_first_and_the_best_row():
    rows = make_rows([run("full", test={"accuracy": 0.9}, trainable_params=1000),
                      run("head", test={"accuracy": 0.7}, trainable_params=10),
                      run("bad", test={"accuracy": 0.6}, trainable_params=500),
                      run("none", test={"accuracy": 0.5}),  # no parameter count: no point
                      run("lora", test={"accuracy": 0.80}, trainable_params=100),  # two seeds, one row
                      run("lora", test={"accuracy": 0.84}, trainable_params=100)])
    pareto = Pareto.of(rows, "accuracy", higher_is_better=True)
    assert [p[0] for p in pareto.points] == ["full", "head", "bad", "lora"]
    assert pareto.front == ["head", "lora", "full"]
    assert pareto.points[3][2] == pytest.approx(0.82)  # the mean over seeds



def test_the_reference_is_the_best_row_on_validation_not_on_test():
    rows = make_rows([run("full", test={"accuracy": 0.9}, validation={"accuracy": 0.80, "loss": 0.5}),
                      run("lora", test={"accuracy": 0.8}, validation={"accuracy": 0.84, "loss": 0.4}),
                      run("lora", test={"accuracy": 0.8}, validation={"accuracy": 0.78, "loss": 0.4}),  # mean 0.81
                      run("head", test={"accuracy": 0.7}, validation={"accuracy": 0.805, "loss": 0.6})])
    reference = reference_row(rows, [("accuracy", True)])
    assert (reference.row.name, reference.metric, reference.value) == ("lora", "accuracy", pytest.approx(0.81))
    # the first metric every row has on validation; lower is better for a loss
    assert reference_row(rows, [("perplexity", False), ("loss", False)]).row.name == "lora"
    assert reference_row(rows, [("loss", False)]).value == pytest.approx(0.4)
    assert reference_row(rows, [("perplexity", False)]) is None
    assert reference_row(make_rows([run("none", validation={"accuracy": 0.5})]),
                         [("accuracy", True)]).row.name == "none"
