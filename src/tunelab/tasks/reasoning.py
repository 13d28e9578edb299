"""The text of instruct prompts with demonstrations or reasoning, and the answer read back.

``task.reasoning`` picks how the model reaches its answer (tested as text):

- ``none``: each of ``shots`` demonstrations is the rendered template, ``answer_prefix`` and
  its label word; the model's output must start with a label word
  (:func:`tunelab.tasks.instruct.parse_label`).
- ``cot``, chain-of-thought prompting (Wei et al. 2022, "Chain-of-Thought Prompting Elicits
  Reasoning in Large Language Models"): each demonstration shows its written reasoning (the
  ``rationale_column`` of train), then ``answer_marker`` and the label word, so the model
  writes reasoning of its own before answering.
- ``zero_shot_cot`` (Kojima et al. 2022, "Large Language Models are Zero-Shot Reasoners"): no
  demonstrations; ``cot_trigger`` ("Let's think step by step.") follows the prompt.

With reasoning, the label is read from the generated text by :func:`extract_label` (its
``stop``: :func:`stop_text`). Kojima et al. read it with a second prompt ("Therefore, the
answer is"); tunelab reads the one generated text by a fixed rule instead, so every output is
judged the same way and none costs a second pass.
"""

from __future__ import annotations

import re
from typing import Any

from tunelab.tasks.causal import render


def demonstration(task, example: dict[str, Any], word: str) -> str:
    """One solved example, as it precedes the prompt; ``word`` is its label word::

        none: {template}{answer_prefix}{word}{shot_separator}
        cot:  {template}{answer_prefix}{rationale} {answer_marker}{answer_prefix}{word}.{shot_separator}

    ``{template}`` is the template filled from the example and ``{rationale}`` its
    ``rationale_column``, stripped of surrounding white space.
    """
    shown = render(task.template, example) + task.answer_prefix
    if task.reasoning == "cot":
        rationale = str(example[task.rationale_column]).strip()
        return f"{shown}{rationale} {task.answer_marker}{task.answer_prefix}{word}.{task.shot_separator}"
    return f"{shown}{word}{task.shot_separator}"


def query_suffix(task) -> str:
    """What follows the filled template of the question being asked: ``{answer_prefix}{cot_trigger}``
    with ``zero_shot_cot``, else nothing (the model continues right after the template)."""
    return task.answer_prefix + task.cot_trigger if task.reasoning == "zero_shot_cot" else ""


def preamble(task, demonstrations: list[tuple[dict[str, Any], str]]) -> str:
    """Every (demonstration, its label word) in turn, as they precede each prompt."""
    return "".join(demonstration(task, example, word) for example, word in demonstrations)


def prompt_text(task, demonstrations: list[tuple[dict[str, Any], str]], example: dict[str, Any]) -> str:
    """The whole prompt of ``example``: :func:`preamble`, the filled template, :func:`query_suffix`.
    (Tokenized, the longest field of the question is cut when the prompt is over budget:
    :func:`tunelab.tasks.causal.encode_prompt`.)"""
    return preamble(task, demonstrations) + render(task.template, example) + query_suffix(task)


def label_mentions(text: str, words: list[str]) -> list[int]:
    """The labels whose words occur in ``text`` as whole words (case-insensitive), in order of
    occurrence. Where words overlap the longer one counts ("not good" once, not also "good")."""
    found = []
    for i, word in enumerate(words):
        if word.strip():
            pattern = rf"(?<!\w){re.escape(word.strip())}(?!\w)"
            found += [(m.start(), -len(m.group()), m.end(), i) for m in re.finditer(pattern, text, re.IGNORECASE)]
    labels, end = [], 0
    for start, _, finish, i in sorted(found):
        if start >= end:
            labels.append(i)
            end = finish
    return labels


def extract_label(text: str, words: list[str], marker: str, stop: str | None = None) -> int | None:
    """The label a generated chain of reasoning ends in, or None (counted as invalid):

    1. With ``stop`` (the separator between demonstrations), the text is cut at its first
       occurrence after any leading white space: past it the model invents a next example.
    2. Where ``marker`` occurs (case-insensitive): the first label word after the last
       occurrence of the marker that a label word follows ("So the answer is yes. ... So the
       answer is no." reads no: the model's last word on it). No label word after any
       marker: None (the model answered, and not with a label).
    3. No marker: the last label word anywhere (the conclusion usually comes last).
    """
    if stop:
        text = text.lstrip().split(stop, 1)[0]
    pieces = re.split(re.escape(marker), text, flags=re.IGNORECASE) if marker else [text]
    if len(pieces) > 1:  # pieces[k]: the text from the k-th marker to the next one
        answers = [mentions[0] for mentions in (label_mentions(p, words) for p in pieces[1:]) if mentions]
        return answers[-1] if answers else None
    mentions = label_mentions(text, words)
    return mentions[-1] if mentions else None


def stop_text(task) -> str | None:
    """Where a ``cot`` output stops being the answer to the question asked: the separator of
    the demonstrations. None for zero-shot CoT, and for a separator of spaces only (cutting
    there would cut inside the reasoning)."""
    return task.shot_separator if task.reasoning == "cot" and task.shot_separator.strip(" ") else None
