"""Candidate masks of the improved placement: the bank aligned to its reference and scaled.

Each training animal's masks are moved by the integer shift that brings their
centroid (over all slices) onto the reference animal's, so every candidate
shares the reference's frame; each aligned mask is then scaled about its
centroid. :class:`CandidateBank` builds the candidates of one bank once per
reading and keeps them on the device. The search that scores them is
``rodent_gbp.search``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import correlate
from rodent_gbp import enhance
from rodent_gbp.errors import DataError

@dataclasses.dataclass
class Candidates:
  """Scaled templates of the aligned bank.

  Attributes:
    masks: (A, S, N, H, W) bool candidate masks (N scales), reference frame.
    windows: (A, S, N, H, W) bool masks dilated by ``margin`` (zncc windows).
    templates: (A, S, N, H, W) float32 candidate templates.
    to_reference: (A, 2) int shift that aligned each animal to the reference.
    scales: the N scales.
    reference: index of the reference animal (in axis 0).
    kind: the template reading (gradient | enhanced | mask | appearance).
    windows: (A, S, N, H, W) bool masks dilated by ``margin``.
    margin: that margin.
    animal_index: (A,) bank index of each candidate animal (None: 0..A-1).
  """

  masks: jax.Array
  templates: jax.Array
  to_reference: np.ndarray
  scales: tuple[float, ...]
  reference: int
  kind: str
  windows: jax.Array | None = None
  margin: int = 0
  animal_index: np.ndarray | None = None
  frame_box: tuple[int, int, int, int] | None = None

  def box(self) -> tuple[int, int, int, int]:
    """(y0, x0, h, w): the bounding box of every candidate's window and mask.

    Scores only look inside it; heights and widths are rounded up to a
    multiple of 8 (fewer distinct compilations), clipped to the frame.
    ``frame_box``, when set (a box holding them all), is used instead.
    """
    if self.frame_box is not None:
      return self.frame_box
    if getattr(self, "_box", None) is None:
      support = np.array(jnp.any(self.masks, axis=(0, 1, 2)))
      if self.windows is not None:
        support |= np.asarray(jnp.any(self.windows, axis=(0, 1, 2)))
      support |= np.asarray(jnp.any(self.templates != 0, axis=(0, 1, 2)))
      fh, fw = support.shape
      if not support.any():
        self._box = (0, 0, fh, fw)
      else:
        ys, xs = np.flatnonzero(support.any(1)), np.flatnonzero(support.any(0))
        h = min(fh, -(-(ys[-1] + 1 - ys[0]) // 8) * 8)
        w = min(fw, -(-(xs[-1] + 1 - xs[0]) // 8) * 8)
        self._box = (int(min(ys[0], fh - h)), int(min(xs[0], fw - w)), int(h), int(w))
    return self._box


def alignment_shifts(masks: np.ndarray, reference: int) -> np.ndarray:
  """(A, 2) integer shifts moving each animal's (S, H, W) masks onto the reference's.

  The difference of the in-plane centroids of the whole brain (all slices),
  rounded. Overlap maximisation was the first reading, but it is ambiguous
  when one brain fits inside another (every shift keeping the smaller one
  inside scores the same); centroids are not, and animals of another size
  grow about a point near the centroid.
  """
  masks = np.asarray(masks, bool)
  h, w = masks.shape[-2:]
  rows = np.arange(h)[:, None]
  cols = np.arange(w)[None, :]
  count = masks.sum(axis=(1, 2, 3)).astype(np.float64)
  if np.any(count == 0):
    raise DataError("a template animal has an empty brain mask")
  cy = (masks * rows).sum(axis=(1, 2, 3)) / count
  cx = (masks * cols).sum(axis=(1, 2, 3)) / count
  centroid = np.stack([cy, cx], axis=-1)
  return np.round(centroid[reference] - centroid).astype(np.int32)


def _scale_about_centroid(image: jax.Array, weight: jax.Array, scale: jax.Array) -> jax.Array:
  """(H, W) ``image`` scaled by ``scale`` about the centroid of ``weight``.

  out(n) = image(c + (n - c) / scale), bilinear, zero outside the frame.
  An empty ``weight`` scales about the frame's centre.
  """
  h, w = image.shape
  rows = jnp.arange(h, dtype=jnp.float32)[:, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :]
  total = jnp.sum(weight)
  safe = jnp.where(total > 0, total, 1.0)
  cy = jnp.where(total > 0, jnp.sum(weight * rows) / safe, (h - 1) / 2.0)
  cx = jnp.where(total > 0, jnp.sum(weight * cols) / safe, (w - 1) / 2.0)
  src_y = cy + (rows - cy) / scale + jnp.zeros_like(cols)
  src_x = cx + (cols - cx) / scale + jnp.zeros_like(rows)
  return jax.scipy.ndimage.map_coordinates(image, [src_y, src_x], order=1, mode="constant",
                                           cval=0.0)


#: Largest window margin (pixels); the margin is data of one compilation.
MAX_MARGIN = 8


@jax.jit
def dilate(mask: jax.Array, radius: jax.Array) -> jax.Array:
  """(..., H, W) bool masks dilated by ``radius`` pixels (4-neighbour steps).

  Each step adds the pixels sharing an edge with the mask (a diamond of the
  given radius in total); radius 0 returns the mask. ``radius`` may be traced
  (at most :data:`MAX_MARGIN`), so every radius shares one compilation.
  """
  mask = jnp.asarray(mask, bool)

  def step(i, m):
    p = jnp.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)])
    grown = m | p[..., :-2, 1:-1] | p[..., 2:, 1:-1] | p[..., 1:-1, :-2] | p[..., 1:-1, 2:]
    return jnp.where(i < radius, grown, m)

  return jax.lax.fori_loop(0, MAX_MARGIN, step, mask)


@jax.jit
def _scaled_candidates(masks: jax.Array, weights: jax.Array, scales: jax.Array,
                       margin: jax.Array, whole_window: jax.Array):
  """Masks, windows (M, N, H, W) bool and templates (M, N, H, W) for (M, H, W) inputs.

  The template is the scaled weight over the scaled mask, or over the whole
  window (mask dilated by ``margin``) when ``whole_window``. Called once per
  bank animal (M = its slices), so every reading shares one compilation.
  """
  m = masks.astype(jnp.float32)

  def one(mask, wgt):
    def at(scale):
      sm = _scale_about_centroid(mask, mask, scale) >= 0.5
      sw = _scale_about_centroid(wgt, mask, scale)
      win = dilate(sm, margin)
      inside = jnp.where(whole_window, win, sm)
      return sm, win, inside.astype(jnp.float32) * sw
    return jax.vmap(at)(scales)

  return jax.vmap(one)(m, weights)


def _template_weights(kind: str, gradients: jax.Array, center: float, width: float) -> jax.Array:
  """What a template holds over its support, per reading (Fig. 7a and options)."""
  if kind in ("appearance", "gradient"):
    # appearance: an image of the whole window (brain and its surroundings).
    return gradients
  if kind == "enhanced":
    return enhance.enhance_gradient(gradients, center=center, width=width)
  if kind == "mask":
    return jnp.ones_like(gradients)
  raise ValueError(f"unknown template {kind!r}; gradient | enhanced | mask | appearance")


def build_candidates(bank, *, template: str = "gradient",
                     scales: Sequence[float] = (1.0,), center: float = 2.0,
                     width: float = 0.5, margin: int = 0,
                     appearance: np.ndarray | None = None,
                     animals: Sequence[int] | None = None) -> Candidates:
  """Aligns ``bank`` (``pipeline.TemplateBank``) to its reference and scales it.

  Alignment: :func:`alignment_shifts`; scaling: about each aligned mask's
  centroid, bilinear, masks thresholded at 0.5.

  Args:
    bank: template bank with masks and gradients (A, S, H, W).
    template: template reading, gradient | enhanced | mask.
    scales: N scales about each mask's centroid.
    center, width: Eq. 1 parameters for ``enhanced``.
    margin: pixels around each mask inside the comparison window of the
      ``zncc`` score (the dark skull ring around a brain is part of its look).
    appearance: (A, S, H, W) images for ``template="appearance"``: the
      template is this image over the whole window (e.g. the log of the GBP
      gradient image of the bank's *raw* slices, what a test slice looks like).
    animals: bank indices to build candidates of (default all; must hold
      the reference); the alignment is the whole bank's either way.
  Returns:
    :class:`Candidates` (arrays on the device).
  """
  idx = np.arange(len(bank.masks)) if animals is None else np.asarray(animals, np.int64)
  if bank.reference not in idx:
    raise ValueError("the candidates' animals must include the reference")
  masks = jnp.asarray(bank.masks[idx])
  grads = jnp.asarray(bank.gradients[idx])
  to_ref = jnp.asarray(alignment_shifts(bank.masks, bank.reference)[idx])
  a, s, h, w = masks.shape
  # Align each animal (all slices) by its integer shift; zero-filled.
  masks = correlate.shift_image(masks, to_ref[:, None, :])
  if template == "appearance":
    if appearance is None:
      raise ValueError("template 'appearance' needs the appearance images")
    grads = jnp.asarray(np.asarray(appearance, np.float32)[idx])
  if not 0 <= margin <= MAX_MARGIN:
    raise ValueError(f"margin {margin} outside 0..{MAX_MARGIN}")
  grads = correlate.shift_image(grads, to_ref[:, None, :])
  weights = _template_weights(template, grads.astype(jnp.float32), center, width)
  sc = jnp.asarray(scales, jnp.float32)
  parts = [_scaled_candidates(masks[i], weights[i], sc, jnp.asarray(margin, jnp.int32),
                              jnp.asarray(template == "appearance")) for i in range(a)]
  cm, cw, ct = (jnp.stack(x) for x in zip(*parts))
  return Candidates(masks=cm, templates=ct, windows=cw, margin=margin,
                    to_reference=np.asarray(to_ref), scales=tuple(float(x) for x in scales),
                    reference=int(np.flatnonzero(idx == bank.reference)[0]), kind=template,
                    animal_index=idx)


def candidate_set(options, cands: Candidates) -> np.ndarray:
  """(A, 2 * slice_offsets + 1, N) bool: the candidates ``options`` consider.

  Axis 1 runs over slice offsets ``-slice_offsets..slice_offsets`` of the
  bank's candidates. The selection is *data* of the jitted placement, so
  options that differ only in which candidates count share one compilation.
  """
  num_animals, _, num_scales = cands.masks.shape[:3]
  num_off = 2 * options.slice_offsets + 1
  valid = np.zeros((num_animals, num_off, num_scales), bool)
  wanted = [float(s) for s in options.scales]
  scale_idx = [i for i, s in enumerate(cands.scales) if any(abs(s - x) < 1e-6 for x in wanted)]
  if len(scale_idx) != len(wanted):
    raise ValueError(f"scales {options.scales} not all in the candidates' {cands.scales}")
  if options.choose_template:
    valid[:, :, scale_idx] = True
  else:
    valid[cands.reference, options.slice_offsets, scale_idx] = True
  return valid



class CandidateBank:
  """Builds and keeps the candidates of one template bank, per reading.

  Args:
    bank: ``pipeline.TemplateBank``.
    appearance, available: :func:`bank_appearance` (needed for
      ``template="appearance"``; only the available animals are candidates).
    scales: the scales built for choosing (options pick a subset).
  """

  def __init__(self, bank, *, appearance: np.ndarray | None = None,
               available: np.ndarray | None = None,
               scales: Sequence[float] = (0.94, 0.97, 1.0, 1.03, 1.06)):
    self.bank = bank
    self.appearance = appearance
    self.available = (np.ones(len(bank.masks), bool) if available is None
                      else np.asarray(available, bool))
    self.scales = tuple(scales)
    self._built: dict = {}

  def get(self, template: str, margin: int, *, center: float = 2.0, width: float = 0.5,
          locate_only: bool = False) -> Candidates:
    """Candidates of one reading; ``locate_only``: the reference at scale 1 only.

    All share one scoring box (:meth:`Candidates.box`: the masks' box grown
    by the largest margin), so placements compile once per candidate count.
    """
    app = template == "appearance"
    key = (template, margin, center, width, locate_only)
    if key not in self._built:
      animals = (np.flatnonzero(self.available) if app and not locate_only
                 else (self.bank.reference,) if locate_only else None)
      c = build_candidates(
          self.bank, template=template, scales=self.scales, center=center, width=width,
          margin=margin, appearance=self.appearance if app else None, animals=animals)
      if locate_only:
        unit = [int(np.argmin(np.abs(np.asarray(self.scales) - 1.0)))]
        c = dataclasses.replace(c, masks=c.masks[:, :, unit], templates=c.templates[:, :, unit],
                                windows=c.windows[:, :, unit], scales=(1.0,))
      self._built[key] = dataclasses.replace(c, frame_box=self.box())
    return self._built[key]

  def box(self) -> tuple[int, int, int, int]:
    """The scoring box shared by every reading of this bank."""
    if getattr(self, "_box", None) is None:
      full = build_candidates(self.bank, template="mask", scales=self.scales, margin=0)
      y0, x0, h, w = full.box()
      fh, fw = self.bank.masks.shape[-2:]
      grow = MAX_MARGIN
      y1, x1 = min(fh, y0 + h + grow), min(fw, x0 + w + grow)
      y0, x0 = max(0, y0 - grow), max(0, x0 - grow)
      h, w = min(fh, -(-(y1 - y0) // 8) * 8), min(fw, -(-(x1 - x0) // 8) * 8)
      self._box = (min(y0, fh - h), min(x0, fw - w), h, w)
    return self._box

  def for_options(self, o) -> tuple[Candidates, Candidates | None]:
    """(candidates of ``o.signal``, those of the intensity choice or None)."""
    two_stage = o.choice == "intensity"
    cands = self.get(o.template, o.margin, center=o.center, width=o.width,
                     locate_only=two_stage)
    choice = self.get("mask", o.choice_margin) if two_stage else None
    return cands, choice

  def masks(self) -> Candidates:
    """Candidates of every bank animal and scale (for the oracle and truth)."""
    return self.get("mask", 2)

