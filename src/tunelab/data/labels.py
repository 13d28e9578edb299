"""Labels and columns of a labelled dataset: what every classifier (encoder, causal LM, LSTM) checks.

The label set comes from the train split, so a label seen only in validation or test is an
error there, never a silent new class.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from tunelab.config import DataConfig
from tunelab.errors import UserError


@dataclass
class LabelSet:
    """Label names in id order, and how raw label values in the data map to ids."""

    names: list[str]
    ids: dict[str, int]

    def encode(self, value, split: str) -> int:
        key = str(value)
        if key not in self.ids:
            raise UserError(f"label {value!r} in the {split} split is not in the label set: {', '.join(self.ids)}")
        return self.ids[key]


def label_set(splits: datasets.DatasetDict, data: DataConfig) -> LabelSet:
    """Labels come from the train split (or the ClassLabel feature, which keeps their names)."""
    feature = splits["train"].features[data.label_column]
    if isinstance(feature, datasets.ClassLabel):
        return LabelSet(list(feature.names), {str(i): i for i in range(feature.num_classes)})
    values = sorted({str(v) for v in splits["train"][data.label_column]})
    if len(values) < 2:
        raise UserError(f"the train split has {len(values)} distinct label(s) in {data.label_column!r}; need at least 2")
    return LabelSet(values, {v: i for i, v in enumerate(values)})


def check_columns(splits: datasets.DatasetDict, data: DataConfig) -> None:
    wanted = [("data.text_column", data.text_column), ("data.label_column", data.label_column)]
    if data.text_pair_column:
        wanted.append(("data.text_pair_column", data.text_pair_column))
    for split_name, split in splits.items():
        for key, column in wanted:
            if column not in split.column_names:
                raise UserError(f"{key} {column!r} is not in the {split_name} split; columns: {', '.join(split.column_names)}")
