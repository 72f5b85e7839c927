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
import PIL.Image  # noqa: E402  (matplotlib's own dependency)
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

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


#: Pixels across the wider side of one slice's tile in :func:`segment_figure`.
TILE_PX = 224
# Tissue label overlay colours of the QC figure: WM yellow, GM magenta, CSF blue
# (distinct from the grey image and from the red mask and green truth outlines).
OVERLAY_COLOURS = np.array([[0, 0, 0], [1.0, 0.85, 0.1], [0.9, 0.3, 0.9], [0.2, 0.6, 1.0]])
_MASK_RGB, _TRUTH_RGB = np.array([1.0, 0.1, 0.1]), np.array([0.2, 1.0, 0.2])


def _resize(x: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
  """``x`` (R, C) sampled at the centres of a ``shape`` grid over the same extent."""
  coords = [(np.arange(n) + 0.5) * (m / n) - 0.5 for n, m in zip(shape, x.shape)]
  rr, cc = np.meshgrid(*coords, indexing="ij")
  return ndimage.map_coordinates(x, [rr, cc], order=order, mode="nearest")


def _outline(mask: np.ndarray) -> np.ndarray:
  """The 2-pixel-wide inner edge of a (tile-sized) mask."""
  mask = np.asarray(mask, bool)
  return mask & ~ndimage.binary_erosion(mask, iterations=2, border_value=0)


def slice_tiles(image: np.ndarray, mask: np.ndarray, vmax: float,
                voxel_size: tuple[float, float], *, truth: np.ndarray | None = None,
                labels: np.ndarray | None = None, px: int = TILE_PX
                ) -> tuple[np.ndarray, np.ndarray]:
  """Two RGB tiles of one (H, W) slice, superior up, ``px`` pixels across the wider
  side at the voxel size's aspect: the slice with the mask (red) and truth
  (green) outlined; the slice under the tissue labels (:data:`OVERLAY_COLOURS`,
  half transparent) with the mask outline. Image linear, masks and labels nearest."""
  h, w = image.shape
  extent = max(h * voxel_size[0], w * voxel_size[1])
  shape = (max(1, round(px * w * voxel_size[1] / extent)),
           max(1, round(px * h * voxel_size[0] / extent)))

  def up(x, order):  # display orientation: rows = W from superior down, columns = H
    return _resize(np.asarray(x, np.float32).T[::-1], shape, order)

  grey = np.clip(up(image, 1) / vmax, 0.0, 1.0)[..., None] * np.ones(3, np.float32)
  edge = _outline(up(mask, 0) > 0.5)
  left = grey.copy()
  if truth is not None:
    left[_outline(up(truth, 0) > 0.5)] = _TRUTH_RGB
  left[edge] = _MASK_RGB
  right = grey.copy()
  if labels is not None:
    lab = np.clip(up(labels, 0).round().astype(int), 0, 3)
    tissue = lab > 0
    right[tissue] = 0.5 * right[tissue] + 0.5 * OVERLAY_COLOURS[lab[tissue]]
  right[edge] = _MASK_RGB
  return left, right


def segment_figure(path: pathlib.Path, image: np.ndarray, mask: np.ndarray,
                   voxel_size: tuple[float, float], *, truth: np.ndarray | None = None,
                   labels: np.ndarray | None = None, title: str = "",
                   count: int = MAX_GRID_SLICES, px: int = TILE_PX,
                   dpi: int = 100) -> np.ndarray:
  """QC of one segmented scan: each slice's mask outline beside its tissue labels,
  over a grid of slices, and the brain area per slice.

  Drawn on the input's own in-plane grid (after reorientation to RAS+ and
  slicing) with the pixel aspect of its voxel size, superior up. Every picked
  slice gets two tiles of ``px`` pixels across (:func:`slice_tiles`): left the
  slice with the brain mask (red) and the truth (green) outlined, right the
  tissue labels over the slice (WM yellow, GM magenta, CSF blue) inside the
  mask outline; the tiles are composed into one image drawn one pixel per
  pixel. Below it, the brain area of every slice. Written atomically.

  Args:
    path: the PNG to write.
    image: (S, H, W) slices of the scan (normalised intensities).
    mask: (S, H, W) the brain mask written.
    voxel_size: in-plane (H, W) voxel size in mm.
    truth: (S, H, W) a reference mask, outlined in green (its area dashed).
    labels: (S, H, W) tissue labels 0..3 (0 background); None: the right tiles
      show the slice and the mask outline only.
    title: the figure's title.
    count: at most this many slices in the grid.
    px: pixels across one tile's wider side.
    dpi: resolution of the PNG (text and the area plot scale with it).

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
  tiles = [slice_tiles(image[s], mask[s], vmax, voxel_size, px=px,
                       truth=None if truth is None else truth[s],
                       labels=None if labels is None else labels[s]) for s in picks]
  th, tw = tiles[0][0].shape[:2]
  gap, caption = 6, 20                   # pixels between tiles; a caption band above
  cell_w, cell_h = 2 * tw + 3 * gap, th + caption
  mosaic = np.ones((rows * cell_h + gap, cols * cell_w + gap, 3), np.float32)
  for i, (left, right) in enumerate(tiles):
    y, x = (i // cols) * cell_h + caption, (i % cols) * cell_w + 2 * gap
    mosaic[y:y + th, x:x + tw] = left
    mosaic[y:y + th, x + tw + gap:x + 2 * tw + gap] = right
  mh, mw = mosaic.shape[:2]
  plot_h, head_h = 2.2 * dpi, 0.5 * dpi  # the area plot below, title and key above
  fig_h = mh + plot_h + head_h
  fig = plt.figure(figsize=(mw / dpi, fig_h / dpi), dpi=dpi)
  # The mosaic goes into the drawn figure's pixels below (matplotlib would
  # resample it, a third of the figure's time); captions in figure fractions.
  for i, s in enumerate(picks):
    y, x = (i // cols) * cell_h + caption - 3, (i % cols) * cell_w + 2 * gap
    y = 1 - (head_h + y) / fig_h
    fig.text(x / mw, y, f"slice {s}: {area[s]:.3g} mm$^2$", fontsize=9, va="bottom")
    fig.text((x + tw + gap) / mw, y, "labels", fontsize=9, va="bottom", color="0.4")
  ax = fig.add_axes((0.7 * dpi / mw, 0.45 * dpi / fig_h, 1 - 0.9 * dpi / mw,
                     (plot_h - 0.65 * dpi) / fig_h))
  ax.plot(np.arange(len(area)), area, "o-", color="r", markersize=2.5, linewidth=1,
          label="mask")
  if truth is not None:
    truth_area = np.asarray(truth, bool).reshape(len(truth), -1).sum(-1) * float(
        voxel_size[0] * voxel_size[1])
    ax.plot(np.arange(len(area)), truth_area, "--", color="g", linewidth=1, label="truth")
    ax.legend(fontsize=8, loc="upper right")
  ax.set_xlabel("slice", fontsize=9)
  ax.set_ylabel("brain area (mm$^2$)", fontsize=9)
  ax.tick_params(labelsize=8)
  ax.set_xlim(-0.5, len(area) - 0.5)
  ax.grid(alpha=0.3)
  key = ("left: brain mask (red)" + (", truth (green)" if truth is not None else "")
         + "; right: tissue labels, WM yellow, GM magenta, CSF blue")
  fig.text(0.5, (plot_h + mh + head_h / 2) / fig_h, f"{title}\n{key}" if title else key,
           ha="center", va="center", fontsize=9)
  fig.canvas.draw()
  pixels = np.array(fig.canvas.buffer_rgba())[..., :3]
  plt.close(fig)
  top = pixels.shape[0] - int(round(plot_h)) - mh
  tiled = np.any(mosaic < 1, axis=-1)  # the tiles, not the white around (the captions)
  pixels[top:top + mh, :mw][tiled] = (mosaic[tiled] * 255).round().astype(np.uint8)
  with fileio.atomic_path(path, suffix=".png") as tmp:
    # zlib level 3: about half the time of the default level 6, a few % larger.
    PIL.Image.fromarray(pixels).save(tmp, format="PNG", compress_level=3)
  return area
