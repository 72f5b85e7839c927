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

from rodent_gbp import fileio  # noqa: E402

CLASS_TITLES = ("Background", "White matter", "Gray matter", "CSF")
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
