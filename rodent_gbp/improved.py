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
import logging
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rodent_gbp import bank as bank_lib
from rodent_gbp import evaluators
from rodent_gbp import metrics
from rodent_gbp import placement as placement_lib
from rodent_gbp import bundle as bundle_lib
from rodent_gbp import data
from rodent_gbp import fileio
from rodent_gbp import pipeline
from rodent_gbp.errors import DataError

_LOG = logging.getLogger(__name__)

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
  err = evaluators.placement_errors(placed.displacement, placed.details.template_animal,
                                    true_shifts)[has]
  err = err[np.isfinite(err)]  # no displacement truth: NaN, without a warning
  return dsc, float(np.mean(err)) if err.size else float("nan")


def ablation(volumes: Sequence, *, bundle, gradients: Mapping[str, np.ndarray] | None = None,
             rows: Sequence = MAIN_ABLATION, base=None,
             log: Callable[[str], None] = _LOG.info) -> list[dict[str, Any]]:
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
    err = table[-1]["mean_abs_error_px"]
    log(f"ablation: {name}: brain DSC {table[-1]['brain_dsc']:.4f}"
        + (f", error {err:.2f} px" if np.isfinite(err) else ""))
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
           "listed here.", ""]
  truth = any(np.isfinite(r["mean_abs_error_px"]) for r in rows)
  if truth:
    lines += ["| reading | brain DSC | mean abs error (px) |", "|---|---|---|"]
  else:
    lines += ["These animals record no acquisition displacement: no error column.", "",
              "| reading | brain DSC |", "|---|---|"]
  for r in rows:
    err = f" {r['mean_abs_error_px']:.2f} |" if truth else ""
    lines.append(f"| {r['reading']} | {100 * r['brain_dsc']:.2f} |{err}")
  if oracle_dsc is not None:
    lines.append(f"| oracle: best template, scale and shift | {100 * oracle_dsc:.2f} |"
                 + (" 0 |" if truth else ""))
  gbp = rows[0]["brain_dsc"] if rows else float("nan")
  inten = [r for r in rows if r["options"]["signal"] == "intensity"]
  if inten:
    best = max(inten, key=lambda r: r["brain_dsc"])
    verdict = ("does as well as or better than" if best["brain_dsc"] >= gbp - 0.002
               else "does worse than")
    lines += ["", f"Plain intensity ({best['reading']}: {100 * best['brain_dsc']:.2f}) "
              f"{verdict} the improved GBP reading ({100 * gbp:.2f})."]
  return "\n".join(lines) + "\n"


#: The settings of :data:`placement.IMPROVED` chosen on validation animals:
#: window margin of the locating ZNCC, ring of the intensity choice, its
#: search radius, dilation of the removal mask.
SELECTION_GRID = {"margin": (2, 4, 6, 8), "choice_margin": (0, 2, 4),
                  "choice_radius": (1, 2, 3), "dilate": (0, 1)}


def _grid(grid: Mapping[str, Sequence]) -> list[dict[str, Any]]:
  import itertools
  keys = list(grid)
  return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def select_reading(volumes: Sequence, *, bundle, grid: Mapping[str, Sequence] = SELECTION_GRID,
                   base=None, log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Scores every setting of ``grid`` on ``volumes`` (not test animals) and picks one.

  Criterion: the mean over animals of the mean WM / GM / CSF DSC of the
  re-segmentation after removal (what the removal is for); ties within 1e-4
  are broken by the brain DSC of the removal mask, then by the order of the
  grid. One raw pass per animal serves every setting.

  Returns:
    dict with ``rows`` (setting, tissue DSC, brain DSC per setting), ``chosen``
    (the setting), ``options`` (the full options) and ``animals``.
  """
  base = placement_lib.IMPROVED if base is None else base
  raws = {v.animal_id: pipeline.raw_pass(v.image, bundle=bundle) for v in volumes}
  num_classes = bundle.network("tissue").config.num_classes
  rows = []
  for setting in _grid(grid):
    o = dataclasses.replace(base, **setting)
    tissue, brain = [], []
    for v in volumes:
      pl = placement_lib.place_search(v.image, bundle=bundle, options=o,
                                      gradient=raws[v.animal_id]["gradient"])
      labels = pipeline.remove_and_segment(v.image, pl, bundle=bundle)
      m = metrics.metrics_from_counts(np.asarray(metrics.confusion_counts(
          labels, v.label.astype(np.int32), num_classes)))["dsc"]
      tissue.append(float(np.nanmean(m[1:])))
      brain.append(float(metrics.metrics_from_counts(np.asarray(
          metrics.binary_counts(pl.mask, v.brainmask)))["dsc"]))
    rows.append({"setting": setting, "tissue_dsc": float(np.mean(tissue)),
                 "brain_dsc": float(np.mean(brain))})
    log(f"selection {setting}: tissue DSC {rows[-1]['tissue_dsc']:.4f}, "
        f"brain DSC {rows[-1]['brain_dsc']:.4f}")
  best = max(rows, key=lambda r: (round(r["tissue_dsc"], 4), round(r["brain_dsc"], 4)))
  chosen = dataclasses.replace(base, **best["setting"])
  return {"animals": [v.animal_id for v in volumes], "rows": rows,
          "chosen": best["setting"], "options": chosen.to_dict(),
          "criterion": "mean over animals of the mean WM/GM/CSF DSC after removal; "
                       "ties (1e-4) by brain DSC of the removal mask"}


def run_selection(model_dir, out_dir, *, data_dir=None, test: bool = True,
                  log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """:func:`select_reading` on the bundle's validation animals; the chosen and the
  shipped reading reported on its test animals; ``selection.json`` / ``.md``."""
  import pathlib

  model_dir, out_dir = pathlib.Path(model_dir), pathlib.Path(out_dir)
  bundle = bundle_lib.load_bundle(model_dir)
  data_dir = pathlib.Path(data_dir) if data_dir else model_dir.resolve().parent / "data"
  volumes = {v.animal_id: v for v in data.load_dataset(data_dir)}
  split = bundle.split or {}
  if not split.get("val"):
    raise DataError(f"{model_dir}: the bundle's split has no validation animals to choose on")
  missing = [a for a in split["val"] + split.get("test", []) if a not in volumes]
  if missing:
    raise DataError(f"{data_dir}: animals {missing} of the bundle's split are missing")
  result = select_reading([volumes[a] for a in split["val"]], bundle=bundle, log=log)
  result["shipped"] = {k: getattr(placement_lib.IMPROVED, k) for k in SELECTION_GRID}
  if test and split.get("test"):
    tv = [volumes[a] for a in split["test"]]
    result["test"] = {
        name: select_reading(tv, bundle=bundle, grid={k: (v,) for k, v in setting.items()},
                             log=log)["rows"][0]
        for name, setting in (("chosen", result["chosen"]), ("shipped", result["shipped"]))}
    result["test_animals"] = split["test"]
  out_dir.mkdir(parents=True, exist_ok=True)
  fileio.write_json(out_dir / "selection.json", result)
  fileio.atomic_write_text(out_dir / "selection.md", selection_markdown(result))
  log(selection_markdown(result))
  return result


def selection_markdown(result: Mapping[str, Any]) -> str:
  lines = ["# Choosing the improved reading's settings", "",
           f"Chosen on the validation animals {', '.join(result['animals'])} "
           f"({result['criterion']}).", "",
           "| setting | tissue DSC (validation) | brain DSC (validation) |", "|---|---|---|"]
  for r in sorted(result["rows"], key=lambda r: -r["tissue_dsc"])[:10]:
    lines.append(f"| {r['setting']} | {100 * r['tissue_dsc']:.2f} | {100 * r['brain_dsc']:.2f} |")
  lines += ["", f"Chosen: {result['chosen']}; shipped (placement.IMPROVED): {result['shipped']}."]
  if "test" in result:
    lines += ["", f"On the test animals {', '.join(result['test_animals'])}:", "",
              "| reading | tissue DSC | brain DSC |", "|---|---|---|"]
    for name, r in result["test"].items():
      lines.append(f"| {name} {r['setting']} | {100 * r['tissue_dsc']:.2f} | "
                   f"{100 * r['brain_dsc']:.2f} |")
  return "\n".join(lines) + "\n"
