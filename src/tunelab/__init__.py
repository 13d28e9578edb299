"""tunelab: train, evaluate and compare ways of adapting a pretrained language model.

From Python (tunelab.api): ``tunelab.train``, ``tunelab.compare``, ``tunelab.sweep``,
``tunelab.load`` and ``tunelab.Config``. They are imported on first use, so ``import tunelab``
(and the ``tunelab`` command) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.version import __version__ as __version__

__all__ = ["Config", "Report", "Summary", "Trained", "UserError", "compare", "load", "sweep", "train"]

if TYPE_CHECKING:
    from tunelab.api import Config, Report, Trained, compare, load, sweep, train
    from tunelab.errors import UserError
    from tunelab.summary import Summary


def __getattr__(name: str) -> Any:
    if name == "UserError":
        from tunelab.errors import UserError

        return UserError
    if name in __all__:
        from tunelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'tunelab' has no attribute {name!r}")
