"""Shared fixtures: tiny models built in the test (BERT, Llama, GPT-2) and tiny local data.

Nothing here touches the network; the end-to-end tests on the real embedded models are the
ones marked ``e2e``.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

# Before transformers / huggingface_hub are imported: they read these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizerFast,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = ("good great fine bad awful poor movie film plot actor story dull fun boring superb weak "
         "the a is was and but not very").split()


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    return BertModel(cfg).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def tiny_models():
    return {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}


def _save_tiny_bert(folder: Path, dropout: float) -> Path:
    """A tiny BERT with a word-level vocabulary, saved like a hub model folder."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"))  # transformers 5: `vocab`, not `vocab_file`
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), dropout=0.1)


@pytest.fixture(scope="session")
def tiny_bert_no_dropout_dir(tmp_path_factory) -> Path:
    """Without dropout, so differently shaped micro-batches see the same function."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), dropout=0.0)


def write_sentiment_csv(path: Path, n: int = 60, seed: int = 0) -> Path:
    """Short synthetic reviews whose label follows the sentiment words they contain."""
    rng = random.Random(seed)
    pos, neg = ["good", "great", "fun", "superb"], ["bad", "awful", "dull", "boring"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        for i in range(n):
            label = i % 2
            word = rng.choice(pos if label else neg)
            filler = rng.sample(["the", "movie", "plot", "was", "very", "film", "story"], 3)
            writer.writerow([" ".join([*filler, word]), "positive" if label else "negative"])
    return path


@pytest.fixture
def sentiment_csv(tmp_path) -> Path:
    return write_sentiment_csv(tmp_path / "reviews.csv")


@pytest.fixture
def tiny_run_config(tiny_bert_dir, sentiment_csv, tmp_path):
    """Overrides for a seconds-long `tunelab train` on the tiny BERT and the tiny CSV."""
    return {
        "model": {"name": str(tiny_bert_dir)},
        "data": {"name": str(sentiment_csv)},
        "task": {"max_length": 32},  # the tiny BERT has 64 positions
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-2},
        "eval": {"batch_size": 16},
        "output": {"dir": str(tmp_path / "run")},
    }


def cli_args(tree: dict, prefix: str = "") -> list[str]:
    """``{"method": {"r": 4}}`` -> ``["--method.r", "4"]``: config overrides as the CLI takes them."""
    args: list[str] = []
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            args += cli_args(value, dotted)
        else:
            text = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
            args += [f"--{dotted}", text]
    return args


def _snapshot(*roots: Path) -> set[Path]:
    found: set[Path] = set()
    for root in roots:
        if root.exists():
            found.add(root)
            found.update(root.rglob("*"))
    return found


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Work inside tmp_path with a private embedded-artifact cache, and the hub offline.

    conftest sets HF_HUB_OFFLINE before anything imports huggingface_hub; the patches keep
    these tests fast even if some earlier import read the environment first (a hub lookup
    retries for ~25 s with no network).
    """
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture
def run_cli(isolated, capsys, tiny_bert_dir):
    """Run ``main(argv)`` in-process and check that it wrote nothing anywhere it can be seen."""
    from tunelab.cli import main

    def run(argv: list[str]) -> tuple[int, str, str]:
        before = _snapshot(isolated, tiny_bert_dir)
        capsys.readouterr()  # drop anything fixtures printed (e.g. save_pretrained progress bars)
        rc = main(argv)
        out, err = capsys.readouterr()
        after = _snapshot(isolated, tiny_bert_dir)
        assert after == before, f"bad input left files behind: {sorted(map(str, after - before))}"
        assert not (isolated / "cache").exists()
        assert not (isolated / "runs").exists()
        return rc, out, err

    return run


CAUSAL_VOCAB = ["<pad>", "<unk>", "<eos>", *WORDS, "positive", "negative", "yes", "no", "Review", "Sentiment",
                "Question", "Answer", "TL", "DR", ":", ";", "?", ".", "cat", "sat", "on", "mat", "dog", "ran"]


def save_tiny_causal(folder: Path, seed: int = 0) -> Path:
    """A tiny Llama with a word-level tokenizer (<pad>, <unk>, <eos>), saved like a hub model
    folder so `tunelab train --model.name DIR` loads it."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(CAUSAL_VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<eos>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(CAUSAL_VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=32, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=2, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory) -> Path:
    return save_tiny_causal(tmp_path_factory.mktemp("tiny-causal"))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rerecord_checksums(run_dir: Path) -> None:
    """After a test changes a run's checkpoint or vocabulary on purpose (to see that a command
    uses it), record the new files' sha256 where the run keeps them, as a fresh run would."""
    from tunelab import runs

    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    for name in runs.checksums(run_dir):
        sha = runs.sha256_file(run_dir / name)
        if name.startswith(runs.CHECKPOINT + "/"):
            meta_file = run_dir / runs.CHECKPOINT / "meta.json"
            meta = json.loads(meta_file.read_text())
            meta["sha256"][name.split("/", 1)[1]] = sha
            meta_file.write_text(json.dumps(meta))
        else:
            known = json.loads((run_dir / runs.CHECKSUMS).read_text())
            (run_dir / runs.CHECKSUMS).write_text(json.dumps({**known, name: sha}))
        if summary is not None and name in (summary.get("checksums") or {}):
            summary["checksums"][name] = sha
    if summary is not None:
        summary_file.write_text(json.dumps(summary))


PEFT_TUNERS = [{"name": "peft", "type": "VERA", "r": 4}, {"name": "peft", "type": "LOHA", "r": 2},
               {"name": "peft", "type": "LOKR", "r": 2}, {"name": "peft", "type": "OFT", "r": 0, "oft_block_size": 4},
               {"name": "peft", "type": "BOFT", "boft_block_size": 4}, {"name": "peft", "type": "HRA", "r": 2},
               {"name": "peft", "type": "FOURIERFT", "n_frequency": 8, "scaling": 10.0},
               {"name": "peft", "type": "LN_TUNING", "target_modules": r".*(LayerNorm|norm)"},
               {"name": "peft", "type": "ADALORA", "init_r": 4, "target_r": 2, "total_step": 10}]
"""The PEFT tuners tunelab lists as supported through its bridge (README, Methods), with options
that fit the tiny test models (hidden size 16)."""
