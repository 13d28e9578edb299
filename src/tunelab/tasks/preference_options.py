"""The preference task's options (DPO and its SFT baseline), registered with the others in
:mod:`tunelab.tasks`; apart from :mod:`tunelab.tasks.options` only for its size. Pydantic only."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunelab.schema import Strict
from tunelab.tasks.metrics import Metric, Scatter
from tunelab.tasks.options import LOSS, TaskOptions

if TYPE_CHECKING:
    from tunelab.config import DataConfig


class DPOObjective(Strict):
    """Direct Preference Optimization against a frozen reference (Rafailov et al. 2023), or its
    IPO / hinge variants (tunelab.objectives.dpo)."""

    name: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0)
    """How far the policy may move from the reference: the implicit reward is beta x log-ratio."""
    loss: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Probability that a preference label is flipped (conservative DPO); sigmoid loss only."""

    @model_validator(mode="after")
    def _smoothing_with_sigmoid(self):
        if self.label_smoothing and self.loss != "sigmoid":
            raise ValueError(f"label_smoothing applies to the sigmoid loss only, not {self.loss}; set it to 0")
        return self


class SFTObjective(Strict):
    """Supervised fine-tuning on the chosen responses (the NLL of their tokens): the usual
    baseline beside DPO. ``beta`` only scales the implicit rewards reported beside it."""

    name: Literal["sft"] = "sft"
    beta: float = Field(0.1, gt=0)


class PreferenceTask(TaskOptions):
    """Pairs of responses to one prompt, one preferred (``chosen``) over the other (``rejected``),
    trained with DPO. Prompt and response are tokenized apart and joined, so the boundary never
    merges tokens; log-probabilities are summed over the response tokens only."""

    name: Literal["preference"] = "preference"
    primary_metric: ClassVar[str] = "reward_accuracy"
    select_metric: ClassVar[str] = "loss"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("reward_accuracy", kind="proportion", field="correct"), Metric("reward_margin", field="margin"),
        Metric("chosen_reward", higher_is_better=None, field="chosen_reward"),
        Metric("rejected_reward", higher_is_better=None, field="rejected_reward"),
        Metric("chosen_logps", higher_is_better=None, field="chosen_logps"),
        Metric("rejected_logps", higher_is_better=None, field="rejected_logps"), LOSS)
    result_metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("generation_reward", field="generation.reward", in_results=True),
        Metric("generation_kl", higher_is_better=False, field="generation.kl", in_results=True))
    scatter: ClassVar[Scatter | None] = Scatter(
        "generation_kl", "generation_reward", "reward_kl.png",
        "Reward of sampled continuations against their KL to the reference (one point per run)",
        "KL to the reference (mean sequence log-ratio of samples)", "mean reward of samples", "Reward against KL")
    causal: ClassVar[bool] = True
    prompt_column: str = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    max_prompt_length: int = Field(128, ge=1)
    """Prompts are cut to their last this many tokens (from the left: the end leads into the response)."""
    max_length: int = Field(256, ge=8, le=131072)
    """Prompt + response tokens; a response is cut from the right to fit."""
    objective: DPOObjective | SFTObjective = Field(DPOObjective(), discriminator="name")
    precompute_reference: bool = False
    """Compute the reference's log-probabilities of every pair once, before training (always so
    for full and head, which change the base weights and cannot be switched off; no frozen copy
    of the model is kept). Other methods switch their modules off; BitFit swaps in the pretrained
    biases it keeps."""
    dropout: bool = False
    """Keep the model's dropout during training; off by default: with dropout on, the policy's
    and the reference's log-ratios are noise even at step 0."""
    reward_run: str | None = None
    """A tunelab classification run (e.g. a sentiment classifier) that scores generations after
    training: each test prompt's sampled continuation gets its probability of ``reward_label``."""
    reward_label: str = "positive"
    eval_generations: int = Field(64, ge=1)
    """Test prompts whose sampled continuations are scored (with ``reward_run``), and whose KL
    to the reference is estimated (the mean sequence log-ratio of the samples)."""
    max_new_tokens: int = Field(32, ge=1, le=1024)
    generation_seed: int = 0

    @field_validator("objective", mode="before")
    @classmethod
    def _dpo_by_default(cls, value):
        return {"name": "dpo", **value} if isinstance(value, dict) and "name" not in value else value

    def validation_metrics(self) -> list[str]:
        return ["loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward"]

    def required_columns(self, data: DataConfig) -> dict[str, str]:
        return {self.prompt_column: "task.prompt_column", self.chosen_column: "task.chosen_column",
                self.rejected_column: "task.rejected_column"}

    @model_validator(mode="after")
    def _prompt_fits(self) -> "PreferenceTask":
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length {self.max_prompt_length} leaves no room for a response in "
                             f"max_length {self.max_length}; make it smaller than max_length")
        return self
