"""The LSTM's word vocabulary: what it keeps, what becomes <unk>, train-only counting,
saving, padding, and the one-line errors when nothing is left."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch

from tunelab.build import prepare
from tunelab.config import load_config
from tunelab.data.vocab import ENGLISH_STOP_WORDS, PAD, PAD_ID, UNK, UNK_ID, Vocabulary, collate, item, words
from tunelab.errors import UserError

CORPUS = [
    "The film was GREAT, great!",
    "A great plot; the plot... and the acting?",
    "Dull film. It isn't good -- it's not good at all",
    "good",
]


def test_words_lower_case_strip_punctuation_and_drop_stop_words():
    assert words("Don't STOP--the film's GREAT!! plot/acting it\u2019s snake_case") == \
        ["dont", "stop", "films", "great", "plot", "acting", "snake", "case"]
    # negations are not stop words: they flip what follows
    assert words("it is not good, no, never") == ["not", "good", "no", "never"]
    assert words("The a an", frozenset()) == ["the", "a", "an"]


@pytest.mark.parametrize("min_freq", [1, 2, 3])
def test_keeps_exactly_frequent_words_that_are_not_stop_words(min_freq):
    vocab = Vocabulary.build(CORPUS, min_freq=min_freq)
    # The corpus's words after stripping punctuation and stop words, counted by hand:
    expected_counts = {"film": 2, "great": 3, "plot": 2, "acting": 1, "dull": 1, "isnt": 1, "good": 3, "not": 1}
    assert vocab.itos[:2] == [PAD, UNK] and vocab.stoi[PAD] == PAD_ID == 0 and vocab.stoi[UNK] == UNK_ID == 1
    assert set(vocab.itos[2:]) == {w for w, c in expected_counts.items() if c >= min_freq}
    assert not set(vocab.itos) & ENGLISH_STOP_WORDS  # "the", "was", "a", "and", "it", "at", "all", ...
    assert "the" not in vocab.stoi  # the most frequent raw word of the corpus


def test_ids_follow_frequency_then_alphabet():
    vocab = Vocabulary.build(CORPUS, min_freq=1)
    assert vocab.itos[2:] == ["good", "great", "film", "plot", "acting", "dull", "isnt", "not"]


def test_stop_words_none_keeps_them():
    vocab = Vocabulary.build(CORPUS, min_freq=2, stop_words="none")
    assert {"the", "film", "good"} <= set(vocab.itos)


def test_unknown_words_map_to_unk_and_max_length_keeps_the_first_words():
    vocab = Vocabulary.build(CORPUS, min_freq=2)
    ids = vocab.encode("Great acting, a BAD plot and a good film")
    assert ids == [vocab.stoi["great"], UNK_ID, UNK_ID, vocab.stoi["plot"], vocab.stoi["good"], vocab.stoi["film"]]
    assert vocab.encode("Great acting, a BAD plot and a good film", max_length=3) == ids[:3]
    assert vocab.encode("zebra xylophone") == [UNK_ID, UNK_ID]


def test_text_with_no_words_left_is_one_unk_item():
    vocab = Vocabulary.build(CORPUS, min_freq=1)
    assert item(vocab, "the a an, and ...", max_length=10, label=1) == {"ids": [UNK_ID], "length": 1, "label": 1}


def test_json_round_trip():
    vocab = Vocabulary.build(CORPUS, min_freq=1, stop_words="english")
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab and again.stoi == vocab.stoi
    assert again.encode(CORPUS[2]) == vocab.encode(CORPUS[2])
    assert Vocabulary.from_json(Vocabulary.build(CORPUS, 1, "none").to_json()) != vocab


def test_collate_pads_on_the_right_and_masks():
    batch = collate([{"ids": [5, 6, 7], "length": 3, "label": 1}, {"ids": [8], "length": 1, "label": 0}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, PAD_ID, PAD_ID]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long
    assert "labels" not in collate([{"ids": [5], "length": 1, "label": -1}])  # unlabelled (predict)


# --------------------------------------------------------------------------------------------
# errors


def test_min_freq_below_one():
    with pytest.raises(UserError, match=r"method\.min_freq must be at least 1 \(got 0\)"):
        Vocabulary.build(CORPUS, min_freq=0)


def test_empty_vocabulary_names_min_freq_and_the_highest_count():
    with pytest.raises(UserError,
                       match=r"vocabulary is empty.*method\.min_freq=4.*most frequent occurs 3 times.*at most 3"):
        Vocabulary.build(CORPUS, min_freq=4)


def test_empty_vocabulary_of_stop_words_names_stop_words():
    with pytest.raises(UserError, match=r"vocabulary is empty.*method\.stop_words english"):
        Vocabulary.build(["the a an", "It is what it is.", "..."], min_freq=1)


@pytest.mark.parametrize("text", ["not json", '{"itos": ["film", "<pad>", "<unk>"], "stop_words": "english"}',
                                  '{"itos": ["<pad>", "<unk>"]}'])
def test_corrupt_vocabulary_file(text):
    with pytest.raises(UserError, match="vocab.json is not a tunelab vocabulary"):
        Vocabulary.from_json(text)


# --------------------------------------------------------------------------------------------
# through build.prepare: train split only


def _write(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def test_vocabulary_comes_from_the_train_split_only(tmp_path):
    rng = random.Random(0)
    shared = ["film", "plot", "story", "acting", "good", "bad"]
    for split, own in [("train", "trainword"), ("validation", "validword"), ("test", "testword")]:
        rows = [(f"{own}{i % 3} " + " ".join(rng.sample(shared, 3)), "positive" if i % 2 else "negative")
                for i in range(12)]
        _write(tmp_path / f"{split}.csv", rows)
    cfg = load_config(None, {"data": {"name": str(tmp_path)}, "method": {"name": "lstm", "min_freq": 1}})
    prepared = prepare(cfg)
    vocab = prepared.tokenizer
    assert set(vocab.itos[2:]) == {"trainword0", "trainword1", "trainword2", *shared}
    # words seen only in validation/test are unknown there
    first_valid = prepared.splits["validation"][0]
    assert first_valid["ids"][0] == UNK_ID and first_valid["length"] == 4
    assert prepared.files == {"vocab.json": vocab.to_json()}
    assert prepared.splits["train"].column_names == ["ids", "length", "label"]
