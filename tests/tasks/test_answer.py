"""Questions with an open short answer: the answer read from an output (worked examples), the
prompts as text, the loss on the gold answer only, and whole runs on the tiny Llama."""

from __future__ import annotations

import json

import pytest
from accelerate import Accelerator
from torch.utils.data import DataLoader

from conftest import cli_args, write_jsonl
from test_reasoning import CHAINS, scripted_llama
from tunelab import cli
from tunelab.build import prepare
from tunelab.config import load_config
from tunelab.errors import UserError
from tunelab.tasks import answer, decoding, reasoning
from tunelab.tasks.causal import IGNORE
from tunelab.tasks.options import AnswerTask

MARKER = "So the answer is"


@pytest.mark.parametrize("output,expected", [
    ("She sells 16 - 3 - 4 = 9 eggs. 9 * 2 = 18. So the answer is 18.", "18"),  # right answer after reasoning
    ("He pays 8 * 3 = $24. So the answer is $1,200.50.", "1200.5"),  # $ and thousands separators
    ("So the answer is 3. No wait, so the answer is 5.", "5"),  # two answers: the last marker's
    ("So the answer is 7 or 8.", "7"),  # after the marker: its first number
    ("So the answer is 4. So the answer is unclear.", "4"),  # the last marker a number follows
    ("So the answer is unclear.", None),  # a marker and no number after it: invalid
    ("First 3 + 4 = 7, then 7 * 2 = 14", "14"),  # no marker: the last number of the text
    ("I do not know.", None),  # no answer at all
    ("SO THE ANSWER IS -2", "-2"),  # case-insensitive, a sign kept
    ("", None),
])
def test_the_number_a_reasoning_ends_in(output, expected):
    assert answer.read_answer(output, "number", MARKER) == expected


def test_without_reasoning_the_answer_is_the_number_the_output_starts_with():
    assert answer.read_answer(" 18 eggs, and 2 more", "number") == "18"
    assert answer.read_answer(" 018.0", "number") == "18"  # numbers compared as numbers
    assert answer.read_answer(" eighteen", "number") is None


def test_an_invented_next_question_is_cut_off_at_the_separator():
    output = "9 * 2 = 18. So the answer is 18.\n\nQuestion: How many?\nAnswer: So the answer is 3."
    assert answer.read_answer(output, "number", MARKER, stop="\n\n") == "18"
    assert answer.read_answer(output, "number", MARKER) == "3"


def test_text_answers_are_the_first_sentence_case_and_spaces_aside():
    assert answer.read_answer("  The  Cat. It sat.", "text") == "the cat"
    assert answer.read_answer("It sat on it. So the answer is  Paris.", "text", MARKER) == "paris"
    assert answer.read_answer("It sat on it.", "text", MARKER) is None  # text needs the marker with reasoning
    assert answer.normal_answer("3.50", "number") == answer.normal_answer("$3.5", "number") == "3.5"


def gsm_task(**options) -> AnswerTask:
    return AnswerTask(template="Question: {question}\nAnswer:", **options)


DEMOS = [({"question": "Tom has 2 apples and buys 3. How many?", "rationale": " He has 2 + 3 = 5. ", "answer": "5"},
          "5"),
         ({"question": "A box holds 4 pens. How many in 2 boxes?", "rationale": "2 * 4 = 8.", "answer": "8"}, "8")]
ASKED = {"question": "Ann had 10 and gave 4. How many left?", "rationale": "never shown", "answer": "6"}


def test_cot_prompt_with_open_answers_is_the_expected_text():
    text = reasoning.prompt_text(gsm_task(reasoning="cot", shots=2), DEMOS, ASKED)
    assert text == ("Question: Tom has 2 apples and buys 3. How many?\nAnswer: He has 2 + 3 = 5. So the answer is 5."
                    "\n\nQuestion: A box holds 4 pens. How many in 2 boxes?\nAnswer: 2 * 4 = 8. So the answer is 8."
                    "\n\nQuestion: Ann had 10 and gave 4. How many left?\nAnswer:")
    assert (reasoning.prompt_text(gsm_task(shots=2), DEMOS, ASKED)
            == "Question: Tom has 2 apples and buys 3. How many?\nAnswer: 5\n\n"
               "Question: A box holds 4 pens. How many in 2 boxes?\nAnswer: 8\n\n"
               "Question: Ann had 10 and gave 4. How many left?\nAnswer:")


def test_answer_options_are_validated_and_size_the_generation():
    assert gsm_task().max_new_tokens == 16 and gsm_task(reasoning="zero_shot_cot").max_new_tokens == 128
    with pytest.raises(UserError, match="task.reasoning cot shows reasoning in demonstrations"):
        load_config(None, {"task": {"name": "answer", "reasoning": "cot"}})
    with pytest.raises(UserError, match="answer_type"):
        load_config(None, {"task": {"name": "answer", "answer_type": "date"}})


# --------------------------------------------------------------------------------------------
# On the tiny Llama (word-level vocabulary: answers are words of it)

ROWS = [("the good film", "mat"), ("the bad plot", "cat"), ("a fun story", "dog"), ("a dull actor", "mat")]


def rows(n: int) -> list[dict]:
    return [{"question": q, "answer": a, "rationale": f"the {a} ran ."} for q, a in (ROWS * n)[:n]]


@pytest.fixture
def answer_dir(tmp_path):
    folder = tmp_path / "answers"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows(16))
    write_jsonl(folder / "validation.jsonl", rows(4))
    write_jsonl(folder / "test.jsonl", rows(8))
    return folder


def answer_config(model_dir, data_dir, tmp_path, method="none", **task):
    return {"model": {"name": str(model_dir)}, "data": {"name": str(data_dir)},
            "task": {"name": "answer", "template": "Question : {question} ? Answer :", "answer_type": "text",
                     "max_length": 64, "max_new_tokens": 4, **task},
            "method": {"name": method}, "train": {"epochs": 2, "batch_size": 4, "lr": 0.05},
            "eval": {"batch_size": 4, "inference_examples": 0}, "output": {"dir": str(tmp_path / "run")}}


def test_loss_covers_exactly_the_gold_answer_tokens(tiny_causal_dir, answer_dir, tmp_path):
    p = prepare(load_config(None, answer_config(tiny_causal_dir, answer_dir, tmp_path, shots=1)))
    batch = p.collate([p.splits["train"][i] for i in range(3)])
    for row, prompt in zip(batch["labels"].tolist(), batch["prompt_ids"]):
        answer_tokens = [t for t in row if t != IGNORE]  # the gold word, then end of sequence
        assert answer_tokens[1:] == [p.tokenizer.eos_token_id] and row[:len(prompt)] == [IGNORE] * len(prompt)
        assert p.tokenizer.decode(answer_tokens[:1]) in {"mat", "cat", "dog"}
    assert p.extras["preamble"].startswith("Question : ") and p.extras["preamble"].endswith("\n\n")


def test_accuracy_and_invalid_rate_compare_the_read_answer_with_the_gold(tiny_causal_dir, answer_dir, tmp_path,
                                                                        monkeypatch):
    p = prepare(load_config(None, answer_config(tiny_causal_dir, answer_dir, tmp_path)))
    gold = [r["answer"] for r in rows(8)]
    outputs = iter([f" {gold[0]} .", f" {gold[1].upper()}", " mat" if gold[2] != "mat" else " cat", "",
                    *[f" {g}" for g in gold[4:]]])
    monkeypatch.setattr(decoding, "greedy_texts", lambda model, tok, prompts, k, share_prefix=True:
                        ([next(outputs) for _ in prompts], None))
    loader = DataLoader(p.splits["test"], batch_size=4, collate_fn=p.collate)
    metrics = answer.evaluate(p.model, loader, Accelerator(cpu=True), p, "test")
    assert metrics["accuracy"] == pytest.approx(6 / 8) and metrics["invalid_rate"] == pytest.approx(1 / 8)
    assert [r["correct"] for r in metrics["predictions"]] == [True, True, False, False, True, True, True, True]


def test_a_scripted_model_answers_and_a_trained_run_learns_the_answers(tiny_causal_dir, answer_dir, tmp_path):
    # The scripted chains of test_reasoning continue no ':', so every prompt is answered by the end
    # of sequence at once: nothing to read, every answer invalid.
    scripted = scripted_llama(tmp_path / "scripted", tiny_causal_dir, CHAINS)
    assert cli.main(["train", *cli_args(answer_config(scripted, answer_dir, tmp_path))]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["trainable_params"] == 0 and summary["test"]["accuracy"] == 0
    assert summary["test"]["invalid_rate"] == 1
    assert {"loss", "accuracy", "invalid_rate"} <= set(summary["test"])

    cfg = answer_config(tiny_causal_dir, answer_dir, tmp_path / "full", method="full", generate_on_validation=True)
    assert cli.main(["train", *cli_args(cfg), "--train.epochs", "10", "--train.lr", "0.02"]) == 0
    trained = json.loads((tmp_path / "full" / "run" / "summary.json").read_text())
    assert trained["test"]["loss"] < 0.5 and trained["test"]["accuracy"] >= 0.75  # each question's gold word, learned
    records = [json.loads(line) for line in (tmp_path / "full" / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["correct"] == (r["predicted"] == r["gold"]) for r in records)
