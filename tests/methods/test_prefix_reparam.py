"""Prefix tuning's reparameterisation MLP: trains, then folds away into plain prefixes."""

from __future__ import annotations

import json

import torch

from conftest import cli_args, tiny_llama
from tunelab import cli, runs
from tunelab.methods import apply_method, common
from tunelab.methods.options import PrefixMethod


def test_mlp_prefix_folds_into_the_same_function():
    model = tiny_llama()
    apply_method(model, PrefixMethod(num_virtual_tokens=3, reparameterize=True, hidden_size=8), "llama")
    prefix = model.base_model.kv_prefix
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".reparam." in n for n in trainable)
    # embedding (n x H) + Linear(H -> 8) + Linear(8 -> L * 2 * kv_heads * head_dim)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 3 * 16 + (16 * 8 + 8) + (8 * 64 + 64)
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    state = common.inference_state(model)
    assert {k.rsplit(".", 1)[-1] for k in state} == {"prefix_keys", "prefix_values"}
    assert state["model.kv_prefix.prefix_keys"].shape == (2, 2, 3, 8)

    fresh = tiny_llama()
    apply_method(fresh, PrefixMethod(num_virtual_tokens=3, reparameterize=True, hidden_size=8), "llama")
    common.load_trainable_state(fresh, state)
    assert not hasattr(fresh.base_model.kv_prefix, "reparam")
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, before, atol=1e-6, rtol=0)
    prefix.fold()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-6, rtol=0)


def test_training_with_mlp_saves_only_the_prefixes(tiny_run_config, tmp_path, capsys):
    cfg = dict(tiny_run_config, method={"name": "prefix", "num_virtual_tokens": 4, "reparameterize": True,
                                        "hidden_size": 8})
    assert cli.main(["train", *cli_args(cfg)]) == 0
    run_dir = tmp_path / "run"
    saved = runs.load_tensors(run_dir / "checkpoint" / "model.safetensors")
    assert not any("reparam" in k for k in saved)
    assert saved["backbone.kv_prefix.prefix_keys"].shape == (2, 2, 4, 8)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["checkpoint_bytes"] < 4 * summary["trainable_params"]  # smaller than the MLP it came from
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["accuracy"] == summary["test"]["accuracy"]
