"""What the causal-LM tasks (instruct, lm, summarization) share.

- loading a causal LM and applying the method to it;
- prompt templates with ``{field}`` placeholders, rendered and truncated to a token budget;
- :func:`token_nll`: per-example negative log-likelihood of the labelled tokens, projecting
  hidden states onto the vocabulary only where there is a label (for a 135M model with a
  49k vocabulary the projection of every position is most of the forward's cost);
- batched greedy generation with left padding and the KV cache.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import datasets
import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import UserError
from tunelab.methods import apply_method
from tunelab.methods.common import count_parameters
from tunelab.models.families import transformer_body, unwrapped
from tunelab.models.loading import load_causal_lm
from tunelab.sharding import output_head, sharded_module
from tunelab.tasks import batch_counts

IGNORE = -100  # label of positions that are not predicted (prompt, padding, virtual tokens)
FIELD = re.compile(r"\{(\w+)\}")


# --------------------------------------------------------------------------------------------
# Model


def load_model(cfg, tokenizer):
    """The causal LM with the configured method applied; returns (model, parameter counts)."""
    from accelerate.utils import set_seed

    model = load_causal_lm(cfg.model)
    if model.get_output_embeddings() is None:
        raise UserError(f"model {cfg.model.name!r} has no language-model head; task {cfg.task.name} needs a causal LM "
                        "(e.g. smollm2-135m, gpt2)")
    base_total = sum(p.numel() for p in model.parameters())
    set_seed(cfg.train.seed)  # the method's tensors start the same for the same seed
    apply_method(model, cfg.method, tokenizer=tokenizer)
    return model, count_parameters(model, base_total)


# --------------------------------------------------------------------------------------------
# Templates


def template_fields(template: str) -> list[str]:
    return list(dict.fromkeys(FIELD.findall(template)))


def check_template(template: str, splits: datasets.DatasetDict, key: str = "task.template") -> list[str]:
    """Every field the template names must be a column of every split."""
    fields = template_fields(template)
    if not fields:
        raise UserError(f"{key} {template!r} names no data field; put one in braces, e.g. {{text}}")
    for split_name, split in splits.items():
        missing = [f for f in fields if f not in split.column_names]
        if missing:
            raise UserError(f"{key} names field {{{missing[0]}}} that the {split_name} split lacks; "
                            f"fields there: {', '.join(split.column_names)}")
    return fields


def render(template: str, example: dict[str, Any]) -> str:
    # Not str.format: a template may hold literal braces (code, JSON) besides the fields.
    return FIELD.sub(lambda m: str(example[m.group(1)]) if m.group(1) in example else m.group(0), template)


def encode_prompt(tokenizer, template: str, example: dict[str, Any], budget: int, preamble: str = "",
                  suffix: str = "") -> list[int]:
    """Token ids of ``preamble + template + suffix``, the template filled from ``example``, at
    most ``budget`` long.

    When too long, the longest field is cut (its tokens shortened by the overflow and decoded
    back), so the instruction and the answer cue at the end of the template always survive.
    """
    example = {k: ("" if v is None else str(v)) for k, v in example.items()}
    fields = template_fields(template)
    for _ in range(4):
        ids = tokenizer(preamble + render(template, example) + suffix)["input_ids"]
        overflow = len(ids) - budget
        if overflow <= 0:
            return ids
        longest = max(fields, key=lambda f: len(example.get(f, "")))
        field_ids = tokenizer(example[longest], add_special_tokens=False)["input_ids"]
        if not field_ids:
            break
        example[longest] = tokenizer.decode(field_ids[:max(len(field_ids) - overflow - 2, 0)])
    ids = tokenizer(preamble + render(template, example) + suffix)["input_ids"]
    if len(ids) > budget:
        raise UserError(f"the prompt without its data fields is {len(ids)} tokens, more than the {budget} allowed; "
                        "raise task.max_length or shorten task.template (or use fewer task.shots)")
    return ids


def answer_ids(tokenizer, text: str, key: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"{key} {text!r} tokenizes to nothing; give a non-empty word")
    return ids


# --------------------------------------------------------------------------------------------
# Batches


def pad(sequences: Iterable[list[int]], value: int, left: bool = False) -> torch.Tensor:
    sequences = list(sequences)
    width = max(len(s) for s in sequences)
    rows = [([value] * (width - len(s)) + list(s)) if left else (list(s) + [value] * (width - len(s)))
            for s in sequences]
    return torch.tensor(rows, dtype=torch.long)


def lm_batch(inputs: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask and labels (padding never has a label)."""
    return {"input_ids": pad(inputs, pad_id), "attention_mask": pad([[1] * len(s) for s in inputs], 0),
            "labels": pad(labels, IGNORE)}


def prompt_answer(prompt: list[int], answer: list[int], loss_on: str = "answer") -> tuple[list[int], list[int]]:
    """Input ids and labels of a prompt followed by its answer."""
    labels = list(prompt) + list(answer) if loss_on == "sequence" else [IGNORE] * len(prompt) + list(answer)
    return list(prompt) + list(answer), labels


def continuation_collator(pad_id: int, continuation: str, carried: str):
    """Batches of prompt + ``continuation`` (a column of token ids: a summary, a gold answer) with
    the loss on the continuation, the bare prompts (for generation) and the ``carried`` column of
    each example as a list (the reference text the generations are scored against)."""

    def collate(examples):
        pairs = [prompt_answer(e["prompt_ids"], e[continuation]) for e in examples]
        batch = lm_batch([p for p, _ in pairs], [lab for _, lab in pairs], pad_id)
        batch["prompt_ids"] = [list(e["prompt_ids"]) for e in examples]
        batch[carried] = [e[carried] for e in examples]
        return batch

    return collate


# --------------------------------------------------------------------------------------------
# Likelihood


def token_nll(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of each example's labelled tokens, and their count.

    ``labels[b, t]`` is the token expected at position t (``IGNORE`` where nothing is expected),
    predicted from positions < t; position 0 is never predicted. Returns two (B,) tensors.
    """
    hidden = last_hidden(model, input_ids, attention_mask)  # (B, T, H)
    targets = labels[:, 1:]  # (B, T-1)
    mask = targets != IGNORE
    picked = hidden[:, :-1][mask]  # (N, H): only the positions that predict a label
    logits = output_head(model)(picked).float()  # (N, V)
    nll = F.cross_entropy(logits, targets[mask], reduction="none")  # (N,)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device).unsqueeze(1).expand_as(mask)[mask]
    per_example = torch.zeros(input_ids.shape[0], device=nll.device, dtype=nll.dtype).index_add_(0, rows, nll)
    return per_example, mask.sum(1)


def next_token_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, V) log-probabilities of the token after each right-padded sequence's last real token."""
    hidden = last_hidden(model, input_ids, attention_mask)  # (B, T, H)
    last = attention_mask.sum(1) - 1  # (B,)
    picked = hidden[torch.arange(input_ids.shape[0], device=input_ids.device), last]  # (B, H)
    return output_head(model)(picked).float().log_softmax(-1)


def last_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The body's last hidden states, (B, T, H), without the (B, T, V) logits of every position.

    Alone, the body is called directly. A model wrapped for several processes (DDP) must be
    called whole, or its gradients are not averaged across processes: it then runs with the
    logits of one position only, and a hook on the body keeps the body's output (after the
    method's own hooks, e.g. prompt tuning dropping its virtual positions)."""
    if unwrapped(model) is model and not sharded_module(model):  # a sharded model gathers its weights as a whole
        return transformer_body(model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    kept = {}
    hook = transformer_body(model).register_forward_hook(lambda _, __, out: kept.update(hidden=out.last_hidden_state))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
    finally:
        hook.remove()
    return kept["hidden"]


def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Training loss of every causal-LM task: mean NLL over every labelled token of the batch."""
    nll, count = token_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return nll.sum() / tokens_per_process(count.sum()).clamp(min=1), batch_counts(batch)


def tokens_per_process(count: torch.Tensor) -> torch.Tensor:
    """The labelled tokens of the whole global batch over the number of processes. Several
    processes average their gradients; with each loss divided by this, the average is the
    gradient of the mean over every token of the global batch, as one process would take it,
    not a mean of per-process means (processes' slices hold different numbers of tokens)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return count
    total = count.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


# --------------------------------------------------------------------------------------------
# Generation


PURE_SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
"""Sampling from the model's whole distribution (temperature 1, nothing truncated), as DPO's
samples and preference pairs are drawn."""


def continue_ids(model: nn.Module, tokenizer, prompts: list[list[int]], **generation) -> torch.Tensor:
    """The new token ids after each prompt from Hugging Face ``generate``, (B x
    num_return_sequences, T_new): the prompts batched with left padding, so every row ends where
    generation starts, with the tokenizer's pad and end-of-sequence tokens. ``generation``: any
    ``generate`` argument (``max_new_tokens``, ``generation_config``, ``PURE_SAMPLING``...).
    tunelab's one call of ``generate``; evaluation decodes with :mod:`tunelab.tasks.decoding`."""
    device = next(model.parameters()).device
    input_ids = pad(prompts, tokenizer.pad_token_id, left=True).to(device)  # (B, T)
    attention_mask = pad([[1] * len(p) for p in prompts], 0, left=True).to(device)  # (B, T)
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, **generation)
    return out[:, input_ids.shape[1]:]


@torch.inference_mode()
def generate(model: nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int, **sampling) -> list[str]:
    """Continue each prompt (:func:`continue_ids`, so batched with left padding and the KV
    cache); greedy unless ``do_sample=True`` is passed. Returns the new text. (Evaluation's
    greedy answers: :mod:`tunelab.tasks.decoding`.)"""
    was_training = model.training
    model.eval()
    sampling.setdefault("do_sample", False)
    if not sampling["do_sample"]:  # silence the model's default sampling settings under greedy
        sampling.update(temperature=None, top_p=None, top_k=None)
    new = continue_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens, **sampling)
    model.train(was_training)
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def batched(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
