"""Label placement for the Pareto plot: no two label boxes overlap, however crowded the points,
checked on the boxes the placement returns (no image needed)."""

from __future__ import annotations

import itertools
import random

import pytest

from tunelab.report.labels import Box, columns, place_labels, spread_apart

SIZE = (0.12, 0.035)
"""A label of about ten characters at 8 pt, in axes coordinates."""


def assert_apart(boxes: list[Box]) -> None:
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), (i, a, j, b)


def test_nine_crowded_points_get_labels_that_do_not_overlap():
    # nine methods of nearly the same accuracy and nearly the same size: one crowd
    points = [(0.40 + 0.01 * i, 0.50 + 0.001 * ((i * 7) % 9)) for i in range(9)]
    boxes = place_labels(points, [SIZE] * 9)
    assert_apart(boxes)
    assert all(b.x1 - b.x0 == pytest.approx(SIZE[0]) and b.height == pytest.approx(SIZE[1]) for b in boxes)
    assert all(0 <= b.y0 and b.y1 <= 1 for b in boxes)  # there is room: all inside the plot
    # spread around the crowd (not only upwards), in the order of the points' heights
    centres = [b.centre_y for b in boxes]
    assert min(centres) < 0.50 < max(centres)
    by_point = sorted(range(9), key=lambda i: points[i][1])
    assert [centres[i] for i in by_point] == sorted(centres)
    assert place_labels(points, [SIZE] * 9) == boxes  # deterministic


def test_a_crowd_at_the_top_is_pushed_down_inside_the_plot():
    points = [(0.3, 0.99 - 0.0001 * i) for i in range(9)]
    boxes = place_labels(points, [SIZE] * 9)
    assert_apart(boxes)
    assert all(0 <= b.y0 and b.y1 <= 1 for b in boxes)


def test_random_crowds_never_overlap():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 14)
        points = [(rng.uniform(0, 1), rng.uniform(0.45, 0.55)) for _ in range(n)]
        sizes = [(rng.uniform(0.03, 0.2), rng.uniform(0.02, 0.05)) for _ in range(n)]
        assert_apart(place_labels(points, sizes))


def test_too_many_labels_for_the_height_still_do_not_overlap():
    boxes = place_labels([(0.5, 0.5)] * 40, [SIZE] * 40)  # 40 × 0.041 > 1: some go above the plot
    assert_apart(boxes)
    assert boxes[0].y0 >= 0


def test_a_lone_label_stays_beside_its_point():
    (box,) = place_labels([(0.2, 0.6)], [SIZE])
    assert box.centre_y == pytest.approx(0.6) and box.x0 > 0.2
    (box,) = place_labels([(0.95, 0.6)], [SIZE])  # it would leave the plot on the right: left of the point
    assert box.x1 < 0.95 and box.centre_y == pytest.approx(0.6)


def test_labels_side_by_side_keep_their_heights():
    # same height, far apart horizontally: no box overlaps, so nothing moves
    boxes = place_labels([(0.05, 0.5), (0.45, 0.5)], [SIZE, SIZE])
    assert [b.centre_y for b in boxes] == pytest.approx([0.5, 0.5])


def test_columns_join_overlapping_extents_transitively():
    assert columns([(0.0, 0.2), (0.5, 0.6), (0.15, 0.3), (0.25, 0.4), (0.7, 0.8)]) == [[0, 2, 3], [1], [4]]


def test_spread_apart_by_hand():
    # two at 0.5, pitch 0.1: centred on their mean, 0.45 and 0.55
    assert spread_apart([0.5, 0.5], 0.1, 0.0, 1.0) == pytest.approx([0.45, 0.55])
    # already apart: unchanged
    assert spread_apart([0.2, 0.8], 0.1, 0.0, 1.0) == pytest.approx([0.2, 0.8])
    # a cluster merged with its neighbour below: 0.3, 0.34, 0.36 -> mean 1/3, pitch 0.1
    assert spread_apart([0.34, 0.3, 0.36], 0.1, 0.0, 1.0) == pytest.approx([1 / 3, 1 / 3 - 0.1, 1 / 3 + 0.1])
    # against the bottom: shifted up to ``low``
    assert spread_apart([0.0, 0.0], 0.1, 0.05, 0.95) == pytest.approx([0.05, 0.15])
