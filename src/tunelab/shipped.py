"""The configs that ship inside the package, found by the name they have in a clone.

A clone reaches them as ``configs/<model>/<name>.yaml`` (a link at the repository root to
``src/tunelab/configs``); an installed wheel has no repository root, so a relative path that
does not exist where the command runs is looked up among the shipped configs instead: the same
``--config configs/minilm-l6/rt-snippets-lora.yaml`` works from any directory.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

CONFIGS = Path(__file__).resolve().parent / "configs"
"""The shipped YAML configs, ``<model>/<task>-<method>.yaml``."""


def resolve_config(path: str | Path) -> Path:
    """``path`` itself when it exists (or is absolute); else the shipped config of that relative
    name, with or without a leading ``configs/``, when there is one; else ``path`` unchanged, for
    the caller's own "not found" error."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    parts = PurePosixPath(given.as_posix()).parts
    if parts[:1] == ("configs",):
        parts = parts[1:]
    if not parts or ".." in parts:
        return given
    shipped = CONFIGS.joinpath(*parts)
    return shipped if shipped.is_file() else given
