"""One tree of typed config classes, loaded from YAML and overridden with dotted keys.

Validation happens once, here, at the edge: unknown keys and out-of-range values raise a
``UserError`` that names the key and what is allowed, before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from tunelab.errors import UserError
from tunelab.methods import METHODS
from tunelab.methods.options import LoRAMethod, MethodOptions
from tunelab.overrides import deep_merge, dotted_overrides, parse_overrides  # noqa: F401 - callers import them here
from tunelab.schema import Strict
from tunelab.shipped import resolve_config
from tunelab.tasks import TASKS
from tunelab.tasks.options import ClassificationTask, TaskOptions


class ModelConfig(Strict):
    name: str = "minilm-l6"
    """An embedded catalog name (`tunelab models`), a Hugging Face hub id, or a local directory."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `name` is a hub id."""
    trust_remote_code: bool = False
    """Run code shipped with a hub model. Off unless the user asks."""


class SplitFractions(Strict):
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


class DataConfig(Strict):
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
    drop_missing: bool = False
    """Drop the rows whose label, or text in a column the task reads, is missing or empty
    (counted in summary.json as dropped_examples). False: such rows are refused, naming the
    first one."""
    labels: list[str] | None = None
    """The label names in id order, fixed: a label outside them is refused. None: the sorted
    labels of the train split (or the names of its ClassLabel feature). ``tunelab eval`` on
    other data sets it to the run's labels, so they map onto the model's classes by name."""

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_text(cls, value):
        if isinstance(value, list):
            if any(isinstance(v, bool) for v in value):
                raise ValueError("a label was read as a boolean; quote yes/no/true/false in YAML, e.g. 'yes'")
            # as the data's labels are read (tunelab.data.labels.label_key): 1 and 1.0 are "1"
            integral = lambda v: isinstance(v, float) and v.is_integer()  # noqa: E731
            return [str(int(v)) if integral(v) else str(v) if isinstance(v, (int, float)) else v for v in value]
        return value

    @field_validator("labels")
    @classmethod
    def _labels_distinct(cls, value):
        if value is not None and (len(value) < 2 or len(set(value)) < len(value)):
            raise ValueError(f"give at least 2 distinct labels (got {value})")
        return value


class FSDPConfig(Strict):
    """Fully sharded data parallelism over several processes (FSDP2 through Accelerate,
    tunelab.sharding): each process keeps 1/N of the weights, gradients and AdamW state, and
    gathers one transformer layer whole while it computes. For a model whose training state does
    not fit one device."""

    strategy: Literal["none", "full_shard", "shard_grad_op"] = "none"
    """none: every process keeps the whole model (DDP). full_shard (ZeRO-3): a layer's gathered
    weights are freed after its forward and gathered again for its backward. shard_grad_op:
    kept from forward to backward (more memory, one gather less per layer and step)."""
    layer_classes: list[str] | None = None
    """Class names of the modules that each form one unit of gathering (e.g. LlamaDecoderLayer);
    None: the class of the model's transformer layers."""
    cpu_offload: bool = False
    """Keep the shards (weights, gradients, AdamW state) in CPU memory and move each layer to the
    GPU for its use; the optimizer steps on the CPU. Slower; for what does not fit even sharded."""


class TrainConfig(Strict):
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps (overrides `epochs` when reached first)."""
    batch_size: int = Field(32, ge=1)
    """Examples per micro-batch on each process; several processes (``torchrun``, ``accelerate
    launch``) train on batch_size x processes examples together."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step; the effective batch is batch_size * grad_accum * processes."""
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
    group_by_length: bool = True
    """Batch examples of similar length together (random groups of similar length, in random
    order, every example once per epoch), so batches carry little padding."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast of the forward passes (training and evaluation) through Accelerate's mixed
    precision; the weights, gradients and optimizer state stay float32. fp16 also scales the loss
    (Accelerate's gradient scaler) and needs a CUDA GPU; bf16 needs a GPU that has it, or runs
    on the CPU with a warning: little gain there (tunelab.launch.check_precision)."""
    gradient_checkpointing: bool = False
    """Keep only each transformer layer's inputs from the forward pass and recompute the rest in
    backward (transformers' non-reentrant activation checkpointing): less activation memory for
    about one more forward pass of compute (tunelab.checkpointing)."""
    fsdp: FSDPConfig = FSDPConfig()
    """Shard the model over the processes instead of copying it to each (several processes only)."""


class EvalConfig(Strict):
    batch_size: int = Field(64, ge=1)
    test: bool = True
    """Evaluate the best checkpoint on the test split at the end. A tuned comparison's trials
    run with this off: they choose hyper-parameters on validation, and only the final runs
    ever see test."""
    inference_examples: int = Field(64, ge=0)
    """Test inputs the best checkpoint's inference cost is timed on after the test (latency at
    batch 1 and at ``batch_size``, per generated token for a causal LM; merged and unmerged where
    the method folds into the weights: tunelab.inference); 0: not timed."""
    general_text: str | None = None
    """For a causal LM, general text whose perplexity is measured before training (the base model)
    and after (tunelab.forgetting): what adapting cost the model elsewhere. ``wiki-slice`` (the
    shipped causal configs set it) or any data tunelab reads; None: not measured."""
    general_tokens: int = Field(8192, ge=0)
    """Tokens of ``general_text`` scored, from the start of its test split."""


Tracker = Literal["tensorboard", "mlflow", "trackio", "wandb"]
"""An experiment tracker a run's records can go to (tunelab.tracking)."""


class OutputConfig(Strict):
    dir: str | None = None
    """Run directory. None: runs/<model>-<data>-<method>, with -2, -3 ... added when taken."""
    overwrite: bool = False
    """Allow writing into a run directory that already holds a finished run."""
    track: list[Tracker] = []
    """Experiment trackers that get every record of metrics.jsonl and the config (``--track``),
    offline by default (tunelab.tracking). Part of the output: tracking changes no result."""
    group: str | None = None
    """The comparison or sweep the run belongs to: its MLflow experiment, W&B group and trackio
    project. Set by ``tunelab compare`` and ``tunelab sweep``; None: ``tunelab``."""


class RunConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    task: SerializeAsAny[TaskOptions] = ClassificationTask()
    """Validated against the options class of the task its `name` picks (tunelab.tasks)."""
    method: SerializeAsAny[MethodOptions] = LoRAMethod()
    """Validated against the options class of the method its `name` picks (tunelab.methods)."""
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()

    _task = field_validator("task", mode="before")(lambda cls, value: TASKS.parse(value))
    _method = field_validator("method", mode="before")(lambda cls, value: METHODS.parse(value))

    @classmethod
    def from_yaml(cls, path: str | Path | None = None,
                  overrides: dict[str, Any] | list[str] | None = None) -> RunConfig:
        """A config file (None: the defaults) with the command line's overrides, validated once:
        ``{"train.lr": 1e-3, "method.r": 16}`` or ``["--train.lr", "1e-3"]``."""
        return load_config(path, dotted_overrides(overrides))

    def run_dir(self) -> Path:
        if self.output.dir:
            return Path(self.output.dir)
        safe = lambda s: Path(s).name.replace("/", "_") or "data"  # noqa: E731
        return Path("runs") / f"{safe(self.model.name)}-{safe(self.data.name)}-{self.method.name}"


# --------------------------------------------------------------------------------------------
# Loading and overriding


def read_yaml_mapping(path: Path, sections: str, defaults: str = "") -> dict[str, Any]:
    """A YAML file that must hold a mapping; anything else (an empty file too: it would silently
    mean every default) is one clear error line. ``defaults``: how to run the defaults instead."""
    if path.is_dir():
        raise UserError(f"config file {path} is a directory; give a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if raw is None or raw == {}:
        raise UserError(f"config file {path} is empty; give its sections ({sections})"
                        + (f", or {defaults}" if defaults else ""))
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of sections ({sections})")
    return raw


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate once."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config(path)
        if not path.exists():
            raise UserError(f"config file not found: {path}")
        raw = read_yaml_mapping(path, "model, data, ...",
                                "to train the built-in defaults (minilm-l6, rt-snippets, LoRA) run without --config")
    overrides = overrides or {}
    method = overrides.get("method")
    if isinstance(method, dict) and isinstance(raw.get("method"), dict) and \
            method.get("name", raw["method"].get("name")) != raw["method"].get("name"):
        raw = {k: v for k, v in raw.items() if k != "method"}  # --method.name X: X from its defaults, not
        # with the file's method's options (LoRA's r means nothing to IA3)
    raw = deep_merge(raw, overrides)
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> RunConfig:
    raw = _self_built_model_name(raw)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(describe_validation_error(exc, raw)) from None


def _self_built_model_name(raw: dict[str, Any]) -> dict[str, Any]:
    """A method that builds its own model (the LSTM baseline) loads no pretrained one, so its
    runs record `model.name` as the method's name whatever the shared config said (a comparison
    runs it beside encoder methods); that name goes with that method only."""
    method = _section_name(raw, "method") or METHODS.default
    self_built = [name for name in METHODS.names() if not METHODS.options(name).pretrained]
    if method in self_built:
        return {**raw, "model": {"name": method}}
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    if model.get("name") in self_built:
        raise UserError(f"model.name {model['name']} is the {model['name'].upper()} baseline and goes with "
                        f"method.name {model['name']}; got method {method!r}")
    return raw


def describe_validation_error(exc: ValidationError, raw: dict[str, Any], root: type[BaseModel] | None = None) -> str:
    """One line naming the first bad key, what it got and what is allowed (``root``: the class
    validated, RunConfig by default)."""
    err = exc.errors()[0]
    # Union members appear in the path by type name (label_words.list[str]); they are not keys.
    loc = without_union_tags([str(p) for p in err["loc"] if not (isinstance(p, str) and "[" in p)], raw)
    key = ".".join(loc) or "config"
    kind = err["type"]
    if kind == "extra_forbidden":
        section = loc[:-1]
        allowed = _allowed_keys(raw, section, root or RunConfig)
        return f"unknown config key {key!r}; allowed keys here: {', '.join(allowed)}"
    if kind == "unknown_name":  # a method or task name no registry knows (tunelab.registry)
        return f"{key}.name: {err['msg']}"
    if kind == "literal_error":
        return f"{key}: got {err['input']!r}; allowed: {err['ctx']['expected']}"
    message = err["msg"].removeprefix("Value error, ")
    if "input" in err and not isinstance(err["input"], dict):
        return f"{key}: {message} (got {err['input']!r})"
    return f"{key}: {message}"


def without_union_tags(loc: list[str], raw: dict[str, Any]) -> list[str]:
    """A discriminated union puts its tag in the path (task.objective.dpo.beta): drop a part that
    is not a key of the YAML at that point while the part after it is."""
    kept, node = [], raw
    for i, part in enumerate(loc):
        following = loc[i + 1] if i + 1 < len(loc) else None
        if isinstance(node, dict) and part not in node and following in node:
            continue
        kept.append(part)
        node = node.get(part) if isinstance(node, dict) else None
    return kept


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
        registry = {"method": METHODS, "task": TASKS}.get(part)
        if registry is not None:  # the options class the section's name picks
            wanted = _section_name(raw, part) or registry.default
            annotation = registry.options(wanted) if wanted in registry.names() else annotation
        cls = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else cls
    return sorted(cls.model_fields)


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
