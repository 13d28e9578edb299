"""Properties every registered method must have, checked on each one the registry lists.

The methods come from :data:`tunelab.methods.METHODS` at collection time, not from a list
written here, so a newly registered method is checked without touching this file; the checks
are plain functions so that a method registered later (a plugin, see test_plugin_method.py)
can be put through the same ones. Each method runs with its default options on a tiny BERT
classifier and a tiny Llama causal LM, and on a tiny BERT with transformers' own classifier head
(``task.head: auto``).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import PEFT_TUNERS, tiny_bert
from tunelab.methods import METHODS, apply_method, common
from tunelab.tasks import auto_head
from tunelab.tasks.classification import SequenceClassifier

ADAPTING = [name for name in METHODS.names() if METHODS.options(name).pretrained and name != "peft"]
"""Methods that adapt a pretrained model with their default options (the LSTM builds its own and
is tested apart; the PEFT bridge needs a type, its tuners are among the variants below)."""


def build(kind: str, causal_dir):
    torch.manual_seed(0)
    if kind == "classifier":
        return SequenceClassifier(tiny_bert(), num_labels=2).eval()
    if kind == "auto-head":  # BertForSequenceClassification: pooler, dropout, classifier
        return auto_head.from_config(tiny_bert().config, num_labels=2).eval()
    return AutoModelForCausalLM.from_pretrained(causal_dir).eval()


def inputs(kind: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 40, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # a padded second row
    return {"input_ids": ids, "attention_mask": mask}


def output(model, batch) -> torch.Tensor:
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out


def applied(method: str | dict, kind: str, causal_dir):
    """The model with the method applied: a method's name (its default options) or its options."""
    options = {"name": method} if isinstance(method, str) else method
    model = build(kind, causal_dir)
    apply_method(model, METHODS.options(options["name"])(**options),
                 tokenizer=AutoTokenizer.from_pretrained(causal_dir))
    return model


def check_a_step_changes_only_what_trains(name: str, kind: str, causal_dir) -> None:
    """One AdamW step on a real loss moves some trainable tensor and leaves every frozen one
    bit for bit as it was; a method that trains nothing has no trainable tensor at all."""
    model = applied(name, kind, causal_dir).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    if not trainable:
        assert name == "none", f"{name} leaves nothing to train"
        return
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    output(model, inputs(kind)).float().pow(2).mean().backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable)), f"{name}: a step moved nothing"
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(frozen[n], p.detach()), f"{name} changed frozen {n}"
            assert p.grad is None, f"{name}: frozen {n} got a gradient"


def check_the_checkpoint_rebuilds_the_model(name: str, kind: str, causal_dir) -> None:
    """The saved tensors, loaded into a fresh model with the method applied, give the same outputs."""
    model = applied(name, kind, causal_dir)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    state = common.inference_state(model)
    fresh = applied(name, kind, causal_dir)
    common.load_trainable_state(fresh, state)
    batch = inputs(kind)
    with torch.no_grad():
        torch.testing.assert_close(output(fresh, batch), output(model, batch), atol=1e-6, rtol=0)


def check_switching_off_gives_the_base_model(name: str, kind: str, causal_dir) -> None:
    """A method that injects modules is the base model again with them switched off."""
    model = applied(name, kind, causal_dir)
    if not common.adapters(model):
        return  # full, head, none: nothing injected to switch off
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    base = build(kind, causal_dir)
    batch = inputs(kind)
    with torch.no_grad(), common.disable_adapters(model):
        off = output(model, batch)
    for theirs, ours in zip(common.task_head(base), common.task_head(model)):  # new, so trained by every method
        theirs.load_state_dict(ours.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(off, output(base, batch), atol=1e-5, rtol=0)


CHECKS = [check_a_step_changes_only_what_trains, check_the_checkpoint_rebuilds_the_model,
          check_switching_off_gives_the_base_model]


def test_every_registered_method_is_checked():
    assert set(ADAPTING) >= {"full", "head", "bitfit", "adapter", "lora", "ia3", "prompt", "prefix", "none"}


VARIANTS = [{"name": "lora", "use_dora": True}, {"name": "lora", "init": "pissa", "use_dora": True},
            {"name": "lora", "init": "olora", "scaling": "rslora"}, {"name": "lora", "init": "gaussian"},
            {"name": "lora", "target_modules": "all-linear", "lr_ratio": 16}, *PEFT_TUNERS]
"""Options of a method that change what it injects or trains: checked like a method of their own."""

# Method none is for the causal-LM tasks only: a classifier's new head must train.
CASES = [(name, kind) for name in ADAPTING + VARIANTS for kind in ("classifier", "causal")
         if (name, kind) != ("none", "classifier")]
CASES += [(name, "auto-head") for name in ADAPTING if name != "none"]


@pytest.mark.parametrize("name, kind", CASES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={v}" for k, v in v.items() if k != "name"))
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_property(check, name, kind, tiny_causal_dir):
    check(name, kind, tiny_causal_dir)
