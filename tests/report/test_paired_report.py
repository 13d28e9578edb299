"""The report's intervals, paired tests and budgets, end to end on fake runs whose
predictions.jsonl is written here with known discordant counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from test_write_report import fake_run, markdown_tables, read_csv
from tunelab import cli
from tunelab.report.budget import budget_differences
from tunelab.report.collect import Run
from tunelab.report.rows import make_rows
from tunelab.summary import Summary

N = 40
FULL = [i < 34 for i in range(N)]
"""The best run: right on the first 34 of 40 test examples (accuracy 0.85)."""


def against_full(b: int, c: int) -> list[bool]:
    """Correctness that differs from FULL by b examples only full gets right and c only this one does."""
    correct = list(FULL)
    for i in range(b):
        correct[i] = False  # right in FULL
    for i in range(c):
        correct[34 + i] = True  # wrong in FULL
    return correct


def run_with_predictions(folder: Path, method: str, correct: list[bool] | None, ids: list[int] | None = None,
                         **summary) -> Path:
    accuracy = sum(correct) / len(correct) if correct else summary.pop("accuracy", 0.8)
    path = fake_run(folder, method, test={"loss": 0.4, "accuracy": accuracy, "examples": N}, test_examples=N,
                    **summary)
    if correct is not None:
        records = [{"id": i, "gold": "positive", "predicted": "positive" if right else "negative",
                    "score": 0.9, "correct": right} for i, right in zip(ids or range(N), correct)]
        (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def report(comparison: Path) -> tuple[str, dict]:
    assert cli.main(["report", str(comparison)]) == 0
    md = (comparison / "report.md").read_text()
    return md, markdown_tables(md)


def detectable(b: int, c: int, n: int, comparisons: int) -> float:
    """(z_{1 - 0.05 / 2m} + z_0.8) · sqrt(b + c) / n, with the normal quantiles written out."""
    z = {1: 1.959963984540054, 2: 2.241402727604947, 3: 2.393980140365225}[comparisons]
    return (z + 0.8416212335729143) * math.sqrt(b + c) / n


def test_intervals_p_values_holm_and_the_verdict(tmp_path):
    comparison = tmp_path / "c"
    run_with_predictions(comparison / "full", "full", FULL, trainable_params=100_000,
                         validation={"accuracy": 0.86, "loss": 0.4})
    run_with_predictions(comparison / "lora", "lora", against_full(4, 1))  # p = 2 * (1 + 5) / 32 = 0.375
    run_with_predictions(comparison / "head", "head", against_full(10, 2))  # p = 2 * (1 + 12 + 66) / 4096
    run_with_predictions(comparison / "ia3", "ia3", against_full(14, 0))  # p = 2 / 2^14
    run_with_predictions(comparison / "prefix", "prefix", None, accuracy=0.8)  # a run made before predictions
    md, tables = report(comparison)
    # Holm by hand over the three tests: 2/2^14 x 3, then 0.03857 x 2 = 0.0771, then max(0.375 x 1, 0.0771)
    assert "Reference: **full**, the best on validation accuracy (0.8600); the test set is not used to pick it." in md
    assert ("On test accuracy over these 40 examples (exact McNemar; p-values corrected by Holm's method over the 3 "
            "comparisons): head and lora cannot be told apart from full; ia3 (p < 0.001) is worse.") in md
    assert "No paired test was possible for prefix: no predictions.jsonl" in md
    assert "Wilson score interval" in md
    headers, body = tables["Results"]
    shown = {r[0]: dict(zip(headers, r)) for r in body}
    # Wilson over 40 by hand: 34/40 -> [0.7093, 0.9294]; 31/40 -> [0.6250, 0.8768]; 26/40 -> [0.4951, 0.7787]
    assert shown["full"]["test accuracy"] == "0.8500 [0.71, 0.93]"
    assert shown["lora"]["test accuracy"] == "0.7750 [0.62, 0.88]"
    assert shown["head"]["test accuracy"] == "0.6500 [0.50, 0.78]"
    headers, body = tables["Paired tests against full"]
    paired = {r[0]: dict(zip(headers, r)) for r in body}
    assert set(paired) == {"lora", "head", "ia3", "prefix"}
    assert [paired["head"][h] for h in headers[2:9]] == ["exact McNemar", "40", "-0.2000", "10", "2", "0.03857",
                                                         "0.07715"]
    assert [paired["lora"][h] for h in headers[2:9]] == ["exact McNemar", "40", "-0.0750", "4", "1", "0.375", "0.375"]
    assert float(paired["ia3"]["p (Holm)"]) == pytest.approx(3 * 2 / 2**14, rel=1e-3)
    assert [paired[m]["verdict"] for m in ("lora", "head", "ia3")] == ["cannot be told apart"] * 2 + ["worse"]
    assert float(paired["lora"]["detectable difference"]) == pytest.approx(detectable(4, 1, N, 3), abs=5e-5)
    assert float(paired["head"]["detectable difference"]) == pytest.approx(detectable(10, 2, N, 3), abs=5e-5)
    assert "could not have been detected here" in md
    assert paired["prefix"]["verdict"].startswith("no test: no predictions.jsonl")
    assert "<table class=\"paired\">" in (comparison / "report.html").read_text()


def test_the_reference_is_chosen_on_validation_and_a_better_row_says_so(tmp_path):
    comparison = tmp_path / "c"
    run_with_predictions(comparison / "full", "full", FULL, validation={"accuracy": 0.70, "loss": 0.4})
    # lora is best on validation though worse on test; full is told apart from it as better
    run_with_predictions(comparison / "lora", "lora", against_full(14, 0), validation={"accuracy": 0.72, "loss": 0.4})
    md, tables = report(comparison)
    assert "Best test accuracy: **full** (0.8500)." in md  # still named: it is the highest on test
    assert "Reference: **lora**, the best on validation accuracy (0.7200)" in md
    assert "full (p < 0.001) is better" in md
    headers, body = tables["Paired tests against lora"]
    assert dict(zip(headers, body[0]))["difference"] == "+0.3500"


def test_results_csv_keeps_its_columns_and_appends_the_intervals(tmp_path):
    comparison = tmp_path / "c"
    run_with_predictions(comparison / "full", "full", FULL)
    run_with_predictions(comparison / "lora", "lora", against_full(4, 1))
    report(comparison)
    rows = read_csv(comparison / "results.csv")
    assert list(rows[0]) == [
        "method", "model", "data", "task", "primary_metric", "runs", "seeds", "test_accuracy", "test_loss",
        "validation_accuracy", "eval_loss", "trainable_params", "added_params", "total_params", "trainable_percent",
        "checkpoint_bytes", "train_time_s", "wall_time_s", "tokens_per_second", "peak_memory_bytes", "best_epoch",
        "best_step", "steps", "memory_weights_bytes", "memory_gradients_bytes", "memory_optimizer_bytes",
        "memory_activations_bytes", "memory_forward_peak_bytes", "memory_backward_peak_bytes",
        "test_accuracy_ci_low", "test_accuracy_ci_high"]
    full = rows[0]
    assert float(full["test_accuracy"]) == 0.85 and float(full["test_loss"]) == 0.4 and full["steps"] == "10"
    assert float(full["test_accuracy_ci_low"]) == pytest.approx(0.709276756335103, abs=1e-12)
    assert float(full["test_accuracy_ci_high"]) == pytest.approx(0.9293881228267964, abs=1e-12)


def test_every_proportion_gets_its_interval_columns(tmp_path):
    comparison = tmp_path / "c"
    fake_run(comparison / "instruct-lora", "lora", task="instruct", test={
        "loss": 0.3, "accuracy": 0.9, "score_accuracy": 0.92, "generate_accuracy": 0.9, "invalid_rate": 0.02,
        "examples": 50})
    md, tables = report(comparison)
    header = list(read_csv(comparison / "results.csv")[0])
    ends = [f"test_{m}_ci_{e}" for m in ("accuracy", "score_accuracy", "generate_accuracy", "invalid_rate")
            for e in ("low", "high")]  # the instruct task's own order
    assert header[-8:] == ends and header.index("memory_backward_peak_bytes") == len(header) - 9
    headers, body = tables["Results"]
    row = dict(zip(headers, body[0]))
    assert row["test invalid_rate"] == "0.0200 [0.00, 0.10]" and row["test loss"] == "0.3000"  # no interval for a loss
    assert "Paired tests" not in md  # one row: nothing to compare


def test_the_best_without_predictions_and_other_example_ids(tmp_path):
    comparison = tmp_path / "c"
    run_with_predictions(comparison / "full", "full", None, accuracy=0.9)
    run_with_predictions(comparison / "lora", "lora", against_full(4, 1))
    md, _ = report(comparison)
    assert "No paired test was possible for lora: the reference (full): no predictions.jsonl" in md
    assert "On these" not in md and "## Paired tests" not in md

    other = tmp_path / "other"
    run_with_predictions(other / "full", "full", FULL)
    run_with_predictions(other / "lora", "lora", against_full(4, 1), ids=list(range(100, 100 + N)))
    md, _ = report(other)
    assert "No paired test was possible for lora: different test example ids." in md


def lm_run(folder: Path, method: str, nll: list[float], tokens: list[int], validation: float) -> Path:
    """A language-model run whose predictions.jsonl holds each window's summed NLL and tokens."""
    loss = sum(nll) / sum(tokens)
    path = fake_run(folder, method, task="lm", primary_metric="perplexity", higher_is_better=False,
                    select_metric="loss", test={"loss": loss, "perplexity": math.exp(loss), "tokens": sum(tokens)},
                    validation={"loss": validation, "perplexity": math.exp(validation)})
    records = [{"id": i, "gold": None, "predicted": None, "score": n, "correct": None, "tokens": t, "nll": n}
               for i, (n, t) in enumerate(zip(nll, tokens))]
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_perplexity_gets_a_bootstrap_interval_and_a_paired_bootstrap_test(tmp_path):
    comparison = tmp_path / "c"
    tokens = [64 - (i % 7) for i in range(60)]
    base = [t * (2.5 + 0.3 * math.sin(i)) for i, t in enumerate(tokens)]  # NLL per window, ~2.5 a token
    lm_run(comparison / "full", "full", base, tokens, validation=2.4)
    lm_run(comparison / "lora", "lora", [n + 0.2 * t for n, t in zip(base, tokens)], tokens, validation=2.6)  # worse
    lm_run(comparison / "ia3", "ia3", [n + 0.004 * t * (-1) ** i for i, (n, t) in enumerate(zip(base, tokens))],
           tokens, validation=2.5)
    md, tables = report(comparison)
    assert "Reference: **full**, the best on validation perplexity" in md  # lower is better: the task says so
    headers, body = tables["Results"]
    shown = {r[0]: dict(zip(headers, r)) for r in body}
    _, _, interval = shown["full"]["test perplexity"].partition(" [")
    low, high = (float(x) for x in interval.rstrip("]").split(", "))
    assert low < math.exp(sum(base) / sum(tokens)) < high and high - low < 1.5
    assert "percentile bootstrap over the test examples" in md
    headers, body = tables["Paired tests against full"]
    paired = {r[0]: dict(zip(headers, r)) for r in body}
    assert paired["lora"]["test"] == "paired bootstrap over examples" and paired["lora"]["verdict"] == "worse"
    assert float(paired["lora"]["difference"]) == pytest.approx(math.exp(sum(base) / sum(tokens) + 0.2)
                                                                - math.exp(sum(base) / sum(tokens)), abs=1e-4)
    assert paired["ia3"]["verdict"] == "cannot be told apart"
    csv_row = {r["method"]: r for r in read_csv(comparison / "results.csv")}["full"]
    assert float(csv_row["test_perplexity_ci_low"]) == pytest.approx(low, abs=0.005)


def test_a_row_with_seeds_is_tested_on_all_of_them_not_its_first(tmp_path):
    """lora's first seed is far better than full; its other two seeds are far worse. A test of
    the first seed alone says "better"; over seeds and examples the rows cannot be told apart."""
    n = 200
    reference = [i % 4 != 0 for i in range(n)]  # 0.75
    first_seed = [i % 10 != 0 for i in range(n)]  # 0.90
    weak = [i % 5 in (1, 2, 3) for i in range(n)]  # 0.60
    comparison = tmp_path / "c"
    run_with_predictions(comparison / "full", "full", reference, ids=list(range(n)),
                         validation={"accuracy": 0.8, "loss": 0.4})
    for seed, correct in enumerate([first_seed, weak, weak]):
        run_with_predictions(comparison / f"lora-seed{seed}", "lora", correct, ids=list(range(n)), seed=seed)
    md, tables = report(comparison)
    headers, body = tables["Paired tests against full"]
    lora = dict(zip(headers, body[0]))
    assert lora["runs"] == "3" and lora["test"] == "paired bootstrap over seeds and examples"
    assert lora["verdict"] == "cannot be told apart" and float(lora["p"]) > 0.2
    assert float(lora["difference"]) == pytest.approx((0.9 + 0.6 + 0.6) / 3 - 0.75, abs=1e-4)
    headers, body = tables["Results"]
    assert dict(zip(headers, body[1]))["test accuracy"].startswith("0.7000 ± 0.1732 [")  # mean ± std kept

    alone = tmp_path / "alone"  # the same first seed on its own is "better", by McNemar
    run_with_predictions(alone / "full", "full", reference, ids=list(range(n)),
                         validation={"accuracy": 0.8, "loss": 0.4})
    run_with_predictions(alone / "lora", "lora", first_seed, ids=list(range(n)))
    md, _ = report(alone)
    assert "lora (p < 0.001) is better" in md


def test_a_broken_predictions_file_is_one_line_of_error(tmp_path, capsys):
    path = run_with_predictions(tmp_path / "c" / "full", "full", FULL)
    (path / "predictions.jsonl").write_text('{"id": 0, "correct": true}\n{"gold": "x"}\n')
    assert cli.main(["report", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "predictions.jsonl:2" in err and err.count("\n") == 1


def test_the_budget_per_row_and_where_it_differs(tmp_path):
    comparison = tmp_path / "c"
    for method in ("full", "lora", "lstm"):
        path = run_with_predictions(comparison / method, method, FULL)
        train = {"seed": 0, "epochs": 5 if method == "lstm" else 1, "max_steps": None,
                 "lr": 5e-3 if method == "lstm" else 1e-4}
        (path / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method}, "train": train}))
    md, tables = report(comparison)
    assert "Budgets differ: lstm trains for 5 epochs, the others for 1 epoch." in md
    headers, body = tables["Budget per method"]
    assert headers == ["method", "lr", "epochs", "max steps", "steps taken", "train examples"]
    assert body == [["full", "0.0001", "1", "–", "10", "200"], ["lora", "0.0001", "1", "–", "10", "200"],
                    ["lstm", "0.005", "5", "–", "10", "200"]]


def rows_with(budgets: dict[str, dict]) -> list:
    return make_rows([Run(name, Path(name), Summary.from_dict({"train_examples": b.pop("examples", 200)}),
                          {"train": b}, []) for name, b in budgets.items()])


def test_budget_differences_in_words():
    assert budget_differences(rows_with({"a": {"epochs": 1}, "b": {"epochs": 1}})) is None
    assert budget_differences(rows_with({"a": {"epochs": 1}, "b": {"epochs": 3}})) == (
        "Budgets differ: b trains for 3 epochs, a for 1 epoch.")
    assert budget_differences(rows_with({
        "a": {"epochs": 1}, "b": {"epochs": 1, "max_steps": 50}, "c": {"epochs": 5}, "d": {"epochs": 3, "examples": 90},
    })) == ("Budgets differ: c trains for 5 epochs; d trains for 3 epochs, the others for 1 epoch; "
            "b trains for at most 50 steps, the others with no step limit; "
            "d trains on 90 train examples, the others on 200 train examples.")


def test_preference_runs_get_the_reward_kl_frontier_and_its_columns(tmp_path):
    comparison = tmp_path / "c"
    test = {"loss": 0.69, "reward_accuracy": 0.6, "reward_margin": 0.1, "examples": N}
    frontier = {"untrained": (0.47, 0.0), "sft": (0.56, 5.78), "dpo": (0.61, 1.48)}
    for name, (reward, kl) in frontier.items():
        fake_run(comparison / name, name, task="preference", primary_metric="reward_accuracy", test=test,
                 preference={"generation": {"reward": reward, "kl": kl, "examples": 60}})
    md, _ = report(comparison)
    assert (comparison / "reward_kl.png").stat().st_size > 1000 and "reward_kl.png" in md
    rows = {r["method"]: r for r in read_csv(comparison / "results.csv")}
    for name, (reward, kl) in frontier.items():
        assert float(rows[name]["generation_reward"]) == pytest.approx(reward)
        assert float(rows[name]["generation_kl"]) == pytest.approx(kl)


def test_runs_without_generations_get_no_frontier(tmp_path):
    comparison = tmp_path / "c"
    fake_run(comparison / "lora", "lora")
    md, _ = report(comparison)
    assert not (comparison / "reward_kl.png").exists() and "reward_kl.png" not in md
