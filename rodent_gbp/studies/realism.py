"""Input statistics of a scan set: how far the phantom is from real rodent MRI.

Pure numpy / scipy measurements (one SimpleITK call for the bias field), each
taking arrays in RAS+ order ``(X, Y, Z)`` with the coronal slice axis
``slice_axis`` (1 for every set here) and the voxel size in mm.
``experiments/data_statistics.py`` reads the sets, applies them per animal and
writes the table.

Distances are *in-plane*: measured inside each coronal slice (the image the
network sees), with the in-plane voxel size, and given in mm; a binary that
wants voxels divides by the in-plane voxel size (square in every set here).

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
* Partial volume: :func:`edge_profile` (mean intensity against the signed
  in-plane distance to a border between two regions) and
  :func:`transition_width` (the 10-90 % width of that profile);
  :func:`edge_width` chains them; :func:`rim_ratio` (the brain's outermost
  voxel ring over its interior). :func:`between_class_excess` is a second,
  model-free reading: how many more voxels at the border than far from it lie
  in the middle third between the two classes' medians.
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

def _in_plane(voxel_size: Sequence[float], slice_axis: int) -> tuple[float, float]:
  vs = [float(v) for v in voxel_size]
  if len(vs) != 3:
    raise ValueError(f"voxel_size must have 3 entries, got {voxel_size}")
  return tuple(v for i, v in enumerate(vs) if i != slice_axis)


def pixel_mm(voxel_size: Sequence[float], slice_axis: int = 1) -> float:
  """The in-plane voxel edge in mm (the mean of the two in-plane sizes)."""
  return float(np.mean(_in_plane(voxel_size, slice_axis)))


def _slices(a: np.ndarray, slice_axis: int) -> np.ndarray:
  """(S, H, W) view with the slice axis first."""
  return np.moveaxis(np.asarray(a), slice_axis, 0)


def brain_median(image: np.ndarray, mask: np.ndarray) -> float:
  """Median intensity inside ``mask`` (the reference level of every ratio here)."""
  mask = np.asarray(mask, bool)
  if not mask.any():
    raise ValueError("empty brain mask")
  return float(np.median(np.asarray(image, np.float64)[mask]))


def in_plane_distance(region: np.ndarray, voxel_size: Sequence[float], *,
                      slice_axis: int = 1) -> np.ndarray:
  """Distance in mm from every voxel to the nearest ``region`` voxel of its slice.

  Euclidean, between voxel centres, with the in-plane voxel size; 0 inside
  ``region``, ``inf`` in slices where ``region`` is empty.
  """
  region = np.asarray(region, bool)
  sampling = _in_plane(voxel_size, slice_axis)
  r = _slices(region, slice_axis)
  out = np.full(r.shape, np.inf)
  for j in range(r.shape[0]):
    if r[j].any():
      out[j] = ndimage.distance_transform_edt(~r[j], sampling=sampling)
  return np.moveaxis(out, 0, slice_axis)


def signed_border_distance(positive: np.ndarray, negative: np.ndarray,
                           voxel_size: Sequence[float], *, slice_axis: int = 1
                           ) -> np.ndarray:
  """Signed in-plane distance (mm) of voxel centres to the border of two regions.

  A ``positive`` voxel gets its distance to the nearest ``negative`` voxel of
  its slice minus half a voxel, a ``negative`` voxel minus (its distance to the
  nearest ``positive`` voxel minus half a voxel): the border is put midway
  between the last voxel of one side and the first of the other, so a sharp
  step sits between -0.5 and +0.5 voxels. Voxels in neither region, and those
  in slices lacking either, are NaN.
  """
  positive = np.asarray(positive, bool)
  negative = np.asarray(negative, bool) & ~positive
  half = 0.5 * pixel_mm(voxel_size, slice_axis)
  to_neg = in_plane_distance(negative, voxel_size, slice_axis=slice_axis)
  to_pos = in_plane_distance(positive, voxel_size, slice_axis=slice_axis)
  s = np.full(positive.shape, np.nan)
  s[positive] = to_neg[positive] - half
  s[negative] = -(to_pos[negative] - half)
  s[~np.isfinite(s)] = np.nan
  return s


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


# --- partial volume ----------------------------------------------------------------

def edge_profile(image: np.ndarray, positive: np.ndarray, negative: np.ndarray,
                 voxel_size: Sequence[float], *, slice_axis: int = 1,
                 max_voxels: float = 8.0, bin_voxels: float = 0.5,
                 exclude: np.ndarray | None = None,
                 exclude_voxels: float = 0.0) -> dict[str, np.ndarray]:
  """Mean intensity against the signed distance to the border of two regions.

  The signed distance is :func:`signed_border_distance` (positive side > 0),
  in in-plane voxels. Voxels are binned by it in bins of ``bin_voxels``
  centred on multiples of it, out to ``max_voxels`` on each side. With
  ``exclude``, voxels within ``exclude_voxels`` of it (in-plane) are left
  out: for a border between two tissue classes, the voxels near a third one.

  Returns:
    ``position`` (mean signed distance of each non-empty bin, voxels),
    ``mean`` (mean intensity), ``count`` (voxels per bin).
  """
  image = np.asarray(image, np.float64)
  px = pixel_mm(voxel_size, slice_axis)
  s = signed_border_distance(positive, negative, voxel_size, slice_axis=slice_axis) / px
  keep = np.isfinite(s) & (np.abs(s) <= max_voxels + bin_voxels / 2)
  if exclude is not None and np.asarray(exclude, bool).any():
    d = in_plane_distance(exclude, voxel_size, slice_axis=slice_axis) / px
    keep &= d > exclude_voxels
  sv, iv = s[keep], image[keep]
  b = np.round(sv / bin_voxels).astype(np.int64)
  if b.size == 0:
    return {"position": np.zeros(0), "mean": np.zeros(0), "count": np.zeros(0, np.int64)}
  b0 = b - b.min()
  count = np.bincount(b0)
  ok = count > 0
  pos = np.bincount(b0, weights=sv)[ok] / count[ok]
  mean = np.bincount(b0, weights=iv)[ok] / count[ok]
  return {"position": pos, "mean": mean, "count": count[ok]}


def _crossing(x0: float, y0: float, x1: float, y1: float, level: float) -> float:
  if y1 == y0:
    return 0.5 * (x0 + x1)
  return x0 + (level - y0) * (x1 - x0) / (y1 - y0)


def transition_width(position: np.ndarray, mean: np.ndarray, *,
                     lo_range: tuple[float, float], hi_range: tuple[float, float],
                     count: np.ndarray | None = None, lo_frac: float = 0.1,
                     hi_frac: float = 0.9, min_contrast: float = 0.05) -> dict[str, float]:
  """The 10-90 % width of an edge profile (:func:`edge_profile`).

  The two levels are the (count-weighted) mean profile over ``lo_range`` on
  the negative side and ``hi_range`` on the positive side (positions in
  voxels). The profile is rescaled to 0 at the first level and 1 at the
  second (either may be the brighter); ``s90`` is where it first reaches 0.9
  going from the negative side, ``s10`` where it last crosses 0.1 before that,
  both linearly interpolated between bins. A sharp step sampled at voxel
  centres gives at most 0.8 voxels (the crossing is interpolated between the
  bins at -0.5 and +0.5; less where the first bin overshoots the level); a
  straight border blurred by a Gaussian of sd ``g`` voxels gives
  2.563 sqrt(g^2 + 1/12) (the half-voxel placement of the border adds 1/12),
  a curved one a few per cent less.

  Where the two levels differ by less than ``min_contrast`` of the larger
  one there is no edge to measure (labels that do not follow the image), and
  the width is NaN.

  Returns:
    ``width`` (voxels; NaN where the profile never reaches 0.9 or 0.1, or the
    levels are too close), ``s10``, ``s90``, ``lo`` and ``hi`` (the levels).
  """
  x = np.asarray(position, np.float64)
  y = np.asarray(mean, np.float64)
  w = np.ones_like(x) if count is None else np.asarray(count, np.float64)
  def level(r):
    sel = (x >= r[0]) & (x <= r[1])
    return float(np.sum(w[sel] * y[sel]) / np.sum(w[sel])) if sel.any() else float("nan")
  lo, hi = level(lo_range), level(hi_range)
  nan = {"width": float("nan"), "s10": float("nan"), "s90": float("nan"), "lo": lo,
         "hi": hi}
  if not (np.isfinite(lo) and np.isfinite(hi)) or (
      abs(hi - lo) <= min_contrast * max(abs(hi), abs(lo))):
    return nan
  order = np.argsort(x)
  x, p = x[order], (y[order] - lo) / (hi - lo)
  i90 = np.nonzero(p >= hi_frac)[0]
  i90 = i90[x[i90] >= lo_range[1]]
  if i90.size == 0 or i90[0] == 0:
    return nan
  k = int(i90[0])
  s90 = _crossing(x[k - 1], p[k - 1], x[k], p[k], hi_frac)
  below = np.nonzero(p[:k] <= lo_frac)[0]
  if below.size == 0:
    return nan
  m = int(below[-1])
  s10 = _crossing(x[m], p[m], x[m + 1], p[m + 1], lo_frac)
  return {"width": float(s90 - s10), "s10": float(s10), "s90": float(s90), "lo": lo,
          "hi": hi}


def edge_width(image: np.ndarray, positive: np.ndarray, negative: np.ndarray,
               voxel_size: Sequence[float], *, lo_range: tuple[float, float],
               hi_range: tuple[float, float], slice_axis: int = 1,
               bin_voxels: float = 0.5, exclude: np.ndarray | None = None,
               exclude_voxels: float = 0.0) -> dict[str, float]:
  """:func:`edge_profile` then :func:`transition_width`; widths in in-plane voxels.

  Adds ``width_mm`` (the width times the in-plane voxel size).
  """
  reach = max(abs(lo_range[0]), abs(hi_range[1]))
  prof = edge_profile(image, positive, negative, voxel_size, slice_axis=slice_axis,
                      max_voxels=reach, bin_voxels=bin_voxels, exclude=exclude,
                      exclude_voxels=exclude_voxels)
  out = transition_width(prof["position"], prof["mean"], count=prof["count"],
                         lo_range=lo_range, hi_range=hi_range)
  out["width_mm"] = out["width"] * pixel_mm(voxel_size, slice_axis)
  return out


def rim_ratio(image: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float], *,
              interior: tuple[float, float] = (3.0, 6.0), slice_axis: int = 1) -> float:
  """Mean of the brain's outermost voxel ring over the mean deeper inside.

  The ring: voxels of ``mask`` with an in-plane 4-neighbour outside it (signed
  distance 0.5 voxel, :func:`signed_border_distance`); deeper: signed distance
  in ``interior`` voxels. Below 1: a dark rim (partial volume with the dark
  outside, or a dark surface layer); above 1: a bright one (surface CSF).
  """
  image = np.asarray(image, np.float64)
  mask = np.asarray(mask, bool)
  px = pixel_mm(voxel_size, slice_axis)
  s = signed_border_distance(mask, ~mask, voxel_size, slice_axis=slice_axis) / px
  ring = mask & (np.abs(s - 0.5) < 0.25)
  deep = mask & (s >= interior[0]) & (s <= interior[1])
  if not ring.any() or not deep.any():
    return float("nan")
  return float(image[ring].mean() / image[deep].mean())


def between_class_excess(image: np.ndarray, class_a: np.ndarray, class_b: np.ndarray,
                         voxel_size: Sequence[float], *, slice_axis: int = 1,
                         far_voxels: float = 2.0,
                         exclude: np.ndarray | None = None,
                         exclude_voxels: float = 2.0) -> dict[str, float]:
  """Partial volume without a profile model: intermediate voxels at a border.

  The middle band is the middle third between the medians of the two
  classes. ``border`` is the fraction of voxels of either class with an
  in-plane 8-neighbour of the other class whose intensity falls in the band;
  ``far`` the same fraction over the voxels more than ``far_voxels`` from the
  other class (noise alone puts voxels there). ``excess = border - far``:
  about 0 for sharp borders, up to 1 where every border voxel is a mixture.
  Voxels within ``exclude_voxels`` of ``exclude`` (a third class) are left out.
  """
  image = np.asarray(image, np.float64)
  a, b = np.asarray(class_a, bool), np.asarray(class_b, bool) & ~np.asarray(class_a, bool)
  px = pixel_mm(voxel_size, slice_axis)
  keep = np.ones(image.shape, bool)
  if exclude is not None and np.asarray(exclude, bool).any():
    keep = in_plane_distance(exclude, voxel_size, slice_axis=slice_axis) / px > exclude_voxels
  ma, mb = float(np.median(image[a & keep])), float(np.median(image[b & keep]))
  lo, hi = sorted((ma, mb))
  band = (image > lo + (hi - lo) / 3) & (image < hi - (hi - lo) / 3)
  da = in_plane_distance(a, voxel_size, slice_axis=slice_axis) / px
  db = in_plane_distance(b, voxel_size, slice_axis=slice_axis) / px
  near = np.where(a, db, da) < 1.5          # an in-plane 8-neighbour of the other class
  far = np.where(a, db, da) > far_voxels
  both = (a | b) & keep
  border, interior = both & near, both & far
  if not border.any() or not interior.any():
    return {"border": float("nan"), "far": float("nan"), "excess": float("nan")}
  fb, ff = float(band[border].mean()), float(band[interior].mean())
  return {"border": fb, "far": ff, "excess": fb - ff, "median_a": ma, "median_b": mb}


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
  m = _slices(mask, slice_axis)
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
  from rodent_gbp.datasets import pseudo_labels
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
