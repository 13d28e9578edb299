"""The options of every method, one class each, as the config's ``method`` section holds them.

Each class is registered with its module in :mod:`tunelab.methods`; its ``name`` default is
the YAML ``method.name``, the registry key and the module's name.
Pydantic only, no torch: the comparison's own process reads configs without loading a model.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, model_validator

from tunelab.schema import Strict


class MethodOptions(Strict):
    """What every method's options have: the name, and what the method does to the inputs."""

    name: str
    pretrained: ClassVar[bool] = True
    """False for a method that builds its own model from the data (the LSTM baseline) instead of
    adapting a pretrained one; its module then also provides ``prepare(cfg, raw, run_dir)``."""
    trains: ClassVar[bool] = True
    """False for a method that trains nothing (zero-/few-shot prompting): a tuned comparison has
    no hyper-parameter of its to search."""
    export_formats: ClassVar[tuple[str, ...]] = ()
    """The ``tunelab export`` formats of this method's runs: ``peft`` (its module then provides
    ``peft_adapter(model, cfg)``) and ``merged`` (its injected modules fold into the weights
    they wrap with ``merge()``, or it trains the model's own tensors)."""
    no_export: ClassVar[dict[str, str]] = {}
    """Format -> why this method's runs cannot be written in it, for the one line export gives."""

    def export_refusal(self, fmt: str, causal: bool) -> str | None:
        """Why this method's runs cannot be exported as ``fmt`` (None: they can). ``causal``: the
        run's task runs on a causal LM. Torch-free, so export refuses before it loads anything."""
        if fmt in self.export_formats:
            return None
        if fmt in self.no_export:
            return self.no_export[fmt]
        if self.export_formats:
            return f"method {self.name} cannot be exported as {fmt}; its format: {', '.join(self.export_formats)}"
        return (f"method {self.name} has no export format; use the run directory itself with tunelab eval, predict "
                "or generate")

    @property
    def virtual_tokens(self) -> int:
        """Positions the method puts in front of every input (they count against the context)."""
        return 0

    @property
    def body_frozen(self) -> bool:
        """The pretrained body is neither trained nor changed: it can run in eval mode (no
        dropout), and what it computes for an input is the same at every step."""
        return False

    @property
    def precompute_features(self) -> bool:
        """Train on the frozen body's features computed once (tunelab.tasks.features)."""
        return False


class NoMethod(MethodOptions):
    """No training: the pretrained model as it is, for zero-/few-shot baselines (``task.shots``)."""

    name: Literal["none"] = "none"
    trains: ClassVar[bool] = False
    no_export: ClassVar[dict[str, str]] = dict.fromkeys(
        ("peft", "merged"), "method none trained nothing: the base model (model.name in the run's config.yaml) is the "
                            "result as it is; use it directly")

    @property
    def body_frozen(self) -> bool:
        return True


def no_peft_format(why: str) -> dict[str, str]:
    return {"peft": f"PEFT has no format for this method ({why}); export it with --format merged, which writes the "
                    "trained weights into a plain transformers checkpoint"}


class FullMethod(MethodOptions):
    name: Literal["full"] = "full"
    export_formats: ClassVar[tuple[str, ...]] = ("merged",)
    no_export: ClassVar[dict[str, str]] = no_peft_format(
        "a full fine-tune changes every weight; it is a whole model, not an adapter")


class HeadMethod(MethodOptions):
    name: Literal["head"] = "head"
    export_formats: ClassVar[tuple[str, ...]] = ("merged",)
    no_export: ClassVar[dict[str, str]] = no_peft_format("head-only tuning trains the task head and no adapter")
    last_n_layers: int = Field(0, ge=0)
    """Also train the last N transformer blocks."""
    cache_features: bool = True
    """With the whole body frozen, compute its (pooled) output for every example once, in eval
    mode, and train the classifier on those features (classification with tunelab's pooled head;
    ``task.head: auto`` runs the frozen body at every step)."""

    @property
    def body_frozen(self) -> bool:
        return self.last_n_layers == 0

    @property
    def precompute_features(self) -> bool:
        return self.body_frozen and self.cache_features


class LoRAMethod(MethodOptions):
    """LoRA (Hu et al. 2021, arXiv:2106.09685): h = W0 x + (alpha / r) B A x, and its variants
    DoRA, rsLoRA, LoRA+, PiSSA and OLoRA (tunelab.methods.lora)."""

    name: Literal["lora"] = "lora"
    export_formats: ClassVar[tuple[str, ...]] = ("peft", "merged")
    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None
    """Module-name suffixes to wrap. None: the architecture's default (query/key/value on BERT,
    q_proj/k_proj/v_proj on Llama, c_attn with q, k and v on GPT-2). For a fused projection a
    suffix may name slices, e.g. `c_attn:q+v` (or `c_attn:q,v` in a block-style YAML list).
    `all-linear`: every linear layer but the task head and a causal LM's output layer."""
    use_dora: bool = False
    """DoRA (Liu et al. 2024, arXiv:2402.09353): a trained magnitude per output times the
    direction of W0 + s B A."""
    scaling: Literal["standard", "rslora"] = "standard"
    """standard: s = alpha / r; rslora: s = alpha / sqrt(r) (Kalajdzievski 2023, arXiv:2312.03732)."""
    init: Literal["kaiming", "gaussian", "pissa", "olora"] = "kaiming"
    """kaiming: A kaiming-uniform, B zero (the paper's); gaussian: A normal with std 1 / r;
    pissa: A and B from W0's top r singular directions, W0 keeps the residual (Meng et al. 2024,
    arXiv:2404.02948); olora: the same from W0's QR decomposition (Büyükakyüz 2024, arXiv:2406.01775)."""
    lr_ratio: float | None = Field(None, gt=0)
    """LoRA+ (Hayou et al. 2024, arXiv:2402.12354): B's learning rate is lr_ratio times A's
    (train.lr); the paper suggests 16."""


class PeftMethod(MethodOptions):
    """Any tuner of the installed PEFT (VeRA, AdaLoRA, OFT, BOFT, FourierFT, LN tuning, LoHa,
    LoKr, HRA, ...), injected into tunelab's model by PEFT's own tuner class and trained by
    tunelab's loop (tunelab.methods.peft_bridge). Every key besides ``name`` and ``type`` is an
    option of that tuner's PEFT config, e.g. ``{name: peft, type: VERA, r: 64}``."""

    model_config = ConfigDict(extra="allow")
    name: Literal["peft"] = "peft"
    type: str
    """The PEFT type, e.g. VERA, ADALORA, OFT, BOFT, FOURIERFT, LN_TUNING (any case)."""
    export_formats: ClassVar[tuple[str, ...]] = ("peft", "merged")

    @property
    def options(self) -> dict[str, Any]:
        """The tuner's own options, as the config gives them."""
        return dict(self.model_extra or {})

    @model_validator(mode="before")
    @classmethod
    def _known_to_peft(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            return raw  # pydantic says what is missing or of the wrong kind
        # Only a config that names this method pays for importing PEFT (and torch) here.
        from tunelab.methods.peft_types import check_options

        options = {k: v for k, v in raw.items() if k not in ("name", "type")}
        return {**raw, "type": check_options(raw["type"], options)}


class BitFitMethod(MethodOptions):
    """BitFit (Ben Zaken et al. 2021, arXiv:2106.10199): only bias terms train."""

    name: Literal["bitfit"] = "bitfit"
    export_formats: ClassVar[tuple[str, ...]] = ("merged",)
    no_export: ClassVar[dict[str, str]] = no_peft_format("BitFit trains the model's own biases, which no PEFT "
                                                         "adapter holds")
    add_missing_biases: bool = True
    """Give linear layers without a bias (Llama) a zero-initialised one, so they can train too."""


class AdapterMethod(MethodOptions):
    """Bottleneck adapters x + up(act(down(x))), `up` zero-initialised (Houlsby et al. 2019,
    arXiv:1902.00751; Pfeiffer et al. 2021, arXiv:2005.00247)."""

    name: Literal["adapter"] = "adapter"
    no_export: ClassVar[dict[str, str]] = dict.fromkeys(
        ("peft", "merged"), "tunelab's bottleneck adapters compute h + up(act(down(h))), which is nonlinear: no "
                            "weights of the original architecture compute it, so they cannot be merged, and PEFT has "
                            "no format for them; use the run directory itself with tunelab eval, predict or generate")
    placement: Literal["houlsby", "pfeiffer"] = "houlsby"
    """houlsby: after the attention output projection and after the feed-forward output of
    every layer; pfeiffer: after the feed-forward output only."""
    size: int | None = Field(None, gt=0)
    """Bottleneck width. None: hidden size / reduction_factor."""
    reduction_factor: float = Field(16.0, gt=0)
    activation: Literal["gelu", "relu", "tanh", "silu"] = "gelu"


class IA3Method(MethodOptions):
    """(IA)^3 (Liu et al. 2022, arXiv:2205.05638): learned vectors, initialised to ones, that
    rescale keys, values and the feed-forward intermediate activations."""

    name: Literal["ia3"] = "ia3"
    export_formats: ClassVar[tuple[str, ...]] = ("peft", "merged")


class VirtualTokenMethod(MethodOptions):
    """A method that puts ``num_virtual_tokens`` learned positions in front of every input."""

    num_virtual_tokens: int = Field(20, gt=0)
    export_formats: ClassVar[tuple[str, ...]] = ("peft",)
    no_export: ClassVar[dict[str, str]] = {
        "merged": "{name} tuning cannot be merged: its virtual tokens are extra inputs to every call, not weights "
                  "of the model; export it with --format peft"}

    @property
    def virtual_tokens(self) -> int:
        return self.num_virtual_tokens

    def export_refusal(self, fmt: str, causal: bool) -> str | None:
        if not causal:
            # PEFT's prompt learning hands the virtual positions to the model's pooling (its
            # sequence-classification and feature-extraction models keep them); tunelab's head pools
            # the real tokens only, so a PEFT copy of this run would compute something else.
            return (f"a classification run's {self.name} tuning cannot be exported: its virtual tokens are inputs, "
                    "not weights, so they cannot be merged, and PEFT's models pool over the virtual positions where "
                    "tunelab's head pools the real tokens only; use the run directory with tunelab eval or predict")
        reason = super().export_refusal(fmt, causal)
        return reason and reason.format(name=self.name)


class PromptMethod(VirtualTokenMethod):
    """Prompt tuning (Lester et al. 2021, arXiv:2104.08691): trainable embeddings prepended to the input."""

    name: Literal["prompt"] = "prompt"
    init: Literal["text", "vocab", "random"] = "text"
    """text: embeddings of `init_text`, repeated or truncated; vocab: embeddings of sampled
    vocabulary tokens; random: normal with the embedding matrix's standard deviation."""
    init_text: str = "Classify the sentiment of this review:"


class PrefixMethod(VirtualTokenMethod):
    """Prefix tuning (Li & Liang 2021, arXiv:2101.00190): trainable key/value prefixes in every layer."""

    name: Literal["prefix"] = "prefix"
    reparameterize: bool = False
    """Produce the prefixes with an MLP of a small embedding while training (section 4.3); the
    checkpoint keeps only the prefixes it produces."""
    hidden_size: int = Field(512, gt=0)
    """Width of the reparameterisation MLP."""


class LSTMMethod(MethodOptions):
    """The non-pretrained baseline of the course's first lab: a word vocabulary built from the
    train split, an embedding, a (bi)LSTM over packed sequences, dropout and a linear head.
    Every weight trains. No pretrained model is loaded: `model.name` is recorded as `lstm`;
    inputs are cut to `task.max_length` words."""

    name: Literal["lstm"] = "lstm"
    pretrained: ClassVar[bool] = False
    no_export: ClassVar[dict[str, str]] = dict.fromkeys(
        ("peft", "merged"), "method lstm is tunelab's own LSTM baseline, not a pretrained transformers model: neither "
                            "PEFT nor transformers has a format for it; its checkpoint/ in the run directory is the "
                            "model (tunelab eval, predict)")
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
