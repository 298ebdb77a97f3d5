"""The accuracy-vs-latency picture: which configurations no other one beats on both."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from edgediff.errors import InputError


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates (lower or equal latency x and higher or
    equal accuracy y, better in one), sorted by latency."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _label_slots(points: Sequence[tuple[float, float]]) -> list[int]:
    """For each point, how many earlier points sit close enough for their labels to collide
    (within 35 % in latency and 3 % of the accuracy range)."""
    ys = [y for _, y in points]
    span = (max(ys) - min(ys)) or 1.0
    return [
        sum(abs(math.log(x / x2)) < 0.3 and abs(y - y2) < 0.03 * span for x2, y2 in points[:i])
        for i, (x, y) in enumerate(points)
    ]


def pyplot():
    """matplotlib.pyplot drawing to files only, or an error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise InputError(
            "the bench's plot needs matplotlib, which is not installed",
            "pip install 'edgediff[bench]'",
        ) from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot(
    labels: Sequence[str],
    points: Sequence[tuple[float, float]],
    path: Path,
    x_label: str,
    y_label: str,
    title: str,
    higher_is_better: bool = True,
) -> None:
    """Scatter the labelled points, draw the Pareto front, save a PNG to `path`."""
    plt = pyplot()
    from matplotlib import ticker

    front = pareto_front(points if higher_is_better else [(x, -y) for x, y in points])
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    xs, ys = zip(*points, strict=True)
    ax.scatter(xs, ys, color="tab:gray", zorder=2)
    ax.plot(
        [points[i][0] for i in front],
        [points[i][1] for i in front],
        color="tab:red",
        marker="o",
        zorder=3,
        label="Pareto front (nothing else is both faster and better)",
    )
    for label, (x, y), slot in zip(labels, points, _label_slots(points), strict=True):
        offset = (5, 4 - 11 * slot)  # labels of near-coincident points stack downwards
        ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    ax.set_xscale("log")
    plain = ticker.FormatStrFormatter("%g")  # 0.2, not 2×10⁻¹
    ax.xaxis.set_major_formatter(plain)
    # Within a decade every minor tick is labelled; over more, only 2 and 5 (the rest collide).
    wide = max(xs) > 10 * min(xs)
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(_two_and_five) if wide else plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.margins(x=0.2, y=0.08)  # room for the labels of the outermost points
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _two_and_five(value: float, _position: int) -> str:
    """A log axis's minor label for 2 and 5 times a power of ten, none for the others."""
    mantissa = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if mantissa in (2, 5) else ""
