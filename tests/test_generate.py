"""`tunelab generate`: greedy decoding equals an argmax loop over the logits, seeded sampling
repeats, a run directory generates with its method and checkpoint, bad input is one line."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import WORDS, cli_args, rerecord_checksums, write_jsonl
from tunelab import cli, generate, runs
from tunelab.config import load_config, to_yaml, validate_config
from tunelab.methods import apply_method
from tunelab.methods.common import load_trainable_state

EOS = 2  # conftest's tiny causal model: <pad> 0, <unk> 1, <eos> 2


def save_varied_causal(tiny_causal_dir: Path, folder: Path, seed: int) -> Path:
    """conftest's tiny causal model (same tokenizer and shapes) with weights drawn at std 1, not
    0.02: that small a model at 0.02 continues every prompt by repeating one token."""
    shutil.copytree(tiny_causal_dir, folder, dirs_exist_ok=True)
    config = LlamaConfig.from_pretrained(folder)
    config.initializer_range = 1.0
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def causal_dir(tiny_causal_dir, tmp_path_factory) -> Path:
    # Seed 2: its greedy continuations of the prompts used here run 10 tokens without <eos>.
    return save_varied_causal(tiny_causal_dir, tmp_path_factory.mktemp("varied-causal"), seed=2)


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choices(WORDS, k=8)) for _ in range(80)) + "\n", encoding="utf-8")
    return path


def load_folder(folder: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    return LlamaForCausalLM.from_pretrained(folder).eval(), PreTrainedTokenizerFast.from_pretrained(folder)


@torch.no_grad()
def argmax_loop(model, ids: list[int], max_new_tokens: int, eos: int = EOS) -> list[int]:
    """Greedy decoding by hand: the full sequence through the model, take the argmax, repeat."""
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=torch.tensor([ids + new])).logits[0, -1]
        new.append(int(logits.argmax()))
        if new[-1] == eos:
            break
    return new


def run_json(capsys, argv: list[str]) -> list[dict]:
    capsys.readouterr()
    assert cli.main(["generate", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_greedy_equals_argmax_loop_over_the_logits(causal_dir, capsys):
    prompts = ["the movie was", "a good film but"]
    results = run_json(capsys, ["--model", str(causal_dir), "--max-new-tokens", "8",
                                *[a for p in prompts for a in ("--prompt", p)]])
    model, tokenizer = load_folder(causal_dir)
    assert [r["prompt"] for r in results] == prompts
    for prompt, result in zip(prompts, results):
        expected = argmax_loop(model, tokenizer(prompt)["input_ids"], 8)
        assert len(expected) > 1, "a one-token completion would prove little"
        assert result["completion"] == tokenizer.decode(expected, skip_special_tokens=True)


def test_model_generation_defaults_do_not_leak_into_the_options(causal_dir, tmp_path, capsys):
    """A generation_config.json asking for sampling, beams and penalties changes nothing we were not asked for."""
    folder = Path(shutil.copytree(causal_dir, tmp_path / "model"))
    GenerationConfig(do_sample=True, top_k=2, temperature=5.0, repetition_penalty=3.0, num_beams=3,
                     no_repeat_ngram_size=1).save_pretrained(folder)
    greedy = run_json(capsys, ["--model", str(folder), "--prompt", "the plot", "--max-new-tokens", "10"])
    model, tokenizer = load_folder(folder)
    expected = argmax_loop(model, tokenizer("the plot")["input_ids"], 10)
    assert greedy[0]["completion"] == tokenizer.decode(expected, skip_special_tokens=True)
    # the penalty we do ask for is applied
    penalised = run_json(capsys, ["--model", str(folder), "--prompt", "the plot", "--max-new-tokens", "10",
                                  "--repetition-penalty", "50"])
    assert penalised[0]["completion"] != greedy[0]["completion"]


def test_seeded_sampling_repeats_and_seeds_differ(causal_dir, capsys):
    base = ["--model", str(causal_dir), "--prompt", "the film", "--max-new-tokens", "20", "--sample",
            "--temperature", "2.0", "--top-k", "20", "--top-p", "0.95"]
    first = run_json(capsys, [*base, "--seed", "5"])
    again = run_json(capsys, [*base, "--seed", "5"])
    other = run_json(capsys, [*base, "--seed", "6"])
    assert first == again
    assert first[0]["completion"] != other[0]["completion"]


def test_streaming_prints_each_prompt_and_its_completion(causal_dir, tmp_path, capsys):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("the story\n\na dull plot\n", encoding="utf-8")
    args = ["--model", str(causal_dir), "--prompts-file", str(prompts_file), "--prompt", "fun", "--max-new-tokens", "6"]
    results = run_json(capsys, args)
    assert [r["prompt"] for r in results] == ["fun", "the story", "a dull plot"]  # --prompt first, blank lines skipped
    assert cli.main(["generate", *args]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [r["prompt"] + r["completion"] for r in results]


def lm_run(tmp_path: Path, model_dir: Path, text: Path, method: dict) -> Path:
    run_dir = tmp_path / f"lm-{method['name']}"
    cfg = {"model": {"name": str(model_dir)}, "data": {"name": str(text)},
           "task": {"name": "lm", "block_size": 16, "eval_before": False, "sample_max_new_tokens": 4},
           "method": method, "train": {"max_steps": 6, "batch_size": 4, "lr": 5e-2, "warmup_ratio": 0.0},
           "output": {"dir": str(run_dir)}}
    assert cli.main(["train", *cli_args(cfg)]) == 0
    return run_dir


@pytest.mark.parametrize("method", [{"name": "lora", "r": 4, "alpha": 8}, {"name": "prompt", "num_virtual_tokens": 3},
                                    {"name": "prefix", "num_virtual_tokens": 3}], ids=lambda m: m["name"])
def test_run_directory_generates_with_its_method_and_checkpoint(method, causal_dir, tiny_text, tmp_path, capsys):
    run_dir = lm_run(tmp_path, causal_dir, tiny_text, method)
    # A few steps move the tensors little; noise on them makes "was the checkpoint used" visible in the text.
    checkpoint = run_dir / runs.CHECKPOINT / "model.safetensors"
    torch.manual_seed(0)
    runs.save_tensors(checkpoint, {k: v + torch.randn_like(v) for k, v in runs.load_tensors(checkpoint).items()})
    rerecord_checksums(run_dir)  # changed on purpose: not a damaged file
    prompt = "the actor was very"
    results = run_json(capsys, [str(run_dir), "--prompt", prompt, "--max-new-tokens", "8"])

    # The same by hand: base weights, the method applied, the checkpoint's tensors loaded.
    model, tokenizer = load_folder(causal_dir)
    ids = tokenizer(prompt)["input_ids"]
    base = tokenizer.decode(argmax_loop(model, ids, 8), skip_special_tokens=True)
    apply_method(model, load_config(run_dir / "config.yaml").method, "llama", tokenizer)
    load_trainable_state(model, runs.load_tensors(checkpoint))
    model.eval()
    assert results[0]["completion"] == tokenizer.decode(argmax_loop(model, ids, 8), skip_special_tokens=True)
    assert results[0]["completion"] != base


def test_template_renders_the_runs_prompt(causal_dir, tmp_path, capsys):
    run_dir = tmp_path / "instruct"
    rows = [{"text": f"the film was {w}", "label": int(w in ("good", "fun"))}
            for w in ["good", "bad", "fun", "dull"] * 10]
    data = write_jsonl(tmp_path / "reviews.jsonl", rows)
    cfg = {"model": {"name": str(causal_dir)}, "data": {"name": str(data)},
           "task": {"name": "instruct", "max_length": 48, "shots": 2, "label_words": ["negative", "positive"]},
           "method": {"name": "prompt", "num_virtual_tokens": 2},
           "train": {"max_steps": 3, "batch_size": 8, "lr": 5e-2}, "output": {"dir": str(run_dir)}}
    assert cli.main(["train", *cli_args(cfg)]) == 0
    results = run_json(capsys, [str(run_dir), "--template", "--prompt", "a superb film", "--max-new-tokens", "3"])
    rendered = results[0]["rendered"]
    assert rendered.endswith("Review: a superb film\nSentiment:")
    assert rendered.count("Sentiment:") == 3, "the run's two demonstrations come first"
    # generating from the rendered text without --template gives the same completion
    plain = run_json(capsys, [str(run_dir), "--prompt", rendered, "--max-new-tokens", "3"])
    assert plain[0]["completion"] == results[0]["completion"]


def test_template_with_several_fields_takes_a_json_object():
    cfg = validate_config({"task": {"name": "instruct", "template": "{passage}\nQuestion: {question}?\nAnswer:"}})
    gen = generate.Generator(model=None, tokenizer=None, cfg=cfg)
    text = generate.render_prompt(gen, json.dumps({"passage": "Cats purr.", "question": "do cats purr"}))
    assert text == "Cats purr.\nQuestion: do cats purr?\nAnswer:"
    with pytest.raises(generate.UserError, match="fields passage, question; give each prompt as a JSON object"):
        generate.render_prompt(gen, "do cats purr")


def test_options_reach_the_generation_config():
    options = generate.make_options(max_new_tokens=7, sample=True, temperature=0.5, top_k=3, top_p=0.8,
                                    repetition_penalty=1.2, seed=None)
    tokenizer = type("T", (), {"pad_token_id": 0, "eos_token_id": 2})()
    config = options.generation_config(tokenizer)
    assert (config.max_new_tokens, config.do_sample, config.temperature, config.top_k, config.top_p,
            config.repetition_penalty, config.pad_token_id, config.eos_token_id) == (7, True, 0.5, 3, 0.8, 1.2, 0, 2)
    greedy = generate.make_options().generation_config(tokenizer)
    assert greedy.do_sample is False and greedy.max_new_tokens == 50


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0", "--sample"], "--temperature 0.0: input should be greater than 0"),
    (["--temperature", "-1", "--sample"], "--temperature -1.0: input should be greater than 0"),
    (["--top-p", "0", "--sample"], "--top-p 0.0: input should be greater than 0"),
    (["--top-p", "1.5", "--sample"], "--top-p 1.5: input should be less than or equal to 1"),
    (["--top-k", "-1", "--sample"], "--top-k -1: input should be greater than or equal to 0"),
    (["--repetition-penalty", "0"], "--repetition-penalty 0.0: input should be greater than 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: input should be greater than or equal to 1"),
    (["--temperature", "0.7"], "--temperature only applies when sampling; add --sample"),
    (["--top-k", "5", "--greedy"], "--top-k only applies when sampling; add --sample"),
    (["--sample", "--greedy"], "not allowed with argument"),
    (["--template"], "--template renders a run's task template; give a RUN_DIR"),
    (["--prompts-file", "missing.txt"], "prompts file not found: missing.txt"),
    (["--max-new-tokens", "127"], "exceeds the model's 128 positions"),
    (["--prompt", "  "], "tokenizes to nothing"),
])
def test_bad_options_are_one_line(args, message, tiny_causal_dir, capsys):
    argv = ["generate", "--model", str(tiny_causal_dir), *(["--prompt", "the film"] if "--prompt" not in args else []),
            *args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_model_and_prompt_are_required(tiny_causal_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    cases = [(["--prompt", "x"], "give a run directory or --model"),
             ([str(tmp_path), "--model", str(tiny_causal_dir), "--prompt", "x"], "give a run directory or --model"),
             (["--model", str(tiny_causal_dir)], "no prompt given"),
             (["--model", str(tiny_causal_dir), "--prompts-file", str(empty)], "has no prompts"),
             ([str(tmp_path), "--prompt", "x"], "is not a run directory")]
    for argv, message in cases:
        assert cli.main(["generate", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)


def test_encoder_run_and_encoder_model_are_refused(tiny_run_config, tiny_bert_dir, tmp_path, capsys):
    run_dir = tmp_path / "encoder-run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(to_yaml(validate_config(tiny_run_config)), encoding="utf-8")
    assert cli.main(["generate", str(run_dir), "--prompt", "the film"]) == 2
    assert "is a classification run; generate needs a run on a causal LM" in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(tiny_bert_dir), "--prompt", "the film"]) == 2
    assert "is not a causal language model" in capsys.readouterr().err


def test_template_on_an_lm_run_is_refused(tiny_causal_dir, tiny_text, tmp_path, capsys):
    run_dir = lm_run(tmp_path, tiny_causal_dir, tiny_text, {"name": "bitfit"})
    assert cli.main(["generate", str(run_dir), "--template", "--prompt", "the film"]) == 2
    assert "the run's task lm has none; drop --template" in capsys.readouterr().err


@pytest.mark.e2e
def test_smollm2_greedy_five_tokens(capsys):
    from tunelab import catalog

    prompt = "The capital of France is"
    results = run_json(capsys, ["--model", "smollm2-135m", "--prompt", prompt, "--max-new-tokens", "5"])
    model, tokenizer = load_folder(catalog.fetch("smollm2-135m", quiet=True))
    expected = argmax_loop(model, tokenizer(prompt)["input_ids"], 5, tokenizer.eos_token_id)
    assert len(expected) == 5
    assert results[0]["completion"] == tokenizer.decode(expected, skip_special_tokens=True)
    assert results[0]["completion"].strip()
