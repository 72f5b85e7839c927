"""The improved placement's ablation: one change from the shipped reading per row.

Each row places the mask with ``placement.place_search`` under options that
differ from :data:`placement.IMPROVED` in one respect and reports the brain
DSC of the removal mask and the mean placement error, averaged over the
animals given. Rows that need another saliency method (vanilla, deconvnet)
cost a saliency pass each and are left out of the main job's table
(:data:`MAIN_ABLATION`); the placement study runs them all.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rodent_gbp import bank as bank_lib
from rodent_gbp import evaluators
from rodent_gbp import metrics
from rodent_gbp import placement as placement_lib

#: Ablation rows: one change from :data:`placement.IMPROVED` each (name, changes).
ABLATION = (
    ("improved: GBP locates, intensity chooses template and scale", {}),
    ("- template choice (reference at the same slice)", {"choose_template": False}),
    ("- scale (1.0 only)", {"scales": (1.0,)}),
    ("- volume consistency (per-slice placement)", {"volume": False}),
    ("- dilation of the removal mask", {"dilate": 0}),
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

#: The main job's rows: those with the guided gradient image of the raw pass.
MAIN_ABLATION = tuple(r for r in ABLATION if r[1].get("method", "guided") == "guided")


def placement_quality(placed: placement_lib.Placement, volume, true_shifts: np.ndarray
                      ) -> tuple[float, float]:
  """(brain DSC of the removal mask pooled over slices, mean |error| over slices with a mask)."""
  dsc = float(metrics.metrics_from_counts(
      np.asarray(metrics.binary_counts(placed.mask, volume.brainmask)))["dsc"])
  has = placed.mask.reshape(len(placed.mask), -1).any(-1)
  err = evaluators.placement_errors(placed.displacement, placed.details["template_animal"],
                                    true_shifts)[has]
  return dsc, float(np.nanmean(err)) if err.size else float("nan")


def ablation(volumes: Sequence, *, bundle, gradients: Mapping[str, np.ndarray] | None = None,
             rows: Sequence = MAIN_ABLATION, base=None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Brain DSC and mean placement error of each row, mean over ``volumes``.

  Args:
    volumes: evaluated animals (``data.Volume`` with brain masks).
    bundle: the model bundle.
    gradients: animal id -> (S, H, W) guided gradient image of its raw slices
      (from the raw pass), so rows need no saliency pass of their own.
    rows: (name, changes) pairs.
    base: the options the changes apply to (default ``placement.IMPROVED``).
  """
  base = placement_lib.IMPROVED if base is None else base
  cbank = placement_lib.candidate_bank(bundle)
  table = []
  for name, changes in rows:
    o = dataclasses.replace(base, **changes)
    dscs, errs = [], []
    for v in volumes:
      g = None if gradients is None else gradients.get(v.animal_id)
      pl = placement_lib.place_search(v.image, bundle=bundle, options=o, gradient=g)
      shifts = evaluators.true_displacements(bank_lib.recorded_displacement(v),
                                             bundle.bank.displacements,
                                             cbank.masks().to_reference)
      dsc, err = placement_quality(pl, v, shifts)
      dscs.append(dsc)
      errs.append(err)
    table.append({"reading": name, "options": o.to_dict(), "brain_dsc": float(np.mean(dscs)),
                  "mean_abs_error_px": float(np.mean(errs))})
    log(f"ablation: {name}: brain DSC {table[-1]['brain_dsc']:.4f}, "
        f"error {table[-1]['mean_abs_error_px']:.2f} px")
  return table


def ablation_markdown(rows: Sequence[Mapping[str, Any]], oracle_dsc: float | None = None,
                      *, animals: Sequence[str] = ()) -> str:
  """``placement.md``: the ablation table, one change from the improved reading per row."""
  lines = ["# Placement ablation", "",
           "Brain DSC of the removal mask (mean over "
           + (f"the animals {', '.join(animals)}" if animals else "the animals") + ")",
           "and mean |error| of the displacement (pixels, mean over slices with a",
           "placed mask, against the recorded truth of the chosen template's animal).",
           "Each row changes one thing from the shipped improved reading (first row).",
           "Vanilla-gradient and deconvnet readings need their own saliency pass and",
           "are in the placement study (experiments/placement_study.py) when not",
           "listed here.", "",
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
