"""The improved placement's search: candidate masks scored in one jitted call per volume.

The paper places one reference animal's mask at one slice index (section 4.3,
Fig. 7) and loses tissue DSC to misplacement and to brains of another size
(section 4.4, Fig. 8). Here every training animal's mask at the slice position
and its neighbours, at several scales, is a candidate; the candidates are one
more batch axis of a single jitted call per test volume. The placers that use
this search are in ``rodent_gbp.placement``.

Frames. The bank animals were acquired at their own displacements, so the bank
is first *aligned*: each animal's masks are moved by the integer shift that
brings their centroid (over all slices) onto the reference animal's (masks
only, no truth needed). All candidates then share the reference's frame and one
displacement means the same for all of them. A candidate of animal ``a`` placed
by ``d`` is exactly right when ``d = disp[test] - disp[a] - to_reference[a]``
(``disp`` the acquisition displacements meta.json records;
``evaluators.true_displacements``).

Steps for one test volume with signal (S, H, W) (e.g. the log GBP gradient
image of each raw slice):

1. ``coarse``: FFT correlation of each slice's signal with the mean of the
   candidates' unscaled templates at that slice (one map per slice); argmax
   ``d0`` and the peak-to-sidelobe ratio (PSR) of the map, reported as the
   slice's placement confidence.
2. ``volume``: one rigid in-plane displacement ``D`` per volume, the median of
   ``d0`` over slices weighted by their PSR (slices without a template get
   no weight).
3. ``local``: every candidate scored at every shift within ``radius`` of the
   search centre (``D`` in volume mode, ``d0`` per slice otherwise) by
   normalised cross-correlation ``<I, T> / (||T|| sqrt(<I^2, supp T>))`` (a
   cosine, so a bigger template does not win by size) or its zero-mean form,
   as one (positions x candidates) matmul per slice.
4. ``choose``: volume mode picks the shift maximising the sum over slices of
   each slice's best candidate score (one displacement for the volume), then
   per slice the best candidate at that shift; per-slice mode picks the best
   (shift, candidate) of each slice.

:func:`place_improved` runs these steps once (``choice="none"``) or twice
(``choice="intensity"``: a saliency signal against the reference's template
locates, the plain intensity chooses animal, slice offset and scale).
"""


from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import correlate
from rodent_gbp.candidates import Candidates, candidate_set

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
                  centre: jax.Array, use_centre: jax.Array,
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

  # 2. One rigid displacement per volume: the PSR-weighted median per axis,
  #    or the given centre (a displacement found by another signal).
  wts = jnp.where(has_template, psr, 0.0)
  vol_d = jnp.stack([weighted_median(d0[:, i], wts) for i in range(2)]).astype(jnp.int32)
  centre_med = jnp.stack([weighted_median(centre[:, i], has_template.astype(jnp.float32))
                          for i in range(2)]).astype(jnp.int32)
  vol_d = jnp.where(use_centre, centre_med, vol_d)

  # 3. Local search around the centres, all candidates at once. ``volume``
  #    is data (both modes share one compilation).
  centres = jnp.where(volume, vol_d[None, :], d0)
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
  # Per slice: each slice's best shift.
  p_slice = jnp.argmax(best_k_per_p, axis=-1)
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
  # The bank slice used; near the ends several offsets clip to it, and the
  # offset reported is the one actually used (relative to the clipped slice).
  bs = jnp.clip(slice_index + cand_offset, 0, bank_slices - 1)
  chosen = masks[cand_animal, bs, cand_scale]
  placed = correlate.shift_image(to_frame(chosen), disp)
  empty = ~jnp.isfinite(best_score)
  placed = jnp.where(empty[:, None, None], False, placed)
  return {"displacement": disp, "coarse": d0, "volume_displacement": vol_d,
          "confidence": psr, "score": jnp.where(empty, 0.0, best_score),
          "animal": cand_animal, "slice_offset": bs - jnp.clip(slice_index, 0, bank_slices - 1),
          "scale_index": cand_scale,
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
      coarse estimate (steps 1-2), e.g. found by another signal.
  Returns:
    numpy dict: displacement (S, 2) int (reference frame; see module doc),
    coarse (S, 2), volume_displacement (2,), confidence (S,) PSR, score (S,), animal / slice_offset / scale_index (S,) of the chosen
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
                      jnp.asarray(np.broadcast_to(np.zeros(2) if centre is None else centre,
                                                  (signal.shape[0], 2)), jnp.int32),
                      jnp.asarray(centre is not None), jnp.asarray(options.volume),
                      offsets=tuple(range(-options.slice_offsets, options.slice_offsets + 1)),
                      unit_scale=int(np.argmin(np.abs(np.asarray(cands.scales) - 1.0))),
                      radius=options.radius, score=options.score, box=box)
  return {k: np.asarray(v) for k, v in jax.device_get(out).items()}



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
    :func:`place_volume`'s dict; confidence, coarse, correlation
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
    for k in ("confidence", "coarse", "correlation", "volume_displacement"):
      out[k] = located[k]
    out["located"] = located["displacement"]
    cands = choice_cands
  else:
    raise ValueError(f"unknown choice {options.choice!r}; intensity | none")
  if cands.animal_index is not None:
    out["animal"] = cands.animal_index[out["animal"]]   # bank indices
  return out


