"""GBP background removal: where the stages meet (paper section 4.3, Fig. 7).

For a batch of raw test slices (B, H, W, 1) and the reference animal's brain
masks at the same slice indices:

1. ``gradient image``: GBP maps of WM, GM and CSF, magnitudes summed
   (``guided.gradient_image``), on the raw slice;
2. ``enhance``: linear expansion, log compression, z-score, Eq. 1;
3. ``template``: the reference brain mask times the reference's own gradient
   image (computed on its skull-stripped slice, scaled to max 1), Fig. 7a;
4. ``localise``: FFT cross-correlation of template and enhanced image; the
   argmax is the displacement of the test acquisition relative to the reference;
5. ``remove``: the reference mask moved by that displacement (zero-filled),
   the test image zeroed outside it;
6. ``segment again``: the U-Net on the masked slice.

Everything per slice is written for a batch and jitted once per (batch shape,
options); the template bank (every training animal's masks and gradient
images) lives on the device and is indexed inside the jitted function.

Devices: every batch is split over a ``parallel.make_mesh()`` mesh (all
devices by default; one device is a mesh of one) and params and bank are
replicated, so the same jitted functions run on 1 or N devices and hosts. A
batch the device count does not divide is padded and the padding dropped.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from rodent_gbp import correlate
from rodent_gbp import enhance
from rodent_gbp import guided
from rodent_gbp import parallel


@dataclasses.dataclass(frozen=True)
class PlacementOptions:
  """How the mask is placed; hashable so it can be a static jit argument.

  Attributes:
    method: saliency method for the test image's gradient image
      (guided | vanilla | deconvnet).
    classes: classes whose map magnitudes are summed into the gradient image.
    signal: what the template is correlated with: ``enhanced`` (Eq. 1 applied
      to the gradient image, the paper), ``gradient`` (raw gradient image) or
      ``intensity`` (the plain input slice; a baseline without saliency).
    template: ``gradient`` (mask x reference gradient image, Fig. 7a),
      ``enhanced`` (mask x enhanced reference gradient image) or ``mask``.
    center, width: Eq. 1 parameters.
  """

  method: str = "guided"
  classes: tuple[int, ...] = (1, 2, 3)
  signal: str = "enhanced"
  template: str = "gradient"
  center: float = 2.0
  width: float = 0.5

  @classmethod
  def from_config(cls, config, **changes: Any) -> "PlacementOptions":
    base = cls(method=config.saliency_method,
               classes=tuple(config.gradient_classes),
               template=config.template,
               center=config.enhance_center,
               width=config.enhance_width)
    return dataclasses.replace(base, **changes)


@dataclasses.dataclass
class TemplateBank:
  """Per-slice brain masks and gradient images of the training animals.

  Attributes:
    animal_ids: training animal ids, length A.
    masks: (A, S, H, W) bool brain masks.
    gradients: (A, S, H, W) float32 gradient images of the skull-stripped
      slices, each slice scaled to max 1 (0 where the slice has no signal).
    brain_volumes: (A,) brain voxel counts.
    reference: index of the reference animal (median brain volume).
    displacements: (A, 2) recorded in-plane displacement of each animal's
      acquisition (phantom truth, ``meta.json``); NaN where unknown.
    voxel_size: (3,) RAS voxel size in mm of the training volumes (what a
      user's scan is resampled to), or None when unknown.
  """

  animal_ids: list[str]
  masks: np.ndarray
  gradients: np.ndarray
  brain_volumes: np.ndarray
  reference: int
  displacements: np.ndarray
  voxel_size: np.ndarray | None = None

  def save(self, path) -> None:
    """Writes the bank to ``path`` (npz), atomically."""
    import os
    tmp = f"{path}.tmp.npz"
    np.savez_compressed(tmp, animal_ids=np.array(self.animal_ids),
                        masks=self.masks, gradients=self.gradients,
                        brain_volumes=self.brain_volumes,
                        reference=np.int64(self.reference),
                        displacements=self.displacements,
                        **({} if self.voxel_size is None
                           else {"voxel_size": np.asarray(self.voxel_size, np.float64)}))
    os.replace(tmp, path)

  @classmethod
  def load(cls, path) -> "TemplateBank":
    with np.load(path) as z:
      return cls(animal_ids=[str(a) for a in z["animal_ids"]],
                 masks=z["masks"].astype(bool),
                 gradients=z["gradients"].astype(np.float32),
                 brain_volumes=z["brain_volumes"],
                 reference=int(z["reference"]),
                 displacements=z["displacements"].astype(np.float64),
                 voxel_size=z["voxel_size"] if "voxel_size" in z else None)


def median_animal(brain_volumes: Sequence[float]) -> int:
  """Index of the animal with the median brain volume (lower median for even A)."""
  order = np.argsort(np.asarray(brain_volumes), kind="stable")
  return int(order[(len(order) - 1) // 2])


def scale_to_unit(g: jax.Array) -> jax.Array:
  """Scales each (H, W) slice of (..., H, W) to max 1; all-zero slices stay 0."""
  peak = jnp.max(g, axis=(-2, -1), keepdims=True)
  return jnp.where(peak > 0, g / jnp.where(peak > 0, peak, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("model", "options"))
def _bank_gradients(params, stripped: jax.Array, *, model, options: PlacementOptions):
  """Unit-scaled gradient images (B, H, W) of skull-stripped slices (B, H, W, 1)."""
  g = guided.gradient_image(model, params, stripped, classes=options.classes,
                            method=options.method)
  return scale_to_unit(g)


def _pad_to(x: np.ndarray, size: int) -> np.ndarray:
  """Pads axis 0 of ``x`` to ``size`` by repeating the last row (results dropped)."""
  if x.shape[0] == size:
    return x
  reps = np.repeat(x[-1:], size - x.shape[0], axis=0)
  return np.concatenate([x, reps], axis=0)


def build_template_bank(model, params, volumes, *, options: PlacementOptions,
                        batch_size: int = 40, mesh=None) -> TemplateBank:
  """Template bank from training volumes (``data.Volume`` with brain masks).

  The gradient image of each training slice is computed on its skull-stripped
  slice (DESIGN.md: shape template), so the template has no artifacts.
  ``mesh`` (default: all devices) splits each batch over devices.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  params = parallel.replicate(params, mesh)
  masks, grads, vols = [], [], []
  for v in volumes:
    if v.brainmask is None:
      raise ValueError(f"template animal {v.animal_id} has no brain mask")
    stripped = (v.image * v.brainmask).astype(np.float32)[..., None]
    grads.append(run_batched(
        lambda x: _bank_gradients(params, x, model=model, options=options),
        {"x": stripped}, batch_size, mesh)["out"])
    masks.append(v.brainmask.astype(bool))
    vols.append(int(v.brainmask.sum()))
  vols = np.asarray(vols)
  return TemplateBank(animal_ids=[v.animal_id for v in volumes],
                      masks=np.stack(masks), gradients=np.stack(grads).astype(np.float32),
                      brain_volumes=vols, reference=median_animal(vols),
                      displacements=np.stack([recorded_displacement(v) for v in volumes]),
                      voxel_size=_common_voxel_size(volumes))


def _common_voxel_size(volumes) -> np.ndarray | None:
  """RAS voxel size (3,) shared by the volumes; None if unknown or mixed."""
  from rodent_gbp import inference  # inference builds on this module
  sizes = [inference.voxel_sizes_ras(v.affine) for v in volumes
           if getattr(v, "affine", None) is not None]
  if not sizes or not all(np.allclose(s, sizes[0], rtol=1e-4) for s in sizes):
    return None
  return np.asarray(sizes[0], np.float64)


def recorded_displacement(volume) -> np.ndarray:
  """The in-plane displacement (dh, dw) ``meta.json`` records; NaN if unknown."""
  d = (volume.meta or {}).get("displacement_hw")
  return np.asarray(d, np.float64) if d is not None else np.full(2, np.nan)


def make_template(mask: jax.Array, gradient: jax.Array, template: str = "gradient", *,
                  center: ArrayLike = 2.0, width: ArrayLike = 0.5) -> jax.Array:
  """The shape template of Fig. 7a from reference mask and gradient image (..., H, W).

  ``template`` is ``gradient`` (mask x gradient), ``enhanced`` (mask x Eq. 1
  of the gradient with ``center`` and ``width``, which may be traced) or
  ``mask``.
  """
  mask = mask.astype(jnp.float32)
  if template == "gradient":
    return mask * gradient
  if template == "enhanced":
    return mask * enhance.enhance_gradient(gradient, center=center, width=width)
  if template == "mask":
    return mask
  raise ValueError(f"unknown template {template!r}; gradient | enhanced | mask")


def test_signal(model, params, images: jax.Array, options: PlacementOptions) -> dict[str, jax.Array]:
  """The image a template is correlated with, for raw slices (B, H, W, 1)."""
  if options.signal == "intensity":
    g = images[..., 0]
    return {"gradient": g, "signal": g}
  g = guided.gradient_image(model, params, images, classes=options.classes,
                            method=options.method)
  if options.signal == "gradient":
    return {"gradient": g, "signal": g}
  if options.signal == "enhanced":
    e = enhance.enhance_gradient(g, center=options.center, width=options.width)
    return {"gradient": g, "signal": e}
  raise ValueError(f"unknown signal {options.signal!r}; enhanced | gradient | intensity")


def place_mask(signal: jax.Array, template: jax.Array, ref_mask: jax.Array):
  """Correlates and moves the mask.

  Args:
    signal: (B, H, W) enhanced gradient images of the test slices.
    template: (B, H, W) shape templates.
    ref_mask: (B, H, W) reference masks to move.
  Returns:
    correlation (B, H, W), displacement (B, 2) int32 (dy, dx) and the placed
    mask (B, H, W) bool. An empty template gives displacement 0.
  """
  h, w = signal.shape[-2:]
  corr = correlate.cross_correlate(signal, template, mode="same")
  disp = correlate.locate(corr, image_shape=(h, w), template_shape=(h, w), mode="same")
  disp = jnp.round(disp).astype(jnp.int32)
  empty = jnp.sum(template, axis=(-2, -1)) <= 0
  disp = jnp.where(empty[:, None], 0, disp)
  placed = correlate.shift_image(ref_mask.astype(jnp.float32), disp) > 0.5
  return corr, disp, placed


def segment(model, params, images: jax.Array) -> jax.Array:
  """Labels (B, H, W) int32 of images (B, H, W, 1): argmax of the U-Net."""
  return jnp.argmax(model.apply({"params": params}, images), axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "options"))
def remove_background(params, images: jax.Array, slice_index: jax.Array,
                      bank_masks: jax.Array, bank_gradients: jax.Array,
                      reference: jax.Array, *, model, options: PlacementOptions):
  """The paper's GBP background removal and re-segmentation for a batch.

  Args:
    params: U-Net params (the same for segmentation and saliency).
    images: (B, H, W, 1) raw (not skull-stripped), normalised test slices.
    slice_index: (B,) int slice index of each test slice; the template comes
      from the reference at the same index (clipped to the bank's range).
    bank_masks: (A, S, H, W) bool template-bank masks.
    bank_gradients: (A, S, H, W) unit-scaled template-bank gradient images.
    reference: () int index of the reference animal in the bank.
    model: the U-Net module (ReLU); the guided variant is derived from it.
    options: :class:`PlacementOptions`.

  Returns:
    dict with gradient, signal, template, correlation (B, H, W) float32;
    displacement (B, 2) int32; placed (B, H, W) bool; masked (B, H, W, 1);
    labels (B, H, W) int32 (segmentation of the masked image).
  """
  s = jnp.clip(slice_index, 0, bank_masks.shape[1] - 1)
  ref_mask = bank_masks[reference, s]
  ref_grad = bank_gradients[reference, s]
  template = make_template(ref_mask, ref_grad, options.template,
                           center=options.center, width=options.width)
  sig = test_signal(model, params, images, options)
  corr, disp, placed = place_mask(sig["signal"], template, ref_mask)
  masked = images * placed[..., None].astype(images.dtype)
  labels = segment(model, params, masked)
  return {**sig, "template": template, "correlation": corr, "displacement": disp,
          "placed": placed, "masked": masked, "labels": labels}


@functools.partial(jax.jit, static_argnames=("model",))
def segment_batch(params, images: jax.Array, *, model) -> jax.Array:
  """Jitted :func:`segment`."""
  return segment(model, params, images)


def best_shift_dice(true_mask: jax.Array, ref_mask: jax.Array):
  """Best achievable Dice of ``ref_mask`` moved by any integer shift (ceiling).

  Exhaustive over every shift of the 'same' range, computed exactly with
  correlations: overlap(d) = sum_n true[n] ref[n - d] is the cross-correlation
  of true with ref; the part of the shifted mask still inside the frame is the
  correlation of an all-ones frame with ref. Both are integer counts, so the
  FFT results are rounded.

  Args:
    true_mask, ref_mask: (B, H, W) bool.
  Returns:
    (dice (B,), shift (B, 2) int32, overlap (B,), shifted_size (B,)).
  """
  t = true_mask.astype(jnp.float32)
  r = ref_mask.astype(jnp.float32)
  h, w = t.shape[-2:]
  overlap = jnp.round(correlate.cross_correlate(t, r, mode="same"))
  inside = jnp.round(correlate.cross_correlate(jnp.ones_like(t), r, mode="same"))
  denom = jnp.sum(t, axis=(-2, -1))[:, None, None] + inside
  dice = jnp.where(denom > 0, 2 * overlap / jnp.where(denom > 0, denom, 1.0), 0.0)
  flat = dice.reshape(dice.shape[0], -1)
  k = jnp.argmax(flat, axis=-1)
  # locate maps the argmax of a 'same' map to a shift, so the ceiling's shift
  # and the pipeline's displacement share one convention by construction.
  shift = correlate.locate(dice, image_shape=(h, w), template_shape=(h, w), mode="same")
  take = lambda a: a.reshape(a.shape[0], -1)[jnp.arange(a.shape[0]), k]
  return take(dice), jnp.round(shift).astype(jnp.int32), take(overlap), take(inside)


best_shift_dice_jit = jax.jit(best_shift_dice)


def run_batched(fn, arrays: Mapping[str, np.ndarray], batch_size: int,
                 mesh=None) -> dict[str, np.ndarray]:
  """Calls jitted ``fn(**batch)`` on fixed-size batches (padded), one compile.

  The last batch is padded by repeating its last row, and the padded rows
  are dropped from every output, so the results are exactly per input row.
  Each batch is split over ``mesh`` (default: all devices); ``batch_size`` is
  rounded up to a multiple of the device count (the extra rows are padding).
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  size = parallel.padded_size(batch_size, mesh.size)
  n = len(next(iter(arrays.values())))
  outs: dict[str, list[np.ndarray]] = {}
  for i in range(0, n, batch_size):
    j = min(i + batch_size, n)
    batch = {k: _pad_to(np.asarray(v[i:j]), size) for k, v in arrays.items()}
    out = fn(**parallel.shard_batch(parallel.local_share(batch, mesh), mesh))
    if not isinstance(out, dict):
      out = {"out": out}
    for k, v in parallel.to_host(out).items():
      outs.setdefault(k, []).append(np.asarray(v)[: j - i])
  return {k: np.concatenate(v) for k, v in outs.items()}


def evaluate_volume(model, params, volume, bank: TemplateBank, *,
                    options: PlacementOptions, batch_size: int,
                    num_classes: int = 4, mesh=None) -> dict[str, Any]:
  """Segments one test animal three ways and scores it against its labels.

  The three ways: no background removal (raw slices), manual removal (the
  true brain mask applied) and GBP removal (:func:`remove_background`). Also
  the placement ceiling (:func:`best_shift_dice` of the reference mask).
  Every batch is split over ``mesh`` (default: all devices, see
  ``rodent_gbp.parallel``); in a multi-host run every process calls this
  with the same volume and hands over only its rows of each batch.

  Returns:
    dict with ``counts`` {none, manual, gbp: (C, 4)}, ``brain_counts``
    {gbp, gbp_ceiling: (4,)} (TP, FP, FN, TN), per-slice arrays (labels of each
    way, placed masks, displacement, true relative displacement, ceiling
    shift) and the gradient / enhanced images for figures.
  """
  from rodent_gbp import metrics

  if volume.label is None or volume.brainmask is None:
    raise ValueError(f"animal {volume.animal_id}: evaluation needs labels and a brain mask")
  images = volume.image[..., None].astype(np.float32)
  stripped = (volume.image * volume.brainmask)[..., None].astype(np.float32)
  n = images.shape[0]
  slice_index = np.arange(n, dtype=np.int32)
  mesh = parallel.make_mesh() if mesh is None else mesh
  params = parallel.replicate(params, mesh)
  seg = functools.partial(segment_batch, params, model=model)
  none_labels = run_batched(lambda images: seg(images), {"images": images}, batch_size,
                             mesh)["out"]
  manual_labels = run_batched(lambda images: seg(images), {"images": stripped}, batch_size,
                               mesh)["out"]
  bank_masks, bank_grads, ref = parallel.replicate(
      (bank.masks, bank.gradients, np.int32(bank.reference)), mesh)
  gbp = run_batched(
      lambda images, slice_index: remove_background(
          params, images, slice_index, bank_masks, bank_grads, ref,
          model=model, options=options),
      {"images": images, "slice_index": slice_index}, batch_size, mesh)
  ref_masks = bank.masks[bank.reference, np.clip(slice_index, 0, bank.masks.shape[1] - 1)]
  ceil = run_batched(
      lambda t, r: dict(zip(("dice", "shift", "overlap", "inside"), best_shift_dice_jit(t, r))),
      {"t": volume.brainmask, "r": ref_masks}, batch_size, mesh)

  truth = volume.label.astype(np.int32)
  counts = {way: np.asarray(metrics.confusion_counts(lab, truth, num_classes))
            for way, lab in (("none", none_labels), ("manual", manual_labels),
                             ("gbp", gbp["labels"]))}
  hw = truth.shape[1] * truth.shape[2]
  true_size = volume.brainmask.reshape(n, -1).sum(-1)
  tp = ceil["overlap"].astype(np.int64)
  fp = ceil["inside"].astype(np.int64) - tp
  fn = true_size.astype(np.int64) - tp
  ceiling_counts = np.array([tp.sum(), fp.sum(), fn.sum(), (hw - tp - fp - fn).sum()])
  rel = recorded_displacement(volume) - bank.displacements[bank.reference]
  return {
      "animal_id": volume.animal_id,
      "counts": counts,
      "brain_counts": {
          "gbp": np.asarray(metrics.binary_counts(gbp["placed"], volume.brainmask)),
          "gbp_ceiling": ceiling_counts,
      },
      "labels": {"none": none_labels, "manual": manual_labels, "gbp": gbp["labels"]},
      "placed": gbp["placed"],
      "displacement": gbp["displacement"],
      "true_displacement": np.broadcast_to(rel, (n, 2)),
      "ceiling_dice": ceil["dice"],
      "ceiling_shift": ceil["shift"],
      "gradient": gbp["gradient"],
      "signal": gbp["signal"],
      "template": gbp["template"],
      "correlation": gbp["correlation"],
  }
