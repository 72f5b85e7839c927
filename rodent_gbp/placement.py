"""Improved mask placement: template choice, scale, volume consistency, confidence.

The paper places one reference animal's mask at one slice index (section 4.3,
Fig. 7) and loses tissue DSC to misplacement and to brains of another size
(section 4.4, Fig. 8). Here every training animal's mask at the slice position
and its neighbours, at several scales, is a candidate; the candidates are one
more batch axis of a single jitted call per test volume.

Frames. The bank animals were acquired at their own displacements, so the bank
is first *aligned*: each animal's masks are moved by the integer shift that
brings their centroid (over all slices) onto the reference animal's (masks
only, no truth needed). All candidates then share the reference's frame and one
displacement means the same for all of them. A candidate of animal ``a`` placed
by ``d`` is exactly right when ``d = disp[test] - disp[a] - to_reference[a]``
(``disp`` the acquisition displacements meta.json records); that is the truth
used for placement errors and for the oracle.

Steps for one test volume with signal (S, H, W) (e.g. the enhanced GBP gradient
image of each raw slice):

1. ``coarse``: FFT correlation of each slice's signal with the mean of the
   candidates' unscaled templates at that slice (one map per slice); argmax
   ``d0`` and the peak-to-sidelobe ratio (PSR) of the map as the slice's
   placement confidence.
2. ``volume``: one rigid in-plane displacement ``D`` per volume, the
   confidence-weighted median of ``d0`` over slices with PSR >= threshold.
3. ``local``: every candidate scored at every shift within ``radius`` of the
   search centre (``D`` in volume mode; otherwise ``d0``, or ``D`` for slices
   below the threshold: the fallback) by normalised cross-correlation
   ``<I, T> / (||T|| sqrt(<I^2, supp T>))`` (a cosine, so a bigger template
   does not win by size), as one (positions x candidates) matmul per slice.
4. ``choose``: volume mode picks the shift maximising the confidence-weighted
   sum over slices of each slice's best candidate score (one displacement for
   the volume), then per slice the best candidate at that shift; per-slice mode
   picks the best (shift, candidate) of each slice.

The main job's reading (:data:`IMPROVED`, :func:`place_improved`) runs these
steps twice. *Locate*: the log GBP gradient image of the raw test slices
against the reference animal's own raw-slice log GBP gradient image (brain
plus a 6-pixel ring, zero-mean NCC) gives one displacement per volume.
*Choose*: every candidate's bare mask (plus a 2-pixel ring) is scored by
zero-mean NCC against the plain intensity within ``choice_radius`` of it. On
the default run the GBP signals located the brain exactly but chose template
and scale worse than the intensity (brain DSC 0.9795 by the GBP appearance of
the reference's offsets and scales, 0.9773 with every animal's, 0.9725 by
mask x gradient, against 0.9866 by intensity and 0.9876 for the oracle).

The removal mask can be dilated (``dilate`` pixels) before the test image is
masked and segmented again: surface CSF is one or two pixels thick, and a mask
one pixel too small cuts it off, while the network labels a thin ring of dark
background outside the brain as background.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import correlate
from rodent_gbp import enhance

# Incremented each time :func:`_place_volume` is traced (tests check it).
TRACE_COUNT = {"place_volume": 0}


@dataclasses.dataclass(frozen=True)
class ImprovedOptions:
  """Settings of the improved placement; hashable (a static jit argument).

  Attributes:
    signal: test image correlated with the templates: ``enhanced`` (Eq. 1 of
      the gradient image), ``gradient`` (raw gradient image), ``log`` (its
      log, :func:`log_gradient`) or ``intensity``.
    method: saliency method of the test gradient image (guided | vanilla |
      deconvnet); the bank's templates stay the GBP ones.
    template: ``gradient`` (mask x the bank's gradient image, Fig. 7a),
      ``enhanced`` (mask x Eq. 1 of it), ``mask``, or ``appearance`` (the
      log gradient image of the bank's raw slices over the window).
    margin: window margin (pixels) of the ``zncc`` score.
    choose_template: candidates from every bank animal and slice offsets
      ``-slice_offsets..slice_offsets``; False: the reference at the same slice.
    slice_offsets: through-plane neighbours considered (+-).
    scales: template scales about the mask's centroid; ``(1.0,)`` = no scaling.
    volume: one rigid displacement per volume (else one per slice).
    radius: half-width of the local search window (pixels) around the centre.
    min_confidence: PSR below which a slice is not trusted: it gets no weight
      in the volume's displacement and, per slice, falls back to it.
    score: ``zncc`` (zero-mean NCC over the window), ``ncc`` (normalised
      cross-correlation) or ``energy`` (<I, T> / ||T||).
    choice: how the candidate (animal, slice offset, scale) is chosen.
      ``intensity``: two stages; ``signal`` against the *reference's*
      template at the same slice and scale 1 finds the displacement, then
      every candidate's bare mask is scored against the plain intensity
      (zero-mean NCC over the mask and a ``choice_margin`` ring) within
      ``radius`` of it. ``none``: one stage, the candidates are scored by
      ``signal`` against their own templates.
    choice_margin: window margin (pixels) of the intensity choice.
    choice_radius: half-width of its search window around the displacement.
    dilate: pixels by which the removal mask is dilated before re-segmentation.
    center, width: Eq. 1 parameters for enhanced signals and templates.
  """

  signal: str = "enhanced"
  method: str = "guided"
  template: str = "gradient"
  choose_template: bool = True
  slice_offsets: int = 2
  scales: tuple[float, ...] = (0.94, 0.97, 1.0, 1.03, 1.06)
  volume: bool = True
  radius: int = 3
  min_confidence: float = 3.0
  score: str = "ncc"
  margin: int = 0
  choice: str = "none"
  choice_margin: int = 2
  choice_radius: int = 2
  dilate: int = 1
  center: float = 2.0
  width: float = 0.5

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["scales"] = list(self.scales)
    return d


# --------------------------------------------------------------------------
# Candidate bank: aligned, scaled templates (built once per bank and reading).
# --------------------------------------------------------------------------


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
    raise ValueError("a template animal has an empty brain mask")
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


def _dilate_upto(mask: jax.Array, radius: jax.Array) -> jax.Array:
  """:func:`dilate` with a traced radius (at most :data:`MAX_MARGIN`)."""
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
      win = _dilate_upto(sm, margin)
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


def candidate_set(options: ImprovedOptions, cands: Candidates) -> np.ndarray:
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


# --------------------------------------------------------------------------
# The placement of one volume: one jitted call, candidates a batch axis.
# --------------------------------------------------------------------------


def weighted_median(values: jax.Array, weights: jax.Array) -> jax.Array:
  """Weighted median of (S,) values (lower one at ties); uniform if weights sum to 0."""
  weights = jnp.where(jnp.sum(weights) > 0, weights, jnp.ones_like(weights))
  order = jnp.argsort(values)
  cum = jnp.cumsum(weights[order])
  k = jnp.argmax(cum >= 0.5 * cum[-1])
  return values[order][k]


def _window_offsets(radius: int) -> jax.Array:
  r = jnp.arange(-radius, radius + 1, dtype=jnp.int32)
  return jnp.stack(jnp.meshgrid(r, r, indexing="ij"), axis=-1).reshape(-1, 2)


def _local_scores(signal: jax.Array, centre: jax.Array, templates: jax.Array,
                  masks: jax.Array, windows: jax.Array, offsets: jax.Array,
                  score: str, box: tuple[int, int, int, int]) -> jax.Array:
  """(P, K) scores of K templates (K, h, w) at shifts ``centre + offsets`` (P, 2).

  Templates, masks and windows are cropped to ``box`` = (y0, x0, h, w) of the
  (H, W) frame (everything outside is zero), the signal (H, W) is not.

  The template moved by d is compared with the signal as the signal moved by
  -d compared with the template: one shift per position, then matmuls over
  candidates. ``zncc`` compares over each candidate's window (mask dilated by
  the margin), zero-mean: a cosine of the deviations from the window means.
  """
  full = signal.shape[0] * signal.shape[1]
  y0, x0, h, w = box
  windows_p = correlate.shift_image(signal, -(centre[None, :] + offsets))   # (P, H, W)
  windows_p = windows_p[:, y0:y0 + h, x0:x0 + w]
  flat_i = windows_p.reshape(windows_p.shape[0], h * w)
  flat_t = templates.reshape(templates.shape[0], h * w)
  num = flat_i @ flat_t.T
  norm_t = jnp.sqrt(jnp.sum(flat_t * flat_t, axis=-1))
  safe_t = jnp.where(norm_t > 0, norm_t, 1.0)
  floor = 1e-6 * jnp.sum(signal * signal) / full + 1e-12
  if score == "energy":
    out = num / safe_t[None, :]
  elif score == "ncc":
    energy = (flat_i * flat_i) @ masks.reshape(masks.shape[0], h * w).astype(jnp.float32).T
    out = num / (safe_t[None, :] * jnp.sqrt(energy + floor * full))
  elif score == "zncc":
    win = windows.reshape(windows.shape[0], h * w).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(win, axis=-1), 1.0)
    s_i = flat_i @ win.T
    s_ii = (flat_i * flat_i) @ win.T
    s_t = jnp.sum(flat_t, axis=-1)
    t_var = jnp.sum(flat_t * flat_t, axis=-1) - s_t * s_t / n
    i_var = jnp.maximum(s_ii - s_i * s_i / n[None, :], floor * n[None, :])
    out = (num - s_i * (s_t / n)[None, :]) / jnp.sqrt(
        jnp.where(t_var > 0, t_var, 1.0)[None, :] * i_var)
  else:
    raise ValueError(f"unknown score {score!r}; zncc | ncc | energy")
  return jnp.where(norm_t[None, :] > 0, out, -jnp.inf)


def _coarse_zncc(signal: jax.Array, template: jax.Array, window: jax.Array) -> jax.Array:
  """ZNCC maps (S, H, W) ('same' layout) of one template and window per slice.

  Shifts whose window leaves the frame score -1 (they would compare the
  template with zero padding).
  """
  n = jnp.maximum(jnp.sum(window, axis=(-2, -1), keepdims=True), 1.0)
  s_t = jnp.sum(template, axis=(-2, -1), keepdims=True)
  t_var = jnp.sum(template * template, axis=(-2, -1), keepdims=True) - s_t * s_t / n
  c_it = correlate.cross_correlate(signal, template, mode="same")
  c_i = correlate.cross_correlate(signal, window, mode="same")
  c_ii = correlate.cross_correlate(signal * signal, window, mode="same")
  inside = correlate.cross_correlate(jnp.ones_like(signal), window, mode="same")
  floor = 1e-6 * jnp.mean(signal * signal, axis=(-2, -1), keepdims=True) + 1e-12
  i_var = jnp.maximum(c_ii - c_i * c_i / n, floor * n)
  z = (c_it - c_i * s_t / n) / jnp.sqrt(jnp.where(t_var > 0, t_var, 1.0) * i_var)
  return jnp.where(inside >= n - 0.5, z, -1.0)


@functools.partial(jax.jit, static_argnames=(
    "offsets", "unit_scale", "radius", "score", "box", "slice_batch"))
def _place_volume(signal: jax.Array, slice_index: jax.Array, templates: jax.Array,
                  masks: jax.Array, windows: jax.Array, valid: jax.Array,
                  min_confidence: jax.Array, centre: jax.Array, use_centre: jax.Array,
                  volume: jax.Array, *,
                  offsets: tuple[int, ...], unit_scale: int, radius: int,
                  score: str, box: tuple[int, int, int, int],
                  slice_batch: int = 8) -> dict[str, jax.Array]:
  """See :func:`place_volume`; candidates (A, S, N, h, w) cropped to ``box``."""
  TRACE_COUNT["place_volume"] += 1
  num_slices, fh, fw = signal.shape
  y0, x0, h, w = box

  def to_frame(x):
    """(..., h, w) crops back into the (..., H, W) frame, zero outside."""
    pad = [(0, 0)] * (x.ndim - 2) + [(y0, fh - y0 - h), (x0, fw - x0 - w)]
    return jnp.pad(x, pad)

  num_animals, bank_slices, num_scales = templates.shape[:3]
  offsets_a = jnp.asarray(offsets, jnp.int32)
  valid_k = valid.reshape(-1)                                         # (K,), K = A x O x N

  def gather(s):
    """Candidates of slice s: (K, H, W) templates, masks and windows."""
    bs = jnp.clip(s + offsets_a, 0, bank_slices - 1)
    ix = (jnp.arange(num_animals)[:, None, None], bs[None, :, None],
          jnp.arange(num_scales)[None, None, :])
    return (templates[ix].reshape(-1, h, w), masks[ix].reshape(-1, h, w),
            windows[ix].reshape(-1, h, w))

  # 1. Coarse: one FFT correlation per slice with the mean unscaled template
  #    at the slice's own position (over the animals with a valid candidate).
  sc = jnp.clip(slice_index, 0, bank_slices - 1)
  aw = jnp.any(valid, axis=(1, 2)).astype(jnp.float32)                 # (A,)
  aw = aw / jnp.maximum(jnp.sum(aw), 1.0)

  def animal_mean(x):
    return to_frame(jnp.einsum("a,ashw->shw", aw, x[:, sc, unit_scale].astype(jnp.float32)))

  mean_t = animal_mean(templates)
  if score == "zncc":
    win = (animal_mean(windows) >= 0.5).astype(jnp.float32)
    corr = _coarse_zncc(signal, mean_t * win, win)
  else:
    corr = correlate.cross_correlate(signal, mean_t, mode="same")
  if score == "ncc":
    # Normalised by the signal's energy under the (soft) mean support, so a
    # bright region that is not brain-shaped does not win by brightness.
    support = animal_mean(masks)
    energy = correlate.cross_correlate(signal * signal, support, mode="same")
    norm_t = jnp.sqrt(jnp.sum(mean_t * mean_t, axis=(-2, -1), keepdims=True))
    floor = 1e-6 * jnp.sum(signal * signal, axis=(-2, -1), keepdims=True) + 1e-12
    corr = corr / (jnp.where(norm_t > 0, norm_t, 1.0) * jnp.sqrt(jnp.maximum(energy, 0.0) + floor))
  d0 = correlate.locate(corr, image_shape=(fh, fw), template_shape=(fh, fw), mode="same")
  # Any nonzero value (a log-gradient template is negative where it is < 1).
  has_template = jnp.any(mean_t != 0, axis=(-2, -1))
  psr = jnp.where(has_template, correlate.peak_confidence(corr), 0.0)
  trusted = has_template & (psr >= min_confidence)

  # 2. One rigid displacement per volume: confidence-weighted median per axis,
  #    or the given centre (a displacement found by another signal).
  wts = jnp.where(trusted, psr, 0.0)
  vol_d = jnp.stack([weighted_median(d0[:, i], wts) for i in range(2)]).astype(jnp.int32)
  centre_med = jnp.stack([weighted_median(centre[:, i], has_template.astype(jnp.float32))
                          for i in range(2)]).astype(jnp.int32)
  vol_d = jnp.where(use_centre, centre_med, vol_d)

  # 3. Local search around the centres, all candidates at once. ``volume``
  #    is data (both modes share one compilation).
  centres = jnp.where(volume | ~trusted[:, None], vol_d[None, :], d0)
  centres = jnp.where(use_centre, centre, centres)
  window = _window_offsets(radius)

  def slice_scores(args):
    sig, s, c = args
    t, m, wn = gather(s)
    out = _local_scores(sig, c, t, m, wn, window, score, box)
    return jnp.where(valid_k[None, :], out, -jnp.inf)

  scores = jax.lax.map(slice_scores, (signal, slice_index, centres),
                       batch_size=slice_batch)                           # (S, P, K)
  best_k_per_p = jnp.max(scores, axis=-1)                                # (S, P)
  # Volume: the shift maximising the sum over slices of each slice's best score.
  usable = jnp.where(jnp.isfinite(best_k_per_p), best_k_per_p, 0.0)
  wsum = jnp.sum(jnp.where(has_template, 1.0, 0.0)[:, None] * usable, axis=0)
  p_volume = jnp.broadcast_to(jnp.argmax(wsum), (num_slices,))
  # Per slice: each slice's best; fallback slices keep the volume's displacement.
  p_slice = jnp.where(trusted | use_centre, jnp.argmax(best_k_per_p, axis=-1),
                      (window.shape[0] - 1) // 2)
  p_best = jnp.where(volume, p_volume, p_slice)
  rows = jnp.arange(num_slices)
  at_p = scores[rows, p_best]                                            # (S, K)
  k_best = jnp.argmax(at_p, axis=-1)
  best_score = at_p[rows, k_best]
  disp = centres + window[p_best]
  no_o = len(offsets)
  cand_animal = k_best // (no_o * num_scales)
  cand_offset = offsets_a[(k_best // num_scales) % no_o]
  cand_scale = k_best % num_scales
  bs = jnp.clip(slice_index + cand_offset, 0, bank_slices - 1)
  chosen = masks[cand_animal, bs, cand_scale]
  placed = correlate.shift_image(to_frame(chosen), disp)
  empty = ~jnp.isfinite(best_score)
  placed = jnp.where(empty[:, None, None], False, placed)
  return {"displacement": disp, "coarse": d0, "volume_displacement": vol_d,
          "confidence": psr, "fallback": ~trusted, "score": jnp.where(empty, 0.0, best_score),
          "animal": cand_animal, "slice_offset": cand_offset, "scale_index": cand_scale,
          "placed": placed, "correlation": corr}


def place_volume(signal: jax.Array, cands: Candidates, options: ImprovedOptions, *,
                 slice_index: jax.Array | None = None,
                 centre: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Improved placement for one test volume.

  Args:
    signal: (S, H, W) test signal (see ``ImprovedOptions.signal``).
    cands: :func:`build_candidates` of the training bank.
    options: :class:`ImprovedOptions`.
    slice_index: (S,) bank slice index of each test slice (default 0..S-1).
    centre: (2,) or (S, 2) displacement to search around instead of the
      coarse estimate (steps 1-2), e.g. found by another signal; no fallback.
  Returns:
    numpy dict: displacement (S, 2) int (reference frame; see module doc),
    coarse (S, 2), volume_displacement (2,), confidence (S,) PSR, fallback (S,)
    bool, score (S,), animal / slice_offset / scale_index (S,) of the chosen
    candidate, placed (S, H, W) bool, correlation (S, H, W) coarse maps.
  """
  signal = jnp.asarray(signal, jnp.float32)
  if slice_index is None:
    slice_index = jnp.arange(signal.shape[0], dtype=jnp.int32)
  valid = candidate_set(options, cands)
  windows = cands.windows if cands.windows is not None else cands.masks
  box = cands.box()
  y0, x0, h, w = box
  crop = lambda x: x[..., y0:y0 + h, x0:x0 + w]
  out = _place_volume(signal, jnp.asarray(slice_index, jnp.int32), crop(cands.templates),
                      crop(cands.masks), crop(windows), jnp.asarray(valid),
                      jnp.asarray(options.min_confidence, jnp.float32),
                      jnp.asarray(np.broadcast_to(np.zeros(2) if centre is None else centre,
                                                  (signal.shape[0], 2)), jnp.int32),
                      jnp.asarray(centre is not None), jnp.asarray(options.volume),
                      offsets=tuple(range(-options.slice_offsets, options.slice_offsets + 1)),
                      unit_scale=int(np.argmin(np.abs(np.asarray(cands.scales) - 1.0))),
                      radius=options.radius, score=options.score, box=box)
  return {k: np.asarray(v) for k, v in jax.device_get(out).items()}


# --------------------------------------------------------------------------
# Truth, oracle and the removal mask.
# --------------------------------------------------------------------------


def true_displacements(test_displacement: np.ndarray, bank_displacements: np.ndarray,
                       to_reference: np.ndarray) -> np.ndarray:
  """(A, 2) shift that puts each aligned bank animal's mask on the test brain.

  ``disp[test] - disp[a] - to_reference[a]`` (module doc); NaN without truth.
  """
  return (np.asarray(test_displacement, np.float64)[None, :]
          - np.asarray(bank_displacements, np.float64) - np.asarray(to_reference))


@functools.partial(jax.jit, static_argnames=("offsets", "slice_batch"))
def _oracle(true_mask: jax.Array, slice_index: jax.Array, masks: jax.Array,
            shifts: jax.Array, *, offsets: tuple[int, ...], slice_batch: int = 8):
  """Best candidate Dice per slice with every animal at its true shift."""
  num_animals, bank_slices, num_scales, h, w = masks.shape
  offsets_a = jnp.asarray(offsets, jnp.int32)

  def one(args):
    truth, s = args
    bs = jnp.clip(s + offsets_a, 0, bank_slices - 1)
    m = masks[:, bs]                                        # (A, O, N, H, W)
    sh = jnp.broadcast_to(shifts[:, None, None, :], m.shape[:3] + (2,))
    placed = correlate.shift_image(m, sh).reshape(-1, h, w)
    t = truth[None]
    tp = jnp.sum(placed & t, axis=(-2, -1))
    fp = jnp.sum(placed & ~t, axis=(-2, -1))
    fn = jnp.sum(~placed & t, axis=(-2, -1))
    dice = 2 * tp / jnp.maximum(2 * tp + fp + fn, 1)
    k = jnp.argmax(dice)
    return jnp.stack([tp[k], fp[k], fn[k]]), dice[k]

  return jax.lax.map(one, (true_mask, slice_index), batch_size=slice_batch)


def oracle_counts(true_mask: np.ndarray, cands: Candidates, shifts: np.ndarray,
                  *, slice_offsets: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Brain counts of the oracle: true displacement, best template and scale.

  Per slice, every candidate (bank animal, slice offset, scale) placed at its
  animal's true shift; the one with the best Dice against the true mask is
  kept (chosen with the truth: an upper bound for any choice). What is left is
  shape mismatch, not placement.

  Args:
    true_mask: (S, H, W) bool.
    cands: the candidates.
    shifts: (A, 2) :func:`true_displacements`.
  Returns:
    (counts (4,) [TP, FP, FN, TN] pooled over slices, per-slice Dice (S,)).
  """
  true_mask = np.asarray(true_mask, bool)
  s, h, w = true_mask.shape
  counts, dice = _oracle(jnp.asarray(true_mask), jnp.arange(s, dtype=jnp.int32),
                         cands.masks, jnp.asarray(np.round(shifts), jnp.int32),
                         offsets=tuple(range(-slice_offsets, slice_offsets + 1)))
  c = np.asarray(counts, np.int64).sum(0)
  return np.array([c[0], c[1], c[2], s * h * w - c.sum()]), np.asarray(dice)


@functools.partial(jax.jit, static_argnames=("radius",))
def dilate(mask: jax.Array, radius: int) -> jax.Array:
  """(..., H, W) bool masks dilated by ``radius`` pixels (4-neighbour steps).

  Each step adds the pixels sharing an edge with the mask (a diamond of the
  given radius in total); radius 0 returns the mask.
  """
  m = jnp.asarray(mask, bool)
  for _ in range(radius):
    p = jnp.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)])
    m = (m | p[..., :-2, 1:-1] | p[..., 2:, 1:-1] | p[..., 1:-1, :-2] | p[..., 1:-1, 2:])
  return m


# --------------------------------------------------------------------------
# Signals, evaluation of one test volume, the ablation.
# --------------------------------------------------------------------------


def signal_for(model, params, images: np.ndarray, options: ImprovedOptions, *,
               cache: dict | None = None, batch_size: int = 40) -> np.ndarray:
  """(S, H, W) test signal of raw slices (S, H, W, 1) for ``options``.

  ``cache`` (per volume) keeps gradient images by method, so the ablation
  computes each saliency map once; ``pipeline.evaluate_volume``'s guided
  gradient image can be put there as ``cache["guided"]``.
  """
  from rodent_gbp import guided
  from rodent_gbp import pipeline

  if options.signal == "intensity":
    return np.asarray(images[..., 0], np.float32)
  cache = {} if cache is None else cache
  if options.method not in cache:
    # guided.gradient_image is compiled once per (model, method, batch shape);
    # a jit wrapped around a fresh partial here would recompile every call.
    cache[options.method] = pipeline.run_batched(
        lambda images: guided.gradient_image(model, params, images, method=options.method),
        {"images": images}, batch_size)["out"]
  g = cache[options.method]
  if options.signal == "log":
    return log_gradient(g)
  if options.signal == "gradient":
    return np.asarray(g, np.float32)
  if options.signal == "enhanced":
    return np.asarray(enhance.enhance_gradient(g, center=options.center, width=options.width))
  raise ValueError(f"unknown signal {options.signal!r}; enhanced | gradient | intensity")


def log_gradient(g: np.ndarray) -> np.ndarray:
  """Log of gradient images (..., H, W), floored at 1 % of each slice's maximum.

  The magnitudes are close to log-normal (paper Fig. 5); the log makes the
  brain's weaker responses count beside the strongest edges.
  """
  g = np.asarray(g, np.float32)
  peak = np.max(g, axis=(-2, -1), keepdims=True)
  return np.log(g + 0.01 * np.where(peak > 0, peak, 1.0)).astype(np.float32)


def bank_appearance(model, params, bank, volumes: Mapping[str, Any], *,
                    animals: Sequence[int] | None = None, method: str = "guided",
                    batch_size: int = 40) -> tuple[np.ndarray, np.ndarray]:
  """Log GBP gradient images of bank animals' *raw* slices, for some animals.

  What a test slice's gradient image looks like around the brain (skull,
  muscle and all): the ``appearance`` template of :func:`build_candidates`.
  Each animal costs a saliency pass over its slices, so by default only the
  reference's (the two-stage placement locates with it alone).

  Args:
    bank: ``pipeline.TemplateBank``.
    volumes: animal id -> ``data.Volume`` (the bank's animals).
    animals: bank indices to compute (default: the reference only).
  Returns:
    (appearance (A, S, H, W) float32, zero for animals not computed,
    available (A,) bool).
  """
  from rodent_gbp import parallel
  from rodent_gbp import pipeline

  animals = (bank.reference,) if animals is None else tuple(animals)
  a, s, h, w = bank.masks.shape
  out = np.zeros((a, s, h, w), np.float32)
  available = np.zeros(a, bool)
  # The bank's own compiled gradient function (same shapes and options as
  # pipeline.build_template_bank): no new compilation. Its unit scaling only
  # adds a constant per slice to the log, which zero-mean NCC ignores.
  mesh = parallel.make_mesh()
  rep_params = parallel.replicate(params, mesh)
  opts = pipeline.PlacementOptions(method=method)
  for i in animals:
    v = volumes[bank.animal_ids[i]]
    g = pipeline.run_batched(
        lambda images: pipeline._bank_gradients(rep_params, images, model=model, options=opts),
        {"images": v.image[..., None].astype(np.float32)}, batch_size, mesh)["out"]
    out[i] = log_gradient(g)
    available[i] = True
  return out, available


#: Keys :func:`save_appearance` adds to a bank file (``templates.npz``).
APPEARANCE_KEYS = ("appearance", "appearance_available")


def save_appearance(path, appearance: np.ndarray, available: np.ndarray) -> None:
  """Adds :func:`bank_appearance`'s arrays to a saved bank file, atomically.

  Inference on a user's scan has no training volumes, so the raw-slice
  appearance the improved placement locates with must travel in the model
  folder beside the bank (call after ``TemplateBank.save``; other keys are kept).
  """
  import os
  path = str(path)
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files if k not in APPEARANCE_KEYS}
  tmp = f"{path}.tmp.npz"
  np.savez_compressed(tmp, **arrays, appearance=np.asarray(appearance, np.float32),
                      appearance_available=np.asarray(available, bool))
  os.replace(tmp, path)


def load_appearance(path) -> tuple[np.ndarray, np.ndarray] | None:
  """(appearance (A, S, H, W), available (A,)) of a bank file, or None if absent."""
  with np.load(str(path)) as z:
    if not all(k in z.files for k in APPEARANCE_KEYS):
      return None
    return (np.asarray(z["appearance"], np.float32),
            np.asarray(z["appearance_available"], bool))


def place_improved(signal: np.ndarray, images: np.ndarray, cands: Candidates,
                   choice_cands: Candidates | None, options: ImprovedOptions, *,
                   slice_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """The improved placement of one volume: locate, then choose the candidate.

  ``options.choice == "none"``: :func:`place_volume` of ``signal`` with
  ``cands``. ``"intensity"``: (1) ``signal`` against the reference's
  template at the same slice, scale 1 (``cands``) gives the displacement
  and the per-slice confidence; (2) every candidate of ``choice_cands``
  (bare masks, window margin ``choice_margin``) is scored against the plain
  intensity ``images`` within ``radius`` of it. Measured on the default
  run: the saliency signals find the displacement but choose the template
  and scale worse than the intensity does (README, placement.md).

  Args:
    signal: (S, H, W) locating signal.
    images: (S, H, W) plain intensity of the raw slices.
    cands, choice_cands: :func:`build_candidates` results.
    slice_index: (S,) bank slice of each slice (default 0..S-1), e.g. matched
      by relative anterior-posterior position for a scan of another length.
  Returns:
    :func:`place_volume`'s dict; confidence, fallback, coarse, correlation
    and ``located`` (S, 2) come from the locating stage.
  """
  if options.choice == "none":
    out = place_volume(signal, cands, options, slice_index=slice_index)
    out["located"] = out["displacement"]
  elif options.choice == "intensity":
    located = place_volume(signal, cands, dataclasses.replace(
        options, choose_template=False, scales=(1.0,)), slice_index=slice_index)
    out = place_volume(images, choice_cands, dataclasses.replace(
        options, signal="intensity", template="mask", margin=options.choice_margin,
        score="zncc", radius=options.choice_radius), centre=located["displacement"],
        slice_index=slice_index)
    for k in ("confidence", "fallback", "coarse", "correlation", "volume_displacement"):
      out[k] = located[k]
    out["located"] = located["displacement"]
    cands = choice_cands
  else:
    raise ValueError(f"unknown choice {options.choice!r}; intensity | none")
  if cands.animal_index is not None:
    out["animal"] = cands.animal_index[out["animal"]]   # bank indices
  return out


def placement_errors(placed: Mapping[str, np.ndarray], truth: np.ndarray) -> np.ndarray:
  """(S,) |estimated - true| displacement averaged over the two axes.

  ``truth`` is (A, 2) from :func:`true_displacements`: each slice is scored
  against the truth of the animal whose candidate it chose.
  """
  true = np.asarray(truth)[placed["animal"]]
  return np.abs(placed["displacement"] - true).mean(-1)


def placement_quality(placed: Mapping[str, np.ndarray], volume, truth: np.ndarray
                      ) -> tuple[float, float]:
  """(brain DSC pooled over the volume's slices, mean |error| over slices with a mask)."""
  from rodent_gbp import metrics
  dsc = float(metrics.metrics_from_counts(
      np.asarray(metrics.binary_counts(placed["placed"], volume.brainmask)))["dsc"])
  has = placed["placed"].reshape(len(placed["placed"]), -1).any(-1)
  err = placement_errors(placed, truth)[has]
  return dsc, float(np.nanmean(err)) if err.size else float("nan")


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

  def for_options(self, o: ImprovedOptions) -> tuple[Candidates, Candidates | None]:
    """(candidates of ``o.signal``, those of the intensity choice or None)."""
    two_stage = o.choice == "intensity"
    cands = self.get(o.template, o.margin, center=o.center, width=o.width,
                     locate_only=two_stage)
    choice = self.get("mask", o.choice_margin) if two_stage else None
    return cands, choice

  def masks(self) -> Candidates:
    """Candidates of every bank animal and scale (for the oracle and truth)."""
    return self.get("mask", IMPROVED.choice_margin)


def evaluate_improved(model, params, volume, cbank: CandidateBank,
                      options: ImprovedOptions, *, cache: dict | None = None,
                      batch_size: int = 40, num_classes: int = 4,
                      oracle: bool = True,
                      slice_index: np.ndarray | None = None) -> dict[str, Any]:
  """Improved placement, removal and re-segmentation of one test volume.

  ``slice_index``: (S,) bank slice of each slice (default 0..S-1). A volume
  without labels or recorded displacement (a user's scan) gets NaN errors and
  no counts; ``cache["guided"]`` then holds its GBP gradient image.

  Returns:
    dict with counts (C, 4) of the re-segmentation, brain_counts
    {gbp_improved, oracle} (4,), the placement dict of :func:`place_improved`,
    per-slice error (NaN without truth), true shifts (A, 2), labels (S, H, W),
    oracle per-slice Dice.
  """
  from rodent_gbp import metrics
  from rodent_gbp import pipeline

  images = volume.image[..., None].astype(np.float32)
  cands, choice = cbank.for_options(options)
  sig = signal_for(model, params, images, options, cache=cache, batch_size=batch_size)
  placed = place_improved(sig, images[..., 0], cands, choice, options,
                          slice_index=slice_index)
  removal = np.asarray(dilate(placed["placed"], options.dilate))
  masked = images * removal[..., None].astype(np.float32)
  labels = pipeline.run_batched(
      lambda images: pipeline.segment_batch(params, images, model=model),
      {"images": masked}, batch_size)["out"]
  truth = true_displacements(pipeline.recorded_displacement(volume),
                             cbank.bank.displacements, cbank.masks().to_reference)
  out = {"animal_id": volume.animal_id, "placement": placed, "labels": labels,
         "removal": removal, "true_shifts": truth,
         "error": placement_errors(placed, truth)}
  if volume.label is not None and volume.brainmask is not None:
    out["counts"] = np.asarray(metrics.confusion_counts(labels, volume.label.astype(np.int32),
                                                        num_classes))
    out["brain_counts"] = {
        "gbp_improved": np.asarray(metrics.binary_counts(placed["placed"], volume.brainmask))}
    if oracle and np.all(np.isfinite(truth)):
      counts, dice = oracle_counts(volume.brainmask, cbank.masks(), truth,
                                   slice_offsets=options.slice_offsets)
      out["brain_counts"]["oracle"] = counts
      out["oracle_dice"] = dice
  return out


# --------------------------------------------------------------------------
# The main job's part: improved removal, oracle, ablation (reproduce.py).
# --------------------------------------------------------------------------

#: The improved reading used for ``tables["gbp_improved"]``. Locate: log GBP
#: gradient image of the raw test slice against the reference animal's
#: raw-slice log GBP gradient image (brain plus a 6-pixel ring), zero-mean
#: NCC, one displacement per volume. Choose: every training animal's mask at
#: the slice and +-2 neighbours, 5 scales, scored by zero-mean NCC with the
#: plain intensity (mask plus a 2-pixel ring) within 3 pixels of it.
IMPROVED = ImprovedOptions(signal="log", template="appearance", score="zncc", margin=6,
                           min_confidence=0.0, volume=True, dilate=1, choice="intensity",
                           choice_margin=2)

#: Ablation rows: one change from :data:`IMPROVED` each (name, changes).
#: The main job runs :data:`MAIN_ABLATION`; the placement study runs them all.
ABLATION = (
    ("improved: GBP locates, intensity chooses template and scale", {}),
    ("- template choice (reference at the same slice)", {"choose_template": False}),
    ("- scale (1.0 only)", {"scales": (1.0,)}),
    ("- volume consistency (per-slice placement)", {"volume": False}),
    ("choice by the GBP appearance itself (reference's offsets and scales)",
     {"choice": "none"}),
    ("locate: enhanced GBP, template mask x raw gradient",
     {"signal": "enhanced", "template": "gradient", "margin": 2}),
    ("locate: enhanced GBP, template mask x enhanced gradient",
     {"signal": "enhanced", "template": "enhanced", "margin": 2}),
    ("locate: raw GBP gradient, template mask x raw gradient",
     {"signal": "gradient", "template": "gradient", "margin": 2}),
    ("locate: enhanced vanilla gradient, template bare mask",
     {"signal": "enhanced", "method": "vanilla", "template": "mask", "margin": 2}),
    ("locate: enhanced deconvnet, template bare mask",
     {"signal": "enhanced", "method": "deconvnet", "template": "mask", "margin": 2}),
    ("locate: plain intensity, template bare mask (no saliency at all)",
     {"signal": "intensity", "template": "mask", "margin": 2}),
    ("plain intensity, bare mask, per slice",
     {"signal": "intensity", "template": "mask", "margin": 2, "volume": False}),
)


#: The main job's rows: all but those needing another saliency pass over the
#: test slices (vanilla, deconvnet: ~10 s of a ~25 s hook on a quiet 2-core
#: machine); ``experiments/placement_study.py`` reports them.
MAIN_ABLATION = tuple(r for r in ABLATION if r[1].get("method", "guided") == "guided")


def run_improved(model, params, bank, volumes: Mapping[str, Any], evals: list[dict], *,
                 batch_size: int = 40, num_classes: int = 4,
                 options: ImprovedOptions = IMPROVED, ablation: bool = True,
                 rows: Sequence = MAIN_ABLATION,
                 appearance: tuple[np.ndarray, np.ndarray] | None = None,
                 log=print) -> dict[str, Any]:
  """Improved placement for every evaluated test animal, oracle and ablation.

  Cost: one saliency pass over the reference animal's raw slices (its
  appearance template, with the bank's compiled function); the test slices'
  GBP gradient images come from ``evals``; ``rows`` with another saliency
  method cost a pass over the test slices each (not in
  :data:`MAIN_ABLATION`); every placement is a jitted call compiled once per
  (shapes, per-volume or per-slice mode).

  Args:
    model, params: the U-Net.
    bank: ``pipeline.TemplateBank`` of the training animals.
    volumes: animal id -> ``data.Volume`` (training and test).
    evals: ``pipeline.evaluate_volume`` results (their guided gradient images
      are reused).
    appearance: :func:`bank_appearance`'s (appearance, available) when
      already computed (the main job stores it in the model folder).
  Returns:
    dict with per-animal ``results`` (:func:`evaluate_improved`), ``ablation``
    rows (brain DSC, mean placement error) and timings.
  """
  import time
  from rodent_gbp import pipeline

  t0 = time.time()
  app, available = appearance if appearance is not None else bank_appearance(
      model, params, bank, volumes, method=options.method, batch_size=batch_size)
  cbank = CandidateBank(bank, appearance=app, available=available, scales=IMPROVED.scales)
  timing = {"appearance_s": time.time() - t0}

  caches = {e["animal_id"]: {"guided": e["gradient"]} for e in evals}
  t0 = time.time()
  per_animal = [evaluate_improved(model, params, volumes[e["animal_id"]], cbank, options,
                                  cache=caches[e["animal_id"]], batch_size=batch_size,
                                  num_classes=num_classes)
                for e in evals]
  timing["improved_s"] = time.time() - t0
  table = []
  t0 = time.time()
  for name, changes in (rows if ablation else ()):
    o = dataclasses.replace(options, **changes)
    cands, choice = cbank.for_options(o)
    dscs, errs = [], []
    for e in evals:
      v = volumes[e["animal_id"]]
      images = v.image[..., None].astype(np.float32)
      sig = signal_for(model, params, images, o, cache=caches[v.animal_id],
                       batch_size=batch_size)
      pl = place_improved(sig, images[..., 0], cands, choice, o)
      truth = true_displacements(pipeline.recorded_displacement(v), bank.displacements,
                                 cbank.masks().to_reference)
      dsc, err = placement_quality(pl, v, truth)
      dscs.append(dsc)
      errs.append(err)
    table.append({"reading": name, "options": o.to_dict(), "brain_dsc": float(np.mean(dscs)),
                  "mean_abs_error_px": float(np.mean(errs))})
    log(f"ablation: {name}: brain DSC {table[-1]['brain_dsc']:.4f}, "
        f"error {table[-1]['mean_abs_error_px']:.2f} px")
  timing["ablation_s"] = time.time() - t0
  return {"results": per_animal, "ablation": table, "timing": timing,
          "options": options.to_dict()}


def ablation_markdown(rows: list[Mapping[str, Any]], oracle_dsc: float | None = None) -> str:
  """``placement.md``: the ablation table, one change from the improved reading per row."""
  lines = ["# Placement ablation", "",
           "Brain DSC of the placed mask (mean over test animals) and mean |error| of",
           "the displacement (pixels, mean over slices with brain, against the recorded",
           "truth of the chosen template's animal). Each row changes one thing from the",
           "improved reading (first row). Vanilla-gradient and deconvnet readings",
           "need their own saliency pass and are in the placement study",
           "(experiments/placement_study.py) when not listed here.", "",
           "| reading | brain DSC | mean abs error (px) |", "|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['reading']} | {100 * r['brain_dsc']:.2f} | {r['mean_abs_error_px']:.2f} |")
  if oracle_dsc is not None:
    lines.append(f"| oracle: true displacement, best template and scale | {100 * oracle_dsc:.2f} | 0 |")
  gbp = rows[0]["brain_dsc"] if rows else float("nan")
  inten = [r for r in rows if r["options"]["signal"] == "intensity"]
  if inten:
    best = max(inten, key=lambda r: r["brain_dsc"])
    verdict = ("does as well as or better than" if best["brain_dsc"] >= gbp - 0.002
               else "does worse than")
    lines += ["", f"Plain intensity ({best['reading']}: {100 * best['brain_dsc']:.2f}) "
              f"{verdict} the improved GBP reading ({100 * gbp:.2f})."]
  if rows and rows[0]["options"].get("choice") == "intensity":
    lines += ["", "In the improved reading the GBP gradient image only finds the "
              "displacement; the template and scale are chosen by their fit to the "
              "plain intensity, which chose better than any saliency signal did."]
  return "\n".join(lines) + "\n"


def add_to_results(results: dict[str, Any], model, params, bank, volumes, evals, *,
                   workdir, batch_size: int = 40, num_classes: int = 4,
                   appearance: tuple[np.ndarray, np.ndarray] | None = None,
                   log=print) -> None:
  """The main job's hook: fills the reserved keys of ``results`` and writes placement.md.

  ``tables["gbp_improved"]``, ``brain["gbp_improved"]``, ``brain["oracle"]``,
  ``placement["improved"]`` (error, volume displacements, per-slice confidence
  and fallback), ``results["ablation"]``; per-slice CSV rows get the improved
  placement's columns. ``appearance``: :func:`bank_appearance`'s result when
  already computed (skips that saliency pass).
  """
  import pathlib
  import time
  from rodent_gbp import metrics
  from rodent_gbp import report

  t0 = time.time()
  out = run_improved(model, params, bank, volumes, evals, batch_size=batch_size,
                     appearance=appearance,
                     num_classes=num_classes, log=log)
  per = out["results"]
  results["tables"]["gbp_improved"] = metrics.class_table([r["counts"] for r in per])
  for key in ("gbp_improved", "oracle"):
    if all(key in r["brain_counts"] for r in per):
      results["brain"][key] = metrics.binary_row([r["brain_counts"][key] for r in per])
  errors, volume_d, rows_by_key = [], {}, {}
  for r in per:
    pl = r["placement"]
    has = pl["placed"].reshape(len(pl["placed"]), -1).any(-1)
    errors += list(r["error"][has & np.isfinite(r["error"])])
    volume_d[r["animal_id"]] = pl["volume_displacement"]
    truth = np.asarray(r["true_shifts"])[pl["animal"]]
    for s in range(len(pl["displacement"])):
      rows_by_key[(r["animal_id"], s)] = {
          "improved_dy": int(pl["displacement"][s, 0]), "improved_dx": int(pl["displacement"][s, 1]),
          "improved_true_dy": truth[s, 0], "improved_true_dx": truth[s, 1],
          "improved_abs_error_px": float(r["error"][s]),
          "improved_template_animal": bank.animal_ids[int(pl["animal"][s])],
          "improved_slice_offset": int(pl["slice_offset"][s]),
          "improved_scale": float(IMPROVED.scales[int(pl["scale_index"][s])]),
          "confidence_psr": float(pl["confidence"][s]),
          "fallback": bool(pl["fallback"][s]),
          "improved_brain_dice": _dice(pl["placed"][s], volumes[r["animal_id"]].brainmask[s]),
          "oracle_dice": float(r["oracle_dice"][s]) if "oracle_dice" in r else float("nan"),
      }
  for row in results["placement"]["per_slice"]:
    row.update(rows_by_key.get((row["animal"], row["slice"]), {}))
  results["placement"]["improved"] = {
      "mean_abs_error_px": float(np.mean(errors)) if errors else float("nan"),
      "options": out["options"],
      "volume_displacement": volume_d,
      "definition": "displacement in the aligned bank's (reference animal's) frame; truth "
                    "= test minus chosen template animal's recorded displacement minus its "
                    "alignment shift; confidence = PSR of the coarse ZNCC map",
  }
  results["ablation"] = out["ablation"]
  # Wall times go under results["timing"], so placement stays deterministic.
  results.setdefault("timing", {})["improved_placement"] = (
      out["timing"] | {"total_s": time.time() - t0})
  oracle = results["brain"].get("oracle", {}).get("dsc")
  report.atomic_write_text(pathlib.Path(workdir) / "placement.md",
                           ablation_markdown(out["ablation"], oracle))
  for r in per:
    r_labels = r["labels"]
    for e in evals:
      if e["animal_id"] == r["animal_id"]:
        e.setdefault("labels", {})["gbp_improved"] = r_labels
        e["placed_improved"] = r["placement"]["placed"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
  total = int(a.sum()) + int(b.sum())
  return float(2 * int((a & b).sum()) / total) if total else float("nan")
