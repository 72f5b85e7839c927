"""In-plane distances, and what an image does across the border of two regions.

Pure numpy / scipy geometry on volumes in RAS+ order ``(X, Y, Z)`` with the
coronal slice axis ``slice_axis`` (1 for every set here) and the voxel size
in mm. Distances are *in-plane*: measured inside each coronal slice, with
the in-plane voxel size, in mm. The input statistics (``studies.realism``)
read partial volume and surroundings with them.

* Geometry: :func:`pixel_mm` (the in-plane voxel edge), :func:`slices_first`,
  :func:`in_plane_distance` (to the nearest voxel of a region) and
  :func:`signed_border_distance` (to the border between two regions).
* Partial volume: :func:`edge_profile` (mean intensity against the signed
  in-plane distance to a border between two regions) and
  :func:`transition_width` (the 10-90 % width of that profile);
  :func:`edge_width` chains them; :func:`rim_ratio` (the brain's outermost
  voxel ring over its interior). :func:`between_class_excess` is a second,
  model-free reading: how many more voxels at the border than far from it lie
  in the middle third between the two classes' medians.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def _in_plane(voxel_size: Sequence[float], slice_axis: int) -> tuple[float, float]:
  vs = [float(v) for v in voxel_size]
  if len(vs) != 3:
    raise ValueError(f"voxel_size must have 3 entries, got {voxel_size}")
  return tuple(v for i, v in enumerate(vs) if i != slice_axis)


def pixel_mm(voxel_size: Sequence[float], slice_axis: int = 1) -> float:
  """The in-plane voxel edge in mm (the mean of the two in-plane sizes)."""
  return float(np.mean(_in_plane(voxel_size, slice_axis)))


def slices_first(a: np.ndarray, slice_axis: int) -> np.ndarray:
  """(S, H, W) view with the slice axis first."""
  return np.moveaxis(np.asarray(a), slice_axis, 0)


def in_plane_distance(region: np.ndarray, voxel_size: Sequence[float], *,
                      slice_axis: int = 1) -> np.ndarray:
  """Distance in mm from every voxel to the nearest ``region`` voxel of its slice.

  Euclidean, between voxel centres, with the in-plane voxel size; 0 inside
  ``region``, ``inf`` in slices where ``region`` is empty.
  """
  region = np.asarray(region, bool)
  sampling = _in_plane(voxel_size, slice_axis)
  r = slices_first(region, slice_axis)
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
