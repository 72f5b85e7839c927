"""The template bank: the training animals' brain masks and gradient images per slice.

What every placer draws its templates from (docs/design.md#template-bank-and-reference, the shape
template). Built once from the training volumes after training, saved in the
model bundle, so a user's scan needs nothing else:

* ``masks`` (A, S, H, W): brain masks of the A training animals;
* ``gradients``: their GBP gradient images on the *skull-stripped* slices,
  each slice scaled to max 1 (the paper's template, Fig. 7a);
* ``appearance``: the log GBP gradient image of the *raw* slices (skull,
  muscle and all) for some animals (by default the reference only), what a
  test slice looks like around the brain; the improved placement locates
  with it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import data
from rodent_gbp import enhance
from rodent_gbp import fileio
from rodent_gbp import guided
from rodent_gbp import nifti
from rodent_gbp import parallel
from rodent_gbp.errors import CheckpointError, DataError
from rodent_gbp import scan


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
    appearance: (A, S, H, W) float32 log GBP gradient images of the raw
      slices, zero for animals not computed (see ``appearance_available``).
    appearance_available: (A,) bool.
  """

  animal_ids: list[str]
  masks: np.ndarray
  gradients: np.ndarray
  brain_volumes: np.ndarray
  reference: int
  displacements: np.ndarray
  appearance: np.ndarray | None = None
  appearance_available: np.ndarray | None = None

  def save(self, path) -> None:
    """Writes the bank to ``path`` (npz), atomically."""
    extra = {}
    if self.appearance is not None:
      extra = {"appearance": np.asarray(self.appearance, np.float32),
               "appearance_available": np.asarray(self.appearance_available, bool)}
    with fileio.atomic_path(path, suffix=".npz") as tmp:
      np.savez_compressed(tmp, animal_ids=np.array(self.animal_ids), masks=self.masks,
                          gradients=self.gradients, brain_volumes=self.brain_volumes,
                          reference=np.int64(self.reference),
                          displacements=self.displacements, **extra)

  @classmethod
  def load(cls, path) -> "TemplateBank":
    """Reads and checks a bank file.

    Raises:
      CheckpointError: naming the file, when it is damaged or inconsistent.
    """
    try:
      with np.load(path) as z:
        bank = cls(animal_ids=[str(a) for a in z["animal_ids"]],
                   masks=z["masks"].astype(bool),
                   gradients=z["gradients"].astype(np.float32),
                   brain_volumes=z["brain_volumes"], reference=int(z["reference"]),
                   displacements=z["displacements"].astype(np.float64),
                   appearance=(z["appearance"].astype(np.float32)
                               if "appearance" in z.files else None),
                   appearance_available=(z["appearance_available"].astype(bool)
                                         if "appearance_available" in z.files else None))
    except Exception as e:  # zipfile, pickle and key errors of a damaged file.
      raise CheckpointError(f"{path}: corrupt template bank ({type(e).__name__}: {e})") from None
    m, g = bank.masks, bank.gradients
    if (m.ndim != 4 or g.shape != m.shape or 0 in m.shape
        or not 0 <= bank.reference < m.shape[0] or len(bank.animal_ids) != m.shape[0]):
      raise CheckpointError(
          f"{path}: inconsistent template bank (masks {m.shape}, gradients {g.shape}, "
          f"reference {bank.reference})")
    app, avail = bank.appearance, bank.appearance_available
    if app is not None and (avail is None or app.shape != m.shape
                            or avail.shape != m.shape[:1] or not avail[bank.reference]):
      raise CheckpointError(
          f"{path}: inconsistent appearance (shape {app.shape}, masks {m.shape}, "
          "or none for the reference animal)")
    return bank


def median_animal(brain_volumes: Sequence[float]) -> int:
  """Index of the animal with the median brain volume (lower median for even A)."""
  order = np.argsort(np.asarray(brain_volumes), kind="stable")
  return int(order[(len(order) - 1) // 2])


def scale_to_unit(g: jax.Array) -> jax.Array:
  """Scales each (H, W) slice of (..., H, W) to max 1; all-zero slices stay 0."""
  peak = jnp.max(g, axis=(-2, -1), keepdims=True)
  return jnp.where(peak > 0, g / jnp.where(peak > 0, peak, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("model", "classes", "method", "score"))
def unit_gradient_image(params, images: jax.Array, *, model, classes=(1, 2, 3),
                        method: str = "guided", score: str = "probability") -> jax.Array:
  """Unit-scaled gradient images (B, H, W) of slices (B, H, W, 1) (the bank's kind)."""
  g = guided.gradient_image(model, params, images, classes=classes, method=method,
                            score=score)
  return scale_to_unit(g)


def recorded_displacement(volume) -> np.ndarray:
  """The in-plane displacement (dh, dw) ``meta.json`` records; NaN if unknown."""
  d = (volume.meta or {}).get("displacement_hw")
  return np.asarray(d, np.float64) if d is not None else np.full(2, np.nan)


def _gradients(model, params, images: np.ndarray, *, classes, method, score, batch_size,
               mesh):
  return parallel.run_batched(
      lambda x: unit_gradient_image(params, x, model=model, classes=classes, method=method,
                                    score=score),
      {"x": images}, batch_size, mesh)["out"]


def build_template_bank(model, params, volumes: Sequence[data.Volume], *,
                        classes: Sequence[int] = (1, 2, 3), method: str = "guided",
                        score: str = "probability",
                        appearance_animals: Sequence[int] | None = None,
                        batch_size: int = 40, mesh=None) -> TemplateBank:
  """Template bank from training volumes (with brain masks).

  The gradient image of each training slice is computed on its skull-stripped
  slice (docs/design.md#shape-template), so the template has no artifacts; the
  appearance on the raw slices of ``appearance_animals`` (bank indices;
  default the reference only: each animal costs a saliency pass).
  ``mesh`` (default: all devices) splits each batch over devices. ``method``,
  ``classes`` and ``score`` (``guided.SCORES``) are the gradient image's, as
  a config's ``saliency_method``, ``gradient_classes`` and ``saliency_score``.

  Raises:
    DataError: a training animal has no brain mask.
  """
  if score not in guided.SCORES:
    raise ValueError(f"score must be one of {guided.SCORES}, got {score!r}")
  mesh = parallel.make_mesh() if mesh is None else mesh
  params = parallel.replicate(params, mesh)
  classes = tuple(classes)
  # Animals with fewer slices (mouse_epi: 16 or 17) fill the bank's rows by
  # relative anterior-posterior position (scan.bank_slice_index).
  n_bank = max(len(v.image) for v in volumes) if volumes else 0
  rows = {v.animal_id: scan.bank_slice_index(n_bank, len(v.image)) for v in volumes}
  masks, grads, vols = [], [], []
  for v in volumes:
    if v.brainmask is None:
      raise DataError(f"template animal {v.animal_id}: no brain mask")
    stripped = (v.image * v.brainmask).astype(np.float32)[..., None]
    grads.append(_gradients(model, params, stripped, classes=classes, method=method, score=score,
                            batch_size=batch_size, mesh=mesh)[rows[v.animal_id]])
    masks.append(v.brainmask.astype(bool)[rows[v.animal_id]])
    vols.append(int(v.brainmask.sum()))
  vols = np.asarray(vols)
  ref = median_animal(vols)
  masks_a = np.stack(masks)
  app = np.zeros(masks_a.shape, np.float32)
  available = np.zeros(len(volumes), bool)
  for i in ((ref,) if appearance_animals is None else tuple(appearance_animals)):
    raw = volumes[i].image[..., None].astype(np.float32)
    # Unit scaling adds a constant per slice to the log, which zero-mean NCC ignores.
    app[i] = np.asarray(enhance.log_gradient(_gradients(
        model, params, raw, classes=classes, method=method, score=score, batch_size=batch_size,
        mesh=mesh)))[rows[volumes[i].animal_id]]
    available[i] = True
  return TemplateBank(animal_ids=[v.animal_id for v in volumes], masks=masks_a,
                      gradients=np.stack(grads).astype(np.float32), brain_volumes=vols,
                      reference=ref,
                      displacements=np.stack([recorded_displacement(v) for v in volumes]),
                      appearance=app, appearance_available=available)


def common_voxel_size(volumes: Sequence[data.Volume]) -> np.ndarray | None:
  """RAS voxel size (3,) shared by the volumes; None if unknown or mixed."""
  sizes = [nifti.voxel_sizes_ras(v.affine) for v in volumes
           if getattr(v, "affine", None) is not None]
  if not sizes or not all(np.allclose(s, sizes[0], rtol=1e-4) for s in sizes):
    return None
  return np.asarray(sizes[0], np.float64)

