"""Methods and tasks from outside tunelab, without touching its files.

A plugin is a Python module that registers its parts when imported, e.g.::

    from tunelab.methods import METHODS
    from tunelab.methods.options import MethodOptions

    class ScaleMethod(MethodOptions):
        name: Literal["scale"] = "scale"

    METHODS.register(ScaleMethod, module=__name__)   # this module also defines apply(...)

``tunelab`` imports every module named in the ``TUNELAB_PLUGINS`` environment variable
(comma-separated) and every entry point of the group ``tunelab.plugins`` before it reads a
command line, so the plugin's names work in configs, ``--method``, ``compare`` (whose runs are
child processes that inherit the variable), ``params`` and the report.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from tunelab.errors import UserError

ENV = "TUNELAB_PLUGINS"
GROUP = "tunelab.plugins"


def load_plugins() -> list[str]:
    """Import the plugin modules; returns their names. A module that cannot be imported is one
    clear error naming it."""
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    loaded = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"{ENV} names {name!r}, which cannot be imported: {exc}") from None
        loaded.append(name)
    for point in entry_points(group=GROUP):
        point.load()
        loaded.append(point.value)
    return loaded
