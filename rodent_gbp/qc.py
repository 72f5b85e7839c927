"""Drawing slices for QC figures (matplotlib, Agg backend).

Slices are (H, W) = (R-L, S-I) arrays for coronal slices; they are drawn
transposed with ``origin="lower"`` so that superior is up, as in a
radiological coronal view.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rodent_gbp import classes  # noqa: E402
from rodent_gbp import fileio  # noqa: E402

CLASS_TITLES = classes.TITLES
_LABEL_COLOURS = np.array([[0, 0, 0], [0.95, 0.95, 0.95], [0.55, 0.55, 0.55], [0.2, 0.5, 1.0]])


def show(ax, image: np.ndarray, title: str = "", **kw) -> None:
  """Draws an (H, W) or RGB (H, W, 3) slice superior-up, without ticks."""
  image = np.asarray(image)
  image = image.transpose(1, 0, 2) if image.ndim == 3 else image.T
  ax.imshow(image, origin="lower", **({"cmap": "gray"} | kw))
  ax.set_title(title, fontsize=8)
  ax.set_axis_off()


def label_rgb(labels: np.ndarray) -> np.ndarray:
  """(H, W) label map to an RGB image (BG black, WM white, GM gray, CSF blue)."""
  return _LABEL_COLOURS[np.clip(np.asarray(labels), 0, 3)]


def scan_figure(path: pathlib.Path, image: np.ndarray, mask: np.ndarray,
                labels: np.ndarray, *, count: int = 4) -> None:
  """Input slices with the removal mask's outline, and the labels (model grid).

  ``count`` slices evenly spread over those with brain; written atomically.
  """
  with_brain = np.flatnonzero(mask.reshape(len(mask), -1).any(-1))
  pool = with_brain if with_brain.size else np.arange(len(mask))
  picks = np.unique(pool[np.linspace(0, len(pool) - 1, min(count, len(pool))).round()
                         .astype(int)])
  fig, axes = plt.subplots(2, len(picks), figsize=(2.6 * len(picks), 5.2), squeeze=False)
  for col, s in enumerate(picks):
    show(axes[0, col], image[s], f"slice {s}: input + mask")
    if mask[s].any():
      axes[0, col].contour(mask[s].T.astype(float), levels=[0.5], colors="r",
                           linewidths=0.8, origin="lower")
    show(axes[1, col], label_rgb(labels[s]), f"slice {s}: labels")
  fig.tight_layout()
  with fileio.atomic_path(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=90)
  plt.close(fig)


MAX_GRID_SLICES = 16


def grid_slices(n: int, count: int = MAX_GRID_SLICES) -> np.ndarray:
  """All of ``n`` slices when ``n <= count``, else ``count`` spread evenly, first and last included."""
  if n <= count:
    return np.arange(n)
  return np.unique(np.linspace(0, n - 1, count).round().astype(int))


def segment_figure(path: pathlib.Path, image: np.ndarray, mask: np.ndarray,
                   voxel_size: tuple[float, float], *, truth: np.ndarray | None = None,
                   title: str = "", count: int = MAX_GRID_SLICES,
                   dpi: int = 60) -> np.ndarray:
  """QC of one segmented scan: mask contours over a grid of slices, area per slice.

  Drawn on the input's own in-plane grid (after reorientation to RAS+ and
  slicing), with the pixel aspect of its voxel size; a small plot gives the
  brain area of every slice. Written atomically; a few hundred pixels wide
  per row, so the PNG stays small (well under 300 kB for 16 slices).

  Args:
    path: the PNG to write.
    image: (S, H, W) slices of the scan (normalised intensities).
    mask: (S, H, W) the brain mask written.
    voxel_size: in-plane (H, W) voxel size in mm.
    truth: (S, H, W) a reference mask, drawn in green (its area dashed).
    title: the figure's title.
    count: at most this many slices in the grid.
    dpi: resolution of the PNG.

  Returns:
    (S,) brain area per slice in mm^2.
  """
  image, mask = np.asarray(image, np.float32), np.asarray(mask, bool)
  area = mask.reshape(len(mask), -1).sum(-1) * float(voxel_size[0] * voxel_size[1])
  picks = grid_slices(len(image), count)
  cols = int(np.ceil(np.sqrt(len(picks))))
  rows = int(np.ceil(len(picks) / cols))
  # Display range from the brain when there is one (bright fat or vessels outside
  # would otherwise darken it).
  inside = image[mask] if mask.any() else image.ravel()
  vmax = float(np.percentile(inside, 99.5)) or float(image.max()) or 1.0
  h, w = image.shape[1:]
  # Transposed display: columns are H (width h * vs_h), rows are W.
  aspect = float(voxel_size[1] / voxel_size[0])
  panel_w = 1.9
  panel_h = panel_w * (w * voxel_size[1]) / (h * voxel_size[0])
  panel_h = float(np.clip(panel_h, 0.8, 3.0))
  fig = plt.figure(figsize=(panel_w * cols, panel_h * rows + 1.6))
  grid = fig.add_gridspec(rows + 1, cols, height_ratios=[panel_h] * rows + [1.3])
  for i, s in enumerate(picks):
    ax = fig.add_subplot(grid[i // cols, i % cols])
    show(ax, image[s], f"slice {s}: {area[s]:.3g} mm$^2$", vmin=0.0, vmax=vmax,
         aspect=aspect)
    if truth is not None and truth[s].any():
      ax.contour(truth[s].T.astype(float), levels=[0.5], colors="lime", linewidths=0.6,
                 origin="lower")
    if mask[s].any():
      ax.contour(mask[s].T.astype(float), levels=[0.5], colors="r", linewidths=0.7,
                 origin="lower")
  ax = fig.add_subplot(grid[rows, :])
  ax.plot(np.arange(len(area)), area, "o-", color="r", markersize=2.5, linewidth=1,
          label="mask")
  if truth is not None:
    truth_area = np.asarray(truth, bool).reshape(len(truth), -1).sum(-1) * float(
        voxel_size[0] * voxel_size[1])
    ax.plot(np.arange(len(area)), truth_area, "--", color="g", linewidth=1, label="truth")
    ax.legend(fontsize=7, loc="upper right")
  ax.set_xlabel("slice", fontsize=8)
  ax.set_ylabel("brain area (mm$^2$)", fontsize=8)
  ax.tick_params(labelsize=7)
  ax.set_xlim(-0.5, len(area) - 0.5)
  ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  with fileio.atomic_path(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=dpi)
  plt.close(fig)
  return area
