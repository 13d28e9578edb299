"""``tunelab pairs``: a preference set made the way the DPO paper made its sentiment set.

Rafailov et al. (2023, section 6.1): prompts are the beginnings of movie reviews, a policy
continues each of them, and a sentiment classifier is the reward. Here the prompts are the
first ``--prompt-words`` words of every text of a dataset, the policy samples ``--n``
continuations of each (temperature 1), a tunelab classification run scores prompt +
continuation (its probability of ``--label``), and the best and the worst continuation become
``chosen`` and ``rejected``, scores kept. The file is written a line per prompt as it goes, so
a killed run continues where it stopped; ``<output>.meta.json`` records how it was made, and a
continuation with other settings is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tunelab.errors import UserError


def add_pairs_command(sub) -> None:
    p = sub.add_parser("pairs", help="make a preference set: a policy's sampled continuations ranked by a reward run")
    p.add_argument("--policy", required=True, help="a causal LM: catalog name, local directory or hub id")
    p.add_argument("--reward", required=True, metavar="RUN_DIR", help="a tunelab classification run (the reward)")
    p.add_argument("--prompts", required=True, help="a dataset whose texts' beginnings are the prompts")
    p.add_argument("--text-column", default="text", help="the prompts dataset's column of texts (default: text)")
    p.add_argument("--label", default="positive", help="the reward run's label whose probability is the reward")
    p.add_argument("--n", type=int, default=2, help="continuations sampled per prompt (at least 2)")
    p.add_argument("--count", type=int, help="prompts to use (default: every text)")
    p.add_argument("--prompt-words", type=int, default=8, help="words of each text that make its prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="the pairs file (jsonl: prompt, chosen, rejected, scores)")
    p.set_defaults(func=cmd_pairs)


def cmd_pairs(args: argparse.Namespace, extra: list[str]) -> int:
    if extra:
        raise UserError(f"unexpected arguments: {' '.join(extra)}")
    settings = {k: getattr(args, k) for k in ("policy", "reward", "prompts", "label", "n", "count", "prompt_words",
                                              "max_new_tokens", "seed")}
    if args.text_column != "text":  # recorded only when set, so files made before the option continue
        settings["text_column"] = args.text_column
    made = make_pairs(Path(args.output), **settings)
    print(f"{made} pairs in {args.output} (how they were made: {args.output}.meta.json)")
    return 0


def prompt_texts(prompts: str, words: int, count: int | None, column: str = "text") -> list[str]:
    """The first ``words`` words of each text of the dataset, train then validation then test."""
    from tunelab.config import DataConfig
    from tunelab.data.sources import load_splits

    splits = load_splits(DataConfig(name=prompts, text_column=column))
    if column not in splits["train"].column_names:
        raise UserError(f"--prompts {prompts} has no column {column!r} (its columns: "
                        f"{', '.join(splits['train'].column_names)}); name the column of texts with --text-column")
    texts = [t for name in ("train", "validation", "test") for t in splits[name][column] if t and t.strip()]
    return [" ".join(t.split()[:words]) for t in texts][:count]


def check_settings(output: Path, settings: dict[str, Any]) -> int:
    """How many prompts the file already holds (made with these settings), else refuse."""
    meta = output.with_name(output.name + ".meta.json")
    if not output.exists():
        return 0
    made_with = json.loads(meta.read_text()) if meta.is_file() else {}
    if made_with.get("settings") != settings:
        raise UserError(f"{output} was made with other settings ({meta}); give another --output to start anew")
    text = output.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # killed in the middle of a line: that prompt is made again
        from tunelab.runs import atomic_write_text

        text = text[:text.rfind("\n") + 1]
        atomic_write_text(output, text)
    return sum(1 for line in text.splitlines() if line.strip())


def make_pairs(output: Path, **settings: Any) -> int:
    """Write (or continue) the pairs file; returns how many pairs it holds."""
    from tqdm.auto import tqdm

    from tunelab import generate, runs
    from tunelab.tasks.preference import check_reward_run, reward_scorer

    if settings["n"] < 2 or settings["prompt_words"] < 1 or settings["max_new_tokens"] < 1:
        raise UserError("--n must be at least 2 (a pair needs two continuations); --prompt-words and "
                        "--max-new-tokens at least 1")
    check_reward_run(settings["reward"], settings["label"])
    done = check_settings(output, settings)
    prompts = prompt_texts(settings["prompts"], settings["prompt_words"], settings["count"],
                           settings.get("text_column", "text"))
    if not prompts:
        raise UserError(f"--prompts {settings['prompts']!r} has no texts to take prompts from")
    output.parent.mkdir(parents=True, exist_ok=True)
    runs.write_json(output.with_name(output.name + ".meta.json"),
                    {"settings": settings, "temperature": 1.0, "versions": runs.versions(),
                     "git_hash": runs.git_hash()})
    policy = generate.load_base(settings["policy"])
    reward = reward_scorer(settings["reward"], settings["label"])
    bar = tqdm(total=len(prompts), initial=done, desc="pairs", unit="prompt")
    with open(output, "a", encoding="utf-8") as fh:
        for start in range(done - done % 16, len(prompts), 16):  # batches of 16, each seeded by its start
            rows = ranked_pairs(policy, prompts[start:start + 16], settings, seed=settings["seed"] + start,
                                reward=reward)
            for row in rows[max(done - start, 0):]:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                bar.update(1)
    bar.close()
    return len(prompts)


def ranked_pairs(policy, prompts: list[str], settings: dict[str, Any], seed: int, reward) -> list[dict[str, Any]]:
    """Each prompt's best and worst sampled continuation by the reward run's score."""
    import torch
    from transformers import set_seed

    from tunelab.tasks import causal

    tokenizer, model, n = policy.tokenizer, policy.model, settings["n"]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    set_seed(seed)
    with torch.inference_mode():
        new = causal.continue_ids(model, tokenizer, ids, max_new_tokens=settings["max_new_tokens"],
                                  num_return_sequences=n, **causal.PURE_SAMPLING)
    continuations = tokenizer.batch_decode(new, skip_special_tokens=True)  # (len(prompts) * n,)
    scores = reward([prompts[i // n] + continuations[i] for i in range(len(continuations))])
    rows = []
    for i, prompt in enumerate(prompts):
        ranked = sorted(range(i * n, (i + 1) * n), key=lambda j: scores[j])
        worst, best = ranked[0], ranked[-1]
        rows.append({"prompt": prompt, "chosen": continuations[best], "rejected": continuations[worst],
                     "chosen_score": scores[best], "rejected_score": scores[worst]})
    return rows
