"""The cost options of a run: ``train.gradient_checkpointing`` changes memory, never the numbers;
``train.precision`` autocasts the forwards while the weights and optimizer state stay float32;
what a device cannot run is refused in one line before anything is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaConfig

from conftest import cli_args, tiny_bert, tiny_gpt2, tiny_llama, write_jsonl
from test_cli_bad_input import assert_one_line_error
from tunelab import checkpointing, cli
from tunelab.build import prepare
from tunelab.config import load_config
from tunelab.launch import make_accelerator
from tunelab.loop import train
from tunelab.methods import apply_method, options
from tunelab.models.families import transformer_body
from tunelab.profile import checkpointed_layers
from tunelab.tasks import causal, classification, preference

METHODS = {"lora": options.LoRAMethod(r=4, alpha=8), "full": options.FullMethod(),
           "prefix": options.PrefixMethod(num_virtual_tokens=3),
           "prefix-mlp": options.PrefixMethod(num_virtual_tokens=3, reparameterize=True, hidden_size=8),
           "prompt": options.PromptMethod(num_virtual_tokens=3, init="random")}


def model_and_batch(kind: str, method: options.MethodOptions):
    """A tiny model with the method applied, in training mode (BERT's dropout on), and a batch
    with padding, for the task's own loss: classification on BERT, causal LM on Llama and GPT-2
    (GPT-2's dropout on: the layers' replay in backward must draw the same masks)."""
    model = classification.SequenceClassifier(tiny_bert(), 2) if kind == "bert" else \
        {"llama": tiny_llama, "gpt2": tiny_gpt2}[kind]()
    torch.manual_seed(1)
    apply_method(model, method, kind)
    with torch.no_grad():  # LoRA's B starts at zero, which would leave A without a gradient to compare
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ids = torch.randint(5, 64, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    labels = torch.tensor([0, 1, 1]) if kind == "bert" else ids.masked_fill(mask == 0, causal.IGNORE)
    return model.train(), {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_gradients(kind: str, model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(2)  # the same dropout masks in both runs (checkpointing replays them)
    task = classification if kind == "bert" else causal
    loss, _ = task.loss(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
@pytest.mark.parametrize("name", list(METHODS))
def test_checkpointing_gives_the_same_loss_and_gradients(kind, name):
    plain, batch = model_and_batch(kind, METHODS[name])
    checkpointed, _ = model_and_batch(kind, METHODS[name])
    checkpointing.enable_on(checkpointed, METHODS[name])
    assert len(checkpointed_layers(checkpointed)) == 2  # both layers of the tiny body replay in backward
    assert not getattr(transformer_body(checkpointed), "_require_grads_hooks", None)  # non-reentrant needs none
    loss, grads = loss_and_gradients(kind, plain, batch)
    loss_ckpt, grads_ckpt = loss_and_gradients(kind, checkpointed, batch)
    assert loss_ckpt == pytest.approx(loss, abs=1e-5)
    reached = {key for key, grad in grads.items() if grad is not None}  # not BERT's unused pooler
    assert reached and reached == {key for key, grad in grads_ckpt.items() if grad is not None}
    assert all(grads[key].abs().sum() > 0 for key in reached)
    for key in reached:
        torch.testing.assert_close(grads_ckpt[key], grads[key], atol=1e-5, rtol=1e-5, msg=key)


def test_prefix_keeps_its_cache_in_the_checkpointed_layers():
    """Without telling the layers they may keep it, a checkpointed layer drops the cache that
    carries the prefixes: the precondition of the fix, so this breaks if transformers changes."""
    model, batch = model_and_batch("llama", METHODS["prefix"])
    checkpointing.enable_on(model, METHODS["prefix"])
    assert all(layer._can_checkpoint_with_cache for layer in checkpointed_layers(model))
    for layer in checkpointed_layers(model):
        del layer._can_checkpoint_with_cache  # back to the class's False
    with pytest.raises(RuntimeError):  # the real tokens' mask counts the prefixes the layers no longer see
        loss_and_gradients("llama", model, batch)


# --------------------------------------------------------------------------------------------
# tunelab profile: the activation memory checkpointing saves


@pytest.fixture(scope="module")
def deeper_llama_dir(tmp_path_factory) -> Path:
    """Only a config: profile builds random weights of its shape. Enough layers and tokens for
    the layers' own activations to outweigh what checkpointing keeps (their inputs)."""
    folder = tmp_path_factory.mktemp("deeper-llama")
    LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
                intermediate_size=96, max_position_embeddings=256).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", ["lora", "full"])
def test_profile_shows_the_activations_checkpointing_saves(deeper_llama_dir, method, capsys):
    def profile(*extra: str) -> dict:
        assert cli.main(["profile", "--model", str(deeper_llama_dir), "--method", method, "--task.name", "lm",
                         "--batch-size", "4", "--seq-len", "128", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    plain, ckpt = profile(), profile("--train.gradient_checkpointing", "true")
    assert plain["checkpointed_layers"] == 0 and ckpt["checkpointed_layers"] == 6
    layer_inputs = 6 * 4 * 128 * 32 * 4  # every layer keeps its (B, T, H) float32 input
    assert layer_inputs <= ckpt["activations_bytes"] < plain["activations_bytes"] / 2
    assert ckpt["weights_bytes"] == plain["weights_bytes"] and ckpt["gradients_bytes"] == plain["gradients_bytes"]
    print(f"{method}: activations {plain['activations_bytes']} -> {ckpt['activations_bytes']} bytes")


# --------------------------------------------------------------------------------------------
# train.precision


class AutocastSeen:
    """A task that notes whether autocast was on at each call of its loss and evaluate."""

    def __init__(self, task):
        self.task, self.seen = task, {"loss": [], "evaluate": []}

    def __getattr__(self, name: str):
        function = getattr(self.task, name)
        if name not in self.seen:
            return function

        def noted(*args, **kwargs):
            self.seen[name].append(torch.is_autocast_enabled("cpu"))
            return function(*args, **kwargs)

        return noted


def test_bf16_on_the_cpu_autocasts_and_keeps_float32_master_weights(tiny_run_config, tmp_path, capsys):
    raw = {**tiny_run_config, "train": {**tiny_run_config["train"], "precision": "bf16", "max_steps": 3}}
    cfg = load_config(None, raw)
    accelerator = make_accelerator(cfg)
    warning = capsys.readouterr().err
    assert warning.count("\n") == 1 and warning.startswith("warning: train.precision bf16 on the CPU")
    prepared = prepare(cfg)
    start = {n: p.detach().clone() for n, p in prepared.model.named_parameters() if p.requires_grad}
    prepared.task, autocast = AutocastSeen(prepared.task), torch.is_autocast_enabled
    (tmp_path / "run").mkdir()
    summary = train(cfg, prepared, tmp_path / "run", accelerator=accelerator)
    assert summary.steps == 3 and summary.memory["autocast"] == "bfloat16"
    assert prepared.task.seen["loss"] == [True] * 4  # the memory's step and 3 training steps
    assert prepared.task.seen["evaluate"] == [True] * 2 and not autocast("cpu")  # validation, test; none after
    trained = dict(prepared.model.named_parameters())
    assert all(p.dtype == torch.float32 for p in prepared.model.parameters())
    assert any(not torch.equal(trained[n], before) for n, before in start.items())  # it did train
    moments = accelerator._optimizers[0].optimizer.state.values()
    state = [s for moment in moments for s in moment.values() if s.numel() > 1]
    assert state and all(s.dtype == torch.float32 for s in state)  # AdamW's moments, float32


def test_one_process_trains_runs_of_different_precisions_one_after_another(tiny_run_config):
    """The Python API or a notebook: Accelerate's per-process state would refuse the second."""
    for precision, mixed in (("bf16", "bf16"), ("fp32", "no"), ("bf16", "bf16")):
        cfg = load_config(None, {**tiny_run_config, "train": {"precision": precision}})
        assert make_accelerator(cfg).mixed_precision == mixed


def test_an_untrained_lora_is_its_own_dpo_reference_under_bf16(tiny_causal_dir, tmp_path):
    """The reference (the policy with its modules off) runs under the same autocast as the policy."""
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for split in ("train", "validation", "test"):
        write_jsonl(pairs / f"{split}.jsonl", [{"prompt": "the film was", "chosen": "good fun",
                                                "rejected": "dull and boring"}] * 4)
    cfg = load_config(None, {"model": {"name": str(tiny_causal_dir)}, "data": {"name": str(pairs)},
                             "task": {"name": "preference", "max_length": 16, "max_prompt_length": 6},
                             "method": {"name": "lora", "r": 2}})
    p = prepare(cfg)
    batch = p.collate([p.splits["train"][i] for i in range(4)])
    _, fp32 = preference.loss(p.model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = preference.loss(p.model, batch)
    assert metrics["chosen_logps"] != fp32["chosen_logps"]  # the policy's numbers did change under bf16
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and metrics["reward_margin"].abs().item() < 1e-6


def causal_run(tiny_causal_dir, tmp_path, task: dict, method: dict) -> dict:
    data = tmp_path / "data"
    data.mkdir()
    rows = {"instruct": [{"text": f"the film was {w}", "label": "positive" if w in ("good", "fun") else "negative"}
                         for w in ("good", "dull", "fun", "awful")] * 3,
            "preference": [{"prompt": "the film was", "chosen": "good fun", "rejected": "dull and boring"}] * 12}
    for split in ("train", "validation", "test"):
        write_jsonl(data / f"{split}.jsonl", rows[task["name"]])
    return {"model": {"name": str(tiny_causal_dir)}, "data": {"name": str(data)}, "task": task, "method": method,
            "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "precision": "bf16"},
            "eval": {"batch_size": 4, "inference_examples": 0},  # inference timing is tests/test_inference.py's
            "output": {"dir": str(tmp_path / "run")}}


@pytest.mark.parametrize("case", ["lstm", "instruct-prefix-checkpointed", "preference"])
def test_bf16_runs_end_to_end(case, tiny_causal_dir, sentiment_csv, tmp_path, capsys):
    """The LSTM, generation in a causal task's test (prefix tuning, checkpointed) and DPO."""
    if case == "lstm":
        raw = {"data": {"name": str(sentiment_csv)}, "task": {"max_length": 16},
               "method": {"name": "lstm", "embedding_dim": 8, "hidden_size": 8, "min_freq": 2},
               "train": {"max_steps": 2, "batch_size": 8, "precision": "bf16"},
               "output": {"dir": str(tmp_path / "run")}}
    elif case == "preference":
        raw = causal_run(tiny_causal_dir, tmp_path, {"name": "preference", "max_length": 16, "max_prompt_length": 6},
                         {"name": "lora", "r": 2})
    else:
        raw = causal_run(tiny_causal_dir, tmp_path, {"name": "instruct", "template": "Review : {text} Sentiment :",
                                                     "max_length": 32}, {"name": "prefix", "num_virtual_tokens": 2})
        raw["train"]["gradient_checkpointing"] = True
    assert cli.main(["train", *cli_args(raw)]) == 0
    run = Path(raw["output"]["dir"])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["memory"]["autocast"] == "bfloat16" and all(math.isfinite(v) for v in summary["test"].values()
                                                               if isinstance(v, float))
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["precision"] == "bf16"
    if case.startswith("instruct"):
        assert "generate_accuracy" in summary["test"] and summary["memory"]["checkpointed_layers"] == 2


# --------------------------------------------------------------------------------------------
# Refusals: one line, exit code 2, nothing written


@pytest.fixture
def train_cli(run_cli, tiny_run_config):
    def run(config: dict, *extra: str) -> tuple[int, str, str]:
        result = run_cli(["train", *cli_args(config), *extra])
        assert not Path(config["output"]["dir"]).exists(), "the run directory was created"
        return result

    return run


def test_fp16_on_the_cpu_is_refused(train_cli, tiny_run_config):
    assert_one_line_error(*train_cli(tiny_run_config, "--train.precision", "fp16"), "train.precision fp16",
                          "CUDA GPU")


def test_fp16_on_the_cpu_is_refused_by_profile(run_cli, tiny_bert_dir):
    assert_one_line_error(*run_cli(["profile", "--model", str(tiny_bert_dir), "--train.precision", "fp16", "--cpu"]),
                          "train.precision fp16")


def test_checkpointing_the_lstm_is_refused(train_cli, tiny_run_config):
    lstm = {**tiny_run_config, "method": {"name": "lstm", "embedding_dim": 8, "hidden_size": 8}}
    assert_one_line_error(*train_cli(lstm, "--train.gradient_checkpointing", "true"),
                          "train.gradient_checkpointing", "lstm")


def test_checkpointing_cached_features_changes_nothing_and_says_so(tiny_run_config, capsys):
    cfg = load_config(None, {**tiny_run_config, "method": {"name": "head"},
                             "train": {**tiny_run_config["train"], "gradient_checkpointing": True}})
    prepared = prepare(cfg)
    assert prepared.collate is not None and "features" in prepared.splits["train"].column_names  # the cached path
    capsys.readouterr()
    checkpointing.enable(prepared)
    note = capsys.readouterr().err
    assert note.startswith("note: train.gradient_checkpointing changes nothing") and note.count("\n") == 1
    assert not checkpointed_layers(prepared.model)
