"""Which method can be exported in which format, and the one line that says why not.

Read before anything is loaded (no torch here), so a refusal costs nothing and writes nothing.
"""

from __future__ import annotations

FORMATS = {
    "peft": "the adapter in PEFT's own format, for peft.PeftModel.from_pretrained(base, DIR)",
    "merged": "base + method folded into plain weights, for transformers' from_pretrained(DIR)",
}

PEFT_METHODS = ("lora", "ia3", "prompt", "prefix")
"""Methods PEFT has a format of its own for."""
MERGED_METHODS = ("lora", "ia3", "bitfit", "full", "head")
"""Methods whose trained state is, or folds into, the weights of the original architecture."""
VIRTUAL_TOKEN_METHODS = ("prompt", "prefix")

ADAPTER = ("tunelab's bottleneck adapters compute h + up(act(down(h))), which is nonlinear: no weights of the "
           "original architecture compute it, so they cannot be merged, and PEFT has no format for them; "
           "use the run directory itself with tunelab eval, predict or generate")
LSTM = ("method lstm is tunelab's own LSTM baseline, not a pretrained transformers model: neither PEFT nor "
        "transformers has a format for it; its checkpoint/ in the run directory is the model (tunelab eval, predict)")
NONE = "method none trained nothing: the base model ({model}) is the result as it is; use it directly"


def refusal(method: str, fmt: str, causal: bool, model: str) -> str | None:
    """Why ``method`` cannot be exported as ``fmt`` (None: it can). ``causal``: the run's task
    runs on a causal LM (else it is a classification run: backbone + tunelab's head)."""
    if method == "adapter":
        return ADAPTER
    if method == "lstm":
        return LSTM
    if method == "none":
        return NONE.format(model=model)
    if method not in PEFT_METHODS + MERGED_METHODS:
        return f"method {method} has no export; exportable methods: {', '.join(dict.fromkeys(PEFT_METHODS + MERGED_METHODS))}"
    if method in VIRTUAL_TOKEN_METHODS and not causal:
        # PEFT's prompt learning hands the virtual positions to the model's pooling (its
        # sequence-classification and feature-extraction models keep them); tunelab's head pools
        # the real tokens only, so a PEFT copy of this run would compute something else.
        return (f"a classification run's {method} tuning cannot be exported: its virtual tokens are inputs, not "
                "weights, so they cannot be merged, and PEFT's models pool over the virtual positions where "
                "tunelab's head pools the real tokens only; use the run directory with tunelab eval or predict")
    if fmt == "peft" and method not in PEFT_METHODS:
        return (f"PEFT has no format for method {method} ({PEFT_REASONS[method]}); export it with --format merged, "
                "which writes the trained weights into a plain transformers checkpoint")
    if fmt == "merged" and method not in MERGED_METHODS:
        return (f"{method} tuning cannot be merged: its virtual tokens are extra inputs to every call, not weights "
                "of the model; export it with --format peft")
    return None


PEFT_REASONS = {
    "bitfit": "BitFit trains the model's own biases, which no PEFT adapter holds",
    "full": "a full fine-tune changes every weight; it is a whole model, not an adapter",
    "head": "head-only tuning trains the task head and no adapter",
}
