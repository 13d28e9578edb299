"""ACLSum (Takeshita et al., NAACL 2024) read two ways: summarization, and yes/no over a passage.

The package ships one jsonl per split (100 / 50 / 100 papers): each paper's sentences from its
abstract, introduction and conclusion (tokenized, ``a , b ( c ) .``), and three one-sentence
summaries of at most 25 words written by NLP graduate students, one per aspect: the paper's
challenge, its approach and its outcome. Both readers keep ACLSum's own split.

- ``aclsum`` (:func:`read_aclsum`): one row per paper. ``summary`` is the three aspect summaries
  in that order, a three-sentence TL;DR like CNN/DailyMail's highlights; ``abstract`` is the usual
  source on a CPU budget (median 159 SmolLM2 tokens), ``document`` the three sections (median
  1,138 tokens, ACLSum's own source text) for a longer context.
- ``aclsum-yesno`` (:func:`read_aclsum_yesno`): BoolQ's shape (a passage and a short text, the
  answer yes or no) for encoders: does this summary sentence describe the paper whose abstract is
  the passage? Built from the same files, see :func:`yes_no_pairs`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets

from tunelab.errors import UserError

ASPECTS = ("challenge", "approach", "outcome")
SECTIONS = ("abstract", "introduction", "conclusion")
SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}

_SPACE_BEFORE = re.compile(r" (?=[,.;:%?!)\]}]|'s\b|n't\b)")
_SPACE_AFTER = re.compile(r"(?<=[(\[{]) ")
_COMMON = frozenset(
    "that this these with they their them from which than have been such into more also propose proposed "
    "method methods model models show shows paper work using based".split())
"""Words every aspect summary uses ("They propose a method ..."): not evidence of a topic."""


def detokenize(sentence: str) -> str:
    """ACLSum's tokenized sentence as prose: no space before closing punctuation, ``'s`` and
    ``n't``, nor after an opening bracket (``a , b ( c ) .`` -> ``a, b (c).``)."""
    return _SPACE_AFTER.sub("", _SPACE_BEFORE.sub("", sentence)).strip()


def read_aclsum(folder: Path) -> datasets.DatasetDict:
    """One row per paper: id, title, abstract, document (the three sections, a blank line
    between them), challenge, approach, outcome and summary (the three aspects joined)."""
    return datasets.DatasetDict({split: datasets.Dataset.from_list([paper_row(p) for p in papers])
                                 for split, papers in _papers(folder).items()})


def read_aclsum_yesno(folder: Path) -> datasets.DatasetDict:
    """Two rows per paper and aspect (:func:`yes_no_pairs`): id, aspect, passage (the abstract),
    claim (an aspect summary) and label (no / yes)."""
    features = datasets.Features({"id": datasets.Value("string"), "aspect": datasets.Value("string"),
                                  "passage": datasets.Value("string"), "claim": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["no", "yes"])})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list(yes_no_pairs([paper_row(p) for p in papers]), features=features)
        for split, papers in _papers(folder).items()})


def paper_row(paper: dict) -> dict[str, str]:
    """One ACLSum paper as the columns of :func:`read_aclsum`."""
    sections = {name: _section(paper, name) for name in SECTIONS}
    summaries = {aspect: _sentence(paper["summary"][aspect]) for aspect in ASPECTS}
    return {"id": paper["id"], "title": paper["title"].strip(), "abstract": sections["abstract"],
            "document": "\n\n".join(text for text in sections.values() if text),
            **summaries, "summary": " ".join(summaries.values())}


def yes_no_pairs(rows: list[dict[str, str]]) -> list[dict]:
    """For every paper (a row of :func:`paper_row`) and aspect: its abstract with its own summary
    of that aspect (yes), and with another paper's (no).

    The other paper is the one of the same split whose summary of that aspect shares the most
    topic words with this abstract (ties: the earlier paper), so that a no cannot be told from a
    yes by its topic alone and the model has to read. Summaries come only from the same split: a
    test summary never appears in training. Half the rows are yes, half no.
    """
    pairs = []
    for i, row in enumerate(rows):
        words = _topic_words(row["abstract"])
        for aspect in ASPECTS:
            others = [j for j, other in enumerate(rows) if j != i and other[aspect] != row[aspect]]
            nearest = max(others, key=lambda j: (_share(words, rows[j][aspect]), -j))
            base = {"id": row["id"], "aspect": aspect, "passage": row["abstract"]}
            pairs.append({**base, "claim": row[aspect], "label": 1})
            pairs.append({**base, "claim": rows[nearest][aspect], "label": 0})
    return pairs


def _section(paper: dict, name: str) -> str:
    sentences = (detokenize(s) for s in paper["sentences"][name])
    # Lone footnote marks ("1") are sentences of their own in the source; they are not prose.
    return " ".join(s for s in sentences if any(c.isalpha() for c in s))


def _sentence(text: str) -> str:
    text = text.strip()
    # One of the 750 summaries lacks its full stop; joined, the three must read as three sentences.
    return text if text.endswith((".", "!", "?")) else text + "."


def _topic_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3 and w not in _COMMON}


def _share(words: set[str], claim: str) -> float:
    claim_words = _topic_words(claim)
    return len(words & claim_words) / max(len(claim_words), 1)


def _papers(folder: Path) -> dict[str, list[dict]]:
    missing = [name for name in SPLIT_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder} lacks {', '.join(missing)}; the ACLSum files are not the pinned ones "
                        "(remove the folder and fetch again)")
    return {split: [json.loads(line) for line in (folder / name).read_text(encoding="utf-8").splitlines()
                    if line.strip()]
            for split, name in SPLIT_FILES.items()}
