"""Overrides as the command line and the Python API give them (``--method.r 16``,
``{"method.r": 16}``), turned into the nested mapping a config is merged with."""

from __future__ import annotations

from typing import Any

import yaml

from tunelab.errors import UserError


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


def dotted_overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    """Overrides as Python gives them (``{"train.lr": 1e-3}``; nested mappings too) or as the command
    line does (``["--train.lr", "1e-3"]``), as one nested mapping."""
    if overrides is None:
        return {}
    if isinstance(overrides, (list, tuple)):
        return parse_overrides(list(overrides))
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        if not parents and not isinstance(value, dict):
            raise UserError(f"override {key!r} must name a section and a key, e.g. method.r")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = deep_merge(node.get(leaf, {}), value) if isinstance(value, dict) else value
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


def deep_merge(base: dict[str, Any], update: dict[str, Any], replace_other_kinds: bool = False) -> dict[str, Any]:
    """``update`` over ``base``, mapping by mapping. With ``replace_other_kinds`` a mapping that
    names another kind (its ``name`` differs: an SFT objective over the shared DPO one in a
    comparison) replaces the other whole, rather than keeping the other kind's keys."""
    out = dict(base)
    for key, value in update.items():
        other = out.get(key)
        same_kind = not replace_other_kinds or not isinstance(value, dict) or not isinstance(other, dict) or \
            value.get("name", other.get("name")) == other.get("name")
        if isinstance(value, dict) and isinstance(other, dict) and same_kind:
            out[key] = deep_merge(other, value, replace_other_kinds)
        else:
            out[key] = value
    return out
