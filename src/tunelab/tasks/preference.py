"""Preference optimization on a causal LM: pairs of responses to one prompt, trained with DPO.

Data: a prompt, a chosen and a rejected response per row (the text format of Anthropic HH or
UltraFeedback binarized). The prompt and each response are tokenized apart and joined, so the
boundary never merges tokens; the prompt is cut to its last ``max_prompt_length`` tokens, the
response (ending with the end-of-sequence token) from the right to fit ``max_length``. A batch
puts the B chosen rows and then the B rejected rows through the model in one pass, and sums
each response's token log-probabilities, never the prompt's.

The reference is the frozen base: for a method that injects modules, the same model with them
switched off (:func:`tunelab.methods.common.disable_adapters`, no second copy); for a method
that changes the base weights (full, head) its log-probabilities are computed once, before
training, from the untrained model (``precompute_reference`` does that for every method). The
model's dropout is off unless ``task.dropout``, so policy and reference agree at step 0.
"""

from __future__ import annotations

import sys

import datasets
import torch
from torch import nn

from tunelab.batching import SortedBatches, example_lengths
from tunelab.errors import UserError
from tunelab.methods.common import adapters, disable_adapters
from tunelab.models.families import is_causal_lm, unwrapped
from tunelab.models.loading import check_context_length, load_config, load_tokenizer
from tunelab.objectives.dpo import preference_loss
from tunelab.tasks import Prepared, causal

REFERENCE = "reference_logps"


def encode_pair(tokenizer, task, prompt: str, chosen: str, rejected: str) -> dict:
    """Token ids of the prompt (its end kept) and of both responses (their start kept, EOS last)."""
    prompt_ids = tokenizer(prompt)["input_ids"][-task.max_prompt_length:]
    room, eos = task.max_length - len(prompt_ids), [tokenizer.eos_token_id]
    response = lambda text: (tokenizer(text, add_special_tokens=False)["input_ids"] + eos)[:room]  # noqa: E731
    return {"prompt_ids": prompt_ids, "chosen_ids": response(chosen), "rejected_ids": response(rejected)}


def prepare(cfg, raw: datasets.DatasetDict) -> Prepared:
    task = cfg.task
    model_config = load_config(cfg.model)
    if not is_causal_lm(model_config):
        raise UserError(f"task preference needs a causal LM (a decoder such as smollm2-135m or gpt2); "
                        f"{cfg.model.name!r} is a {model_config.model_type} encoder")
    check_context_length(cfg, model_config)
    if task.reward_run is not None:
        check_reward_run(task.reward_run, task.reward_label)
    tokenizer = load_tokenizer(cfg.model)
    splits, same = {}, 0
    for name, split in raw.items():
        rows = [encode_pair(tokenizer, task, p, c, r) for p, c, r in
                zip(split[task.prompt_column], split[task.chosen_column], split[task.rejected_column])]
        kept = [row for row in rows if row["chosen_ids"] != row["rejected_ids"]]
        same += len(rows) - len(kept)
        if not kept:
            raise UserError(f"the {name} split has no pair whose chosen and rejected responses differ")
        splits[name] = datasets.Dataset.from_list(kept)
    if same:  # a pair that prefers a response to itself teaches nothing: say so and leave it out
        print(f"warning: {same} pair(s) have the same chosen and rejected response; they are left out", file=sys.stderr)
    model, counts = causal.load_model(cfg, tokenizer)
    model.dpo_objective = task.objective  # what `loss` needs beside the batch (the loop passes only those two)
    if not task.dropout:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
    prepared = Prepared(model, tokenizer, datasets.DatasetDict(splits), collator(tokenizer.pad_token_id), [], counts,
                        task=sys.modules[__name__], cfg=cfg, dropped=same)
    if task.precompute_reference or not adapters(model):
        add_reference(prepared)
    return prepared


def collator(pad_id: int):
    """The B chosen rows, then the B rejected rows, right-padded; labels on the responses only."""

    def collate(examples: list[dict]) -> dict:
        pairs = [causal.prompt_answer(e["prompt_ids"], e[key])
                 for key in ("chosen_ids", "rejected_ids") for e in examples]
        batch = causal.lm_batch([x for x, _ in pairs], [y for _, y in pairs], pad_id)
        if REFERENCE in examples[0]:
            batch[REFERENCE] = torch.tensor([e[REFERENCE][i] for i in (0, 1) for e in examples])
        return batch

    return collate


def response_logps(model, batch: dict) -> torch.Tensor:
    """(2B,) summed log-probability of each row's response given its prompt."""
    nll, _ = causal.token_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return -nll


def reference_logps(model, batch: dict) -> torch.Tensor:
    """The precomputed reference log-probabilities, or the model's with its modules switched off."""
    if REFERENCE in batch:
        return batch[REFERENCE].to(batch["input_ids"].device)
    with torch.no_grad(), disable_adapters(model):
        return response_logps(unwrapped(model), batch)  # no gradient: no need to pass a DDP wrapper


@torch.inference_mode()
def add_reference(prepared: Prepared) -> None:
    """Every pair's reference log-probabilities, computed once from the model as it is now."""
    model, collate = prepared.model.eval(), prepared.collate
    for name, split in list(prepared.splits.items()):
        values: list = [None] * len(split)
        for indices in SortedBatches(example_lengths(split, collate), prepared.cfg.eval.batch_size):
            batch = collate([split[i] for i in indices])
            with disable_adapters(model):
                logps = response_logps(model, batch).tolist()
            for j, i in enumerate(indices):
                values[i] = [logps[j], logps[j + len(indices)]]
        prepared.splits[name] = split.add_column(REFERENCE, values)


def pair_results(model, batch: dict, objective):
    """The objective of each pair, from the policy's and the reference's log-probabilities, and
    the policy's (2B,) log-probabilities. SFT's loss is the NLL per token of the chosen responses;
    its rewards are DPO's implicit ones, reported beside it."""
    nll, tokens = causal.token_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    policy, reference = -nll, reference_logps(model, batch)
    n = policy.shape[0] // 2
    variant = "sigmoid" if objective.name == "sft" else objective.loss
    out = preference_loss(policy[:n], policy[n:], reference[:n], reference[n:], objective.beta, variant,
                          objective.label_smoothing if objective.name == "dpo" else 0.0)
    if objective.name == "sft":  # one mean over every chosen token, spread evenly over the pairs
        out.loss = (nll[:n].sum() / tokens[:n].sum().clamp(min=1)).expand(n)
    return out, policy


def loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    out, policy = pair_results(model, batch, batch_objective(model))
    mask, n = batch["attention_mask"], out.loss.shape[0]
    return out.loss.mean(), {"examples": n, "tokens": mask.sum(), "positions": mask.numel(),
                             "reward_accuracy": out.accuracies.sum(), "reward_margin": out.margins.sum(),
                             "chosen_reward": out.chosen_rewards.sum(), "rejected_reward": out.rejected_rewards.sum(),
                             "chosen_logps": policy[:n].detach().sum(), "rejected_logps": policy[n:].detach().sum()}


def batch_objective(model):
    """The run's DPO settings, which the task's ``prepare`` pinned on the model (Accelerate may
    have wrapped it since)."""
    return getattr(model, "module", model).dpo_objective


@torch.inference_mode()
def evaluate(model, loader, accelerator, prepared, split: str = "validation") -> dict:
    was_training = model.training
    model.eval()
    keys = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "chosen_logps",
            "rejected_logps")
    columns: dict[str, list] = {key: [] for key in keys}
    for batch in loader:
        out, policy = pair_results(model, batch, prepared.cfg.task.objective)
        n = out.loss.shape[0]
        values = (out.loss, out.accuracies, out.margins, out.chosen_rewards, out.rejected_rewards,
                  policy[:n], policy[n:])
        for key, gathered in zip(keys, accelerator.gather_for_metrics(values)):
            columns[key].append(gathered.float().cpu())
    model.train(was_training)
    c = {key: torch.cat(v) for key, v in columns.items()}
    metrics = {key: c[key].mean().item() for key in keys} | {"examples": int(c["loss"].numel())}
    if split == "test":
        per_pair = {key: c[key].tolist() for key in keys}
        metrics["predictions"] = [
            {"gold": "chosen", "predicted": "chosen" if m > 0 else "rejected", "score": m, "correct": m > 0,
             "margin": m, **{key: per_pair[key][i] for key in ("chosen_reward", "rejected_reward", "chosen_logps",
                                                                "rejected_logps", "loss")}}
            for i, m in enumerate(per_pair["reward_margin"])]
    return metrics


def before_training(model, accelerator, prepared, test_loader) -> dict:
    return {}


def after_training(model, accelerator, prepared) -> dict:
    """With ``task.reward_run``: continuations of held-out prompts sampled from the trained
    policy, their reward and their KL to the reference (one point of the reward-KL frontier)."""
    task = prepared.cfg.task
    if task.reward_run is None:
        return {"results": {"reference": reference_kind(prepared)}}
    policy = accelerator.unwrap_model(model).eval()
    prompts = prepared.splits["test"]["prompt_ids"][:task.eval_generations]
    completions = sample(policy, prepared.tokenizer, prompts, task.max_new_tokens, task.generation_seed)
    kl = log_ratios(policy, prepared, prompts, completions)
    texts = [prepared.tokenizer.decode(p + c, skip_special_tokens=True) for p, c in zip(prompts, completions)]
    rewards = reward_of(task.reward_run, task.reward_label, texts)
    return {"samples": [{"text": t, "reward": r, "log_ratio": k} for t, r, k in list(zip(texts, rewards, kl))[:10]],
            "results": {"generation": {"reward": sum(rewards) / len(rewards), "kl": sum(kl) / len(kl),
                                       "examples": len(texts)},
                        "reference": reference_kind(prepared)}}


def reference_kind(prepared: Prepared) -> dict:
    """How the run got its reference, and the memory that took beside the policy. A frozen copy
    of the model is never made: a precomputed table costs two numbers a pair."""
    if REFERENCE not in prepared.splits["train"].column_names:
        return {"kind": "modules switched off",
                "extra_bytes": sum(module.switch_off_bytes() for module in adapters(prepared.model))}
    pairs = sum(len(split) for split in prepared.splits.values())
    return {"kind": "precomputed before training", "extra_bytes": pairs * 2 * 8}


@torch.inference_mode()
def sample(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, seed: int) -> list[list[int]]:
    """One sampled continuation per prompt (temperature 1, no truncation of the distribution)."""
    from transformers import set_seed

    set_seed(seed)
    out = []
    for start in range(0, len(prompts), 16):
        chunk = prompts[start:start + 16]
        new = causal.continue_ids(model, tokenizer, chunk, max_new_tokens=max_new_tokens,
                                  **causal.PURE_SAMPLING).tolist()
        eos = tokenizer.eos_token_id
        out += [row[:row.index(eos) + 1] if eos in row else row for row in new]
    return out


@torch.inference_mode()
def log_ratios(policy, prepared: Prepared, prompts: list[list[int]], completions: list[list[int]]) -> list[float]:
    """log pi(y|x) - log ref(y|x) of each sample: their mean estimates KL(pi || ref). The
    reference is the policy with its modules off, or the base model loaded again."""
    pairs = [causal.prompt_answer(p, c) for p, c in zip(prompts, completions)]
    batch = causal.lm_batch([x for x, _ in pairs], [y for _, y in pairs], prepared.tokenizer.pad_token_id)
    batch = {k: v.to(policy.device) for k, v in batch.items()}
    mine = response_logps(policy, batch)
    if adapters(policy):
        with disable_adapters(policy):
            base = response_logps(policy, batch)
    else:
        from tunelab.models.loading import load_causal_lm

        base = response_logps(load_causal_lm(prepared.cfg.model).to(policy.device).eval(), batch)
    return (mine - base).tolist()


def check_reward_run(run_dir: str, label: str) -> None:
    """Before anything trains: the reward run is a finished classification run with ``label``."""
    import json
    from pathlib import Path

    summary = Path(run_dir) / "summary.json"
    names = json.loads(summary.read_text(encoding="utf-8")).get("label_names") if summary.is_file() else None
    if not names or label not in names:
        raise UserError(f"task.reward_run {run_dir} must be a finished classification run with the label {label!r} "
                        f"(labels there: {', '.join(names or []) or 'none, or no summary.json'})")


def reward_of(run_dir: str, label: str, texts: list[str]) -> list[float]:
    """Each text's probability of ``label`` under a tunelab classification run."""
    return reward_scorer(run_dir, label)(texts)


def reward_scorer(run_dir: str, label: str):
    """``score(texts) -> [probability of label]`` from a tunelab classification run, loaded once."""
    from pathlib import Path

    from tunelab.evaluate import rebuild_run

    cfg, reward = rebuild_run(Path(run_dir))
    if reward.encode_texts is None or label not in reward.label_names:
        raise UserError(f"task.reward_run {run_dir} must be a classification run with the label {label!r} "
                        f"(its labels: {', '.join(reward.label_names) or 'none'})")
    model, index = reward.model.eval(), reward.label_names.index(label)

    @torch.inference_mode()
    def score(texts: list[str]) -> list[float]:
        scores = []
        for start in range(0, len(texts), 64):
            batch = reward.collate(reward.encode_texts(texts[start:start + 64]))
            inputs = {k: v for k, v in batch.items() if k not in ("labels", "lengths")}
            scores += model(**inputs).softmax(-1)[:, index].tolist()
        return scores

    return score
