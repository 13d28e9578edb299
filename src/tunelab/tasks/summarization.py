"""Summarization by a causal LM: ``{article}\\nTL;DR:`` followed by the summary.

The article is truncated so prompt and summary fit ``max_length``; the loss is on the summary
tokens (and the end-of-sequence token that closes it). Evaluation: the loss on every split, and
on test ROUGE-1/2/L F1 (Google's ``rouge-score`` package, stemming on) of greedy generations of
``max_new_tokens`` against the full reference summaries.
"""

from __future__ import annotations

import sys

import datasets
import torch

from tunelab.errors import UserError
from tunelab.models.loading import check_context_length, load_config, load_tokenizer
from tunelab.tasks import Prepared, causal, gather_objects

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_per_example(predictions: list[str], references: list[str]) -> list[dict[str, float]]:
    """ROUGE-1/2/L F1 of every pair, from the reference implementation (stemming on)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return [{name: score.fmeasure for name, score in scorer.score(reference, prediction).items()}
            for prediction, reference in zip(predictions, references)]


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over the pairs."""
    scores = rouge_per_example(predictions, references)
    return {name: sum(s[name] for s in scores) / max(len(scores), 1) for name in ROUGE_TYPES}


def prepare(cfg, raw: datasets.DatasetDict) -> Prepared:
    task = cfg.task
    causal.check_template(task.template, raw)
    for split_name, split in raw.items():
        if task.summary_column not in split.column_names:
            raise UserError(f"task.summary_column {task.summary_column!r} is not in the {split_name} split; "
                            f"columns: {', '.join(split.column_names)}")
    check_context_length(cfg, load_config(cfg.model))
    tokenizer = load_tokenizer(cfg.model)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    budget = task.max_length - max(task.max_summary_tokens + len(eos), task.max_new_tokens)
    if budget < 8:
        raise UserError(f"task.max_length {task.max_length} leaves {budget} tokens for the article after the summary; "
                        "raise task.max_length or lower task.max_summary_tokens / task.max_new_tokens")

    def encode(example):
        summary = str(example[task.summary_column] or "")
        ids = tokenizer(task.answer_prefix + summary, add_special_tokens=False)["input_ids"][:task.max_summary_tokens]
        return {"prompt_ids": causal.encode_prompt(tokenizer, task.template, example, budget),
                "summary_ids": ids + eos, "reference": summary}

    splits = datasets.DatasetDict({
        name: split.map(encode, remove_columns=split.column_names, keep_in_memory=True) for name, split in raw.items()})
    model, counts = causal.load_model(cfg, tokenizer)
    return Prepared(model, tokenizer, splits, collator(tokenizer.pad_token_id), [], counts, task=sys.modules[__name__],
                    cfg=cfg)


def collator(pad_id: int):
    """Prompt + summary per example, with the bare prompts and references (for ROUGE)."""
    return causal.continuation_collator(pad_id, "summary_ids", "reference")


loss = causal.loss


@torch.inference_mode()
def evaluate(model, loader, accelerator, prepared, split: str = "validation") -> dict:
    was_training = model.training
    model.eval()
    task = prepared.cfg.task
    generate = split == "test" or task.rouge_on_validation
    unwrapped = accelerator.unwrap_model(model)
    nlls, counts, predictions, references = [], [], [], []
    for batch in loader:
        nll, count = causal.token_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        nll, count = accelerator.gather_for_metrics((nll, count))
        nlls += nll.double().tolist()
        counts += count.tolist()
        if generate:
            texts = [t.strip() for t in causal.generate(unwrapped, prepared.tokenizer, batch["prompt_ids"],
                                                         task.max_new_tokens)]
            predictions += gather_objects(accelerator, texts, len(nll))
            references += gather_objects(accelerator, list(batch["reference"]), len(nll))
    model.train(was_training)
    metrics = {"loss": sum(nlls) / max(sum(counts), 1), "examples": len(loader.dataset)}
    if generate:
        scores = rouge_per_example(predictions, references)
        metrics.update({name: sum(s[name] for s in scores) / max(len(scores), 1) for name in ROUGE_TYPES})
        prepared.extras[f"{split}_outputs"] = list(zip(predictions, references))
        if split == "test":
            metrics["predictions"] = [{"gold": r, "predicted": p, "score": s["rougeL"], "correct": None, **s,
                                       "nll": n, "tokens": c}
                                      for p, r, s, n, c in zip(predictions, references, scores, nlls, counts)]
    return metrics


def before_training(model, accelerator, prepared, test_loader) -> dict:
    return {}


def after_training(model, accelerator, prepared) -> dict:
    pairs = prepared.extras.get("test_outputs", [])[:10]
    return {"samples": [{"generated": g, "reference": r} for g, r in pairs]} if pairs else {}
