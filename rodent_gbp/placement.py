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
    score: ``ncc`` (normalised cross-correlation) or ``energy`` (<I, T> / ||T||).
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
    reference: index of the reference animal.
    kind: the template reading (gradient | enhanced | mask).
  """

  masks: jax.Array
  templates: jax.Array
  to_reference: np.ndarray
  scales: tuple[float, ...]
  reference: int
  kind: str
  windows: jax.Array | None = None
  margin: int = 0


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


@functools.partial(jax.jit, static_argnames=("kind", "margin"))
def _scaled_candidates(masks: jax.Array, gradients: jax.Array, scales: jax.Array,
                       center: jax.Array, width: jax.Array, *, kind: str, margin: int):
  """Masks, windows (M, N, H, W) bool and templates (M, N, H, W) for (M, H, W) inputs."""
  m = masks.astype(jnp.float32)
  if kind == "appearance":
    # The weight is an image of the whole window (brain and its surroundings).
    weight = gradients
  elif kind == "gradient":
    weight = gradients
  elif kind == "enhanced":
    weight = enhance.enhance_gradient(gradients, center=center, width=width)
  elif kind == "mask":
    weight = jnp.ones_like(m)
  else:
    raise ValueError(f"unknown template {kind!r}; gradient | enhanced | mask")

  def one(mask, wgt):
    def at(scale):
      sm = _scale_about_centroid(mask, mask, scale) >= 0.5
      sw = _scale_about_centroid(wgt, mask, scale)
      win = dilate(sm, margin)
      inside = win if kind == "appearance" else sm
      return sm, win, inside.astype(jnp.float32) * sw
    return jax.vmap(at)(scales)

  return jax.vmap(one)(m, weight)


def build_candidates(bank, *, template: str = "gradient",
                     scales: Sequence[float] = (1.0,), center: float = 2.0,
                     width: float = 0.5, margin: int = 0,
                     appearance: np.ndarray | None = None) -> Candidates:
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
  Returns:
    :class:`Candidates` (arrays on the device).
  """
  masks = jnp.asarray(bank.masks)
  grads = jnp.asarray(bank.gradients)
  to_ref = jnp.asarray(alignment_shifts(bank.masks, bank.reference))
  a, s, h, w = masks.shape
  # Align each animal (all slices) by its integer shift; zero-filled.
  masks = correlate.shift_image(masks, to_ref[:, None, :])
  if template == "appearance":
    if appearance is None:
      raise ValueError("template 'appearance' needs the appearance images")
    grads = jnp.asarray(appearance, jnp.float32)
  grads = correlate.shift_image(grads, to_ref[:, None, :])
  cm, cw, ct = _scaled_candidates(masks.reshape(a * s, h, w), grads.reshape(a * s, h, w),
                                  jnp.asarray(scales, jnp.float32),
                                  jnp.asarray(center, jnp.float32),
                                  jnp.asarray(width, jnp.float32), kind=template,
                                  margin=margin)
  n = len(scales)
  return Candidates(masks=cm.reshape(a, s, n, h, w), templates=ct.reshape(a, s, n, h, w),
                    windows=cw.reshape(a, s, n, h, w), margin=margin,
                    to_reference=np.asarray(to_ref), scales=tuple(float(x) for x in scales),
                    reference=int(bank.reference), kind=template)


def candidate_set(options: ImprovedOptions, cands: Candidates) -> tuple[tuple[int, ...],
                                                                         tuple[int, ...],
                                                                         tuple[int, ...]]:
  """(animals, slice offsets, scale indices) the options consider."""
  num_animals = cands.masks.shape[0]
  if options.choose_template:
    animals = tuple(range(num_animals))
    offsets = tuple(range(-options.slice_offsets, options.slice_offsets + 1))
  else:
    animals, offsets = (cands.reference,), (0,)
  wanted = [float(s) for s in options.scales]
  scale_idx = tuple(i for i, s in enumerate(cands.scales)
                    if any(abs(s - x) < 1e-6 for x in wanted))
  if len(scale_idx) != len(wanted):
    raise ValueError(f"scales {options.scales} not all in the candidates' {cands.scales}")
  return animals, offsets, scale_idx


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
                  score: str) -> jax.Array:
  """(P, K) scores of K templates (K, H, W) at shifts ``centre + offsets`` (P, 2).

  The template moved by d is compared with the signal as the signal moved by
  -d compared with the template: one shift per position, then matmuls over
  candidates. ``zncc`` compares over each candidate's window (mask dilated by
  the margin), zero-mean: a cosine of the deviations from the window means.
  """
  h, w = signal.shape
  windows_p = correlate.shift_image(signal, -(centre[None, :] + offsets))   # (P, H, W)
  flat_i = windows_p.reshape(windows_p.shape[0], h * w)
  flat_t = templates.reshape(templates.shape[0], h * w)
  num = flat_i @ flat_t.T
  norm_t = jnp.sqrt(jnp.sum(flat_t * flat_t, axis=-1))
  safe_t = jnp.where(norm_t > 0, norm_t, 1.0)
  floor = 1e-6 * jnp.sum(signal * signal) / (h * w) + 1e-12
  if score == "energy":
    out = num / safe_t[None, :]
  elif score == "ncc":
    energy = (flat_i * flat_i) @ masks.reshape(masks.shape[0], h * w).astype(jnp.float32).T
    out = num / (safe_t[None, :] * jnp.sqrt(energy + floor * h * w))
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
    "animals", "offsets", "scale_idx", "unit_scale", "volume", "radius", "score",
    "slice_batch"))
def _place_volume(signal: jax.Array, slice_index: jax.Array, templates: jax.Array,
                  masks: jax.Array, windows: jax.Array, min_confidence: jax.Array, *,
                  animals: tuple[int, ...], offsets: tuple[int, ...],
                  scale_idx: tuple[int, ...], unit_scale: int, volume: bool, radius: int,
                  score: str, slice_batch: int = 8) -> dict[str, jax.Array]:
  TRACE_COUNT["place_volume"] += 1
  num_slices, h, w = signal.shape
  bank_slices = templates.shape[1]
  animals_a = jnp.asarray(animals, jnp.int32)
  offsets_a = jnp.asarray(offsets, jnp.int32)
  scale_a = jnp.asarray(scale_idx, jnp.int32)

  def gather(s):
    """Candidates of slice s: (K, H, W) templates and masks, K = A x O x N."""
    bs = jnp.clip(s + offsets_a, 0, bank_slices - 1)
    ix = (animals_a[:, None, None], bs[None, :, None], scale_a[None, None, :])
    return (templates[ix].reshape(-1, h, w), masks[ix].reshape(-1, h, w),
            windows[ix].reshape(-1, h, w))

  # 1. Coarse: one FFT correlation per slice with the mean unscaled template
  #    at the slice's own position (all chosen animals).
  sc = jnp.clip(slice_index, 0, bank_slices - 1)
  mean_t = jnp.mean(templates[animals_a[:, None], sc[None, :], unit_scale], axis=0)
  if score == "zncc":
    win = jnp.mean(windows[animals_a[:, None], sc[None, :], unit_scale].astype(jnp.float32),
                   axis=0) >= 0.5
    win = win.astype(jnp.float32)
    corr = _coarse_zncc(signal, mean_t * win, win)
  else:
    corr = correlate.cross_correlate(signal, mean_t, mode="same")
  if score == "ncc":
    # Normalised by the signal's energy under the (soft) mean support, so a
    # bright region that is not brain-shaped does not win by brightness.
    support = jnp.mean(masks[animals_a[:, None], sc[None, :], unit_scale].astype(jnp.float32),
                       axis=0)
    energy = correlate.cross_correlate(signal * signal, support, mode="same")
    norm_t = jnp.sqrt(jnp.sum(mean_t * mean_t, axis=(-2, -1), keepdims=True))
    floor = 1e-6 * jnp.sum(signal * signal, axis=(-2, -1), keepdims=True) + 1e-12
    corr = corr / (jnp.where(norm_t > 0, norm_t, 1.0) * jnp.sqrt(jnp.maximum(energy, 0.0) + floor))
  d0 = correlate.locate(corr, image_shape=(h, w), template_shape=(h, w), mode="same")
  has_template = jnp.sum(mean_t, axis=(-2, -1)) > 0
  psr = jnp.where(has_template, correlate.peak_confidence(corr), 0.0)
  trusted = has_template & (psr >= min_confidence)

  # 2. One rigid displacement per volume: confidence-weighted median per axis.
  wts = jnp.where(trusted, psr, 0.0)
  vol_d = jnp.stack([weighted_median(d0[:, i], wts) for i in range(2)]).astype(jnp.int32)

  # 3. Local search around the centres, all candidates at once.
  if volume:
    centres = jnp.broadcast_to(vol_d, (num_slices, 2))
  else:
    centres = jnp.where(trusted[:, None], d0, vol_d[None, :])
  window = _window_offsets(radius)

  def slice_scores(args):
    sig, s, c = args
    t, m, wn = gather(s)
    return _local_scores(sig, c, t, m, wn, window, score)

  scores = jax.lax.map(slice_scores, (signal, slice_index, centres),
                       batch_size=slice_batch)                           # (S, P, K)
  best_k_per_p = jnp.max(scores, axis=-1)                                # (S, P)
  if volume:
    usable = jnp.where(jnp.isfinite(best_k_per_p), best_k_per_p, 0.0)
    wsum = jnp.sum(jnp.where(has_template, 1.0, 0.0)[:, None] * usable, axis=0)
    p_best = jnp.broadcast_to(jnp.argmax(wsum), (num_slices,))
  else:
    p_best = jnp.argmax(best_k_per_p, axis=-1)
    # Fallback slices keep the volume's displacement itself.
    p_best = jnp.where(trusted, p_best, (window.shape[0] - 1) // 2)
  rows = jnp.arange(num_slices)
  at_p = scores[rows, p_best]                                            # (S, K)
  k_best = jnp.argmax(at_p, axis=-1)
  best_score = at_p[rows, k_best]
  disp = centres + window[p_best]
  no_o, no_n = len(offsets), len(scale_idx)
  cand_animal = animals_a[k_best // (no_o * no_n)]
  cand_offset = offsets_a[(k_best // no_n) % no_o]
  cand_scale = scale_a[k_best % no_n]
  bs = jnp.clip(slice_index + cand_offset, 0, bank_slices - 1)
  chosen = masks[cand_animal, bs, cand_scale]
  placed = correlate.shift_image(chosen, disp)
  empty = ~jnp.isfinite(best_score)
  placed = jnp.where(empty[:, None, None], False, placed)
  return {"displacement": disp, "coarse": d0, "volume_displacement": vol_d,
          "confidence": psr, "fallback": ~trusted, "score": jnp.where(empty, 0.0, best_score),
          "animal": cand_animal, "slice_offset": cand_offset, "scale_index": cand_scale,
          "placed": placed, "correlation": corr}


def place_volume(signal: jax.Array, cands: Candidates, options: ImprovedOptions, *,
                 slice_index: jax.Array | None = None) -> dict[str, np.ndarray]:
  """Improved placement for one test volume.

  Args:
    signal: (S, H, W) test signal (see ``ImprovedOptions.signal``).
    cands: :func:`build_candidates` of the training bank.
    options: :class:`ImprovedOptions`.
    slice_index: (S,) bank slice index of each test slice (default 0..S-1).
  Returns:
    numpy dict: displacement (S, 2) int (reference frame; see module doc),
    coarse (S, 2), volume_displacement (2,), confidence (S,) PSR, fallback (S,)
    bool, score (S,), animal / slice_offset / scale_index (S,) of the chosen
    candidate, placed (S, H, W) bool, correlation (S, H, W) coarse maps.
  """
  signal = jnp.asarray(signal, jnp.float32)
  if slice_index is None:
    slice_index = jnp.arange(signal.shape[0], dtype=jnp.int32)
  animals, offsets, scale_idx = candidate_set(options, cands)
  windows = cands.windows if cands.windows is not None else cands.masks
  out = _place_volume(signal, jnp.asarray(slice_index, jnp.int32), cands.templates,
                      cands.masks, windows, jnp.asarray(options.min_confidence, jnp.float32),
                      animals=animals, offsets=offsets, scale_idx=scale_idx,
                      unit_scale=int(np.argmin(np.abs(np.asarray(cands.scales) - 1.0))),
                      volume=options.volume, radius=options.radius, score=options.score)
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
    fn = jax.jit(functools.partial(guided.gradient_image, model, method=options.method))
    cache[options.method] = pipeline._run_batched(
        lambda images: fn(params, images), {"images": images}, batch_size)["out"]
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


def bank_appearance(model, params, volumes, *, method: str = "guided",
                    batch_size: int = 40) -> np.ndarray:
  """(A, S, H, W) log GBP gradient images of the training animals' *raw* slices.

  What a test slice's gradient image looks like around the brain (skull,
  muscle and all), the ``appearance`` template of :func:`build_candidates`.
  """
  out = []
  cache: dict = {}
  for v in volumes:
    cache.clear()
    opts = ImprovedOptions(signal="log", method=method)
    out.append(signal_for(model, params, v.image[..., None].astype(np.float32), opts,
                          cache=cache, batch_size=batch_size))
  return np.stack(out)


def placement_errors(placed: Mapping[str, np.ndarray], truth: np.ndarray) -> np.ndarray:
  """(S,) |estimated - true| displacement averaged over the two axes.

  ``truth`` is (A, 2) from :func:`true_displacements`: each slice is scored
  against the truth of the animal whose candidate it chose.
  """
  true = np.asarray(truth)[placed["animal"]]
  return np.abs(placed["displacement"] - true).mean(-1)


def evaluate_improved(model, params, volume, cands: Candidates, bank,
                      options: ImprovedOptions, *, cache: dict | None = None,
                      batch_size: int = 40, num_classes: int = 4) -> dict[str, Any]:
  """Improved placement, removal and re-segmentation of one test volume.

  Returns:
    dict with counts (C, 4) of the re-segmentation, brain_counts
    {gbp_improved, oracle} (4,), the placement dict of :func:`place_volume`,
    per-slice error (NaN without truth), true shifts (A, 2), labels (S, H, W),
    oracle per-slice Dice.
  """
  from rodent_gbp import metrics
  from rodent_gbp import pipeline

  images = volume.image[..., None].astype(np.float32)
  sig = signal_for(model, params, images, options, cache=cache, batch_size=batch_size)
  placed = place_volume(sig, cands, options)
  removal = np.asarray(dilate(placed["placed"], options.dilate))
  masked = images * removal[..., None].astype(np.float32)
  labels = pipeline._run_batched(
      lambda images: pipeline.segment_batch(params, images, model=model),
      {"images": masked}, batch_size)["out"]
  truth = true_displacements(pipeline.recorded_displacement(volume), bank.displacements,
                             cands.to_reference)
  out = {"animal_id": volume.animal_id, "placement": placed, "labels": labels,
         "removal": removal, "true_shifts": truth,
         "error": placement_errors(placed, truth)}
  if volume.label is not None and volume.brainmask is not None:
    out["counts"] = np.asarray(metrics.confusion_counts(labels, volume.label.astype(np.int32),
                                                        num_classes))
    oracle, oracle_dice = (oracle_counts(volume.brainmask, cands, truth,
                                         slice_offsets=options.slice_offsets)
                           if np.all(np.isfinite(truth)) else (None, None))
    out["brain_counts"] = {
        "gbp_improved": np.asarray(metrics.binary_counts(placed["placed"], volume.brainmask))}
    if oracle is not None:
      out["brain_counts"]["oracle"] = oracle
      out["oracle_dice"] = oracle_dice
  return out


# --------------------------------------------------------------------------
# The main job's part: improved removal, oracle, ablation (reproduce.py).
# --------------------------------------------------------------------------

#: The improved reading used for ``tables["gbp_improved"]``: log GBP gradient
#: image of the raw test slice against the bank's raw-slice log GBP gradients
#: (brain plus a 6-pixel ring), zero-mean NCC, one displacement per volume.
IMPROVED = ImprovedOptions(signal="log", template="appearance", score="zncc", margin=6,
                           min_confidence=0.0, volume=True, dilate=1)

#: Ablation rows: one change from :data:`IMPROVED` each (name, changes).
ABLATION = (
    ("improved (GBP log gradient, appearance template)", {}),
    ("- template choice (reference at the same slice)", {"choose_template": False}),
    ("- scale (1.0 only)", {"scales": (1.0,)}),
    ("- volume consistency (per-slice placement)", {"volume": False}),
    ("signal: enhanced GBP, template mask x raw gradient", {"signal": "enhanced", "template": "gradient", "margin": 2}),
    ("signal: enhanced GBP, template mask x enhanced gradient", {"signal": "enhanced", "template": "enhanced", "margin": 2}),
    ("signal: raw GBP gradient, template mask x raw gradient", {"signal": "gradient", "template": "gradient", "margin": 2}),
    ("signal: enhanced vanilla gradient, template bare mask", {"signal": "enhanced", "method": "vanilla", "template": "mask", "margin": 2}),
    ("signal: enhanced deconvnet, template bare mask", {"signal": "enhanced", "method": "deconvnet", "template": "mask", "margin": 2}),
    ("signal: plain intensity, template bare mask", {"signal": "intensity", "template": "mask", "margin": 2}),
    ("signal: plain intensity, bare mask, per slice", {"signal": "intensity", "template": "mask", "margin": 2, "volume": False}),
)


def run_improved(model, params, bank, volumes: Mapping[str, Any], evals: list[dict], *,
                 batch_size: int = 40, num_classes: int = 4,
                 options: ImprovedOptions = IMPROVED, ablation: bool = True,
                 log=print) -> dict[str, Any]:
  """Improved placement for every evaluated test animal, oracle and ablation.

  Args:
    model, params: the U-Net.
    bank: ``pipeline.TemplateBank`` of the training animals.
    volumes: animal id -> ``data.Volume`` (training and test).
    evals: ``pipeline.evaluate_volume`` results (their guided gradient images
      are reused).
  Returns:
    dict with per-animal ``results`` (:func:`evaluate_improved`), ``ablation``
    rows (brain DSC, mean placement error), ``candidates_s`` and timings.
  """
  import time
  from rodent_gbp import metrics

  t0 = time.time()
  app = bank_appearance(model, params, [volumes[a] for a in bank.animal_ids],
                        method=options.method, batch_size=batch_size)
  timing = {"appearance_s": time.time() - t0}
  built: dict = {}

  def cands_for(o: ImprovedOptions) -> Candidates:
    key = (o.template, o.margin)
    if key not in built:
      built[key] = build_candidates(bank, template=o.template, scales=IMPROVED.scales,
                                    center=o.center, width=o.width, margin=o.margin,
                                    appearance=app if o.template == "appearance" else None)
    return built[key]

  caches = {e["animal_id"]: {"guided": e["gradient"]} for e in evals}
  t0 = time.time()
  per_animal = [evaluate_improved(model, params, volumes[e["animal_id"]], cands_for(options),
                                  bank, options, cache=caches[e["animal_id"]],
                                  batch_size=batch_size, num_classes=num_classes)
                for e in evals]
  timing["improved_s"] = time.time() - t0
  rows = []
  t0 = time.time()
  for name, changes in (ABLATION if ablation else ()):
    o = dataclasses.replace(options, **changes)
    c = cands_for(o)
    dscs, errs = [], []
    for e in evals:
      v = volumes[e["animal_id"]]
      sig = signal_for(model, params, v.image[..., None].astype(np.float32), o,
                       cache=caches[v.animal_id], batch_size=batch_size)
      pl = place_volume(sig, c, o)
      from rodent_gbp import pipeline
      truth = true_displacements(pipeline.recorded_displacement(v), bank.displacements,
                                 c.to_reference)
      dscs.append(float(metrics.metrics_from_counts(
          np.asarray(metrics.binary_counts(pl["placed"], v.brainmask)))["dsc"]))
      has = pl["placed"].reshape(len(pl["placed"]), -1).any(-1)
      errs.append(float(np.nanmean(placement_errors(pl, truth)[has])))
    rows.append({"reading": name, "options": o.to_dict(), "brain_dsc": float(np.mean(dscs)),
                 "mean_abs_error_px": float(np.mean(errs))})
    log(f"ablation: {name}: brain DSC {rows[-1]['brain_dsc']:.4f}, "
        f"error {rows[-1]['mean_abs_error_px']:.2f} px")
  timing["ablation_s"] = time.time() - t0
  return {"results": per_animal, "ablation": rows, "timing": timing,
          "options": options.to_dict()}


def ablation_markdown(rows: list[Mapping[str, Any]], oracle_dsc: float | None = None) -> str:
  """``placement.md``: the ablation table, one change from the improved reading per row."""
  lines = ["# Placement ablation", "",
           "Brain DSC of the placed mask (mean over test animals) and mean |error| of",
           "the displacement (pixels, mean over slices with brain, against the recorded",
           "truth of the chosen template's animal). Each row changes one thing from the",
           "improved reading (first row).", "",
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
  return "\n".join(lines) + "\n"


def add_to_results(results: dict[str, Any], model, params, bank, volumes, evals, *,
                   workdir, batch_size: int = 40, num_classes: int = 4,
                   log=print) -> None:
  """The main job's hook: fills the reserved keys of ``results`` and writes placement.md.

  ``tables["gbp_improved"]``, ``brain["gbp_improved"]``, ``brain["oracle"]``,
  ``placement["improved"]`` (error, volume displacements, per-slice confidence
  and fallback), ``results["ablation"]``; per-slice CSV rows get the improved
  placement's columns.
  """
  import pathlib
  import time
  from rodent_gbp import metrics
  from rodent_gbp import report

  t0 = time.time()
  out = run_improved(model, params, bank, volumes, evals, batch_size=batch_size,
                     num_classes=num_classes, log=log)
  per = out["results"]
  tables = {}
  for c, key in report.CLASS_KEYS.items():
    ms = [metrics.metrics_from_counts(np.asarray(r["counts"])[c]) for r in per]
    tables[key] = {m: float(np.nanmean([x[m] for x in ms])) for m in report.METRIC_KEYS}
  results["tables"]["gbp_improved"] = tables
  for key in ("gbp_improved", "oracle"):
    if all(key in r["brain_counts"] for r in per):
      ms = [metrics.metrics_from_counts(np.asarray(r["brain_counts"][key])) for r in per]
      results["brain"][key] = {m: float(np.nanmean([x[m] for x in ms]))
                               for m in report.METRIC_KEYS}
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
