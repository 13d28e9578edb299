"""A word vocabulary for the LSTM baseline, built from the training texts only.

Words are what is left of a text after lower-casing, stripping punctuation and splitting on
white space, minus the stop words. A word enters the vocabulary when it occurs at least
``min_freq`` times in the training split; every other word maps to ``<unk>``. ``<pad>`` is id 0
and ``<unk>`` id 1, as in the course's lab; real words follow in order of decreasing frequency
(ties alphabetically), so the same training texts always give the same ids.

Dataset items are ``{"ids", "length", "label"}`` as in the lab; :func:`collate` pads a batch
dynamically and names its tensors like the encoder batches (``input_ids``, ``attention_mask``,
``labels``), so the one training loop runs the LSTM unchanged.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Callable, Iterable

import datasets
import torch

from tunelab.errors import UserError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

# tunelab's own English stop-word list rather than a package's: NLTK's list needs a corpus
# download from outside PyPI (impossible offline), and the PyPI `stop-words` list (1,300 words)
# treats sentiment words such as "good", "great", "best" and "well" as stop words, which would
# blind a sentiment baseline. This list holds only function words: articles, pronouns,
# auxiliary verbs, prepositions, conjunctions and a few discourse adverbs. Negations ("no",
# "not", "nor", "never", "dont", "isnt", ...) are deliberately NOT stop words: they flip the
# sentiment of what follows. Entries are written as they look after punctuation is deleted
# ("its", "youre"), since that is how words are compared.
ENGLISH_STOP_WORDS = frozenset("""
a an the
i me my mine myself we us our ours ourselves you your yours yourself yourselves youre youve youll youd
he him his himself hes she her hers herself shes it its itself they them their theirs themselves theyre
theyve this that these those thats who whom whose which what whats
am is are was were be been being have has had having do does did doing im ive ill id
will would shall should can could may might must
at by for from in into of off on onto out over to up down under about above below between through
during before after against upon with within without along across toward towards around
and or but if because as until while so than then also either neither both each
there theres here when where why how whenever wherever
all any some such own same other another just
""".split())

STOP_WORD_LISTS: dict[str, frozenset[str]] = {"english": ENGLISH_STOP_WORDS, "none": frozenset()}

# Apostrophes are deleted, so a contraction stays one word ("don't" -> "dont"); every other
# character that is neither a word character nor white space becomes a space, so "good--bad"
# and "plot/acting" split in two instead of gluing into one unknown word. ("_" is a word
# character to the regex engine but punctuation to a reader.)
_APOSTROPHES = re.compile(r"['\u2019`]")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def words(text: str, stop_words: frozenset[str] = ENGLISH_STOP_WORDS) -> list[str]:
    """Lower-case, strip punctuation, split on white space, drop stop words."""
    text = _PUNCTUATION.sub(" ", _APOSTROPHES.sub("", text.lower()))
    return [w for w in text.split() if w not in stop_words]


class Vocabulary:
    """Word <-> id; ids 0 and 1 are ``<pad>`` and ``<unk>``."""

    def __init__(self, itos: list[str], stop_words: str = "english"):
        if itos[:2] != [PAD, UNK] or len(set(itos)) != len(itos):
            raise ValueError("a vocabulary must start with <pad>, <unk> and list every word once")
        if stop_words not in STOP_WORD_LISTS:
            raise ValueError(f"unknown stop-word list {stop_words!r}; known: {', '.join(STOP_WORD_LISTS)}")
        self.itos = list(itos)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.stop_words = stop_words

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and (self.itos, self.stop_words) == (other.itos, other.stop_words)

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 5, stop_words: str = "english") -> "Vocabulary":
        """Count the words of ``texts`` (the train split only) and keep those seen ``min_freq`` times."""
        if min_freq < 1:
            raise UserError(f"method.min_freq must be at least 1 (got {min_freq})")
        if stop_words not in STOP_WORD_LISTS:
            raise UserError(f"unknown stop-word list {stop_words!r}; known: {', '.join(STOP_WORD_LISTS)}")
        counts: Counter[str] = Counter()
        n_texts = 0
        for text in texts:
            counts.update(words(text, STOP_WORD_LISTS[stop_words]))
            n_texts += 1
        if not counts:
            raise UserError(f"the vocabulary is empty: the {n_texts} training texts have no words left after "
                            f"lower-casing, stripping punctuation and removing stop words (method.stop_words "
                            f"{stop_words}); check data.text_column or set method.stop_words none")
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if not kept:
            top = max(counts.values())
            raise UserError(f"the vocabulary is empty: no word occurs method.min_freq={min_freq} times in the "
                            f"train split (the most frequent occurs {top} times); "
                            f"lower method.min_freq to at most {top}")
        return cls([PAD, UNK, *kept], stop_words)

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Word ids of ``text``, unknown words as ``<unk>``, cut to the first ``max_length``."""
        ids = [self.stoi.get(w, UNK_ID) for w in words(text, STOP_WORD_LISTS[self.stop_words])]
        return ids[:max_length] if max_length is not None else ids

    def to_json(self) -> str:
        return json.dumps({"stop_words": self.stop_words, "itos": self.itos}, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Vocabulary":
        try:
            data = json.loads(text)
            return cls(list(data["itos"]), data["stop_words"])
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise UserError(f"{VOCAB_FILE} is not a tunelab vocabulary ({type(exc).__name__}: {exc}); "
                            "delete it to rebuild it from the train split") from None


def item(vocab: Vocabulary, text: str, max_length: int, label: int = -1) -> dict:
    """One dataset item as in the lab: token ids, their count and the label id (-1: none).

    A text with no words left becomes a single ``<unk>``: the LSTM needs at least one step,
    and nothing in the text is known."""
    ids = vocab.encode(text, max_length) or [UNK_ID]
    return {"ids": ids, "length": len(ids), "label": label}


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest item (on the right) and name the tensors as the loop expects."""
    longest = max(it["length"] for it in items)
    input_ids = torch.full((len(items), longest), PAD_ID, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(items), longest), dtype=torch.long)  # (B, T)
    for row, it in enumerate(items):
        input_ids[row, : it["length"]] = torch.as_tensor(it["ids"], dtype=torch.long)
        attention_mask[row, : it["length"]] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if all(it.get("label", -1) >= 0 for it in items):
        batch["labels"] = torch.tensor([it["label"] for it in items], dtype=torch.long)
    return batch


VOCAB_FILE = "vocab.json"
"""Where a run directory keeps its vocabulary (written by ``tunelab train``)."""


def encode_splits(splits: datasets.DatasetDict, vocab: Vocabulary, text_column: str, label_column: str,
                  max_length: int, encode_label: Callable[[object, str], int]) -> datasets.DatasetDict:
    """Every split as lab items ``{ids, length, label}``; ``encode_label(value, split)`` maps a
    raw label to its id (and refuses labels outside the label set)."""

    def encode(split: datasets.Dataset, split_name: str) -> datasets.Dataset:
        # Built afresh rather than with Dataset.map, which would keep a string `label` column's type.
        items = [item(vocab, text, max_length, encode_label(value, split_name))
                 for text, value in zip(split[text_column], split[label_column])]
        return datasets.Dataset.from_dict({key: [it[key] for it in items] for key in ("ids", "length", "label")})

    return datasets.DatasetDict({name: encode(split, name) for name, split in splits.items()})
