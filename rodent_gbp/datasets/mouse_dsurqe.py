"""``mouse_dsurqe``: the DSURQE mouse brain average and its structure labels, in RAS+.

Source files (``../shared/data/README.md``, section mouse-dsurqe), under
``AMBA/data/imaging/`` of the set's folder: ``DSURQE_CCFv3_average_200um.mnc``
(ex-vivo T2-weighted average, brain only), ``DSURQE_CCFv3_labels_200um.mnc``
(336 structure labels stored as floats), ``DSURQE_CCFv3_mask_200um.mnc`` (brain
mask, 8 % larger than label > 0) and ``DSURQE_40micron_R_mapping_long.csv``
(per label its name and tissue type). MINC2 files: nibabel reads them with h5py
(the ``[data]`` extra).

* Geometry: stored 41 x 67 x 58 voxels of 0.2 mm, axes S, A, R (nibabel's
  affine of the files); read here turned to RAS+, 58 x 67 x 41 (axis 0
  left -> right, axis 1 posterior -> anterior, axis 2 inferior -> superior), the
  affine following the turn. The grid is the Allen CCFv3's: the midline is at
  x = 0 mm, the middle of axis 0.
* Tissue: ``tissue_table`` (source ``dsurqe``), DSURQE's own tissue types with
  the table's stated changes; label 0 is background, so the tissue's brain is
  label > 0, not the mask.
* One template, not an animal: a label map to learn from.
* Licence: the copy is from a GPL-3.0 repository; the upstream atlas's own terms
  were not checked beyond it.
"""

from __future__ import annotations

import importlib
import os
import pathlib
from typing import NamedTuple

import nibabel as nib
import numpy as np

from rodent_gbp import nifti
from rodent_gbp import tissue_table
from rodent_gbp.datasets import download
from rodent_gbp.datasets import registry
from rodent_gbp.errors import DataError, UsageError

SUBDIR = "AMBA/data/imaging"
IMAGE = f"{SUBDIR}/DSURQE_CCFv3_average_200um.mnc"
LABELS = f"{SUBDIR}/DSURQE_CCFv3_labels_200um.mnc"
MASK = f"{SUBDIR}/DSURQE_CCFv3_mask_200um.mnc"
MAPPING = f"{SUBDIR}/DSURQE_40micron_R_mapping_long.csv"
FILES = (IMAGE, LABELS, MASK, MAPPING)
VOXEL_MM = 0.2
#: Voxels (X, Y, Z) after turning to RAS+.
SHAPE_RAS = (58, 67, 41)
MANIFEST = "MANIFEST.sha256"
# Stored values further than this from an integer are not labels.
_LABEL_TOLERANCE = 1e-3


class Atlas(NamedTuple):
  """The DSURQE template on its RAS+ grid (all arrays (X, Y, Z))."""
  image: np.ndarray  #: float32 T2-weighted average.
  labels: np.ndarray  #: int16 structure labels (0 background).
  affine: np.ndarray  #: (4, 4) float64, voxel -> mm (RAS+).
  mask: np.ndarray  #: bool brain mask of the set.


def _h5py(path: pathlib.Path) -> None:
  """h5py (the ``[data]`` extra) is importable, else a clear error naming ``path``."""
  try:
    importlib.import_module("h5py")
  except ImportError:
    raise UsageError(f"{path}: reading MINC2 files needs h5py; install the data extra: "
                     "pip install -e \".[data]\"") from None


def resolve(root: str | os.PathLike) -> pathlib.Path:
  """The set's folder (the one holding ``AMBA/`` and ``MANIFEST.sha256``), checked.

  Raises:
    DataError: ``root`` is not a folder, or holds the files without the
      set's layout.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"{root}: DSURQE folder not found")
  if not (root / IMAGE).exists() and (root / pathlib.Path(IMAGE).name).exists():
    raise DataError(f"{root}: give the set's folder, the one holding {SUBDIR}/")
  return root


def verify(root: str | os.PathLike) -> list[str]:
  """Checks the four files against the set's ``MANIFEST.sha256`` (size, then sha256).

  Returns:
    The checked paths; empty when the folder has no manifest (nothing to check).

  Raises:
    DataError: a missing file, or one whose size or sha256 differs from the
      manifest (the message names the file).
  """
  root = resolve(root)
  manifest = root / MANIFEST
  if not manifest.is_file():
    return []
  try:
    entries = {e.path: e for e in registry.parse_manifest(manifest.read_text(),
                                                          source=str(manifest))}
  except ValueError as e:
    raise DataError(str(e)) from None
  checked = []
  for rel in FILES:
    if rel not in entries:
      continue
    path, entry = root / rel, entries[rel]
    if not path.is_file():
      raise DataError(f"{path}: file not found")
    if path.stat().st_size != entry.size:
      raise DataError(f"{path}: {path.stat().st_size} bytes, {manifest} says {entry.size}")
    actual = download.sha256_file(path)
    if actual != entry.sha256:
      raise DataError(f"{path}: corrupt: sha256 {actual}, {manifest} says {entry.sha256}")
    checked.append(rel)
  return checked


def _read_minc(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """(data in the file's axis order, float64; the file's affine)."""
  if not path.is_file():
    raise DataError(f"{path}: file not found")
  _h5py(path)
  try:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, np.float64)
  except Exception as e:  # nibabel and h5py raise several types for bad files.
    raise DataError(f"{path}: not a readable MINC2 file ({type(e).__name__}: {e})") from None
  if data.ndim != 3:
    raise DataError(f"{path}: expected a 3D volume, got shape {data.shape}")
  nifti.check_affine(img.affine, path)
  if not np.all(np.isfinite(data)):
    raise DataError(f"{path}: NaN or inf voxel values")
  return data, np.asarray(img.affine, np.float64)


def _to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``data`` turned to RAS+ and the affine of the turned grid."""
  turned, ornt = nifti.reorient_ras(data, affine)
  return turned, affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)


def read_dsurqe(root: str | os.PathLike, *, check: bool = True) -> Atlas:
  """Reads the average, the labels and the mask, turned to RAS+.

  Args:
    root: the set's folder (``../shared/data/mouse-dsurqe``).
    check: verify the files against the folder's ``MANIFEST.sha256`` when it
      has one (about 1 MB to hash).

  Returns:
    :class:`Atlas` ``(image, labels, affine, mask)`` on the RAS+ grid, 0.2 mm
    voxels (the first three as ``mouse_t2_atlas.read_mouse`` gives them).

  Raises:
    DataError: a missing, corrupt or unreadable file, grids that differ,
      voxels that are not 0.2 mm, labels that are not integers >= 0, a mask
      that is not 0/1 (the message names the file).
    UsageError: h5py is not installed.
  """
  root = resolve(root)
  if check:
    verify(root)
  arrays = {}
  reference = None
  for rel in (IMAGE, LABELS, MASK):
    path = root / rel
    data, affine = _read_minc(path)
    if reference is None:
      reference = (path, data.shape, affine)
      sizes = nifti.voxel_sizes(affine)
      if not np.allclose(sizes, VOXEL_MM, atol=1e-4):
        raise DataError(f"{path}: voxel sizes {np.round(sizes, 6).tolist()} mm, "
                        f"expected {VOXEL_MM} mm")
    elif data.shape != reference[1] or not np.allclose(affine, reference[2], atol=1e-4):
      raise DataError(f"{path}: grid (shape {data.shape}) differs from {reference[0]} "
                      f"(shape {reference[1]})")
    arrays[rel] = _to_ras(data, affine)
  (image, affine), (labels, _), (mask, _) = (arrays[r] for r in (IMAGE, LABELS, MASK))
  rounded = np.rint(labels)
  off = float(np.max(np.abs(labels - rounded), initial=0.0))
  if off > _LABEL_TOLERANCE or rounded.min() < 0 or rounded.max() > np.iinfo(np.int16).max:
    raise DataError(f"{root / LABELS}: labels must be integers >= 0 (stored as floats; "
                    f"largest distance to an integer {off:.3g}, range "
                    f"{rounded.min():g}..{rounded.max():g})")
  if not np.all((mask == 0) | (mask == 1)):
    raise DataError(f"{root / MASK}: mask values must be 0 or 1")
  return Atlas(image.astype(np.float32), rounded.astype(np.int16),
               np.asarray(affine, np.float64), mask > 0.5)


def tissue(root: str | os.PathLike, *, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """The template's tissue codes from ``tissue_table`` (source ``dsurqe``).

  Returns:
    (codes, affine): codes (X, Y, Z) uint8 on :func:`read_dsurqe`'s RAS+ grid,
    0 background, 1 WM, 2 GM, 3 CSF, 4 ignore; the grid's affine.

  Raises:
    DataError: as :func:`read_dsurqe`, and labels the table does not have.
  """
  atlas = read_dsurqe(root, check=check)
  return tissue_table.to_tissue("dsurqe", atlas.labels), atlas.affine
