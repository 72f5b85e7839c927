"""Evaluators of a placement that need the truth: the ceiling, the oracle, placement errors.

Not placers: each uses the true brain mask or the recorded displacement, so
they bound or score what a placer (``rodent_gbp.placement``) can do.

* ``gbp_ceiling``: the paper's one reference mask at its best integer shift
  per slice (:func:`best_shift_dice`): no correlation can place it better.
* ``oracle``: per slice, every candidate (training animal, slice offset,
  scale) at its best integer shift, the best by Dice against the truth
  (:func:`oracle_counts`): what is left is shape mismatch, not placement.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import correlate
from rodent_gbp import metrics
from rodent_gbp.candidates import Candidates
from rodent_gbp import parallel


def best_shift_dice(true_mask: jax.Array, ref_mask: jax.Array):
  """Best achievable Dice of ``ref_mask`` moved by any integer shift (ceiling).

  Exhaustive over every shift of the 'same' range, computed exactly with
  correlations: overlap(d) = sum_n true[n] ref[n - d] is the cross-correlation
  of true with ref; the part of the shifted mask still inside the frame is the
  correlation of an all-ones frame with ref. Both are integer counts, so the
  FFT results are rounded.

  Args:
    true_mask, ref_mask: (B, H, W) bool.
  Returns:
    (dice (B,), shift (B, 2) int32, overlap (B,), shifted_size (B,)); dice is
    0 where both masks are empty.
  """
  t = true_mask.astype(jnp.float32)
  r = ref_mask.astype(jnp.float32)
  h, w = t.shape[-2:]
  overlap = jnp.round(correlate.cross_correlate(t, r, mode="same"))
  inside = jnp.round(correlate.cross_correlate(jnp.ones_like(t), r, mode="same"))
  denom = jnp.sum(t, axis=(-2, -1))[:, None, None] + inside
  dice = jnp.where(denom > 0, 2 * overlap / jnp.where(denom > 0, denom, 1.0), 0.0)
  flat = dice.reshape(dice.shape[0], -1)
  k = jnp.argmax(flat, axis=-1)
  # locate maps the argmax of a 'same' map to a shift, so the ceiling's shift
  # and the placement's displacement share one convention by construction.
  shift = correlate.locate(dice, image_shape=(h, w), template_shape=(h, w), mode="same")
  take = lambda a: a.reshape(a.shape[0], -1)[jnp.arange(a.shape[0]), k]
  return take(dice), jnp.round(shift).astype(jnp.int32), take(overlap), take(inside)


best_shift_dice_jit = jax.jit(best_shift_dice)


def ceiling(true_mask: np.ndarray, ref_masks: np.ndarray, *, batch_size: int = 40,
            mesh=None) -> dict[str, np.ndarray]:
  """The paper's placement ceiling for one volume.

  Args:
    true_mask: (S, H, W) bool truth.
    ref_masks: (S, H, W) bool reference masks at the same slice indices.
  Returns:
    dict with ``counts`` (4,) TP, FP, FN, TN pooled over slices, per-slice
    ``dice`` (S,) and ``shift`` (S, 2).
  """
  out = parallel.run_batched(
      lambda t, r: dict(zip(("dice", "shift", "overlap", "inside"), best_shift_dice_jit(t, r))),
      {"t": np.asarray(true_mask, bool), "r": np.asarray(ref_masks, bool)}, batch_size, mesh)
  n, h, w = np.shape(true_mask)
  tp = out["overlap"].astype(np.int64)
  fp = out["inside"].astype(np.int64) - tp
  fn = np.asarray(true_mask).reshape(n, -1).sum(-1).astype(np.int64) - tp
  counts = np.array([tp.sum(), fp.sum(), fn.sum(), (h * w - tp - fp - fn).sum()])
  return {"counts": counts, "dice": out["dice"], "shift": out["shift"]}


def true_displacements(test_displacement: np.ndarray, bank_displacements: np.ndarray,
                       to_reference: np.ndarray) -> np.ndarray:
  """(A, 2) shift that puts each aligned bank animal's mask on the test brain.

  ``disp[test] - disp[a] - to_reference[a]`` (``rodent_gbp.candidates``); NaN
  without truth.
  """
  return (np.asarray(test_displacement, np.float64)[None, :]
          - np.asarray(bank_displacements, np.float64) - np.asarray(to_reference))


@functools.partial(jax.jit, static_argnames=("offsets", "slice_batch"))
def _oracle(true_mask: jax.Array, slice_index: jax.Array, masks: jax.Array, *,
            offsets: tuple[int, ...], slice_batch: int = 4):
  """Best candidate per slice, each at its best shift: counts (S, 4)."""
  num_animals, bank_slices, num_scales, h, w = masks.shape
  offsets_a = jnp.asarray(offsets, jnp.int32)

  def one(args):
    truth, s = args
    bs = jnp.clip(s + offsets_a, 0, bank_slices - 1)
    m = masks[:, bs].reshape(-1, h, w)                      # (A * O * N, H, W)
    dice, _, overlap, inside = best_shift_dice(jnp.broadcast_to(truth, m.shape), m)
    k = jnp.argmax(dice)
    tp, placed = overlap[k], inside[k]
    size = jnp.sum(truth.astype(jnp.float32))
    return jnp.stack([tp, placed - tp, size - tp, h * w - placed - size + tp])

  return jax.lax.map(one, (true_mask, slice_index), batch_size=slice_batch)


def oracle_counts(true_mask: np.ndarray, cands: Candidates, *,
                  slice_index: np.ndarray | None = None, slice_offsets: int = 2
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Brain counts of the oracle: per slice the best training mask, slice offset,
  scale and integer shift by Dice against the truth.

  It needs no displacement truth (the shift is searched exhaustively, as in
  :func:`best_shift_dice`), so it bounds every placer that picks one of these
  candidates and moves it, on any data with a true brain mask.

  Args:
    true_mask: (S, H, W) bool.
    cands: the candidates (``CandidateBank.masks()``).
    slice_index: (S,) bank slice of each slice (default 0..S-1).
    slice_offsets: bank slices searched on each side of ``slice_index``.
  Returns:
    (counts (4,) [TP, FP, FN, TN] pooled over slices, per-slice Dice (S,),
    NaN where truth and the best candidate are both empty).
  """
  true_mask = np.asarray(true_mask, bool)
  if slice_index is None:
    slice_index = np.arange(len(true_mask))
  per_slice = np.round(np.asarray(_oracle(
      jnp.asarray(true_mask), jnp.asarray(slice_index, jnp.int32), cands.masks,
      offsets=tuple(range(-slice_offsets, slice_offsets + 1))))).astype(np.int64)
  return per_slice.sum(0), np.asarray(metrics.dice_from_counts(per_slice))


def placement_errors(displacement: np.ndarray, template_animal: np.ndarray,
                     truth: np.ndarray) -> np.ndarray:
  """(S,) |estimated - true| displacement averaged over the two axes.

  ``truth`` is (A, 2) from :func:`true_displacements`: each slice is scored
  against the truth of the animal whose candidate it chose.
  """
  true = np.asarray(truth)[np.asarray(template_animal)]
  return np.abs(np.asarray(displacement) - true).mean(-1)
