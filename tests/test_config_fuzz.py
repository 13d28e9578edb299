"""The config and command-line boundary under random input (hypothesis).

Every field of every options class the registries know (each method's, each task's, and the
fixed sections) gets dotted overrides as the command line would pass them: out-of-range and
wrong-type values, non-finite numbers, empty and very long text, text with newlines. Each one
is either a valid config or a ``UserError`` of one line that names the key; nothing else ever
escapes (a traceback is a bug).
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from tunelab.config import DataConfig, EvalConfig, ModelConfig, OutputConfig, TrainConfig, load_config, parse_overrides
from tunelab.errors import UserError
from tunelab.methods import METHODS
from tunelab.tasks import TASKS

FIXED = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig, "output": OutputConfig}


def fields() -> list[tuple[str, str | None, str]]:
    """(section, the name that picks its options class or None, field) for every field."""
    found = [(section, None, name) for section, cls in FIXED.items() for name in cls.model_fields]
    for section, registry in (("method", METHODS), ("task", TASKS)):
        for picked in registry.names():
            found += [(section, picked, name) for name in registry.options(picked).model_fields if name != "name"]
    return found


FIELDS = fields()

text = st.one_of(
    st.sampled_from(["", " ", "inf", "-inf", "nan", "NaN", "1e999", "-1", "0", "-0.5", "1e-400", "true", "null",
                     "[]", "{}", "[1, 2]", "{a: 1}", "yes", "!!python/object:os.system", "x" * 10_000,
                     "line one\nline two", "'quoted'", "9" * 40, "0x1F", "1_000", "🙂", "\x00", "a: b: c"]),
    st.text(max_size=30),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIELDS), text)
def test_every_override_is_valid_or_one_line_naming_the_key(field, value):
    section, picked, name = field
    argv = [f"--{section}.{name}", value]
    if picked is not None:
        argv = [f"--{section}.name", picked, *argv]
    if section == "method" and picked == "lstm":
        argv += ["--model.name", "lstm"]
    try:
        cfg = load_config(None, parse_overrides(argv))
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and message, (argv, message)
        # the key, dotted, or (a check across keys of one section) the section and the key's name
        assert f"{section}.{name}" in message or (message.startswith(f"{section}") and name in message), \
            (argv, message)
        return
    assert isinstance(cfg, BaseModel)
    assert all(math.isfinite(v) for v in floats(cfg.model_dump())), (argv, "a non-finite number was accepted")


def floats(tree) -> list[float]:
    if isinstance(tree, dict):
        return [f for value in tree.values() for f in floats(value)]
    if isinstance(tree, list):
        return [f for value in tree for f in floats(value)]
    return [tree] if isinstance(tree, float) else []


def test_the_fuzz_covers_every_registered_options_class():
    covered = {(s, p) for s, p, _ in FIELDS}
    with_fields = {m for m in METHODS.names() if set(METHODS.options(m).model_fields) - {"name"}}
    assert {("method", m) for m in with_fields} <= covered and {("task", t) for t in TASKS.names()} <= covered
    assert len(FIELDS) > 80
