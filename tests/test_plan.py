"""`tunelab plan`: exact bytes for weights, gradients and optimizer state from a config alone;
activations against what `tunelab profile` measures; what checkpointing and FSDP change; the
largest batch; bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from transformers import BertConfig, LlamaConfig

from test_cli_bad_input import assert_one_line_error
from tunelab import cli
from tunelab.config import load_config
from tunelab.planner.activations import Settings
from tunelab.planner.anatomy import anatomy_for
from tunelab.planner.estimate import estimate, largest_batch, plan
from tunelab.profile import profile_model

ROOT = Path(__file__).resolve().parent.parent
LLAMA_3_8B = ROOT / "docs" / "llama-3-8b"
H, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, VOCAB = 64, 3, 4, 2, 172, 256


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A small Llama (3 layers, grouped keys/values, untied head): only config.json."""
    folder = tmp_path_factory.mktemp("small-llama")
    LlamaConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE, max_position_embeddings=128,
                tie_word_embeddings=False, architectures=["LlamaForCausalLM"]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """A small BERT with dropout (the CPU's math attention, full-width masks)."""
    folder = tmp_path_factory.mktemp("small-bert")
    BertConfig(vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               intermediate_size=2 * H, max_position_embeddings=128).save_pretrained(folder)
    return folder


def run_config(model: Path, method: str, **options):
    task = {"task": {"name": "lm"}} if "llama" in model.name else {}
    return load_config(None, {"model": {"name": str(model)}, "method": {"name": method, **options}, **task})


def llama_counts(r: int) -> tuple[int, int]:
    """(pretrained, LoRA) parameters of the small Llama, LoRA of rank r on q, k and v."""
    kv = KV_HEADS * (H // HEADS)
    per_layer = H * H + 2 * H * kv + H * H + 3 * H * INTERMEDIATE + 2 * H  # q, k, v, o, gate/up/down, 2 norms
    base = VOCAB * H + LAYERS * per_layer + H + H * VOCAB  # embeddings, final norm, untied head
    lora = LAYERS * r * ((H + H) + 2 * (H + kv))  # A (r x in) and B (out x r) per projection
    return base, lora


def test_weights_gradients_and_optimizer_state_are_exact(llama_dir):
    base, lora = llama_counts(r=4)
    anatomy = anatomy_for(run_config(llama_dir, "lora", r=4))
    assert (anatomy.frozen, anatomy.trainable) == (base, lora)
    fp32 = estimate(anatomy, Settings(precision="fp32"))
    assert fp32["weights_bytes"] == 4 * (base + lora)
    assert fp32["gradients_bytes"] == 4 * lora
    assert fp32["optimizer_bytes"] == 2 * 4 * lora  # AdamW's two float32 moments
    bf16 = estimate(anatomy, Settings(precision="bf16"))
    assert bf16["weights_bytes"] == 2 * base + 4 * lora + 2 * lora  # frozen bf16, fp32 master, autocast's copy
    assert (bf16["gradients_bytes"], bf16["optimizer_bytes"]) == (4 * lora, 8 * lora)
    sharded = estimate(anatomy, Settings(precision="bf16", devices=3))
    assert sharded["weights_bytes"] == -(-(2 * base + 6 * lora) // 3)
    assert sharded["optimizer_bytes"] == -(-8 * lora // 3)


@pytest.mark.parametrize("model, method", [("llama", "lora"), ("llama", "full"), ("bert", "lora"), ("bert", "full")])
def test_activations_within_15_percent_of_profile(llama_dir, bert_dir, model, method):
    cfg = run_config(llama_dir if model == "llama" else bert_dir, method)
    planned = plan(anatomy_for(cfg), Settings(batch_size=4, seq_len=96, target="cpu"))
    measured = profile_model(cfg, 4, 96, cpu=True)
    assert measured["activations_bytes"] > 1e6  # a step with something to compare
    assert planned["activations_bytes"] == pytest.approx(measured["activations_bytes"], rel=0.15)
    assert planned["total_bytes"] == pytest.approx(measured["backward_peak_bytes"], rel=0.15)


def test_head_only_saves_nothing_in_a_frozen_body(bert_dir):
    head = plan(anatomy_for(run_config(bert_dir, "head")), Settings(batch_size=4, seq_len=96))
    lora = plan(anatomy_for(run_config(bert_dir, "lora")), Settings(batch_size=4, seq_len=96))
    assert head["activations_bytes"] <= 4 * H * 8 < lora["activations_bytes"]  # the pooled vector alone


def test_checkpointing_keeps_block_inputs_and_one_block(llama_dir):
    anatomy = anatomy_for(run_config(llama_dir, "lora"))
    plain = Settings(batch_size=8, seq_len=64, precision="bf16")
    without = estimate(anatomy, plain)["activations_detail"]
    kept = estimate(anatomy, replace(plain, checkpointing=True))["activations_detail"]
    blocks = sum(v for k, v in without.items() if k not in ("embeddings", "final norm", "head"))
    assert kept["block inputs"] == LAYERS * 8 * 64 * H * 2  # every block's bf16 input
    assert kept["one block recomputed"] == pytest.approx(blocks / LAYERS, rel=0.2)
    assert sum(kept.values()) < sum(without.values())
    assert kept["head"] == without["head"]  # the loss is outside the blocks, checkpointed or not


def test_fsdp_shards_the_states_and_not_the_activations(llama_dir):
    anatomy = anatomy_for(run_config(llama_dir, "full"))
    one = estimate(anatomy, Settings(batch_size=2, seq_len=64))
    four = estimate(anatomy, Settings(batch_size=2, seq_len=64, devices=4))
    for part in ("weights_bytes", "gradients_bytes", "optimizer_bytes"):
        assert four[part] == -(-one[part] // 4)
    assert four["activations_bytes"] == one["activations_bytes"]
    assert four["total_bytes"] < one["total_bytes"]


def test_largest_batch_fits_and_grows_with_memory(llama_dir):
    anatomy = anatomy_for(run_config(llama_dir, "lora"))
    settings = Settings(seq_len=64)
    memories = [int(m * 1e6) for m in (1, 5, 10, 20, 40, 80, 160)]
    best = [largest_batch(anatomy, settings, m) for m in memories]
    assert best == sorted(best) and best[0] == 0 < best[-1]
    for memory, batch in zip(memories, best):
        if batch:
            assert estimate(anatomy, replace(settings, batch_size=batch))["peak_bytes"] <= memory
        assert estimate(anatomy, replace(settings, batch_size=batch + 1))["peak_bytes"] > memory


def test_llama_3_8b_answers_in_the_readme(capsys):
    """The README's answers for Llama-3-8B, LoRA r=16 on q/k/v, bf16: largest batches on 24 and
    80 GiB at 512 and 2048 tokens, without and with gradient checkpointing."""
    anatomy = anatomy_for(load_config(None, {"model": {"name": str(LLAMA_3_8B)}, "method": {"name": "lora", "r": 16}}))
    assert anatomy.frozen == 8_030_261_248 and anatomy.trainable == 32 * 16 * ((4096 + 4096) + 2 * (4096 + 1024))
    answers = {(memory, seq, checkpointing): largest_batch(
        anatomy, Settings(precision="bf16", seq_len=seq, checkpointing=checkpointing), memory * 2**30)
        for memory in (24, 80) for seq in (512, 2048) for checkpointing in (False, True)}
    assert answers == {(24, 512, False): 2, (24, 512, True): 9, (24, 2048, False): 0, (24, 2048, True): 2,
                       (80, 512, False): 21, (80, 512, True): 69, (80, 2048, False): 5, (80, 2048, True): 17}


def test_command_prints_the_table_and_the_largest_batch(bert_dir, capsys):
    capsys.readouterr()
    argv = ["plan", "--model", str(bert_dir), "--method", "lora", "--method.r", "16", "--batch-size", "4",
            "--seq-len", "64", "--device-memory", "1GB"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "activations" in out and "largest batch" in out and "1GB (1.00 GB)" in out
    assert cli.main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["method"]["r"] == 16 and result["largest_batch"] > 4
    assert result["total_bytes"] == sum(result[f"{k}_bytes"] for k in ("weights", "gradients", "optimizer",
                                                                        "activations"))


@pytest.mark.parametrize("extra, phrases", [
    (["--method", "no-such-method"], ["unknown method 'no-such-method'"]),
    (["--method", "lora", "--device-memory", "24XB"], ["--device-memory '24XB'", "24GB"]),
    (["--method", "lora", "--device-memory", "24"], ["--device-memory '24'"]),
    (["--method", "lora", "--devices", "0"], ["--devices"]),
    (["--method", "lora", "--seq-len", "100000"], ["--seq-len 100000"]),
    (["--method", "lora", "--precision", "fp8"], ["--precision"]),
])
def test_bad_input_is_one_line(run_cli, bert_dir, extra, phrases):
    assert_one_line_error(*run_cli(["plan", "--model", str(bert_dir), *extra]), *phrases)


def test_hub_id_offline_is_one_line(run_cli):
    assert_one_line_error(*run_cli(["plan", "--model", "meta-llama/Meta-Llama-3-8B", "--method", "lora"]),
                          "meta-llama/Meta-Llama-3-8B")
