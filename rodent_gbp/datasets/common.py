"""What the converters share: writing one animal folder of the project's layout.

An animal folder (docs/design.md#folder-layout) holds ``image.nii.gz`` (float32),
``labels.nii.gz`` (uint8: 0 background, 1 WM, 2 GM, 3 CSF),
``brainmask.nii.gz`` (uint8 0/1) and ``meta.json``, all on one grid (one
affine, qform and sform code 1, millimetres), readable by
``rodent_gbp.data.load_animal``.
"""

from __future__ import annotations

import pathlib
from typing import Any

import nibabel as nib
import numpy as np

from rodent_gbp import classes
from rodent_gbp import fileio
from rodent_gbp import nifti as nifti_lib

TISSUE_CLASSES = classes.VALUES


def nifti(array: np.ndarray, affine: np.ndarray, dtype) -> nib.Nifti1Image:
  """A NIfTI-1 image of ``array`` (X, Y, Z) as ``dtype`` with ``affine`` (mm)."""
  affine = np.asarray(affine, np.float64)
  img = nib.Nifti1Image(np.asarray(array).astype(dtype), affine)
  img.set_qform(affine, code=1)
  img.set_sform(affine, code=1)
  img.header.set_xyzt_units("mm")
  return img


def write_animal(folder: pathlib.Path, *, image: np.ndarray, labels: np.ndarray,
                 brainmask: np.ndarray, affine: np.ndarray, meta: dict[str, Any]) -> None:
  """Writes one animal (or session) folder.

  Args:
    folder: created if needed.
    image: (X, Y, Z) intensities.
    labels: (X, Y, Z) ints in 0..3.
    brainmask: (X, Y, Z) bool.
    affine: (4, 4) voxel -> mm.
    meta: written as ``meta.json`` (strict JSON).
  """
  if not (image.shape == labels.shape == brainmask.shape and image.ndim == 3):
    raise ValueError(f"shapes differ: image {image.shape}, labels {labels.shape}, "
                     f"brainmask {brainmask.shape}")
  folder.mkdir(parents=True, exist_ok=True)
  for stem, array, dtype in (("image", image, np.float32), ("labels", labels, np.uint8),
                             ("brainmask", brainmask, np.uint8)):
    with fileio.atomic_path(folder / f"{stem}.nii.gz", suffix=".nii.gz") as tmp:
      nib.save(nifti(array, affine, dtype), str(tmp))
  fileio.write_json(folder / "meta.json", meta)


def class_counts(labels: np.ndarray) -> dict[str, int]:
  """Voxels per tissue class, by name."""
  labels = np.asarray(labels)
  return {name: int(np.sum(labels == value)) for name, value in TISSUE_CLASSES.items()}


def voxel_sizes(affine: np.ndarray) -> list[float]:
  """Edge lengths (3,) in mm of the voxel axes of ``affine`` (array order)."""
  return [float(v) for v in nifti_lib.voxel_sizes(affine)]
