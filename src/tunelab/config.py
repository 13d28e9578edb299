"""One tree of typed config classes, loaded from YAML and overridden with dotted keys.

Validation happens once, here, at the edge: unknown keys and out-of-range values raise a
``UserError`` that names the key and what is allowed, before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tunelab.errors import UserError


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a YAML file must never be silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = "minilm-l6"
    """An embedded catalog name (`tunelab models`), a Hugging Face hub id, or a local directory."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `name` is a hub id."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless the user asks."""


class SplitFractions(_Strict):
    """Fractions used when the data comes unsplit (or with only a train split)."""

    train: float = Field(0.7, gt=0, lt=1)
    validation: float = Field(0.1, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> "SplitFractions":
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must sum to 1, got {total:g}")
        return self


class DataConfig(_Strict):
    name: str = "rt-snippets"
    """An embedded dataset name (`tunelab data`), a hub dataset id, or a local file
    (csv, tsv, jsonl/json, parquet, txt) or directory of such files."""
    subset: str | None = None
    """Hub dataset configuration name (e.g. `wikitext-2-raw-v1`)."""
    text_column: str = "text"
    text_pair_column: str | None = None
    """Second text of a pair (e.g. BoolQ's question); None for single-text classification."""
    label_column: str = "label"
    split: SplitFractions = SplitFractions()
    seed: int = 0
    """Seed of the deterministic train/validation/test split."""
    max_train_examples: int | None = Field(None, ge=1)
    """Keep only the first N training examples after splitting (quick runs, sanity checks)."""
    max_eval_examples: int | None = Field(None, ge=1)
    """Keep only the first N validation and test examples."""
    max_validation_examples: int | None = Field(None, ge=1)
    """Keep only the first N validation examples (overrides max_eval_examples for validation)."""
    max_test_examples: int | None = Field(None, ge=1)
    """Keep only the first N test examples (overrides max_eval_examples for test)."""


class ClassificationTask(_Strict):
    name: Literal["classification"] = "classification"
    max_length: int = Field(128, ge=8, le=8192)
    """Inputs are truncated to this many tokens."""
    pooling: Literal["mean", "cls", "last"] = "mean"
    """Mean over non-pad tokens, the first token's hidden state (encoders), or the last real
    token's (decoders, where only the last token has seen the whole text)."""
    classifier_dropout: float = Field(0.1, ge=0, lt=1)


class InstructTask(_Strict):
    """Classification by a causal LM: a prompt rendered from a template, answered by a label word.

    Evaluation reports both ways side by side: ``generate`` (greedy decoding of a few tokens,
    mapped to a label when the output starts with a label word, anything else wrong and counted
    as invalid) and ``score`` (the label whose tokens are most likely after the prompt).
    """

    name: Literal["instruct"] = "instruct"
    template: str = "Review: {text}\nSentiment:"
    """Prompt with ``{field}`` placeholders naming data columns (e.g. ``{passage}``, ``{question}``)."""
    label_words: list[str] | dict[str, str] | None = None
    """The word that answers each label: a list in label order, or a mapping label -> word.
    None: the label names themselves (e.g. negative / positive)."""
    answer_prefix: str = " "
    """Put between the prompt and the label word (a space, so "Sentiment: positive")."""
    loss_on: Literal["answer", "sequence"] = "answer"
    """Train on the answer tokens only (the default), or on the whole sequence."""
    max_length: int = Field(256, ge=8, le=131072)
    """Prompt + answer are cut to this many tokens by truncating the longest template field."""
    shots: int = Field(0, ge=0, le=64)
    """In-context demonstrations from train (drawn once by ``shots_seed``) put before every prompt."""
    shots_seed: int = 0
    shot_separator: str = "\n\n"
    max_new_tokens: int = Field(3, ge=1, le=64)
    """Tokens generated per example for generate-accuracy."""
    generate_on_validation: bool = False
    """Also generate on validation (slower); by default validation scores the labels only."""

    @field_validator("label_words", mode="before")
    @classmethod
    def _label_keys_as_text(cls, value):
        # YAML reads `True: yes` with a boolean key; labels are compared as text.
        words = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
        if any(isinstance(w, bool) for w in words):
            raise ValueError("a label word was read as a boolean; quote yes/no/on/off in YAML, e.g. 'yes'")
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class LMTask(_Strict):
    """Language modeling: documents tokenized, concatenated and cut into ``block_size`` blocks."""

    name: Literal["lm"] = "lm"
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

    @model_validator(mode="after")
    def _stride_fits(self) -> "LMTask":
        if self.stride is not None and self.stride > self.block_size:
            raise ValueError(f"stride {self.stride} is larger than block_size {self.block_size}; "
                             "windows would skip tokens")
        return self


class SummarizationTask(_Strict):
    """(article, summary) pairs: the loss on the summary tokens; ROUGE on greedy generations."""

    name: Literal["summarization"] = "summarization"
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


TaskConfig = Annotated[Union[ClassificationTask, InstructTask, LMTask, SummarizationTask], Field(discriminator="name")]


class NoMethod(_Strict):
    """No training: the pretrained model as it is, for zero-/few-shot baselines (``task.shots``)."""

    name: Literal["none"] = "none"


class FullMethod(_Strict):
    name: Literal["full"] = "full"


class HeadMethod(_Strict):
    name: Literal["head"] = "head"
    last_n_layers: int = Field(0, ge=0)
    """Also train the last N transformer blocks."""


class LoRAMethod(_Strict):
    """LoRA (Hu et al. 2021, arXiv:2106.09685): h = W0 x + (alpha / r) B A x."""

    name: Literal["lora"] = "lora"
    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    """Module-name suffixes to wrap. None: the architecture's default (query/key/value on BERT,
    q_proj/k_proj/v_proj on Llama, c_attn with q, k and v on GPT-2). For a fused projection a
    suffix may name slices, e.g. `c_attn:q+v` (or `c_attn:q,v` in a block-style YAML list)."""


class BitFitMethod(_Strict):
    """BitFit (Ben Zaken et al. 2021, arXiv:2106.10199): only bias terms train."""

    name: Literal["bitfit"] = "bitfit"
    add_missing_biases: bool = True
    """Give linear layers without a bias (Llama) a zero-initialised one, so they can train too."""


class AdapterMethod(_Strict):
    """Bottleneck adapters x + up(act(down(x))), `up` zero-initialised (Houlsby et al. 2019,
    arXiv:1902.00751; Pfeiffer et al. 2021, arXiv:2005.00247)."""

    name: Literal["adapter"] = "adapter"
    placement: Literal["houlsby", "pfeiffer"] = "houlsby"
    """houlsby: after the attention output projection and after the feed-forward output of
    every layer; pfeiffer: after the feed-forward output only."""
    size: int | None = Field(None, gt=0)
    """Bottleneck width. None: hidden size / reduction_factor."""
    reduction_factor: float = Field(16.0, gt=0)
    activation: Literal["gelu", "relu", "tanh", "silu"] = "gelu"


class IA3Method(_Strict):
    """(IA)^3 (Liu et al. 2022, arXiv:2205.05638): learned vectors, initialised to ones, that
    rescale keys, values and the feed-forward intermediate activations."""

    name: Literal["ia3"] = "ia3"


class PromptMethod(_Strict):
    """Prompt tuning (Lester et al. 2021, arXiv:2104.08691): trainable embeddings prepended to the input."""

    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, gt=0)
    init: Literal["text", "vocab", "random"] = "text"
    """text: embeddings of `init_text`, repeated or truncated; vocab: embeddings of sampled
    vocabulary tokens; random: normal with the embedding matrix's standard deviation."""
    init_text: str = "Classify the sentiment of this review:"


class PrefixMethod(_Strict):
    """Prefix tuning (Li & Liang 2021, arXiv:2101.00190): trainable key/value prefixes in every layer."""

    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, gt=0)
    reparameterize: bool = False
    """Produce the prefixes with an MLP of a small embedding while training (section 4.3); the
    checkpoint keeps only the prefixes it produces."""
    hidden_size: int = Field(512, gt=0)
    """Width of the reparameterisation MLP."""


class LSTMMethod(_Strict):
    """The non-pretrained baseline of the course's first lab: a word vocabulary built from the
    train split, an embedding, a (bi)LSTM over packed sequences, dropout and a linear head.
    Every weight trains. No pretrained model is loaded: `model.name` is recorded as `lstm`;
    inputs are cut to `task.max_length` words."""

    name: Literal["lstm"] = "lstm"
    embedding_dim: int = Field(100, ge=1)
    """Width of the word embeddings (trained from scratch)."""
    hidden_size: int = Field(100, ge=1)
    """Width of the LSTM state, per direction."""
    n_layers: int = Field(1, ge=1)
    """Stacked LSTM layers."""
    bidirectional: bool = False
    """Also read every text right to left; the head then sees both final states."""
    dropout: float = Field(0.5, ge=0, lt=1)
    """On the embeddings, between stacked LSTM layers, and before the linear head."""
    min_freq: int = Field(5, ge=1)
    """Keep a word in the vocabulary when it occurs at least this often in the train split
    (the course's default 5); rarer words become `<unk>`."""
    stop_words: Literal["english", "none"] = "english"
    """Words dropped before counting and encoding: `english` (tunelab's list of English function
    words, negations kept; see tunelab.data.vocab) or `none`."""


MethodConfig = Annotated[Union[NoMethod, FullMethod, HeadMethod, LoRAMethod, BitFitMethod, AdapterMethod, IA3Method,
                               PromptMethod, PrefixMethod, LSTMMethod], Field(discriminator="name")]


class TrainConfig(_Strict):
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides `epochs` when reached first)."""
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step; the effective batch is batch_size * grad_accum."""
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    """Linear warm-up over this fraction of the steps, then linear decay to zero."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    """Set before the task head and any adapter are created, so runs repeat exactly."""
    patience: int | None = Field(None, ge=1)
    """Stop when validation has not improved for this many evaluations. None: never."""
    eval_every_steps: int | None = Field(None, ge=1)
    """Also evaluate every N optimizer steps (besides every epoch)."""
    select_metric: Literal["auto", "accuracy", "loss"] = "auto"
    """Which validation number picks the best checkpoint and drives early stopping. auto:
    accuracy for classification and instruct, loss for lm and summarization."""
    cpu: bool = False
    """Force the CPU even where a GPU is present."""


class EvalConfig(_Strict):
    batch_size: int = Field(64, ge=1)


class OutputConfig(_Strict):
    dir: str | None = None
    """Run directory. None: runs/<model>-<data>-<method>, with -2, -3 ... added when taken."""
    overwrite: bool = False
    """Allow writing into a run directory that already holds a finished run."""


class RunConfig(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    task: TaskConfig = ClassificationTask()
    method: MethodConfig = LoRAMethod()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    def run_dir(self) -> Path:
        if self.output.dir:
            return Path(self.output.dir)
        safe = lambda s: Path(s).name.replace("/", "_") or "data"  # noqa: E731
        return Path("runs") / f"{safe(self.model.name)}-{safe(self.data.name)}-{self.method.name}"


# --------------------------------------------------------------------------------------------
# Loading and overriding


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """Turn ``["--method.r", "16", "--train.lr=1e-4"]`` into a nested dict.

    Values are parsed as YAML scalars/lists, so ``16`` is an int, ``1e-4`` a float, ``null``
    None and ``[q,v]`` a list; anything else (``{text}``, ``a: b``) stays text.
    """
    nested: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise UserError(f"unexpected argument {arg!r}; overrides look like --section.key VALUE")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args):
                raise UserError(f"override --{key} has no value; write --{key} VALUE")
            value = args[i + 1]
            i += 1
        i += 1
        if "." not in key:
            raise UserError(f"override --{key} must name a section and a key, e.g. --method.r 16")
        parsed = _parse_value(value)
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override --{key} conflicts with another override")
        node[leaf] = parsed
    return nested


def _parse_value(text: str) -> Any:
    if text == "":
        return ""  # an empty value is empty text; null is written `null`
    if text.lower() in ("yes", "no", "on", "off", "y", "n"):
        return text  # YAML 1.1 would make these booleans; on the command line they are words
    # PyYAML (YAML 1.1) reads "5e-4" as a string, so numbers are tried first.
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # e.g. a prompt template "Review: {text} Sentiment:" is plain text
    # "{train: 0.8}" is a mapping, but "{text}" (a key without a value) is a prompt template.
    if isinstance(value, dict) and any(v is None for v in value.values()):
        return text
    return value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml_mapping(path: Path, sections: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; anything else is one clear error line."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of sections ({sections})")
    return raw


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate once."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        raw = read_yaml_mapping(path, "model, data, ...")
    raw = deep_merge(raw, overrides or {})
    return validate_config(raw)


DEFAULT_NAMES = {"task": "classification", "method": "lora"}


def validate_config(raw: dict[str, Any]) -> RunConfig:
    # A section given without `name` (e.g. only `--task.max_length 64`) means the default kind.
    for section, default in DEFAULT_NAMES.items():
        if isinstance(raw.get(section), dict) and "name" not in raw[section]:
            raw = {**raw, section: {"name": default, **raw[section]}}
    raw = _lstm_model_name(raw)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, raw)) from None


def _lstm_model_name(raw: dict[str, Any]) -> dict[str, Any]:
    """The LSTM baseline loads no pretrained model, so its runs record `model.name: lstm`
    whatever the shared config said (a comparison runs it beside encoder methods)."""
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    if _section_name(raw, "method") == "lstm":
        return {**raw, "model": {"name": "lstm"}}
    if model.get("name") == "lstm":
        raise UserError("model.name lstm is the LSTM baseline and goes with method.name lstm; "
                        f"got method {_section_name(raw, 'method') or 'lora'!r}")
    return raw


def describe_validation_error(exc: ValidationError, raw: dict[str, Any], root: type[BaseModel] | None = None) -> str:
    """One line naming the first bad key, what it got and what is allowed (``root``: the class
    validated, RunConfig by default)."""
    err = exc.errors()[0]
    # Drop the discriminator tag pydantic inserts in union paths (method.lora.r -> method.r).
    # Union members appear in the path by type name (label_words.list[str]); they are not keys.
    loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
    if len(loc) >= 2 and loc[0] in ("method", "task") and loc[1] == _section_name(raw, loc[0]):
        loc.pop(1)
    key = ".".join(loc) or "config"
    kind = err["type"]
    if kind == "extra_forbidden":
        section = loc[:-1]
        allowed = _allowed_keys(raw, section, root or RunConfig)
        return f"unknown config key {key!r}; allowed keys here: {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        tags = err.get("ctx", {}).get("expected_tags", "")
        return f"{key}.name: unknown {loc[0]} {err['input'].get('name')!r}; known: {tags.replace(chr(39), '')}"
    if kind == "literal_error":
        return f"{key}: got {err['input']!r}; allowed: {err['ctx']['expected']}"
    message = err["msg"].removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], dict):
        return f"{key}: {message} (got {err['input']!r})"
    return f"{key}: {message}"


def _section_name(raw: dict[str, Any], section: str) -> str | None:
    value = raw.get(section)
    return value.get("name") if isinstance(value, dict) else None


def _allowed_keys(raw: dict[str, Any], section: list[str], root: type[BaseModel]) -> list[str]:
    cls: type[BaseModel] = root
    for part in section:
        field = cls.model_fields.get(part)
        if field is None:
            break
        annotation = field.annotation
        if part in ("method", "task"):
            wanted = _section_name(raw, part) or ("lora" if part == "method" else "classification")
            choices = METHOD_CLASSES if part == "method" else TASK_CLASSES
            annotation = choices.get(wanted, annotation)
        cls = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else cls
    return sorted(cls.model_fields)


METHOD_CLASSES: dict[str, type[BaseModel]] = {
    "none": NoMethod, "full": FullMethod, "head": HeadMethod, "bitfit": BitFitMethod, "adapter": AdapterMethod, "lora": LoRAMethod,
    "ia3": IA3Method, "prompt": PromptMethod, "prefix": PrefixMethod, "lstm": LSTMMethod}
TASK_CLASSES: dict[str, type[BaseModel]] = {"classification": ClassificationTask, "instruct": InstructTask,
                                             "lm": LMTask, "summarization": SummarizationTask}


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------------------------
# A comparison: the shared run sections plus the methods to run on them (``tunelab compare``)


class CompareOutput(_Strict):
    dir: str | None = None
    """Comparison directory (one run directory per method and seed, plus the report).
    None: runs/compare-<model>-<data>, with -quick added under --quick."""


class CompareConfig(_Strict):
    """Every method runs with these sections; `methods` says which methods and what differs."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    task: TaskConfig = ClassificationTask()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    methods: dict[str, dict[str, Any] | None] | None = None
    """Run name -> overrides of the sections above for that method's runs, in the sections'
    own shape: `lora: {method: {r: 16}, train: {lr: 2.0e-3}}`. The method is the run name
    unless `method.name` names another (`lora-r64: {method: {name: lora, r: 64}}`); an empty
    entry (`ia3: {}`) runs the method with its defaults. None: every registered method."""
    seeds: int = Field(1, ge=1, le=100)
    """Run every method with seeds train.seed, train.seed + 1, ...; the report gives mean ± std."""
    output: CompareOutput = CompareOutput()
