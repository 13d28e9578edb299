"""Where a plot's point labels go: beside their points, pushed apart vertically where they would
overlap, with no overlap left. Positions are axes coordinates (0..1 across the plot area), and
nothing here needs matplotlib: the plot measures the labels, this places them, a test checks it.

Deterministic: labels whose boxes share some horizontal extent (transitively) form a column;
in each column the labels are sorted by their point's height, overlapping neighbours merge into
clusters centred on the mean of their points (so a crowd spreads around where it is, not only
upwards), and the result is shifted inside the plot where there is room.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

OFFSET = 0.025
"""Horizontal space between a point and its label."""
GAP = 0.006
"""Least vertical space between two labels of one column."""


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def centre_y(self) -> float:
        return (self.y0 + self.y1) / 2

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    def overlaps(self, other: "Box") -> bool:
        return self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1


def place_labels(points: list[tuple[float, float]], sizes: list[tuple[float, float]],
                 offset: float = OFFSET, gap: float = GAP) -> list[Box]:
    """The box of each label: ``points`` are (x, y) and ``sizes`` (width, height) of the labels,
    all in axes coordinates. A label sits right of its point, or left where it would leave the
    plot; its height is moved only as far as needed to keep clear of the others."""
    spans = [side(x, width, offset) for (x, _), (width, _) in zip(points, sizes)]
    centres = [y for _, y in points]
    for column in columns(spans):
        pitch = max(sizes[i][1] for i in column) + gap
        half = pitch / 2
        for i, y in zip(column, spread_apart([points[i][1] for i in column], pitch, half, 1 - half)):
            centres[i] = y
    return [Box(x0, y - h / 2, x1, y + h / 2) for (x0, x1), y, (_, h) in zip(spans, centres, sizes)]


def side(x: float, width: float, offset: float) -> tuple[float, float]:
    """The label's horizontal extent: right of the point, else left of it."""
    return (x + offset, x + offset + width) if x + offset + width <= 1 else (x - offset - width, x - offset)


def columns(spans: list[tuple[float, float]]) -> list[list[int]]:
    """Indices of the labels grouped where their horizontal extents overlap, directly or
    through others; labels of different groups cannot overlap, whatever their heights."""
    groups: list[list[int]] = []
    right = float("-inf")
    for i in sorted(range(len(spans)), key=lambda i: (spans[i][0], i)):
        if groups and spans[i][0] < right:
            groups[-1].append(i)
            right = max(right, spans[i][1])
        else:
            groups.append([i])
            right = spans[i][1]
    return groups


def spread_apart(desired: list[float], pitch: float, low: float, high: float) -> list[float]:
    """Positions as near ``desired`` as they can be with at least ``pitch`` between any two,
    inside [low, high] where there is room (above ``high`` where there is not)."""
    order = sorted(range(len(desired)), key=lambda i: (desired[i], i))
    clusters: list[tuple[float, list[int]]] = []  # (lowest position, members bottom up)
    for i in order:
        clusters.append((desired[i], [i]))
        while len(clusters) > 1 and clusters[-2][0] + len(clusters[-2][1]) * pitch > clusters[-1][0]:
            members = clusters[-2][1] + clusters.pop()[1]
            centre = statistics.fmean(desired[j] for j in members)
            clusters[-1] = (centre - (len(members) - 1) * pitch / 2, members)
    ys = [start + k * pitch for start, members in clusters for k in range(len(members))]
    # Down from the top, then up from the bottom: each pass keeps every gap at least ``pitch``.
    for k in reversed(range(len(ys))):
        ys[k] = min(ys[k], high if k == len(ys) - 1 else ys[k + 1] - pitch)
    for k in range(len(ys)):
        ys[k] = max(ys[k], low if k == 0 else ys[k - 1] + pitch)
    placed = [0.0] * len(desired)
    for i, y in zip((i for _, members in clusters for i in members), ys):
        placed[i] = y
    return placed
