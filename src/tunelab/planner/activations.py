"""The tensors autograd saves for backward in one training step, in bytes, per example.

Every function here returns the bytes of ONE example (batch 1) of ``T`` tokens; the batch
multiplies them. What a block saves follows from what needs a gradient (see the package
docstring for the whole model and its assumptions):

- a projection saves its input only when its own weight trains (a frozen projection passes the
  gradient back through its weight, which is a parameter, not an activation);
- norms, activation functions, attention and dropout save what their backward needs whenever a
  gradient flows through them, that is in every block at or after the first thing that trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tunelab.planner.anatomy import ENTRIES, Anatomy, Block, Shape

FLOAT32 = 4
"""Bytes of the float32 tensors mixed precision keeps: norm inputs, softmax statistics, the loss's log-probabilities."""


@dataclass(frozen=True)
class Settings:
    """How the step runs."""

    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp32 everywhere, or frozen weights stored in bf16/fp16 with autocast computing in it and
    the trained parameters kept in float32."""
    batch_size: int = 1
    """Examples per device."""
    seq_len: int = 128
    """Tokens per example."""
    checkpointing: bool = False
    """Gradient checkpointing: keep each block's input, recompute the block in backward."""
    devices: int = 1
    """FSDP over this many devices: weights, gradients and optimizer state sharded."""
    target: Literal["cuda", "cpu"] = "cuda"
    """Where the step runs: CUDA drops out with a 1-byte mask and runs attention in a fused kernel
    even with dropout; the CPU keeps a full-width mask and falls back to the math attention then."""
    attention: Literal["sdpa", "eager"] | None = None
    """sdpa or eager attention; None: what the model's config says (sdpa unless it names eager)."""

    @property
    def mixed(self) -> bool:
        return self.precision != "fp32"

    @property
    def act_bytes(self) -> int:
        return FLOAT32 if self.precision == "fp32" else 2

    @property
    def mask_bytes(self) -> int:
        return 1 if self.target == "cuda" else self.act_bytes


def role_widths(shape: Shape) -> dict[str, int]:
    """The input width of each projection role (what it saves per token when its weight trains)."""
    return {"qkv": shape.hidden, "attn_out": shape.heads * shape.head_dim, "mlp_in": shape.hidden,
            "mlp_out": shape.intermediate}


def norm_bytes(shape: Shape, s: Settings, trained: bool) -> int:
    """One norm, per token: its input (float32 under autocast or transformers' RMSNorm upcast),
    its statistics, and for RMSNorm with a trained weight the normalised tensor it multiplies."""
    stats = 2 if shape.kind.norm == "layer" else 1  # mean and rstd, or rstd alone
    weight_input = shape.hidden * s.act_bytes if trained and shape.kind.norm == "rms" else 0
    return shape.hidden * (FLOAT32 if s.mixed else s.act_bytes) + stats * FLOAT32 + weight_input


def materialized(shape: Shape, s: Settings) -> bool:
    """Does attention build the (T x T) probabilities? Eager always; SDPA on the CPU when attention
    dropout is on in training (its fused CPU kernel has no dropout); on CUDA the fused kernels
    (flash, memory-efficient) regenerate dropout from the seed and keep no (T x T) tensor."""
    attention = s.attention or shape.attention
    return attention == "eager" or (s.target == "cpu" and shape.attention_dropout > 0)


def attention_bytes(shape: Shape, s: Settings, T: int, Tk: int, masked: bool = False) -> int:
    """One block's attention, per example of T queries and Tk keys; ``masked``: an explicit
    attention mask goes in (prefix tuning's), which SDPA keeps, and with which transformers
    repeats grouped keys and values to every head rather than letting SDPA share them."""
    a, width = s.act_bytes, shape.heads * shape.head_dim
    if not materialized(shape, s):
        # q, out, the log-sum-exp per head (float32); k and v with their own (grouped) heads
        kv_width = width if masked else shape.kv_heads * shape.head_dim
        mask = T * Tk * a if masked else 0
        return T * (2 * width * a + shape.heads * FLOAT32) + Tk * 2 * kv_width * a + mask
    # q, k^T and v (k, v repeated to every head), the softmax output, and what multiplies v:
    # the dropped-out probabilities and the dropout mask, or a half-precision copy under autocast
    dropout = shape.attention_dropout > 0
    softmax = FLOAT32 if s.mixed else a
    after = (s.mask_bytes + a) if dropout else (a if s.mixed else 0)
    return T * width * a + Tk * 2 * width * a + T * Tk * shape.heads * (softmax + after)


def saved_elsewhere(shape: Shape, s: Settings) -> set[str]:
    """Roles whose input the block saves anyway: fused attention returns its output laid out as
    (B, T, heads, head_dim), so the output projection's input is a view of the saved output."""
    return set() if materialized(shape, s) else {"attn_out"}


def method_bytes(shape: Shape, block: Block, s: Settings) -> int:
    """Per token, what the method's own modules in a block save."""
    a, widths, total = s.act_bytes, role_widths(shape), 0
    shared = {role for role, site in block.low_rank if site.dropout == 0} - block.trained_roles
    shared -= saved_elsewhere(shape, s)
    total += sum(widths[role] for role in shared) * a  # A reads the projection's input, once per input
    for _, site in block.low_rank:
        total += sum(site.slices) * site.r * a  # B reads A x
        if site.dropout > 0:  # each site drops out its own copy of the input
            total += site.in_features * (a + s.mask_bytes)
        if site.magnitude:  # the magnitude's gradient reads W0 x and B A x
            total += 2 * site.out_features * a
    total += sum(block.scales) * a  # the tensor each scale vector multiplies
    total += sum(b.hidden + 2 * b.size for b in block.bottlenecks) * a  # down's input, the activation's, up's
    return total


def alive(shape: Shape, entry: str) -> dict[str, int]:
    """How many of a block's norms and hidden dropouts, and whether its attention (2: all of it,
    1: without k for the queries' gradient, 0: none) and its activation function save anything,
    when gradients are needed from ``entry`` on (``input``: the whole block)."""
    order = ("input",) + ENTRIES
    at = order.index(entry)
    pre_norm = not shape.kind.embedding_norm  # pre-LN: a norm before the attention and before the MLP
    norms = (2, 1, 1, 1, 0, 0)[at] if pre_norm else (2, 2, 2, 2, 1, 1)[at]
    dropouts = shape.kind.hidden_dropouts if shape.hidden_dropout > 0 else 0
    return {"norms": norms, "dropouts": dropouts - (1 if dropouts == 2 and at >= order.index("mlp_in") else 0),
            "attention": (2, 2, 1, 0, 0, 0)[at], "mlp": int(at < order.index("mlp_out"))}


def block_parts(shape: Shape, block: Block, s: Settings, T: int, Tk: int, entry: str = "input") -> dict[str, int]:
    """One block that gradients reach, per example: what each part saves."""
    a, kind, live = s.act_bytes, shape.kind, alive(shape, entry)
    mlp = shape.activation_saves + (2 if kind.gated else 0)  # the gated product saves act(gate) and up
    trained = block.trained_roles - saved_elsewhere(shape, s)
    attention = attention_bytes(shape, s, T, Tk, masked=Tk > T) if live["attention"] else 0
    if live["attention"] == 1 and materialized(shape, s):  # queries need no gradient: k^T is not kept
        attention -= Tk * shape.heads * shape.head_dim * a
    return {
        "norms": live["norms"] * T * norm_bytes(shape, s, block.trained_norms),
        "attention": attention,
        "mlp": live["mlp"] * T * shape.intermediate * a * mlp,
        "dropout": live["dropouts"] * T * shape.hidden * s.mask_bytes,
        "projections": T * a * sum(role_widths(shape)[role] for role in trained),
        "method": T * method_bytes(shape, block, s),
    }


def outside_parts(anatomy: Anatomy, s: Settings, T: int) -> dict[str, int]:
    """Per example, what is saved outside the blocks: the embeddings' norm and dropout, the
    final norm, and the task's head (a causal LM's log-probabilities of every predicted token)."""
    shape, a = anatomy.shape, s.act_bytes
    kind, body_T = shape.kind, T + anatomy.prompt_tokens
    live = anatomy.live()
    embedding = 0
    if anatomy.input_trains:
        embedding += body_T * norm_bytes(shape, s, False) if kind.embedding_norm else 0
        embedding += body_T * shape.hidden * s.mask_bytes if kind.embedding_dropout and shape.hidden_dropout else 0
    final = body_T * norm_bytes(shape, s, anatomy.blocks[-1].trained_norms) if kind.final_norm and any(live) else 0
    if shape.causal:
        predicted = T - 1  # every position but the first predicts the next token
        head = predicted * shape.vocab * FLOAT32 + (predicted * shape.hidden * a if anatomy.head_input_trains else 0)
    else:  # the pooled vector: the classifier's input, and the dropout's mask if the body needs gradients
        head = shape.hidden * (a + (s.mask_bytes if any(live) else 0)) if anatomy.trainable else 0
    if anatomy.pooler_trains:  # the pooler's input is a view that keeps the last hidden states
        head += body_T * shape.hidden * a
    return {"embeddings": embedding, "final norm": final, "head": head}


def loss_workspace(anatomy: Anatomy, T: int) -> int:
    """Per example, the loss's transient buffers in backward beside the saved log-probabilities:
    their gradient and the logits' gradient, float32, (T - 1) x vocab each."""
    return 2 * (T - 1) * anatomy.shape.vocab * FLOAT32 if anatomy.shape.causal else 0


def activation_parts(anatomy: Anatomy, s: Settings) -> tuple[dict[str, int], int]:
    """Per example: saved bytes by part, over all blocks (with checkpointing, each live block's
    input instead, and one block recomputed in backward), and the largest block's bytes."""
    T = s.seq_len + anatomy.prompt_tokens
    Tk = T + anatomy.prefix_tokens
    shape = anatomy.shape
    blocks = [block_parts(shape, b, s, T, Tk, entry) for b, entry in zip(anatomy.blocks, anatomy.entries()) if entry]
    largest = max((sum(b.values()) for b in blocks), default=0)
    parts: dict[str, int] = {}
    if s.checkpointing:
        parts["block inputs"] = len(blocks) * T * shape.hidden * s.act_bytes
        parts["one block recomputed"] = largest
    else:
        for b in blocks:
            for name, value in b.items():
                parts[name] = parts.get(name, 0) + value
    parts.update(outside_parts(anatomy, s, s.seq_len))
    return parts, largest
