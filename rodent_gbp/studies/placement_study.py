"""Placement study (issue 9, item 6): robustness, saliency sanity check, k-fold CV.

Not part of the main job (``experiments/placement_study.py`` runs it). Three parts,
each on the test animals of a model bundle (``<workdir>/model`` of the main job,
``rodent_gbp.bundle.load_bundle``):

1. ``robustness``: brain DSC and placement error of the improved placement
   (GBP locates, intensity chooses; :data:`placement.IMPROVED`), of GBP alone
   (``choice="none"``) and of the plain-intensity baseline
   (:data:`placement.INTENSITY`), against
   * the size of an extra in-plane displacement (test slices re-shifted with
     zero fill, along two diagonals, 0..16 pixels; the recorded truth moves
     with them), and
   * artifact strength: the non-brain part of each slice scaled by ``alpha``
     (0: a skull-stripped slice, 1: as acquired, > 1: stronger surroundings).
2. ``cascade``: the saliency sanity check of Adebayo et al. (2018). The
   params are re-initialised layer by layer from the output down; at each
   depth the GBP gradient images of the test slices are compared with the
   trained network's (Spearman rank correlation per slice, mean) and the
   improved placement is rerun with the randomised network (its locating
   template, the reference's raw-slice appearance, is recomputed with it;
   the layer order, the randomised params and the recomputed bundle are
   ``studies.common.randomise``'s).
3. ``cross_validation``: k folds over animals. Fold i's test animals are the
   test split of ``data.split_animals(ids, seed_i)``, seeds chosen so the test
   sets are disjoint (a k-fold partition when k * test size = N); each fold
   runs the main job (``job.run``, training included) and the
   tables are summarised by mean and standard deviation over folds.

Everything is written to ``out_dir`` (``rodent_gbp.fileio``, atomically):
``placement_study.json``, ``placement_ablation.md`` and PNG figures.

``load_context`` (``studies.common.context``, imported here) is the studies'
one way to open a model folder and its dataset.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rodent_gbp import bank as bank_lib
from rodent_gbp import correlate
from rodent_gbp import evaluators
from rodent_gbp import fileio
from rodent_gbp import placement
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp import improved
from rodent_gbp.studies.common.context import Context, floats, load_context  # noqa: F401
from rodent_gbp.studies.common.randomise import (fresh_params, layers_from_top,
                                                 randomised_params, spearman_rows, with_params)
from rodent_gbp.figures import save_figure
from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import job
from rodent_gbp import phantom
from rodent_gbp import pipeline

_LOG = logging.getLogger(__name__)

#: Methods of the robustness curves: name -> changes from ``placement.IMPROVED``.
METHODS = {
    "gbp_improved": {},
    "gbp_only": {"choice": "none"},
    "intensity": {"signal": placement.INTENSITY.signal,
                  "template": placement.INTENSITY.template,
                  "margin": placement.INTENSITY.margin},
}


# --------------------------------------------------------------------------
# Perturbed test volumes.
# --------------------------------------------------------------------------


def shifted_volume(volume, shift: Sequence[int]):
  """The volume re-acquired ``shift`` (dy, dx) pixels further.

  Image, labels and brain mask are moved with zero fill
  (``correlate.shift_image``, dtypes kept); the recorded displacement moves
  with them.
  """
  d = np.asarray(shift, np.int32)

  def move(x):
    return None if x is None else np.asarray(correlate.shift_image(x, d))

  meta = dict(volume.meta)
  if meta.get("displacement_hw") is not None:
    meta["displacement_hw"] = [float(a) + float(b) for a, b in zip(meta["displacement_hw"], d)]
  return dataclasses.replace(volume, image=move(volume.image), meta=meta,
                             label=move(volume.label), brainmask=move(volume.brainmask))


def artifact_volume(volume, alpha: float):
  """The volume with its non-brain part scaled by ``alpha`` (1: unchanged).

  Raises:
    DataError: the volume has no brain mask.
  """
  if volume.brainmask is None:
    raise DataError(f"animal {volume.animal_id}: scaling the non-brain part needs a brain mask")
  m = volume.brainmask.astype(np.float32)
  image = (volume.image * m + alpha * volume.image * (1.0 - m)).astype(np.float32)
  return dataclasses.replace(volume, image=image)


def diagonal_shifts(size: float) -> list[tuple[int, int]]:
  """Two displacements of length ~``size`` along the two diagonals."""
  a = int(round(size / np.sqrt(2.0)))
  return [(a, a), (a, -a)] if a else [(0, 0)]


# --------------------------------------------------------------------------
# Placement of a set of volumes under some bundle.
# --------------------------------------------------------------------------


def true_shifts(volume, bundle) -> np.ndarray:
  """(A, 2) displacement that puts each aligned bank animal's mask on ``volume``'s brain."""
  return evaluators.true_displacements(
      bank_lib.recorded_displacement(volume), bundle.bank.displacements,
      placement.candidate_bank(bundle).masks().to_reference)


def place_all(volumes: Sequence, *, bundle, methods: Mapping[str, Mapping[str, Any]] = METHODS,
              gradients: Sequence[np.ndarray] | None = None) -> dict[str, dict[str, float]]:
  """Brain DSC and mean placement error of each method, mean over ``volumes``.

  Args:
    volumes: ``data.Volume`` with brain masks (and recorded displacements for
      the error; NaN without).
    bundle: the model bundle whose network and bank place the masks.
    methods: name -> changes from :data:`placement.IMPROVED`.
    gradients: one (S, H, W) guided gradient image per volume (skips the
      saliency pass when given).
  """
  per: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
  for i, v in enumerate(volumes):
    g = None if gradients is None else gradients[i]
    truth = true_shifts(v, bundle)
    for name, changes in methods.items():
      o = dataclasses.replace(placement.IMPROVED, **changes)
      pl = placement.place_search(v.image, bundle=bundle, options=o, gradient=g)
      per[name].append(improved.placement_quality(pl, v, truth))
  return {m: {"brain_dsc": float(np.mean([x[0] for x in r])),
              "mean_abs_error_px": float(np.nanmean([x[1] for x in r]))
              if np.isfinite([x[1] for x in r]).any() else float("nan")}
          for m, r in per.items()}


def robustness(ctx: Context, *, shifts: Sequence[float] = (0, 2, 4, 8, 12, 16),
               alphas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 3.0),
               log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Placement quality against extra displacement and artifact strength."""
  out: dict[str, Any] = {"displacement": [], "artifact": []}
  for size in shifts:
    rows = [place_all([shifted_volume(v, d) for v in ctx.test], bundle=ctx.bundle)
            for d in diagonal_shifts(size)]
    row = {m: {k: float(np.mean([r[m][k] for r in rows])) for k in rows[0][m]}
           for m in rows[0]}
    out["displacement"].append({"size_px": float(size), "shifts": diagonal_shifts(size), **row})
    log(f"displacement +{size:g} px: " + ", ".join(
        f"{m} {row[m]['brain_dsc']:.4f}" for m in row))
  for alpha in alphas:
    row = place_all([artifact_volume(v, alpha) for v in ctx.test], bundle=ctx.bundle)
    out["artifact"].append({"alpha": float(alpha), **row})
    log(f"artifact x{alpha:g}: " + ", ".join(f"{m} {row[m]['brain_dsc']:.4f}" for m in row))
  return out


# --------------------------------------------------------------------------
# Cascading randomisation (saliency sanity check).
# --------------------------------------------------------------------------


def gradient_images(volumes: Sequence, *, bundle) -> list[np.ndarray]:
  """(S, H, W) guided gradient image of each volume's raw slices (the raw pass's)."""
  return [pipeline.raw_pass(v.image, bundle=bundle)["gradient"] for v in volumes]


def cascade(ctx: Context, *, steps: int = 0, seed: int = 0,
            log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Layer-by-layer randomisation from the top; ``steps`` > 0 evaluates that
  many depths (0 and all layers included), 0 every depth."""
  net = ctx.bundle.network("tissue")
  order = layers_from_top(net.params)
  fresh = fresh_params(net.model, ctx.bundle.slice_shape, seed)
  depths = list(range(len(order) + 1))
  if steps and steps < len(depths):
    depths = sorted({int(round(x)) for x in np.linspace(0, len(order), steps)})
  trained = gradient_images(ctx.test, bundle=ctx.bundle)
  methods = {m: METHODS[m] for m in ("gbp_improved", "gbp_only")}
  rows = []
  for k in depths:
    b = ctx.bundle if k == 0 else with_params(
        ctx.bundle, randomised_params(net.params, fresh, order[:k]), ctx.volumes)
    g = trained if k == 0 else gradient_images(ctx.test, bundle=b)
    rho = np.concatenate([spearman_rows(a, t) for a, t in zip(g, trained)])
    quality = place_all(ctx.test, bundle=b, methods=methods, gradients=g)
    rows.append({"layers_randomised": k, "top_layer": order[k - 1] if k else None,
                 "spearman_mean": float(np.nanmean(rho)),
                 "spearman_min": float(np.nanmin(rho)), **quality})
    log(f"randomised {k} layers ({rows[-1]['top_layer']}): Spearman "
        f"{rows[-1]['spearman_mean']:.3f}, improved DSC {quality['gbp_improved']['brain_dsc']:.4f}, "
        f"GBP-only DSC {quality['gbp_only']['brain_dsc']:.4f}")
  return {"order": order, "rows": rows, "seed": seed}


# --------------------------------------------------------------------------
# k-fold cross-validation over animals.
# --------------------------------------------------------------------------


def fold_seeds(animal_ids: Sequence[str], folds: int, *, max_seed: int = 100000
               ) -> list[tuple[int, list[str]]]:
  """``folds`` split seeds whose test sets (``data.split_animals``) are disjoint.

  Greedy over seeds 0, 1, ...: a seed is kept when its test animals are
  all new.

  Raises:
    UsageError: ``folds`` disjoint test sets do not exist.
  """
  ids = sorted(animal_ids)
  if folds < 1:
    raise UsageError(f"folds must be at least 1, got {folds}")
  n_test = len(data.split_animals(ids, 0)["test"])
  if folds * n_test > len(ids):
    raise UsageError(f"{folds} folds of {n_test} test animals need more than {len(ids)} "
                     "animals")
  used: set[str] = set()
  out = []
  for seed in range(max_seed):
    test = data.split_animals(ids, seed)["test"]
    if used.isdisjoint(test):
      used |= set(test)
      out.append((seed, test))
      if len(out) == folds:
        return out
  raise UsageError(f"no {folds} disjoint test sets among seeds < {max_seed}")


def cross_validation(config, data_dir, out_dir, *, folds: int, epochs: int | None = None,
                     log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Trains and evaluates one model per fold (the main job); mean and spread."""

  ids = [v.animal_id for v in data.load_dataset(data_dir)]
  runs = []
  for i, (seed, test) in enumerate(fold_seeds(ids, folds)):
    cfg = configs.override(config, split_seed=seed, epochs=epochs)
    t0 = time.time()
    res = job.run(cfg, pathlib.Path(out_dir) / f"fold{i}", data_dir=data_dir,
                              figures=False, log=lambda s: None)
    runs.append({"fold": i, "split_seed": seed, "test": test, "tables": res["tables"],
                 "brain": res["brain"], "seconds": time.time() - t0})
    log(f"fold {i} (test {test}): brain DSC improved "
        f"{res['brain'].get('gbp_improved', {}).get('dsc', float('nan')):.4f}, "
        f"{time.time() - t0:.0f} s")
  summary: dict[str, Any] = {"tables": {}, "brain": {}}
  for way in runs[0]["tables"]:
    for cls in runs[0]["tables"][way]:
      summary["tables"].setdefault(way, {})[cls] = mean_sd(
          [r["tables"][way][cls]["dsc"] for r in runs])
  for way in runs[0]["brain"]:
    summary["brain"][way] = mean_sd([r["brain"][way]["dsc"] for r in runs])
  return {"folds": runs, "summary_dsc": summary, "epochs": epochs, "config": config.name}


def mean_sd(vals: Sequence[float | None]) -> dict[str, float]:
  """Mean, sample standard deviation and count of the finite values (None: missing)."""
  v = np.asarray([np.nan if x is None else x for x in vals], np.float64)
  ok = v[np.isfinite(v)]
  return {"mean": float(ok.mean()) if ok.size else float("nan"),
          "sd": float(ok.std(ddof=1)) if ok.size > 1 else float("nan"), "n": int(ok.size)}


# --------------------------------------------------------------------------
# Figures and the whole study.
# --------------------------------------------------------------------------


def _figures(out: pathlib.Path, study: Mapping[str, Any]) -> list[str]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []

  def save(fig, name):
    save_figure(fig, out / name)
    written.append(name)

  rob = study.get("robustness")
  if rob:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, xkey, ax, label in (("displacement", "size_px", axes[0], "extra displacement (px)"),
                                 ("artifact", "alpha", axes[1], "non-brain intensity scale")):
      rows = rob[key]
      for m in METHODS:
        ax.plot([r[xkey] for r in rows], [r[m]["brain_dsc"] for r in rows], "o-", label=m)
      ax.set_xlabel(label)
      ax.set_ylabel("brain DSC")
      ax.set_ylim(-0.02, 1.02)
      ax.legend()
    save(fig, "robustness.png")
  cas = study.get("cascade")
  if cas:
    rows = cas["rows"]
    k = [r["layers_randomised"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(k, [r["spearman_mean"] for r in rows], "o-", label="Spearman vs trained maps")
    ax.plot(k, [r["gbp_improved"]["brain_dsc"] for r in rows], "s-", label="improved brain DSC")
    ax.plot(k, [r["gbp_only"]["brain_dsc"] for r in rows], "^-", label="GBP-only brain DSC")
    ax.set_xlabel("layers randomised from the top")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    save(fig, "cascade.png")
  cv = study.get("cross_validation")
  if cv:
    tables = cv["summary_dsc"]["tables"]
    ways = list(tables)
    classes = list(tables[ways[0]])
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(ways)
    for i, way in enumerate(ways):
      ax.bar(np.arange(len(classes)) + i * width, [tables[way][c]["mean"] for c in classes],
             width, yerr=[np.nan_to_num(tables[way][c]["sd"]) for c in classes], label=way)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2)
    ax.set_xticklabels(classes)
    ax.set_ylabel(f"DSC, mean +- sd over {len(cv['folds'])} folds")
    ax.legend()
    save(fig, "cross_validation.png")
  return written


def run_study(out_dir, *, model_dir=None, data_dir=None, config=None,
              shifts: Sequence[float] = (0, 2, 4, 8, 12, 16),
              alphas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 3.0),
              cascade_steps: int = 0, folds: int = 0, epochs: int | None = None,
              ablation: bool = True,
              max_test_animals: int | None = None, seed: int = 0,
              log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """The whole study; writes ``placement_study.json`` and figures to ``out_dir``.

  Args:
    out_dir: output folder (created).
    model_dir: a model bundle folder (``<workdir>/model`` of the main job);
      None runs the main job with ``config`` (``epochs``) into
      ``<out_dir>/main`` first and uses its ``<out_dir>/main/model``.
    data_dir: dataset folder; None: ``<model_dir>/../data`` for a given
      bundle, else the phantom written into ``<out_dir>/data``.
    config: ``configs.Config`` for training (default ``default``).
    shifts, alphas: robustness grid, numbers or their text (empty: skip
      that curve).
    cascade_steps: depths of the randomisation cascade (0: every layer;
      negative: skip).
    folds: k of the cross-validation (0: skip).
    ablation: the full ablation table (``improved.ABLATION``, with the
      vanilla-gradient and deconvnet rows the main job leaves out).
    max_test_animals: use only the first test animals (quick runs).
    seed: seed of the randomised params of the cascade.
    log: progress sink.

  Raises:
    UsageError: a shift or alpha that is not a number, negative folds.
    CheckpointError, DataError: from :func:`load_context`.
  """

  shifts = floats(shifts, "shifts")
  alphas = floats(alphas, "alphas")
  if folds < 0:
    raise UsageError(f"folds must be 0 (skip) or more, got {folds}")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  config = configs.get_config("default") if config is None else config
  if epochs is not None:
    config = configs.override(config, epochs=epochs)
  timing: dict[str, float] = {}
  if model_dir is None:
    if data_dir is None:
      data_dir = out / "data"
      if not phantom.is_complete(data_dir):
        phantom.write_phantom(data_dir, animals=config.animals, seed=config.phantom_seed,
                              size=config.image_size, kind=config.phantom)
    t0 = time.time()
    job.run(config, out / "main", data_dir=data_dir, figures=False,
                        log=lambda s: None)
    model_dir = out / "main" / "model"
    timing["train_s"] = time.time() - t0
  ctx = load_context(model_dir, data_dir, max_test_animals=max_test_animals)
  study: dict[str, Any] = {"options": placement.IMPROVED.to_dict(), "methods": METHODS,
                           "checkpoint": str(model_dir), "data_dir": str(ctx.data_dir),
                           "test_animals": ctx.split["test"]}
  if shifts or alphas:
    t0 = time.time()
    study["robustness"] = robustness(ctx, shifts=shifts, alphas=alphas, log=log)
    timing["robustness_s"] = time.time() - t0
  if ablation:
    t0 = time.time()
    gradients = dict(zip(ctx.split["test"], gradient_images(ctx.test, bundle=ctx.bundle)))
    study["ablation"] = improved.ablation(ctx.test, bundle=ctx.bundle, gradients=gradients,
                                          rows=improved.ABLATION, log=lambda s: None)
    fileio.atomic_write_text(out / "placement_ablation.md", improved.ablation_markdown(
        study["ablation"], animals=ctx.split["test"]))
    timing["ablation_s"] = time.time() - t0
  if cascade_steps >= 0:
    t0 = time.time()
    study["cascade"] = cascade(ctx, steps=cascade_steps, seed=seed, log=log)
    timing["cascade_s"] = time.time() - t0
  if folds:
    t0 = time.time()
    study["cross_validation"] = cross_validation(config, ctx.data_dir, out / "folds",
                                                 folds=folds, epochs=epochs, log=log)
    timing["cross_validation_s"] = time.time() - t0
  study["timing"] = timing
  study["figures"] = _figures(out, study)
  fileio.write_json(out / "placement_study.json", study)
  log(f"wrote placement_study.json and {len(study['figures'])} figures to {out} "
      f"({', '.join(f'{k} {v:.0f}' for k, v in timing.items())})")
  return study
