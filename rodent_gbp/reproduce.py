"""The main job: the paper's experiment end to end (``experiments/reproduce.py``).

data (phantom unless given) -> train (unless a checkpoint is given) -> template
bank -> for each test animal: segment without removal, with manual removal
(true brain mask) and with GBP removal -> metrics pooled per animal, averaged
over animals -> ``results.json``, ``tables.md``, ``per_slice.csv``, NIfTI
outputs, figures.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Callable

import nibabel as nib
import numpy as np

from rodent_gbp import configs as configs_lib
from rodent_gbp import metrics
from rodent_gbp import parallel
from rodent_gbp import pipeline
from rodent_gbp import placement
from rodent_gbp import report


def _slice_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-slice Dice of boolean stacks (S, H, W); NaN where both are empty."""
  inter = (a & b).reshape(len(a), -1).sum(-1)
  total = a.reshape(len(a), -1).sum(-1) + b.reshape(len(b), -1).sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)


def summarise(evals: list[dict[str, Any]]) -> dict[str, Any]:
  """Tables, brain rows, placement and per-animal metrics from evaluations."""
  tables = {way: metrics.class_table([e["counts"][way] for e in evals])
            for way in ("none", "manual", "gbp")}
  brain = {key: metrics.binary_row([e["brain_counts"][key] for e in evals])
           for key in evals[0]["brain_counts"]}
  per_slice, errors = [], []
  for e in evals:
    true = e["true_displacement"]
    err = np.abs(e["displacement"] - true)
    has_brain = e["placed"].reshape(len(err), -1).any(-1) | (e["ceiling_dice"] > 0)
    for s in range(len(err)):
      row = {"animal": e["animal_id"], "slice": s,
             "dy": int(e["displacement"][s, 0]), "dx": int(e["displacement"][s, 1]),
             "true_dy": true[s, 0], "true_dx": true[s, 1],
             "abs_error_px": float(err[s].mean()),
             "brain_dice": float(e["slice_brain_dice"][s]),
             "ceiling_dice": float(e["ceiling_dice"][s])}
      per_slice.append(row)
      if has_brain[s] and np.all(np.isfinite(err[s])):
        errors.append(err[s].mean())
  placement = {
      "mean_abs_error_px": float(np.mean(errors)) if errors else float("nan"),
      "definition": "mean over slices with brain of |estimated - true| displacement, "
                    "averaged over the two in-plane axes; truth = test minus reference "
                    "displacement recorded in meta.json",
      "per_slice": per_slice,
  }
  per_animal = {
      e["animal_id"]: {
          way: {k: metrics.metrics_from_counts(np.asarray(e["counts"][way])[c])
                for c, k in report.CLASS_KEYS.items()}
          for way in ("none", "manual", "gbp")
      } | {"brain": {k: metrics.metrics_from_counts(np.asarray(v))
                     for k, v in e["brain_counts"].items()}}
      for e in evals
  }
  return {"tables": tables, "brain": brain, "placement": placement, "per_animal": per_animal}


def lognormal_verdict(evals: list[dict[str, Any]], *, seed: int,
                      max_samples: int = 20000) -> dict[str, Any]:
  """Pooled log-normal test of the test slices' gradient images (a subsample).

  Zero-gradient pixels are counted and excluded; the full study with per-slice
  verdicts and a random-network control is ``experiments/lognormal.py``.
  """
  from rodent_gbp import lognormal
  g = np.concatenate([np.asarray(e["gradient"]).ravel() for e in evals])
  fit = lognormal.fit_families(g, zeros="exclude", max_samples=max_samples, seed=seed)
  return {
      "winner": fit["winner"],
      "runner_up": fit["runner_up"],
      "aic_margin": fit["aic_margin"],
      "aic": {f: r["aic"] for f, r in fit["families"].items()},
      "ks": {f: r["ks"] for f, r in fit["families"].items()},
      "anderson_log_statistic": fit["anderson_log"]["statistic"],
      "n_pixels": int(g.size),
      "n_zero": int(fit["n_zero"]),
      "n_fitted": int(fit["n_fitted"]),
  }


def _save_nifti(array: np.ndarray, volume, path: pathlib.Path) -> None:
  from rodent_gbp import data
  img = data.to_nifti(array, volume)
  tmp = path.with_name(f".{path.name}.tmp.nii.gz")
  nib.save(img, tmp)
  tmp.replace(path)


def reproduce(config: configs_lib.Config, workdir, *, data_dir=None, checkpoint=None,
              seed: int | None = None, figures: bool = True,
              log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the paper's experiment; returns the ``results.json`` content.

  Args:
    config: the run's configuration (``configs.get_config``).
    workdir: output folder (created).
    data_dir: a dataset folder (``<animal>/image.nii.gz``, ...); None writes
      the phantom into ``<workdir>/data``.
    checkpoint: a trained model folder (``<workdir>/checkpoints`` of an earlier
      run); None trains one into ``<workdir>/checkpoints``.
    seed: overrides ``config.seed`` (init, data order) when given.
    figures: write the paper's figures (PNG).
    log: progress sink.
  """
  from rodent_gbp import checkpoint as checkpoint_lib
  from rodent_gbp import data
  from rodent_gbp import model as model_lib
  from rodent_gbp import phantom
  from rodent_gbp import train

  t_start = time.time()
  timing: dict[str, float] = {}
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if seed is not None:
    config = configs_lib.override(config, seed=seed)

  if data_dir is None:
    data_dir = workdir / "data"
    if not (data_dir.exists() and any(data_dir.iterdir())) and parallel.is_lead():
      log(f"writing the synthetic phantom ({config.animals} animals) to {data_dir}")
      phantom.write_phantom(data_dir, animals=config.animals, seed=config.phantom_seed,
                            size=config.image_size)
    parallel.barrier("rodent_gbp:phantom")
  volumes = {v.animal_id: v for v in data.load_dataset(data_dir)}
  timing["data_s"] = time.time() - t_start

  t0 = time.time()
  if checkpoint is None:
    result = train.train_and_evaluate(config, workdir, data_dir=data_dir, log=log)
    params, split, ckpt_dir = result.params, result.split, pathlib.Path(result.checkpoint_dir)
    history = result.history
  else:
    ckpt_dir = pathlib.Path(checkpoint)
    loaded = checkpoint_lib.load_model(ckpt_dir)
    params = loaded.params
    config = configs_lib.override(loaded.config, seed=config.seed)
    split_file = ckpt_dir / "split.json"
    split = (json.loads(split_file.read_text()) if split_file.exists()
             else data.split_animals(sorted(volumes), config.split_seed))
    meta = checkpoint_lib.read_meta(ckpt_dir, "latest") or loaded.extras.get("meta") or {}
    history = meta.get("history", [])
  timing["train_s"] = time.time() - t0
  missing = [a for a in split["train"] + split["test"] if a not in volumes]
  if missing:
    raise ValueError(f"{data_dir}: animals {missing} of the checkpoint's split are missing")

  model = model_lib.build_unet(config)
  options = pipeline.PlacementOptions.from_config(config)
  t0 = time.time()
  bank = pipeline.build_template_bank(model, params, [volumes[a] for a in split["train"]],
                                      options=options, batch_size=config.eval_batch_size)
  # What rodent-gbp-segment's improved placement needs besides the bank: the
  # reference's raw-slice GBP appearance (one saliency pass over its slices).
  appearance, available = placement.bank_appearance(model, params, bank, volumes,
                                                     batch_size=config.eval_batch_size)
  if parallel.is_lead():  # one writer in multi-host runs
    bank.save(ckpt_dir / "templates.npz")
    placement.save_appearance(ckpt_dir / "templates.npz", appearance, available)
  log(f"template bank: {len(bank.animal_ids)} training animals, reference "
      f"{bank.animal_ids[bank.reference]} (median brain volume)")
  timing["template_bank_s"] = time.time() - t0

  t0 = time.time()
  evals = []
  for a in split["test"]:
    e = pipeline.evaluate_volume(model, params, volumes[a], bank, options=options,
                                 batch_size=config.eval_batch_size,
                                 num_classes=config.num_classes)
    e["slice_brain_dice"] = _slice_dice(e["placed"], volumes[a].brainmask)
    evals.append(e)
    log(f"evaluated test animal {a}")
  timing["evaluate_s"] = time.time() - t0

  results: dict[str, Any] = {"config": config.to_dict(),
                             "provenance": report.provenance(config.seed),
                             "split": split,
                             "reference_animal": bank.animal_ids[bank.reference],
                             "training": train.training_summary(history, config)}
  results |= summarise(evals)
  t0 = time.time()
  results["lognormal"] = lognormal_verdict(evals, seed=config.seed)
  timing["lognormal_s"] = time.time() - t0
  t0 = time.time()
  placement.add_to_results(results, model, params, bank, volumes, evals, workdir=workdir,
                           batch_size=config.eval_batch_size,
                           num_classes=config.num_classes,
                           appearance=(appearance, available), log=log)
  timing["improved_placement_s"] = time.time() - t0
  timing["total_s"] = time.time() - t_start
  results["timing"] = timing | results.get("timing", {})

  if not parallel.is_lead():  # every process computed; process 0 writes
    return results
  _write_outputs(workdir, results, evals, volumes, figures=figures, log=log)
  if figures:
    t0 = time.time()
    _write_figures(workdir / "figures", evals, volumes, model, params, config)
    log(f"wrote figures to {workdir / 'figures'} ({time.time() - t0:.1f} s)")
  log(report.tables_markdown(results))
  return results


def _write_figures(out: pathlib.Path, evals, volumes, model, params, config) -> None:
  """The paper's Figs. 2-8 for the first test animal's slices."""
  import jax
  import jax.numpy as jnp
  from rodent_gbp import correlate
  from rodent_gbp import enhance
  from rodent_gbp import figures
  from rodent_gbp import guided

  out.mkdir(parents=True, exist_ok=True)
  e = evals[0]
  v = volumes[e["animal_id"]]
  brain_area = v.brainmask.reshape(len(v.brainmask), -1).sum(-1)
  s = int(np.argmax(brain_area))  # the widest brain cross-section
  raw = v.image[s]
  stripped = raw * v.brainmask[s]
  x = jnp.asarray(np.stack([stripped, raw])[..., None], jnp.float32)
  probs = np.asarray(jax.nn.softmax(model.apply({"params": params}, x), axis=-1))
  figures.fig2_outputs(out / "fig2_outputs.png", stripped, probs[0])
  shift = (0, 8)
  shifted = np.asarray(correlate.shift_image(jnp.asarray(stripped), jnp.asarray(shift)))
  maps = np.asarray(guided.saliency(model, params, jnp.asarray(
      np.stack([stripped, shifted])[..., None], jnp.float32), target="all"))
  figures.fig3_translation(out / "fig3_translation.png", stripped, shifted, maps[0], maps[1],
                           shift)
  figures.fig4_noisy(out / "fig4_no_removal.png", raw, e["labels"]["none"][s],
                     e["labels"]["manual"][s], v.label[s])
  steps = {k: np.asarray(a) for k, a in enhance.enhancement_steps(
      jnp.asarray(e["gradient"][s]), center=config.enhance_center,
      width=config.enhance_width).items()}
  figures.fig5_histograms(out / "fig5_histograms.png", steps)
  figures.fig6_enhanced(out / "fig6_enhanced.png", e["gradient"][s], e["signal"][s])
  figures.fig7_alignment(out / "fig7_alignment.png", e["template"][s], e["signal"][s],
                         e["correlation"][s], raw, raw * e["placed"][s])
  # Fig. 8: the slice with brain where GBP removal hurts CSF most.
  csf_true = v.label == 3
  csf_gbp = e["labels"]["gbp"] == 3
  inter = (csf_true & csf_gbp).reshape(len(v.label), -1).sum(-1)
  total = csf_true.reshape(len(v.label), -1).sum(-1) + csf_gbp.reshape(len(v.label), -1).sum(-1)
  dice = np.where(total > 20, 2 * inter / np.maximum(total, 1), np.inf)
  s8 = int(np.argmin(dice))
  figures.fig8_panel(out / "fig8_csf.png", v.image[s8], v.image[s8] * v.brainmask[s8],
                     v.image[s8] * e["placed"][s8], v.label[s8], e["labels"]["gbp"][s8])
  per = [r for ev in evals for r in _per_slice_rows(ev)]
  figures.placement_overview(out / "placement.png", [r[0] for r in per], [r[1] for r in per],
                             [r[2] for r in per])


def _per_slice_rows(e):
  err = np.abs(e["displacement"] - e["true_displacement"]).mean(-1)
  return list(zip(e["slice_brain_dice"], e["ceiling_dice"], err))


def _write_outputs(workdir: pathlib.Path, results, evals, volumes, *, figures: bool, log) -> None:
  report.write_json(workdir / "results.json", results)
  report.atomic_write_text(workdir / "tables.md", report.tables_markdown(results))
  report.write_csv(workdir / "per_slice.csv", results["placement"]["per_slice"])
  out = workdir / "predictions"
  out.mkdir(exist_ok=True)
  for e in evals:
    v = volumes[e["animal_id"]]
    _save_nifti(e["labels"]["gbp"].astype(np.uint8), v, out / f"{e['animal_id']}_labels_gbp.nii.gz")
    _save_nifti(e["labels"]["manual"].astype(np.uint8), v,
                out / f"{e['animal_id']}_labels_manual.nii.gz")
    _save_nifti(e["placed"].astype(np.uint8), v, out / f"{e['animal_id']}_brainmask_gbp.nii.gz")
  log(f"wrote results.json, tables.md, per_slice.csv and predictions/ to {workdir}")
