"""Bad input reaches the user as ONE line ``error: ...`` on stderr, exit code 2, no traceback,
and leaves nothing behind: input errors are found by ``prepare()`` before the run directory
is created, so the configured output directory must not even exist afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import _snapshot, cli_args


@pytest.fixture
def train_cli(run_cli, tiny_run_config):
    """``tunelab train`` with the tiny-run overrides plus the test's own (later ones win)."""

    def run(*extra: str) -> tuple[int, str, str]:
        result = run_cli(["train", *cli_args(tiny_run_config), *extra])
        assert not Path(tiny_run_config["output"]["dir"]).exists(), "the run directory was created"
        return result

    return run


def assert_one_line_error(rc: int, out: str, err: str, *phrases: str) -> str:
    assert rc == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one stderr line, got {err!r}"
    line = lines[0]
    assert line.startswith("error: ") and line[len("error: "):].strip(), line
    assert out == ""
    for phrase in phrases:
        assert phrase in line, f"{phrase!r} not in {line!r}"
    return line


def test_flatten_builds_overrides():
    assert cli_args({"method": {"name": "lora", "r": 4}, "x": {"y": {"z": [1, 2]}}}) == [
        "--method.name", "lora", "--method.r", "4", "--x.y.z", "[1, 2]"]


# --------------------------------------------------------------------------------------------
# tunelab train: data


def test_missing_data_file(train_cli, tmp_path):
    missing = tmp_path / "nowhere" / "reviews-missing.csv"
    line = assert_one_line_error(*train_cli("--data.name", str(missing)), "not found")
    assert str(missing) in line


@pytest.mark.parametrize("key, column", [("text_column", "review"), ("label_column", "sentiment")])
def test_missing_column_lists_available(train_cli, key, column):
    line = assert_one_line_error(*train_cli(f"--data.{key}", column), f"data.{key}", repr(column))
    assert "columns: text, label" in line


def test_unknown_dataset_lists_embedded(train_cli):
    assert_one_line_error(*train_cli("--data.name", "no-such-dataset-xyz"), "no-such-dataset-xyz", "rt-snippets")


def test_empty_split(train_cli, tmp_path):
    tiny = tmp_path / "two-rows.csv"
    tiny.write_text("text,label\ngood movie,positive\nbad movie,negative\n", encoding="utf-8")
    line = assert_one_line_error(*train_cli("--data.name", str(tiny)), "empty")
    assert "validation" in line  # 2 rows at 7:1:2 -> train 1, validation 0, test 1


def test_non_utf8_file(train_cli, tmp_path):
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(b"text,label\ncaf\xe9 good,positive\nbad film,negative\nfine plot,positive\n")
    line = assert_one_line_error(*train_cli("--data.name", str(latin)), "UTF-8", str(latin))
    assert "line 2" in line


def _with_missing(path: Path) -> Path:
    """Reviews whose label is missing in rows 2 and 5 (from 0) and whose text is empty in row 7."""
    import pandas as pd

    rows = [{"text": f"film {i} {'good' if i % 2 else 'bad'}", "label": "positive" if i % 2 else "negative"}
            for i in range(30)]
    rows[2]["label"], rows[5]["label"], rows[7]["text"] = None, "", " "
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix, first_label, first_text", [
    (".csv", "line 4", "line 9"), (".jsonl", "line 3", "line 8"),
    (".parquet", "row 3, counting from 1", "row 8, counting from 1")])
def test_missing_labels_and_texts_are_refused_before_the_split(train_cli, tmp_path, suffix, first_label, first_text):
    """Not a third class named None: the rows are counted and the first named, as in the file."""
    data = _with_missing(tmp_path / f"reviews{suffix}")
    line = assert_one_line_error(*train_cli("--data.name", str(data)), str(data), "data.drop_missing: true")
    assert f"2 rows have no label in 'label' (the first is {first_label})" in line
    assert f"1 row has no text in 'text' (the first is {first_text})" in line


def test_a_label_outside_data_labels(train_cli, tmp_path):
    data = tmp_path / "three.csv"
    data.write_text("text,label\n"
                    + "".join(f"film {i},{['negative', 'positive', 'mixed'][i % 3]}\n" for i in range(30)))
    assert_one_line_error(*train_cli("--data.name", str(data), "--data.labels", "[negative, positive]"),
                          "label 'mixed' (10 rows, the first is line 4)", "negative, positive")


def test_dataset_name_that_is_a_model(train_cli):
    assert_one_line_error(*train_cli("--data.name", "minilm-l6"), "not a dataset", "rt-snippets")


# --------------------------------------------------------------------------------------------
# tunelab train: model and method


def test_unknown_model_lists_embedded(train_cli):
    assert_one_line_error(*train_cli("--model.name", "no-such-model-xyz"), "no-such-model-xyz", "minilm-l6")


def test_model_directory_without_config(train_cli, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    assert_one_line_error(*train_cli("--model.name", str(folder)), "config.json")


def test_unknown_method_lists_known(train_cli):
    line = assert_one_line_error(*train_cli("--method.name", "sparkle"), "method.name", "sparkle")
    for known in ("lora", "full", "head"):
        assert known in line


# --------------------------------------------------------------------------------------------
# tunelab train: config values and keys


@pytest.mark.parametrize("value", ["0", "-3"])
def test_lora_rank_must_be_positive(train_cli, value):
    assert_one_line_error(*train_cli("--method.r", value), "method.r", value)


def test_lora_rank_override_on_the_default_method(run_cli):
    """No --method.name: the override applies to the default lora and is checked before any fetch."""
    assert_one_line_error(*run_cli(["train", "--method.r", "0"]), "method.r")


def test_negative_learning_rate(train_cli):
    assert_one_line_error(*train_cli("--train.lr", "-0.001"), "train.lr", "-0.001")


def test_unknown_config_key_lists_allowed(train_cli):
    line = assert_one_line_error(*train_cli("--train.lrr", "0.1"), "train.lrr")
    assert "allowed keys" in line
    for allowed in ("lr", "epochs", "batch_size", "warmup_ratio"):
        assert allowed in line.split("allowed keys", 1)[1]


def test_unknown_key_in_method_section_lists_that_methods_keys(train_cli):
    line = assert_one_line_error(*train_cli("--method.rank", "4"), "method.rank")
    assert "alpha" in line and "target_modules" in line


def test_override_without_value(train_cli):
    assert_one_line_error(*train_cli("--train.epochs"), "--train.epochs", "no value")


def test_missing_config_file(run_cli):
    assert_one_line_error(*run_cli(["train", "--config", "missing.yaml"]), "missing.yaml", "not found")


def test_config_file_that_is_not_a_mapping(run_cli, isolated):
    (isolated / "list.yaml").write_text("- model\n- data\n", encoding="utf-8")
    assert_one_line_error(*run_cli(["train", "--config", "list.yaml"]), "list.yaml", "mapping")


def test_invalid_yaml_config(run_cli, isolated):
    (isolated / "broken.yaml").write_text("model: {name: [unclosed\n", encoding="utf-8")
    assert_one_line_error(*run_cli(["train", "--config", "broken.yaml"]), "broken.yaml", "not valid YAML")


def test_resume_without_run(run_cli, isolated):
    (isolated / "empty-dir").mkdir()
    assert_one_line_error(*run_cli(["train", "--resume", "empty-dir"]), "empty-dir", "config.yaml")


# --------------------------------------------------------------------------------------------
# other commands


def test_eval_on_a_directory_that_is_not_a_run(run_cli, isolated):
    folder = isolated / "just-a-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    assert_one_line_error(*run_cli(["eval", str(folder)]), str(folder), "not a run directory")


def test_fetch_unknown_artifact_lists_known(run_cli):
    line = assert_one_line_error(*run_cli(["fetch", "no-such-artifact"]), "no-such-artifact")
    for known in ("minilm-l6", "smollm2-135m", "rt-snippets"):
        assert known in line


@pytest.mark.parametrize("argv, phrase", [
    (["train", "--resume"], "--resume"),
    (["frobnicate"], "frobnicate"),
    ([], "command"),
    (["eval", "somewhere", "--split", "bogus"], "bogus"),
    (["eval"], "run_dir"),
])
def test_argparse_errors_are_one_line(run_cli, argv, phrase):
    assert_one_line_error(*run_cli(argv), phrase, "--help")


def test_top_level_argparse_hint_names_the_command_once(run_cli):
    line = assert_one_line_error(*run_cli(["frobnicate"]))
    assert "tunelab tunelab" not in line


# --------------------------------------------------------------------------------------------
# the real process: nothing but one line reaches stderr


@pytest.mark.parametrize("case", ["unknown-model", "non-utf8", "argparse"])
def test_subprocess_prints_one_line_and_no_traceback(case, tmp_path, tiny_run_config, tiny_bert_dir):
    latin = tmp_path / "latin1.csv"
    latin.write_bytes(b"text,label\ncaf\xe9 good,positive\nbad film,negative\n")
    scratch = tmp_path / "tmpdir"  # the process's TMPDIR: anything left there is a leak
    scratch.mkdir()
    train = ["train", *cli_args(tiny_run_config)]
    argv, phrase = {
        "unknown-model": (train + ["--model.name", "no-such-model-xyz"], "minilm-l6"),
        "non-utf8": (train + ["--data.name", str(latin)], "UTF-8"),
        "argparse": (["train", "--resume"], "--resume"),
    }[case]
    env = {**os.environ, "TUNELAB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1", "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    before = _snapshot(tmp_path, tiny_bert_dir)
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, phrase)
    assert _snapshot(tmp_path, tiny_bert_dir) == before
    assert not Path(tiny_run_config["output"]["dir"]).exists()
    assert not (tmp_path / "hf").exists() and not (tmp_path / "cache").exists()
    assert list(scratch.iterdir()) == []
