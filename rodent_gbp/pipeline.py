"""GBP background removal: where the stages meet (paper section 4.3, Fig. 7).

For the raw (not skull-stripped), normalised slices (S, H, W) of one volume on
the model grid:

1. ``raw pass``: the U-Net's labels of the raw slices (no removal, Fig. 4) and
   the GBP gradient image (WM, GM and CSF maps' magnitudes summed,
   ``guided.gradient_image``), jitted once per batch shape;
2. ``place``: a placer of ``rodent_gbp.placement`` (``gbp``: enhance by
   Eq. 1, correlate with the reference template, move the reference mask;
   ``gbp_improved``, ``intensity``) gives the removal mask;
3. ``remove``: the slices zeroed outside that mask;
4. ``segment again``: the U-Net on the masked slices.

Devices: every batch is split over a ``parallel.make_mesh()`` mesh (all
devices by default; one device is a mesh of one) and params are replicated,
so the same jitted functions run on 1 or N devices and hosts. A batch the
device count does not divide is padded and the padding dropped.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import guided
from rodent_gbp import parallel
from rodent_gbp import placement as placement_lib


def segment(model, params, images: jax.Array) -> jax.Array:
  """Labels (B, H, W) int32 of images (B, H, W, 1): argmax of the U-Net."""
  return jnp.argmax(model.apply({"params": params}, images), axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model",))
def segment_batch(params, images: jax.Array, *, model) -> jax.Array:
  """Jitted :func:`segment`."""
  return segment(model, params, images)


@functools.partial(jax.jit, static_argnames=("model", "method", "classes", "score"))
def raw_pass_batch(params, images: jax.Array, *, model, method: str = "guided",
                   classes: tuple[int, ...] = (1, 2, 3),
                   score: str = "probability") -> dict[str, jax.Array]:
  """Labels (B, H, W) and gradient image (B, H, W) of raw slices (B, H, W, 1).

  One forward pass serves both: the guided ReLU's forward is the ReLU's, so
  the logits the saliency is pulled back through are the segmentation's.
  ``method``, ``classes`` and ``score``: the gradient image's reading (the
  tissue config's ``saliency_method``, ``gradient_classes``, ``saliency_score``
  in :func:`raw_pass`).
  """
  g, logits = guided.gradient_image_and_logits(model, params, images, classes=classes,
                                               method=method, score=score)
  return {"labels": jnp.argmax(logits, axis=-1).astype(jnp.int32), "gradient": g}


def _over_slices(batch_fn, slices: np.ndarray, bundle, batch_size, mesh):
  """``batch_fn(params, images, model=...)`` over slices (S, H, W) in fixed-size batches."""
  net = bundle.network("tissue")
  mesh = parallel.make_mesh() if mesh is None else mesh
  params = parallel.replicate(net.params, mesh)
  return parallel.run_batched(
      lambda images: batch_fn(params, images, model=net.model),
      {"images": np.asarray(slices, np.float32)[..., None]},
      batch_size or net.config.eval_batch_size, mesh)


def segment_slices(slices: np.ndarray, *, bundle, batch_size: int | None = None,
                   mesh=None) -> np.ndarray:
  """Labels (S, H, W) int32 of slices (S, H, W) by the bundle's tissue network."""
  return _over_slices(segment_batch, slices, bundle, batch_size, mesh)["out"]


def raw_pass(slices: np.ndarray, *, bundle, batch_size: int | None = None,
             mesh=None) -> dict[str, np.ndarray]:
  """:func:`raw_pass_batch` over the slices (S, H, W) of one volume, with the
  tissue config's reading (``placement.raw_reading``)."""
  method, classes, score = placement_lib.raw_reading(bundle.network("tissue").config)
  return _over_slices(functools.partial(raw_pass_batch, method=method, classes=classes,
                                        score=score), slices, bundle, batch_size, mesh)


@dataclasses.dataclass
class Removal:
  """One volume through the pipeline with one placer.

  Attributes:
    placer: the placer's name.
    placement: its :class:`placement.Placement` (``mask`` is the removal mask).
    labels: (S, H, W) int32 segmentation of the masked slices.
  """

  placer: str
  placement: placement_lib.Placement
  labels: np.ndarray


def remove_and_segment(slices: np.ndarray, placed: placement_lib.Placement, *, bundle,
                       batch_size: int | None = None, mesh=None) -> np.ndarray:
  """Labels (S, H, W) of the slices zeroed outside ``placed.mask`` (steps 3-4).

  Pixels outside the removal mask are background by definition of the
  removal; the network's labels of the zeroed pixels there are discarded.
  """
  mask = np.asarray(placed.mask, bool)
  masked = np.asarray(slices, np.float32) * mask
  labels = segment_slices(masked, bundle=bundle, batch_size=batch_size, mesh=mesh)
  return np.where(mask, labels, 0).astype(np.int32)


def run(slices: np.ndarray, placers, *, bundle, slice_index: np.ndarray | None = None,
        batch_size: int | None = None, raw: dict | None = None
        ) -> tuple[dict[str, np.ndarray], dict[str, Removal]]:
  """The whole pipeline for one volume and each of ``placers`` (names).

  One raw pass serves the no-removal labels and every saliency placer.

  Returns:
    (raw pass ``{"labels", "gradient"}``, placer name -> :class:`Removal`).
  """
  raw = raw_pass(slices, bundle=bundle, batch_size=batch_size) if raw is None else raw
  out = {}
  for name in placers:
    placed = placement_lib.place(name, slices, bundle=bundle, slice_index=slice_index,
                                 gradient=raw["gradient"])
    out[name] = Removal(name, placed, remove_and_segment(slices, placed, bundle=bundle,
                                                         batch_size=batch_size))
  return raw, out
