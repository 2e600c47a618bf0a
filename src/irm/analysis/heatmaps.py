"""Heatmaps of IRM outputs: layer on y, hidden index on x, for any hidden size.

Pixel ``(row k, column h)`` is ``values[k, h]``, with rows labelled by the real host layer
``layers[k]`` and the x axis running over hidden indices ``0 .. H-1`` (ticks placed by a
locator, never hard-coded). When ``H`` is wider than the image, columns are max-pooled
(by ``|value|``, keeping the sign) so that a single-index stripe cannot be resampled away.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.animation import PillowWriter  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

MAX_COLUMNS = 800
"""Fewer than the axes' width in pixels (about 1150 in a PNG, 850 in the GIF)."""
MAX_LAYER_TICKS = 24


def pool_width(hidden: int, max_columns: int = MAX_COLUMNS) -> int:
    return math.ceil(hidden / max_columns)


def pool_columns(values: np.ndarray, max_columns: int = MAX_COLUMNS) -> np.ndarray:
    """Keep, in each bin of :func:`pool_width` adjacent columns, the value of largest
    magnitude."""
    width = pool_width(values.shape[-1], max_columns)
    if width <= 1:
        return values
    pad = (-values.shape[-1]) % width
    padded = np.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, pad)])
    bins = padded.reshape(*values.shape[:-1], -1, width)
    pick = np.abs(bins).argmax(axis=-1)[..., None]
    return np.take_along_axis(bins, pick, axis=-1)[..., 0]


def heatmap_figure(
    values: np.ndarray, layers: Sequence[int], *, title: str, signed: bool = False, vmax: float | None = None, label: str = "|IRM output|"
) -> Figure:
    """A figure of one ``(layer, hidden)`` map. ``signed`` uses a diverging scale around 0."""
    n_layers, hidden = values.shape
    if len(layers) != n_layers:
        raise ValueError(f"{len(layers)} layer labels for {n_layers} rows")
    fig = Figure(figsize=(12, 1.5 + 0.12 * min(n_layers, 40) + 1.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    top = vmax if vmax is not None else float(np.abs(values).max()) or 1.0
    image = ax.imshow(
        pool_columns(values),
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        extent=(-0.5, hidden - 0.5, -0.5, n_layers - 0.5),
        cmap="RdBu_r" if signed else "magma",
        vmin=-top if signed else 0.0,
        vmax=top,
    )
    ax.set_xlim(-0.5, hidden - 0.5)
    ax.set_ylim(-0.5, n_layers - 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True, min_n_ticks=2))
    step = math.ceil(n_layers / MAX_LAYER_TICKS)
    rows = list(range(0, n_layers, step))
    ax.set_yticks(rows, [str(layers[r]) for r in rows])
    width = pool_width(hidden)
    ax.set_xlabel(f"hidden index (0-{hidden - 1})" + (f"; each pixel column: largest |value| of {width} indices" if width > 1 else ""))
    ax.set_ylabel("layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label, pad=0.01)
    return fig


def save_heatmap(values: np.ndarray, layers: Sequence[int], path: str | Path, **kwargs) -> Path:
    path = Path(path)
    heatmap_figure(values, layers, **kwargs).savefig(path)
    return path


def save_animation(frames: np.ndarray, layers: Sequence[int], titles: Sequence[str], path: str | Path, *, fps: float = 3.0) -> Path:
    """An animated GIF of ``(tokens, layer, hidden)`` signed maps on one fixed colour scale."""
    path = Path(path)
    top = float(np.abs(frames).max()) or 1.0
    fig = heatmap_figure(frames[0], layers, title=titles[0], signed=True, vmax=top, label="IRM output")
    ax = fig.axes[0]
    image = ax.images[0]
    fig.draw_without_rendering()  # lay out once, then keep that layout for every frame
    fig.set_layout_engine("none")
    writer = PillowWriter(fps=fps)
    with writer.saving(fig, str(path), dpi=80):
        for frame, title in zip(frames, titles):
            image.set_data(pool_columns(frame))
            ax.set_title(title)
            writer.grab_frame()
    return path
