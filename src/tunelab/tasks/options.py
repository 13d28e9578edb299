"""The options of every task, one class each, as the config's ``task`` section holds them.

Each class is registered with its module in :mod:`tunelab.tasks`; its ``name`` default is the
YAML ``task.name``, the registry key and the module's name. What the report, the comparison and
``generate`` need to know of a task without loading it (its metrics, whether it runs on a causal
LM) are class variables here. Pydantic only, no torch.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunelab.schema import Strict
from tunelab.tasks.metrics import Metric, Scatter

if TYPE_CHECKING:
    from tunelab.config import DataConfig

TEMPLATE_FIELD = re.compile(r"\{(\w+)\}")
"""A ``{field}`` of a prompt template: a data column."""


def template_fields(template: str) -> list[str]:
    """The columns a template names, once each, in order."""
    return list(dict.fromkeys(TEMPLATE_FIELD.findall(template)))


LOSS = Metric("loss", higher_is_better=False, field="loss")
"""A loss that is the mean over examples of each example's own loss."""
TOKEN_LOSS = Metric("loss", higher_is_better=False, kind="ratio", field="nll", denominator="tokens")
"""A loss that is the mean over predicted tokens: summed NLL over summed tokens."""
ACCURACY = Metric("accuracy", kind="proportion", field="correct")


class TaskOptions(Strict):
    name: str
    primary_metric: ClassVar[str] = "accuracy"
    """The headline test number."""
    select_metric: ClassVar[str] = "accuracy"
    """The validation number that picks the best checkpoint when ``train.select_metric`` is auto."""
    metrics: ClassVar[tuple[Metric, ...]] = (ACCURACY, LOSS)
    """Every metric the task reports on validation or test, with its direction and kind
    (tunelab.tasks.metrics); summary.json carries them for the report."""
    result_metrics: ClassVar[tuple[Metric, ...]] = ()
    """Numbers of the task's own results (summary.json under the task's name) that the report
    shows as columns; ``field`` is their dotted path there (``generation.reward``)."""
    scatter: ClassVar[Scatter | None] = None
    """A plot of two of those columns against each other, one point per method."""
    causal: ClassVar[bool] = False
    """Runs on a causal LM (so its runs can generate)."""
    refuse_empty_text: ClassVar[bool] = True
    """An empty text in a column the task reads is bad input (refused, or dropped with
    ``data.drop_missing``); False where empty documents are normal (lm)."""

    @property
    def input_length(self) -> int:
        """Tokens per training example, at most (what ``--quick`` and ``profile`` size by)."""
        return self.max_length

    @classmethod
    def metric(cls, name: str) -> Metric:
        """The declaration of one of the task's metrics."""
        found = {m.name: m for m in (*cls.metrics, *cls.result_metrics)}
        if name not in found:
            raise KeyError(f"the {cls.model_fields['name'].default} task reports no metric {name!r}; "
                           f"it reports: {', '.join(found)}")
        return found[name]

    @classmethod
    def is_higher_better(cls, name: str | None = None) -> bool:
        """Of the primary metric, or of ``name``."""
        return bool(cls.metric(name or cls.primary_metric).higher_is_better)

    def validation_metrics(self) -> list[str]:
        """What the task's evaluation reports on the validation split (a sweep's objective is one)."""
        return ["loss", self.primary_metric]

    def required_columns(self, data: DataConfig) -> dict[str, str]:
        """The data columns every example needs, each with the config key that names it
        (``data.label_column`` marks the label). The loader checks them before splitting:
        present in every split, no missing labels, no empty texts (unless
        ``refuse_empty_text`` is False). {}: nothing is checked (a task that declares none)."""
        return {}

    def export_refusal(self, fmt: str) -> str | None:
        """Why the task's runs cannot be exported as ``fmt`` whatever the method (None: they can)."""
        return None


class ClassificationTask(TaskOptions):
    name: Literal["classification"] = "classification"
    max_length: int = Field(128, ge=8, le=8192)
    """Inputs are truncated to this many tokens."""
    head: Literal["pooled", "auto"] = "pooled"
    """``pooled``: tunelab's head, the body's output pooled (``pooling``), dropout
    (``classifier_dropout``) and one linear layer; ``auto``: the architecture's own transformers
    classifier (``AutoModelForSequenceClassification``: BERT's pooler + linear layer, RoBERTa's
    two-layer head, GPT-2's and Llama's last-token score), with the run's labels in its config.
    Both export (``--format merged``) as a folder ``pipeline("text-classification")`` loads; the
    pooled head's carries its code (``trust_remote_code=True``)."""
    pooling: Literal["mean", "cls", "last"] = "mean"
    """Mean over non-pad tokens, the first token's hidden state (encoders), or the last real
    token's (decoders, where only the last token has seen the whole text)."""
    classifier_dropout: float = Field(0.1, ge=0, lt=1)

    def required_columns(self, data: DataConfig) -> dict[str, str]:
        columns = {data.text_column: "data.text_column"}
        if data.text_pair_column:
            columns[data.text_pair_column] = "data.text_pair_column"
        return {**columns, data.label_column: "data.label_column"}

    def head_description(self) -> dict:
        """What an export records of the head: its kind, and a pooled head's options."""
        pooled = {"pooling": self.pooling, "classifier_dropout": self.classifier_dropout}
        return {"type": self.head, **(pooled if self.head == "pooled" else {})}

    def export_refusal(self, fmt: str) -> str | None:
        if self.head == "auto" and fmt == "peft":
            return ("a classification run with task.head auto is exported with --format merged (a transformers "
                    "classifier pipeline loads); --format peft is for tunelab's pooled head")
        return None

    @model_validator(mode="after")
    def _pooled_options_with_pooled_head(self) -> "ClassificationTask":
        # Compared with the defaults, not the keys given: a run's saved config.yaml holds every key.
        given = [k for k in ("pooling", "classifier_dropout") if getattr(self, k) != type(self).model_fields[k].default]
        if self.head == "auto" and given:
            keys = " and ".join(f"task.{k}" for k in given)
            raise ValueError(f"{keys} apply to tunelab's pooled head only; task.head auto uses the architecture's own "
                             f"classifier: drop {keys} or set task.head pooled")
        return self


class PromptedTask(TaskOptions):
    """What every task that prompts a causal LM for a short answer shares: the template, the
    demonstrations before it and how the model may reason before answering."""

    causal: ClassVar[bool] = True
    template: str
    """Prompt with ``{field}`` placeholders naming data columns (e.g. ``{passage}``, ``{question}``)."""
    answer_prefix: str = " "
    """Put between the prompt and the answer (a space, so "Sentiment: positive")."""
    max_length: int = Field(256, ge=8, le=131072)
    """Prompt + answer are cut to this many tokens by truncating the longest template field."""
    shots: int = Field(0, ge=0, le=64)
    """In-context demonstrations from train (drawn once by ``shots_seed``) put before every prompt."""
    shots_seed: int = 0
    shot_separator: str = "\n\n"
    max_new_tokens: int = Field(3, ge=1, le=1024)
    """Tokens generated per example for generate-accuracy; 128 by default with ``reasoning``."""
    generate_on_validation: bool = False
    """Also generate on validation (slower); by default validation scores the answers only."""
    reasoning: Literal["none", "cot", "zero_shot_cot"] = "none"
    """``none``: the answer is what the output starts with. ``cot`` (chain of thought, Wei et al.
    2022): each of the ``shots`` demonstrations shows its ``rationale_column``, then
    ``answer_marker`` and its answer. ``zero_shot_cot`` (Kojima et al. 2022): no demonstrations,
    ``cot_trigger`` after the prompt. With reasoning the model writes before it answers, and the
    answer is read from the whole output (tunelab.tasks.reasoning); ``method: none`` only."""
    rationale_column: str = "rationale"
    """The train column of written reasoning that ``cot`` demonstrations show."""
    cot_trigger: str = "Let's think step by step."
    """Put after the prompt (and ``answer_prefix``) with ``zero_shot_cot``."""
    answer_marker: str = Field("So the answer is", min_length=1)
    """Leads to the answer after the reasoning: in ``cot`` demonstrations, and where the answer
    is read from a generated output."""

    @model_validator(mode="before")
    @classmethod
    def _room_to_reason(cls, data):
        # Filled in when not given, so a run's saved config.yaml holds the number it used.
        if isinstance(data, dict) and data.get("reasoning", "none") != "none" and "max_new_tokens" not in data:
            return {**data, "max_new_tokens": 128}
        return data

    @model_validator(mode="after")
    def _demonstrations_fit_reasoning(self) -> "PromptedTask":
        if self.reasoning == "cot" and not self.shots:
            raise ValueError("task.reasoning cot shows reasoning in demonstrations; set task.shots to at least 1 "
                             "(or task.reasoning zero_shot_cot)")
        if self.reasoning == "zero_shot_cot" and self.shots:
            raise ValueError(f"task.reasoning zero_shot_cot takes no demonstrations, got task.shots {self.shots}; "
                             "set task.shots 0, or task.reasoning cot for demonstrations with reasoning")
        return self


INVALID_RATE = Metric("invalid_rate", higher_is_better=False, kind="proportion", field="invalid")


class InstructTask(PromptedTask):
    """Classification by a causal LM: a prompt rendered from a template, answered by a label word.

    Evaluation reports both ways side by side: ``generate`` (greedy decoding of a few tokens,
    mapped to a label when the output starts with a label word, anything else wrong and counted
    as invalid) and ``score`` (the label whose tokens are most likely after the prompt). With
    ``reasoning``, the output reasons first and the label is read from all of it.
    """

    name: Literal["instruct"] = "instruct"
    metrics: ClassVar[tuple[Metric, ...]] = (
        ACCURACY, Metric("score_accuracy", kind="proportion", field="score_correct"),
        Metric("generate_accuracy", kind="proportion", field="correct"), INVALID_RATE, TOKEN_LOSS)

    def validation_metrics(self) -> list[str]:
        generated = ["generate_accuracy", "invalid_rate"] if self.generate_on_validation else []
        return ["loss", "score_accuracy", "accuracy", *generated]
    template: str = "Review: {text}\nSentiment:"
    label_words: list[str] | dict[str, str] | None = None
    """The word that answers each label: a list in label order, or a mapping label -> word.
    None: the label names themselves (e.g. negative / positive)."""
    loss_on: Literal["answer", "sequence"] = "answer"
    """Train on the answer tokens only (the default), or on the whole sequence."""

    @field_validator("label_words", mode="before")
    @classmethod
    def _label_keys_as_text(cls, value):
        # YAML reads `True: yes` with a boolean key; labels are compared as text.
        words = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        if any(isinstance(w, bool) for w in words):
            raise ValueError("a label word was read as a boolean; quote yes/no/on/off in YAML, e.g. 'yes'")
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value

    def required_columns(self, data: DataConfig) -> dict[str, str]:
        return {**dict.fromkeys(template_fields(self.template), "task.template"),
                data.label_column: "data.label_column"}


class AnswerTask(PromptedTask):
    """Questions with a short open answer (a number, a word) in a data column, answered by a
    causal LM: right when the answer read from the greedy output equals the gold one (numbers
    compared as numbers). Trains on the gold answer after the prompt like ``instruct``."""

    name: Literal["answer"] = "answer"
    select_metric: ClassVar[str] = "loss"
    metrics: ClassVar[tuple[Metric, ...]] = (ACCURACY, INVALID_RATE, TOKEN_LOSS)
    template: str = "Question: {question}\nAnswer:"
    answer_column: str = "answer"
    """The gold answer's column."""
    answer_type: Literal["number", "text"] = "number"
    """``number``: the first number of the answer (after ``answer_marker`` with reasoning, else
    the output's start) equals the gold number; ``text``: the output's first line (or what
    follows the marker, to the end of its sentence) equals the gold text, case and spaces aside."""
    max_new_tokens: int = Field(16, ge=1, le=1024)
    """Tokens generated per question; 128 by default with ``reasoning``."""

    def validation_metrics(self) -> list[str]:
        return ["loss", "accuracy", "invalid_rate"] if self.generate_on_validation else ["loss"]

    def required_columns(self, data: DataConfig) -> dict[str, str]:
        return {**dict.fromkeys(template_fields(self.template), "task.template"),
                self.answer_column: "task.answer_column"}


class LMTask(TaskOptions):
    """Language modeling: documents tokenized, concatenated and cut into ``block_size`` blocks."""

    name: Literal["lm"] = "lm"
    primary_metric: ClassVar[str] = "perplexity"
    select_metric: ClassVar[str] = "loss"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("perplexity", higher_is_better=False, kind="ratio", field="nll", denominator="tokens", exp=True),
        TOKEN_LOSS, Metric("tokens", higher_is_better=None, kind="count"))
    causal: ClassVar[bool] = True
    refuse_empty_text: ClassVar[bool] = False  # empty lines and documents are part of a corpus
    block_size: int = Field(256, ge=8, le=131072)
    """Training block length in tokens; also the evaluation window."""
    stride: int | None = Field(None, ge=1)
    """Evaluation window step: every token is predicted once, with up to ``block_size - stride``
    tokens of extra context from the previous window. None: ``block_size`` (no overlap)."""
    join: Literal["eos", "none"] = "eos"
    """Put the end-of-sequence token between documents, or nothing (line-level corpora such as
    wikitext whose rows already end with a newline)."""
    eval_before: bool = True
    """Also evaluate the test split and sample generations before training (the base model)."""
    sample_prompts: list[str] = ["The history of the city", "In mathematics, a", "The film was released"]
    """Fixed prompts whose greedy continuations are saved in the run (samples.json)."""
    sample_max_new_tokens: int = Field(40, ge=1, le=1024)

    @property
    def input_length(self) -> int:
        return self.block_size

    def required_columns(self, data: DataConfig) -> dict[str, str]:
        return {data.text_column: "data.text_column"}

    @model_validator(mode="after")
    def _stride_fits(self) -> "LMTask":
        if self.stride is not None and self.stride > self.block_size:
            raise ValueError(f"stride {self.stride} is larger than block_size {self.block_size}; "
                             "windows would skip tokens")
        return self


class SummarizationTask(TaskOptions):
    """(article, summary) pairs: the loss on the summary tokens; ROUGE on greedy generations."""

    name: Literal["summarization"] = "summarization"
    primary_metric: ClassVar[str] = "rougeL"
    select_metric: ClassVar[str] = "loss"
    metrics: ClassVar[tuple[Metric, ...]] = (
        *(Metric(name, field=name) for name in ("rouge1", "rouge2", "rougeL")), TOKEN_LOSS)
    causal: ClassVar[bool] = True

    template: str = "{article}\nTL;DR:"
    summary_column: str = "summary"
    """The reference summary's column (the article fields are named in the template)."""
    answer_prefix: str = " "
    max_length: int = Field(512, ge=16, le=131072)
    """Prompt + summary tokens; the longest template field (the article) is truncated to fit."""
    max_summary_tokens: int = Field(96, ge=1)
    """Reference summaries are cut to this many tokens for training."""
    max_new_tokens: int = Field(64, ge=1, le=1024)
    """Generated tokens per article for ROUGE."""
    rouge_on_validation: bool = False
    """Also generate and compute ROUGE on validation (slower); by default only the loss."""

    def validation_metrics(self) -> list[str]:
        return ["loss", "rouge1", "rouge2", "rougeL"] if self.rouge_on_validation else ["loss"]

    def required_columns(self, data: DataConfig) -> dict[str, str]:
        return {**dict.fromkeys(template_fields(self.template), "task.template"),
                self.summary_column: "task.summary_column"}
