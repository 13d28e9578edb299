"""The export formats. Which of them a method has, and the one line that says why not, are the
method's own (its options' ``export_formats`` and ``export_refusal``), read before anything
is loaded: a refusal costs nothing and writes nothing."""

from __future__ import annotations

FORMATS = {
    "peft": "the adapter in PEFT's own format, for peft.PeftModel.from_pretrained(base, DIR)",
    "merged": "base + method folded into plain weights, for transformers' from_pretrained(DIR)",
}

