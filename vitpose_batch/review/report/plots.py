"""The report's plots: matplotlib figures (Agg, no pyplot state) as PNG `data:` URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence

import numpy as np

from vitpose_batch.review.report.stats import KEYPOINT_BINS, LOW_THRESHOLDS, MAX_PERSONS_BIN


def plot_data_uri(draw: Callable, size: tuple[float, float]) -> str:
    """A matplotlib figure drawn by `draw(figure)` as a PNG data URI. A bare Figure renders with Agg and touches no
    pyplot state, so reports can be made from threads and servers without a display."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100, layout="constrained")
    draw(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_person_scores(counts: np.ndarray) -> str:
    def draw(figure) -> None:
        axes = figure.subplots()
        edges = np.linspace(0, 1, len(counts) + 1)
        axes.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4477aa")
        for threshold in LOW_THRESHOLDS:
            axes.axvline(threshold, color="#cc3311", linestyle="--", linewidth=1)
        axes.set(xlabel="person score", ylabel="persons", xlim=(0, 1), title="Person scores")
        axes.yaxis.get_major_locator().set_params(integer=True)  # counts: no 0.5 persons

    return plot_data_uri(draw, (5.5, 3.2))


def plot_persons_per_image(counts: np.ndarray) -> str:
    def draw(figure) -> None:
        axes = figure.subplots()
        axes.bar(np.arange(len(counts)), counts, color="#228833")
        ticks = list(range(0, len(counts), 2))
        axes.set_xticks(ticks, [f"{t}+" if t == MAX_PERSONS_BIN else str(t) for t in ticks])
        axes.set(xlabel="persons in the image", ylabel="images", title="Persons per image (images without error)")
        axes.yaxis.get_major_locator().set_params(integer=True)

    return plot_data_uri(draw, (5.5, 3.2))


def plot_keypoint_scores(counts: np.ndarray, names: Sequence[str]) -> str:
    """One heat map: a row per joint, its keypoint-score distribution (each row normalised to its own total, so a
    joint's shape reads the same whatever its count), the joint's mean score written beside it."""
    k = counts.shape[0]
    names = list(names) if len(names) == k else [f"keypoint {i}" for i in range(k)]
    totals = counts.sum(axis=1, keepdims=True)
    shares = counts / np.maximum(totals, 1)
    centres = (np.arange(KEYPOINT_BINS) + 0.5) / KEYPOINT_BINS
    means = (counts * centres).sum(axis=1) / np.maximum(totals[:, 0], 1)

    def draw(figure) -> None:
        axes = figure.subplots()
        shown = axes.imshow(shares, aspect="auto", cmap="viridis", extent=(0, 1, k - 0.5, -0.5),
                            interpolation="nearest")
        step = max(1, int(np.ceil(k / 40)))  # 133 whole-body joints: label every 4th
        axes.set_yticks(range(0, k, step), [names[i] for i in range(0, k, step)], fontsize=7)
        axes.set(xlabel="keypoint score", title="Keypoint scores per joint (share of the joint's keypoints)")
        twin = axes.secondary_yaxis("right")
        twin.set_yticks(range(0, k, step), [f"{means[i]:.2f}" for i in range(0, k, step)], fontsize=7)
        twin.set_ylabel("mean (from the bins)", fontsize=8)
        figure.colorbar(shown, ax=axes, location="bottom", shrink=0.6, label="share")

    return plot_data_uri(draw, (7.5, max(3.5, 0.2 * min(k, 40) + 2.0)))
