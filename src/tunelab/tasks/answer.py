"""Questions with a short open answer (GSM8K's numbers, a word), answered by a causal LM.

Unlike ``instruct`` there is no label set: each question has its own gold answer, a column of
the data. Training puts ``answer_prefix``, the gold answer and end-of-sequence after the prompt,
the loss on those tokens; ``loss`` is the mean NLL per gold answer token on every split. On test (and on
validation with ``generate_on_validation``) the model answers greedily in ``max_new_tokens``
tokens and the answer is read back by :func:`read_answer`: ``accuracy`` is the fraction read
equal to the gold one, ``invalid_rate`` the fraction where none could be read (always wrong).

Demonstrations and reasoning are those of ``instruct`` (:mod:`tunelab.tasks.reasoning`): ``shots``
solved questions drawn from train, with ``reasoning: cot`` each showing its written reasoning
and ``answer_marker`` before its answer; ``zero_shot_cot`` puts ``cot_trigger`` after the prompt.
"""

from __future__ import annotations

import random
import re
import sys
from decimal import Decimal, InvalidOperation

import datasets
import torch

from tunelab.errors import UserError
from tunelab.models.loading import check_context_length, load_config, load_tokenizer
from tunelab.tasks import Prepared, causal, decoding, gather_objects, reasoning
from tunelab.tasks.instruct import check_reasoning, with_rationales

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
"""A number as written in an answer: ``18``, ``-3``, ``1,200``, ``0.5`` (a ``$`` before it is not part of it)."""
_SENTENCE_END = re.compile(r"\.(?:\s|$)|\n")


def normal_number(text: str) -> str | None:
    """The first number in ``text`` in one spelling (``1,200.00`` -> ``1200``), or None."""
    found = NUMBER.search(text)
    if found is None:
        return None
    try:
        return format(Decimal(found.group().replace(",", "")).normalize(), "f")
    except InvalidOperation:  # e.g. "1,2,3" reads as 123; a malformed run of digits is no answer
        return None


def normal_text(text: str) -> str | None:
    """The first sentence of ``text``, case-folded, spaces collapsed, quotes and end
    punctuation stripped; None when nothing is left."""
    sentence = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    words = " ".join(sentence.split()).strip(" \"'*:;,!?.").casefold()
    return words or None


def normal_answer(text: str, answer_type: str) -> str | None:
    return normal_number(text) if answer_type == "number" else normal_text(text)


def read_answer(text: str, answer_type: str, marker: str | None = None, stop: str | None = None) -> str | None:
    """The answer a generated output gives, normalised (:func:`normal_answer`), or None (invalid):

    1. With ``stop`` (the separator between demonstrations), the text is cut at its first
       occurrence after any leading white space: past it the model invents a next question.
    2. With ``marker`` (reasoning) present (case-insensitive): the answer right after the last
       occurrence of the marker that an answer follows; none after any marker: None.
    3. With ``marker`` absent from the text: a number answer is the last number of the text (the
       conclusion usually comes last); a text answer is None.
    4. Without reasoning (no ``marker``): the answer the output starts with (its first number).
    """
    if stop:
        text = text.lstrip().split(stop, 1)[0]
    if not marker:
        return normal_answer(text, answer_type)
    pieces = re.split(re.escape(marker), text, flags=re.IGNORECASE)
    if len(pieces) > 1:
        answers = [a for a in (normal_answer(p, answer_type) for p in pieces[1:]) if a is not None]
        return answers[-1] if answers else None
    numbers = NUMBER.findall(text) if answer_type == "number" else []
    return normal_number(numbers[-1]) if numbers else None


def draw_demonstrations(train: datasets.Dataset, k: int, seed: int) -> list[dict]:
    """k training examples drawn by ``seed`` (no labels to balance here)."""
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    return [train[i] for i in order[:k]]


def build_preamble(task, train: datasets.Dataset) -> str:
    if not task.shots:
        return ""
    if task.reasoning == "cot":
        train = with_rationales(train, task.rationale_column, task.shots)
    demos = draw_demonstrations(train, task.shots, task.shots_seed)
    return reasoning.preamble(task, [(d, str(d[task.answer_column]).strip()) for d in demos])


def prepare(cfg, raw: datasets.DatasetDict) -> Prepared:
    task = cfg.task
    causal.check_template(task.template, raw)
    for split_name, split in raw.items():
        if task.answer_column not in split.column_names:
            raise UserError(f"task.answer_column {task.answer_column!r} is not in the {split_name} split; "
                            f"columns: {', '.join(split.column_names)}")
    model_config = load_config(cfg.model)
    check_context_length(cfg, model_config)
    check_reasoning(cfg, model_config)
    tokenizer = load_tokenizer(cfg.model)
    preamble, suffix = build_preamble(task, raw["train"]), reasoning.query_suffix(task)

    # The answer ends in end-of-sequence, as a summary does: a trained model learns to stop there.
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(example):
        gold = str(example[task.answer_column]).strip()
        answer = causal.answer_ids(tokenizer, task.answer_prefix + gold, "the gold answer") + eos
        budget = task.max_length - len(answer)
        prompt = causal.encode_prompt(tokenizer, task.template, example, budget, preamble, suffix)
        return {"prompt_ids": prompt, "answer_ids": answer, "gold": normal_answer(gold, task.answer_type) or gold}

    splits = datasets.DatasetDict({
        name: split.map(encode, remove_columns=split.column_names, keep_in_memory=True) for name, split in raw.items()})
    model, counts = causal.load_model(cfg, tokenizer)
    return Prepared(model, tokenizer, splits, collator(tokenizer.pad_token_id), [], counts, task=sys.modules[__name__],
                    cfg=cfg, extras={"preamble": preamble, "suffix": suffix})


def collator(pad_id: int):
    """Prompt + gold answer per example, with the bare prompts and the normalised gold answers."""
    return causal.continuation_collator(pad_id, "answer_ids", "gold")


loss = causal.loss


@torch.inference_mode()
def evaluate(model, loader, accelerator, prepared, split: str = "validation") -> dict:
    was_training = model.training
    model.eval()
    task = prepared.cfg.task
    generate = split == "test" or task.generate_on_validation
    marker = task.answer_marker if task.reasoning != "none" else None
    unwrapped = accelerator.unwrap_model(model)
    nlls, counts, golds, answers, texts = [], [], [], [], []
    for batch in loader:
        nll, count = causal.token_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        nll, count = accelerator.gather_for_metrics((nll, count))
        nlls += nll.double().tolist()
        counts += count.tolist()
        if generate:
            outputs, _ = decoding.greedy_texts(unwrapped, prepared.tokenizer, batch["prompt_ids"], task.max_new_tokens,
                                               share_prefix=prepared.cfg.method.virtual_tokens == 0)
            read = [read_answer(t, task.answer_type, marker, reasoning.stop_text(task)) for t in outputs]
            texts += gather_objects(accelerator, outputs, len(nll))
            answers += gather_objects(accelerator, read, len(nll))
            golds += gather_objects(accelerator, list(batch["gold"]), len(nll))
    model.train(was_training)
    metrics = {"loss": sum(nlls) / max(sum(counts), 1), "examples": len(nlls)}
    if generate:
        correct = [a is not None and a == g for a, g in zip(answers, golds)]
        metrics.update(accuracy=sum(correct) / max(len(correct), 1),
                       invalid_rate=sum(a is None for a in answers) / max(len(answers), 1))
        prepared.extras[f"{split}_outputs"] = texts
        if split == "test":
            metrics["predictions"] = [
                {"gold": g, "predicted": a, "correct": c, "invalid": a is None, "output": t, "nll": n, "tokens": k}
                for g, a, c, t, n, k in zip(golds, answers, correct, texts, nlls, counts)]
    return metrics


def before_training(model, accelerator, prepared, test_loader) -> dict:
    return {}


def after_training(model, accelerator, prepared) -> dict:
    """The first generated answers on test, to read beside the numbers."""
    outputs = prepared.extras.get("test_outputs", [])[:20]
    return {"samples": outputs} if outputs else {}
