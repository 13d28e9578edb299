"""``tunelab generate``: continue prompts with a base causal LM or with a trained run.

A run directory is rebuilt exactly as ``tunelab eval`` rebuilds it (base weights, the run's
method, its checkpoint), so prompt- and prefix-tuned runs generate with their virtual tokens.
Decoding is Hugging Face ``generate`` with a :class:`~transformers.GenerationConfig` built from
the options alone: a model's own ``generation_config.json`` (sampling, beams, penalties) is set
aside, so the text is exactly what the options ask for.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import GenerationConfig, PreTrainedTokenizerBase, TextStreamer, set_seed

from tunelab.errors import UserError
from tunelab.tasks import causal_tasks

SAMPLING_ONLY = ("temperature", "top_k", "top_p")
"""Options that change nothing under greedy decoding."""


class GenerationOptions(BaseModel):
    """How to decode; the ranges are checked once, when the options are made."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(50, ge=1)
    """Tokens generated after each prompt (fewer when the model ends the text)."""
    sample: bool = False
    """Sample from the (filtered) distribution instead of taking the most likely token."""
    temperature: float = Field(1.0, gt=0)
    """Divides the logits before sampling: below 1 sharper, above 1 flatter."""
    top_k: int = Field(0, ge=0)
    """Sample among the k most likely tokens; 0 keeps them all."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p; 1 keeps all."""
    repetition_penalty: float = Field(1.0, gt=0)
    """Divides positive logits (multiplies negative ones) of tokens already in the text; 1 is off.
    Applies to greedy decoding too."""
    seed: int | None = None
    """Seed set before each prompt, so a prompt sampled with the same seed gives the same text."""

    def generation_config(self, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
        # Sampling settings only when sampling: greedy decoding ignores them, and transformers
        # warns when they are set without do_sample.
        sampling = dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p) if self.sample else {}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.sample,
                                repetition_penalty=self.repetition_penalty, **sampling,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)


def make_options(**given: Any) -> GenerationOptions:
    """Options from the command line (None = not given); one line naming the bad option."""
    given = {k: v for k, v in given.items() if v is not None}
    try:
        options = GenerationOptions(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"{_flag(str(err['loc'][0]))} {err['input']!r}: {err['msg'].lower()}") from None
    stray = [k for k in SAMPLING_ONLY if k in given]
    if stray and not options.sample:
        raise UserError(f"{_flag(stray[0])} only applies when sampling; add --sample (greedy decoding ignores it)")
    return options


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


@dataclass
class Generator:
    """A causal LM ready to generate, with what the prompts need from its run (if any)."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    cfg: Any = None
    """The run's config (:class:`tunelab.config.RunConfig`), None for a base model."""
    extras: dict[str, Any] = field(default_factory=dict)


def device(cpu: bool = False) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not cpu else "cpu")


def load_base(name: str) -> Generator:
    """A base causal LM (catalog name, local directory or hub id) as it was pretrained."""
    from tunelab.config import ModelConfig
    from tunelab.models.families import is_causal_lm
    from tunelab.models.loading import load_causal_lm, load_config, load_tokenizer

    model_cfg = ModelConfig(name=name)
    if not is_causal_lm(load_config(model_cfg)):
        raise UserError(f"model {name!r} is not a causal language model; generate needs one (e.g. smollm2-135m, gpt2)")
    return Generator(load_causal_lm(model_cfg).to(device()).eval(), load_tokenizer(model_cfg))


def load_run(run_dir: Path) -> Generator:
    """A trained run: base weights, the run's method and its checkpoint (as ``tunelab eval`` does)."""
    from tunelab.config import load_config
    from tunelab.evaluate import rebuild_run

    if (run_dir / "config.yaml").is_file():  # the cheap check first: rebuilding loads data and weights
        task = load_config(run_dir / "config.yaml").task.name
        if task not in causal_tasks():
            raise UserError(f"{run_dir} is a {task} run; generate needs a run on a causal LM "
                            f"(task {', '.join(causal_tasks())})")
    cfg, prepared = rebuild_run(run_dir)
    return Generator(prepared.model.to(device(cfg.train.cpu)).eval(), prepared.tokenizer, cfg, prepared.extras)


def render_prompt(generator: Generator, prompt: str) -> str:
    """The run's task template filled from the prompt, with the run's demonstrations in front
    and its zero-shot chain-of-thought trigger behind.

    A template with one field (``{text}``, ``{article}``) takes the prompt as it is; one with
    several takes a JSON object naming them.
    """
    from tunelab.tasks import causal

    cfg = generator.cfg
    template = getattr(cfg.task, "template", None) if cfg is not None else None
    if template is None:
        where = "a base model has no task" if cfg is None else f"the run's task {cfg.task.name} has none"
        raise UserError(f"--template renders a run's task template, but {where}; drop --template")
    fields = causal.template_fields(template)
    if len(fields) == 1:
        example = {fields[0]: prompt}
    else:
        try:
            example = json.loads(prompt)
        except json.JSONDecodeError:
            example = None
        if not isinstance(example, dict) or any(f not in example for f in fields):
            raise UserError(f"the run's template {template!r} has fields {', '.join(fields)}; give each prompt as "
                            f"a JSON object with them, e.g. {json.dumps(dict.fromkeys(fields, '...'))}")
    extras = generator.extras
    return extras.get("preamble", "") + causal.render(template, example) + extras.get("suffix", "")


def encode(generator: Generator, text: str, max_new_tokens: int) -> list[int]:
    """Token ids of a prompt, refused when empty or when it and the new tokens overflow the context."""
    from tunelab.models.families import context_limit

    ids = generator.tokenizer(text)["input_ids"]
    if not ids:
        raise UserError(f"prompt {text!r} tokenizes to nothing; give some text")
    limit = context_limit(generator.model.config)
    virtual = generator.cfg.method.virtual_tokens if generator.cfg is not None else 0
    if limit is not None and len(ids) + virtual + max_new_tokens > limit:
        raise UserError(f"prompt of {len(ids)} tokens + --max-new-tokens {max_new_tokens}"
                        f"{f' + {virtual} virtual tokens' if virtual else ''} exceeds the model's {limit} positions; "
                        "shorten the prompt or lower --max-new-tokens")
    return ids


@torch.no_grad()
def generate(generator: Generator, prompts: list[str], options: GenerationOptions, template: bool = False,
             stream: TextIO | None = None) -> list[dict[str, str]]:
    """Continue each prompt, one at a time; with ``stream``, print each prompt and its
    continuation there as it is produced. Returns ``{"prompt", "completion"}`` per prompt
    (plus ``"rendered"``, the text the model saw, with ``template``)."""
    from tunelab.tasks import causal

    model, tokenizer = generator.model, generator.tokenizer
    texts = [render_prompt(generator, p) if template else p for p in prompts]
    encoded = [encode(generator, t, options.max_new_tokens) for t in texts]  # every prompt checked before any runs
    config = options.generation_config(tokenizer)
    # generate() fills every field the passed config leaves unset from the model's own defaults
    # (a hub model may ask for sampling, beams or a penalty there); plain defaults instead.
    model.generation_config = GenerationConfig()
    results = []
    for prompt, text, ids in zip(prompts, texts, encoded):
        if options.seed is not None:
            set_seed(options.seed)
        streamer = None
        if stream is not None:
            stream.write(text)
            stream.flush()
            streamer = _Streamer(tokenizer, stream)
        new = causal.continue_ids(model, tokenizer, [ids], generation_config=config, streamer=streamer)
        completion = tokenizer.decode(new[0], skip_special_tokens=True)
        results.append({"prompt": prompt, **({"rendered": text} if template else {}), "completion": completion})
    return results


class _Streamer(TextStreamer):
    """transformers' TextStreamer, writing to a given stream instead of stdout."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stream: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


def read_prompts(prompts: list[str] | None, prompts_file: str | None) -> list[str]:
    """The prompts given with --prompt, then those of --prompts-file (one per non-empty line)."""
    found = list(prompts or [])
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise UserError(f"prompts file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
        from_file = [line for line in lines if line.strip()]
        if not from_file:
            raise UserError(f"prompts file {path} has no prompts; put one per line")
        found += from_file
    if not found:
        raise UserError("no prompt given; add --prompt TEXT (repeatable) or --prompts-file FILE")
    return found


def print_results(results: list[dict[str, str]], out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(results, ensure_ascii=False, indent=2) + "\n")
