"""Synthetic rodent coronal MRI phantom with the difficulty of docs/design.md#phantom-and-real-data.

Each animal is a volume (X, Y, Z) = (size, n_slices, size) in RAS+ order, voxels
0.375 (R-L) x 0.5 (A-P) x 0.375 (S-I) mm at ``size=96``; coronal slice j is
``vol[:, j, :]``. The model, drawn deterministically from ``(seed, index)``:

* brain: a superellipse cross-section about 40 x 27 voxels at its widest that
  grows and shrinks over the slices, with a GM cortex ribbon, WM tracts (corpus
  callosum, external and internal capsule, anterior commissure, optic tract,
  hippocampal alveus), ventricles, fissure and patchy surface CSF (1-2 voxels);
* animals differ by a linear size factor U(0.97, 1.03) and a smooth outline
  deformation of at most 1 voxel;
* surroundings move with the head: a thin dark skull (thicker skull base),
  scalp, thick temporal muscle at the sides, jaw, nasal and throat tissue below
  (muscle 0.45-0.65, fat 0.9, bone 0.08, air 0);
* foreign objects fixed in the field of view (surface coil edge, tubes,
  fiducial markers; intensity 0.5-1.0, sharp edges) outside the head;
* brain intensities CSF 1.0, GM 0.62, WM 0.45; a smooth multiplicative bias
  field of +-15 %; Rician noise sigma 0.04;
* acquisition displacement: integer in-plane shift U{-12..12} voxels on each
  slice axis and a through-plane offset U{-1, 0, 1} slice.

Tissue is sampled at voxel centres (no partial-volume mixing), so every label
is exactly the tissue whose intensity the voxel carries.

Two kinds (``KINDS``), the same anatomy and draws:

* ``standard`` (the main job's, docs/design.md#phantom-and-real-data): as above.
* ``measured``: the appearance brought to what ``experiments/data_statistics.py``
  measured on the real sets (README, "The phantom held against real scans"):
  anatomy rendered on a 2x finer in-plane grid and averaged (partial volume at
  every border; the label of a voxel is the majority class of its sub-voxels,
  brain where at least half of them are), then blurred in-plane by a Gaussian
  of 0.7 voxels (the point-spread function, chosen so the GM/WM border is as
  wide as ``mouse_t2_atlas``'s, 1.7 voxels 10-90 %), WM at 0.85 of GM (``mouse_t2_atlas``),
  soft tissue of the head at 0.54 of its standard brightness (``mouse_epi``'s
  surroundings at 0.46 of the brain mean against the standard's 0.86), a
  surface-coil falloff from above, exp(-d / 7.2 mm) about the reference brain
  centre, level above the coil 6 mm over it (``mouse_epi``'s N4 field p95/p5
  of 3.5), a smooth +-4 % texture within the brain, and Rician noise sigma 0.02 (``mouse_epi``'s in-brain
  residual of 0.032 of the brain median). Not changed: the field of view
  (real EPI brains fill 0.8 of it, the phantom's 0.42, which leaves room for
  the displacement of up to 12 voxels) and the foreign objects.

``size`` other than 96: in-plane anatomy, displacement and foreign objects scale
by ``size / 96`` (displacement rounded to whole voxels) and the in-plane voxel
size by ``96 / size``, so the field of view stays 36 mm; through-plane geometry
(0.5 mm slices) does not change.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable

import numpy as np

from rodent_gbp.phantom_anatomy import (  # noqa: F401  (the phantom's model, re-exported)
    AIR, BIAS_AMPLITUDE, BONE, BRAIN_CENTER_Z, CSF, FAT, GM, KINDS, LABELS,
    MAX_DEFORMATION, MAX_DISPLACEMENT, MAX_SLICE_OFFSET, MUSCLE_RANGE, NOISE_SIGMA,
    OBJECT_RANGE, REF_SIZE, SIZE_FACTOR_RANGE, VERSION, VOXEL_MM, WM, Appearance,
    anatomy, appearance, draw_acquisition, generators, smooth_field)
from rodent_gbp import fileio
from rodent_gbp.errors import DataError
from rodent_gbp.errors import UsageError


@dataclasses.dataclass
class Animal:
  """One phantom animal.

  Attributes:
    image: (size, n_slices, size) float32, RAS+.
    labels: (size, n_slices, size) uint8, 0 BG, 1 WM, 2 GM, 3 CSF.
    brainmask: (size, n_slices, size) uint8, ``labels > 0``.
    affine: (4, 4) voxel -> RAS mm.
    meta: the truth (see ``make_animal``), JSON-serialisable.
  """

  image: np.ndarray
  labels: np.ndarray
  brainmask: np.ndarray
  affine: np.ndarray
  meta: dict[str, Any]


def animal_id(index: int) -> str:
  return f"rat{index:02d}"


def voxel_size(size: int = REF_SIZE) -> tuple[float, float, float]:
  """Voxel size in mm: in-plane scales as 96 / size, slices stay 0.5 mm."""
  k = REF_SIZE / size
  return (VOXEL_MM[0] * k, VOXEL_MM[1], VOXEL_MM[2] * k)


def phantom_affine(size: int = REF_SIZE, n_slices: int = 40) -> np.ndarray:
  """RAS+ affine, diagonal voxel sizes, origin at the volume centre."""
  vs = np.asarray(voxel_size(size))
  shape = np.asarray([size, n_slices, size])
  affine = np.diag([*vs, 1.0])
  affine[:3, 3] = -vs * (shape - 1) / 2.0
  return affine


def make_animal(seed: int, index: int, *, size: int = REF_SIZE, n_slices: int = 40,
                displaced: bool = True, deformed: bool = True,
                kind: str = "standard") -> Animal:
  """Generates one animal deterministically from ``(seed, index)``.

  Args:
    seed: phantom seed.
    index: animal index (id ``rat{index:02d}``).
    size: in-plane matrix; 96 is the paper's geometry (see module docstring).
    n_slices: coronal slices (0.5 mm each).
    displaced: False sets the in-plane displacement and slice offset to zero
      (the same animal in the reference position; for tests).
    deformed: False removes the outline deformation (for tests).
    kind: ``standard`` (the main job's) or ``measured`` (``KINDS``).

  Returns:
    An ``Animal``; ``meta`` holds animal_id, seed, index, kind, size_factor,
    displacement_hw [dh, dw] (voxels along slice axes H = RAS x, W = RAS z),
    slice_offset, voxel_size, shape, brain_center_hw (centre of the brain's
    reference position in this acquisition), deformation amplitude, muscle
    intensities, foreign objects, bias range, noise sigma and class counts.

  Raises:
    UsageError: an unknown ``kind``.
  """
  look = appearance(kind)
  ss = look.supersample
  fine = anatomy(seed, index, size=size * ss, n_slices=n_slices, displaced=displaced,
                 deformed=deformed, look=look)
  tissue, labels = fine["tissue"], fine["labels"]
  if ss > 1:
    tissue = tissue.reshape(size, ss, n_slices, size, ss).mean(axis=(1, 4))
    labels = majority_labels(labels, ss)
  shape = (size, n_slices, size)
  k = size / REF_SIZE
  g = generators(seed, index)
  if look.brain_texture > 0:
    texture = smooth_field(g["texture"], shape, terms=10, max_freq=6.0)
    tissue = np.where(labels > 0, tissue * (1.0 + look.brain_texture * texture), tissue)
  if look.psf_sigma > 0:
    from scipy import ndimage
    tissue = ndimage.gaussian_filter(tissue, sigma=(look.psf_sigma, 0.0, look.psf_sigma),
                                     mode="nearest")

  # --- Bias field and Rician noise -------------------------------------------
  bias = 1.0 + look.bias_amplitude * smooth_field(g["bias"], shape, terms=6, max_freq=1.0)
  if look.coil_decay_mm > 0:
    z = np.arange(size, dtype=np.float64)[None, None, :]
    below_mm = np.maximum((round(BRAIN_CENTER_Z * k) - z) * voxel_size(size)[2],
                          -look.coil_height_mm)
    bias = bias * np.exp(-below_mm / look.coil_decay_mm)
  rn = g["noise"]
  signal = tissue * bias
  image = np.hypot(signal + rn.normal(0.0, look.noise_sigma, shape),
                   rn.normal(0.0, look.noise_sigma, shape)).astype(np.float32)

  def coarse(v):  # a fine-grid position in coarse voxels
    return (float(v) + 0.5) / ss - 0.5

  objects = []
  for o in fine["objects"]:
    o = dict(o)
    for key in ("center_hw", "drift_hw"):
      if key in o:
        o[key] = [coarse(v) if key == "center_hw" else float(v) / ss for v in o[key]]
    for key in ("half_width", "radius"):
      if key in o:
        o[key] = float(o[key]) / ss
    if "thickness" in o:
      o["thickness"] = float(o["thickness"]) / ss if ss > 1 else o["thickness"]
    objects.append(o)
  acq = draw_acquisition(seed, index, size)
  dh, dw = acq["displacement_hw"] if displaced else (0, 0)
  brainmask = (labels > 0).astype(np.uint8)
  counts = np.bincount(labels.ravel(), minlength=4)
  cx, cz0 = fine["brain_center_hw"]
  ux, uz = fine["brain_center_hw_undisplaced"]
  meta = dict(
      animal_id=animal_id(index), seed=int(seed), index=int(index),
      generator=f"rodent_gbp.phantom v{VERSION}", kind=look.name,
      size_factor=acq["size_factor"], displacement_hw=[int(dh), int(dw)],
      slice_offset=int(fine["slice_offset"]),
      displaced=bool(displaced),
      voxel_size=list(voxel_size(size)), shape=list(shape), orientation="RAS",
      slice_axis=1, slice_axes_hw=["R-L (RAS axis 0)", "S-I (RAS axis 2)"],
      brain_center_hw=[coarse(cx), coarse(cz0)],
      brain_center_hw_undisplaced=[coarse(ux), coarse(uz)],
      outline_deformation_max_voxels=fine["deformation_max"] / ss,
      labels={str(key): name for key, name in LABELS.items()},
      intensities=dict(csf=look.csf, gm=look.gm, wm=look.wm, fat=FAT * look.soft_tissue,
                       bone=BONE, muscle=fine["muscle"]),
      foreign_objects=objects,
      noise="rician", noise_sigma=look.noise_sigma,
      bias_amplitude=look.bias_amplitude,
      bias_range=[float(bias.min()), float(bias.max())],
      class_voxels={LABELS[c]: int(counts[c]) for c in range(4)},
      csf_fraction_of_brain=float(counts[3] / max(counts[1:].sum(), 1)),
  )
  if ss > 1 or look.coil_decay_mm > 0 or look.brain_texture > 0:
    meta.update(supersample=ss, psf_sigma=look.psf_sigma, coil_decay_mm=look.coil_decay_mm,
                brain_texture=look.brain_texture, soft_tissue=look.soft_tissue)
  return Animal(image=image, labels=labels, brainmask=brainmask,
                affine=phantom_affine(size, n_slices), meta=meta)


def majority_labels(labels: np.ndarray, factor: int) -> np.ndarray:
  """Labels of a grid ``factor`` times finer in-plane, brought to the coarse grid.

  A coarse voxel is brain where at least half of its sub-voxels are; its class
  is then the most frequent tissue class among them (ties: the lower label).
  """
  h, n, w = labels.shape
  blocks = labels.reshape(h // factor, factor, n, w // factor, factor)
  counts = np.stack([(blocks == c).sum(axis=(1, 4)) for c in range(4)])
  brain = counts[0] * 2 <= factor * factor
  out = np.where(brain, np.argmax(counts[1:], axis=0) + 1, 0)
  return out.astype(np.uint8)


#: Written last into a phantom folder: what it holds (animals, seed, size).
COMPLETE_FILE = "phantom.json"


def is_complete(out_dir: str | pathlib.Path, *, animals: int | None = None,
                kind: str | None = None) -> bool:
  """Whether ``out_dir`` holds a whole phantom written by :func:`write_phantom`
  (of ``animals`` animals and of ``kind``, where given; a marker without a
  kind is a ``standard`` phantom)."""
  marker = pathlib.Path(out_dir) / COMPLETE_FILE
  if not marker.is_file():
    return False
  try:
    info = json.loads(marker.read_text())
  except (OSError, ValueError):
    return False
  if kind is not None and info.get("kind", "standard") != kind:
    return False
  return animals is None or info.get("animals") == animals


def kind_of(out_dir: str | pathlib.Path) -> str | None:
  """The kind of the complete phantom in ``out_dir`` (None: none there)."""
  if not is_complete(out_dir):
    return None
  return json.loads((pathlib.Path(out_dir) / COMPLETE_FILE).read_text()).get("kind", "standard")


def write_phantom(out_dir: str | pathlib.Path, *, animals: int = 10, seed: int = 0,
                  size: int = REF_SIZE, kind: str = "standard",
                  log: Callable[[str], None] | None = None) -> list[pathlib.Path]:
  """Writes ``<out>/<animal_id>/{image,labels,brainmask}.nii.gz, meta.json``.

  Images are float32, labels and brain mask uint8, all with the RAS+ affine of
  ``phantom_affine`` (voxel sizes in the header). Returns the animal folders.

  Atomic: everything is written into a hidden folder beside ``out_dir``, which
  is renamed onto it at the end (``COMPLETE_FILE`` inside says what it
  holds), so an interrupted run leaves no phantom rather than one with fewer
  animals and a different split.

  Raises:
    DataError: ``out_dir`` exists and is not empty.
    UsageError: no animals, a size < 1 or an unknown ``kind``.
  """
  import os
  import shutil
  import nibabel as nib  # Local: generation itself needs only numpy.

  if animals < 1 or size < 1:
    raise UsageError(f"a phantom needs at least one animal and a size >= 1; got "
                     f"animals={animals}, size={size}")
  appearance(kind)
  out = pathlib.Path(out_dir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise DataError(f"{out}: exists and is not empty; the phantom is written only into a "
                    "new or empty folder")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  paths = []
  try:
    for index in range(animals):
      animal = make_animal(seed, index, size=size, kind=kind)
      folder = tmp / animal.meta["animal_id"]
      folder.mkdir(parents=True, exist_ok=True)
      for name, array in (("image", animal.image), ("labels", animal.labels),
                          ("brainmask", animal.brainmask)):
        img = nib.Nifti1Image(array, animal.affine)
        img.set_qform(animal.affine, code=1)
        img.set_sform(animal.affine, code=1)
        img.header.set_xyzt_units("mm")
        nib.save(img, folder / f"{name}.nii.gz")
      (folder / "meta.json").write_text(fileio.dumps_json(animal.meta))
      paths.append(out / animal.meta["animal_id"])
      if log is not None:
        m = animal.meta
        log(f"{m['animal_id']} ({index + 1}/{animals}): size factor "
            f"{m['size_factor']:.3f}, displacement {m['displacement_hw']}, "
            f"slice offset {m['slice_offset']} -> {paths[-1]}")
    (tmp / COMPLETE_FILE).write_text(fileio.dumps_json(
        {"animals": animals, "seed": seed, "size": size, "kind": kind}))
    if out.exists():
      out.rmdir()  # empty, checked above
    os.replace(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return paths
