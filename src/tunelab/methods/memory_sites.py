"""What a method's module adds to a training step's memory, in the module's own words.

The memory planner (:mod:`tunelab.planner`) counts a method's parameters from the model; what
the method's modules save for backward, or how many positions they add to every sequence,
follows from their kind and a few sizes. Each :class:`~tunelab.methods.common.AdapterModule`
describes itself with ``memory_site()``, one of the small records below (or None: nothing
beyond its parameters), and the planner reads only that, never the module's class.

The kinds are the shapes of computation, not the methods: a method whose module computes a
low-rank update beside a projection describes itself as :class:`LowRankSite` whatever it is
called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from tunelab.methods.common import AdapterModule


@dataclass(frozen=True)
class LowRankSite:
    """``s B A x`` added to a projection's output, one (A, B) pair per adapted output slice:
    A's input and B's input (A x) are saved, and B's gradient flows back through A."""

    r: int
    """The rank of each slice's update."""
    in_features: int
    """The projection's input width: what A reads."""
    out_features: int
    """The projection's whole output width (slices left without an update included)."""
    slices: tuple[bool, ...] = (True,)
    """Which of the projection's equal output slices get an update (a fused q/k/v projection's
    three); ``(True,)`` for a plain projection."""
    dropout: float = 0.0
    """Dropout on A's input: each module then saves its own dropped-out copy and its mask (without
    it, A reads the projection's input, which modules on the same input share)."""
    magnitude: bool = False
    """A learned magnitude per output over the normalised weight (DoRA): its gradient reads two
    tensors of the output width (the base's and the update's outputs)."""


@dataclass(frozen=True)
class ScaleSite:
    """A learned vector multiplying a projection's input or output elementwise: the tensor it
    scales is saved for the vector's gradient."""

    features: int
    """The width of the tensor it scales (slices it leaves at scale 1 included)."""
    slices: tuple[bool, ...] = (True,)
    """Which of the projection's output slices are scaled (see :attr:`LowRankSite.slices`)."""


@dataclass(frozen=True)
class BottleneckSite:
    """``h + up(act(down(h)))`` on a projection's output ``h``: down's input, the activation's
    input and up's input are saved."""

    hidden: int
    """The width of ``h``: down's input and up's output."""
    size: int
    """The bottleneck's width: down's output, up's input."""


@dataclass(frozen=True)
class VirtualTokensSite:
    """Learned positions that every sequence gets besides its real tokens."""

    tokens: int
    """How many."""
    where: Literal["input", "keys"]
    """``input``: before the input embeddings, so the whole body sees ``tokens + T`` positions;
    ``keys``: before the keys and values of every block's attention, so only the attention reads
    ``tokens + T`` positions (and gradients reach every block)."""


MemorySite = LowRankSite | ScaleSite | BottleneckSite | VirtualTokensSite


def memory_site_of(module: nn.Module) -> MemorySite | None:
    """What ``module`` adds for the planner: its own description when it is a method's module,
    else None (a layer of the pretrained model, or of a method the planner counts by its
    parameters only)."""
    return module.memory_site() if isinstance(module, AdapterModule) else None
