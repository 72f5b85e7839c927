"""The Dice that training minimises, and the Dice it is judged by (paper section 3.1).

* :func:`dice_loss`: soft Dice, pooled over the batch (the paper's loss).
* :func:`segmentation_loss`: the loss a config names, ``"dice"`` or
  ``"dice_ce"`` (soft Dice + mean pixel cross-entropy, the ``default``).
* :func:`eval_step` / :func:`evaluate`: hard (arg-max) Dice of a set of
  slices from per-slice confusion counts, pooled and per animal
  (``metrics.dice_from_counts``: NaN for a class absent from truth and
  prediction).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rodent_gbp import classes
from rodent_gbp import metrics
from rodent_gbp import model as model_lib
from rodent_gbp import parallel

PyTree = Any


def dice_loss(probs: jax.Array, onehot: jax.Array, *, smooth: float = 1.0,
              include_background: bool = True) -> jax.Array:
  """Soft Dice loss, 1 - mean over classes of the batch-pooled soft Dice.

  For each class c, with sums over the batch and all pixels::

    D_c = (2 sum(p_c g_c) + smooth) / (sum(p_c) + sum(g_c) + smooth)
    loss = 1 - mean_c D_c

  Classes: all four (background included) by default, as a Keras Dice over the
  softmax output does; ``include_background=False`` averages WM, GM, CSF only.
  Batch: pooled (one D_c per class for the whole batch), not averaged per image,
  so a class missing from one slice does not dominate. A class absent from both
  the truth and the prediction gives D_c = smooth / smooth = 1 (no NaN); absent
  from the truth only, D_c -> 0 and the loss pushes its probability down.

  Args:
    probs: (B, H, W, C) softmax probabilities.
    onehot: (B, H, W, C) one-hot labels (float).
    smooth: additive smoothing; keeps D_c finite for absent classes.
    include_background: whether channel 0 enters the mean.

  Returns:
    Scalar loss in [0, 1].
  """
  if probs.shape != onehot.shape or probs.ndim != 4:
    raise ValueError(
        f"dice_loss needs probs and onehot of equal shape (B, H, W, C); got "
        f"{probs.shape} and {onehot.shape}")
  onehot = onehot.astype(probs.dtype)
  axes = (0, 1, 2)
  intersection = jnp.sum(probs * onehot, axis=axes)
  total = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
  dice = (2.0 * intersection + smooth) / (total + smooth)
  if not include_background:
    dice = dice[1:]
  return 1.0 - jnp.mean(dice)


def segmentation_loss(logits: jax.Array, labels: jax.Array, loss: str
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The training loss named by ``loss`` ("dice" or "dice_ce").

  Args:
    logits: (B, H, W, C).
    labels: (B, H, W) int class indices.
    loss: "dice" or "dice_ce".

  Returns:
    (scalar loss, dict of its terms).
  """
  num_classes = logits.shape[-1]
  probs = jax.nn.softmax(logits, axis=-1)
  onehot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  dice = dice_loss(probs, onehot)
  if loss == "dice":
    return dice, {"dice_loss": dice}
  if loss == "dice_ce":
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return dice + ce, {"dice_loss": dice, "ce": ce}
  raise ValueError(f"unknown loss {loss!r}; use 'dice' or 'dice_ce'")


def eval_step(params: PyTree, batch: dict[str, jax.Array], *, model: model_lib.UNet
              ) -> dict[str, jax.Array]:
  """Per-slice confusion counts of the arg-max segmentation.

  Args:
    params: U-Net params.
    batch: ``image`` (B, H, W, 1), ``label`` (B, H, W) int; optional
      ``brainmask`` (B, H, W) bool: if given, the input is multiplied by it
      first (manual background removal: the true mask makes the skull-stripped
      image); optional ``valid`` (B,) bool: padding slices (False) count zero.
    model: the U-Net.

  Returns:
    ``counts`` (B, C, 3) int32 [TP, FP, FN] per slice and class (one vs rest),
    ``dice`` (C,) float32 Dice pooled over the valid slices (NaN for a class
    absent from truth and prediction), ``pred`` (B, H, W) int32.
  """
  image, label = batch["image"], batch["label"]
  if "brainmask" in batch:
    image = image * batch["brainmask"][..., None].astype(image.dtype)
  logits = model.apply({"params": params}, image)
  num_classes = logits.shape[-1]
  pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  p = jax.nn.one_hot(pred, num_classes, dtype=jnp.int32)
  t = jax.nn.one_hot(label, num_classes, dtype=jnp.int32)
  if "valid" in batch:
    w = batch["valid"].astype(jnp.int32)[:, None, None, None]
    p, t = p * w, t * w
  tp = jnp.sum(p * t, axis=(1, 2))
  fp = jnp.sum(p * (1 - t), axis=(1, 2))
  fn = jnp.sum((1 - p) * t, axis=(1, 2))
  counts = jnp.stack([tp, fp, fn], axis=-1)
  return {"counts": counts, "dice": metrics.dice_from_counts(jnp.sum(counts, axis=0)),
          "pred": pred}


def _eval_batches(arrays: dict[str, np.ndarray], image_key: str, batch_size: int
                  ) -> Iterator[dict[str, np.ndarray]]:
  """All slices in order, the last batch padded (``valid`` marks real ones)."""
  n = arrays["label"].shape[0]
  for start in range(0, n, batch_size):
    idx = np.arange(start, start + batch_size)
    valid = idx < n
    idx = np.minimum(idx, n - 1)
    yield {"image": arrays[image_key][idx], "label": arrays["label"][idx],
           "valid": valid}


def evaluate(eval_fn: Callable, params: PyTree, arrays: dict[str, np.ndarray], *,
             batch_size: int, image_key: str = "stripped",
             class_names: tuple[str, ...] = classes.NAMES,
             mesh=None) -> dict:
  """Dice per class, pooled over all slices and per animal.

  ``image_key="stripped"`` is the manual background removal (true brain mask
  applied to the input); ``"image"`` feeds the raw slices.

  Args:
    eval_fn: jitted ``functools.partial(eval_step, model=model)``.
    params: U-Net params.
    arrays: ``stack_slices`` output (needs ``label``, ``animal`` and ``image_key``).
    batch_size: slices per call (rounded up to a multiple of the device count).
    mesh: devices to split each batch over (default: all).

  Returns:
    dict with ``dice`` {class: pooled Dice}, ``dice_per_animal`` {animal index:
    {class: Dice}}, ``dice_mean_over_animals`` {class: nanmean over animals} and
    ``mean_tissue_dice`` (mean of WM, GM, CSF over animals).
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  params = parallel.replicate(params, mesh)
  counts = []
  for batch in _eval_batches(arrays, image_key, parallel.padded_size(batch_size, mesh.size)):
    out = eval_fn(params, parallel.shard_batch(parallel.local_share(batch, mesh), mesh))
    counts.append(parallel.to_host(out["counts"])[batch["valid"]])
  counts = np.concatenate(counts).astype(np.int64)  # (N, C, 3)
  names = class_names[:counts.shape[1]]
  per_animal = {}
  for a in np.unique(arrays["animal"]):
    d = metrics.dice_from_counts(counts[arrays["animal"] == a].sum(axis=0))
    per_animal[int(a)] = dict(zip(names, map(float, d)))
  mean_animals = {c: float(np.nanmean([v[c] for v in per_animal.values()]))
                  for c in names}
  pooled = dict(zip(names, map(float, metrics.dice_from_counts(counts.sum(axis=0)))))
  tissue = [mean_animals[c] for c in names[1:]]
  return {"dice": pooled, "dice_per_animal": per_animal,
          "dice_mean_over_animals": mean_animals,
          "mean_tissue_dice": float(np.nanmean(tissue))}
