"""Sharding over several processes (``train.fsdp``: FSDP2 through Accelerate), on the CPU over
gloo, started as a user starts it: ``torchrun --nproc_per_node 2 -m tunelab.cli train ...``.

A sharded run must end where one process with the doubled batch ends (full fine-tuning and
LoRA), write what an unsharded run writes (whole tensors, AdamW's state keyed the same way), resume
from its snapshot to the uninterrupted run's weights, and export like any run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import cli_args, tiny_bert, tiny_gpt2, tiny_llama, write_jsonl, write_sentiment_csv
from test_cli_bad_input import assert_one_line_error
from test_multiprocess import assert_same_weights, config, environment, snapshot_step, torchrun, weights
from tunelab import cli, runs, sharding
from tunelab.config import load_config
from tunelab.errors import UserError
from tunelab.methods import apply_method, options
from tunelab.tasks.classification import SequenceClassifier

UNITS = "3 units sharded over 2 processes, one per BertLayer (2) and 1 for the rest"
"""What the main process of a sharded run on the tiny BERT says on stderr."""


# --------------------------------------------------------------------------------------------
# The plugin, the units and the refusals (one process)


@pytest.mark.parametrize("strategy, reshard", [("full_shard", True), ("shard_grad_op", False)])
def test_the_plugin_is_fsdp2_with_the_strategy_asked(strategy, reshard, monkeypatch):
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "False")  # the plugin sets it; put back after the test
    cfg = load_config(None, {"train": {"fsdp": {"strategy": strategy}, "precision": "bf16"}})
    plugin = sharding.fsdp_plugin(cfg, processes=2, on_cpu=True)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is reshard
    assert plugin.transformer_cls_names_to_wrap is None  # the model's layers, found before prepare
    assert not plugin.activation_checkpointing and not plugin.cpu_ram_efficient_loading
    policy = plugin.mixed_precision_policy  # bf16 compute from float32 shards, gradients reduced in float32
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32


def test_off_or_alone_there_is_no_plugin(capsys):
    assert sharding.fsdp_plugin(load_config(None, {}), processes=2, on_cpu=True) is None
    alone = load_config(None, {"train": {"fsdp": {"strategy": "full_shard"}}})
    assert sharding.fsdp_plugin(alone, processes=1, on_cpu=True) is None
    assert "nothing to shard across" in capsys.readouterr().err


@pytest.mark.parametrize("kind, layer", [("bert", "BertLayer"), ("llama", "LlamaDecoderLayer"), ("gpt2", "GPT2Block")])
def test_the_units_are_the_models_transformer_layers_with_or_without_lora(kind, layer):
    model = {"bert": lambda: SequenceClassifier(tiny_bert(), 2), "llama": tiny_llama, "gpt2": tiny_gpt2}[kind]()
    assert sharding.layer_classes(model) == [layer]
    apply_method(model, options.LoRAMethod(r=2, alpha=4))
    assert sharding.layer_classes(model) == [layer]  # LoRA wraps projections inside the layers


def test_layer_classes_the_model_lacks_are_refused_naming_its_layers():
    from accelerate.utils import DistributedType

    plugin = SimpleNamespace(transformer_cls_names_to_wrap=["LlamaDecoderLayer"], reshard_after_forward=True)
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(fsdp_plugin=plugin),
                                  is_main_process=True, num_processes=2)
    with pytest.raises(UserError, match="no module of class LlamaDecoderLayer.*BertLayer"):
        sharding.before_prepare(accelerator, SequenceClassifier(tiny_bert(), 2))


@pytest.mark.parametrize("overrides, phrases", [
    ({"method": {"name": "lstm", "embedding_dim": 8, "hidden_size": 8}}, ("method lstm", "its own small model")),
    ({"train": {"fsdp": {"strategy": "full_shard", "cpu_offload": True}}}, ("cpu_offload", "CPU memory already")),
], ids=["lstm", "cpu-offload-on-the-cpu"])
def test_what_sharding_cannot_do_is_refused_in_one_line(run_cli, tiny_run_config, overrides, phrases):
    cfg = {**tiny_run_config, **overrides}
    cfg["train"] = {**tiny_run_config["train"], "fsdp": {"strategy": "full_shard"}, **overrides.get("train", {})}
    assert_one_line_error(*run_cli(["train", *cli_args(cfg)]), *phrases)
    assert not Path(cfg["output"]["dir"]).exists()


# --------------------------------------------------------------------------------------------
# Two processes on the CPU (gloo)


def train_two(cfg: dict) -> str:
    done = subprocess.run(torchrun(cli_args(cfg)), env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def sharded(cfg: dict, strategy: str = "full_shard") -> dict:
    return {**cfg, "train": {**cfg["train"], "fsdp": {"strategy": strategy}}}


@pytest.fixture(scope="module")
def sharded_lora_run(tiny_bert_no_dropout_dir, tmp_path_factory):
    """One uninterrupted two-process sharded LoRA run, batch 4 on each process."""
    folder = tmp_path_factory.mktemp("sharded")
    cfg = sharded(config(tiny_bert_no_dropout_dir, write_sentiment_csv(folder / "reviews.csv"), folder / "two", 4))
    return cfg, folder / "two", train_two(cfg)


def one_process(cfg: dict, run_dir: Path) -> Path:
    """The same config, one process with the doubled batch (train.fsdp asks, one process: a note)."""
    one_cfg = dict(cfg, train={**cfg["train"], "batch_size": 8}, output={"dir": str(run_dir)})
    assert cli.main(["train", *cli_args(one_cfg)]) == 0
    return run_dir


def test_sharded_lora_ends_where_one_process_with_the_doubled_batch_ends(sharded_lora_run, tmp_path, capsys):
    cfg, two, stderr = sharded_lora_run
    assert UNITS in stderr, "the run was not sharded"
    one = one_process(cfg, tmp_path / "one")
    assert "nothing to shard across" in capsys.readouterr().err
    summaries = [json.loads((d / "summary.json").read_text()) for d in (two, one)]
    assert [s["num_processes"] for s in summaries] == [2, 1]
    assert summaries[0]["steps"] == summaries[1]["steps"] == 15
    assert summaries[0]["best_step"] == summaries[1]["best_step"]
    assert_same_weights(weights(two), weights(one), atol=1e-5)
    assert all(t.abs().max() > 0 for n, t in weights(two).items() if "lora_B" in n), "training left LoRA at zero"
    assert summaries[0]["test"]["accuracy"] == pytest.approx(summaries[1]["test"]["accuracy"])
    assert summaries[0].get("inference") is None  # a sharded model's timing would measure its gathers


def test_sharded_full_fine_tuning_ends_where_one_process_with_the_doubled_batch_ends(tiny_bert_no_dropout_dir,
                                                                                     tmp_path):
    cfg = config(tiny_bert_no_dropout_dir, write_sentiment_csv(tmp_path / "reviews.csv"), tmp_path / "two", 4)
    cfg = sharded({**cfg, "method": {"name": "full"}, "train": {**cfg["train"], "lr": 1e-3, "epochs": 2}},
                  "shard_grad_op")
    assert f"train.fsdp shard_grad_op: {UNITS}" in train_two(cfg)
    two, one = weights(tmp_path / "two"), weights(one_process(cfg, tmp_path / "one"))
    # Attention key biases get a gradient that is zero in exact arithmetic (softmax ignores a
    # constant added to every score); AdamW turns its float noise into full-size steps, so they
    # are compared loosely, everything else as tightly as the unsharded processes are.
    keys = {n for n in two if n.endswith("key.bias")}
    assert_same_weights({n: t for n, t in two.items() if n not in keys},
                        {n: t for n, t in one.items() if n not in keys}, atol=1e-5)
    assert_same_weights({n: two[n] for n in keys}, {n: one[n] for n in keys}, atol=1e-2)


def test_a_killed_sharded_run_resumes_to_the_same_weights_from_whole_tensors(sharded_lora_run, tmp_path):
    cfg, straight, _ = sharded_lora_run
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(torchrun(cli_args(dict(cfg, output={"dir": str(run_dir)}))), env=environment(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    progress = run_dir / runs.STATE / "progress.json"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline and snapshot_step(progress) < 3:
        time.sleep(0.01)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun without warning; its ranks die with it
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "the run finished before it was killed"
    assert 3 <= json.loads(progress.read_text())["step"] < 15
    # The snapshot holds what an unsharded run's does: whole tensors, and AdamW's two moments
    # of each of them, whole too (not one process's slices).
    tensors = runs.load_tensors(run_dir / runs.STATE / "model.safetensors")
    optim = torch.load(run_dir / runs.STATE / "optim.pt", weights_only=True)["optimizer"]["state"]
    shapes = sorted(tuple(t.shape) for t in tensors.values())
    assert sorted(tuple(s["exp_avg"].shape) for s in optim.values()) == shapes
    assert sorted(tuple(s["exp_avg_sq"].shape) for s in optim.values()) == shapes

    resumed = subprocess.run(torchrun(["--resume", str(run_dir)]), env=environment(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert UNITS in resumed.stderr
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run_dir, straight)]
    assert summaries[0]["steps"] == summaries[1]["steps"] and summaries[0]["best_step"] == summaries[1]["best_step"]
    assert_same_weights(weights(run_dir), weights(straight), atol=1e-6)


def test_a_sharded_run_exports_and_evaluates_as_one_process(sharded_lora_run, capsys):
    from transformers import AutoModelForSequenceClassification

    from tunelab.evaluate import evaluate_run, rebuild_run

    _, run_dir, _ = sharded_lora_run
    output = run_dir.parent / "merged"
    assert cli.main(["export", str(run_dir), "--format", "merged", "--output", str(output)]) == 0
    ids, mask = torch.tensor([[5, 9, 3, 12, 7, 20, 4, 11]]), torch.ones(1, 8, dtype=torch.long)
    with torch.no_grad():
        exported = AutoModelForSequenceClassification.from_pretrained(output, trust_remote_code=True).eval()
        ours = rebuild_run(run_dir)[1].model.eval()(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(exported(input_ids=ids, attention_mask=mask).logits, ours, atol=1e-5, rtol=0)
    test = json.loads((run_dir / "summary.json").read_text())["test"]
    assert evaluate_run(run_dir)["accuracy"] == pytest.approx(test["accuracy"])


def test_a_sharded_causal_lm_trains_and_decodes_like_one_process(tiny_causal_dir, tmp_path):
    """Instruct on a tiny Llama (tied embeddings): the loss applies the output head to the last
    hidden states itself, and greedy answers are decoded in each process, each as long as the
    slowest (a sharded forward needs every process)."""
    import random

    rng = random.Random(0)
    data = tmp_path / "reviews"
    data.mkdir()
    for split, n in (("train", 24), ("validation", 8), ("test", 8)):
        write_jsonl(data / f"{split}.jsonl", [
            {"text": " ".join(rng.sample(["the", "movie", "plot", "was", "very", "film", "story"], rng.randint(1, 6))
                              + [rng.choice(["good", "bad"])]), "label": rng.choice(["positive", "negative"])}
            for _ in range(n)])
    cfg = sharded({"model": {"name": str(tiny_causal_dir)}, "data": {"name": str(data)},
                   "task": {"name": "instruct", "template": "Review : {text} Sentiment :", "max_length": 64,
                            "loss_on": "sequence"},
                   "method": {"name": "lora", "r": 2, "alpha": 4, "dropout": 0.0},
                   "train": {"epochs": 2, "batch_size": 4, "lr": 5e-2, "warmup_ratio": 0.0, "select_metric": "loss"},
                   "eval": {"batch_size": 4}, "output": {"dir": str(tmp_path / "two")}})
    assert "one per LlamaDecoderLayer (2)" in train_two(cfg)
    one = one_process(cfg, tmp_path / "one")
    assert_same_weights(weights(tmp_path / "two"), weights(one), atol=1e-5)
    lines = [[json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
             for d in (tmp_path / "two", one)]
    assert [r["id"] for r in lines[0]] == list(range(8))
    assert [r["output"] for r in lines[0]] == [r["output"] for r in lines[1]]
