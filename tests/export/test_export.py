"""``tunelab export``: PEFT adapters that PEFT loads and merged checkpoints that transformers
loads reproduce the run's outputs (atol 1e-5) on tiny BERT (classification), Llama and GPT-2
(language modelling); methods a format cannot hold and bad input are refused in one line with
exit code 2, leaving the run directory as it was and no export behind.

The runs are made without training: the method is applied as ``tunelab train`` applies it and
every trained tensor is moved well away from its init (LoRA's B from zero, IA3's scales from
one), so equal outputs are not the base model's by accident; one test trains for real.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from conftest import CAUSAL_VOCAB, PEFT_TUNERS, cli_args
from tunelab import export, runs
from tunelab.build import prepare
from tunelab.cli import main
from tunelab.config import load_config, to_yaml
from tunelab.evaluate import predict_run, rebuild_run
from tunelab.export import merged
from tunelab.methods.common import inference_state
from tunelab.methods.lora import LoRALayer, stacked_lora

ATOL = 1e-5
PROBE = torch.tensor([[5, 9, 3, 12, 7, 20, 4, 11], [8, 6, 15, 3, 22, 10, 0, 0]])
PROBE_MASK = torch.tensor([[1] * 8, [1] * 6 + [0, 0]])


# ---------------------------------------------------------------- tiny models, data and runs


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 (fused c_attn, Conv1D layers) with conftest's word-level causal tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(CAUSAL_VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                            eos_token="<eos>").save_pretrained(folder)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(CAUSAL_VOCAB), n_embd=16, n_layer=2, n_head=2, n_positions=64,
                     pad_token_id=0, eos_token_id=2, bos_token_id=2)
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    words = [w for w in CAUSAL_VOCAB[3:] if w.isalpha()]
    rng = random.Random(0)
    for split, n in (("train", 12), ("validation", 3), ("test", 3)):
        rows = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(8, 20)))} for _ in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def make_run(tmp_path, tiny_bert_dir, sentiment_csv, tiny_causal_dir, tiny_gpt2_dir, corpus):
    """``make_run(model, method)``: a run directory (config.yaml + checkpoint) of tiny BERT
    classification ("bert") or tiny Llama / GPT-2 language modelling, trained-like tensors."""
    counter = iter(range(1000))

    def make(model: str, method: dict, seed: int = 0) -> Path:
        run_dir = tmp_path / f"run-{model}-{method['name']}-{next(counter)}"
        if model == "bert":
            setup = {"model": {"name": str(tiny_bert_dir)}, "data": {"name": str(sentiment_csv)},
                     "task": {"max_length": 32}}
        else:
            folder = tiny_causal_dir if model == "llama" else tiny_gpt2_dir
            setup = {"model": {"name": str(folder)}, "data": {"name": str(corpus)},
                     "task": {"name": "lm", "block_size": 16, "eval_before": False}}
        cfg = load_config(None, {**setup, "method": method, "output": {"dir": str(run_dir)}})
        prepared = prepare(cfg)
        generator = torch.Generator().manual_seed(seed)
        trained = {k: v + 0.3 * torch.randn(v.shape, generator=generator)
                   for k, v in inference_state(prepared.model).items()}
        run_dir.mkdir()
        runs.atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        runs.save_checkpoint(run_dir, trained, {"epoch": 1})
        return run_dir

    return make


def run_outputs(run_dir: Path) -> torch.Tensor:
    """What tunelab computes for the probe with the run rebuilt from base + checkpoint."""
    _, prepared = rebuild_run(run_dir)
    with torch.no_grad():
        result = prepared.model.eval()(input_ids=PROBE, attention_mask=PROBE_MASK)
    return result if isinstance(result, torch.Tensor) else result.logits


def base_outputs(model_dir: Path) -> torch.Tensor:
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(model_dir).eval()(input_ids=PROBE, attention_mask=PROBE_MASK).logits


def export_cli(run_dir: Path, fmt: str, output: Path, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["export", str(run_dir), "--format", fmt, "--output", str(output)])
    out, err = capsys.readouterr()
    return rc, out, err


def exported(run_dir: Path, fmt: str, capsys) -> Path:
    output = run_dir.parent / f"{run_dir.name}-{fmt}"
    rc, out, err = export_cli(run_dir, fmt, output, capsys)
    assert rc == 0, err
    assert f"exported as {fmt}" in out
    record = json.loads((output / "export.json").read_text())
    assert record["format"] == fmt and record["run_dir"] == str(run_dir.resolve())
    assert record["versions"]["peft"] and record["versions"]["transformers"] and (output / "README.md").is_file()
    assert sorted(record["files"]) == sorted(p.name for p in output.iterdir())
    return output


def base_dir(run_dir: Path) -> str:
    return load_config(run_dir / "config.yaml").model.name


# ---------------------------------------------------------------- PEFT format


def peft_causal(run_dir: Path, output: Path) -> torch.Tensor:
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir(run_dir)), str(output)).eval()
    with torch.no_grad():
        return model(input_ids=PROBE, attention_mask=PROBE_MASK).logits


@pytest.mark.parametrize("model, method", [
    ("llama", {"name": "lora", "r": 2, "alpha": 6}),
    ("gpt2", {"name": "lora", "r": 2, "alpha": 6}),  # default: c_attn with q, k and v slices
    ("gpt2", {"name": "lora", "r": 2, "alpha": 6, "target_modules": ["c_attn:q+v"]}),
    ("gpt2", {"name": "lora", "r": 3, "alpha": 4, "target_modules": ["c_attn:q+v", "mlp.c_proj"]}),  # two ranks
    ("llama", {"name": "ia3"}),
    ("gpt2", {"name": "ia3"}),
    ("llama", {"name": "prefix", "num_virtual_tokens": 3}),
    ("gpt2", {"name": "prefix", "num_virtual_tokens": 3}),
    ("llama", {"name": "prefix", "num_virtual_tokens": 3, "reparameterize": True, "hidden_size": 8}),
    ("llama", {"name": "lora", "r": 2, "alpha": 6, "use_dora": True}),
    ("gpt2", {"name": "lora", "r": 2, "alpha": 6, "use_dora": True, "target_modules": ["c_attn:q+v"]}),
    ("llama", {"name": "lora", "r": 2, "alpha": 6, "scaling": "rslora"}),
    ("llama", {"name": "lora", "r": 2, "alpha": 6, "init": "pissa"}),
    ("gpt2", {"name": "lora", "r": 2, "alpha": 6, "init": "pissa", "use_dora": True}),
    ("llama", {"name": "lora", "r": 2, "alpha": 6, "init": "olora", "target_modules": "all-linear"}),
    *[("llama", spec) for spec in PEFT_TUNERS],
], ids=lambda v: v if isinstance(v, str) else "-".join(str(x) for x in v.values()))
def test_peft_export_of_a_causal_run_gives_the_runs_outputs(make_run, capsys, model, method):
    run_dir = make_run(model, method)
    output = exported(run_dir, "peft", capsys)
    assert {p.name for p in output.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "README.md",
                                                  "export.json"}
    ours, theirs = run_outputs(run_dir), peft_causal(run_dir, output)
    assert not torch.allclose(ours, base_outputs(base_dir(run_dir)), atol=1e-3)  # the adapter does something
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_peft_prompt_export_gives_the_runs_outputs_after_the_virtual_positions(make_run, capsys, model):
    run_dir = make_run(model, {"name": "prompt", "num_virtual_tokens": 4, "init": "random"})
    output = exported(run_dir, "peft", capsys)
    assert list(load_file(str(output / "adapter_model.safetensors"))) == ["prompt_embeddings"]
    ours, theirs = run_outputs(run_dir), peft_causal(run_dir, output)
    assert theirs.shape[1] == ours.shape[1] + 4  # PEFT returns the virtual positions too
    assert not torch.allclose(ours, base_outputs(base_dir(run_dir)), atol=1e-3)
    torch.testing.assert_close(theirs[:, 4:], ours, atol=ATOL, rtol=0)
    assert "logits[:, 4:]" in (output / "README.md").read_text()


def test_peft_lora_on_q_and_v_slices_is_a_block_structured_lora_on_c_attn(make_run, capsys):
    run_dir = make_run("gpt2", {"name": "lora", "r": 2, "alpha": 6, "target_modules": ["c_attn:q+v"]})
    output = exported(run_dir, "peft", capsys)
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 12 and config["fan_in_fan_out"] is True  # alpha / r = 3
    tensors = load_file(str(output / "adapter_model.safetensors"))
    b = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]  # (3 * 16, 4)
    assert b.shape == (48, 4)
    assert torch.count_nonzero(b[:16, 2:]) == 0 and torch.count_nonzero(b[16:32]) == 0  # k gets nothing
    assert torch.count_nonzero(b[32:, :2]) == 0 and torch.count_nonzero(b[:16, :2]) > 0
    assert tensors["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"].shape == (4, 16)


def test_stacked_lora_computes_the_per_slice_update():
    layer = LoRALayer(torch.nn.Linear(4, 6), r=2, alpha=4, enabled_slices=(True, False, True))
    with torch.no_grad():
        layer.lora_B.normal_()
    a, b = stacked_lora(layer)
    torch.testing.assert_close(b @ a * layer.scaling, layer.delta_weight())


@pytest.mark.parametrize("method", [{"name": "lora", "r": 2, "alpha": 4}, {"name": "ia3"}], ids=lambda m: m["name"])
def test_peft_export_of_a_classification_run_keeps_the_head_in_modules_to_save(make_run, capsys, method):
    from tunelab.tasks.classification import SequenceClassifier

    run_dir = make_run("bert", method)
    output = exported(run_dir, "peft", capsys)
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["classifier"] and config["task_type"] is None
    trained_head = runs.load_tensors(run_dir / runs.CHECKPOINT / "model.safetensors")["classifier.weight"]
    assert torch.equal(load_file(str(output / "adapter_model.safetensors"))["base_model.model.classifier.weight"],
                       trained_head)
    cfg = load_config(run_dir / "config.yaml")
    base = SequenceClassifier(AutoModel.from_pretrained(cfg.model.name), 2, cfg.task.pooling)  # a random head
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(base, str(output)).eval()(input_ids=PROBE, attention_mask=PROBE_MASK)
    torch.testing.assert_close(theirs, run_outputs(run_dir), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- merged format


@pytest.mark.parametrize("model, method", [
    ("llama", {"name": "lora", "r": 2, "alpha": 6}),
    ("gpt2", {"name": "lora", "r": 2, "alpha": 6, "target_modules": ["c_attn:q+v"]}),
    ("llama", {"name": "ia3"}),
    ("gpt2", {"name": "ia3"}),
    ("llama", {"name": "bitfit"}),  # biases added to Llama's bias-free layers: the config must declare them
    ("gpt2", {"name": "bitfit"}),
    ("llama", {"name": "full"}),
    ("llama", {"name": "head"}),  # lm_head untied from the embeddings
    ("llama", {"name": "lora", "r": 2, "alpha": 6, "use_dora": True}),
    ("gpt2", {"name": "lora", "r": 2, "alpha": 6, "init": "pissa"}),
    ("llama", {"name": "lora", "r": 2, "alpha": 6, "init": "pissa", "use_dora": True, "scaling": "rslora"}),
    ("llama", {"name": "peft", "type": "LOHA", "r": 2}),
    ("llama", {"name": "peft", "type": "OFT", "r": 0, "oft_block_size": 4}),
], ids=lambda v: v if isinstance(v, str) else "-".join(str(x) for x in v.values()))
def test_merged_export_of_a_causal_run_loads_with_transformers_alone(make_run, capsys, model, method):
    run_dir = make_run(model, method)
    output = exported(run_dir, "merged", capsys)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in output.iterdir()}
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(output).eval()(input_ids=PROBE, attention_mask=PROBE_MASK).logits
    ours = run_outputs(run_dir)
    assert not torch.allclose(ours, base_outputs(base_dir(run_dir)), atol=1e-3)
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


def merged_classifier(output: Path, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The merged classification export loaded as its README says: transformers with the code it carries."""
    model = AutoModelForSequenceClassification.from_pretrained(output, trust_remote_code=True).eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("method", [{"name": "lora", "r": 2, "alpha": 4}, {"name": "ia3"}, {"name": "bitfit"},
                                    {"name": "full"}, {"name": "head"}], ids=lambda m: m["name"])
def test_merged_export_of_a_classification_run_is_a_transformers_classifier(make_run, capsys, method):
    run_dir = make_run("bert", method)
    output = exported(run_dir, "merged", capsys)
    assert json.loads((output / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    assert "trust_remote_code=True" in (output / "README.md").read_text() and (output / "pooled_head.py").is_file()
    torch.testing.assert_close(merged_classifier(output, PROBE, PROBE_MASK), run_outputs(run_dir), atol=ATOL, rtol=0)
    with torch.no_grad():  # the body alone, for whoever wants the hidden states
        body = AutoModel.from_pretrained(output).eval()(input_ids=PROBE, attention_mask=PROBE_MASK).last_hidden_state
        _, prepared = rebuild_run(run_dir)
        ours = prepared.model.eval().backbone(input_ids=PROBE, attention_mask=PROBE_MASK).last_hidden_state
    torch.testing.assert_close(body, ours, atol=ATOL, rtol=0)


def test_merged_export_of_biases_an_architecture_cannot_hold_is_refused(make_run, capsys, monkeypatch):
    """Were a config flag not to declare BitFit's added biases, loading would drop them: refused, nothing left."""
    run_dir = make_run("llama", {"name": "bitfit"})
    monkeypatch.setattr(merged, "declare_biases", lambda model: None)
    output = run_dir.parent / "merged"
    rc, _, err = export_cli(run_dir, "merged", output, capsys)
    assert rc == 2 and err.count("\n") == 1 and "cannot be merged" in err
    assert not output.exists() and not list(run_dir.parent.glob(".merged*"))


@pytest.mark.parametrize("model, fmt", [("bert", "merged"), ("bert", "peft"), ("llama", "merged"), ("llama", "peft")])
def test_the_readme_code_loads_the_export_and_gives_the_runs_outputs(make_run, capsys, model, fmt):
    run_dir = make_run(model, {"name": "lora", "r": 2, "alpha": 4})
    output = exported(run_dir, fmt, capsys)
    code = re.search(r"```python\n(.*?)```", (output / "README.md").read_text(), re.S).group(1)
    scope = {"DIR": str(output), "ids": PROBE, "mask": PROBE_MASK}
    with torch.no_grad():
        exec(code, scope)
        if "scores" in scope:  # the merged classifier's snippet: pipeline on a text of its own
            theirs = torch.tensor([[d["score"] for d in sorted(row, key=lambda d: d["label"])]
                                   for row in scope["scores"]])
            ours = torch.tensor([[p for _, p in sorted(row["probabilities"].items())]
                                 for row in predict_run(run_dir, ["a gripping film"])])
        elif "logits" in scope:
            ours, theirs = run_outputs(run_dir), scope["logits"]
        else:
            ours, theirs = run_outputs(run_dir), scope["model"](input_ids=PROBE, attention_mask=PROBE_MASK).logits
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- what a format cannot hold


@pytest.mark.parametrize("model, method, fmt, expected", [
    ("llama", {"name": "bitfit"}, "peft", "--format merged"),
    ("llama", {"name": "full"}, "peft", "--format merged"),
    ("bert", {"name": "head"}, "peft", "--format merged"),
    ("llama", {"name": "adapter", "size": 4}, "peft", "nonlinear"),
    ("llama", {"name": "adapter", "size": 4}, "merged", "cannot be merged"),
    ("llama", {"name": "prompt", "num_virtual_tokens": 2, "init": "random"}, "merged", "--format peft"),
    ("llama", {"name": "prefix", "num_virtual_tokens": 2}, "merged", "--format peft"),
    ("bert", {"name": "prompt", "num_virtual_tokens": 2, "init": "random"}, "peft", "pool"),
    ("llama", {"name": "none"}, "merged", "trained nothing"),
], ids=lambda v: v if isinstance(v, str) else v["name"])
def test_what_a_format_cannot_hold_is_refused_in_one_line(make_run, capsys, model, method, fmt, expected):
    run_dir = make_run(model, method)
    assert_refused(run_dir, fmt, run_dir.parent / "out", capsys, expected)


def test_an_lstm_run_is_refused_in_one_line(tmp_path, sentiment_csv, capsys):
    run_dir = tmp_path / "lstm"
    cfg = {"data": {"name": str(sentiment_csv)}, "method": {"name": "lstm", "min_freq": 1, "embedding_dim": 8,
                                                             "hidden_size": 8},
           "train": {"epochs": 1, "batch_size": 16}, "output": {"dir": str(run_dir)}}
    assert main(["train", *cli_args(cfg)]) == 0
    assert_refused(run_dir, "merged", tmp_path / "out", capsys, "LSTM baseline")


# ---------------------------------------------------------------- bad input


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def assert_refused(run_dir: Path, fmt: str, output: Path, capsys, expected: str) -> str:
    before, output_before = tree_hash(run_dir), output.exists() and tree_hash(output)
    rc, out, err = export_cli(run_dir, fmt, output, capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err, err
    assert tree_hash(run_dir) == before
    assert (output.exists() and tree_hash(output)) == output_before  # an output given is left as it was
    assert not list(output.parent.glob(f".{output.name}*"))
    return err


def test_a_run_without_a_checkpoint_is_refused(make_run, capsys):
    run_dir = make_run("llama", {"name": "lora", "r": 2, "alpha": 4})
    (run_dir / runs.CHECKPOINT / "model.safetensors").unlink()
    assert_refused(run_dir, "peft", run_dir.parent / "out", capsys, "has no checkpoint")


def test_an_unknown_format_is_refused_with_the_formats(make_run, capsys):
    run_dir = make_run("llama", {"name": "lora", "r": 2, "alpha": 4})
    err = assert_refused(run_dir, "gguf", run_dir.parent / "out", capsys, "unknown export format 'gguf'")
    assert "peft" in err and "merged" in err


@pytest.mark.parametrize("fmt", ["peft", "merged"])
def test_an_output_directory_that_is_not_empty_is_refused(make_run, capsys, fmt):
    run_dir = make_run("llama", {"name": "lora", "r": 2, "alpha": 4})
    output = run_dir.parent / "taken"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    assert_refused(run_dir, fmt, output, capsys, "exists and is not empty")
    assert_refused(run_dir, fmt, output / "notes.txt", capsys, "is a file")


def test_an_empty_output_directory_is_used(make_run, capsys):
    run_dir = make_run("llama", {"name": "lora", "r": 2, "alpha": 4})
    output = run_dir.parent / "empty"
    output.mkdir()
    rc, _, err = export_cli(run_dir, "peft", output, capsys)
    assert rc == 0, err
    assert (output / "adapter_model.safetensors").is_file()


def test_a_crash_while_writing_leaves_no_half_export(make_run, capsys, monkeypatch):
    run_dir = make_run("llama", {"name": "lora", "r": 2, "alpha": 4})
    before, siblings = tree_hash(run_dir), sorted(p.name for p in run_dir.parent.iterdir())
    original = merged.write

    def crash(cfg, prepared, folder):
        original(cfg, prepared, folder)  # the weights are written, then the process dies
        raise RuntimeError("killed")

    monkeypatch.setattr(merged, "write", crash)
    output = run_dir.parent / "out"
    with pytest.raises(RuntimeError, match="killed"):
        export.export_run(run_dir, "merged", output)
    assert not output.exists() and sorted(p.name for p in run_dir.parent.iterdir()) == siblings  # no temporary left
    assert tree_hash(run_dir) == before


# ---------------------------------------------------------------- a real run, end to end


def test_a_trained_run_exports_in_both_formats(tiny_run_config, capsys):
    assert main(["train", *cli_args({**tiny_run_config, "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2}})]) == 0
    run_dir = Path(tiny_run_config["output"]["dir"])
    before = tree_hash(run_dir)
    ours = run_outputs(run_dir)
    merged_dir, peft_dir = exported(run_dir, "merged", capsys), exported(run_dir, "peft", capsys)
    assert tree_hash(run_dir) == before  # an export only reads the run
    torch.testing.assert_close(merged_classifier(merged_dir, PROBE, PROBE_MASK), ours, atol=ATOL, rtol=0)
    record = json.loads((peft_dir / "export.json").read_text())
    assert record["method"] == "lora" and record["peft_type"] == "LORA" and record["modules_to_save"] == ["classifier"]
    assert record["checkpoint_sha256"] == hashlib.sha256(
        (run_dir / "checkpoint" / "model.safetensors").read_bytes()).hexdigest()
