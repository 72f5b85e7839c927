"""Evaluation of test animals against their truth: every placer, the ceiling, the oracle.

For one test volume (labels and brain mask known), on its raw slices:

* ``none``: the U-Net on the raw slices (Fig. 4); ``manual``: on the slices
  skull-stripped with the true brain mask (Table 2);
* each placer of ``rodent_gbp.placement`` (``gbp`` = Table 1, ``gbp_improved``,
  ``intensity``): its removal mask, and the U-Net on the masked slices;
* evaluators (``rodent_gbp.evaluators``): ``gbp_ceiling`` (the reference mask
  at its best shift per slice) and ``oracle`` (per slice the best
  training mask, slice offset, scale and shift).

Counts are pooled over the slices of the animal; metrics per animal and the
mean over animals come from ``rodent_gbp.metrics``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rodent_gbp import bank as bank_lib
from rodent_gbp import evaluators
from rodent_gbp import metrics
from rodent_gbp import pipeline
from rodent_gbp import placement as placement_lib
from rodent_gbp import scan
from rodent_gbp.errors import DataError

# The placers the main job evaluates (its tables' rows and results.json keys):
# those a tissue bundle alone can serve. Placers that need another network
# (``supervised``: an extraction network) are evaluated by their own studies.
PLACERS = ("gbp", "gbp_improved", "intensity")
assert set(PLACERS) <= set(placement_lib.PLACERS)
SEARCH_PLACERS = ("gbp_improved", "intensity")


@dataclasses.dataclass
class AnimalEvaluation:
  """One test animal segmented every way (:func:`evaluate_volume`).

  Attributes:
    animal_id: the animal.
    counts: way (none, manual, each placer, baselines) -> (C, 4) confusion counts.
    brain_counts: placer, gbp_ceiling, oracle -> (4,) brain-mask counts.
    labels: way -> (S, H, W) label map.
    masks: placer -> (S, H, W) removal mask.
    placements: placer -> ``placement.Placement``.
    gradient: (S, H, W) saliency of the raw slices.
    slice_dice: placer -> (S,) brain Dice per slice.
    ceiling_dice: (S,) the reference mask at its best shift, or None.
    true_displacement: (S, 2) of the paper's placement (test minus reference
      acquisition), or None.
    true_shifts: (A, 2) of the search placers' aligned candidates, or None.
    oracle_dice: (S,) per slice the best training mask, or None.
  """

  animal_id: str
  counts: dict[str, np.ndarray]
  brain_counts: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]
  masks: dict[str, np.ndarray]
  placements: dict[str, placement_lib.Placement]
  gradient: np.ndarray
  slice_dice: dict[str, np.ndarray]
  ceiling_dice: np.ndarray | None = None
  true_displacement: np.ndarray | None = None
  true_shifts: np.ndarray | None = None
  oracle_dice: np.ndarray | None = None


def evaluate_volume(volume, *, bundle, placers: Sequence[str] = PLACERS,
                    batch_size: int | None = None, oracle: bool = True,
                    removal: bool = True) -> AnimalEvaluation:
  """Segments one test animal every way and scores it against its truth.

  ``removal=False`` (a skull-stripped set: nothing to remove) evaluates only
  ``none`` and ``manual`` and keeps the gradient image; no placer, ceiling or
  oracle is run.

  Returns:
    :class:`AnimalEvaluation`.
  """
  if volume.label is None or volume.brainmask is None:
    raise DataError(f"animal {volume.animal_id}: evaluation needs labels and a brain mask")
  b = bundle.bank
  images = volume.image.astype(np.float32)
  n = len(images)
  slice_index = scan.bank_slice_index(n, b.masks.shape[1])
  raw, removals = pipeline.run(images, placers if removal else (), bundle=bundle,
                               slice_index=slice_index, batch_size=batch_size)
  manual = pipeline.segment_slices(images * volume.brainmask, bundle=bundle,
                                   batch_size=batch_size)
  truth = volume.label.astype(np.int32)
  num_classes = bundle.network("tissue").config.num_classes
  if not removal:
    labels = {"none": raw["labels"], "manual": manual}
    return AnimalEvaluation(
        animal_id=volume.animal_id, labels=labels, masks={}, placements={},
        counts={k: np.asarray(metrics.confusion_counts(v, truth, num_classes))
                for k, v in labels.items()},
        brain_counts={}, gradient=raw["gradient"], slice_dice={})
  labels = {"none": raw["labels"], "manual": manual} | {
      k: r.labels for k, r in removals.items()}
  counts = {k: np.asarray(metrics.confusion_counts(v, truth, num_classes))
            for k, v in labels.items()}
  masks = {k: r.placement.mask for k, r in removals.items()}
  brain_counts = {k: np.asarray(metrics.binary_counts(m, volume.brainmask))
                  for k, m in masks.items()}
  ref_masks = b.masks[b.reference, slice_index]
  ceil = evaluators.ceiling(volume.brainmask, ref_masks,
                            batch_size=batch_size or bundle.network().config.eval_batch_size)
  brain_counts["gbp_ceiling"] = ceil["counts"]
  cbank = placement_lib.candidate_bank(bundle)
  true_shifts = evaluators.true_displacements(
      bank_lib.recorded_displacement(volume), b.displacements, cbank.masks().to_reference)
  out = AnimalEvaluation(
      animal_id=volume.animal_id, counts=counts, brain_counts=brain_counts, labels=labels,
      masks=masks, placements={k: r.placement for k, r in removals.items()},
      gradient=raw["gradient"],
      slice_dice={k: metrics.slice_dice(m, volume.brainmask) for k, m in masks.items()},
      ceiling_dice=ceil["dice"],
      true_displacement=np.broadcast_to(
          bank_lib.recorded_displacement(volume) - b.displacements[b.reference], (n, 2)),
      true_shifts=true_shifts)
  if oracle:
    counts_o, dice_o = evaluators.oracle_counts(
        volume.brainmask, cbank.masks(), slice_index=slice_index,
        slice_offsets=placement_lib.IMPROVED.slice_offsets)
    out.brain_counts["oracle"] = counts_o
    out.oracle_dice = dice_o
  return out


def placement_error(e: AnimalEvaluation, placer: str) -> np.ndarray:
  """(S,) |displacement - truth| of one placer on one evaluated animal (NaN without truth)."""
  pl = e.placements[placer]
  if pl.displacement is None:
    return np.full(len(pl.mask), np.nan)
  if placer in SEARCH_PLACERS or isinstance(pl.details, placement_lib.SearchDetails):
    return evaluators.placement_errors(pl.displacement, pl.details.template_animal,
                                       e.true_shifts)
  return np.abs(pl.displacement - e.true_displacement).mean(-1)


def mean_error(evals: Sequence[AnimalEvaluation], placer: str) -> float:
  """Mean |error| over the slices with brain (placed or true) of every animal."""
  errs = []
  for e in evals:
    err = placement_error(e, placer)
    has = e.masks[placer].reshape(len(err), -1).any(-1) | (e.ceiling_dice > 0)
    errs += list(err[has & np.isfinite(err)])
  return float(np.mean(errs)) if errs else float("nan")
