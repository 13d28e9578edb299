"""Which of the installed PEFT's tuners the ``peft`` method can inject, and the check of a
config's type and options against them. Apart from the bridge (tunelab.methods.peft_bridge) so
that the options class can check a config without importing the bridge, which imports it."""

from __future__ import annotations

import dataclasses
from typing import Any

from tunelab.errors import UserError

NOT_OPTIONS = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
               "inference_mode", "modules_to_save"}
"""Fields of a PEFT config that describe the saved adapter or PEFT's own wrapper, not the tuner:
tunelab sets them (the task head always trains, as with every method)."""
WRAPPER_ONLY = {"ADAPTION_PROMPT", "SHADOW", "XLORA", "CARTRIDGE"}
"""Types whose work is in PEFT's model wrapper, not in injected layers."""


def injectable_types() -> dict[str, tuple[type, type]]:
    """PEFT type -> (config class, tuner class) for every tuner that injects into layers
    (prompt learning and adaption prompts live in PeftModel's forward instead)."""
    from peft.config import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    found = {}
    for peft_type, tuner in PEFT_TYPE_TO_TUNER_MAPPING.items():
        config = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
        if config is None or issubclass(config, PromptLearningConfig) or str(peft_type.value) in WRAPPER_ONLY:
            continue
        found[str(peft_type.value)] = (config, tuner)
    return found


def check_options(peft_type: str, options: dict[str, Any]) -> str:
    """The type, upper-cased, once it and every option are PEFT's; else one line saying what
    this PEFT version offers."""
    import peft

    types = injectable_types()
    key = peft_type.upper()
    if key not in types:
        raise UserError(f"method.type {peft_type!r} is not a tuner this PEFT ({peft.__version__}) can inject; "
                        f"its types: {', '.join(sorted(types))}")
    config = types[key][0]
    known = [f.name for f in dataclasses.fields(config) if f.name not in NOT_OPTIONS]
    for option in options:
        if option not in known:
            raise UserError(f"method.{option}: not an option of PEFT's {config.__name__} ({peft.__version__}); its "
                            f"options: {', '.join(known)}")
    return key
