"""The preference task with DPO on a tiny causal LM: what counts, the reference, one step."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import cli_args, write_jsonl
from tunelab import cli
from tunelab.build import prepare
from tunelab.config import load_config
from tunelab.methods import common
from tunelab.tasks import preference

PAIRS = [{"prompt": "the film was", "chosen": "good fun", "rejected": "dull and boring"},
         {"prompt": "a story", "chosen": "superb", "rejected": "awful"},
         {"prompt": "the actor is", "chosen": "great", "rejected": "weak"},
         {"prompt": "the plot", "chosen": "was fine", "rejected": "was poor and dull"}] * 6


@pytest.fixture
def pairs_dir(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for split, rows in (("train", PAIRS), ("validation", PAIRS[:8]), ("test", PAIRS[:8])):
        write_jsonl(folder / f"{split}.jsonl", rows)
    return folder


def config(tiny_causal_dir, pairs_dir, tmp_path, **task) -> dict:
    return {"model": {"name": str(tiny_causal_dir)}, "data": {"name": str(pairs_dir)},
            "task": {"name": "preference", "max_length": 16, "max_prompt_length": 6, **task},
            "method": {"name": "lora", "r": 2, "alpha": 4}, "train": {"epochs": 1, "batch_size": 4, "lr": 5e-2},
            "eval": {"batch_size": 4}, "output": {"dir": str(tmp_path / "run")}}


def prepared_run(tiny_causal_dir, pairs_dir, tmp_path, **overrides):
    raw = config(tiny_causal_dir, pairs_dir, tmp_path)
    for section, values in overrides.items():
        raw[section] = {**raw[section], **values}
    return prepare(load_config(None, raw))


def test_prompt_tokens_never_count_and_chosen_rows_come_first(tiny_causal_dir, pairs_dir, tmp_path):
    p = prepared_run(tiny_causal_dir, pairs_dir, tmp_path)
    examples = [p.splits["train"][i] for i in range(2)]
    batch = p.collate(examples)
    assert batch["input_ids"].shape[0] == 4
    for row, (example, key) in enumerate([(e, "chosen_ids") for e in examples]
                                         + [(e, "rejected_ids") for e in examples]):
        labels = batch["labels"][row].tolist()
        n_prompt = len(example["prompt_ids"])
        assert all(label == -100 for label in labels[:n_prompt])
        assert [label for label in labels if label != -100] == example[key]


def test_an_untrained_lora_is_its_own_reference_log_2_and_zero_rewards(tiny_causal_dir, pairs_dir, tmp_path):
    p = prepared_run(tiny_causal_dir, pairs_dir, tmp_path)
    batch = p.collate([p.splits["train"][i] for i in range(4)])
    loss, metrics = preference.loss(p.model, batch)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6) and metrics["reward_margin"].abs().item() < 1e-6


@pytest.fixture(scope="module")
def tiny_gpt2_causal_dir(tiny_causal_dir, tmp_path_factory):
    """A tiny GPT-2 with the tiny Llama's tokenizer: learned absolute positions, which shift
    with the padding if position ids do not follow the attention mask."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2-causal")
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_dir)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=2, n_head=2, n_positions=128,
                               pad_token_id=0, eos_token_id=2, bos_token_id=2)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_response_logps_do_not_depend_on_padding_or_on_the_batch(tiny_causal_dir, tiny_gpt2_causal_dir, pairs_dir,
                                                                  tmp_path, family):
    p = prepared_run(tiny_causal_dir if family == "llama" else tiny_gpt2_causal_dir, pairs_dir, tmp_path)
    model = p.model.eval()
    examples = [p.splits["train"][i] for i in range(4)]
    together = preference.response_logps(model, p.collate(examples))
    alone = torch.cat([preference.response_logps(model, p.collate([e])) for e in examples])  # [c0, r0, c1, r1, ...]
    torch.testing.assert_close(together, alone.view(4, 2).T.reshape(-1), atol=1e-5, rtol=0)


def test_precomputed_and_on_the_fly_reference_agree_and_disabled_lora_is_the_base(tiny_causal_dir, pairs_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    on_the_fly = prepared_run(tiny_causal_dir, pairs_dir, tmp_path)
    precomputed = prepared_run(tiny_causal_dir, pairs_dir, tmp_path, task={"precompute_reference": True})
    assert preference.REFERENCE in precomputed.splits["train"].column_names
    common.load_trainable_state(on_the_fly.model, {k: torch.randn_like(v) for k, v in
                                                   common.trainable_state(on_the_fly.model).items()})
    examples = [precomputed.splits["train"][i] for i in range(4)]
    batch = precomputed.collate(examples)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(preference.reference_logps(on_the_fly.model.eval(), {k: v for k, v in batch.items()
                                                                                        if k != preference.REFERENCE}),
                                   batch[preference.REFERENCE], atol=1e-5, rtol=0)
        torch.testing.assert_close(preference.response_logps(base, batch), batch[preference.REFERENCE],
                                   atol=1e-5, rtol=0)


def test_one_step_raises_the_chosen_log_ratio_over_the_rejected(tiny_causal_dir, pairs_dir, tmp_path):
    p = prepared_run(tiny_causal_dir, pairs_dir, tmp_path)
    model = p.model.train()
    batch = p.collate([p.splits["train"][i] for i in range(8)])
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-2)
    for _ in range(3):
        loss, _ = preference.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after, metrics = preference.loss(model, batch)
    assert after.item() < math.log(2) and metrics["reward_margin"].item() > 0


def test_a_dpo_run_end_to_end(tiny_causal_dir, pairs_dir, tmp_path):
    assert cli.main(["train", *cli_args(config(tiny_causal_dir, pairs_dir, tmp_path))]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "preference" and summary["primary_metric"] == "reward_accuracy"
    assert {"loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"} <= summary["test"].keys()
    lines = (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == summary["test"]["examples"] == 8
    assert summary["preference"]["reference"] == {"kind": "modules switched off", "extra_bytes": 0}


def test_full_fine_tuning_precomputes_its_reference_instead_of_copying_the_model(tiny_causal_dir, pairs_dir, tmp_path):
    raw = dict(config(tiny_causal_dir, pairs_dir, tmp_path), method={"name": "full"})
    assert cli.main(["train", *cli_args(raw)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # two float64 log-probabilities for each of the 24 + 8 + 8 pairs, nothing the model's size
    assert summary["preference"]["reference"] == {"kind": "precomputed before training", "extra_bytes": 40 * 2 * 8}


def test_bitfit_switches_off_to_its_kept_pretrained_biases(tiny_causal_dir, pairs_dir, tmp_path):
    from tunelab.methods.bitfit import PretrainedBiases

    p = prepare(load_config(None, dict(config(tiny_causal_dir, pairs_dir, tmp_path), method={"name": "bitfit"})))
    kept = [b for m in p.model.modules() if isinstance(m, PretrainedBiases) for b in m.buffers()]
    assert kept and preference.REFERENCE not in p.splits["train"].column_names
    assert preference.reference_kind(p) == {"kind": "modules switched off",
                                            "extra_bytes": 4 * sum(b.numel() for b in kept)}


@pytest.mark.parametrize("change, phrase", [
    ({"task": {"objective": {"beta": 0}}}, "task.objective.beta"),
    ({"task": {"objective": {"loss": "ipo", "label_smoothing": 0.1}}}, "sigmoid loss only"),
    ({"task": {"max_prompt_length": 16}}, "leaves no room for a response"),
    ({"model": {"name": "ENCODER"}}, "needs a causal LM"),
])
def test_bad_preference_input_is_one_line(tiny_causal_dir, tiny_bert_dir, pairs_dir, tmp_path, capsys, change, phrase):
    raw = config(tiny_causal_dir, pairs_dir, tmp_path)
    for section, values in change.items():
        raw[section] = {**raw[section], **values}
    if raw["model"]["name"] == "ENCODER":
        raw["model"]["name"] = str(tiny_bert_dir)
    capsys.readouterr()
    assert cli.main(["train", *cli_args(raw)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and phrase in err, err


@pytest.mark.parametrize("row, phrase", [
    ({"prompt": "the film was", "chosen": "good"}, "rejected"),
    ({"prompt": "the film was", "chosen": "", "rejected": "dull"}, "chosen"),
], ids=["no-rejected", "empty-response"])
def test_a_bad_row_is_one_line(tiny_causal_dir, tmp_path, capsys, row, phrase):
    folder = tmp_path / "bad"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        write_jsonl(folder / f"{split}.jsonl", PAIRS[:4] + [row])
    capsys.readouterr()
    assert cli.main(["train", *cli_args(config(tiny_causal_dir, folder, tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and phrase in err, err


def test_pairs_with_the_same_response_twice_are_left_out_and_counted(tiny_causal_dir, tmp_path, capsys):
    folder = tmp_path / "same"
    folder.mkdir()
    for split in ("train", "validation", "test"):
        write_jsonl(folder / f"{split}.jsonl",
                    PAIRS[:4] + [{"prompt": "a story", "chosen": "fine", "rejected": "fine"}])
    capsys.readouterr()
    p = prepare(load_config(None, config(tiny_causal_dir, folder, tmp_path)))
    assert p.dropped == 3 and len(p.splits["train"]) == 4
    assert "3 pair(s) have the same chosen and rejected response" in capsys.readouterr().err


def test_generations_are_scored_by_a_reward_run_and_untrained_kl_is_zero(tiny_causal_dir, pairs_dir, tiny_run_config,
                                                                        tmp_path):
    assert cli.main(["train", *cli_args(tiny_run_config)]) == 0  # a tiny sentiment classifier: the reward
    raw = config(tiny_causal_dir, pairs_dir, tmp_path)
    raw["task"].update(reward_run=tiny_run_config["output"]["dir"], eval_generations=6, max_new_tokens=5)
    raw["method"] = {"name": "none"}
    raw["output"] = {"dir": str(tmp_path / "untrained")}
    assert cli.main(["train", *cli_args(raw)]) == 0
    generation = json.loads((tmp_path / "untrained" / "summary.json").read_text())["preference"]["generation"]
    assert generation["examples"] == 6 and 0 <= generation["reward"] <= 1
    assert generation["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy is its own reference
    samples = json.loads((tmp_path / "untrained" / "samples.json").read_text())["after"]
    assert len(samples) == 6 and all(0 <= s["reward"] <= 1 for s in samples)
    raw["task"]["reward_label"] = "neutral"
    raw["output"] = {"dir": str(tmp_path / "bad-label")}
    assert cli.main(["train", *cli_args(raw)]) == 2
    assert not (tmp_path / "bad-label").exists(), "refused before anything is written"


def test_left_padded_sampling_sees_each_prompt_as_if_alone_on_gpt2(tiny_gpt2_causal_dir):
    """The generations scored after training are sampled in left-padded batches: GPT-2's
    absolute positions must follow the attention mask there, or a short prompt is read shifted."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_causal_dir).eval()
    short, long = [5, 9, 13], [7, 8, 9, 10, 11, 12, 3]
    ids = torch.tensor([[0] * 4 + short, long])
    mask = torch.tensor([[0] * 4 + [1] * 3, [1] * 7])
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "output_scores": True,
          "return_dict_in_generate": True}
    batched = model.generate(input_ids=ids, attention_mask=mask, **kw).scores
    alone = model.generate(input_ids=torch.tensor([short]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                           **kw).scores
    for step, (b, a) in enumerate(zip(batched, alone)):
        torch.testing.assert_close(b[0], a[0], atol=1e-5, rtol=0, msg=f"step {step}")
    # and the padding really shifts positions when they are not taken from the mask
    shifted = model(input_ids=ids, attention_mask=mask, position_ids=torch.arange(7).expand(2, 7)).logits[0, -1]
    assert (shifted - alone[0][0]).abs().max() > 1e-3
