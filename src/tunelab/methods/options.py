"""The options of every method, one class each, as the config's ``method`` section holds them.

Each class is registered with its module in :mod:`tunelab.methods`; its ``name`` default is
the YAML ``method.name``, the registry key and the module's name.
Pydantic only, no torch: the comparison's own process reads configs without loading a model.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

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

    @property
    def body_frozen(self) -> bool:
        return True


class FullMethod(MethodOptions):
    name: Literal["full"] = "full"


class HeadMethod(MethodOptions):
    name: Literal["head"] = "head"
    last_n_layers: int = Field(0, ge=0)
    """Also train the last N transformer blocks."""
    cache_features: bool = True
    """With the whole body frozen, compute its (pooled) output for every example once, in eval
    mode, and train the classifier on those features (classification only)."""

    @property
    def body_frozen(self) -> bool:
        return self.last_n_layers == 0

    @property
    def precompute_features(self) -> bool:
        return self.body_frozen and self.cache_features


class LoRAMethod(MethodOptions):
    """LoRA (Hu et al. 2021, arXiv:2106.09685): h = W0 x + (alpha / r) B A x."""

    name: Literal["lora"] = "lora"
    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    """Module-name suffixes to wrap. None: the architecture's default (query/key/value on BERT,
    q_proj/k_proj/v_proj on Llama, c_attn with q, k and v on GPT-2). For a fused projection a
    suffix may name slices, e.g. `c_attn:q+v` (or `c_attn:q,v` in a block-style YAML list)."""


class BitFitMethod(MethodOptions):
    """BitFit (Ben Zaken et al. 2021, arXiv:2106.10199): only bias terms train."""

    name: Literal["bitfit"] = "bitfit"
    add_missing_biases: bool = True
    """Give linear layers without a bias (Llama) a zero-initialised one, so they can train too."""


class AdapterMethod(MethodOptions):
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


class IA3Method(MethodOptions):
    """(IA)^3 (Liu et al. 2022, arXiv:2205.05638): learned vectors, initialised to ones, that
    rescale keys, values and the feed-forward intermediate activations."""

    name: Literal["ia3"] = "ia3"


class PromptMethod(MethodOptions):
    """Prompt tuning (Lester et al. 2021, arXiv:2104.08691): trainable embeddings prepended to the input."""

    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, gt=0)
    init: Literal["text", "vocab", "random"] = "text"
    """text: embeddings of `init_text`, repeated or truncated; vocab: embeddings of sampled
    vocabulary tokens; random: normal with the embedding matrix's standard deviation."""
    init_text: str = "Classify the sentiment of this review:"

    @property
    def virtual_tokens(self) -> int:
        return self.num_virtual_tokens


class PrefixMethod(MethodOptions):
    """Prefix tuning (Li & Liang 2021, arXiv:2101.00190): trainable key/value prefixes in every layer."""

    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, gt=0)
    reparameterize: bool = False
    """Produce the prefixes with an MLP of a small embedding while training (section 4.3); the
    checkpoint keeps only the prefixes it produces."""
    hidden_size: int = Field(512, gt=0)
    """Width of the reparameterisation MLP."""

    @property
    def virtual_tokens(self) -> int:
        return self.num_virtual_tokens


class LSTMMethod(MethodOptions):
    """The non-pretrained baseline of the course's first lab: a word vocabulary built from the
    train split, an embedding, a (bi)LSTM over packed sequences, dropout and a linear head.
    Every weight trains. No pretrained model is loaded: `model.name` is recorded as `lstm`;
    inputs are cut to `task.max_length` words."""

    name: Literal["lstm"] = "lstm"
    pretrained: ClassVar[bool] = False
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
