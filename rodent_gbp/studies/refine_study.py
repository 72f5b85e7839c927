"""Does GBP carry the brain's edge? Contour refinement of the placed mask, with ablations.

On one model bundle and its split (or a fold of a fold file):

1. Per animal of the split's validation and test parts (the evaluated
   session), the raw slices' GBP gradient image under the trained network
   (the raw pass's reading) and under a fully randomised network (every layer
   re-initialised, the sanity check's cascade at its end;
   ``studies.common.randomise``), the placements of ``gbp`` and
   ``gbp_improved`` and the ``oracle`` (best training mask, slice offset,
   scale and shift per slice, ``evaluators.oracle_counts``).
2. The refinement (``rodent_gbp.refine``) of ``gbp_improved``'s chosen mask
   (before its 1-pixel dilation) driven by three evidence images: the trained
   GBP image (``gbp``), the raw intensity's gradient magnitude
   (``intensity``) and the randomised network's GBP image
   (``random_gbp``). Each one's settings are chosen on the VALIDATION animals
   only (mean brain DSC over a grid; :data:`GRID`), then applied unchanged to
   the TEST animals. The shipped placer ``gbp_refined`` (``refine.REFINED``)
   is run too.
3. Brain DSC per animal (pooled over its slices, as ``rodent_gbp.evaluation``)
   of gbp, gbp_improved (its removal mask, as reported everywhere), its chosen
   mask undilated (the refinement's start), each refinement, and the oracle;
   paired per test animal.

Writes ``refine.json``, ``refine.md`` and ``refine_slices.png`` (test slices:
start, refined and true contours over the raw slice and the GBP image) to
``out_dir``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rodent_gbp import evaluators
from rodent_gbp import fileio
from rodent_gbp import metrics
from rodent_gbp import placement
from rodent_gbp import refine
from rodent_gbp import scan
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp.studies.common import context
from rodent_gbp.studies.common import pooling
from rodent_gbp.studies.common.gradients import gradient_images
from rodent_gbp.studies.common.randomise import cascade_params, fresh_params, layers_from_top
from rodent_gbp import bundle as bundle_lib

_LOG = logging.getLogger(__name__)

#: Evidence name -> (refinement source, gradient image used).
EVIDENCE = {"gbp": ("gbp", "trained"), "intensity": ("intensity", None),
            "random_gbp": ("gbp", "randomised")}

#: Settings searched on the validation animals, per evidence.
GRID = {"feature": ("value", "drop"), "bias": (0.0, 0.5, 1.0, 1.5),
        "smoothness": (0.1, 0.3), "prior": (0.0, 0.05), "iterations": (1, 2)}

#: Columns of the per-animal table.
WAYS = ("gbp", "gbp_improved", "improved_undilated", "gbp_refined", "refined_gbp",
        "refined_intensity", "refined_random_gbp", "oracle")


def grid_options(grid: Mapping[str, Sequence[Any]] = GRID, **fixed: Any
                 ) -> list[refine.RefineOptions]:
  """Every combination of ``grid`` (``fixed`` fields set on each)."""
  keys = list(grid)
  return [refine.RefineOptions(**fixed, **dict(zip(keys, values)))
          for values in itertools.product(*(grid[k] for k in keys))]


def check_split(split: Mapping[str, Sequence[str]], bundle_split: Mapping[str, Sequence[str]],
                where: str) -> dict[str, list[str]]:
  """The split to evaluate: val and test animals none of which the model trained on.

  Raises:
    UsageError: no val or test animals, or some the bundle trained on.
  """
  split = {k: [str(a) for a in split.get(k, [])] for k in ("train", "val", "test")}
  if not split["val"] or not split["test"]:
    raise UsageError(f"{where}: the split needs validation and test animals")
  trained = set(bundle_split.get("train", []))
  leak = sorted(trained & set(split["val"] + split["test"]))
  if leak:
    raise UsageError(f"{where}: animals {leak} are validation/test animals of the split "
                     "but the model trained on them")
  return split


def prepare(volumes: Sequence, bundle, *, seed: int = 0,
            log: Callable[[str], None] = _LOG.info) -> dict[str, dict[str, Any]]:
  """Per animal: slices, truth, gradient images, placements and baseline DSC."""
  net = bundle.network("tissue")
  cfg = net.config
  order = layers_from_top(net.params)
  fresh = fresh_params(net.model, bundle.slice_shape, seed)
  randomised = cascade_params(net.params, fresh, order, len(order))
  cands = placement.candidate_bank(bundle).masks()
  n_bank = bundle.bank.masks.shape[1]
  out = {}
  for v in volumes:
    if v.brainmask is None:
      raise DataError(f"animal {v.animal_id}: no brain mask")
    t0 = time.process_time()
    images = v.image.astype(np.float32)
    truth = np.asarray(v.brainmask, bool)
    si = scan.bank_slice_index(len(images), n_bank)
    grads = {
        "trained": gradient_images(net.model, net.params, images,
                                   method=cfg.saliency_method, score=cfg.saliency_score,
                                   classes=cfg.gradient_classes,
                                   batch_size=cfg.eval_batch_size),
        "randomised": gradient_images(net.model, randomised, images,
                                      method=cfg.saliency_method,
                                      score=cfg.saliency_score,
                                      classes=cfg.gradient_classes,
                                      batch_size=cfg.eval_batch_size)}
    improved = placement.place("gbp_improved", images, bundle=bundle, slice_index=si,
                               gradient=grads["trained"])
    paper = placement.place("gbp", images, bundle=bundle, slice_index=si,
                            gradient=grads["trained"])
    shipped = placement.place_refined(images, bundle=bundle, slice_index=si,
                                   gradient=grads["trained"], start=improved)
    counts, _ = evaluators.oracle_counts(truth, cands, slice_index=si,
                                         slice_offsets=placement.IMPROVED.slice_offsets)
    tp, fp, fn, _ = (int(c) for c in counts)
    out[v.animal_id] = {
        "images": images, "truth": truth, "gradients": grads, "start": improved.details.placed,
        "masks": {"gbp": paper.mask, "gbp_improved": improved.mask,
                  "improved_undilated": improved.details.placed,
                  "gbp_refined": shipped.mask},
        "dice": {"gbp": metrics.mask_dice(paper.mask, truth),
                 "gbp_improved": metrics.mask_dice(improved.mask, truth),
                 "improved_undilated": metrics.mask_dice(improved.details.placed, truth),
                 "gbp_refined": metrics.mask_dice(shipped.mask, truth),
                 "oracle": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")},
        "cpu_s": time.process_time() - t0}
    log(f"refine: {v.animal_id} prepared: " + ", ".join(
        f"{k} {x:.4f}" for k, x in out[v.animal_id]["dice"].items()))
  return out


def refined_dice(animal: Mapping[str, Any], evidence: str, options: refine.RefineOptions
                 ) -> tuple[float, np.ndarray]:
  """(brain DSC, refined mask) of one prepared animal under one evidence and setting."""
  source, grad = EVIDENCE[evidence]
  options = dataclasses.replace(options, source=source)
  ev = refine.evidence_image(animal["images"], animal["gradients"][grad] if grad else None,
                             options)
  mask = refine.refine(animal["start"], ev, options)["mask"]
  return metrics.mask_dice(mask, animal["truth"]), mask


def select(prepared: Mapping[str, Mapping[str, Any]], val: Sequence[str], evidence: str,
           options: Sequence[refine.RefineOptions]) -> dict[str, Any]:
  """The setting of best mean validation brain DSC for ``evidence`` (first at ties)."""
  rows = []
  for o in options:
    d = [refined_dice(prepared[a], evidence, o)[0] for a in val]
    rows.append({"options": dataclasses.replace(o, source=EVIDENCE[evidence][0]).to_dict(),
                 "val_dice": d, "mean": float(np.mean(d))})
  best = max(range(len(rows)), key=lambda i: (rows[i]["mean"], -i))
  ranked = sorted(rows, key=lambda r: -r["mean"])
  return {"chosen": rows[best], "top": ranked[:5], "searched": len(rows)}


def _figure(path, prepared, animals: Sequence[str], masks: Mapping[str, Mapping[str, np.ndarray]],
            per_animal: int = 2) -> pathlib.Path:
  from rodent_gbp.figures import plt, save_figure
  picks = []
  for a in animals:
    area = prepared[a]["truth"].reshape(len(prepared[a]["truth"]), -1).sum(-1)
    order = np.argsort(-area)
    picks += [(a, int(s)) for s in sorted({int(order[0]), int(order[len(order) // 3])})
              ][:per_animal]
  # Small: the figure is committed with the results (< 300 kB).
  fig, axes = plt.subplots(2, len(picks), figsize=(1.45 * len(picks), 3.1), squeeze=False)
  for c, (a, s) in enumerate(picks):
    p = prepared[a]
    for r, (img, title) in enumerate(((p["images"][s], "raw"),
                                      (p["gradients"]["trained"][s], "GBP"))):
      ax = axes[r, c]
      # (H = R-L, W = S-I) slices shown transposed, superior up (as qc.show).
      ax.imshow(img.T, cmap="gray" if r == 0 else "magma", origin="lower",
                vmax=float(np.percentile(img, 99.5)) or None)
      for m, colour in ((p["truth"][s], "lime"), (p["start"][s], "deepskyblue"),
                        (masks[a]["refined_gbp"][s], "red")):
        if m.any():
          ax.contour(m.T.astype(float), levels=[0.5], colors=colour, linewidths=0.6,
                     origin="lower")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(f"{a} slice {s}", fontsize=7)
      if c == 0:
        ax.set_ylabel(title, fontsize=7)
  fig.suptitle("truth (green), gbp_improved's chosen mask (blue),\nrefined by GBP (red)",
               fontsize=6)
  return save_figure(fig, path)


def markdown(report: Mapping[str, Any]) -> str:
  """``refine.md``: chosen settings, per-animal table (test), means, wins."""
  split = report["split"]
  lines = ["# Refinement of the placed brain mask with an edge/evidence image", "",
           f"Model `{report['checkpoint']}`, data `{report['data_dir']}`; validation animals "
           f"{', '.join(split['val'])} (settings chosen here only), test animals "
           f"{', '.join(split['test'])} (reported). Brain DSC per animal, pooled over its "
           "slices.", "",
           "Settings chosen on the validation animals (mean brain DSC there; "
           f"{report['selection']['gbp']['searched']} settings each):", "",
           "| evidence | feature | bias | smoothness | prior | iterations | reach | val DSC |",
           "|---|---|---|---|---|---|---|---|"]
  for ev, sel in report["selection"].items():
    o = sel["chosen"]["options"]
    lines.append(f"| {ev} | {o['feature']} | {o['bias']} | {o['smoothness']} | {o['prior']} | "
                 f"{o['iterations']} | {o['reach']} | {sel['chosen']['mean']:.4f} |")
  lines += ["", f"Shipped `gbp_refined` (`refine.REFINED`): "
            f"{report['shipped_options']}", "", "Test animals:", "",
            "| animal | " + " | ".join(WAYS) + " |", "|---|" + "---|" * len(WAYS)]
  for a in split["test"]:
    row = report["test"][a]
    lines.append(f"| {a} | " + " | ".join(f"{row[w]:.4f}" for w in WAYS) + " |")
  lines.append("| mean | " + " | ".join(f"{report['test_mean'][w]:.4f}" for w in WAYS) + " |")
  lines += ["", "Test animals on which each refinement beats gbp_improved (its removal mask) "
            "and its undilated chosen mask:", ""]
  for w, n in report["wins"].items():
    lines.append(f"- {w}: {n['vs_gbp_improved']} / {len(split['test'])} vs gbp_improved, "
                 f"{n['vs_undilated']} / {len(split['test'])} vs its undilated mask")
  lines += ["", "Validation animals (the same columns):", "",
            "| animal | " + " | ".join(WAYS) + " |", "|---|" + "---|" * len(WAYS)]
  for a in split["val"]:
    row = report["val"][a]
    lines.append(f"| {a} | " + " | ".join(f"{row[w]:.4f}" for w in WAYS) + " |")
  return "\n".join(lines) + "\n"


def run(model_dir, out_dir, *, data_dir=None, split: Mapping[str, Sequence[str]] | None = None,
        split_source: str = "the bundle's split", seed: int = 0,
        grid: Mapping[str, Sequence[Any]] = GRID, figure: bool = True,
        log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """The refinement study; writes ``refine.json``, ``refine.md``, ``refine_slices.png``.

  Args:
    model_dir: a model bundle folder.
    out_dir: output folder.
    data_dir: converted dataset folder (default ``<model_dir>/../data``).
    split: {train, val, test} animal ids (default the bundle's split).
    split_source: where ``split`` came from (for messages and the report).
    seed: seed of the randomised network.
    grid: settings searched on the validation animals.
    figure: write the figure.

  Raises:
    UsageError: a split without val or test animals or with animals the
    model trained on; CheckpointError, DataError: from ``context.load_context``.
  """
  b0 = bundle_lib.load_bundle(model_dir)
  split = check_split(split if split is not None else (b0.split or {}), b0.split or {},
                      split_source)
  ctx = context.load_context(model_dir, data_dir, animals=split["val"] + split["test"])
  t0 = time.time()
  prepared = prepare([ctx.volumes[a] for a in split["val"] + split["test"]], ctx.bundle,
                     seed=seed, log=log)
  options = grid_options(grid)
  selection = {}
  for ev in EVIDENCE:
    selection[ev] = select(prepared, split["val"], ev, options)
    c = selection[ev]["chosen"]
    log(f"refine: {ev} chosen on validation {c['mean']:.4f}: {c['options']}")
  masks: dict[str, dict[str, np.ndarray]] = {a: {} for a in prepared}
  table: dict[str, dict[str, float]] = {}
  for a, p in prepared.items():
    row = dict(p["dice"])
    for ev, sel in selection.items():
      o = refine.RefineOptions(**sel["chosen"]["options"])
      row[f"refined_{ev}"], masks[a][f"refined_{ev}"] = refined_dice(p, ev, o)
    table[a] = row
  test = {a: table[a] for a in split["test"]}
  refined_ways = [w for w in WAYS if w.startswith("refined") or w == "gbp_refined"]
  report: dict[str, Any] = {
      "checkpoint": str(model_dir), "data_dir": str(ctx.data_dir), "split_source": split_source,
      "split": split, "seed": seed, "grid": {k: list(v) for k, v in grid.items()},
      "evidence": {k: {"source": s, "gradient": g} for k, (s, g) in EVIDENCE.items()},
      "shipped_options": refine.REFINED.to_dict(), "selection": selection,
      "val": {a: table[a] for a in split["val"]}, "test": test,
      "test_mean": {w: float(np.mean([test[a][w] for a in test])) for w in WAYS},
      "val_mean": {w: float(np.mean([table[a][w] for a in split["val"]])) for w in WAYS},
      "wins": {w: {"vs_gbp_improved": int(sum(test[a][w] > test[a]["gbp_improved"]
                                              for a in test)),
                   "vs_undilated": int(sum(test[a][w] > test[a]["improved_undilated"]
                                           for a in test))} for w in refined_ways},
      "seconds": time.time() - t0}
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  files = ["refine.json", "refine.md"]
  if figure:
    _figure(out / "refine_slices.png", prepared, split["test"][:2], masks)
    files.append("refine_slices.png")
  report["files"] = files
  fileio.write_json(out / "refine.json", report)
  fileio.atomic_write_text(out / "refine.md", markdown(report))
  log(f"refine: wrote {', '.join(files)} to {out}")
  return report


#: Columns of the pooled table: the per-fold selection (``refined_gbp``) is
#: the cross-validated refinement; ``gbp_refined`` runs the shipped settings,
#: chosen on fold 0's validation animals.
POOLED = ("gbp", "gbp_improved", "refined_gbp", "gbp_refined", "refined_intensity",
          "refined_random_gbp", "oracle")


def pool(reports: Sequence[Mapping[str, Any]],
         supervised: Mapping[str, float] | None = None) -> dict[str, Any]:
  """Pools several folds' ``refine.json`` reports over their test animals.

  Args:
    reports: one report per fold; no animal may be a test animal twice.
    supervised: brain DSC of the ``supervised`` placer per animal (e.g. the
      extraction CV's ``per_animal.csv``), added as a column where given; it
      must cover every pooled animal.

  Returns:
    ``per_animal`` {animal: {column: DSC, "fold": k}}, ``fold_means``
    (one row per fold), ``mean``/``sd`` over the fold means (as the CV tables),
    ``animal_mean``, ``wins`` (animals on which each column beats
    ``gbp_improved``, and ``refined_gbp`` beats each column) and ``animals``.

  Raises:
    DataError: an animal in two folds' test parts, or missing from ``supervised``.
  """
  per: dict[str, dict[str, Any]] = {}
  folds = []
  for k, rep in enumerate(reports):
    rows = {}
    for a, row in rep["test"].items():
      if a in per:
        raise DataError(f"animal {a} is a test animal of two pooled reports "
                        f"({rep.get('split_source', k)} and an earlier one)")
      rows[a] = {w: float(row[w]) for w in POOLED} | {"fold": k}
      if supervised is not None:
        if a not in supervised:
          raise DataError(f"animal {a} has no supervised brain DSC to pool beside it")
        rows[a]["supervised"] = float(supervised[a])
    per.update(rows)
    folds.append(rows)
  cols = list(POOLED) + (["supervised"] if supervised is not None else [])
  animals = sorted(per)
  return {
      "columns": cols, "animals": animals, "per_animal": per,
      **pooling.fold_statistics(folds, cols),
      "animal_mean": {c: float(np.mean([per[a][c] for a in animals])) for c in cols},
      "wins_vs_gbp_improved": {c: int(sum(per[a][c] > per[a]["gbp_improved"]
                                          for a in animals)) for c in cols},
      "refined_gbp_beats": {c: int(sum(per[a]["refined_gbp"] > per[a][c] for a in animals))
                            for c in cols if c != "refined_gbp"}}


def pool_markdown(pooled: Mapping[str, Any], sources: Sequence[str]) -> str:
  """``refine_pooled.md``: per-fold means, mean +- sd over folds, per animal, wins."""
  cols = pooled["columns"]
  n = len(pooled["animals"])
  lines = ["# Refinement pooled over folds (test animals only)", "",
           "Reports: " + ", ".join(f"`{s}`" for s in sources) + ". `refined_gbp`: GBP "
           "refinement with settings chosen on each fold's own validation animals (the "
           "cross-validated number); `gbp_refined`: the shipped settings (`refine.REFINED`, "
           "chosen on fold 0's validation animals 07, 10, 22, so not held out for animals "
           "that are test animals of other folds). Brain DSC per animal.", "",
           "| fold | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for k, f in enumerate(pooled["fold_means"]):
    lines.append(f"| {k} | " + " | ".join(f"{f[c]:.4f}" for c in cols) + " |")
  lines.append("| mean +- sd over folds | " + pooling.mean_sd_cells(pooled, cols) + " |")
  lines += ["", f"Animals ({n}) on which each column beats `gbp_improved`: " + ", ".join(
      f"{c} {pooled['wins_vs_gbp_improved'][c]}" for c in cols if c != "gbp_improved"),
      "", f"Animals on which `refined_gbp` beats each column: " + ", ".join(
          f"{c} {v}" for c, v in pooled["refined_gbp_beats"].items()), "",
      *pooling.animal_table(pooled, cols)]
  return "\n".join(lines) + "\n"


def pool_files(report_paths: Sequence, out_dir, *, supervised_csv=None,
               log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Reads the reports (``refine.json`` files or their folders), pools them and
  writes ``refine_pooled.json`` and ``refine_pooled.md`` to ``out_dir``.

  Raises:
    DataError: a report or the CSV unreadable or without the needed columns.
  """
  reports, sources = pooling.read_reports(report_paths, "refine.json")
  supervised = (None if supervised_csv is None
                else pooling.animal_column(supervised_csv, "brain_dsc"))
  pooled = pool(reports, supervised) | {"reports": sources,
                                        "supervised_csv": supervised_csv and str(supervised_csv)}
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fileio.write_json(out / "refine_pooled.json", pooled)
  fileio.atomic_write_text(out / "refine_pooled.md", pool_markdown(pooled, sources))
  log(f"refine: pooled {len(reports)} reports ({len(pooled['animals'])} test animals) into {out}")
  return pooled
