"""`tunelab params`: counts from a config alone, checked against closed forms."""

from __future__ import annotations

import json

import pytest
from transformers import GPT2Config

from tunelab import cli


@pytest.fixture(scope="module")
def gpt2_medium_dir(tmp_path_factory):
    """gpt2-medium's shape (24 layers, 1024 wide, 16 heads); only config.json, no weights."""
    folder = tmp_path_factory.mktemp("gpt2-medium")
    GPT2Config(n_layer=24, n_embd=1024, n_head=16, architectures=["GPT2LMHeadModel"]).save_pretrained(folder)
    return folder


def params(capsys, *argv) -> dict:
    capsys.readouterr()
    assert cli.main(["params", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def gpt2_base_total(layers=24, d=1024, vocab=50257, positions=1024) -> int:
    per_layer = (2 * d) * 2 + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    return vocab * d + positions * d + layers * per_layer + 2 * d  # lm_head is tied to wte


def test_lora_r128_on_gpt2_medium_qkv(gpt2_medium_dir, capsys):
    result = params(capsys, "--model", str(gpt2_medium_dir), "--method", "lora", "--method.r", "128",
                    "--method.alpha", "512")
    lora = 24 * 3 * 128 * (1024 + 1024)  # separate A (r x d) and B (d x r) for each of q, k, v
    assert result["base_params"] == gpt2_base_total() == 354_823_168
    assert result["trainable_params"] == lora == result["added_params"]
    assert result["total_params"] == gpt2_base_total() + lora
    assert result["trainable_percent"] == pytest.approx(100 * lora / (gpt2_base_total() + lora))
    assert result["checkpoint_bytes"] == 4 * lora


def test_houlsby_rank4_on_gpt2_medium(gpt2_medium_dir, capsys):
    result = params(capsys, "--model", str(gpt2_medium_dir), "--method", "adapter", "--method.size", "4")
    d, m = 1024, 4
    assert result["trainable_params"] == 24 * 2 * (d * m + m + m * d + d)


def test_bitfit_on_gpt2_medium_counts_every_bias(gpt2_medium_dir, capsys):
    result = params(capsys, "--model", str(gpt2_medium_dir), "--method", "bitfit")
    d = 1024
    # ln_1, c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj
    per_layer = d + 3 * d + d + d + 4 * d + d
    assert result["trainable_params"] == 24 * per_layer + d  # + ln_f
    assert result["added_params"] == 0  # GPT-2 has all its biases already


def test_human_readable_output(gpt2_medium_dir, capsys):
    capsys.readouterr()
    assert cli.main(["params", "--model", str(gpt2_medium_dir), "--method", "lora", "--method.r", "128"]) == 0
    out = capsys.readouterr().out
    assert "18,874,368" in out and "5.0507 %" in out


def test_encoder_counts_include_the_classifier(tiny_bert_dir, capsys):
    result = params(capsys, "--model", str(tiny_bert_dir), "--method", "prompt", "--method.num_virtual_tokens", "7",
                    "--labels", "3")
    assert result["trainable_params"] == 7 * 16 + (16 * 3 + 3)
