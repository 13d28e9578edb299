"""ACLSum read two ways (tunelab.data.aclsum), on papers written here in its format; the catalog's
extraction of several pinned files from one archive; and (marked e2e) the real files, fetched
from the aclsum wheel on PyPI (5 MB, once per cache)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import datasets
import pytest

from tunelab import catalog, cli
from tunelab.config import DataConfig
from tunelab.data import aclsum
from tunelab.data.sources import EMBEDDED_READERS, load_data
from tunelab.errors import UserError
from tunelab.tasks.options import ClassificationTask, SummarizationTask

TOPICS = ["parsing trees treebank", "translation bilingual lexicon", "sentiment reviews polarity",
          "summarization abstracts highlights", "speech acoustic phonemes", "dialogue agents turns",
          "entities linking knowledge"]


def paper(number: int, topic: str) -> dict:
    words = topic.split()
    return {
        "id": f"P{number:02d}", "title": f"On {words[0]} ",
        "sentences": {"abstract": [f"We study {topic} , with ( new ) data .", "1"],
                      "introduction": [f"{words[1]} is n't solved ."], "conclusion": [f"We did {words[2]} 's work ."]},
        "summary": {"challenge": f"{words[0]} {words[1]} is hard.", "approach": f"They use {words[1]} {words[2]}.",
                    "outcome": f"Better {words[2]} {words[0]} "},  # one real summary lacks its full stop
    }


def write_split_files(folder: Path, counts=(3, 1, 1)) -> dict[str, list[dict]]:
    folder.mkdir(parents=True, exist_ok=True)
    papers, number = {}, 0
    for (split, name), count in zip(aclsum.SPLIT_FILES.items(), counts):
        papers[split] = [paper(number + i, TOPICS[number + i]) for i in range(count)]
        number += count
        (folder / name).write_text("\n".join(json.dumps(p) for p in papers[split]), encoding="utf-8")
    return papers


def test_detokenize_joins_punctuation_as_prose():
    assert aclsum.detokenize("a , b ( c ) ; it 's d , is n't it ? 5 % .") == "a, b (c); it's d, isn't it? 5%."


def test_summarization_rows_keep_the_split_and_join_the_three_aspects(tmp_path):
    write_split_files(tmp_path)
    splits = aclsum.read_aclsum(tmp_path)
    assert {name: len(split) for name, split in splits.items()} == {"train": 3, "validation": 1, "test": 1}
    row = splits["train"][0]
    assert row["abstract"] == "We study parsing trees treebank, with (new) data."  # the footnote mark "1" is gone
    assert row["document"] == row["abstract"] + "\n\ntrees isn't solved.\n\nWe did treebank's work."
    assert row["outcome"] == "Better treebank parsing."
    assert row["summary"] == " ".join(row[aspect] for aspect in aclsum.ASPECTS) != ""
    assert row["title"] == "On parsing"
    assert EMBEDDED_READERS["aclsum"] is aclsum.read_aclsum


def test_yes_no_pairs_are_own_summary_yes_and_nearest_other_no(tmp_path):
    rows = [aclsum.paper_row(p) for p in write_split_files(tmp_path, counts=(4, 1, 0))["train"]]
    rows[3]["approach"] = "They use trees treebank grammars."  # closest to paper 0's abstract of the others
    pairs = aclsum.yes_no_pairs(rows)
    assert len(pairs) == 2 * 3 * len(rows) and sum(p["label"] for p in pairs) == len(pairs) / 2
    own = {(r["id"], aspect): r[aspect] for r in rows for aspect in aclsum.ASPECTS}
    for yes, no in zip(pairs[::2], pairs[1::2]):
        assert yes["label"] == 1 and no["label"] == 0 and yes["passage"] == no["passage"]
        assert yes["claim"] == own[(yes["id"], yes["aspect"])] != no["claim"]
        assert no["claim"] in {own[(r["id"], yes["aspect"])] for r in rows}, "a no is another paper's summary"
    approach_no = next(p for p in pairs if p["id"] == "P00" and p["aspect"] == "approach" and p["label"] == 0)
    assert approach_no["claim"] == "They use trees treebank grammars."


def test_yes_no_reader_draws_every_no_from_its_own_split(tmp_path):
    papers = write_split_files(tmp_path, counts=(3, 2, 2))
    splits = aclsum.read_aclsum_yesno(tmp_path)
    assert {name: len(split) for name, split in splits.items()} == {"train": 18, "validation": 12, "test": 12}
    assert splits["train"].features["label"] == datasets.ClassLabel(names=["no", "yes"])
    for name, split in splits.items():
        summaries = {aclsum.paper_row(p)[a] for p in papers[name] for a in aclsum.ASPECTS}
        assert set(split["claim"]) <= summaries
    assert EMBEDDED_READERS["aclsum-yesno"] is aclsum.read_aclsum_yesno


def test_a_missing_split_file_is_named(tmp_path):
    write_split_files(tmp_path)
    (tmp_path / "val.jsonl").unlink()
    with pytest.raises(UserError, match="val.jsonl"):
        aclsum.read_aclsum(tmp_path)


def test_catalog_entries_are_pinned_to_one_wheel():
    summ, yesno = catalog.CATALOG["aclsum"], catalog.CATALOG["aclsum-yesno"]
    assert summ.kind == yesno.kind == "dataset" and not summ.sdist
    assert (summ.package, summ.version) == ("aclsum", "0.1.2")
    assert summ.archive_sha256.startswith("c75ffc48") and len(summ.archive_sha256) == 64
    members = [summ.member, *(path for path, _ in summ.more_members)]
    assert members == [f"aclsum/dataset/{name}" for name in aclsum.SPLIT_FILES.values()]
    assert all(len(sha) == 64 for sha in [summ.member_sha256, *(sha for _, sha in summ.more_members)])
    assert (yesno.package, yesno.version, yesno.archive_sha256, yesno.member, yesno.more_members) == (
        summ.package, summ.version, summ.archive_sha256, summ.member, summ.more_members)
    assert "MIT" in summ.description and "MIT" in yesno.description


def test_extract_takes_every_pinned_member_and_refuses_a_changed_one(tmp_path):
    archive = tmp_path / "pkg-1.0-py3-none-any.whl"
    files = {"pkg/data/train.jsonl": b"a\n", "pkg/data/val.jsonl": b"b\n", "pkg/other.py": b"c\n"}
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    artifact = catalog.Artifact(name="x", kind="dataset", description="", package="pkg", version="1.0",
                                archive_sha256="", member="pkg/data/train.jsonl",
                                member_sha256=sha["pkg/data/train.jsonl"],
                                more_members=(("pkg/data/val.jsonl", sha["pkg/data/val.jsonl"]),))
    catalog._extract(artifact, archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.jsonl", "val.jsonl"]
    assert (tmp_path / "out" / "val.jsonl").read_bytes() == b"b\n"
    changed = catalog.Artifact(**{**artifact.__dict__, "more_members": (("pkg/data/val.jsonl", "0" * 64),)})
    with pytest.raises(UserError, match="val.jsonl does not match"):
        catalog._extract(changed, archive, tmp_path / "again")


# --------------------------------------------------------------------------------------------
# the real embedded files


@pytest.mark.e2e
def test_embedded_aclsum_is_250_papers_in_its_own_split(capsys):
    folder = catalog.fetch("aclsum", quiet=True)
    artifact = catalog.CATALOG["aclsum"]
    pinned = {Path(path).name: sha for path, sha in [(artifact.member, artifact.member_sha256), *artifact.more_members]}
    assert {p.name: catalog.sha256_file(p) for p in folder.iterdir()} == pinned
    task = SummarizationTask(template="{abstract}\nTL;DR:")  # the rows are checked as a run checks them
    splits = load_data(DataConfig(name="aclsum"), task).splits
    assert {name: len(split) for name, split in splits.items()} == {"train": 100, "validation": 50, "test": 100}
    assert splits["train"].column_names == ["id", "title", "abstract", "document", "challenge", "approach",
                                            "outcome", "summary"]
    ids = [i for split in splits.values() for i in split["id"]]
    assert len(set(ids)) == 250, "no paper is in two splits"
    for split in splits.values():
        assert all(len(a) > 300 and " ," not in a for a in split["abstract"])
        assert all(s.count(". ") >= 2 for s in split["summary"]), "three aspect sentences"
    assert cli.main(["data"]) == 0
    listed = capsys.readouterr().out
    assert "aclsum " in listed and "aclsum-yesno" in listed


@pytest.mark.e2e
def test_embedded_aclsum_yesno_is_balanced_passage_claim_pairs():
    task = ClassificationTask()
    cfg = DataConfig(name="aclsum-yesno", text_column="passage", text_pair_column="claim")
    splits = load_data(cfg, task).splits
    assert {name: len(split) for name, split in splits.items()} == {"train": 600, "validation": 300, "test": 600}
    for split in splits.values():
        assert split.column_names == ["id", "aspect", "passage", "claim", "label"]
        assert split.features["label"].names == ["no", "yes"] and sum(split["label"]) == len(split) // 2
    train_claims = set(splits["train"]["claim"])
    assert not train_claims & set(splits["test"]["claim"]), "a test summary never appears in training"
