"""Per-class saliency maps of a trained U-Net, and of a translated input (Figs. 2-3).

:func:`run` is what ``experiments/saliency.py`` calls. For each chosen slice of
one animal (default: the first test animal of the checkpoint's split) it
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

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import checkpoint as checkpoint_lib
from rodent_gbp import data
from rodent_gbp.studies import figures
from rodent_gbp import guided
from rodent_gbp import model as model_lib


def translate(images: np.ndarray, k: int) -> np.ndarray:
  """Zero-filled translation of (B, H, W, 1) by k voxels along H and W."""
  out = np.zeros_like(images)
  if k >= 0:
    out[:, k:, k:] = images[:, :images.shape[1] - k, :images.shape[2] - k]
  else:
    out[:, :k, :k] = images[:, -k:, -k:]
  return out


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
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(checkpoint, out_dir, *, data_dir=None, animal=None, slices=(14, 20, 26),
        shift=8, method="guided", stripped=False) -> dict:
  """Writes the maps, figures and ``saliency.json``; returns the summary."""
  checkpoint = pathlib.Path(checkpoint)
  out_dir = pathlib.Path(out_dir)
  loaded = checkpoint_lib.load_model(checkpoint)
  config = loaded.config
  net = model_lib.build_unet(config)
  params = jax.tree_util.tree_map(jnp.asarray, loaded.params)
  data_dir = pathlib.Path(data_dir) if data_dir else checkpoint.resolve().parent / "data"
  if not data_dir.is_dir():
    raise data.DataError(f"dataset folder {data_dir} does not exist")
  if animal is None:
    split = loaded.extras.get("split") or {}
    found = split.get("test") or sorted(p.name for p in data_dir.iterdir() if p.is_dir())
    if not found:
      raise data.DataError(f"{data_dir}: no animal folders")
    animal = found[0]
  volume = data.load_animal(data_dir / animal, require_labels=False)
  slices = [int(j) for j in slices]
  n, h, w = volume.image.shape
  bad = [j for j in slices if not 0 <= j < n]
  if not slices or bad:
    raise ValueError(f"{data_dir / animal}: slices {bad or slices} are not in 0..{n - 1}")
  if abs(int(shift)) >= min(h, w):
    raise ValueError(f"shift {shift} must be smaller than the slice size {h} x {w}")
  images = volume.image[slices][..., None].astype(np.float32)
  if stripped:
    if volume.brainmask is None:
      raise ValueError(f"{data_dir / animal}: stripped slices need a brain mask")
    images = images * volume.brainmask[slices][..., None]
  images_t = translate(images, shift)
  out_dir.mkdir(parents=True, exist_ok=True)  # inputs checked: nothing is left on error

  # One batch holds the slices and their translations: one compilation.
  both = jnp.asarray(np.concatenate([images, images_t]))
  probs = np.asarray(jax.nn.softmax(net.apply({"params": params}, both), -1))
  maps = np.asarray(guided.saliency(net, params, both, method=method, target="all"))
  probs = probs.transpose(0, 3, 1, 2)  # (2S, C, H, W)
  n = len(slices)
  margin = 3 * 2**config.depth  # the border band where zero padding matters
  summary = {"checkpoint": str(checkpoint), "animal": animal, "method": method,
             "shift": shift, "stripped": stripped, "slices": {}}
  for i, j in enumerate(slices):
    stem = f"{animal}_s{j:02d}"
    np.save(out_dir / f"{stem}_probs.npy", probs[i])
    np.save(out_dir / f"{stem}_maps.npy", maps[i])
    np.save(out_dir / f"{stem}_shift{shift}_probs.npy", probs[n + i])
    np.save(out_dir / f"{stem}_shift{shift}_maps.npy", maps[n + i])
    # Fig. 3 check: the translated map against the original map, translated.
    expected = translate(maps[i].transpose(1, 2, 0)[None], shift)[0].transpose(2, 0, 1)
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
  (out_dir / "saliency.json").write_text(json.dumps(summary, indent=2))
  return summary
