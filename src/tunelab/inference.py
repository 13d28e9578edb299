"""What a trained run costs at inference, measured the same way for every method.

After the test, the best checkpoint is timed on the first ``eval.inference_examples`` test
inputs, in inference mode, after a warm-up call:

- ``batch1_ms``: milliseconds per example, one example at a time (one request);
- ``batch_ms`` and ``examples_per_s``: per example and examples per second at the evaluation
  batch size (``batch``), batches sorted by length as evaluation runs them (throughput);
  each a median over the calls, so one slow call (another process on the machine) does not
  move it;
- for a causal LM, ``token_ms``: milliseconds per generated token of greedy decoding with the
  KV cache (the first ``PROMPT_TOKENS`` tokens of each input as the prompt, ``NEW_TOKENS`` new
  tokens whatever they are), one prompt at a time.

The forward pass is the model's on the request's tokens (for a causal LM, up to the next-token
distribution after the last one): virtual tokens and every injected module included. A method
whose modules fold into the weights (LoRA and its variants, IA3: ``AdapterModule.merge``) is
timed twice, as trained and merged (``merged``: the same keys), then unmerged again: merged,
LoRA costs what the base model costs; a bottleneck adapter or a soft prompt cannot be merged
and costs what it costs.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from tunelab.methods.common import AdapterModule, adapters, merge, unmerge
from tunelab.tasks import SERVED_INPUTS

PROMPT_TOKENS = 16
NEW_TOKENS = 16


def mergeable(model: torch.nn.Module) -> bool:
    """The model carries injected modules and every one of them folds into the base weights."""
    found = adapters(model)
    return bool(found) and all(type(m).merge is not AdapterModule.merge for m in found)


def median_seconds(calls: list, per: list[int]) -> float:
    """The median over ``calls`` of each call's seconds per unit (``per``: its examples or
    tokens), after one untimed warm-up call: robust to a stray slow call (another process, a
    page fault), which a mean over a few calls is not."""
    calls[0]()
    times = []
    for call, units in zip(calls, per):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) / units)
    return statistics.median(times)


@torch.inference_mode()
def measure_forward(model, examples: list[dict], collate, batch_size: int, causal: bool) -> dict[str, float]:
    """Per-example latency at batch 1 and at ``batch_size`` (medians over the calls), and the
    throughput that gives."""
    device = next(model.parameters()).device
    # A causal LM serving a request needs the distribution after its last token only.
    extra = {"logits_to_keep": 1} if causal else {}

    def call(batch: dict):
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        return lambda: model(**inputs, **extra)

    singles = [collate([example]) for example in examples]
    batch1 = median_seconds([call(batch) for batch in singles], [1] * len(examples))
    order = sorted(range(len(examples)), key=lambda i: singles[i]["input_ids"].shape[-1])
    groups = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    batched = median_seconds([call(collate([examples[i] for i in group])) for group in groups],
                             [len(group) for group in groups])
    return {"batch1_ms": 1000 * batch1, "batch_ms": 1000 * batched, "examples_per_s": 1 / batched,
            "batch": min(batch_size, len(examples))}


@torch.inference_mode()
def measure_generation(model, singles: list[dict], pad_id: int) -> dict[str, float]:
    """Milliseconds per generated token, greedy with the KV cache, one prompt at a time: the
    first ``PROMPT_TOKENS`` real tokens of each input as its prompt."""
    from tunelab.tasks.decoding import greedy

    prompts = [batch["input_ids"][0][batch["attention_mask"][0].bool()][:PROMPT_TOKENS].tolist()
               for batch in singles[:8]]
    # eos None: every prompt gets NEW_TOKENS tokens, so each call generates the same number.
    calls = [lambda p=p: greedy(model, [p], NEW_TOKENS, pad_id, None, share_prefix=False) for p in prompts if p]
    return {"token_ms": 1000 * median_seconds(calls, [NEW_TOKENS] * len(calls))} if calls else {}


def measure(model, prepared, count: int, batch_size: int) -> dict[str, Any] | None:
    """The run's inference cost (module docstring); None when ``count`` is 0 or the task's
    inputs carry no tokens."""
    test, collate = prepared.extras.get(SERVED_INPUTS, (prepared.splits["test"], prepared.collate))
    examples = [test[i] for i in range(min(count, len(test)))]
    if not examples or "input_ids" not in collate(examples[:1]):
        return None
    was_training = model.training
    model.eval()
    causal = getattr(prepared.cfg.task, "causal", False)
    pad_id = getattr(prepared.tokenizer, "pad_token_id", None)

    def both() -> dict[str, Any]:
        found = measure_forward(model, examples, collate, batch_size, causal)
        if causal and pad_id is not None:
            found.update(measure_generation(model, [collate([e]) for e in examples[:8]], pad_id))
        return found

    result = both()
    if mergeable(model):
        merge(model)
        try:
            result["merged"] = both()
        finally:
            unmerge(model)
    model.train(was_training)
    return result
