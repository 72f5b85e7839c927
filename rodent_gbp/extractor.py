"""The brain extractor's prediction: a U-Net on raw slices, its brain probability, the mask.

The extractor (network name ``extractor`` in a model bundle; trained by
``rodent_gbp.training.extraction``) sees the raw slice (skull, muscle and coil
surroundings present) and outputs the brain mask;
``placement.PLACERS["supervised"]`` calls :func:`extract`.

* Network: ``UNet(features, depth, num_classes=2)`` (background, brain) with a
  softmax.
* Prediction: the brain probability averaged over the 8 in-plane
  orientations (test-time augmentation, :func:`brain_probability`).
* Post-processing (``scipy.ndimage``): threshold the brain probability at
  0.5, keep the largest 3D connected component (face connectivity) and every
  part of the brain that an empty slice cut off from it (:func:`brain_components`),
  fill holes in every slice and then in 3D.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from rodent_gbp.errors import CheckpointError, UsageError

if TYPE_CHECKING:  # annotations only: the user's start-up does not load flax for them
  from rodent_gbp import model as model_lib

NETWORK = "extractor"
BRAIN = 1  # class index of brain in the extractor's output


# --- post-processing -----------------------------------------------------------------


# A component on slices the largest one does not reach is kept when it holds at
# least this fraction of the largest's voxels: a brain cut in two along the slice
# axis by one slice the network left empty (DSURQE's cerebellum and brain stem
# behind slice 13), not a speck or a blob beside the brain.
SPLIT_FRACTION = 0.1


def brain_components(mask: np.ndarray, fraction: float = SPLIT_FRACTION) -> np.ndarray:
  """(S, H, W) bool: the largest face-connected component plus every other one
  that shares no slice with it and holds at least ``fraction`` of its voxels.
  A component beside the brain on the brain's own slices is dropped whatever
  its size (empty stays empty)."""
  mask = np.asarray(mask, bool)
  labels, n = ndimage.label(mask)
  if n <= 1:
    return mask.copy()
  sizes = np.bincount(labels.ravel())
  sizes[0] = 0
  big = int(np.argmax(sizes))
  on_slices = np.zeros((n + 1, len(mask)), bool)     # component x slice
  for s, lab in enumerate(labels):
    on_slices[np.unique(lab), s] = True
  keep = (sizes >= fraction * sizes[big]) & ~(on_slices & on_slices[big]).any(axis=1)
  keep[0], keep[big] = False, True
  return keep[labels]


def postprocess(mask: np.ndarray) -> np.ndarray:
  """(S, H, W) bool: the brain's components (:func:`brain_components`), holes
  filled per slice, then in 3D."""
  mask = brain_components(mask)
  mask = np.stack([ndimage.binary_fill_holes(s) for s in mask]) if len(mask) else mask
  return ndimage.binary_fill_holes(mask)


# --- prediction ----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "tta"))
def brain_probability(params, images: jax.Array, *, model: model_lib.UNet,
                      tta: bool = True) -> jax.Array:
  """(B, H, W) softmax probability of brain of (B, H, W) raw normalised slices.

  ``tta``: the mean over the 8 in-plane orientations (flips and quarter turns,
  each mapped back), which training made equally likely; for square slices
  only (otherwise the plain prediction).
  """
  def prob(x):
    return jax.nn.softmax(model.apply({"params": params}, x[..., None]), axis=-1)[..., BRAIN]

  if not tta or images.shape[1] != images.shape[2]:
    return prob(images)
  total = jnp.zeros(images.shape, jnp.float32)
  for flip in (False, True):
    x = images[:, ::-1] if flip else images
    for k in range(4):
      p = jnp.rot90(prob(jnp.rot90(x, k, axes=(1, 2))), -k, axes=(1, 2))
      total = total + (p[:, ::-1] if flip else p)
  return total / 8.0


def predict_probability(params, slices: np.ndarray, *, model: model_lib.UNet,
                        batch_size: int = 32) -> np.ndarray:
  """(S, H, W) brain probability, in fixed-size batches (one compile)."""
  slices = np.asarray(slices, np.float32)
  out = []
  for i in range(0, len(slices), batch_size):
    chunk = slices[i:i + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
    out.append(np.asarray(brain_probability(params, jnp.asarray(padded), model=model))
               [:len(chunk)])
  return np.concatenate(out) if out else np.zeros(slices.shape, np.float32)


def extract_with(params, slices: np.ndarray, *, model: model_lib.UNet,
                 batch_size: int = 32) -> dict[str, np.ndarray]:
  """Brain mask of one volume's slices: ``mask`` (S, H, W) bool (post-processed),
  ``raw_mask`` (thresholded only) and ``probability`` (S, H, W)."""
  prob = predict_probability(params, slices, model=model, batch_size=batch_size)
  raw = prob > 0.5
  return {"mask": postprocess(raw), "raw_mask": raw, "probability": prob}


def check_bundle(bundle) -> None:
  """Refuses a bundle without an ``extractor`` network (CheckpointError naming its file)."""
  if NETWORK not in bundle.networks:
    raise CheckpointError(
        f"{bundle.file}: the model bundle has no {NETWORK!r} "
        f"network (it has {', '.join(sorted(bundle.networks))}), which placement "
        "'supervised' needs; add one with experiments/train_extractor.py --model_dir")


def extract(slices: np.ndarray, *, bundle) -> dict[str, np.ndarray]:
  """:func:`extract_with` of the bundle's ``extractor`` on (S, H, W) raw normalised slices."""
  check_bundle(bundle)
  net = bundle.network(NETWORK)
  slices = np.asarray(slices, np.float32)
  if slices.ndim != 3:
    raise UsageError(f"extraction needs slices (S, H, W); got shape {slices.shape}")
  factor = 2**net.config.depth
  if slices.shape[1] % factor or slices.shape[2] % factor:
    raise UsageError(f"extraction needs H and W divisible by {factor}; got {slices.shape}")
  return extract_with(net.params, slices, model=net.model,
                      batch_size=net.config.eval_batch_size)
