"""A user's scan: reading and checking it, its geometry, resampling to the model grid.

The stages of ``rodent-gbp-segment`` before and after the network
(``rodent_gbp.inference``): read and validate the NIfTI file (3D, or one
volume / the mean of a 4D series), reorient to RAS+ and cut slices of the
chosen plane, normalise by the training rule, resample in-plane to the model's
voxel size and pad / crop, centred, to the bank's slice shape; match slices
to bank slices by relative anterior-posterior position; and the way back into
the input's own grid and header.
"""

from __future__ import annotations

import os
import pathlib

import nibabel as nib
import numpy as np
from scipy import ndimage

from rodent_gbp import data
from rodent_gbp.errors import DataError

_RAS = nib.orientations.axcodes2ornt("RAS")
# In-plane RAS axes of the slices of each plane.
INPLANE_AXES = {"coronal": [0, 2], "axial": [0, 1], "sagittal": [1, 2]}


def stem(path: pathlib.Path) -> str:
  name = path.name
  for suffix in (".nii.gz", ".nii"):
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return path.stem


def read_scan(path: str | os.PathLike, *, volume: int | None = None,
              average: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
  """Reads a NIfTI scan as one 3D float32 volume, validated.

  Args:
    path: a ``.nii`` or ``.nii.gz`` file.
    volume: index of the volume to take from a 4D series.
    average: take the mean over the 4th axis of a 4D series (the paper averaged
      its b0 images).

  Returns:
    (data (X, Y, Z) float32 in the file's axis order, the nibabel image).

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
  while raw.ndim > 4 and raw.shape[-1] == 1:
    raw = raw[..., 0]
  if raw.ndim < 3 or raw.ndim > 4:
    raise DataError(f"{path}: expected a 3D volume or a 4D series, got shape "
                         f"{raw.shape}")
  if 0 in raw.shape:
    raise DataError(f"{path}: an axis of shape {raw.shape} is empty")
  n_vol = raw.shape[3] if raw.ndim == 4 else 1
  if volume is not None and not 0 <= volume < n_vol:
    raise DataError(f"{path}: --volume {volume} out of range; the file has "
                         f"{n_vol} volume(s), 0..{n_vol - 1}")
  if raw.ndim == 4 and n_vol > 1:
    if volume is None and not average:
      raise DataError(f"{path}: a 4D series of {n_vol} volumes; pass --volume N "
                           f"(0..{n_vol - 1}) or --average")
  if raw.ndim == 4:
    raw = raw[..., volume] if volume is not None else raw.mean(axis=3, dtype=np.float64)
  image = np.asarray(raw, np.float32)
  affine = img.affine
  if affine is None or not np.all(np.isfinite(affine)) or abs(
      np.linalg.det(affine[:3, :3])) < 1e-12:
    raise DataError(f"{path}: singular or invalid affine (voxel axes have no "
                         "extent or are not independent)")
  bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
  if bad:
    raise DataError(f"{path}: {bad} voxels are NaN or inf")
  lo, hi = float(image.min()), float(image.max())
  if lo == hi:
    raise DataError(f"{path}: the image is constant ({lo:g}); nothing to segment")
  return image, img



def to_volume(image: np.ndarray, affine: np.ndarray, *, plane: str, name: str,
              normalisation: dict) -> data.Volume:
  """Reorients to RAS+, normalises by the training rule and slices ``plane``."""
  ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), _RAS)
  ras = nib.orientations.apply_orientation(image, ornt)
  ras = data.apply_normalisation(ras, normalisation)
  return data.Volume(animal_id=name, image=data.to_slices(ras, plane), label=None,
                     brainmask=None, meta={}, normalisation=dict(normalisation),
                     affine=np.asarray(affine, np.float64),
                     shape=tuple(int(n) for n in image.shape), orientation=ornt,
                     plane=plane)



def _axis_map(n_from: int, vs_from: float, n_to: int, vs_to: float) -> tuple[float, float]:
  """(scale, offset): source index = scale * target index + offset.

  The two grids share their centre (the field of view stays where it was), so
  going there and back changes no position.
  """
  scale = vs_to / vs_from
  offset = (0.5 * vs_to - 0.5 * (n_to * vs_to - n_from * vs_from)) / vs_from - 0.5
  return scale, offset


def resample_inplane(slices: np.ndarray, vs_from: tuple[float, float],
                     vs_to: tuple[float, float], shape_to: tuple[int, int], *,
                     order: int) -> np.ndarray:
  """Resamples the (H, W) axes of slices (S, H, W) onto another grid.

  Args:
    slices: (S, H, W).
    vs_from: in-plane voxel size (mm) of ``slices``.
    vs_to: in-plane voxel size (mm) of the result.
    shape_to: (H', W') of the result.
    order: 1 (linear, images) or 0 (nearest neighbour, masks and labels).

  Returns:
    (S, H', W'), the same dtype for ``order=0``, float32 for ``order=1``.
  """
  (h, w), (h2, w2) = slices.shape[1:], tuple(shape_to)
  if (h, w) == (h2, w2) and np.allclose(vs_from, vs_to, rtol=1e-6, atol=0):
    return slices.copy()
  sh, oh = _axis_map(h, vs_from[0], h2, vs_to[0])
  sw, ow = _axis_map(w, vs_from[1], w2, vs_to[1])
  src = slices if order == 0 else slices.astype(np.float32)
  out = ndimage.affine_transform(src, np.array([1.0, sh, sw]), offset=(0.0, oh, ow),
                                 output_shape=(slices.shape[0], h2, w2), order=order,
                                 mode="nearest", prefilter=False)
  return out


def _window(n: int, target: int) -> tuple[slice, slice]:
  """Source and target ranges of a centred pad (n < target) or crop (n > target)."""
  if n <= target:
    start = (target - n) // 2
    return slice(0, n), slice(start, start + n)
  start = (n - target) // 2
  return slice(start, start + target), slice(0, target)


def fit_to(slices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Centred zero-pad / crop of (S, h, w) to (S, H, W)."""
  (sh, th), (sw, tw) = _window(slices.shape[1], shape[0]), _window(slices.shape[2], shape[1])
  out = np.zeros((slices.shape[0], *shape), slices.dtype)
  out[:, th, tw] = slices[:, sh, sw]
  return out


def unfit(slices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Inverse of :func:`fit_to`: (S, H, W) back to (S, h, w); cropped parts are 0."""
  (sh, th), (sw, tw) = _window(shape[0], slices.shape[1]), _window(shape[1], slices.shape[2])
  out = np.zeros((slices.shape[0], *shape), slices.dtype)
  out[:, sh, sw] = slices[:, th, tw]
  return out


def bank_slice_index(n_scan: int, n_bank: int) -> np.ndarray:
  """Bank slice for each scan slice by relative anterior-posterior position.

  Equal counts map slice i to i; otherwise the first and last slices of the
  scan meet the bank's first and last and the rest fall in between.
  """
  if n_scan == n_bank:
    return np.arange(n_scan, dtype=np.int32)
  if n_scan == 1:
    return np.array([(n_bank - 1) // 2], np.int32)
  rel = np.arange(n_scan) / (n_scan - 1)
  return np.round(rel * (n_bank - 1)).astype(np.int32)



def like_input(array: np.ndarray, img: nib.Nifti1Image, dtype) -> nib.Nifti1Image:
  """A 3D image with ``img``'s affine and header (qform, sform, units, ...)."""
  header = img.header.copy()
  header.set_data_dtype(dtype)
  header.set_slope_inter(None, None)
  header["cal_min"], header["cal_max"] = 0, 0
  return type(img)(np.asarray(array, dtype), img.affine, header=header)

