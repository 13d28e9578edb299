"""`tunelab pairs`: sampled continuations ranked by a reward run, resumable, refused when changed."""

from __future__ import annotations

import json

from conftest import cli_args
from tunelab import cli


def pairs_args(tiny_causal_dir, reward_dir, prompts, output, **extra) -> list[str]:
    args = ["pairs", "--policy", str(tiny_causal_dir), "--reward", str(reward_dir), "--prompts", str(prompts),
            "--count", "20", "--prompt-words", "3", "--max-new-tokens", "4", "--output", str(output)]
    return args + [x for k, v in extra.items() for x in (f"--{k}", str(v))]


def test_pairs_rank_two_samples_by_the_reward_and_continue_after_a_kill(tiny_causal_dir, tiny_run_config,
                                                                       sentiment_csv, tmp_path):
    assert cli.main(["train", *cli_args(tiny_run_config)]) == 0
    reward, out = tiny_run_config["output"]["dir"], tmp_path / "pairs.jsonl"
    assert cli.main(pairs_args(tiny_causal_dir, reward, sentiment_csv, out)) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20
    for row in rows:
        assert len(row["prompt"].split()) == 3 and row["chosen_score"] >= row["rejected_score"]
    meta = json.loads((tmp_path / "pairs.jsonl.meta.json").read_text())
    assert meta["settings"]["n"] == 2 and meta["settings"]["reward"] == reward and meta["temperature"] == 1.0
    whole = out.read_text()
    out.write_text("".join(whole.splitlines(keepends=True)[:13]))  # killed after 13 prompts
    assert cli.main(pairs_args(tiny_causal_dir, reward, sentiment_csv, out)) == 0
    assert out.read_text() == whole  # the same pairs: every batch is seeded by where it starts
    assert cli.main(pairs_args(tiny_causal_dir, reward, sentiment_csv, out, seed=1)) == 2  # other settings: refused
    lines = whole.splitlines(keepends=True)
    out.write_text("".join(lines[:13]) + lines[13][:25])  # killed in the middle of writing the 14th
    assert cli.main(pairs_args(tiny_causal_dir, reward, sentiment_csv, out)) == 0
    assert out.read_text() == whole


def test_pairs_read_the_named_text_column_and_refuse_a_missing_one(tiny_causal_dir, tiny_run_config, tmp_path,
                                                                    capsys):
    assert cli.main(["train", *cli_args(tiny_run_config)]) == 0
    reward, prompts = tiny_run_config["output"]["dir"], tmp_path / "prompts.csv"
    prompts.write_text("review,label\n" + "".join(f"the movie was good and fun {i},positive\n" for i in range(12)))
    capsys.readouterr()
    assert cli.main(pairs_args(tiny_causal_dir, reward, prompts, tmp_path / "a.jsonl")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--text-column" in err and "review" in err, err
    assert cli.main(pairs_args(tiny_causal_dir, reward, prompts, tmp_path / "b.jsonl",
                               **{"text-column": "review"})) == 0
    assert len((tmp_path / "b.jsonl").read_text().splitlines()) == 12
