"""A registry of named, pluggable parts: name -> (options class, implementing module).

tunelab has two: the methods (:mod:`tunelab.methods`) and the tasks (:mod:`tunelab.tasks`).
A name is the ``name`` default of its options class, which is also the YAML ``<section>.name``.
The module is imported only when the part is used, so reading a config or listing names never
imports torch (the comparison's own process stays light), and the config's section is
validated against whichever options class its name picks, including parts registered later
by a plugin.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pydantic_core import PydanticCustomError

Options = TypeVar("Options", bound=BaseModel)


@dataclass(frozen=True)
class Entry(Generic[Options]):
    options: type[Options]
    module: str
    """Dotted name of the module that implements the part."""

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


@dataclass
class Registry(Generic[Options]):
    kind: str
    """What the parts are, in messages and as the config section: ``method`` or ``task``."""
    package: str
    """Where a part's module is by default: ``<package>.<name>``."""
    default: str
    """The name a config section without ``name`` means."""
    entries: dict[str, Entry[Options]] = field(default_factory=dict)

    def register(self, options: type[Options], module: str | None = None) -> None:
        name = options.model_fields["name"].default
        self.entries[name] = Entry(options, module or f"{self.package}.{name}")

    def names(self) -> list[str]:
        return list(self.entries)

    def options(self, name: str) -> type[Options]:
        return self.entries[name].options

    def load(self, name: str) -> ModuleType:
        return self.entries[name].load()

    def parse(self, value: Any) -> Options:
        """A config section (a mapping, or options already made) as the options of the part it
        names. Used as a pydantic before-validator: the options class's own errors keep their
        key path (``method.r``), and an unknown name is one error that lists the known ones."""
        if isinstance(value, BaseModel):
            return value
        if not isinstance(value, dict):
            raise PydanticCustomError("not_a_section", "must be a mapping of keys, e.g. name: {default}",
                                      {"default": self.default})
        name = value.get("name", self.default)
        if name not in self.entries:
            raise PydanticCustomError("unknown_name", "unknown {kind} '{name}'; known: {known}",
                                      {"kind": self.kind, "name": name, "known": ", ".join(self.entries)})
        return self.entries[name].options.model_validate({"name": name, **value})
