"""Rows a task cannot use, found before the data is split: missing labels and empty texts are
refused (how many, and the first as the user finds it in their file) or, with
``data.drop_missing``, dropped and counted; labels outside ``data.labels`` are refused; the
columns each task reads come from its options."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from tunelab.config import DataConfig, load_config
from tunelab.data.labels import label_set
from tunelab.data.rows import check_rows
from tunelab.data.sources import load_data, load_splits
from tunelab.errors import UserError
from tunelab.tasks.options import ClassificationTask, InstructTask, LMTask, SummarizationTask

SPLITS = ("train", "validation", "test")
TASK = ClassificationTask()


def records(n: int = 30, prefix: str = "row") -> list[dict]:
    return [{"text": f"{prefix} {i} {'good' if i % 2 else 'bad'} film", "label": "positive" if i % 2 else "negative"}
            for i in range(n)]


def with_holes(rows: list[dict], labels=(), texts=()) -> list[dict]:
    """Rows whose label (at indices ``labels``) or text (``texts``) is missing, in the ways files
    leave them out: empty, blank, None."""
    out = [dict(r) for r in rows]
    blanks = ["", "  ", None]
    for k, i in enumerate(labels):
        out[i]["label"] = blanks[k % len(blanks)]
    for k, i in enumerate(texts):
        out[i]["text"] = blanks[k % len(blanks)]
    return out


def write(path: Path, rows: list[dict]) -> Path:
    """csv (header on line 1, so row i is on line i + 2), jsonl (row i on line i + 1) or parquet."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


def first_place(suffix: str, index: int) -> str:
    return {".csv": f"line {index + 2}", ".jsonl": f"line {index + 1}",
            ".parquet": f"row {index + 1}, counting from 1"}[suffix]


def refusal(data: DataConfig, task=TASK) -> str:
    with pytest.raises(UserError) as info:
        load_data(data, task)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------
# refused, or dropped, in every format


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_missing_labels_are_refused_naming_the_count_and_the_first_row(tmp_path, suffix):
    path = write(tmp_path / f"reviews{suffix}", with_holes(records(), labels=[16, 4, 9]))
    message = refusal(DataConfig(name=str(path)))
    assert message == (f"{path}: 3 rows have no label in 'label' (the first is {first_place(suffix, 4)}); "
                       "fill them in, or set data.drop_missing: true to drop them")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_empty_texts_are_refused_too(tmp_path, suffix):
    path = write(tmp_path / f"reviews{suffix}", with_holes(records(), labels=[20], texts=[7, 3]))
    message = refusal(DataConfig(name=str(path)))
    assert f"2 rows have no text in 'text' (the first is {first_place(suffix, 3)})" in message
    assert f"1 row has no label in 'label' (the first is {first_place(suffix, 20)})" in message


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_drop_missing_drops_them_before_the_split_and_counts_them(tmp_path, suffix):
    rows = with_holes(records(40), labels=[1, 5, 22], texts=[5, 30])  # row 5 lacks both: counted once
    path = write(tmp_path / f"reviews{suffix}", rows)
    loaded = load_data(DataConfig(name=str(path), drop_missing=True), TASK)
    assert loaded.dropped == 4
    kept = [t for s in SPLITS for t in loaded.splits[s]["text"]]
    assert sorted(kept) == sorted(r["text"] for i, r in enumerate(rows) if i not in (1, 5, 22, 30))
    assert sum(len(loaded.splits[s]) for s in SPLITS) == 36  # split 7:1:2 from the 36 kept rows
    assert [len(loaded.splits[s]) for s in SPLITS] == [25, 4, 7]
    assert label_set(loaded.splits, DataConfig()).names == ["negative", "positive"]  # no class named None


def test_integer_labels_with_blanks_keep_their_names(tmp_path):
    """pandas reads an integer column with blanks as floats; the labels stay 0 and 1, not 0.0 and 1.0."""
    rows = [{"text": f"text {i}", "label": "" if i == 3 else i % 2} for i in range(20)]
    path = write(tmp_path / "numbers.csv", rows)
    assert "line 5" in refusal(DataConfig(name=str(path)))
    loaded = load_data(DataConfig(name=str(path), drop_missing=True), TASK)
    assert loaded.dropped == 1
    assert label_set(loaded.splits, DataConfig()).names == ["0", "1"]


def test_csv_lines_count_blank_lines_and_multiline_fields(tmp_path):
    path = tmp_path / "odd.csv"
    body = ['text,label', 'a good film,positive', '', '"a film', 'on two lines",negative', 'bad film,', 'fine,positive']
    path.write_text("\n".join(body * 1) + "\n" + "".join(f"film {i},negative\n" for i in range(10)), encoding="utf-8")
    assert "(the first is line 6)" in refusal(DataConfig(name=str(path)))


def test_a_directory_of_splits_names_the_file_and_its_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write(folder / "train.jsonl", records(12, "tr"))
    write(folder / "validation.jsonl", records(4, "va"))
    test = write(folder / "test.jsonl", with_holes(records(6, "te"), labels=[2]))
    message = refusal(DataConfig(name=str(folder)))
    assert message.startswith(f"{test}: 1 row has no label in 'label' (the first is line 3)")
    loaded = load_data(DataConfig(name=str(folder), drop_missing=True), TASK)
    assert loaded.dropped == 1 and [len(loaded.splits[s]) for s in SPLITS] == [12, 4, 5]
    assert "te 2 bad film" not in loaded.splits["test"]["text"]


def test_data_without_files_names_the_split_and_its_row():
    """Hub and embedded data: the split and the row, counting from 1."""
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_list(records(5)),
                                "test": datasets.Dataset.from_list(with_holes(records(5), labels=[3]))})
    with pytest.raises(UserError, match=r"^the test split of 'imdb': 1 row has no label in 'label' "
                                        r"\(the first is row 4, counting from 1\)"):
        check_rows(raw, {}, DataConfig(name="imdb"), TASK)


def test_a_class_label_of_minus_one_is_no_label():
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["no", "yes"])})
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"text": ["a", "b", "c", "d"], "label": [0, -1, 1, -1]}, features=features)})
    with pytest.raises(UserError, match="2 rows have no label"):
        check_rows(raw, {}, DataConfig(name="boolq"), TASK)
    kept, dropped = check_rows(raw, {}, DataConfig(name="boolq", drop_missing=True), TASK)
    assert dropped == 2 and kept["train"]["text"] == ["a", "c"]


def test_without_a_task_nothing_is_checked(tmp_path):
    """load_splits(cfg) as before: existing callers read any data."""
    path = write(tmp_path / "reviews.csv", with_holes(records(), labels=[1]))
    assert sum(len(s) for s in load_splits(DataConfig(name=str(path))).values()) == 30


# --------------------------------------------------------------------------------------------
# the columns each task reads


def test_required_columns_per_task():
    data = DataConfig(text_column="passage", text_pair_column="question", label_column="answer")
    assert ClassificationTask().required_columns(data) == {
        "passage": "data.text_column", "question": "data.text_pair_column", "answer": "data.label_column"}
    assert InstructTask(template="{passage}\nQ: {question}? {passage}").required_columns(data) == {
        "passage": "task.template", "question": "task.template", "answer": "data.label_column"}
    assert LMTask().required_columns(data) == {"passage": "data.text_column"}
    assert SummarizationTask(summary_column="highlights").required_columns(data) == {
        "article": "task.template", "highlights": "task.summary_column"}
    assert ClassificationTask.refuse_empty_text and not LMTask.refuse_empty_text


def test_empty_documents_are_normal_for_lm(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\n\n   \nsecond line\n" * 10, encoding="utf-8")
    loaded = load_data(DataConfig(name=str(path)), LMTask())
    assert loaded.dropped == 0 and sum(len(s) for s in loaded.splits.values()) == 40


def test_instruct_needs_every_template_field_and_the_label(tmp_path):
    rows = [{"passage": f"p {i}", "question": "" if i == 6 else f"q {i}", "label": "yes" if i % 2 else "no"}
            for i in range(20)]
    path = write(tmp_path / "boolq.jsonl", rows)
    task = InstructTask(template="{passage} Question: {question}? Answer:")
    assert "1 row has no text in 'question' (the first is line 7)" in refusal(DataConfig(name=str(path)), task)
    missing = InstructTask(template="{passage} {title}")
    assert refusal(DataConfig(name=str(path)), missing) == (
        f"task.template names field {{title}} that {path} lacks; fields there: passage, question, label")


def test_summarization_needs_a_summary(tmp_path):
    rows = [{"article": f"article {i}", "summary": None if i == 2 else f"summary {i}"} for i in range(20)]
    path = write(tmp_path / "news.jsonl", rows)
    assert "1 row has no text in 'summary' (the first is line 3)" in refusal(DataConfig(name=str(path)),
                                                                            SummarizationTask())


def test_missing_column_is_named_before_the_split_with_the_files_columns(tmp_path):
    path = write(tmp_path / "reviews.csv", records())
    assert refusal(DataConfig(name=str(path), label_column="sentiment")) == (
        f"data.label_column 'sentiment' is not a column of {path}; columns: text, label")


# --------------------------------------------------------------------------------------------
# a fixed label set (data.labels): the model's labels, matched by name


def test_labels_outside_data_labels_are_refused_with_their_line(tmp_path):
    rows = records(20)
    rows[6]["label"], rows[11]["label"], rows[13]["label"] = "neutral", "mixed", "neutral"
    path = write(tmp_path / "tweets.csv", rows)
    message = refusal(DataConfig(name=str(path), labels=["negative", "positive"]))
    assert message == (f"{path}: label 'neutral' (2 rows, the first is line 8) is not one of the model's labels "
                       "(data.labels): negative, positive; nor are 'mixed'")


def test_data_labels_fix_the_order_and_allow_a_subset(tmp_path):
    path = write(tmp_path / "only-positive.jsonl", [r for r in records(20) if r["label"] == "positive"])
    data = DataConfig(name=str(path), labels=["positive", "negative"])
    splits = load_splits(data, TASK)  # one label only: fine with a fixed label set
    labels = label_set(splits, data)
    assert labels.names == ["positive", "negative"] and labels.encode("positive", "test") == 0


def test_data_labels_map_a_class_label_by_name():
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["pos", "neg"])})
    train = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}, features=features)
    labels = label_set(datasets.DatasetDict({"train": train}), DataConfig(labels=["neg", "pos"]))
    assert labels.encode(0, "test") == 1 and labels.encode(1, "test") == 0


@pytest.mark.parametrize("labels, phrase", [(["a"], "at least 2 distinct"), (["a", "a"], "at least 2 distinct"),
                                            ([True, False], "boolean")])
def test_data_labels_are_validated(labels, phrase):
    with pytest.raises(UserError, match=phrase):
        load_config(None, {"data": {"labels": labels}})


def test_data_labels_of_numbers_are_their_text():
    assert load_config(None, {"data": {"labels": [0, 1.0, 2]}}).data.labels == ["0", "1", "2"]
