"""Chain-of-thought prompting: the prompts as text, the answer read from reasoning, a whole run."""

from __future__ import annotations

import json

import pytest
from accelerate import Accelerator
from torch.utils.data import DataLoader

from conftest import cli_args, write_jsonl
from tunelab import cli, generate
from tunelab.build import prepare
from tunelab.config import load_config
from tunelab.errors import UserError
from tunelab.tasks import decoding, instruct, reasoning
from tunelab.tasks.options import InstructTask

YES_NO = ["no", "yes"]  # label order: no = 0, yes = 1
MARKER = "So the answer is"


@pytest.mark.parametrize("output,expected", [
    ("A cat is an animal and animals eat. So the answer is yes.", 1),  # the answer after the reasoning
    ("Cats sleep a lot, no doubt. So the answer is yes.", 1),  # a label word inside the reasoning is not it
    ("I do not know what a mat is.", None),  # no answer ("not" is not "no"): invalid
    ("So the answer is yes. On second thought, so the answer is no.", 0),  # two answers: the last marker's
    ("So the answer is yes, not no.", 1),  # after the marker: its first label word
    ("So the answer is yes. So the answer is unclear.", 1),  # the last marker a label word follows
    ("So the answer is unclear, a cat might say yes", 1),
    ("The answer is unclear. So the answer is", None),  # markers, but no label word after any: invalid
    ("Yes, dogs ran. But the mat says No", 0),  # no marker: the last label word anywhere
    ("SO THE ANSWER IS NO!", 0),  # case-insensitive
    ("", None),
])
def test_the_label_a_reasoning_ends_in(output, expected):
    assert reasoning.extract_label(output, YES_NO, MARKER) == expected


def test_an_invented_next_example_is_cut_off_at_the_separator():
    output = "Cats are small. So the answer is yes.\n\nQ: Is a dog big?\nA: Dogs are big. So the answer is no."
    assert reasoning.extract_label(output, YES_NO, MARKER, stop="\n\n") == 1
    assert reasoning.extract_label(output, YES_NO, MARKER) == 0  # the same text uncut reads the invented answer
    assert reasoning.extract_label("\n\n" + output, YES_NO, MARKER, stop="\n\n") == 1  # leading blank lines kept


def test_overlapping_label_words_count_as_the_longer_one():
    assert reasoning.extract_label("I thought it was fine but it was not good", ["good", "not good"], MARKER) == 1
    assert reasoning.label_mentions("good, then not good, then good", ["good", "not good"]) == [0, 1, 0]


def cot_task(**options) -> InstructTask:
    return InstructTask(template="Q: {question}\nA:", label_words=YES_NO, **options)


DEMOS = [({"question": "Can a cat sit on a mat?", "rationale": " A mat is flat and a cat is small. ", "answer": "yes"},
          "yes"),
         ({"question": "Can a dog fly?", "rationale": "Dogs have no wings.", "answer": "no"}, "no")]
ASKED = {"question": "Did the dog run?", "rationale": "never shown", "answer": "yes"}


def test_cot_prompt_shows_each_demonstrations_reasoning_marker_and_answer():
    text = reasoning.prompt_text(cot_task(reasoning="cot", shots=2), DEMOS, ASKED)
    assert text == ("Q: Can a cat sit on a mat?\nA: A mat is flat and a cat is small. So the answer is yes.\n\n"
                    "Q: Can a dog fly?\nA: Dogs have no wings. So the answer is no.\n\n"
                    "Q: Did the dog run?\nA:")


def test_plain_few_shot_prompt_is_unchanged_by_the_reasoning_options():
    text = reasoning.prompt_text(cot_task(shots=2, answer_marker="Hence"), DEMOS, ASKED)
    assert text == "Q: Can a cat sit on a mat?\nA: yes\n\nQ: Can a dog fly?\nA: no\n\nQ: Did the dog run?\nA:"


def test_zero_shot_cot_prompt_ends_in_the_trigger():
    assert (reasoning.prompt_text(cot_task(reasoning="zero_shot_cot"), [], ASKED)
            == "Q: Did the dog run?\nA: Let's think step by step.")
    given = cot_task(reasoning="zero_shot_cot", cot_trigger="First,", answer_prefix="\n")
    assert reasoning.prompt_text(given, [], ASKED) == "Q: Did the dog run?\nA:\nFirst,"


def test_reasoning_options_are_validated_and_size_the_generation():
    assert cot_task().max_new_tokens == 3 and cot_task(reasoning="zero_shot_cot").max_new_tokens == 128
    assert cot_task(reasoning="cot", shots=1, max_new_tokens=40).max_new_tokens == 40
    with pytest.raises(UserError, match="task.reasoning cot shows reasoning in demonstrations; set task.shots"):
        load_config(None, {"task": {"name": "instruct", "reasoning": "cot"}})
    with pytest.raises(UserError, match="zero_shot_cot takes no demonstrations, got task.shots 2"):
        load_config(None, {"task": {"name": "instruct", "reasoning": "zero_shot_cot", "shots": 2}})
    with pytest.raises(UserError, match="task.answer_marker"):
        load_config(None, {"task": {"name": "instruct", "answer_marker": ""}})


# --------------------------------------------------------------------------------------------
# On the tiny Llama (word-level vocabulary: the words below are in it, others are <unk>)

QUESTIONS = [("did the cat sit on the mat", "yes"), ("did the dog sit on the mat", "no"),
             ("was the cat very fun", "yes"), ("was the dog very dull", "no")]


def questions(n: int, rationale: bool = True) -> list[dict]:
    rows = []
    for i in range(n):
        question, answer = QUESTIONS[i % len(QUESTIONS)]
        rows.append({"question": question, "answer": answer,
                     "rationale": f"the {'cat' if answer == 'yes' else 'dog'} ran ." if rationale else ""})
    return rows


@pytest.fixture
def question_dir(tmp_path):
    folder = tmp_path / "questions"
    folder.mkdir()
    # One train row with reasoning: the only possible chain-of-thought demonstration.
    write_jsonl(folder / "train.jsonl", questions(1) + questions(7, rationale=False)[1:])
    write_jsonl(folder / "validation.jsonl", questions(4))
    write_jsonl(folder / "test.jsonl", questions(6))
    return folder


def cot_config(model_dir, data_dir, tmp_path, **task):
    return {"model": {"name": str(model_dir)}, "data": {"name": str(data_dir), "label_column": "answer"},
            "task": {"name": "instruct", "template": "Question : {question} ? Answer :", "max_length": 64,
                     "max_new_tokens": 24, **task},
            "method": {"name": "none"}, "eval": {"batch_size": 4}, "output": {"dir": str(tmp_path / "run")}}


def test_built_cot_prompt_is_the_expected_text(tiny_causal_dir, question_dir, tmp_path):
    p = prepare(load_config(None, cot_config(tiny_causal_dir, question_dir, tmp_path, reasoning="cot", shots=1)))
    assert p.extras["preamble"] == ("Question : did the cat sit on the mat ? Answer : the cat ran . "
                                    "So the answer is yes.\n\n")
    asked = "Question : did the cat sit on the mat ? Answer :"
    assert p.splits["test"][0]["prompt_ids"] == p.tokenizer(p.extras["preamble"] + asked)["input_ids"]
    z = prepare(load_config(None, cot_config(tiny_causal_dir, question_dir, tmp_path, reasoning="zero_shot_cot",
                                             cot_trigger="Answer : the")))
    assert z.extras["preamble"] == "" and z.extras["suffix"] == " Answer : the"
    assert z.splits["test"][0]["prompt_ids"] == z.tokenizer(asked + " Answer : the")["input_ids"]


def test_accuracy_and_invalid_rate_read_the_answer_from_the_reasoning(tiny_causal_dir, question_dir, tmp_path,
                                                                      monkeypatch):
    p = prepare(load_config(None, cot_config(tiny_causal_dir, question_dir, tmp_path, reasoning="cot", shots=1)))
    assert p.label_names == YES_NO
    gold = p.splits["test"]["label_id"]
    right = [f"the dog ran . So the answer is {YES_NO[g]}." for g in gold[:3]]
    wrong = f"So the answer is {YES_NO[1 - gold[3]]}."
    cut = f"So the answer is {YES_NO[gold[4]]}.\n\nQuestion : a ? Answer : So the answer is {YES_NO[1 - gold[4]]}."
    outputs = iter([*right, wrong, cut, "I do not know"])
    monkeypatch.setattr(decoding, "greedy_texts", lambda model, tok, prompts, k, share_prefix=True:
                        ([next(outputs) for _ in prompts], None))
    loader = DataLoader(p.splits["test"], batch_size=4, collate_fn=p.collate)
    metrics = instruct.evaluate(p.model, loader, Accelerator(cpu=True), p, "test")
    assert metrics["accuracy"] == pytest.approx(4 / 6)  # three right, one wrong, one right before the cut
    assert metrics["invalid_rate"] == pytest.approx(1 / 6)


def test_cot_refuses_training_too_few_rationales_and_too_long_a_generation(tiny_causal_dir, question_dir, tmp_path):
    cfg = cot_config(tiny_causal_dir, question_dir, tmp_path, reasoning="cot", shots=1)
    with pytest.raises(UserError, match="prompting baseline .method none.; method lora would train"):
        prepare(load_config(None, {**cfg, "method": {"name": "lora"}}))
    with pytest.raises(UserError, match="only 1 train rows have a non-empty 'rationale'; lower task.shots"):
        prepare(load_config(None, cot_config(tiny_causal_dir, question_dir, tmp_path, reasoning="cot", shots=2)))
    with pytest.raises(UserError, match="task.rationale_column 'why' is not in the train split"):
        prepare(load_config(None, cot_config(tiny_causal_dir, question_dir, tmp_path, reasoning="cot", shots=1,
                                             rationale_column="why")))
    with pytest.raises(UserError, match="task.max_length . task.max_new_tokens 164 exceeds the model's 128"):
        prepare(load_config(None, cot_config(tiny_causal_dir, question_dir, tmp_path, reasoning="zero_shot_cot",
                                             max_new_tokens=100)))


def scripted_llama(folder, tokenizer_dir, successors: dict[str, str]):
    """A Llama whose greedy continuation is known: every layer adds nothing to the residual
    stream (zero output projections), the embeddings are one-hot, and the untied output layer
    maps each token to its successor (end of sequence where none is given). So the next token
    depends on the last token alone, and a prompt ending in a word continues along the chain."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = tokenizer.get_vocab()
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=8, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=0, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(len(vocab), 64))
        head = torch.zeros(len(vocab), 64)
        head[tokenizer.eos_token_id, :len(vocab)] = 1
        for word, after in successors.items():
            head[:, vocab[word]] = 0
            head[vocab[after], vocab[word]] = 1
        model.lm_head.weight.copy_(head)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


CHAINS = {"mat": "is", "is": "no", "no": "not", "not": "yes", "yes": ".",  # mat: "is no not yes ."
          "fun": "yes",  # fun: "yes ."
          "dull": "the", "the": "dog", "dog": "ran"}  # dull: "the dog ran" (no label: invalid)
TEST_ROWS = [("did the cat sit on the mat", "yes"), ("did the dog sit on the mat", "no"), ("was the cat fun", "yes"),
             ("was the dog dull", "no"), ("did a dog sit on a mat", "no"), ("was a cat fun", "yes")]


@pytest.mark.parametrize("options,accuracy,invalid,dull", [
    # mat reads no (the first label after the marker "is"; the last label anywhere would be yes),
    # fun reads yes (no marker: the last label), dull is invalid: rows 2, 3, 5, 6 right.
    ({"reasoning": "cot", "shots": 1}, 4 / 6, 1 / 6, "the dog ran"),
    # every prompt ends in the trigger's "mat", so every output is "is no not yes .": the three no's right.
    ({"reasoning": "zero_shot_cot", "cot_trigger": "the cat sat on the mat"}, 3 / 6, 0, "is no not yes .")],
    ids=["cot", "zero-shot-cot"])
def test_cot_run_reads_the_answer_from_generated_reasoning(tiny_causal_dir, tmp_path, options, accuracy, invalid,
                                                           dull):
    model_dir = scripted_llama(tmp_path / "scripted", tiny_causal_dir, CHAINS)
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", questions(4))
    write_jsonl(data / "test.jsonl", [{"question": q, "answer": a, "rationale": ""} for q, a in TEST_ROWS])
    cfg = cot_config(model_dir, data, tmp_path, template="Question {question}", answer_marker="is", **options)
    assert cli.main(["train", *cli_args(cfg)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trainable_params"] == 0 and summary["steps"] == 0 and summary["label_names"] == YES_NO
    test = summary["test"]
    assert test["accuracy"] == pytest.approx(accuracy) and test["invalid_rate"] == pytest.approx(invalid)
    assert "score_accuracy" in test
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert rows[1]["output"] == "is no not yes ."  # reasoning goes on past the 3 tokens of a bare answer
    task = load_config(tmp_path / "run" / "config.yaml").task
    for row in rows:  # every recorded prediction is the rule applied to the recorded output
        label = instruct.read_label(task, row["output"], YES_NO)
        assert row["predicted"] == (None if label is None else YES_NO[label]) and row["invalid"] == (label is None)
    # `tunelab generate --template` on the run renders the prompt evaluation used, trigger included
    run = generate.load_run(tmp_path / "run")
    [result] = generate.generate(run, ["was the dog dull"], generate.make_options(max_new_tokens=24), template=True)
    assert result["rendered"].endswith("Question was the dog dull" + run.extras["suffix"])
    assert result["completion"] == dull
