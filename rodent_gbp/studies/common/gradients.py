"""Gradient images of stacks of slices under given params, on the host.

The studies read the saliency of a network other than the bundle's own
(freshly initialised, partly randomised) or per class, so they compute it
here rather than through the pipeline's raw pass:

* :func:`gradient_images`: the placers' gradient image (``guided.gradient_image``,
  ``sum_c |saliency_c|``) of every slice (``studies.sanity``,
  ``studies.refine_study``);
* :func:`gradient_stacks`: per-class ``|saliency_c|`` and their sum
  (``studies.lognormal``);
* :func:`abs_maps`: ``|GBP maps|`` of all four classes, and
  :func:`calibrated_center`, the Eq. 1 centre at which the brain sits in
  them (``studies.readings``);
* :func:`eq1_values`: what Eq. 1 z-scores of one gradient image, as
  ``y = 1 + 255 G~`` (``studies.lognormal`` and its figures).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from rodent_gbp import classes
from rodent_gbp import enhance
from rodent_gbp import guided
from rodent_gbp import parallel
from rodent_gbp.errors import DataError

#: Class index -> the name of its per-class stack in :func:`gradient_stacks`.
CLASS_NAMES = classes.TISSUE


def gradient_images(model, params, images: np.ndarray, *, method: str, score: str,
                    classes: Sequence[int] = (1, 2, 3), batch_size: int = 40) -> np.ndarray:
  """(N, H, W) gradient images of slices (N, H, W) (``guided.gradient_image``)."""
  classes = tuple(int(c) for c in classes)
  return np.asarray(parallel.run_batched(
      lambda x: guided.gradient_image(model, params, x, classes=classes, method=method,
                                      score=score),
      {"x": np.asarray(images, np.float32)[..., None]}, batch_size)["out"])


def gradient_stacks(model, params, images: np.ndarray, *, classes: Sequence[int] = (1, 2, 3),
                    method: str = "guided", batch_size: int = 40,
                    score: str = "probability") -> dict[str, np.ndarray]:
  """Per-class GBP magnitudes and their sum for the log-normal study, on the host.

  Args:
    model: the U-Net (``model.build_unet``).
    params: its params (trained or freshly initialised).
    images: raw (not skull-stripped) slices (N, H, W, 1), as the pipeline
      computes gradient images (docs/design.md#the-gradient-image).
    classes: class targets; each gives ``|saliency_c|`` under its name
      (``wm``, ``gm``, ``csf``), and ``sum`` is the paper's gradient image
      ``G = sum_c |saliency_c|`` (equal to ``guided.gradient_image``).
    method: saliency method.
    batch_size: slices per jitted call.
    score: the saliency target (``guided.SCORES``).

  Returns:
    ``{"sum": (N, H, W), "<class name>": (N, H, W), ...}`` float64 arrays.
  """
  classes = tuple(int(c) for c in classes)
  # One forward pass for every class: (B, K, H, W); padded batches, one compile.
  maps = parallel.run_batched(
      lambda images: guided.saliency(model, params, images, method=method, target=classes,
                                     score=score),
      {"images": np.asarray(images, np.float32)}, batch_size)["out"]
  maps = np.abs(np.asarray(maps, dtype=np.float64))
  out = {"sum": maps.sum(axis=1)}
  for i, c in enumerate(classes):
    out[CLASS_NAMES.get(c, f"class{c}")] = maps[:, i]
  return out


def abs_maps(model, params, images: np.ndarray, batch_size: int) -> np.ndarray:
  """|GBP maps| (S, 4, H, W) float32 of slices (S, H, W), all four classes."""
  x = images[..., None].astype(np.float32)
  fn = lambda images: jnp.abs(guided.saliency(model, params, images, target="all"))
  return parallel.run_batched(fn, {"images": x}, batch_size)["out"]


def calibrated_center(ref_raw_maps: np.ndarray, ref_masks: np.ndarray,
                      classes: tuple[int, ...]) -> float:
  """Mean Eq. 1 input z of the reference's raw-slice gradient image in its brain.

  Raises:
    DataError: the reference's brain masks are empty.
  """
  g = np.sum(ref_raw_maps[:, list(classes)], axis=1)
  z = np.asarray(enhance.enhancement_steps(g)["z"])
  m = ref_masks.astype(bool)
  if not m.any():
    raise DataError("the reference animal's brain masks are empty")
  return float(z[m].mean())


def eq1_values(g_slice: Any) -> np.ndarray | None:
  """``y = 1 + 255 G~`` of one slice (H, W), ``G~`` min-max scaled as in Eq. 1.

  ``q = ln y`` is what Eq. 1 z-scores. Returns ``None`` for a constant slice
  (no expansion defined; the pipeline maps it to a constant).
  """
  g = np.asarray(g_slice, dtype=np.float64)
  lo, hi = float(g.min()), float(g.max())
  if not hi > lo:
    return None
  return 1.0 + 255.0 * (g - lo) / (hi - lo)
