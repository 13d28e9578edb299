"""The README.md of an export directory: what it holds and the lines that load it."""

from __future__ import annotations

POOLING = {
    "mean": "pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean over the real tokens",
    "cls": "pooled = hidden[:, 0]  # the first token",
    "last": ("positions = torch.arange(mask.shape[1])\n"
             "pooled = hidden[torch.arange(len(hidden)), (mask[..., 0] * positions).argmax(1)]  # the last real token"),
}


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
    head = record["head"]
    return ("The backbone as a plain transformers checkpoint (safetensors) with its tokenizer, and tunelab's "
            "classification head beside it: `head.safetensors` (weight, bias) and `head.json` (pooling, labels). "
            "No transformers `...ForSequenceClassification` computes this head (BERT's adds a dense + tanh "
            "pooler, GPT-2's and Llama's have no bias), so do not load the folder with one: it would get a new, "
            f"random classifier. Apply the head yourself:\n\n```python\nimport torch\n"
            "from safetensors.torch import load_file\nfrom transformers import AutoModel, AutoTokenizer\n\n"
            "body = AutoModel.from_pretrained(DIR).eval()\ntokenizer = AutoTokenizer.from_pretrained(DIR)\n"
            "head = load_file(f\"{DIR}/head.safetensors\")\n\n"
            "batch = tokenizer([\"a gripping film\"], return_tensors=\"pt\", padding=True)\n"
            "with torch.no_grad():\n    hidden = body(**batch).last_hidden_state  # (B, T, H)\n"
            "mask = batch[\"attention_mask\"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)\n"
            f"{POOLING[head['pooling']]}\n"
            "logits = pooled @ head[\"weight\"].T + head[\"bias\"]  # (B, labels)\n"
            f"labels = {head['labels']!r}\n```\n")
