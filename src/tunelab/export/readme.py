"""The README.md of an export directory: what it holds and the lines that load it."""

from __future__ import annotations

POOLING_WORDS = {"mean": "the mean over the real tokens", "cls": "the first token's hidden state",
                 "last": "the last real token's hidden state"}


def readme(fmt: str, record: dict) -> str:
    """``record``: what export.json holds."""
    title = f"# {record['method']} run exported as {fmt}\n\n"
    origin = (f"From the tunelab run `{record['run_dir']}` ({record['task']} on `{record['base_model']}`), "
              f"written by `tunelab export --format {fmt}`. export.json records the versions and the check: "
              f"the exported model, loaded as below, reproduced the run's outputs on a probe batch "
              f"(largest difference {record['check']['max_abs_difference']:.2g}). `DIR` below is this folder.\n\n")
    body = peft_readme(record) if fmt == "peft" else merged_readme(record)
    return title + origin + body


def peft_readme(record: dict) -> str:
    base = record["base_model_path"]
    if record["task"] != "classification":
        load = ("```python\nfrom peft import PeftModel\n"
                "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f"base = AutoModelForCausalLM.from_pretrained({base!r})\nmodel = PeftModel.from_pretrained(base, DIR)\n"
                f"tokenizer = AutoTokenizer.from_pretrained({base!r})\n```\n")
    else:
        head = record["head"]
        load = ("The base is tunelab's classifier (backbone, pooling, dropout, one linear layer), which no "
                "transformers class computes, so it is built first; PEFT restores the trained head from "
                "`modules_to_save`.\n\n```python\nfrom peft import PeftModel\nfrom transformers import AutoModel\n"
                "from tunelab.tasks.classification import SequenceClassifier\n\n"
                f"base = SequenceClassifier(AutoModel.from_pretrained({base!r}), num_labels={head['num_labels']}, "
                f"pooling={head['pooling']!r})\nmodel = PeftModel.from_pretrained(base, DIR).eval()\n"
                f"logits = model(input_ids=ids, attention_mask=mask)  # labels in order: {head['labels']}\n```\n")
    notes = list(record.get("notes", []))
    if record.get("virtual_positions_in_outputs"):
        n = record["virtual_positions_in_outputs"]
        notes.append(f"PEFT's prompt tuning returns logits for the {n} virtual positions too: "
                     f"`logits[:, {n}:]` are the run's.")
    return load + "".join(f"\n{note}\n" for note in notes)


def merged_readme(record: dict) -> str:
    if record["task"] != "classification":
        return ("A plain transformers checkpoint (safetensors) with its tokenizer:\n\n```python\n"
                "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                "model = AutoModelForCausalLM.from_pretrained(DIR)\n"
                "tokenizer = AutoTokenizer.from_pretrained(DIR)\n```\n")
    head, remote = record["head"], record.get("trust_remote_code", False)
    flag = ", trust_remote_code=True" if remote else ""
    code = ("```python\nfrom transformers import pipeline\n\n"
            f"classify = pipeline(\"text-classification\", model=DIR, top_k=None{flag})\n"
            "scores = classify([\"a gripping film\"])  # for each text, every label with its probability\n```\n")
    intro = (f"A transformers sequence classifier (safetensors) with its tokenizer; config.json names its labels "
             f"({', '.join(head['labels'])}). `pipeline` classifies texts:\n\n")
    if not remote:
        return intro + code + ("\nIt is the architecture's own classifier (`task.head: auto`): "
                               "`AutoModelForSequenceClassification.from_pretrained(DIR)` is the model.\n")
    return intro + code + (
        f"\nThe head is tunelab's: the body's output pooled ({POOLING_WORDS[head['pooling']]}), then one linear "
        "layer. No transformers class computes it, so its code comes with it: `pooled_head.py` in this folder "
        "(torch and transformers only; read it), named in config.json's `auto_map`. `trust_remote_code=True` runs "
        "that file from this folder (transformers copies it into its modules cache; nothing is downloaded). "
        "Without the flag transformers builds its own classifier for the architecture, with a new random head, "
        "and warns that the classifier's weights are missing. transformers also logs that the class \"is not "
        "supported for text-classification\": it checks the class's name against a list of its own; the pipeline "
        "works. `AutoModelForSequenceClassification.from_pretrained(DIR, trust_remote_code=True)` is the model; "
        "`AutoModel.from_pretrained(DIR)` the body alone.\n")
