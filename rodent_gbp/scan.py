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
from rodent_gbp import nifti
from rodent_gbp.errors import DataError, UsageError

# In-plane RAS axes of the slices of each plane.
INPLANE_AXES = {"coronal": [0, 2], "axial": [0, 1], "sagittal": [1, 2]}


def stem(path: pathlib.Path) -> str:
  name = path.name
  for suffix in (".nii.gz", ".nii"):
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return path.stem


def read_series(path: str | os.PathLike) -> tuple[np.ndarray, nib.Nifti1Image]:
  """A NIfTI scan as it is stored (3D, or a 4D series), validated (``nifti.read``):
  (data (X, Y, Z) or (X, Y, Z, T) float32 in the file's axis order; the nibabel image).

  Raises:
    DataError: naming the file and the problem.
  """
  return nifti.read(path, series=True)


def collapse(series: np.ndarray, path: str | os.PathLike, *, volume: int | None = None,
             average: bool = False) -> tuple[np.ndarray, str]:
  """The one 3D volume of a series that is segmented.

  A 4D series is segmented on the mean of its volumes unless ``volume`` picks
  one (the mean has the best signal to noise and the brain does not move
  between the volumes of a motion-corrected series); ``average`` asks for the
  mean explicitly.

  Args:
    series: (X, Y, Z) or (X, Y, Z, T) from :func:`read_series`.
    path: the file, for messages.
    volume: index of the volume to take from a 4D series.
    average: take the mean over the 4th axis.

  Returns:
    (image (X, Y, Z) float32, what was taken, e.g. "mean of 3 volumes").

  Raises:
    DataError: ``volume`` out of range, or a constant image.
  """
  n_vol = series.shape[3] if series.ndim == 4 else 1
  if volume is not None and not 0 <= volume < n_vol:
    raise DataError(f"{path}: --volume {volume} out of range; the file has "
                         f"{n_vol} volume(s), 0..{n_vol - 1}")
  if series.ndim == 3:
    image, what = series, "the 3D volume"
  elif volume is not None:
    image, what = series[..., volume], f"volume {volume} of {n_vol}"
  elif n_vol == 1:
    image, what = series[..., 0], "the only volume"
  else:
    image = series.mean(axis=3, dtype=np.float64)
    what = f"mean of {n_vol} volumes" + ("" if average else " (a 4D series; --volume N "
                                         "segments one volume)")
  image = np.asarray(image, np.float32)
  lo, hi = float(image.min()), float(image.max())
  if lo == hi:
    raise DataError(f"{path}: the image is constant ({lo:g}); nothing to segment")
  return image, what


# --- header heuristics ----------------------------------------------------------
#
# Slice axis: the header's anterior-posterior voxel axis, unless one voxel axis
# is THICK_RATIO times thicker than both others (a stack of thick slices): then
# that axis, with a warning when the two disagree (a header whose orientation
# is wrong, a common result of scanning an animal with a human protocol).
THICK_RATIO = 2.0
# Voxel sizes stored x10 (lets human tools accept rodent data): a rodent head is
# about 20-35 mm across (mouse ~20, rat ~35), so a field of view (voxels x
# voxel size along an axis, the largest of the three) of X10_MIN_FOV_MM or
# more whose tenth lies within HEAD_FOV_MM is read as x10. Outside HEAD_FOV_MM
# after scaling the scan is used as it is, with a warning.
X10_MIN_FOV_MM = 150.0
HEAD_FOV_MM = (10.0, 80.0)
# Brain volumes (mm^3) of adult rodents: a mouse brain is about 400-600 mm^3, a
# rat's about 1,500-2,500 mm^3; the ranges leave room for strain, age and
# transgenic lines (mouse_t2_atlas's TT brains are about 15 % smaller).
SPECIES_MM3 = {"mouse": (300.0, 750.0), "rat": (1200.0, 3200.0)}
# An axis direction further than this from every scanner axis is oblique; two
# voxel axes further than this from a right angle are sheared (degrees).
OBLIQUE_DEGREES = 1.0
SHEAR_DEGREES = 0.5
# An intensity offset (the scanner's range or a DC shift) is removed when the
# image minimum is negative or above OFFSET_FRACTION of its robust maximum
# (data.normalise_intensity's scale): the background of a magnitude image is
# near zero, and the training rule (a division) does not undo an offset.
OFFSET_FRACTION = 0.05
_PLANE_OF_RAS_AXIS = {0: "sagittal", 1: "coronal", 2: "axial"}
PLANE_CHOICES = ("auto", *data.PLANES, "0", "1", "2")


voxel_sizes = nifti.voxel_sizes


def check_stored_voxel_sizes(path, img) -> None:
  """Refuses a header whose stored voxel sizes (``pixdim[1:4]`` of the spatial axes,
  before nibabel replaces a zero by 1 at load) are zero, negative or not finite.

  Raises:
    DataError: naming the file and the stored values.
  """
  stored = nifti.stored_pixdim(path, img)[:min(3, len(img.shape))]
  if not np.all(np.isfinite(stored)) or np.any(stored <= 0):
    raise DataError(f"{path}: stored voxel sizes {stored.tolist()} (pixdim[1:4]) must be "
                    "positive and finite; fix the header (a zero size is not 1 mm)")


def affine_warning(affine: np.ndarray) -> str | None:
  """A warning when the voxel axes are oblique to the scanner axes or sheared (not at
  right angles to each other), else None."""
  m = np.asarray(affine, np.float64)[:3, :3]
  unit = m / np.linalg.norm(m, axis=0)
  cos = np.abs(unit.T @ unit)[np.triu_indices(3, 1)]
  shear = float(np.degrees(np.max(np.arcsin(np.clip(cos, 0, 1)))))
  oblique = float(np.degrees(np.max(np.arccos(np.clip(np.abs(unit).max(axis=0), 0, 1)))))
  if shear > SHEAR_DEGREES:
    return (f"the affine is sheared: two voxel axes are {90 - shear:.1f} degrees apart, not "
            "90; slices are cut along the voxel axes and volumes use the affine's "
            "determinant; check the header")
  if oblique > OBLIQUE_DEGREES:
    return (f"the affine is oblique: a voxel axis is {oblique:.1f} degrees from the nearest "
            "scanner axis; slices are cut along the voxel axes, not the scanner's")
  return None


def voxel_volume(affine: np.ndarray) -> float:
  """mm^3 of one voxel: the affine's determinant (right for sheared axes too)."""
  return float(abs(np.linalg.det(np.asarray(affine, np.float64)[:3, :3])))


def check_species(species: str | None) -> None:
  """Refuses a species without a brain volume range (``UsageError``)."""
  if species is not None and species not in SPECIES_MM3:
    raise UsageError(f"--species {species!r}: must be one of {', '.join(SPECIES_MM3)}")


def species_fit(mm3: float, species: str | None = None) -> tuple[str | None, dict]:
  """(warning or None, record): which rodent's brain volume range ``mm3`` fits.

  ``species`` (``mouse`` / ``rat``, stated by the user) is the one it must fit;
  without it, fitting either is plausible. An empty mask is always a warning.
  """
  check_species(species)
  fits = [s for s, (lo, hi) in SPECIES_MM3.items() if lo <= mm3 <= hi]
  ranges = " or ".join(f"{s} {lo:g}-{hi:g}" for s, (lo, hi) in SPECIES_MM3.items())
  warning = None
  if mm3 <= 0:
    warning = ("the brain mask is empty: nothing was found; check the QC figure, the "
               "plane and the voxel sizes (--plane, --voxel_scale)")
  elif species is not None and species not in fits:
    lo, hi = SPECIES_MM3[species]
    warning = (f"brain volume {mm3:.0f} mm^3 is outside a {species} brain's {lo:g}-{hi:g} "
               "mm^3: check the voxel sizes (--voxel_scale), the plane and the QC figure")
  elif not fits:
    warning = (f"brain volume {mm3:.0f} mm^3 fits no rodent ({ranges} mm^3): check the "
               "voxel sizes (--voxel_scale), the plane and the QC figure")
  return warning, {"mm3": mm3, "cm3": mm3 / 1000,
                   "species_mm3": {s: list(r) for s, r in SPECIES_MM3.items()},
                   "species_given": species, "fits": fits, "warning": warning,
                   "note": "voxels of the written (applied) mask x the voxel volume "
                           "(|det| of the affine)"}


# A skull-stripped input: at least this fraction of its voxels exactly zero, the
# rest one connected region (this fraction of the nonzero voxels in the largest
# component), touching the field of view's faces with at most this fraction of
# its surface voxels (a stripped brain lies inside the field of view; a head is
# cut by it at the neck), and a brain's volume.
STRIPPED_ZERO_FRACTION = 0.2
STRIPPED_ONE_COMPONENT = 0.995
# The published mouse_t2_atlas brains (tightly cropped) touch the faces with
# 0.5-2.2 % of their surface (all 18 local mice; 2 % missed one of them, so the
# bound was raised after seeing them); a head cut at the neck touches them with
# its neck's cross-section, roughly a tenth of a mouse head's surface.
STRIPPED_MAX_EDGE_FRACTION = 0.05


def looks_stripped(image: np.ndarray, affine: np.ndarray, species: str | None = None
                   ) -> tuple[bool, str]:
  """Whether a 3D image is already skull-stripped, and why (or why not).

  A magnitude scan of a whole head has noise in its background, so exact zeros
  are rare; a stripped brain is zero outside one compact region of brain size.
  All four must hold: background exactly zero (:data:`STRIPPED_ZERO_FRACTION`),
  one connected nonzero region (:data:`STRIPPED_ONE_COMPONENT`), inside the
  field of view (:data:`STRIPPED_MAX_EDGE_FRACTION`), and a volume that fits a
  rodent brain (``species_fit``; ``affine`` with its final voxel sizes).
  """
  nonzero = np.asarray(image) != 0
  zero_fraction = 1.0 - float(nonzero.mean())
  if zero_fraction < STRIPPED_ZERO_FRACTION:
    return False, (f"{100 * zero_fraction:.1f} % of the voxels are exactly zero (a stripped "
                   f"image has >= {100 * STRIPPED_ZERO_FRACTION:g} %)")
  labels, n = ndimage.label(nonzero)
  sizes = np.bincount(labels.ravel())[1:]
  largest = int(sizes.max()) if n else 0
  if not n or largest < STRIPPED_ONE_COMPONENT * nonzero.sum():
    return False, f"the nonzero voxels form {n} separate regions, not one"
  region = labels == int(np.argmax(sizes)) + 1
  surface = region & ~ndimage.binary_erosion(region)
  faces = np.zeros_like(region)
  for axis in range(3):
    index = [slice(None)] * 3
    for end in (0, -1):
      index[axis] = end
      faces[tuple(index)] = True
  edge = float((surface & faces).sum()) / max(int(surface.sum()), 1)
  if edge > STRIPPED_MAX_EDGE_FRACTION:
    return False, (f"the nonzero region touches the field of view's faces with "
                   f"{100 * edge:.1f} % of its surface (a head cut by the field of view)")
  mm3 = float(region.sum()) * voxel_volume(affine)
  warning, record = species_fit(mm3, species)
  if warning is not None:
    return False, f"the nonzero region's {mm3:.0f} mm^3 fits no rodent brain"
  return True, (f"background exactly zero ({100 * zero_fraction:.1f} % of the voxels), one "
                f"nonzero region of {mm3:.0f} mm^3 ({' or '.join(record['fits'])} brain) "
                "inside the field of view: taken as the brain as given")


def scale_affine(affine: np.ndarray, factor: float) -> np.ndarray:
  """The affine with its voxel sizes and origin multiplied by ``factor``."""
  out = np.array(affine, np.float64)
  out[:3, :] *= factor
  return out


def voxel_scale(shape, affine: np.ndarray, factor: float | None = None
                ) -> tuple[float, str, str | None]:
  """The factor the header's voxel sizes are multiplied by, and why.

  Args:
    shape: the scan's 3D shape (file axes).
    affine: its header affine.
    factor: a factor given by the user (``--voxel_scale``); None: decide by
      the field of view (:data:`X10_MIN_FOV_MM`, :data:`HEAD_FOV_MM`).

  Returns:
    (factor, reason, warning or None).

  Raises:
    UsageError: a given factor that is not a positive finite number.
  """
  fov = np.asarray(shape[:3], np.float64) * voxel_sizes(affine)
  widest = float(fov.max())
  text = "x".join(f"{f:.4g}" for f in fov)
  if factor is not None:
    if not np.isfinite(factor) or factor <= 0:
      raise UsageError(f"--voxel_scale {factor}: must be a positive number (0.1 reads "
                       "voxel sizes stored x10)")
    factor, reason = float(factor), f"--voxel_scale {factor:g} given"
  elif widest >= X10_MIN_FOV_MM and HEAD_FOV_MM[0] <= widest / 10 <= HEAD_FOV_MM[1]:
    factor = 0.1
    reason = (f"field of view {text} mm: the widest ({widest:.4g} mm) is >= "
              f"{X10_MIN_FOV_MM:g} mm and its tenth lies in the rodent head range "
              f"{HEAD_FOV_MM[0]:g}-{HEAD_FOV_MM[1]:g} mm: voxel sizes stored x10, "
              "divided by 10 (--voxel_scale 1 keeps them)")
  else:
    factor = 1.0
    reason = (f"field of view {text} mm: the widest ({widest:.4g} mm) is below "
              f"{X10_MIN_FOV_MM:g} mm or not ten times a rodent head; header sizes used "
              "as they are")
  scaled = widest * factor
  warning = None
  if not HEAD_FOV_MM[0] <= scaled <= HEAD_FOV_MM[1]:
    warning = (f"the widest field of view is {scaled:.4g} mm after scaling, outside the "
               f"{HEAD_FOV_MM[0]:g}-{HEAD_FOV_MM[1]:g} mm of a rodent head scan; check "
               "the voxel sizes (--voxel_scale)")
  return factor, reason, warning


def choose_plane(affine: np.ndarray, plane: str | int = "auto"
                 ) -> tuple[str, int, str, str | None]:
  """The slicing plane and voxel axis of a scan, and why.

  Args:
    affine: the scan's affine (any voxel scale; only ratios and directions count).
    plane: "auto" (the header's anterior-posterior axis unless one axis is
      :data:`THICK_RATIO` times thicker than the others), a plane name
      ("coronal", "axial", "sagittal": RAS+ by the header) or a voxel axis
      (0, 1, 2 or "0", "1", "2": slices across that axis of the file).

  Returns:
    (plane name, voxel axis the slices are cut across, reason, warning or None).
    A voxel axis is taken as the plane whose RAS axis the header gives it.

  Raises:
    UsageError: any other ``plane``.
  """
  plane = str(plane)
  if plane not in PLANE_CHOICES:
    raise UsageError(f"--plane {plane!r}: must be one of {', '.join(PLANE_CHOICES)}")
  ornt = nib.orientations.io_orientation(affine)
  ras_of_axis = ornt[:, 0].astype(int)        # voxel axis k lies along RAS axis ras_of_axis[k]
  codes = "".join(nib.orientations.aff2axcodes(affine))
  vs = voxel_sizes(affine)
  ap_axis = int(np.flatnonzero(ras_of_axis == 1)[0])
  thick = [k for k in range(3)
           if vs[k] >= THICK_RATIO * max(vs[j] for j in range(3) if j != k)]
  sizes = "x".join(f"{v:.4g}" for v in vs)
  warning = None
  if plane in data.PLANES:
    axis = int(np.flatnonzero(ras_of_axis == data.plane_axes(plane)[0])[0])
    reason = f"--plane {plane}: slices across voxel axis {axis} (header {codes})"
  elif plane in ("0", "1", "2"):
    axis = int(plane)
    reason = (f"--plane {axis}: slices across voxel axis {axis}, the header's "
              f"{codes[axis]} axis ({_PLANE_OF_RAS_AXIS[ras_of_axis[axis]]} slices)")
  elif thick and thick[0] != ap_axis:
    axis = thick[0]
    reason = (f"voxel axis {axis} is >= {THICK_RATIO:g}x thicker than the others "
              f"({sizes} mm): the slice axis, against the header's anterior-posterior "
              f"axis {ap_axis} ({codes})")
    warning = (f"slicing across the thick voxel axis {axis} ({vs[axis]:.4g} mm), not "
               f"the header's anterior-posterior axis {ap_axis}: the header's "
               "orientation may be wrong; --plane 0|1|2 or coronal|axial|sagittal "
               "overrides")
  else:
    axis = ap_axis
    reason = (f"the header's anterior-posterior axis ({codes}, voxel axis {axis})"
              + (f", also the thick one ({sizes} mm)" if thick else
                 f"; no axis >= {THICK_RATIO:g}x thicker than the others ({sizes} mm)"))
  return _PLANE_OF_RAS_AXIS[ras_of_axis[axis]], axis, reason, warning


def remove_offset(image: np.ndarray) -> tuple[np.ndarray, float, str]:
  """Removes an intensity offset (see :data:`OFFSET_FRACTION`).

  Args:
    image: (X, Y, Z) float32.

  Returns:
    (image - offset, offset (0.0 when none), reason).
  """
  lo = float(image.min())
  _, params = data.normalise_intensity(image)
  robust = params["scale"]
  if lo < 0 or lo > OFFSET_FRACTION * robust:
    reason = (f"minimum {lo:.4g} is {'negative' if lo < 0 else 'above'}"
              f"{'' if lo < 0 else f' {OFFSET_FRACTION:g} x the robust maximum {robust:.4g}'}"
              ": subtracted, so that the background is 0 as in training")
    return (image - np.float32(lo)).astype(np.float32), lo, reason
  return image, 0.0, (f"minimum {lo:.4g} within [0, {OFFSET_FRACTION:g} x robust maximum "
                      f"{robust:.4g}]: no offset")


def to_volume(image: np.ndarray, affine: np.ndarray, *, plane: str, name: str,
              normalisation: dict) -> data.Volume:
  """Reorients to RAS+, normalises by the training rule and slices ``plane``."""
  ornt = nifti.to_ras(affine)
  ras = nib.orientations.apply_orientation(image, ornt)
  ras = data.apply_normalisation(ras, normalisation)
  return data.Volume(animal_id=name, image=data.to_slices(ras, plane), label=None,
                     brainmask=None, meta={}, normalisation=dict(normalisation),
                     affine=np.asarray(affine, np.float64),
                     shape=tuple(int(n) for n in image.shape), orientation=ornt,
                     plane=plane)



def file_to_slices(array: np.ndarray, volume: data.Volume) -> np.ndarray:
  """An array on the input's grid (file axes) as ``volume``'s slices (S, H, W)."""
  ras = nib.orientations.apply_orientation(np.asarray(array), volume.orientation)
  return data.to_slices(ras, volume.plane)


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

