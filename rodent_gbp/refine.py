"""Refining a placed brain mask to the individual brain with an edge/evidence image.

Every placer of ``rodent_gbp.placement`` moves (and scales) *another animal's*
mask, so none can beat the best training mask at its best shift and scale
(the ``oracle`` evaluator). The GBP gradient image of a raw slice responds
most strongly on the brain's edges; this module moves the placed contour onto
that evidence, per slice, with no training on raw images.

Method (per slice, one jitted call per volume; :func:`refine_masks`):

1. Rays. ``rays`` directions at equal angles from the placed mask's
   centroid. Along each ray the placed contour's radius ``r0`` is where the
   ray first enters a pixel outside the mask (sampled every 1/4 pixel).
2. Candidates. Per ray, radii ``r0 + o`` for offsets ``o`` in
   ``-reach..reach`` by ``step`` pixels. Each candidate boundary point's
   evidence is the evidence image sampled (bilinear) at the radius
   ``r0 + o - bias`` (``bias`` > 0: the evidence peaks that far inside the
   brain's edge) as its value (``feature="value"``: a ridge on the edge, e.g.
   a gradient magnitude; bilinear samples of a ridge peak at pixel centres,
   so its position is good to half a pixel) or its outward drop
   ``E(r - 1) - E(r + 1)`` (``feature="drop"``: an image high inside and low
   outside, e.g. GBP, whose steepest fall is found to a quarter pixel).
   The slice's evidence is divided by its largest magnitude over the
   candidates, so the penalties below mean the same on every slice and
   image.
3. Choice. One offset per ray minimising, around the closed contour,
   ``sum_j [-E_j(o_j) + prior * |o_j|] + smoothness * sum_j |o_j - o_{j+1}|``
   (offsets in pixels, ray ``R`` is ray 0): exact dynamic programming
   (Viterbi) along the rays for every offset of ray 0, the best closed path
   kept. With no evidence (``E = 0``) and ``prior > 0`` every offset is 0
   and the mask is returned unchanged.
4. Mask. Per pixel, its angle interpolates the chosen radius ``r`` and the
   placed ``r0`` between the two nearest rays; where the contour moved out
   (``r > r0``) the pixel joins the mask if its distance from the centroid
   is at most ``r``, where it moved in it leaves the mask if farther than
   ``r``; elsewhere it keeps the placed value. Slices whose placed mask has
   fewer than ``min_area`` pixels are left as placed. The result may be
   dilated by ``dilate`` pixels (the removal mask's margin).

``iterations`` > 1 repeats steps 1-4 from the refined mask, so the contour
may travel farther than ``reach`` where the evidence leads it.

The evidence image (:func:`evidence_image`) is the ablation switch
``source``: ``gbp`` (the raw pass's GBP gradient image, the paper's
saliency), ``log`` (its log, ``enhance.log_gradient``), ``enhanced`` (Eq. 1 of
it), or ``intensity`` (the gradient magnitude of the raw slice: no saliency).
A randomised network's GBP image is the ``gbp`` source computed with other
params (``rodent_gbp.studies.refine_study``).

The placer ``gbp_refined`` (``placement.place_refined``) starts from
``gbp_improved``'s placement (the chosen candidate before its dilation) and
refines it with the raw pass's GBP gradient image under :data:`REFINED`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import candidates as candidates_lib
from rodent_gbp import enhance
from rodent_gbp.errors import UsageError

SOURCES = ("gbp", "log", "enhanced", "intensity")
FEATURES = ("value", "drop")


@dataclasses.dataclass(frozen=True)
class RefineOptions:
  """Settings of the contour refinement; hashable (a static jit argument).

  Attributes:
    source: evidence image (``SOURCES``): gbp | log | enhanced | intensity.
    feature: ``value`` (the evidence at the boundary) or ``drop`` (its
      outward decrease across the boundary, over +-1 pixel).
    rays: number of rays around the contour.
    reach: largest offset (pixels) of the boundary from the placed contour.
    step: offset step (pixels).
    smoothness: cost per pixel of offset change between neighbouring rays.
    prior: cost per pixel of offset from the placed contour.
    bias: pixels by which the boundary lies outside the evidence's peak.
    iterations: refinement passes (each starts from the last result).
    min_area: placed masks with fewer pixels stay as placed.
    dilate: pixels by which the refined mask is dilated (4-neighbour steps).
    center, width: Eq. 1 parameters of the ``enhanced`` source.
  """

  source: str = "gbp"
  feature: str = "value"
  rays: int = 96
  reach: float = 3.0
  step: float = 0.5
  smoothness: float = 0.5
  prior: float = 0.05
  bias: float = 0.0
  iterations: int = 1
  min_area: int = 20
  dilate: int = 0
  center: float = 2.0
  width: float = 0.5

  def __post_init__(self):
    if self.source not in SOURCES:
      raise UsageError(f"unknown refinement source {self.source!r}; one of {', '.join(SOURCES)}")
    if self.feature not in FEATURES:
      raise UsageError(f"unknown refinement feature {self.feature!r}; one of "
                       f"{', '.join(FEATURES)}")
    if self.rays < 8 or self.step <= 0 or self.reach < 0 or self.iterations < 1:
      raise UsageError(f"refinement needs rays >= 8, step > 0, reach >= 0, iterations >= 1; "
                       f"got rays={self.rays}, step={self.step}, reach={self.reach}, "
                       f"iterations={self.iterations}")
    if self.smoothness < 0 or self.prior < 0:
      raise UsageError("refinement penalties (smoothness, prior) must be >= 0")
    if not 0 <= self.dilate <= candidates_lib.MAX_MARGIN:
      raise UsageError(f"dilate {self.dilate} outside 0..{candidates_lib.MAX_MARGIN}")

  @property
  def offsets(self) -> np.ndarray:
    """(N,) candidate offsets in pixels, ``-reach..reach`` by ``step`` (0 included)."""
    n = int(math.floor(self.reach / self.step + 1e-9))
    return (np.arange(-n, n + 1) * self.step).astype(np.float32)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


#: The shipped reading of ``gbp_refined`` (chosen on mouse_epi fold 0's
#: validation animals 07, 10, 22 by ``experiments/refine_study.py``;
#: ``experiments/results/refine/mouse_epi_fold0/``).
#: GBP has its strongest response 2-3 pixels inside the brain's edge and
#: falls off across it, so the boundary is placed where the GBP image drops
#: fastest outward, 1 pixel outside the probe.
REFINED = RefineOptions(source="gbp", feature="drop", bias=1.0, smoothness=0.3, prior=0.0,
                        reach=3.0, iterations=1)


# --- evidence ------------------------------------------------------------------------


@jax.jit
def gradient_magnitude(images: jax.Array) -> jax.Array:
  """(..., H, W) magnitude of the in-plane intensity gradient (central differences)."""
  images = jnp.asarray(images, jnp.float32)
  gy, gx = jnp.gradient(images, axis=(-2, -1))
  return jnp.sqrt(gy * gy + gx * gx)


def evidence_image(slices: np.ndarray, gradient: np.ndarray | None,
                   options: RefineOptions) -> np.ndarray:
  """(S, H, W) evidence image of ``options.source``.

  Args:
    slices: (S, H, W) raw slices.
    gradient: (S, H, W) GBP gradient image of the slices (needed by every
      source but ``intensity``).
    options: the refinement settings.
  Raises:
    UsageError: a saliency source without a gradient image, or shapes that
    differ.
  """
  slices = np.asarray(slices, np.float32)
  if options.source == "intensity":
    return np.asarray(gradient_magnitude(slices))
  if gradient is None:
    raise UsageError(f"refinement source {options.source!r} needs the GBP gradient image")
  gradient = np.asarray(gradient, np.float32)
  if gradient.shape != slices.shape:
    raise UsageError(f"gradient image {gradient.shape} and slices {slices.shape} differ")
  if options.source == "gbp":
    return gradient
  if options.source == "log":
    # Shifted to be >= 0 inside the frame: the search normalises by magnitude.
    lg = np.asarray(enhance.log_gradient(gradient))
    return lg - lg.min(axis=(-2, -1), keepdims=True)
  return np.asarray(enhance.enhance_gradient(gradient, center=options.center,
                                             width=options.width))


# --- the contour search ----------------------------------------------------------------


def _sample(image: jax.Array, ys: jax.Array, xs: jax.Array) -> jax.Array:
  """Bilinear samples of (H, W) ``image`` at (...) points; zero outside."""
  return jax.scipy.ndimage.map_coordinates(image, [ys, xs], order=1, mode="constant", cval=0.0)


def contour_radii(mask: jax.Array, centre: jax.Array, directions: jax.Array,
                  sample_step: float = 0.25) -> jax.Array:
  """(R,) radius of the mask's contour along each ray from ``centre``.

  The first point (every ``sample_step`` pixels) whose nearest pixel is
  outside the mask: the edge between the last inside and the first outside
  pixel centre, where an edge image of the slice responds (the disk of the
  pixels within r of a point has radii r +- 0.5, r on average). A ray that never
  leaves the mask inside the frame gets the frame's height plus width.

  Args:
    mask: (H, W) float mask.
    centre: (2,) (y, x).
    directions: (R, 2) unit (dy, dx).
  """
  h, w = mask.shape
  t = jnp.arange(0.0, float(h + w), sample_step, dtype=jnp.float32)      # (T,)
  ys = centre[0] + directions[:, :1] * t[None, :]
  xs = centre[1] + directions[:, 1:] * t[None, :]
  m = jax.scipy.ndimage.map_coordinates(mask, [ys, xs], order=0, mode="constant", cval=0.0)
  below = m < 0.5                                                         # (R, T)
  first = jnp.argmax(below, axis=-1)
  never = ~jnp.any(below, axis=-1)
  # The edge lies between the last inside sample and the first outside one.
  r = (jnp.maximum(first, 1).astype(jnp.float32) - 0.5) * sample_step
  return jnp.where(never, float(h + w), r)


def circular_viterbi(unary: jax.Array, pair: jax.Array) -> jax.Array:
  """Exact minimiser of a closed chain: sum_j unary[j, o_j] + sum_j pair[o_j, o_{j+1 mod R}].

  Args:
    unary: (R, N) costs.
    pair: (N, N) transition costs.
  Returns:
    (R,) int32 state per position; ties go to the lowest state index reached
    first (``argmin``).
  """
  unary = jnp.asarray(unary, jnp.float32)
  pair = jnp.asarray(pair, jnp.float32)
  num_rays, n = unary.shape

  def from_start(s):
    start = jnp.where(jnp.arange(n) == s, unary[0], jnp.inf)

    def forward(cost, u):
      total = cost[:, None] + pair                                       # (from, to)
      back = jnp.argmin(total, axis=0)
      return jnp.min(total, axis=0) + u, back

    cost, backs = jax.lax.scan(forward, start, unary[1:])
    closed = cost + pair[:, s]
    last = jnp.argmin(closed)

    def backward(state, back):
      prev = back[state]
      return prev, state

    first, path = jax.lax.scan(backward, last, backs, reverse=True)
    states = jnp.concatenate([first[None], path])
    return closed[last], states

  totals, paths = jax.vmap(from_start)(jnp.arange(n))
  # Prefer the start nearest the middle state (offset 0) at ties.
  order = jnp.abs(jnp.arange(n) - n // 2)
  best = jnp.argmin(totals + 1e-6 * order.astype(jnp.float32))
  return paths[best].astype(jnp.int32)


#: Fields of :class:`RefineOptions` passed to the jitted search as data (one
#: compilation serves every value); the others fix shapes or branches.
TRACED = ("smoothness", "prior", "bias", "min_area", "dilate")


def _refine_slice(mask: jax.Array, evidence: jax.Array, values: dict[str, jax.Array],
                  options: RefineOptions) -> dict[str, jax.Array]:
  """One pass of steps 1-4 on one (H, W) slice; see the module doc."""
  h, w = mask.shape
  m = mask.astype(jnp.float32)
  rows = jnp.arange(h, dtype=jnp.float32)[:, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :]
  area = jnp.sum(m)
  safe = jnp.where(area > 0, area, 1.0)
  centre = jnp.stack([jnp.sum(m * rows) / safe, jnp.sum(m * cols) / safe])
  angles = jnp.arange(options.rays, dtype=jnp.float32) * (2 * math.pi / options.rays)
  directions = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)     # (R, 2)
  r0 = contour_radii(m, centre, directions)                               # (R,)
  offs = jnp.asarray(options.offsets)                                     # (N,)
  radius = jnp.maximum(r0[:, None] + offs[None, :], 0.0)                  # (R, N)

  def at(r):
    return _sample(evidence, centre[0] + directions[:, :1] * r,
                   centre[1] + directions[:, 1:] * r)

  probe = radius - values["bias"]
  if options.feature == "value":
    e = at(probe)
  else:
    e = at(probe - 1.0) - at(probe + 1.0)
  scale = jnp.max(jnp.abs(e))
  e = e / jnp.where(scale > 0, scale, 1.0)
  unary = -e + values["prior"] * jnp.abs(offs)[None, :]
  pair = values["smoothness"] * jnp.abs(offs[:, None] - offs[None, :])
  states = circular_viterbi(unary, pair)
  chosen = offs[states]                                                   # (R,)
  r_new = jnp.maximum(r0 + chosen, 0.0)

  # Per pixel: the two nearest rays by angle, linear in between.
  dy, dx = rows - centre[0], cols - centre[1]
  rho = jnp.sqrt(dy * dy + dx * dx)
  u = jnp.mod(jnp.arctan2(dy, dx), 2 * math.pi) / (2 * math.pi / options.rays)
  j0 = jnp.floor(u).astype(jnp.int32) % options.rays
  j1 = (j0 + 1) % options.rays
  f = u - jnp.floor(u)
  r_px = (1 - f) * r_new[j0] + f * r_new[j1]
  r0_px = (1 - f) * r0[j0] + f * r0[j1]
  placed = mask.astype(bool)
  moved_out = r_px > r0_px + 1e-4
  moved_in = r_px < r0_px - 1e-4
  out = jnp.where(moved_out, placed | (rho <= r_px),
                  jnp.where(moved_in, placed & (rho <= r_px), placed))
  keep = area < values["min_area"]
  out = jnp.where(keep, placed, out)
  return {"mask": out, "offset": jnp.where(keep, 0.0, chosen), "radius": r0,
          "centre": centre}


@functools.partial(jax.jit, static_argnames=("options",))
def _refine_jit(masks: jax.Array, evidence: jax.Array, values: dict[str, jax.Array], *,
                options: RefineOptions) -> dict[str, jax.Array]:
  cur = masks
  out: dict[str, jax.Array] = {}
  for _ in range(options.iterations):
    out = jax.vmap(lambda m, e: _refine_slice(m, e, values, options))(cur, evidence)
    cur = out["mask"]
  out["mask"] = candidates_lib.dilate(cur, values["dilate"])
  return out


def refine_masks(masks: jax.Array, evidence: jax.Array, options: RefineOptions
                 ) -> dict[str, jax.Array]:
  """Refines placed masks (S, H, W) with evidence images (S, H, W); see the module doc.

  Jitted; the fields :data:`TRACED` are data, so settings that differ only
  in them share one compilation.

  Returns:
    ``mask`` (S, H, W) bool (dilated by ``options.dilate``), ``offset``
    (S, R) chosen offsets of the last pass (pixels), ``radius`` (S, R) the
    placed contour's radii of the last pass and ``centre`` (S, 2).
  """
  values = {k: jnp.asarray(getattr(options, k),
                           jnp.int32 if k == "dilate" else jnp.float32) for k in TRACED}
  static = dataclasses.replace(options, **{k: getattr(RefineOptions, k) for k in TRACED})
  return _refine_jit(jnp.asarray(masks, bool), jnp.asarray(evidence, jnp.float32), values,
                     options=static)


def refine(masks: np.ndarray, evidence: np.ndarray, options: RefineOptions = REFINED
           ) -> dict[str, np.ndarray]:
  """:func:`refine_masks` on host arrays, with the shapes checked.

  Raises:
    UsageError: masks and evidence that are not both (S, H, W) of one shape.
  """
  masks = np.asarray(masks)
  evidence = np.asarray(evidence, np.float32)
  if masks.ndim != 3 or masks.shape != evidence.shape:
    raise UsageError(f"refinement needs masks and evidence (S, H, W) of one shape; got "
                     f"{masks.shape} and {evidence.shape}")
  out = refine_masks(masks.astype(bool), evidence, options)
  return {k: np.asarray(v) for k, v in out.items()}


# --- the placer -------------------------------------------------------------------------
