"""What the planner reads off a model: its shape from config.json, and what trains where.

The model is built from its config alone on the meta device with the method applied, as
``tunelab params`` builds it (:func:`tunelab.build.model_from_config`), so parameter counts are
exact. Each transformer block is then read module by module: which projections' weights train
(their inputs must be saved), which method modules sit where and what they add (each module
describes itself, :func:`tunelab.methods.memory_sites.memory_site_of`: a low-rank update, a
scale vector, a bottleneck, virtual tokens; the planner never asks for a method's class), and
whether anything at or before the block trains (whether gradients flow through it at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from tunelab.methods.memory_sites import (
    BottleneckSite,
    LowRankSite,
    MemorySite,
    ScaleSite,
    VirtualTokensSite,
    memory_site_of,
)
from tunelab.models.families import Family, family_of, is_causal_lm, transformer_blocks, transformer_body

ROLES = ("qkv", "attn_out", "mlp_in", "mlp_out")
"""The projections of a block, by what they read: the attention's input (q, k, v share it),
the attention's output (its heads concatenated), the feed-forward's input (gate and up share
it) and the feed-forward's intermediate activations."""

ENTRIES = ("q", "kv", "attn_out", "mlp_in", "mlp_out")
"""Where in a block the first trained thing sits, in the order a block computes: the queries, the
keys or values only, then the projections after the attention. In the first block gradients
reach, nothing before that point needs its activations."""


@dataclass(frozen=True)
class LayerKind:
    """What a family's transformer block does besides its projections."""

    norm: str
    """``layer`` (LayerNorm: saves input, mean, rstd) or ``rms`` (transformers' RMSNorm: saves
    its float32 input and the reciprocal root mean square)."""
    gated: bool
    """The feed-forward is act(gate(x)) * up(x) (SwiGLU): the product saves both factors."""
    hidden_dropouts: int
    """Dropouts on the hidden state per block (after the attention and feed-forward outputs)."""
    embedding_norm: bool
    """Post-LN encoders normalise the embeddings before the first block."""
    embedding_dropout: bool
    """Dropout on the embeddings (with the hidden dropout's probability)."""
    final_norm: bool
    """Pre-LN decoders normalise the last block's output."""


LAYER_KINDS = {
    "bert": LayerKind("layer", gated=False, hidden_dropouts=2, embedding_norm=True, embedding_dropout=True,
                      final_norm=False),
    "distilbert": LayerKind("layer", gated=False, hidden_dropouts=1, embedding_norm=True, embedding_dropout=True,
                            final_norm=False),
    "llama": LayerKind("rms", gated=True, hidden_dropouts=0, embedding_norm=False, embedding_dropout=False,
                       final_norm=True),
    "gpt2": LayerKind("layer", gated=False, hidden_dropouts=2, embedding_norm=False, embedding_dropout=True,
                      final_norm=True),
}

ACTIVATION_SAVES = {"gelu_new": 4, "gelu_fast": 4}
"""Tensors of the intermediate size that an activation saves, where not 1: transformers writes
the tanh-approximated GELU out in Python (x, x / 2, tanh(...) and 1 + tanh(...) are saved);
GELU, SiLU and ReLU are single kernels that save their input (ReLU its output)."""


@dataclass(frozen=True)
class Shape:
    family: str
    causal: bool
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    kind: LayerKind
    activation_saves: int
    hidden_dropout: float
    attention_dropout: float
    attention: str
    """The config's attention implementation when it names one (``eager``), else ``sdpa``."""


def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def shape_of(hf_config) -> Shape:
    """The numbers of a Hugging Face config that the activation model needs."""
    family = family_of(hf_config)
    hidden, heads = hf_config.hidden_size, hf_config.num_attention_heads
    act = _first(hf_config, "hidden_act", "activation_function", "activation", default="gelu")
    return Shape(
        family=family.name, causal=is_causal_lm(hf_config), hidden=hidden,
        intermediate=_first(hf_config, "intermediate_size", "n_inner", "hidden_dim", default=4 * hidden),
        layers=hf_config.num_hidden_layers, heads=heads,
        kv_heads=_first(hf_config, "num_key_value_heads", default=heads),
        head_dim=_first(hf_config, "head_dim", default=hidden // heads), vocab=hf_config.vocab_size,
        kind=LAYER_KINDS[family.name], activation_saves=ACTIVATION_SAVES.get(str(act), 1),
        hidden_dropout=float(_first(hf_config, "hidden_dropout_prob", "resid_pdrop", "dropout", default=0.0)),
        attention_dropout=float(_first(hf_config, "attention_probs_dropout_prob", "attn_pdrop",
                                       "attention_dropout", default=0.0)),
        attention="eager" if getattr(hf_config, "_attn_implementation", None) == "eager" else "sdpa")


@dataclass
class Block:
    """What trains in one transformer block (its own parameters and the method's modules in it)."""

    params: int = 0
    trainable: int = 0
    trained_roles: set[str] = field(default_factory=set)
    trained_norms: bool = False
    low_rank: list[tuple[str, LowRankSite]] = field(default_factory=list)
    """Low-rank updates, each with the role of the projection it updates."""
    scales: list[int] = field(default_factory=list)
    """The width of the tensor each learned scale vector multiplies (saved for its gradient)."""
    bottlenecks: list[BottleneckSite] = field(default_factory=list)
    """Bottlenecks on projections' outputs."""
    entry: int | None = None
    """Index in :data:`ENTRIES` of the earliest trained thing (None: nothing trains here)."""

    def enter(self, entry: str) -> None:
        index = ENTRIES.index(entry)
        self.entry = index if self.entry is None else min(self.entry, index)


def role_of(name: str, family: Family) -> str:
    """The role of a projection from its module name inside a block (a wrapper's ``.base``
    is the projection it wraps)."""
    name = "." + re.sub(r"\.base$", "", name)
    if family.fused_qkv is not None and name.endswith("." + family.fused_qkv):
        return "qkv"
    if family.query_key_value is not None and name.endswith(tuple("." + s for s in family.query_key_value)):
        return "qkv"
    if re.search(family.attention_output, name):
        return "attn_out"
    if re.search(family.feed_forward_output, name):
        return "mlp_out"
    return "mlp_in"


def entry_of(name: str, role: str, family: Family, slices: tuple[bool, ...] = (True,)) -> str:
    """The entry point of a trained projection: for the attention's input, whether the queries
    train (a separate query projection, or a fused one with its q slice enabled)."""
    if role != "qkv":
        return role
    if family.fused_qkv is not None:
        return "q" if slices[0] else "kv"
    query = family.query_key_value[0]
    return "q" if re.sub(r"\.base$", "", name).endswith(query) else "kv"


def add_site(found: Block, site: MemorySite, name: str, role: str, family: Family) -> None:
    """A method's module on the projection called ``name``: what it saves, and where the block is
    entered (a bottleneck adapts the projection's output: the block is entered after it)."""
    if isinstance(site, LowRankSite):
        found.low_rank.append((role, site))
        slices = site.slices
    elif isinstance(site, ScaleSite):
        found.scales.append(site.features)
        slices = site.slices
    elif isinstance(site, BottleneckSite):
        found.bottlenecks.append(site)
        slices = (True,)  # the projection's whole output
    else:  # virtual tokens are the body's, not a block's
        return
    found.enter(entry_of(name, role, family, slices))


def inside(name: str, owners: list[str]) -> bool:
    """Whether module ``name`` belongs to one of the method modules ``owners``: everything inside
    them but the projection a wrapper wraps (its ``base``), which is read as any projection."""
    return any(name.startswith(owner + ".") and not (name + ".").startswith(owner + ".base.") for owner in owners)


def read_block(block: nn.Module, family: Family) -> Block:
    """One block's parameters and what trains in it."""
    found = Block(params=sum(p.numel() for p in block.parameters()),
                  trainable=sum(p.numel() for p in block.parameters() if p.requires_grad))
    owners: list[str] = []
    for name, module in block.named_modules():
        if inside(name, owners):
            continue  # a method module's own layers (a bottleneck's projections) are counted with it
        role = role_of(name, family)
        site = memory_site_of(module)
        if site is not None:
            owners.append(name)
            add_site(found, site, name, role, family)
        elif hasattr(module, "weight") and module.weight is not None and module.weight.dim() == 2:
            if module.weight.requires_grad:
                found.trained_roles.add(role)
                found.enter(entry_of(name, role, family))
        elif hasattr(module, "weight") and getattr(module.weight, "requires_grad", False):
            found.trained_norms = True
            found.enter("q")  # a norm before the attention, or after it in post-LN: counted as early
    if found.trainable and found.entry is None:  # something no rule knows (PEFT's other tuners)
        found.enter("q")
    return found


@dataclass
class Anatomy:
    """A model with its method applied, as the planner needs it."""

    shape: Shape
    trainable: int
    frozen: int
    trainable_matrices: int
    """Trainable parameters in matrices (2-D or more): what autocast casts to half precision."""
    blocks: list[Block]
    input_trains: bool
    """Something at the input trains (embeddings, a soft prompt): gradients reach every block."""
    prefix_tokens: int
    """Learned key/value positions before every input (prefix tuning): keys are longer."""
    prompt_tokens: int
    """Learned input positions (prompt tuning): the body sees longer sequences."""
    head_input_trains: bool
    """The output layer's weight trains (a causal LM's head, tied or not): its input is saved."""
    pooler_trains: bool
    """A BERT pooler trains (it is unused by tunelab's pooled head, yet runs): its input, a view
    of the last hidden states, keeps all of them alive."""

    def entries(self) -> list[str | None]:
        """For each block, where gradients start to be needed in it: ``input`` (all of it: they
        flow in from the blocks before or the input), an entry of :data:`ENTRIES` in the first
        block something trains in, or None (frozen, and nothing before it trains)."""
        entries: list[str | None] = []
        seen = self.input_trains
        for block in self.blocks:
            entry = block.entry
            if self.prefix_tokens:  # learned keys and values in every block: the first is entered there
                entry = ENTRIES.index("kv") if entry is None else min(entry, ENTRIES.index("kv"))
            entries.append("input" if seen else (None if entry is None else ENTRIES[entry]))
            seen = seen or entry is not None
        return entries

    def live(self) -> list[bool]:
        """For each block: do gradients flow through it (something at or before it trains)?"""
        return [entry is not None for entry in self.entries()]


def read_anatomy(model: nn.Module, hf_config) -> Anatomy:
    """Read a built model (meta device is enough) with its method applied."""
    family = family_of(hf_config)
    params = list(model.parameters())
    body = transformer_body(model)
    tokens = [(m, site) for m in body.children() if isinstance(site := memory_site_of(m), VirtualTokensSite)]
    prompts = [m for m, site in tokens if site.where == "input"]
    input_modules = [body.get_input_embeddings(), getattr(body, "embeddings", None), getattr(body, "wpe", None),
                     *prompts]
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    pooler = getattr(body, "pooler", None) or nn.Module()  # BERT's, which tunelab's pooled head leaves unused
    return Anatomy(
        shape=shape_of(hf_config),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        frozen=sum(p.numel() for p in params if not p.requires_grad),
        trainable_matrices=sum(p.numel() for p in params if p.requires_grad and p.dim() >= 2),
        blocks=[read_block(b, family) for b in transformer_blocks(body)],
        input_trains=any(p.requires_grad for m in input_modules if m is not None for p in m.parameters()),
        prefix_tokens=sum(site.tokens for _, site in tokens if site.where == "keys"),
        prompt_tokens=sum(site.tokens for _, site in tokens if site.where == "input"),
        head_input_trains=output is not None and output.weight.requires_grad,
        pooler_trains=any(p.requires_grad and p.dim() == 2 for p in pooler.parameters()))


def anatomy_for(cfg, num_labels: int = 2) -> Anatomy:
    """The run config's model (a causal LM as it is, an encoder with a classifier of
    ``num_labels``, as ``tunelab params`` counts them) with its method, built on the meta device and read."""
    from tunelab.build import model_from_config, refuse_self_built
    from tunelab.models.loading import load_config

    refuse_self_built(cfg)
    hf_config = load_config(cfg.model)
    model, _ = model_from_config(cfg, hf_config, is_causal_lm(hf_config), num_labels, device="meta")
    return read_anatomy(model, hf_config)
