"""Input statistics of a scan set: how far the phantom is from real rodent MRI.

Pure numpy / scipy measurements (one SimpleITK call for the bias field), each
taking arrays in RAS+ order ``(X, Y, Z)`` with the coronal slice axis
``slice_axis`` (1 for every set here) and the voxel size in mm.
``experiments/data_statistics.py`` reads the sets, applies them per animal and
writes the table.

Distances are *in-plane*: measured inside each coronal slice (the image the
network sees), with the in-plane voxel size, and given in mm; a binary that
wants voxels divides by the in-plane voxel size (square in every set here).
The distances and the partial-volume measurements at a border are
``studies.common.borders``'.

* Surroundings: :func:`shell_ratio` (mean intensity in a shell of in-plane
  distances outside the brain mask over the mean inside it),
  :func:`bright_surroundings` (a high percentile outside the mask over the
  brain median).
* Noise: :func:`corner_background` (level, robust sd and the Rayleigh sigma of
  the darkest in-plane corner patches, the air of the field of view) and
  :func:`residual_noise_sd` (the robust sd of a 3 x 3 second-difference filter
  inside the brain, Immerkaer 1996, whose gain for white noise is exactly 6).
* Bias field: ``pseudo_labels.n4_log_bias_field`` (SimpleITK N4 inside the brain mask,
  one thread) and :func:`field_ratio` (its 95th over 5th percentile inside the
  mask); :func:`class_bias_field` is the check where the tissue intensities are
  known (the phantom): image over class intensity, smoothed inside the mask.
* Partial volume (``studies.common.borders``): ``edge_width`` (the 10-90 %
  width of the mean intensity against the signed in-plane distance to a
  border between two regions), ``rim_ratio`` (the brain's outermost voxel
  ring over its interior) and ``between_class_excess`` (how many more voxels
  at the border than far from it lie in the middle third between the two
  classes' medians).
* Size: :func:`brain_volume_mm3`, :func:`in_plane_extent_mm`,
  :func:`coefficient_of_variation`.
* One animal at a time: :func:`surroundings_statistics` (raw volume with a
  brain mask), :func:`tissue_statistics` (with trustworthy tissue labels),
  :func:`bias_statistics`, :func:`size_statistics`.
* Over a set: :func:`summarise` / :func:`summarise_set` (median and range over
  animals), :func:`set_level_statistics` (CVs); :func:`table_rows` and
  :func:`markdown_table` lay out :data:`TABLE_ROWS`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from rodent_gbp.studies.common.borders import (between_class_excess, edge_width,
                                               in_plane_distance, pixel_mm, rim_ratio,
                                               slices_first)
from rodent_gbp.datasets import pseudo_labels

#: 1.4826 * MAD is the sd of a normal law.
MAD_TO_SD = 1.4826
#: Immerkaer's 3 x 3 kernel: the outer product of two second differences; on
#: white noise of sd s its output has sd 6 s (sqrt of the sum of squares, 36).
IMMERKAER = np.outer([1.0, -2.0, 1.0], [1.0, -2.0, 1.0])
IMMERKAER_GAIN = 6.0
#: Median of a Rayleigh law of scale sigma (the magnitude of complex noise of
#: sd sigma per channel, i.e. MRI background): sigma * sqrt(2 ln 2).
RAYLEIGH_MEDIAN = math.sqrt(2.0 * math.log(2.0))


# --- helpers -------------------------------------------------------------------

def brain_median(image: np.ndarray, mask: np.ndarray) -> float:
  """Median intensity inside ``mask`` (the reference level of every ratio here)."""
  mask = np.asarray(mask, bool)
  if not mask.any():
    raise ValueError("empty brain mask")
  return float(np.median(np.asarray(image, np.float64)[mask]))


def summarise(values: Sequence[float]) -> dict[str, Any]:
  """Median, min, max and count of the finite values (None where there are none)."""
  v = np.asarray([x for x in values if x is not None], np.float64)
  v = v[np.isfinite(v)]
  if v.size == 0:
    return {"median": None, "min": None, "max": None, "n": 0}
  return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
          "n": int(v.size)}


# --- surroundings ----------------------------------------------------------------

def shell_ratio(image: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float],
                lo_mm: float, hi_mm: float, *, slice_axis: int = 1) -> float:
  """Mean intensity in a shell outside the brain over the mean inside it.

  The shell is the voxels outside ``mask`` whose in-plane distance to the mask
  (:func:`in_plane_distance`) lies in ``(lo_mm, hi_mm]``: with ``lo_mm = 0``
  and ``hi_mm`` = 2 voxels, the first two voxels out (distances 1, sqrt 2, 2).

  Returns:
    mean(image in shell) / mean(image in mask); NaN if the shell is empty.
  """
  image = np.asarray(image, np.float64)
  mask = np.asarray(mask, bool)
  d = in_plane_distance(mask, voxel_size, slice_axis=slice_axis)
  shell = ~mask & (d > lo_mm) & (d <= hi_mm)
  if not shell.any():
    return float("nan")
  return float(image[shell].mean() / image[mask].mean())


def bright_surroundings(image: np.ndarray, mask: np.ndarray, *,
                        percentile: float = 99.0) -> float:
  """``percentile`` of the intensities outside ``mask`` over the brain median."""
  image = np.asarray(image, np.float64)
  mask = np.asarray(mask, bool)
  return float(np.percentile(image[~mask], percentile) / brain_median(image, mask))


# --- noise -------------------------------------------------------------------------

def corner_patches(shape: Sequence[int], *, slice_axis: int = 1,
                   fraction: float = 0.1) -> list[np.ndarray]:
  """Masks of the four in-plane corners, ``fraction`` of each in-plane side, all slices."""
  s = list(shape)
  axes = [i for i in range(3) if i != slice_axis]
  n = [max(1, int(round(fraction * s[a]))) for a in axes]
  out = []
  for lo0 in (True, False):
    for lo1 in (True, False):
      m = np.zeros(s, bool)
      idx = [slice(None)] * 3
      idx[axes[0]] = slice(0, n[0]) if lo0 else slice(s[axes[0]] - n[0], None)
      idx[axes[1]] = slice(0, n[1]) if lo1 else slice(s[axes[1]] - n[1], None)
      m[tuple(idx)] = True
      out.append(m)
  return out


def corner_background(image: np.ndarray, *, mask: np.ndarray | None = None,
                      slice_axis: int = 1, fraction: float = 0.1,
                      corners: int = 2) -> dict[str, float]:
  """The air of the field of view: the ``corners`` darkest in-plane corner patches.

  Each of the four corner patches (:func:`corner_patches`, every slice) is
  ranked by its median; the darkest ``corners`` are pooled (voxels of
  ``mask``, if given, left out; foreign objects in a corner weigh little on
  a median).

  Returns:
    ``level`` (median), ``mean``, ``robust_sd`` (1.4826 x MAD) and
    ``rayleigh_sigma`` (median / sqrt(2 ln 2): the per-channel noise sd if the
    patches hold pure magnitude noise, Rician with zero signal) of the pooled
    voxels, in image units, and ``voxels``.
  """
  image = np.asarray(image, np.float64)
  keep = np.ones(image.shape, bool) if mask is None else ~np.asarray(mask, bool)
  patches = [p & keep for p in corner_patches(image.shape, slice_axis=slice_axis,
                                              fraction=fraction)]
  patches = [p for p in patches if p.any()]
  if not patches:
    raise ValueError("no corner voxels outside the mask")
  order = np.argsort([np.median(image[p]) for p in patches], kind="stable")
  pooled = np.concatenate([image[patches[i]] for i in order[:corners]])
  med = float(np.median(pooled))
  return {"level": med, "mean": float(pooled.mean()),
          "robust_sd": float(MAD_TO_SD * np.median(np.abs(pooled - med))),
          "rayleigh_sigma": med / RAYLEIGH_MEDIAN, "voxels": int(pooled.size)}


def residual_noise_sd(image: np.ndarray, region: np.ndarray, *,
                      slice_axis: int = 1) -> float:
  """Robust white-noise sd inside ``region`` from a 3 x 3 second-difference filter.

  The in-plane kernel :data:`IMMERKAER` (outer product of [1, -2, 1] with
  itself) removes every field that is linear along either in-plane axis and
  almost all of a smooth one (bias, slow tissue change); on white noise of sd
  ``s`` its output has sd ``6 s``. The estimate is 1.4826 x MAD of the output
  over the voxels whose whole 3 x 3 neighbourhood lies in ``region``, over 6:
  the MAD ignores the few voxels on sharp edges inside the region. Noise that
  is correlated between neighbours (interpolated or filtered images) reads
  lower than its per-voxel sd.
  """
  image = np.asarray(image, np.float64)
  region = np.asarray(region, bool)
  k = np.expand_dims(IMMERKAER, slice_axis)
  r = ndimage.correlate(image, k, mode="nearest")
  st = np.expand_dims(np.ones((3, 3), bool), slice_axis)
  inner = ndimage.binary_erosion(region, structure=st)
  if not inner.any():
    raise ValueError("region has no voxel with its whole 3 x 3 neighbourhood inside")
  v = r[inner]
  return float(MAD_TO_SD * np.median(np.abs(v - np.median(v))) / IMMERKAER_GAIN)


# --- bias field --------------------------------------------------------------------

def field_ratio(log_field: np.ndarray, mask: np.ndarray, *, lo: float = 5.0,
                hi: float = 95.0) -> float:
  """exp(p_hi - p_lo) of a log field inside ``mask``: the field's hi / lo percentile ratio."""
  v = np.asarray(log_field, np.float64)[np.asarray(mask, bool)]
  p = np.percentile(v, [lo, hi])
  return float(np.exp(p[1] - p[0]))


def class_bias_field(image: np.ndarray, labels: np.ndarray,
                     class_values: dict[int, float], voxel_size: Sequence[float], *,
                     sigma_mm: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
  """The bias field where each class's true intensity is known (a phantom).

  ``image / class_values[label]`` on the voxels of the listed classes,
  smoothed by a Gaussian of ``sigma_mm`` (3D, normalised convolution: only
  those voxels count), which averages the noise out of the ratio.

  Returns:
    (log field (X, Y, Z) float64, the voxels it is defined on).
  """
  image = np.asarray(image, np.float64)
  labels = np.asarray(labels)
  known = np.isin(labels, list(class_values))
  truth = np.zeros(image.shape)
  for c, v in class_values.items():
    truth[labels == c] = float(v)
  ratio = np.where(known, image / np.where(known, truth, 1.0), 0.0)
  sigma = [sigma_mm / float(v) for v in voxel_size]
  num = ndimage.gaussian_filter(ratio, sigma, mode="nearest")
  den = ndimage.gaussian_filter(known.astype(np.float64), sigma, mode="nearest")
  field = np.where(known, num / np.maximum(den, 1e-12), 1.0)
  return np.log(np.maximum(field, 1e-12)), known


# --- size ----------------------------------------------------------------------------

def brain_volume_mm3(mask: np.ndarray, voxel_size: Sequence[float]) -> float:
  """Voxels of ``mask`` times the voxel volume (mm^3)."""
  return float(np.count_nonzero(mask) * np.prod([float(v) for v in voxel_size]))


def in_plane_extent_mm(mask: np.ndarray, voxel_size: Sequence[float], *,
                       slice_axis: int = 1) -> dict[str, float]:
  """The brain's largest extent along each axis, in mm.

  ``width`` (R-L, axis 0) and ``height`` (S-I, axis 2): the largest span
  (first to last voxel, inclusive) over the coronal slices; ``length`` (A-P):
  the number of slices holding brain times the slice thickness. Axis names
  assume RAS+ with the coronal slice axis 1.
  """
  mask = np.asarray(mask, bool)
  vs = [float(v) for v in voxel_size]
  m = slices_first(mask, slice_axis)
  in_axes = [i for i in range(3) if i != slice_axis]
  spans = [0, 0]
  for j in range(m.shape[0]):
    if not m[j].any():
      continue
    for k, ax in enumerate((1, 0)):          # (S, H, W): axis 1 of the slice is H
      idx = np.nonzero(m[j].any(axis=ax))[0]
      spans[k] = max(spans[k], int(idx[-1] - idx[0] + 1))
  n_slices = int(np.count_nonzero(m.reshape(m.shape[0], -1).any(axis=1)))
  return {"width": spans[0] * vs[in_axes[0]], "height": spans[1] * vs[in_axes[1]],
          "length": n_slices * vs[slice_axis]}


def coefficient_of_variation(values: Sequence[float]) -> float:
  """Sample sd (ddof 1) over the mean; NaN for fewer than two values."""
  v = np.asarray(values, np.float64)
  if v.size < 2:
    return float("nan")
  return float(np.std(v, ddof=1) / np.mean(v))


# --- one animal's statistics ------------------------------------------------------

#: Shells outside the brain, in in-plane voxels: (lo, hi] of the distance to the mask.
GAP_SHELL = (0.0, 2.0)       # the first two voxels out: the dark gap before skull / muscle
TISSUE_SHELL = (2.0, 8.0)    # voxels 3-8 out: skull, muscle, scalp
#: Edge-profile levels, in in-plane voxels of signed distance (negative side, positive side).
BRAIN_EDGE_LEVELS = ((-3.0, -1.0), (3.0, 6.0))
GM_WM_LEVELS = ((-3.0, -1.5), (1.5, 3.0))
#: Voxels nearer than this to CSF or background are left out of the GM / WM border.
THIRD_CLASS_VOXELS = 2.0
WM, GM, CSF = 1, 2, 3


def surroundings_statistics(image: np.ndarray, mask: np.ndarray,
                            voxel_size: Sequence[float], *,
                            slice_axis: int = 1) -> dict[str, float]:
  """Surroundings and background of one raw (unstripped) volume, over the brain level.

  Returns (every intensity divided by the brain median, except the two
  shells, which are over the brain mean):

  * ``gap_ratio``: :func:`shell_ratio` over :data:`GAP_SHELL` voxels out;
  * ``tissue_ratio``: the same over :data:`TISSUE_SHELL`;
  * ``bright_p99``: :func:`bright_surroundings` at the 99th percentile;
  * ``corner_level``, ``corner_sd``, ``corner_rayleigh_sigma``:
    :func:`corner_background` (two darkest of the four corner patches, 10 % of
    each in-plane side); ``corner_sd_over_level``: its robust sd over its level
    (about 0.5 for one magnitude image of pure noise, lower for an average of
    several);
  * ``noise_brain``: :func:`residual_noise_sd` over the whole brain mask;
  * ``rim_ratio``: :func:`rim_ratio` of the raw image (brain edge against
    what lies just outside it, which is no part of the ratio).
  """
  px = pixel_mm(voxel_size, slice_axis)
  bm = brain_median(image, mask)
  cb = corner_background(image, mask=mask, slice_axis=slice_axis)
  return {
      "gap_ratio": shell_ratio(image, mask, voxel_size, GAP_SHELL[0] * px,
                               GAP_SHELL[1] * px, slice_axis=slice_axis),
      "tissue_ratio": shell_ratio(image, mask, voxel_size, TISSUE_SHELL[0] * px,
                                  TISSUE_SHELL[1] * px, slice_axis=slice_axis),
      "bright_p99": bright_surroundings(image, mask),
      "corner_level": cb["level"] / bm,
      "corner_sd": cb["robust_sd"] / bm,
      "corner_rayleigh_sigma": cb["rayleigh_sigma"] / bm,
      "corner_sd_over_level": cb["robust_sd"] / cb["level"] if cb["level"] > 0 else float("nan"),
      "noise_brain": residual_noise_sd(image, mask, slice_axis=slice_axis) / bm,
      "rim_ratio": rim_ratio(image, mask, voxel_size, slice_axis=slice_axis),
  }


def tissue_statistics(image: np.ndarray, labels: np.ndarray, voxel_size: Sequence[float],
                      *, slice_axis: int = 1) -> dict[str, float]:
  """Partial volume and noise of one volume with trustworthy tissue labels.

  ``labels``: 0 background, 1 WM, 2 GM, 3 CSF; brain = labels > 0.

  Returns:
    ``brain_edge_width`` (voxels) and ``brain_edge_width_mm``: :func:`edge_width`
    across the brain edge of the skull-stripped image (0 outside the brain,
    levels :data:`BRAIN_EDGE_LEVELS`); ``gm_wm_width`` and ``gm_wm_width_mm``:
    across the GM (positive side) / WM border, voxels within
    :data:`THIRD_CLASS_VOXELS` of CSF or background left out (levels
    :data:`GM_WM_LEVELS`); ``gm_wm_excess``: :func:`between_class_excess` of
    the same border; ``wm_over_gm``: the WM median over the GM median (the
    contrast the border spans); ``noise_gm``: :func:`residual_noise_sd` inside
    GM over the brain median; ``rim_ratio``: :func:`rim_ratio` of the brain.
  """
  image = np.asarray(image, np.float64)
  labels = np.asarray(labels)
  brain = labels > 0
  wm, gm = labels == WM, labels == GM
  third = (labels == CSF) | ~brain
  stripped = np.where(brain, image, 0.0)
  edge = edge_width(stripped, brain, ~brain, voxel_size, lo_range=BRAIN_EDGE_LEVELS[0],
                    hi_range=BRAIN_EDGE_LEVELS[1], slice_axis=slice_axis)
  border = edge_width(image, gm, wm, voxel_size, lo_range=GM_WM_LEVELS[0],
                      hi_range=GM_WM_LEVELS[1], slice_axis=slice_axis, exclude=third,
                      exclude_voxels=THIRD_CLASS_VOXELS)
  excess = between_class_excess(image, wm, gm, voxel_size, slice_axis=slice_axis,
                                exclude=third, exclude_voxels=THIRD_CLASS_VOXELS)
  bm = brain_median(image, brain)
  return {
      "brain_edge_width": edge["width"], "brain_edge_width_mm": edge["width_mm"],
      "gm_wm_width": border["width"], "gm_wm_width_mm": border["width_mm"],
      "gm_wm_excess": excess["excess"],
      "wm_over_gm": float(np.median(image[wm]) / np.median(image[gm])),
      "noise_gm": residual_noise_sd(image, gm, slice_axis=slice_axis) / bm,
      "rim_ratio": rim_ratio(image, brain, voxel_size, slice_axis=slice_axis),
  }


def size_statistics(mask: np.ndarray, voxel_size: Sequence[float], *,
                    slice_axis: int = 1) -> dict[str, float]:
  """``volume_mm3`` (:func:`brain_volume_mm3`), ``width_mm``, ``height_mm``,
  ``length_mm`` (:func:`in_plane_extent_mm`) and ``fov_fraction`` (the brain's
  R-L width over the field of view's, axis 0)."""
  ext = in_plane_extent_mm(mask, voxel_size, slice_axis=slice_axis)
  fov = np.asarray(mask).shape[0] * float(voxel_size[0])
  return {"volume_mm3": brain_volume_mm3(mask, voxel_size), "width_mm": ext["width"],
          "height_mm": ext["height"], "length_mm": ext["length"],
          "fov_fraction": ext["width"] / fov}


def bias_statistics(image: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float]
                    ) -> dict[str, float]:
  """``bias_p95_p5``: :func:`field_ratio` of the N4 log field inside ``mask``
  (``pseudo_labels.n4_log_bias_field``: the settings of the ``mouse_epi`` pseudo-labels)."""
  return {"bias_p95_p5": field_ratio(
      pseudo_labels.n4_log_bias_field(image, mask, voxel_size), mask)}


# --- the table -----------------------------------------------------------------------

#: (section, statistic key, what it is, the real set it is compared on[, the
#: phantom's key where it differs]).
TABLE_ROWS = (
    ("surroundings", "gap_ratio", "mean 1-2 voxels outside the brain / brain mean",
     "mouse_epi"),
    ("surroundings", "tissue_ratio", "mean 3-8 voxels outside the brain / brain mean",
     "mouse_epi"),
    ("surroundings", "bright_p99", "99th percentile outside the brain / brain median",
     "mouse_epi"),
    ("surroundings", "rim_ratio", "outermost brain voxel ring / brain 3-6 voxels in",
     "mouse_epi"),
    ("surroundings", "fov_fraction", "brain R-L width / field of view R-L", "mouse_epi"),
    ("noise", "corner_level", "background level: median of the 2 darkest corner patches "
     "/ brain median", "mouse_epi"),
    ("noise", "corner_sd", "background robust sd (1.4826 MAD, same patches) / brain median",
     "mouse_epi"),
    ("noise", "corner_sd_over_level", "background robust sd / background level",
     "mouse_epi"),
    ("noise", "noise_brain", "noise sd in the brain mask (3x3 second-difference residual, "
     "MAD) / brain median", "mouse_epi"),
    ("noise", "noise_gm", "the same inside GM only / brain median", "mouse_t2_atlas"),
    ("bias", "bias_p95_p5", "bias field p95 / p5 inside the brain (N4)", "mouse_epi"),
    ("bias", "bias_p95_p5", "bias field p95 / p5 inside the brain (N4)", "mouse_t2_atlas"),
    ("partial volume", "brain_edge_width", "brain edge 10-90 % width, skull-stripped "
     "(voxels)", "mouse_t2_atlas"),
    ("partial volume", "brain_edge_width_mm", "the same in mm", "mouse_t2_atlas"),
    ("partial volume", "brain_edge_width", "brain edge 10-90 % width (voxels)",
     "mouse_t2_atlas_paper"),
    ("partial volume", "rim_ratio", "outermost brain voxel ring / brain 3-6 voxels in",
     "mouse_t2_atlas"),
    ("partial volume", "gm_wm_width", "GM/WM border 10-90 % width (voxels)",
     "mouse_t2_atlas"),
    ("partial volume", "gm_wm_width_mm", "the same in mm", "mouse_t2_atlas"),
    ("partial volume", "gm_wm_excess", "GM/WM border voxels in the middle third between "
     "the class medians, minus the same fraction far from the border",
     "mouse_t2_atlas"),
    ("partial volume", "wm_over_gm", "WM median / GM median", "mouse_t2_atlas"),
    ("size", "volume_mm3", "brain volume (mm^3)", "mouse_t2_atlas"),
    ("size", "volume_cv", "CV of brain volume over animals", "mouse_t2_atlas"),
    ("size", "volume_cv_WT", "CV of brain volume within one genotype: WT (phantom: all)",
     "mouse_t2_atlas", "volume_cv"),
    ("size", "volume_cv_UT", "CV of brain volume within one genotype: UT (phantom: all)",
     "mouse_t2_atlas", "volume_cv"),
    ("size", "width_mm", "largest R-L width of the brain (mm)", "mouse_t2_atlas"),
    ("size", "width_cv", "CV of that width over animals", "mouse_t2_atlas"),
    ("size", "height_mm", "largest S-I height of the brain (mm)", "mouse_t2_atlas"),
    ("size", "height_cv", "CV of that height over animals", "mouse_t2_atlas"),
    ("size", "volume_mm3", "brain volume (mm^3; voxel size uncertain)", "mouse_epi"),
    ("size", "volume_cv", "CV of brain volume over animals", "mouse_epi"),
    ("size", "width_cv", "CV of the largest R-L width over animals", "mouse_epi"),
    ("size", "height_cv", "CV of the largest S-I height over animals", "mouse_epi"),
)


def summarise_set(per_animal: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
  """Per statistic, :func:`summarise` over the animals of one set."""
  keys = sorted({k for row in per_animal.values() for k in row})
  return {k: summarise([row.get(k) for row in per_animal.values()]) for k in keys}


def set_level_statistics(per_animal: dict[str, dict[str, float]], *,
                         groups: dict[str, Sequence[str]] | None = None
                         ) -> dict[str, float]:
  """CVs over the animals of one set: ``volume_cv``, ``width_cv``, ``height_cv``;
  with ``groups`` (name -> animal ids, e.g. genotypes), also
  ``volume_cv_<name>`` over each group's animals."""
  def cv(key, ids):
    return coefficient_of_variation([per_animal[a][key] for a in ids
                                     if per_animal[a].get(key) is not None])
  ids = sorted(per_animal)
  out = {f"{k}_cv": cv(f"{k}_mm{'3' if k == 'volume' else ''}", ids)
         for k in ("volume", "width", "height")}
  for name, members in (groups or {}).items():
    out[f"volume_cv_{name}"] = cv("volume_mm3", [a for a in members if a in per_animal])
  return out


def format_number(x: Any) -> str:
  """Three significant digits (whole numbers from 100 up); ``n/a`` for None or NaN."""
  if x is None or (isinstance(x, float) and not math.isfinite(x)):
    return "n/a"
  x = float(x)
  if x == 0:
    return "0"
  if abs(x) >= 100:
    return f"{x:.0f}"
  return f"{x:.3g}"


def _cell(summary: dict[str, Any] | None, set_level: dict[str, float] | None,
          key: str) -> str:
  if set_level is not None and key in set_level:
    return format_number(set_level[key])
  if summary is None or key not in summary or summary[key]["n"] == 0:
    return "n/a"
  s = summary[key]
  n_all = max(v["n"] for v in summary.values())
  return (f"{format_number(s['median'])} [{format_number(s['min'])}, "
          f"{format_number(s['max'])}]" + (f" (n={s['n']})" if s["n"] < n_all else ""))


def table_rows(summary: dict[str, dict], set_level: dict[str, dict]) -> list[dict[str, str]]:
  """The :data:`TABLE_ROWS` filled in: section, statistic, phantom, real, set.

  ``summary`` and ``set_level``: set name -> :func:`summarise_set` /
  :func:`set_level_statistics`; the phantom is the set ``"phantom"``. Rows of
  a set that was not measured are left out. A cell over fewer animals than
  the set has (a statistic undefined on some) says how many.
  """
  rows = []
  for section, key, label, real, *rest in TABLE_ROWS:
    if real not in summary:
      continue
    pkey = rest[0] if rest else key
    rows.append({"section": section, "key": key, "statistic": label,
                 "phantom": _cell(summary.get("phantom"), set_level.get("phantom"), pkey),
                 "real": _cell(summary[real], set_level.get(real), key), "set": real})
  return rows


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
  """``statistic | phantom median [range] | real median [range] | set`` (CV rows: one
  value over the set)."""
  lines = ["| statistic | phantom median [range] | real median [range] | set |",
           "|---|---|---|---|"]
  section = None
  for r in rows:
    if r["section"] != section:
      section = r["section"]
      lines.append(f"| **{section}** | | | |")
    lines.append(f"| {r['statistic']} | {r['phantom']} | {r['real']} | {r['set']} |")
  return "\n".join(lines) + "\n"
