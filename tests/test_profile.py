"""The memory breakdown: closed forms for gradients and optimizer state, exact activation
counting, no trace left on the run, and `tunelab profile`."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import cli_args
from tunelab import cli
from tunelab.profile import measure_step

FLOAT32 = 4


class Scaled(nn.Module):
    """loss = sum((x * w) ** 2) written as h * h: autograd saves x (for w's gradient) and h
    twice (once per factor of h * h), which is one storage."""

    def __init__(self, n: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n))
        self.frozen = nn.Parameter(torch.randn(3, n), requires_grad=False)

    def forward(self, x):
        h = x * self.w  # (B, n)
        return (h * h).sum()


def test_activations_are_counted_once_per_storage_and_parameters_are_weights():
    model = Scaled(n=10)
    x = torch.randn(6, 10)
    result = measure_step(model, {"input_ids": x}, lambda m, b: (m(b["input_ids"]), {}))
    assert result["activations_bytes"] == 2 * 6 * 10 * FLOAT32  # x and h, h not twice, w not at all
    assert result["weights_bytes"] == (10 + 30) * FLOAT32
    assert result["gradients_bytes"] == 10 * FLOAT32
    assert result["optimizer_bytes"] == 2 * 10 * FLOAT32
    assert result["forward_peak_bytes"] == (40 + 20 + 120) * FLOAT32
    assert result["backward_peak_bytes"] == result["forward_peak_bytes"] + 10 * FLOAT32


def test_measuring_leaves_rng_and_gradients_as_they_were():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 1)).train()
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)
    batch = {"input_ids": torch.randn(4, 8)}
    rng = torch.get_rng_state()
    measure_step(model, batch, lambda m, b: (m(b["input_ids"]).sum(), {}))
    assert torch.equal(torch.get_rng_state(), rng), "dropout in the measured step must not shift the run's RNG"
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 7.0))
    assert model[2].weight.grad is None


def test_run_summary_memory_matches_closed_form(tiny_run_config, tmp_path):
    assert cli.main(["train", *cli_args(tiny_run_config)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    memory = summary["memory"]
    # every tensor is float32: 4 bytes per parameter
    assert memory["gradients_bytes"] == FLOAT32 * summary["trainable_params"]
    assert memory["optimizer_bytes"] == 2 * FLOAT32 * summary["trainable_params"]
    assert memory["weights_bytes"] == FLOAT32 * summary["total_params"]
    assert memory["activations_bytes"] > 0
    assert memory["batch_shape"][0] == tiny_run_config["train"]["batch_size"]
    assert memory["backward_peak_bytes"] == sum(memory[k] for k in ("weights_bytes", "gradients_bytes",
                                                                    "optimizer_bytes", "activations_bytes"))


def test_activations_grow_with_the_batch_and_head_saves_least(tiny_bert_dir, capsys):
    def profile(method: str, batch: int) -> dict:
        assert cli.main(["profile", "--model", str(tiny_bert_dir), "--method", method, "--batch-size", str(batch),
                         "--seq-len", "16", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    full2, full4 = profile("full", 2), profile("full", 4)
    ratio = full4["activations_bytes"] / full2["activations_bytes"]
    assert 1.8 < ratio <= 2.0, ratio  # linear in the batch, apart from batch-independent saved tensors
    head = profile("head", 4)
    lora = profile("lora", 4)
    # head: nothing below the classifier needs a gradient, so the encoder saves nothing for backward
    assert head["activations_bytes"] < lora["activations_bytes"] <= full4["activations_bytes"] * 1.5
    assert head["gradients_bytes"] == FLOAT32 * head["trainable_params"] == FLOAT32 * (16 * 2 + 2)
    assert full4["gradients_bytes"] == full4["weights_bytes"] == FLOAT32 * full4["total_params"]


def test_profile_prints_the_breakdown(tiny_bert_dir, capsys):
    assert cli.main(["profile", "--model", str(tiny_bert_dir), "--method", "lora", "--method.r", "2",
                     "--batch-size", "2", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    for label in ("weights", "gradients", "optimizer state", "activations", "forward peak", "backward peak"):
        assert label in out


@pytest.mark.parametrize("args, message", [
    (["--seq-len", "100"], "exceeds the model's 64 positions"),
    (["--batch-size", "0"], "must be at least 1"),
    (["--method", "nope"], "unknown method"),
])
def test_profile_bad_input(tiny_bert_dir, capsys, args, message):
    assert cli.main(["profile", "--model", str(tiny_bert_dir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
