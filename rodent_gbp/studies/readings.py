"""The paper's placement under every reading the paper leaves open (docs/design.md#readings-the-paper-leaves-open).

docs/design.md#readings-the-paper-leaves-open fixes a default reading of the paper's mask placement (section 4.3,
Fig. 7) and names the alternatives: which classes' GBP maps make the gradient
image, Eq. 1's centre and width, and the template (reference mask x the
reference's gradient image, x its enhancement, or the bare mask). This module
measures them all on one trained model with the placement otherwise exactly
the paper's: the reference animal (the bank's, median brain volume) at the
same slice index, plain 'same'-mode FFT correlation of the template with the
enhanced gradient image of each raw slice, argmax, zero-filled shift of the
reference mask (``placement.place_mask``). One more axis: whose argmax, each
slice's own (the default of docs/design.md#displacement-per-slice-or-per-acquisition) or one per acquisition from the sum of its slices'
maps (``placement.volume_displacement``). The score is the brain DSC of the
placed mask, confusion counts pooled per animal, mean over animals.

The choice is kept apart from the report: readings are ranked on the
*selection* animals (every animal with labels that is neither a test animal
nor the reference), and the chosen reading's brain DSC on the *test* animals,
which play no part in the choice, is the held-out number. The default reading
(tissue classes, centre 2, width 0.5, mask x gradient) on the test animals is
the main job's ``brain.gbp``.

Besides the fixed centres, a *calibrated* centre per class set: the mean z
(Eq. 1's input) of the reference's own raw-slice gradient image inside its
brain mask, i.e. the z at which the brain sits on these scans, in place of
the paper's 2 (chosen on theirs).

Cost: one saliency pass (all four classes at once) over every animal's raw
slices and one over the reference's skull-stripped slices; then each reading
is one jitted call over all slices of all animals, compiled once per
(class set, template kind); centre and width are traced.

The saliency passes (``abs_maps``) and the calibrated centre are
``studies.common.gradients``'; pooling folds (:func:`pool_files`) reads and
summarises them with ``studies.common.pooling``, as the refinement study does.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import bank as bank_lib
from rodent_gbp import enhance
from rodent_gbp import fileio
from rodent_gbp import metrics
from rodent_gbp import placement
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp import report
from rodent_gbp.studies.common import context
from rodent_gbp.studies.common import pooling
from rodent_gbp.studies.common.gradients import abs_maps, calibrated_center
from rodent_gbp import figures
from rodent_gbp import scan

_LOG = logging.getLogger(__name__)

#: Gradient images: name -> classes whose |GBP map| are summed (docs/design.md#the-gradient-image).
CLASS_SETS: dict[str, tuple[int, ...]] = {
    "tissue": (1, 2, 3), "wm": (1,), "gm": (2,), "csf": (3,),
    "background": (0,), "all": (0, 1, 2, 3)}
TEMPLATES = ("gradient", "enhanced", "mask")
CENTERS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
WIDTHS = (0.5, 1.0, 1.5)
DISPLACEMENTS = placement.DISPLACEMENTS
#: The default reading of docs/design.md#readings-the-paper-leaves-open (the ``paper`` config's).
DEFAULT = {"classes": "tissue", "center": 2.0, "width": 0.5, "template": "gradient",
           "displacement": "slice"}


@dataclasses.dataclass(frozen=True)
class Reading:
  """One reading of the paper's placement.

  Attributes:
    classes: a key of :data:`CLASS_SETS`.
    center, width: Eq. 1 parameters (signal, and the ``enhanced`` template).
    template: ``gradient`` (mask x unit-scaled reference gradient image of its
      skull-stripped slice), ``enhanced`` (mask x Eq. 1 of that) or ``mask``.
    displacement: ``slice`` (one argmax per slice) or ``volume`` (one per
      acquisition).
    calibrated: the centre was calibrated on the reference (module doc).
  """

  classes: str
  center: float
  width: float
  template: str
  displacement: str = "slice"
  calibrated: bool = False

  def label(self) -> str:
    c = f"{self.center:.2f} (calibrated)" if self.calibrated else f"{self.center:g}"
    return (f"{self.classes}, centre {c}, width {self.width:g}, template {self.template}, "
            f"{self.displacement} displacement")


def grid(class_sets: Sequence[str] = tuple(CLASS_SETS), centers: Sequence[Any] = CENTERS,
         widths: Sequence[Any] = WIDTHS, templates: Sequence[str] = TEMPLATES,
         displacements: Sequence[str] = DISPLACEMENTS) -> list[Reading]:
  """Every combination, the default first.

  ``centers`` and ``widths`` are numbers or their text (a list flag's values).

  Raises:
    UsageError: an unknown class set, template or displacement, a centre or
      width that is not a number, a width that is not positive.
  """
  for c in class_sets:
    if c not in CLASS_SETS:
      raise UsageError(f"unknown class set {c!r}; one of {sorted(CLASS_SETS)}")
  for t in templates:
    if t not in TEMPLATES:
      raise UsageError(f"unknown template {t!r}; one of {TEMPLATES}")
  for d in displacements:
    if d not in DISPLACEMENTS:
      raise UsageError(f"unknown displacement {d!r}; one of {DISPLACEMENTS}")
  centers = context.floats(centers, "centers")
  widths = context.floats(widths, "widths")
  if any(not w > 0 for w in widths):
    raise UsageError(f"widths must be positive, got {widths}")
  out = [Reading(**DEFAULT)]
  for d in displacements:
    for c in class_sets:
      for t in templates:
        for ce in centers:
          for w in widths:
            r = Reading(c, float(ce), float(w), t, d)
            if r != out[0]:
              out.append(r)
  return out


@functools.partial(jax.jit, static_argnames=("classes", "template", "displacement",
                                             "num_volumes"))
def place(maps: jax.Array, ref_maps: jax.Array, ref_masks: jax.Array, center, width,
          owner: jax.Array | None = None, *, classes: tuple[int, ...], template: str,
          displacement: str = "slice", num_volumes: int = 1):
  """The paper's placement for a batch of raw slices under one reading.

  Args:
    maps: (B, 4, H, W) |GBP maps| of the raw slices, all four classes.
    ref_maps: (B, 4, H, W) |GBP maps| of the reference's skull-stripped slice
      at each slice's index.
    ref_masks: (B, H, W) the reference's brain masks at those indices.
    center, width: Eq. 1 parameters (traced).
    owner: (B,) int32 volume of each slice, in [0, num_volumes) (``volume``
      displacement; default: one volume).
    classes: summed classes (static).
    template: ``gradient`` | ``enhanced`` | ``mask`` (static).
    displacement: ``slice`` | ``volume`` (static).
    num_volumes: volumes in ``owner`` (static).

  Returns:
    displacement (B, 2) int32 and the placed masks (B, H, W) bool.
  """
  g = jnp.sum(maps[:, list(classes)], axis=1)
  signal = enhance.enhance_gradient(g, center=center, width=width)
  ref_g = bank_lib.scale_to_unit(jnp.sum(ref_maps[:, list(classes)], axis=1))
  tmpl = placement.make_template(ref_masks, ref_g, template, center=center, width=width)
  corr, disp, placed = placement.place_mask(signal, tmpl, ref_masks)
  if displacement == "volume":
    owner = jnp.zeros(len(maps), jnp.int32) if owner is None else owner
    disp, placed = placement.place_volume(corr, tmpl, ref_masks, owner,
                                          num_volumes=num_volumes)
  return disp, placed


@functools.partial(jax.jit, static_argnames=("classes", "template", "displacement",
                                             "num_volumes"))
def place_counts(maps: jax.Array, ref_maps: jax.Array, ref_masks: jax.Array,
                 true_masks: jax.Array, center, width, owner: jax.Array | None = None, *,
                 classes: tuple[int, ...], template: str, displacement: str = "slice",
                 num_volumes: int = 1):
  """:func:`place`, then per-slice brain confusion counts (B, 4) [TP, FP, FN, TN]
  against ``true_masks`` (B, H, W): only (B, 2) + (B, 4) numbers leave the device."""
  disp, placed = place(maps, ref_maps, ref_masks, center, width, owner, classes=classes,
                       template=template, displacement=displacement,
                       num_volumes=num_volumes)
  return disp, jax.vmap(metrics.binary_counts)(placed, true_masks)


@dataclasses.dataclass
class Inputs:
  """Everything the readings are evaluated on.

  The per-slice stacks every reading reads (``maps`` .. ``true_masks``) are
  put on the device once by :func:`prepare`; the rest are host arrays.
  """

  animals: list[str]                 # evaluated animals, selection then test
  test: list[str]
  maps: jax.Array                    # (N, 4, H, W) |maps| of every raw slice, animals stacked
  ref_maps: jax.Array                # (N, 4, H, W) reference skull-stripped |maps| per slice
  ref_masks: jax.Array               # (N, H, W)
  true_masks: jax.Array              # (N, H, W)
  owner: np.ndarray                  # (N,) index into animals
  has_brain: np.ndarray              # (N,) the true mask is not empty
  true_disp: np.ndarray              # (N, 2) test minus reference displacement (NaN: unknown)
  ref_raw_maps: np.ndarray           # (S, 4, H, W) reference raw-slice |maps| (calibration)
  ref_raw_masks: np.ndarray          # (S, H, W)
  reference: str


def prepare(volumes: Mapping[str, Any], test: Sequence[str], *, bundle,
            batch_size: int | None = None) -> Inputs:
  """Saliency of every labelled animal but the reference, and the reference's.

  Args:
    volumes: animal id -> ``data.Volume`` (the reference and the test
      animals among them).
    test: the held-out animals.
    bundle: the model bundle (tissue network, template bank).
    batch_size: slices per saliency call (default the config's).

  Raises:
    DataError: the reference or a test animal is missing or has no brain mask.
  """
  net = bundle.network("tissue")
  model, params = net.model, net.params
  batch_size = batch_size or net.config.eval_batch_size
  bank = bundle.bank
  ref_id = bank.animal_ids[bank.reference]
  if ref_id not in volumes:
    raise DataError(f"the reference animal {ref_id} is not in the dataset")
  ref = volumes[ref_id]
  if ref.brainmask is None:
    raise DataError(f"the reference animal {ref_id} has no brain mask")
  missing = [a for a in test if a not in volumes]
  if missing:
    raise DataError(f"test animals {missing} are not in the dataset")
  selection = [a for a in sorted(volumes) if a not in test and a != ref_id
               and volumes[a].brainmask is not None]
  animals = selection + list(test)
  n_bank = bank.masks.shape[1]
  # The bank's rows: the reference's slices by relative position (as the bank
  # was built), and each animal's slices matched to them as the main job does.
  ref_st = abs_maps(model, params, ref.image * ref.brainmask, batch_size)[
      scan.bank_slice_index(n_bank, len(ref.image))]
  ref_raw = abs_maps(model, params, ref.image, batch_size)
  ref_disp = bank_lib.recorded_displacement(ref)
  maps, refm, refk, truem, owner, disp = [], [], [], [], [], []
  for i, a in enumerate(animals):
    v = volumes[a]
    if v.brainmask is None:
      raise DataError(f"test animal {a} has no brain mask")
    n = v.image.shape[0]
    s = scan.bank_slice_index(n, n_bank)
    maps.append(abs_maps(model, params, v.image, batch_size))
    refm.append(ref_st[s])
    refk.append(bank.masks[bank.reference, s])
    truem.append(v.brainmask.astype(bool))
    owner.append(np.full(n, i))
    disp.append(np.broadcast_to(bank_lib.recorded_displacement(v) - ref_disp, (n, 2)))
  true_masks = np.concatenate(truem)
  owner = np.concatenate(owner).astype(np.int32)
  maps, refm, refk, truem = jax.device_put(
      (np.concatenate(maps), np.concatenate(refm), np.concatenate(refk), true_masks))
  return Inputs(animals=animals, test=list(test), maps=maps, ref_maps=refm, ref_masks=refk,
                true_masks=truem, owner=owner,
                has_brain=true_masks.reshape(len(true_masks), -1).any(-1),
                true_disp=np.concatenate(disp), ref_raw_maps=ref_raw,
                ref_raw_masks=ref.brainmask.astype(bool), reference=ref_id)


def score(reading: Reading, inputs: Inputs) -> dict[str, Any]:
  """Brain DSC (per animal, and means over selection and test) of one reading."""
  disp, counts = place_counts(inputs.maps, inputs.ref_maps, inputs.ref_masks,
                              inputs.true_masks, np.float32(reading.center),
                              np.float32(reading.width), np.asarray(inputs.owner, np.int32),
                              classes=CLASS_SETS[reading.classes], template=reading.template,
                              displacement=reading.displacement,
                              num_volumes=len(inputs.animals))
  disp, counts = np.asarray(disp), np.asarray(counts, np.int64)
  err = np.abs(disp - inputs.true_disp).mean(-1)
  known = np.isfinite(err)
  per_animal, errors = {}, {}
  for i, a in enumerate(inputs.animals):  # a few animals, host sums of small arrays
    rows = inputs.owner == i
    pooled = counts[rows].sum(0)
    per_animal[a] = float(metrics.metrics_from_counts(pooled)["dsc"])
    mine = err[rows & inputs.has_brain & known]
    errors[a] = float(np.mean(mine)) if mine.size else float("nan")
  sel = [a for a in inputs.animals if a not in inputs.test]

  def mean(d, keys):  # NaN (an undefined DSC, no displacement truth) left out, no warning
    vals = np.array([d[k] for k in keys], np.float64)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else float("nan")

  return {"reading": dataclasses.asdict(reading), "label": reading.label(),
          "selection_brain_dsc": mean(per_animal, sel),
          "test_brain_dsc": mean(per_animal, inputs.test),
          "selection_error_px": mean(errors, sel), "test_error_px": mean(errors, inputs.test),
          "per_animal_brain_dsc": per_animal}


def search(inputs: Inputs, readings: Sequence[Reading], *,
           log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Scores every reading plus the calibrated centres; picks on the selection."""
  readings = list(readings)
  class_sets = sorted({r.classes for r in readings}, key=list(CLASS_SETS).index)
  templates = sorted({r.template for r in readings}, key=TEMPLATES.index)
  widths = sorted({r.width for r in readings})
  calib = {c: calibrated_center(inputs.ref_raw_maps, inputs.ref_raw_masks, CLASS_SETS[c])
           for c in class_sets}
  displacements = sorted({r.displacement for r in readings}, key=DISPLACEMENTS.index)
  readings += [Reading(c, calib[c], w, t, d, calibrated=True)
               for d in displacements for c in class_sets for t in templates for w in widths]
  rows = []
  for k, r in enumerate(readings):
    rows.append(score(r, inputs))
    if (k + 1) % 50 == 0 or k + 1 == len(readings):
      log(f"readings: {k + 1}/{len(readings)} scored")
  default = rows[0]
  sel_animals = [a for a in inputs.animals if a not in inputs.test]
  chosen = (max(rows, key=lambda r: (np.nan_to_num(r["selection_brain_dsc"], nan=-1.0)))
            if sel_animals else None)
  best_test = max(rows, key=lambda r: np.nan_to_num(r["test_brain_dsc"], nan=-1.0))
  calibrated = [r for r in rows if r["reading"]["calibrated"]]
  return {"reference": inputs.reference, "selection_animals": sel_animals,
          "test_animals": inputs.test, "calibrated_centers": calib,
          "default": default, "chosen_on_selection": chosen,
          "best_on_test_in_hindsight": best_test,
          "best_calibrated_on_selection": max(
              calibrated, key=lambda r: np.nan_to_num(r["selection_brain_dsc"], nan=-1.0)),
          "rows": rows}


def markdown(result: Mapping[str, Any], *, top: int = 10) -> str:
  """The search as a Markdown report.

  The displacement-error column is left out when no reading has one (real
  scans carry no displacement truth).
  """
  known = lambda v: v is not None and np.isfinite(v)
  with_error = any(known(r.get("test_error_px")) for r in result["rows"])

  def row(r):
    cells = [r["label"], f"{100 * r['selection_brain_dsc']:.2f}",
             f"{100 * r['test_brain_dsc']:.2f}"]
    if with_error:
      e = r.get("test_error_px")
      cells.append(f"{e:.1f}" if known(e) else "n/a")
    return "| " + " | ".join(cells) + " |"
  head = (["| reading | selection brain DSC | test brain DSC | test error (px) |",
           "|---|---|---|---|"] if with_error else
          ["| reading | selection brain DSC | test brain DSC |", "|---|---|---|"])
  err_note = ("; error: mean |estimated - true| displacement over slices with brain"
              if with_error else "; no displacement truth, so no error column")
  lines = ["# The paper's placement under every reading", "",
           f"Reference animal {result['reference']}; selection animals "
           f"{', '.join(result['selection_animals']) or '(none)'}; test animals "
           f"{', '.join(result['test_animals'])}. Brain DSC of the placed mask in "
           f"percent (counts pooled per animal, mean over animals){err_note}. "
           f"{len(result['rows'])} readings.", ""]
  lines += ["## Headline", ""] + head
  for key, name in (("default", "default (docs/design.md#readings-the-paper-leaves-open)"),
                    ("chosen_on_selection", "chosen on the selection animals"),
                    ("best_calibrated_on_selection", "best calibrated centre (on selection)"),
                    ("best_on_test_in_hindsight", "best on the test animals (hindsight)")):
    if result.get(key):
      r = result[key]
      lines.append(row({**r, "label": f"{name}: {r['label']}"}))
  ranked = sorted(result["rows"], key=lambda r: -np.nan_to_num(r["selection_brain_dsc"],
                                                                 nan=-1.0))
  lines += ["", f"## Top {top} on the selection animals", ""] + head
  lines += [row(r) for r in ranked[:top]]
  lines += ["", "Centres calibrated on the reference (mean z inside its brain): "
            + ", ".join(f"{c} {z:.2f}" for c, z in result["calibrated_centers"].items()), ""]
  return "\n".join(lines)


def figure(result: Mapping[str, Any], path) -> None:
  """Selection brain DSC against Eq. 1's centre, best width and template per class set."""
  fig, ax = figures.plt.subplots(figsize=(6.5, 4))
  rows = [r for r in result["rows"] if not r["reading"]["calibrated"]]
  for c in CLASS_SETS:
    mine = [r for r in rows if r["reading"]["classes"] == c]
    if not mine:
      continue
    centers = sorted({r["reading"]["center"] for r in mine})
    best = [max(np.nan_to_num(r["selection_brain_dsc"], nan=0.0) for r in mine
                if r["reading"]["center"] == ce) for ce in centers]
    ax.plot(centers, best, marker="o", label=c)
  ax.axvline(2.0, color="gray", ls=":", lw=1)
  ax.set_xlabel("Eq. 1 centre (paper: 2)")
  ax.set_ylabel("brain DSC, selection animals (best width, template)")
  ax.set_ylim(0, 1)
  ax.legend(title="gradient image", fontsize=8)
  ax.set_title("The paper's placement under every reading")
  figures.save_figure(fig, path)


def run(model_dir, out_dir, *, data_dir=None, readings: Sequence[Reading] | None = None,
        log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Opens a model bundle, searches, writes readings.{json,md,png}.

  Args:
    model_dir: the model bundle folder (``<workdir>/model``).
    out_dir: output folder (created).
    data_dir: the dataset the model was trained on (default
      ``<model_dir>/../data``).
    readings: the readings to score (default :func:`grid`).
    log: progress sink.

  Raises:
    CheckpointError, DataError: from ``context.load_context`` and
      :func:`prepare`.
  """

  ctx = context.load_context(model_dir, data_dir)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  log(f"saliency of {len(ctx.volumes)} animals (raw slices) and of the reference")
  inputs = prepare(ctx.volumes, ctx.split["test"], bundle=ctx.bundle)
  result = search(inputs, grid() if readings is None else readings, log=log)
  result = {"checkpoint": str(model_dir), "data_dir": str(ctx.data_dir),
            "provenance": report.provenance(ctx.config.seed), **result}
  fileio.write_json(out / "readings.json", result)  # NaN -> null
  fileio.atomic_write_text(out / "readings.md", markdown(result))
  figure(result, out / "readings.png")
  log(markdown(result))
  return result


# --- pooling folds -------------------------------------------------------------------

#: Columns of the pooled table: the default reading, the reading chosen on each
#: fold's own selection animals, and the one-reference ceiling beside them.
POOLED = ("default", "chosen", "ceiling")


def pool(results: Sequence[Mapping[str, Any]], ceilings: Mapping[str, float], *,
         margin: float = 0.02) -> dict[str, Any]:
  """Pools several folds' readings searches over their test animals.

  Args:
    results: one :func:`run` result (``readings.json``) per fold; no animal may
      be a test animal twice.
    ceilings: brain DSC of the paper's reference mask at its best shift per
      animal (``gbp_ceiling_brain_dsc`` of the folds' ``per_animal.csv``); it
      must cover every pooled animal.
    margin: a fold's placement counts as near its ceiling when its mean test
      brain DSC is at least the ceiling's minus this.

  Returns:
    ``per_animal`` {animal: {column: DSC, "fold": k}}, ``fold_means``,
    ``chosen_readings`` (the label chosen per fold), ``mean``/``sd`` over the
    fold means, ``gap`` (ceiling minus chosen, mean over folds),
    ``folds_within_margin`` and ``animals``.

  Raises:
    DataError: an animal in two folds' test parts, or without a ceiling.
  """
  per: dict[str, dict[str, Any]] = {}
  folds, labels = [], []
  for k, res in enumerate(results):
    chosen = res.get("chosen_on_selection")
    if not chosen:
      raise DataError(f"fold {k}: no reading was chosen (no selection animals)")
    rows = {}
    for a in res["test_animals"]:
      if a in per or a in rows:
        raise DataError(f"animal {a} is a test animal of two pooled folds")
      if a not in ceilings:
        raise DataError(f"animal {a} (fold {k}) has no gbp_ceiling brain DSC to pool beside it")
      rows[a] = {"default": float(res["default"]["per_animal_brain_dsc"][a]),
                 "chosen": float(chosen["per_animal_brain_dsc"][a]),
                 "ceiling": float(ceilings[a]), "fold": k}
    per.update(rows)
    folds.append(rows)
    labels.append(chosen["label"])
  stats = pooling.fold_statistics(folds, POOLED)
  fold_means, mean = stats["fold_means"], stats["mean"]
  return {"columns": list(POOLED), "animals": sorted(per), "per_animal": per,
          "fold_means": fold_means, "chosen_readings": labels, "mean": mean,
          "sd": stats["sd"], "margin": margin,
          "gap": {c: mean["ceiling"] - mean[c] for c in ("default", "chosen")},
          "folds_within_margin": {
              c: int(sum(f[c] >= f["ceiling"] - margin for f in fold_means))
              for c in ("default", "chosen")}}


def pool_markdown(pooled: Mapping[str, Any], sources: Sequence[str]) -> str:
  """``readings_pooled.md``: per fold, mean +- sd over folds, per animal."""
  cols = pooled["columns"]
  m = pooled["margin"]
  lines = ["# The paper's placement, reading chosen per fold, pooled over folds", "",
           "Searches: " + ", ".join(f"`{s}`" for s in sources) + ". `default`: the default (docs/design.md#readings-the-paper-leaves-open) "
           "reading (tissue classes, centre 2, width 0.5, template gradient, one displacement "
           "per slice); `chosen`: the "
           "reading ranked first on the fold's own selection animals (its training and "
           "validation animals but the reference), scored on its test animals; `ceiling`: "
           "the reference mask at its best shift (`gbp_ceiling`). Brain DSC, per animal "
           "pooled over its slices, a fold's value the mean over its test animals.", "",
           "| fold | chosen reading | " + " | ".join(cols) + " |",
           "|---|---|" + "---|" * len(cols)]
  for k, (f, lab) in enumerate(zip(pooled["fold_means"], pooled["chosen_readings"])):
    lines.append(f"| {k} | {lab} | " + " | ".join(f"{f[c]:.4f}" for c in cols) + " |")
  lines.append("| mean +- sd over folds | | " + pooling.mean_sd_cells(pooled, cols) + " |")
  n = len(pooled["fold_means"])
  lines += ["", f"Ceiling minus placement (mean over folds): default "
            f"{pooled['gap']['default']:.4f}, chosen {pooled['gap']['chosen']:.4f}. Folds "
            f"within {m:g} of their ceiling: default {pooled['folds_within_margin']['default']}"
            f" of {n}, chosen {pooled['folds_within_margin']['chosen']} of {n}.", "",
            *pooling.animal_table(pooled, cols)]
  return "\n".join(lines) + "\n"


def pool_files(result_paths: Sequence, ceiling_csvs: Sequence, out_dir, *,
               log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Reads ``readings.json`` files (or their folders) and the ceilings from
  ``per_animal.csv`` files (column ``gbp_ceiling_brain_dsc``), pools them and
  writes ``readings_pooled.json`` and ``readings_pooled.md`` to ``out_dir``.

  Raises:
    DataError: a search or CSV missing or without the needed columns.
  """
  results, sources = pooling.read_reports(result_paths, "readings.json")
  ceilings: dict[str, float] = {}
  for p in ceiling_csvs:
    path = pathlib.Path(p)
    if not path.is_file():
      raise DataError(f"{path}: no per_animal.csv with the ceilings")
    ceilings.update(pooling.animal_column(path, "gbp_ceiling_brain_dsc"))
  pooled = pool(results, ceilings) | {"searches": sources,
                                      "ceiling_csvs": [str(p) for p in ceiling_csvs]}
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fileio.write_json(out / "readings_pooled.json", pooled)
  fileio.atomic_write_text(out / "readings_pooled.md", pool_markdown(pooled, sources))
  log(f"readings: pooled {len(results)} folds ({len(pooled['animals'])} test animals) "
      f"into {out}")
  return pooled
