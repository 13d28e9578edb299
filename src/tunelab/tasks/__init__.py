"""The task registry: ``task.name`` in a config -> the module that turns data into batches,
losses and metrics.

Every task module has:

- ``prepare(cfg, raw) -> Prepared``: tokenizer, tokenized splits, model with the method applied;
  every check on the input happens here, before a run directory exists;
- ``collator(prepared)``: pads a list of examples into a batch;
- ``training_loss(model, batch)``: the scalar the one training loop minimises;
- ``evaluate(model, loader, accelerator, prepared, split)``: metrics of a split, always with
  ``loss``;
- ``PRIMARY_METRIC`` / ``HIGHER_IS_BETTER``: the headline test number, and ``SELECT_METRIC``,
  the validation number that picks the best checkpoint when ``train.select_metric`` is auto.

Optional: ``before_training(model, accelerator, prepared, test_loader)`` for numbers of the base
model (perplexity before fine-tuning) and ``after_training(...)`` for samples.
"""

from __future__ import annotations

from types import ModuleType

from tunelab.tasks import classification, instruct, lm, summarization

TASKS: dict[str, ModuleType] = {"classification": classification, "instruct": instruct, "lm": lm,
                                "summarization": summarization}


def get(name: str) -> ModuleType:
    return TASKS[name]


def select_metric(cfg) -> tuple[str, bool]:
    """The validation metric that picks the best checkpoint, and whether higher is better."""
    name = cfg.train.select_metric
    if name == "auto":
        name = get(cfg.task.name).SELECT_METRIC
    return name, name != "loss"
