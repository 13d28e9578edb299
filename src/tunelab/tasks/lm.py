"""Language modeling on a text corpus, with honest perplexity.

Training: the documents of the train split are tokenized, joined (end-of-sequence token between
documents) and cut into blocks of ``block_size``; every token of a block but the first is
predicted. Evaluation: perplexity = exp(total token NLL / number of predicted tokens) over the
concatenated split, read through windows of ``block_size`` moved by ``stride`` < ``block_size``:
every token after the first is predicted exactly once, with the context its window gives.
With ``stride == block_size`` it is the plain block computation (each block on its own, its
first token unpredicted). Padding is never counted.
"""

from __future__ import annotations

import math
import sys

import datasets
import torch

from tunelab.errors import UserError
from tunelab.models.loading import check_context_length, load_config, load_tokenizer
from tunelab.tasks import Prepared, causal


def token_stream(texts: list[str], tokenizer, join: str) -> list[int]:
    """All documents as one list of token ids; documents end with EOS when ``join == "eos"``."""
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if join == "eos" and tokenizer.eos_token_id is not None else []
    return [token for ids in encoded if ids for token in [*ids, *eos]]


def blocks(ids: list[int], block_size: int) -> list[list[int]]:
    """Consecutive full blocks for training; a shorter remainder is dropped."""
    return [ids[i:i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]


def sliding_windows(ids: list[int], block_size: int, stride: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) windows; no token is predicted twice.

    A window starts every ``stride`` tokens and spans ``block_size``; it is labelled only on
    the tokens no earlier window predicted, so overlapping tokens serve as context alone. A
    window's first position has no context and is never predicted, which matters only when
    windows do not overlap (``stride == block_size``).
    """
    windows = []
    predicted_until = 0  # tokens before this index are predicted (or are token 0)
    for begin in range(0, max(len(ids) - 1, 1), stride):
        end = min(begin + block_size, len(ids))
        window = ids[begin:end]
        new = end - predicted_until
        labels = [causal.IGNORE] * (len(window) - new) + window[len(window) - new:]
        windows.append((window, labels))
        predicted_until = end
        if end == len(ids):
            break
    return windows


def prepare(cfg, raw: datasets.DatasetDict) -> Prepared:
    task = cfg.task
    column = cfg.data.text_column
    for split_name, split in raw.items():
        if column not in split.column_names:
            raise UserError(f"data.text_column {column!r} is not in the {split_name} split; "
                            f"columns: {', '.join(split.column_names)}")
    check_context_length(cfg, load_config(cfg.model), task.block_size, key="task.block_size")
    tokenizer = load_tokenizer(cfg.model)
    streams = {name: token_stream([t or "" for t in split[column]], tokenizer, task.join)
               for name, split in raw.items()}
    train_blocks = blocks(streams["train"], task.block_size)
    if not train_blocks:
        raise UserError(f"the train split has {len(streams['train'])} tokens, fewer than one block of "
                        f"task.block_size {task.block_size}; lower task.block_size or give more text")
    stride = task.stride or task.block_size
    splits = {"train": datasets.Dataset.from_dict({"input_ids": train_blocks, "labels": train_blocks})}
    for name in ("validation", "test"):
        if len(streams[name]) < 2:
            raise UserError(f"the {name} split has {len(streams[name])} tokens; need at least 2 to measure perplexity")
        windows = sliding_windows(streams[name], task.block_size, stride)
        splits[name] = datasets.Dataset.from_dict({"input_ids": [w for w, _ in windows],
                                                   "labels": [lab for _, lab in windows]})
    model, counts = causal.load_model(cfg, tokenizer)
    return Prepared(model, tokenizer, datasets.DatasetDict(splits), collator(tokenizer.pad_token_id), [], counts,
                    task=sys.modules[__name__], cfg=cfg)


def collator(pad_id: int):
    """Right-padded blocks (or windows) with their labels."""

    def collate(examples):
        return causal.lm_batch([e["input_ids"] for e in examples], [e["labels"] for e in examples], pad_id)

    return collate


loss = causal.loss


@torch.inference_mode()
def evaluate(model, loader, accelerator, prepared=None, split: str = "validation") -> dict:
    """Token-level NLL over the split: loss (mean per predicted token) and perplexity; on test
    also each window's summed NLL and predicted-token count."""
    was_training = model.training
    model.eval()
    nlls, counts = [], []
    for batch in loader:
        nll, count = causal.token_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        nll, count = accelerator.gather_for_metrics((nll, count))
        nlls.append(nll.double().cpu())
        counts.append(count.cpu())
    model.train(was_training)
    nll, count = torch.cat(nlls), torch.cat(counts)
    total_tokens = int(count.sum())
    loss = nll.sum().item() / max(total_tokens, 1)
    metrics = {"loss": loss, "perplexity": math.exp(loss), "tokens": total_tokens}
    if split == "test":
        metrics["predictions"] = [{"gold": None, "predicted": None, "score": n, "correct": None, "tokens": c, "nll": n}
                                  for n, c in zip(nll.tolist(), count.tolist())]
    return metrics


def samples(model, prepared) -> list[str]:
    """Greedy continuations of the fixed sample prompts."""
    task = prepared.cfg.task
    prompts = [prepared.tokenizer(p)["input_ids"] for p in task.sample_prompts]
    return [p + c for p, c in zip(task.sample_prompts,
                                  causal.generate(model, prepared.tokenizer, prompts, task.sample_max_new_tokens))]


def before_training(model, accelerator, prepared, test_loader) -> dict:
    """The base model's test perplexity and samples, to set beside the fine-tuned ones."""
    if not prepared.cfg.task.eval_before:
        return {}
    return {"test": evaluate(model, test_loader, accelerator, prepared, "test"), "samples": samples(model, prepared)}


def after_training(model, accelerator, prepared) -> dict:
    return {"samples": samples(model, prepared)}
