"""The bridge to PEFT's other tuners: injected by PEFT's own tuner class into tunelab's model,
identical to PEFT's own model on the same weights, AdaLoRA's rank allocation after each step,
bad types and options as one line. (The generic properties every method has are checked for the
supported tuners in test_every_method.py; their exports in tests/export.)"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from conftest import PEFT_TUNERS, tiny_bert, tiny_llama
from tunelab.errors import UserError
from tunelab.methods import METHODS, after_step, apply_method
from tunelab.methods.options import PeftMethod
from tunelab.methods.peft_bridge import PeftLayers, peft_config
from tunelab.methods.peft_types import injectable_types


def ids(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(seed))


def options(spec: dict) -> PeftMethod:
    return METHODS.parse(spec)


@pytest.mark.parametrize("spec", PEFT_TUNERS, ids=lambda s: s["type"])
def test_a_bridged_tuner_computes_what_peft_model_computes_on_the_same_weights(spec):
    """Our injected model and PEFT's get_peft_model of the same config, the same trained tensors
    copied across: the same logits (no PeftModel wrapper changes what the layers compute)."""
    cfg = options(spec)
    ours = tiny_llama()
    apply_method(ours, cfg, "llama")
    theirs = get_peft_model(tiny_llama(), peft_config(cfg)).eval()
    g = torch.Generator().manual_seed(4)
    trained = {n: p for n, p in ours.named_parameters() if p.requires_grad}
    assert trained, "the tuner trains nothing"
    with torch.no_grad():
        for name, p in trained.items():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
            theirs.base_model.model.get_parameter(name).copy_(p)
        base = tiny_llama()(input_ids=ids()).logits
        mine = ours.eval()(input_ids=ids()).logits
        assert not torch.allclose(mine, base, atol=1e-4), "the perturbed tuner changed nothing"
        torch.testing.assert_close(mine, theirs(input_ids=ids()).logits, atol=1e-5, rtol=1e-4)


def test_the_injected_layers_are_trained_and_nothing_else_but_the_head():
    from tunelab.tasks.classification import SequenceClassifier

    model = SequenceClassifier(tiny_bert(), num_labels=2)
    apply_method(model, options({"name": "peft", "type": "vera", "r": 4}), "bert")
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trained
    assert all(n.startswith("classifier.") or ".vera_lambda_" in n for n in trained), sorted(trained)
    layers = next(m for m in model.modules() if isinstance(m, PeftLayers))
    assert layers.names and all(".query" in n or ".value" in n for n in layers.names)  # PEFT's BERT default


def test_adalora_allocates_ranks_after_each_step():
    """After tfinal's steps the budget is target_r per layer on average: AdaLoRA masked the rest,
    which only happens when update_and_allocate runs, with gradients, after every step."""
    cfg = options({"name": "peft", "type": "ADALORA", "init_r": 4, "target_r": 2, "total_step": 8, "tinit": 1,
                   "tfinal": 3, "deltaT": 1})
    model = tiny_llama()
    apply_method(model, cfg, "llama")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    spectra = [p for n, p in model.named_parameters() if n.endswith("lora_E.default")]
    assert spectra and all(e.shape[0] == 4 for e in spectra)  # init_r ranks each, PEFT's E starting at zero
    for step in range(8):
        model(input_ids=ids(step)).logits.pow(2).mean().backward()
        optimizer.step()
        after_step(model, cfg, step)
        optimizer.zero_grad()
    kept = sum(int(torch.count_nonzero(e)) for e in spectra)
    assert kept == 2 * len(spectra), f"{kept} of {sum(e.numel() for e in spectra)} ranks kept"


def test_adalora_trains_through_tunelabs_loop_and_its_checkpoint_holds_the_allocated_ranks(tiny_run_config, tmp_path):
    """`tunelab train` calls the method's after_step: the checkpoint's spectra keep the budget."""
    import json

    from conftest import cli_args
    from tunelab import cli, runs

    method = {"name": "peft", "type": "ADALORA", "init_r": 4, "target_r": 1, "total_step": 6, "tinit": 1,
              "tfinal": 2, "deltaT": 1}
    cfg = {**tiny_run_config, "method": method, "train": {**tiny_run_config["train"], "max_steps": 6}}
    assert cli.main(["train", *cli_args(cfg)]) == 0
    saved = runs.load_tensors(tmp_path / "run" / runs.CHECKPOINT / "model.safetensors")
    spectra = [t for k, t in saved.items() if k.endswith("lora_E.default")]
    assert spectra and sum(int(torch.count_nonzero(e)) for e in spectra) == len(spectra)  # target_r = 1 each
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["method"] == "peft"


# ---------------------------------------------------------------- bad input


def test_an_unknown_type_is_one_line_listing_what_this_peft_offers():
    with pytest.raises(UserError) as err:
        options({"name": "peft", "type": "LORAX"})
    message = str(err.value)
    assert "method.type 'LORAX' is not a tuner this PEFT" in message and "VERA" in message and "\n" not in message
    assert "PROMPT_TUNING" not in message  # prompt learning is PeftModel's, not injectable


def test_an_unknown_option_is_one_line_listing_the_tuners_options():
    with pytest.raises(UserError) as err:
        options({"name": "peft", "type": "VERA", "rank": 4})
    message = str(err.value)
    assert message.startswith("method.rank: not an option of PEFT's VeraConfig") and "r, target_modules" in message


def test_bad_peft_options_from_the_command_line_are_one_line(tiny_run_config, capsys):
    from conftest import cli_args
    from tunelab import cli

    cfg = {**tiny_run_config, "method": {"name": "peft", "type": "VERA", "r": 4, "projection_prng_keyy": 1}}
    assert cli.main(["train", *cli_args(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: method.projection_prng_keyy: not an option") and err.count("\n") == 1


def test_every_supported_tuner_is_injectable_here():
    assert {spec["type"] for spec in PEFT_TUNERS} <= set(injectable_types())
