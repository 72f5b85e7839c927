"""Per-class saliency maps of a trained U-Net, and of a translated input (Figs. 2-3).

:func:`run` is what ``experiments/saliency.py`` calls. For each chosen slice of
one animal (default: the first test animal of the model bundle's split) it
writes, into ``out_dir``:

* ``<animal>_s<j>_probs.npy`` (C, H, W) softmax output, ``<animal>_s<j>_maps.npy``
  (C, H, W) one saliency map per class (the sum over pixels of that class's
  probability, differentiated by ``method``), and the same two for the input
  translated by ``shift`` voxels along both slice axes (``..._shift<k>_*.npy``);
* ``<animal>_s<j>.png``: input, per-class output and per-class |map|, for the
  slice (top row) and its translation (bottom row), as the paper's Figs. 2-3;
* ``saliency.json``: per slice, how far the translated map is from the
  translated original map (max |difference| / max |map|, away from the
  borders), the check behind Fig. 3.

Slices are the raw (not skull-stripped) input unless ``stripped``.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import correlate
from rodent_gbp import data
from rodent_gbp import fileio
from rodent_gbp import guided
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp import figures
from rodent_gbp.studies.common import context


def translate(images: np.ndarray, k: int) -> np.ndarray:
  """Zero-filled translation of (B, H, W, 1) by k voxels along H and W (``correlate.shift_image``)."""
  moved = correlate.shift_image(np.asarray(images)[..., 0], np.array([k, k], np.int32))
  return np.asarray(moved)[..., None]


def _figure(path, image, probs, maps, image_t, probs_t, maps_t, shift, method):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  num_classes = probs.shape[0]
  fig, axes = plt.subplots(2, 1 + 2 * num_classes, figsize=(1.9 * (1 + 2 * num_classes), 4.4))
  for row, (img, p, m, name) in enumerate(((image, probs, maps, "Input"),
                                          (image_t, probs_t, maps_t, f"Translated {shift}"))):
    figures.show(axes[row, 0], img, name)
    for c in range(num_classes):
      figures.show(axes[row, 1 + c], p[c], f"P({figures.CLASS_TITLES[c]})", vmin=0, vmax=1)
      # Same scale for both rows, so a translated map looks like the original.
      vmax = np.percentile(np.abs(maps[c]), 99.5) + 1e-12
      figures.show(axes[row, 1 + num_classes + c], np.abs(m[c]),
                   f"|{method}| {figures.CLASS_TITLES[c]}", cmap="magma", vmin=0, vmax=vmax)
  figures.save_figure(fig, path)


def _save_npy(path: pathlib.Path, array: np.ndarray) -> None:
  with fileio.atomic_path(path, suffix=".npy") as tmp:
    np.save(tmp, array)


def run(model_dir, out_dir, *, data_dir=None, animal=None, slices=(14, 20, 26),
        shift=8, method="guided", stripped=False, score=None) -> dict:
  """Writes the maps, figures and ``saliency.json``; returns the summary.

  Args:
    model_dir: a model bundle folder (``<workdir>/model`` of the main job).
    out_dir: output folder (created once the inputs are checked).
    data_dir: dataset root; default ``<model_dir>/../data``.
    animal: animal id; default the first test animal of the bundle's split.
    slices: slice indices (numbers or their text).
    shift: translation in voxels along both slice axes.
    method: saliency method (``guided.METHODS``).
    stripped: zero the input outside the brain mask.
    score: the saliency target (``guided.SCORES``: ``probability``, the
      paper's, or ``logit``); None: the bundle config's ``saliency_score``.

  Raises:
    CheckpointError: a missing or damaged bundle.
    DataError: a missing dataset or animal, or no brain mask for ``stripped``.
    UsageError: slices out of range or not integers, a shift too large, an
      unknown method.
  """

  if method not in guided.METHODS:
    raise UsageError(f"unknown saliency method {method!r}; one of {', '.join(guided.METHODS)}")
  if score is not None and score not in guided.SCORES:
    raise UsageError(f"unknown saliency score {score!r}; one of {', '.join(guided.SCORES)}")
  ctx = context.load_context(model_dir, data_dir, animals=())
  net = ctx.bundle.network("tissue")
  model, params, config = net.model, net.params, net.config
  score = config.saliency_score if score is None else score
  animal = ctx.split["test"][0] if animal is None else animal
  if not (ctx.data_dir / animal).is_dir():
    raise DataError(f"{ctx.data_dir / animal}: animal folder not found")
  volume = data.load_animal(ctx.data_dir / animal, require_labels=False)
  try:
    slices = [int(j) for j in slices]
  except (TypeError, ValueError):
    raise UsageError(f"slices must be integers, got {list(slices)}") from None
  n, h, w = volume.image.shape
  bad = [j for j in slices if not 0 <= j < n]
  if not slices or bad:
    raise UsageError(f"{ctx.data_dir / animal}: slices {bad or slices} are not in 0..{n - 1}")
  shift = int(shift)
  if abs(shift) >= min(h, w):
    raise UsageError(f"shift {shift} must be smaller than the slice size {h} x {w}")
  images = volume.image[slices][..., None].astype(np.float32)
  if stripped:
    if volume.brainmask is None:
      raise DataError(f"{ctx.data_dir / animal}: stripped slices need a brain mask")
    images = images * volume.brainmask[slices][..., None]
  images_t = translate(images, shift)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)  # inputs checked: nothing is left on error

  # One batch holds the slices and their translations: one compilation.
  both = jnp.asarray(np.concatenate([images, images_t]))
  probs = np.asarray(jax.nn.softmax(model.apply({"params": params}, both), -1))
  maps = np.asarray(guided.saliency(model, params, both, method=method, target="all",
                                    score=score))
  probs = probs.transpose(0, 3, 1, 2)  # (2S, C, H, W)
  n = len(slices)
  margin = 3 * 2**config.depth  # the border band where zero padding matters
  summary = {"checkpoint": str(model_dir), "data_dir": str(ctx.data_dir), "animal": animal,
             "method": method, "score": score, "shift": shift, "stripped": stripped, "slices": {}}
  for i, j in enumerate(slices):
    stem = f"{animal}_s{j:02d}"
    _save_npy(out_dir / f"{stem}_probs.npy", probs[i])
    _save_npy(out_dir / f"{stem}_maps.npy", maps[i])
    _save_npy(out_dir / f"{stem}_shift{shift}_probs.npy", probs[n + i])
    _save_npy(out_dir / f"{stem}_shift{shift}_maps.npy", maps[n + i])
    # Fig. 3 check: the translated map against the original map, translated.
    expected = np.asarray(correlate.shift_image(maps[i], np.array([shift, shift], np.int32)))
    inner = (slice(None), slice(margin + max(shift, 0), -margin + min(shift, 0) or None),
             slice(margin + max(shift, 0), -margin + min(shift, 0) or None))
    scale = float(np.abs(maps[i]).max()) or 1.0
    summary["slices"][str(j)] = {
        "max_abs_map": scale,
        "translation_rel_error_inner": float(
            np.abs(maps[n + i][inner] - expected[inner]).max() / scale),
        "translation_rel_error_all": float(np.abs(maps[n + i] - expected).max() / scale),
    }
    _figure(out_dir / f"{stem}.png", images[i, ..., 0], probs[i], maps[i],
            images_t[i, ..., 0], probs[n + i], maps[n + i], shift, method)
  fileio.write_json(out_dir / "saliency.json", summary)
  return summary
