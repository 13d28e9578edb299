"""Classification by a causal LM: a prompt from a template, answered by a label word.

Training puts the gold label word after the prompt; the loss is on the answer tokens (or the
whole sequence, ``loss_on: sequence``). Evaluation reports two accuracies side by side:

- ``score_accuracy``: the label whose answer tokens have the highest total log-likelihood
  after the prompt (every label is always a valid answer);
- ``accuracy`` on test (the course's definition): greedy generation of ``max_new_tokens``
  tokens, mapped to the label whose word the output starts with (case-insensitive, after
  whitespace); any other output is wrong and counted in ``invalid_rate``.

Validation scores only (fast) unless ``generate_on_validation``; its ``accuracy`` is then the
score accuracy. ``loss`` is the mean NLL per gold answer token. ``shots: k`` puts k
demonstrations from train (drawn once by ``shots_seed``, labels taken in turn) before every
prompt, for the zero-/few-shot baselines of ``method: none``. ``reasoning: cot`` shows each
demonstration's written reasoning, ``zero_shot_cot`` puts a trigger after the prompt; the
model then reasons before it answers and the label is read from its whole output
(:mod:`tunelab.tasks.reasoning`). ``score_accuracy`` and ``loss`` still read the label words
right after the prompt: what the model would answer without reasoning.
"""

from __future__ import annotations

import random
import sys

import datasets
import torch

from tunelab.data.labels import label_set
from tunelab.errors import UserError
from tunelab.models.loading import check_context_length, load_config, load_tokenizer
from tunelab.tasks import Prepared, causal, decoding, gather_objects, reasoning


def resolve_label_words(task, names: list[str]) -> list[str]:
    """One word per label, in label order."""
    words = task.label_words
    if words is None:
        return list(names)
    if isinstance(words, list):
        if len(words) != len(names):
            raise UserError(f"task.label_words has {len(words)} words for {len(names)} labels ({', '.join(names)})")
        return list(words)
    missing = [n for n in names if n not in words]
    if missing:
        raise UserError(f"task.label_words has no word for label {missing[0]!r}; labels: {', '.join(names)}")
    return [words[n] for n in names]


def parse_label(output: str, words: list[str]) -> int | None:
    """The label whose word the output starts with (case-insensitive, after whitespace), or None.

    The longest matching word wins, so "not good" is not read as "not" when both are labels.
    """
    text = output.strip().lower()
    matches = [(len(w), i) for i, w in enumerate(words) if w.strip() and text.startswith(w.strip().lower())]
    return max(matches)[1] if matches else None


def read_label(task, output: str, words: list[str]) -> int | None:
    """The label of a generated output: its first word (:func:`parse_label`), or with
    ``reasoning`` the label its reasoning ends in (:func:`tunelab.tasks.reasoning.extract_label`)."""
    if task.reasoning == "none":
        return parse_label(output, words)
    return reasoning.extract_label(output, words, task.answer_marker, reasoning.stop_text(task))


def draw_demonstrations(train: datasets.Dataset, label_column: str, labels, k: int, seed: int) -> list[dict]:
    """k training examples drawn by ``seed``, taking the labels in turn so each one appears."""
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    by_label: dict[int, list[int]] = {}
    for i in order:
        by_label.setdefault(labels.encode(train[i][label_column], "train"), []).append(i)
    picked, queues = [], [q for _, q in sorted(by_label.items())]
    while len(picked) < min(k, len(train)):
        for queue in queues:
            if queue and len(picked) < k:
                picked.append(queue.pop(0))
    random.Random(seed + 1).shuffle(picked)  # no fixed label order right before the query
    return [train[i] for i in picked]


def with_rationales(train: datasets.Dataset, column: str, shots: int) -> datasets.Dataset:
    """The training examples that can be chain-of-thought demonstrations: those with reasoning."""
    if column not in train.column_names:
        raise UserError(f"task.rationale_column {column!r} is not in the train split (reasoning cot shows it in "
                        f"the demonstrations); columns: {', '.join(train.column_names)}")
    kept = train.filter(lambda row: bool(str(row[column] or "").strip()), keep_in_memory=True)
    if len(kept) < shots:
        raise UserError(f"reasoning cot needs {shots} demonstrations with reasoning; only {len(kept)} train rows "
                        f"have a non-empty {column!r}; lower task.shots")
    return kept


def build_preamble(task, data, train: datasets.Dataset, labels, words: list[str]) -> str:
    """The demonstrations before every prompt (:func:`tunelab.tasks.reasoning.demonstration`)."""
    if not task.shots:
        return ""
    if task.reasoning == "cot":
        train = with_rationales(train, task.rationale_column, task.shots)
    demos = draw_demonstrations(train, data.label_column, labels, task.shots, task.shots_seed)
    return reasoning.preamble(task, [(d, words[labels.encode(d[data.label_column], "train")]) for d in demos])


def check_reasoning(cfg, model_config) -> None:
    """Reasoning is a way of prompting: refused with a method that trains, and the prompt and its
    reasoning must fit the model's positions."""
    task = cfg.task
    if task.reasoning == "none":
        return
    if cfg.method.name != "none":
        raise UserError(f"task.reasoning {task.reasoning} is a prompting baseline (method none); "
                        f"method {cfg.method.name} would train the label word right after the prompt, not "
                        "reasoning; set method.name none or task.reasoning none")
    check_context_length(cfg, model_config, task.max_length + task.max_new_tokens,
                         key="task.max_length + task.max_new_tokens")


def prepare(cfg, raw: datasets.DatasetDict) -> Prepared:
    task, data = cfg.task, cfg.data
    causal.check_template(task.template, raw)
    for split_name, split in raw.items():
        if data.label_column not in split.column_names:
            raise UserError(f"data.label_column {data.label_column!r} is not in the {split_name} split; "
                            f"columns: {', '.join(split.column_names)}")
    labels = label_set(raw, data)
    words = resolve_label_words(task, labels.names)
    model_config = load_config(cfg.model)
    check_context_length(cfg, model_config)
    check_reasoning(cfg, model_config)
    tokenizer = load_tokenizer(cfg.model)
    answers = [causal.answer_ids(tokenizer, task.answer_prefix + w, f"label word of {n!r}")
               for w, n in zip(words, labels.names)]
    if len({tuple(a) for a in answers}) < len(answers):
        raise UserError(f"task.label_words {words} do not tokenize to distinct answers; give distinct words")
    preamble = build_preamble(task, data, raw["train"], labels, words)
    suffix = reasoning.query_suffix(task)
    budget = task.max_length - max(len(a) for a in answers)

    def encode(example, split_name):
        prompt = causal.encode_prompt(tokenizer, task.template, example, budget, preamble, suffix)
        # A new column name: reusing the data's `label` would keep its type (text in a CSV).
        return {"prompt_ids": prompt, "label_id": labels.encode(example[data.label_column], split_name)}

    splits = datasets.DatasetDict({
        name: split.map(encode, fn_kwargs={"split_name": name}, remove_columns=split.column_names, keep_in_memory=True)
        for name, split in raw.items()})
    model, counts = causal.load_model(cfg, tokenizer)
    return Prepared(model, tokenizer, splits, collator(tokenizer.pad_token_id, answers, task.loss_on), labels.names,
                    counts, task=sys.modules[__name__], cfg=cfg,
                    extras={"answers": answers, "words": words, "preamble": preamble, "suffix": suffix})


def collator(pad_id: int, answers: list[list[int]], loss_on: str):
    """Prompt + gold answer per example, with the gold label id and the bare prompts (for scoring)."""

    def collate(examples):
        pairs = [causal.prompt_answer(e["prompt_ids"], answers[e["label_id"]], loss_on) for e in examples]
        batch = causal.lm_batch([p for p, _ in pairs], [lab for _, lab in pairs], pad_id)
        batch["label"] = torch.tensor([e["label_id"] for e in examples])
        batch["prompt_ids"] = [list(e["prompt_ids"]) for e in examples]
        return batch

    return collate


loss = causal.loss


def label_nll(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int, device,
              next_logprobs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) summed NLL of every label's answer after every prompt, and (L,) answer lengths.

    Single-token answers are all read from one distribution after the last prompt token (given
    as ``next_logprobs`` when generation already computed it, else from one pass over the
    prompts); a longer answer costs one pass of prompt + answer.
    """
    nlls: list[torch.Tensor | None] = [None] * len(answers)
    single = [j for j, a in enumerate(answers) if len(a) == 1]
    if single and next_logprobs is None:
        batch = causal.lm_batch(prompts, prompts, pad_id)
        next_logprobs = causal.next_token_logprobs(model, batch["input_ids"].to(device),
                                                   batch["attention_mask"].to(device))
    for j in single:
        nlls[j] = -next_logprobs[:, answers[j][0]]
    for j, answer in enumerate(answers):
        if nlls[j] is None:
            pairs = [causal.prompt_answer(p, answer) for p in prompts]
            batch = causal.lm_batch([x for x, _ in pairs], [y for _, y in pairs], pad_id)
            nlls[j], _ = causal.token_nll(model, *(batch[k].to(device)
                                                   for k in ("input_ids", "attention_mask", "labels")))
    return torch.stack(nlls, dim=1), torch.tensor([len(a) for a in answers], device=device)


def score_batch(model, unwrapped, batch, prepared, generate: bool) -> dict[str, torch.Tensor]:
    """Per-example results of one batch: the gold answer's NLL and length, the label picked by
    likelihood and its probability among the labels, and (``generate``) the generated label.
    ``unwrapped``: the model as Hugging Face ``generate`` needs it (not Accelerate's wrapper)."""
    answers, gold = prepared.extras["answers"], batch["label"]
    # One pass gives the distribution after each prompt (what scoring needs) and, when asked,
    # the greedy answer; the prompts' shared beginning is computed once (tunelab.tasks.decoding).
    texts, first = decoding.greedy_texts(unwrapped, prepared.tokenizer, batch["prompt_ids"],
                                         prepared.cfg.task.max_new_tokens if generate else 0,
                                         share_prefix=prepared.cfg.method.virtual_tokens == 0)
    nll, lengths = label_nll(model, batch["prompt_ids"], answers, prepared.tokenizer.pad_token_id, gold.device, first)
    chosen = (-nll).softmax(1)  # (B, L): the labels' probabilities, renormalised among the labels
    result = {"gold_nll": nll.gather(1, gold[:, None]).squeeze(1), "gold_tokens": lengths[gold],
              "scored": nll.argmin(1), "scored_probability": chosen.max(1).values, "gold": gold}
    if generate:
        parsed = [read_label(prepared.cfg.task, t, prepared.extras["words"]) for t in texts]
        result["generated"] = torch.tensor([-1 if p is None else p for p in parsed], device=gold.device)
        result["texts"] = texts
    return result


@torch.inference_mode()
def evaluate(model, loader, accelerator, prepared, split: str = "validation") -> dict:
    was_training = model.training
    model.eval()
    generate = split == "test" or prepared.cfg.task.generate_on_validation
    keys = ["gold_nll", "gold_tokens", "scored", "scored_probability", "gold"] + (["generated"] if generate else [])
    columns: dict[str, list] = {key: [] for key in keys + ["texts"]}
    unwrapped = accelerator.unwrap_model(model)
    for batch in loader:
        result = score_batch(model, unwrapped, batch, prepared, generate)
        gathered = accelerator.gather_for_metrics(tuple(result[k] for k in keys))
        for key, values in zip(keys, gathered):
            columns[key].append(values.cpu())
        columns["texts"] += gather_objects(accelerator, result.get("texts", []), len(gathered[0]))
    model.train(was_training)
    c = {key: torch.cat(values) for key, values in columns.items() if key != "texts"}
    score_accuracy = (c["scored"] == c["gold"]).float().mean().item()
    metrics = {"loss": (c["gold_nll"].double().sum() / c["gold_tokens"].sum()).item(), "score_accuracy": score_accuracy,
               "accuracy": score_accuracy, "examples": int(c["gold"].numel())}
    if generate:
        accuracy = (c["generated"] == c["gold"]).float().mean().item()
        metrics.update(accuracy=accuracy, generate_accuracy=accuracy,
                       invalid_rate=(c["generated"] < 0).float().mean().item())
        prepared.extras[f"{split}_outputs"] = columns["texts"]
    if split == "test":
        metrics["predictions"] = predictions(c, columns["texts"], prepared.label_names, generate)
    return metrics


def predictions(c: dict[str, torch.Tensor], texts: list[str], names: list[str], generated: bool) -> list[dict]:
    """predictions.jsonl records: the generated label (null when the output is no label) beside
    the label picked by likelihood."""
    rows = []
    for i, gold in enumerate(c["gold"].tolist()):
        scored = int(c["scored"][i])
        row = {"gold": names[gold], "score": float(c["scored_probability"][i]),
               "score_predicted": names[scored], "score_correct": scored == gold,
               "nll": float(c["gold_nll"][i]), "tokens": int(c["gold_tokens"][i])}
        if generated:
            label = int(c["generated"][i])
            row.update(predicted=names[label] if label >= 0 else None, correct=label == gold, invalid=label < 0,
                       output=texts[i])
        else:
            row.update(predicted=names[scored], correct=scored == gold)
        rows.append(row)
    return rows


def before_training(model, accelerator, prepared, test_loader) -> dict:
    return {}


def after_training(model, accelerator, prepared) -> dict:
    """The first generated answers on test, to read beside the numbers."""
    outputs = prepared.extras.get("test_outputs", [])[:20]
    return {"samples": outputs} if outputs else {}
