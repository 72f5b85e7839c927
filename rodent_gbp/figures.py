"""The paper's figures as PNG files (matplotlib, Agg backend).

Slices are (H, W) = (R-L, S-I) arrays; they are drawn transposed with
``origin="lower"`` so that superior is up, as in a radiological coronal view.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rodent_gbp import fileio  # noqa: E402
from rodent_gbp.qc import CLASS_TITLES, label_rgb, show  # noqa: E402,F401


def save_figure(fig, path) -> pathlib.Path:
  """Writes a matplotlib figure to ``path`` (PNG) atomically and closes it."""
  fig.tight_layout()
  with fileio.atomic_path(path, suffix=pathlib.Path(path).suffix) as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)
  return pathlib.Path(path)


def fig2_outputs(path, image: np.ndarray, probs: np.ndarray) -> pathlib.Path:
  """Fig. 2: input and the four per-class softmax outputs. probs (H, W, 4)."""
  fig, axes = plt.subplots(1, 5, figsize=(12, 2.8))
  show(axes[0], image, "(a) Input")
  for c in range(4):
    show(axes[c + 1], probs[..., c], f"({'bcde'[c]}) {CLASS_TITLES[c]}", vmin=0, vmax=1)
  return save_figure(fig, pathlib.Path(path))


def fig3_translation(path, image, shifted, maps, maps_shifted, shift) -> pathlib.Path:
  """Fig. 3: saliency of an input and of its translation (per-class maps (C, H, W))."""
  n = len(maps)
  fig, axes = plt.subplots(2, n + 1, figsize=(2.4 * (n + 1), 5))
  for row, (img, m, name) in enumerate(((image, maps, "(a) Original"),
                                       (shifted, maps_shifted, f"(b) Translated {shift}"))):
    show(axes[row, 0], img, name)
    for c in range(n):
      v = np.abs(m[c])
      show(axes[row, c + 1], v, f"|GBP| {CLASS_TITLES[c]}", cmap="magma",
           vmax=np.percentile(np.abs(maps[c]), 99.5) + 1e-12)
  return save_figure(fig, pathlib.Path(path))


def fig4_noisy(path, image, labels_none, labels_manual, truth) -> pathlib.Path:
  """Fig. 4: the segmentation of a slice with artifacts, without removal."""
  fig, axes = plt.subplots(1, 4, figsize=(10, 2.9))
  show(axes[0], image, "Input (with artifacts)")
  show(axes[1], label_rgb(labels_none), "No removal", cmap=None)
  show(axes[2], label_rgb(labels_manual), "Manual removal", cmap=None)
  show(axes[3], label_rgb(truth), "Ground truth", cmap=None)
  return save_figure(fig, pathlib.Path(path))


def fig5_histograms(path, steps: dict, mask: np.ndarray | None = None) -> pathlib.Path:
  """Fig. 5: histogram of the gradient magnitude through the enhancement steps."""
  fig, axes = plt.subplots(1, 4, figsize=(13, 2.9))
  items = (("expanded", "(a) gray-level magnitude 1+255(G-min)/(max-min)"),
           ("log", "(b) after log compression"),
           ("z", "(c) after z-score"),
           ("enhanced", "(d) after Eq. 1"))
  for ax, (key, title) in zip(axes, items):
    v = np.asarray(steps[key]).ravel()
    ax.hist(v, bins=100, color="0.3")
    ax.set_title(title, fontsize=8)
    ax.set_yscale("log")
  return save_figure(fig, pathlib.Path(path))


def fig6_enhanced(path, gradient, enhanced) -> pathlib.Path:
  """Fig. 6: the gradient image and its enhancement."""
  fig, axes = plt.subplots(1, 2, figsize=(6, 3))
  show(axes[0], gradient, "(a) Gradient image", cmap="magma")
  show(axes[1], enhanced, "(b) Enhanced image", cmap="magma")
  return save_figure(fig, pathlib.Path(path))


def fig7_alignment(path, template, signal, correlation, image, masked,
                   displacement=None) -> pathlib.Path:
  """Fig. 7: template, gradient image, correlation, input and masked input.

  The correlation panel marks the slice's own argmax (white x) and, when
  ``displacement`` (dy, dx) is given, the displacement applied (red +: the
  same point unless the acquisition's displacement, summed over its slices,
  outvoted this slice's peak).
  """
  fig, axes = plt.subplots(1, 5, figsize=(13, 2.9))
  show(axes[0], template, "(a) Shape mask x gradient", cmap="magma")
  show(axes[1], signal, "(b) Enhanced gradient image", cmap="magma")
  show(axes[2], correlation, "(c) 2D cross-correlation", cmap="viridis")
  h, w = np.asarray(correlation).shape
  k = np.unravel_index(np.argmax(correlation), correlation.shape)
  axes[2].plot([k[0]], [k[1]], "wx", ms=8)        # show() draws axis 0 across
  if displacement is not None:
    axes[2].plot([h // 2 + displacement[0]], [w // 2 + displacement[1]], "r+", ms=10)
  show(axes[3], image, "(d) Input")
  show(axes[4], masked, "(e) After background removal")
  return save_figure(fig, pathlib.Path(path))


def fig8_panel(path, image, manual, gbp_masked, truth, labels_gbp) -> pathlib.Path:
  """Fig. 8: manual vs GBP background removal and the resulting segmentation."""
  fig, axes = plt.subplots(1, 5, figsize=(13, 2.9))
  show(axes[0], image, "(a) Input")
  show(axes[1], manual, "(b) Manual removal")
  show(axes[2], gbp_masked, "(c) GBP removal")
  show(axes[3], label_rgb(truth), "(d) Ground truth", cmap=None)
  show(axes[4], label_rgb(labels_gbp), "(e) Segmentation after GBP",
       cmap=None)
  return save_figure(fig, pathlib.Path(path))


def placement_overview(path, dice: Sequence[float], ceiling: Sequence[float],
                       error: Sequence[float]) -> pathlib.Path:
  """Per-slice brain Dice of the placed mask vs its ceiling, and placement error.

  The error panel is left out when no slice has displacement truth (all NaN:
  real scans).
  """
  err = np.asarray(error, np.float64)
  with_error = bool(np.isfinite(err).any())
  fig, axes = plt.subplots(1, 2 if with_error else 1, figsize=(10 if with_error else 6, 3),
                           squeeze=False)
  axes = axes[0]
  axes[0].plot(dice, label="GBP placement")
  axes[0].plot(ceiling, label="ceiling (best shift)")
  axes[0].set_xlabel("test slice (all test animals)")
  axes[0].set_ylabel("brain DSC")
  axes[0].legend(fontsize=8)
  if with_error:
    axes[1].plot(err, ".")
    axes[1].set_xlabel("test slice")
    axes[1].set_ylabel("placement error (px)")
  return save_figure(fig, pathlib.Path(path))
