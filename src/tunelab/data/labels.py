"""Labels and columns of a labelled dataset: what every classifier (encoder, causal LM, LSTM) checks.

The label set comes from the train split, so a label seen only in validation or test is an
error there, never a silent new class; or it is fixed by ``data.labels`` (the run's labels,
when ``tunelab eval`` reads other data), and the data's labels map onto it by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from tunelab.config import DataConfig
from tunelab.errors import UserError


def label_key(value) -> str:
    """A raw label as text, the way label names are compared: 1, 1.0 (a CSV integer column
    with blanks reads as floats) and "1" are all "1"."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def label_name(value, feature) -> str:
    """The name of a raw label value: a ClassLabel feature's name for its id, else the value as text."""
    if isinstance(feature, datasets.ClassLabel) and isinstance(value, int) and 0 <= value < feature.num_classes:
        return feature.int2str(value)
    return label_key(value)


@dataclass
class LabelSet:
    """Label names in id order, and how raw label values in the data map to ids."""

    names: list[str]
    ids: dict[str, int]
    fixed: bool = False
    """The names come from ``data.labels`` (the model's), not from the train split."""

    def encode(self, value, split: str) -> int:
        key = label_key(value)
        if key not in self.ids:
            where = ("one of the model's labels (data.labels)" if self.fixed
                     else "in the label set (from the train split)")
            raise UserError(f"label {value!r} in the {split} split is not {where}: {', '.join(self.names)}")
        return self.ids[key]


def label_set(splits: datasets.DatasetDict, data: DataConfig) -> LabelSet:
    """``data.labels`` when given; else the labels of the train split (or its ClassLabel
    feature, which keeps their names and order)."""
    feature = splits["train"].features[data.label_column]
    if data.labels is not None:
        ids = {name: i for i, name in enumerate(data.labels)}
        if isinstance(feature, datasets.ClassLabel):  # the data's ids, mapped by their names
            ids = {str(j): ids[name] for j, name in enumerate(feature.names) if name in ids}
        return LabelSet(list(data.labels), ids, fixed=True)
    if isinstance(feature, datasets.ClassLabel):
        return LabelSet(list(feature.names), {str(i): i for i in range(feature.num_classes)})
    values = sorted({label_key(v) for v in splits["train"][data.label_column]})
    if len(values) < 2:
        raise UserError(f"the train split has {len(values)} distinct label(s) in {data.label_column!r}; "
                        "need at least 2")
    return LabelSet(values, {v: i for i, v in enumerate(values)})


def check_columns(splits: datasets.DatasetDict, data: DataConfig) -> None:
    wanted = [("data.text_column", data.text_column), ("data.label_column", data.label_column)]
    if data.text_pair_column:
        wanted.append(("data.text_pair_column", data.text_pair_column))
    for split_name, split in splits.items():
        for key, column in wanted:
            if column not in split.column_names:
                raise UserError(f"{key} {column!r} is not in the {split_name} split; "
                                f"columns: {', '.join(split.column_names)}")
