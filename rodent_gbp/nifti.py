"""The one way the project reads a NIfTI file: read, validate, reorient, voxel sizes.

* :func:`read`: a ``.nii`` / ``.nii.gz`` file as stored (3D, or a 4D series
  where allowed), validated: exists, is a file, not empty, a NIfTI-1/2 image of
  one real scalar per voxel, readable to the end (not truncated), 3D or 4D
  after dropping trailing singleton axes, no empty axis, an invertible finite
  affine and finite voxel values. Every failure is a ``DataError`` that names
  the file and the problem. The nibabel image (header and affine) comes back
  with the data; :func:`stored_pixdim` gives the voxel sizes as the file
  stores them, before nibabel replaces a zero by 1 at load.
* :func:`voxel_sizes` (``nibabel.affines.voxel_sizes``: the file's own voxel
  axes) and :func:`voxel_sizes_ras` (along the RAS+ axes after reorienting).
* :func:`reorient_ras`: the data turned to RAS+ (``nibabel.orientations``).

Users: ``data`` (the project's layout), ``scan`` (a user's scan), the dataset
converters, the studies and the binaries.
"""

from __future__ import annotations

import os
import pathlib

import nibabel as nib
from nibabel import affines as nib_affines
import numpy as np

from rodent_gbp.errors import DataError

RAS = nib.orientations.axcodes2ornt("RAS")


def read(path: str | os.PathLike, *, series: bool = True, dtype=np.float32
         ) -> tuple[np.ndarray, nib.Nifti1Image]:
  """Reads and validates a NIfTI file as it is stored.

  Args:
    path: a ``.nii`` or ``.nii.gz`` file.
    series: allow a 4D series (else only a 3D volume, a trailing singleton
      4th axis dropped).
    dtype: the data's dtype (None: as stored).

  Returns:
    (data (X, Y, Z) or (X, Y, Z, T) in the file's axis order, trailing
    singleton axes beyond the last allowed one dropped; the nibabel image).

  Raises:
    DataError: naming the file and the problem.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(f"{path}: file not found")
  if not path.is_file():
    raise DataError(f"{path}: not a file")
  if path.stat().st_size == 0:
    raise DataError(f"{path}: file is empty")
  try:
    img = nib.load(str(path))
  except Exception as e:  # nibabel raises several types for non-NIfTI files.
    raise DataError(f"{path}: not a readable NIfTI file ({e})") from None
  if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
    raise DataError(f"{path}: not a NIfTI file ({type(img).__name__})")
  if img.get_data_dtype().fields is not None:
    raise DataError(f"{path}: unsupported voxel type {img.get_data_dtype()} "
                    "(RGB or structured); need one scalar per voxel")
  try:
    raw = np.asanyarray(img.dataobj)
  except Exception as e:  # EOFError, zlib.error, OSError, ValueError
    raise DataError(f"{path}: cannot read the voxel data, the file is truncated "
                    f"or corrupt ({type(e).__name__}: {e})") from None
  if np.iscomplexobj(raw):
    raise DataError(f"{path}: complex voxel values are not supported")
  most = 4 if series else 3
  while raw.ndim > most and raw.shape[-1] == 1:
    raw = raw[..., 0]
  if raw.ndim < 3 or raw.ndim > most:
    want = "a 3D volume or a 4D series" if series else "a 3D volume"
    raise DataError(f"{path}: expected {want}, got shape {raw.shape}")
  if 0 in raw.shape:
    raise DataError(f"{path}: an axis of shape {raw.shape} is empty")
  check_affine(img.affine, path)
  data = np.asarray(raw, dtype) if dtype is not None else np.asarray(raw)
  if np.issubdtype(data.dtype, np.floating):
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
      raise DataError(f"{path}: {bad} voxels are NaN or inf")
  return data, img


def check_affine(affine, path) -> None:
  """Refuses a missing, non-finite or singular affine (``DataError`` naming ``path``)."""
  if affine is None or not np.all(np.isfinite(affine)) or abs(
      np.linalg.det(np.asarray(affine)[:3, :3])) < 1e-12:
    raise DataError(f"{path}: singular or invalid affine (voxel axes have no "
                    "extent or are not independent)")


def stored_pixdim(path: str | os.PathLike, img: nib.Nifti1Image | None = None
                  ) -> np.ndarray:
  """(3,) voxel sizes as the file's header stores them (``pixdim[1:4]``), read without
  nibabel's fixes (which set a zero size to 1 at load). ``img``: the file as
  :func:`read` returned it (its header's class), else it is loaded."""
  klass = type((img if img is not None else nib.load(str(path))).header)
  with nib.openers.ImageOpener(str(path)) as f:
    header = klass.from_fileobj(f, check=False)
  return np.asarray(header["pixdim"][1:4], np.float64)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
  """Voxel edge lengths (3,) in mm along the file's own voxel axes."""
  return nib_affines.voxel_sizes(np.asarray(affine, np.float64))


def to_ras(affine: np.ndarray) -> np.ndarray:
  """The orientation transform (``nibabel.orientations``) from the file's axes to RAS+."""
  return nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), RAS)


def voxel_sizes_ras(affine: np.ndarray) -> np.ndarray:
  """Voxel edge lengths (3,) in mm along the RAS+ axes of the reoriented volume."""
  out = np.empty(3)
  out[to_ras(affine)[:, 0].astype(int)] = voxel_sizes(affine)
  return out


def reorient_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(data turned to RAS+, the orientation transform applied)."""
  ornt = to_ras(affine)
  return nib.orientations.apply_orientation(data, ornt), ornt
