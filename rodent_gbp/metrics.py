"""Segmentation metrics from confusion counts (paper Tables 1-2; nnU-Net style).

Every metric derives from per-class one-vs-rest confusion counts over pixels,
``[TP, FP, FN, TN]``: pixel p counts for class c as predicted-positive when
``pred[p] == c`` and truth-positive when ``truth[p] == c``. Counts add, so they
are pooled over all slices of one animal by summation before any ratio is
taken (docs/design.md#metrics); metrics are then computed per animal and the
tables give the mean over animals.

  accuracy    (TP + TN) / (TP + FP + FN + TN)
  specificity TN / (TN + FP)
  sensitivity TP / (TP + FN)
  precision   TP / (TP + FP)
  dsc         2 TP / (2 TP + FP + FN)

(The paper's "specificity" column behaves like precision for small classes;
both are reported under their own names.)

Empty-mask policy: a metric is NaN exactly when its denominator is 0. So a
class absent from both truth and prediction gives NaN dsc, sensitivity and
precision (nothing to score), a class absent from the truth only gives NaN
sensitivity (precision 0, dsc 0), a class never predicted gives NaN precision
(sensitivity 0, dsc 0). NaNs are left out of means over animals (nanmean); a
mean over no finite value is NaN.

Integer range: ``confusion_counts`` runs in JAX, whose default integers are
int32, so one call is exact for fewer than 2**31 - 1 pixels (an animal is
~4e5). Pool larger sets by summing per-call counts on the host:
``pool_counts`` and ``mean_over_animals`` sum in int64.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from rodent_gbp import classes

# Label convention (CONTRACT.md): 0 background, 1 WM, 2 GM, 3 CSF.
CLASS_NAMES: dict[int, str] = classes.TISSUE
METRIC_NAMES: tuple[str, ...] = ("accuracy", "specificity", "sensitivity",
                                 "precision", "dsc")


def binary_counts(pred_mask: ArrayLike, true_mask: ArrayLike, *,
                  axis: int | tuple[int, ...] | None = None) -> jax.Array:
  """Confusion counts of two masks of the same shape (nonzero = positive).

  Args:
    pred_mask: (...) predicted mask, e.g. the placed brain mask (S, H, W).
    true_mask: (...) true mask of the same shape.
    axis: the axes pooled (default all), e.g. ``(-2, -1)`` for per-slice
      counts of (S, H, W) masks.

  Returns:
    int32 (..., 4) ``[TP, FP, FN, TN]``: (4,) when every axis is pooled.
    Jittable.
  """
  # astype(bool) is "nonzero" for any dtype, without a strict-promotion compare.
  pred = jnp.asarray(pred_mask).astype(jnp.bool_)
  true = jnp.asarray(true_mask).astype(jnp.bool_)
  if pred.shape != true.shape:
    raise ValueError(f"mask shapes differ: {pred.shape} vs {true.shape}")
  tp = jnp.sum(pred & true, axis=axis, dtype=jnp.int32)
  fp = jnp.sum(pred & ~true, axis=axis, dtype=jnp.int32)
  fn = jnp.sum(~pred & true, axis=axis, dtype=jnp.int32)
  tn = jnp.sum(~pred & ~true, axis=axis, dtype=jnp.int32)
  return jnp.stack([tp, fp, fn, tn], axis=-1)


def dice_from_counts(counts: ArrayLike, *, empty: float = float("nan")) -> jax.Array:
  """DSC ``2 TP / (2 TP + FP + FN)`` of (..., 4) counts; jittable.

  ``empty`` is returned where the denominator is 0 (truth and prediction
  both empty): NaN by the module's policy; ``empty=0.0`` where a search needs
  a number to rank (an empty candidate never wins).
  """
  counts = jnp.asarray(counts)
  tp, fp, fn = (counts[..., i].astype(jnp.float32) for i in range(3))
  den = 2.0 * tp + fp + fn
  return jnp.where(den > 0, 2.0 * tp / jnp.where(den > 0, den, 1.0), empty)


def slice_dice(pred_mask: ArrayLike, true_mask: ArrayLike) -> np.ndarray:
  """Per-slice DSC (S,) of (S, H, W) masks, on the host; NaN where both are empty."""
  return np.asarray(dice_from_counts(binary_counts(pred_mask, true_mask, axis=(-2, -1))),
                    np.float64)


def confusion_counts(pred: ArrayLike, truth: ArrayLike,
                     num_classes: int = 4) -> jax.Array:
  """Per-class one-vs-rest confusion counts of two label maps.

  Args:
    pred: (...) integer predicted labels, e.g. (S, H, W) of one animal.
    truth: (...) integer true labels, same shape.
    num_classes: C; classes are 0..C-1 (labels outside that range count as
      negative for every class).

  Returns:
    int32 (C, 4), row c = ``[TP, FP, FN, TN]`` of class c against the rest,
    pooled over all given pixels. Jittable with ``num_classes`` static.
  """
  pred = jnp.asarray(pred)
  truth = jnp.asarray(truth)
  if pred.shape != truth.shape:
    raise ValueError(f"label shapes differ: {pred.shape} vs {truth.shape}")
  classes = jnp.arange(num_classes, dtype=jnp.int32)
  # (N, C) one-hot indicators; explicit reshapes keep rank promotion strict.
  pred_hot = pred.reshape(-1, 1).astype(jnp.int32) == classes.reshape(1, -1)
  true_hot = truth.reshape(-1, 1).astype(jnp.int32) == classes.reshape(1, -1)
  tp = jnp.sum(pred_hot & true_hot, axis=0, dtype=jnp.int32)
  fp = jnp.sum(pred_hot & ~true_hot, axis=0, dtype=jnp.int32)
  fn = jnp.sum(~pred_hot & true_hot, axis=0, dtype=jnp.int32)
  tn = jnp.int32(pred.size) - tp - fp - fn
  return jnp.stack([tp, fp, fn, tn], axis=-1)


def pool_counts(counts: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
  """Sums counts over everything but the trailing core, in int64 on the host.

  Args:
    counts: a sequence of equally shaped count arrays (per-slice or per-batch
      (4,) or (C, 4)), or one array whose *first* axis is pooled, e.g.
      (S, C, 4) -> (C, 4).

  Returns:
    int64 numpy array of one item's shape.
  """
  stacked = np.stack([np.asarray(c, np.int64) for c in counts])
  return stacked.sum(axis=0)


def metrics_from_counts(counts: ArrayLike) -> dict[str, np.ndarray]:
  """Accuracy, specificity, sensitivity, precision and DSC from counts.

  Args:
    counts: (..., 4) ``[TP, FP, FN, TN]``, e.g. (4,) binary or (C, 4) per class.

  Returns:
    dict name -> float64 numpy array of shape (...) (0-d for (4,) input);
    NaN where a denominator is 0 (module doc: empty-mask policy). Host-side.
  """
  counts = np.asarray(counts, np.float64)
  if counts.shape[-1:] != (4,):
    raise ValueError(f"counts must be (..., 4) [TP, FP, FN, TN], got {counts.shape}")
  tp, fp, fn, tn = np.moveaxis(counts, -1, 0)

  def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

  return {
      "accuracy": ratio(tp + tn, tp + fp + fn + tn),
      "specificity": ratio(tn, tn + fp),
      "sensitivity": ratio(tp, tp + fn),
      "precision": ratio(tp, tp + fp),
      "dsc": ratio(2.0 * tp, 2.0 * tp + fp + fn),
  }


def _nanmean(values: np.ndarray, axis: int = 0) -> np.ndarray:
  """nanmean without the all-NaN RuntimeWarning (the result is NaN there)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=RuntimeWarning)
    return np.nanmean(values, axis=axis)


def mean_over_animals(
    counts_by_animal: Mapping[str, ArrayLike | Sequence[ArrayLike]],
) -> dict[str, Any]:
  """Per-animal metrics from pooled counts, and their mean over animals.

  Args:
    counts_by_animal: animal id -> counts of that animal: either one (4,) or
      (C, 4) array (already pooled over its slices), or a list/tuple of such
      arrays (e.g. per slice or per batch), which are summed (int64) first.
      All animals must give the same shape.

  Returns:
    dict with ``"counts"`` (animal -> pooled int64 counts), ``"per_animal"``
    (animal -> ``metrics_from_counts`` dict), ``"mean"`` (metric -> nanmean
    over animals, shape (C,) or ()) and ``"n_valid"`` (metric -> number of
    animals with a finite value, the denominator of each mean).
  """
  if not counts_by_animal:
    raise ValueError("no animals given")
  pooled = {}
  for animal, counts in counts_by_animal.items():
    if isinstance(counts, (list, tuple)):
      pooled[animal] = pool_counts(counts)
    else:
      pooled[animal] = np.asarray(counts, np.int64)
  shapes = {c.shape for c in pooled.values()}
  if len(shapes) != 1:
    raise ValueError(f"animals' counts have different shapes: {shapes}")
  per_animal = {a: metrics_from_counts(c) for a, c in pooled.items()}
  mean, n_valid = {}, {}
  for name in METRIC_NAMES:
    values = np.stack([per_animal[a][name] for a in pooled])
    mean[name] = _nanmean(values, axis=0)
    n_valid[name] = np.isfinite(values).sum(axis=0)
  return {"counts": pooled, "per_animal": per_animal, "mean": mean,
          "n_valid": n_valid}


def metrics_table(metrics: Mapping[str, ArrayLike],
                  class_names: Mapping[int, str] | None = None,
                  ) -> dict[str, dict[str, float]]:
  """Per-class metric arrays -> ``{class name: {metric: float}}`` for JSON.

  Args:
    metrics: metric name -> (C,) array (e.g. ``mean_over_animals(...)["mean"]``
      or one animal's ``metrics_from_counts`` of (C, 4) counts).
    class_names: class index -> row name; default ``CLASS_NAMES``
      ({1: "wm", 2: "gm", 3: "csf"}, background left out).

  Returns:
    ``{"wm": {"accuracy": ..., "specificity": ..., "sensitivity": ...,
    "precision": ..., "dsc": ...}, "gm": ..., "csf": ...}`` as Python floats
    (NaN kept as float("nan")).
  """
  names = CLASS_NAMES if class_names is None else class_names
  table = {}
  for index, name in names.items():
    table[name] = {m: float(np.asarray(metrics[m])[index]) for m in METRIC_NAMES
                   if m in metrics}
  return table


def scalar_row(metrics: Mapping[str, ArrayLike]) -> dict[str, float]:
  """0-d metrics (from (4,) counts, e.g. the brain row) -> {metric: float}."""
  return {m: float(np.asarray(metrics[m])) for m in METRIC_NAMES if m in metrics}


def class_table(counts_per_animal: Sequence[ArrayLike]) -> dict[str, dict[str, float]]:
  """Results-table rows from per-animal pooled (C, 4) counts (mean over animals)."""
  mean = mean_over_animals(dict(enumerate(counts_per_animal)))["mean"]
  return metrics_table(mean)


def binary_row(counts_per_animal: Sequence[ArrayLike]) -> dict[str, float]:
  """A brain row from per-animal pooled (4,) counts (mean over animals)."""
  return scalar_row(mean_over_animals(dict(enumerate(counts_per_animal)))["mean"])


# --- boundary distances (rodent-gbp-segment --truth) -------------------------


def boundary(mask: np.ndarray) -> np.ndarray:
  """The voxels of ``mask`` with a face neighbour outside it (the image edge is outside).

  Args:
    mask: boolean array of any rank.

  Returns:
    bool array of ``mask``'s shape.
  """
  from scipy import ndimage
  mask = np.asarray(mask, bool)
  inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(
      mask.ndim, 1), border_value=0)
  return mask & ~inner


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
                      ) -> np.ndarray:
  """Distances (mm) from each boundary voxel of ``a`` to the nearest of ``b``'s.

  Args:
    a, b: boolean masks of one shape, both non-empty.
    spacing: voxel size per axis (mm), the grid's own geometry.

  Returns:
    (number of boundary voxels of a,) float64.
  """
  from scipy import ndimage
  edge_a, edge_b = boundary(a), boundary(b)
  # Euclidean distance of every voxel to the nearest boundary voxel of b.
  to_b = ndimage.distance_transform_edt(~edge_b, sampling=np.asarray(spacing, np.float64))
  return to_b[edge_a]


def mask_dice(pred: ArrayLike, truth: ArrayLike) -> float:
  """Dice of two boolean masks of one shape (NaN when both are empty)."""
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  total = int(pred.sum()) + int(truth.sum())
  return 2 * int((pred & truth).sum()) / total if total else float("nan")


def hd95(pred: ArrayLike, truth: ArrayLike, spacing: Sequence[float]) -> float:
  """95th-percentile symmetric boundary distance (mm) of two masks.

  The distances from every boundary voxel of ``pred`` to ``truth``'s boundary
  and from every boundary voxel of ``truth`` to ``pred``'s are pooled, and
  their 95th percentile (numpy's linear interpolation) is returned. A
  boundary voxel is a mask voxel with a face neighbour outside the mask.

  Args:
    pred, truth: boolean masks of one shape (any rank).
    spacing: voxel size per axis (mm).

  Returns:
    The distance in mm; 0.0 when both are empty, inf when exactly one is.
  """
  pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
  if pred.shape != truth.shape:
    raise ValueError(f"masks of shapes {pred.shape} and {truth.shape}")
  if len(spacing) != pred.ndim:
    raise ValueError(f"spacing {tuple(spacing)} for a rank-{pred.ndim} mask")
  if not pred.any() and not truth.any():
    return 0.0
  if not pred.any() or not truth.any():
    return float("inf")
  pooled = np.concatenate([surface_distances(pred, truth, spacing),
                           surface_distances(truth, pred, spacing)])
  return float(np.percentile(pooled, 95))
