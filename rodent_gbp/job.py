"""The main job: the paper's experiment end to end (``experiments/reproduce.py``).

data (phantom unless given) -> train (unless a checkpoint is given) -> model
bundle (params, normalisation, template bank) in ``<workdir>/model`` -> for
each test animal: segment without removal, with manual removal (true brain
mask) and with each placer's removal -> metrics pooled per animal, averaged
over animals -> ``results.json``, ``tables.md``, ``per_slice.csv``,
``placement.md``, NIfTI outputs of every placer, figures.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any, Callable

import numpy as np

from rodent_gbp import bank as bank_lib
from rodent_gbp import bundle as bundle_lib
from rodent_gbp import configs as configs_lib
from rodent_gbp import fileio
from rodent_gbp import metrics
from rodent_gbp import parallel
from rodent_gbp import placement as placement_lib
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp import evaluation
from rodent_gbp import improved
from rodent_gbp import report

#: Table rows of results.json: no removal, manual removal, then each placer.
WAYS = ("none", "manual") + evaluation.PLACERS

SKULL_STRIPPED_NOTE = (
    "the images are skull-stripped (zero outside the brain): there is no background to "
    "remove, so Table 1, the placement rows, the brain mask rows and the placement "
    "ablation are absent; the manual-removal table (Table 2), the no-removal table (the "
    "stripped image as it is) and the saliency figures apply")


BASELINES = ("all_gm", "mixture")


def baseline_counts(volume, *, mixture: bool, num_classes: int = 4
                    ) -> dict[str, np.ndarray]:
  """Confusion counts (C, 4) of what a tissue number means without a network,
  both inside the true brain mask: ``all_gm`` calls every brain voxel gray
  matter; ``mixture`` (when asked: not on a set whose labels come from that
  same mixture) is the bias-corrected 3-class mixture of ``datasets.pseudo_labels``.
  """
  truth = volume.label.astype(np.int32)
  out = {"all_gm": np.where(volume.brainmask, 2, 0).astype(np.int32)}
  if mixture:
    from rodent_gbp import data
    from rodent_gbp.datasets import pseudo_labels
    spacing = data.voxel_sizes_ras(volume.affine)[list(data.plane_axes(volume.plane))]
    out["mixture"] = pseudo_labels.tissue_pseudo_labels(
        volume.image, volume.brainmask, spacing=spacing)[0].astype(np.int32)
  return {k: np.asarray(metrics.confusion_counts(v, truth, num_classes))
          for k, v in out.items()}


def has_displacement_truth(evals: list[dict[str, Any]]) -> bool:
  """Whether the test animals record their acquisition displacement (the phantom does)."""
  return bool(evals) and all(
      "true_displacement" in e and np.all(np.isfinite(e["true_displacement"])) for e in evals)


def _per_slice_rows(evals: list[dict[str, Any]], bank) -> list[dict[str, Any]]:
  """One row per test slice: each placer's displacement, confidence and Dice
  (with displacement truth also the true displacement and the error)."""
  rows = []
  truth = has_displacement_truth(evals)
  for e in evals:
    gbp = e["placements"]["gbp"]
    err = evaluation.placement_error(e, "gbp")
    for s in range(len(err)):
      row = {"animal": e["animal_id"], "slice": s,
             "dy": int(gbp.displacement[s, 0]), "dx": int(gbp.displacement[s, 1])}
      if truth:
        row |= {"true_dy": e["true_displacement"][s, 0],
                "true_dx": e["true_displacement"][s, 1], "abs_error_px": float(err[s])}
      row |= {"confidence_psr": float(gbp.confidence[s]),
              "brain_dice": float(e["slice_dice"]["gbp"][s]),
              "ceiling_dice": float(e["ceiling_dice"][s])}
      for name in evaluation.SEARCH_PLACERS:
        if name not in e["placements"]:
          continue
        pl = e["placements"][name]
        row |= {f"{name}_dy": int(pl.displacement[s, 0]),
                f"{name}_dx": int(pl.displacement[s, 1])}
        if truth:
          true = np.asarray(e["true_shifts"])[pl.details["template_animal"][s]]
          row |= {f"{name}_true_dy": true[0], f"{name}_true_dx": true[1],
                  f"{name}_abs_error_px": float(evaluation.placement_error(e, name)[s])}
        row |= {f"{name}_confidence_psr": float(pl.confidence[s]),
                f"{name}_template_animal": bank.animal_ids[int(pl.details["template_animal"][s])],
                f"{name}_slice_offset": int(pl.details["slice_offset"][s]),
                f"{name}_scale": float(pl.details["scale"][s]),
                f"{name}_brain_dice": float(e["slice_dice"][name][s])}
      if "oracle_dice" in e:
        row["oracle_dice"] = float(e["oracle_dice"][s])
      rows.append(row)
  return rows


def summarise(evals: list[dict[str, Any]], bank) -> dict[str, Any]:
  """Tables, brain rows, placement and per-animal metrics from evaluations."""
  ways = [w for w in WAYS + BASELINES if w in evals[0]["counts"]]
  tables = {w: metrics.class_table([e["counts"][w] for e in evals]) for w in ways}
  brain = {k: metrics.binary_row([e["brain_counts"][k] for e in evals])
           for k in evals[0]["brain_counts"] if all(k in e["brain_counts"] for e in evals)}
  out = {"tables": tables, "brain": brain}
  if "gbp" in evals[0]["placements"]:
    out["placement"] = _placement_summary(evals, bank)
  per_animal = {
      e["animal_id"]: {
          w: {k: metrics.metrics_from_counts(np.asarray(e["counts"][w])[c])
              for c, k in metrics.CLASS_NAMES.items()} for w in ways
      } | {"brain": {k: metrics.metrics_from_counts(np.asarray(v))
                     for k, v in e["brain_counts"].items()}}
      for e in evals
  }
  return out | {"per_animal": per_animal}


def _placement_summary(evals: list[dict[str, Any]], bank) -> dict[str, Any]:
  truth = has_displacement_truth(evals)
  placement: dict[str, Any] = {"displacement_truth": truth}
  if truth:
    placement |= {
        "mean_abs_error_px": evaluation.mean_error(evals, "gbp"),
        "definition": "mean over slices with brain of |estimated - true| displacement, "
                      "averaged over the two in-plane axes; gbp: truth = test minus "
                      "reference displacement recorded in meta.json; search placers: "
                      "truth = test minus chosen template animal's recorded displacement "
                      "minus its alignment shift (the aligned bank's frame); confidence = "
                      "peak-to-sidelobe ratio of the locating correlation"}
  else:
    placement["definition"] = ("the test animals record no acquisition displacement, so "
                               "no placement error is computed; confidence = peak-to-"
                               "sidelobe ratio of the locating correlation")
  placement["per_slice"] = _per_slice_rows(evals, bank)
  for name in evaluation.SEARCH_PLACERS:
    if name in evals[0]["placements"]:
      placement[name] = {"volume_displacement": {e["animal_id"]: e["placements"][name].details[
          "volume_displacement"] for e in evals}}
      if truth:
        placement[name]["mean_abs_error_px"] = evaluation.mean_error(evals, name)
  placement["options"] = {"gbp_improved": placement_lib.IMPROVED.to_dict(),
                          "intensity": placement_lib.INTENSITY.to_dict()}
  return placement


def per_animal_rows(results: dict[str, Any], animals: dict[str, dict] | None = None
                    ) -> list[dict[str, Any]]:
  """``per_animal.csv``: one row per test animal, DSC of every way and class,
  brain DSC of every placement (and the animal's columns of ``animals.csv``)."""
  rows = []
  for a, m in results["per_animal"].items():
    row = {"animal": a} | {k: v for k, v in (animals or {}).get(a, {}).items()
                           if k != "animal_id"}
    for way in WAYS + BASELINES:
      if way in m:
        row |= {f"{way}_{c}_dsc": m[way][c]["dsc"] for c in m[way]}
    row |= {f"{k}_brain_dsc": v["dsc"] for k, v in m.get("brain", {}).items()}
    rows.append(row)
  return rows


def lognormal_verdict(evals: list[dict[str, Any]], *, seed: int,
                      max_samples: int = 20000) -> dict[str, Any]:
  """Pooled log-normal test of the test slices' gradient images (a subsample).

  Zero-gradient pixels are counted and excluded; the full study with per-slice
  verdicts and a random-network control is ``experiments/lognormal.py``.
  """
  from rodent_gbp import distributions
  g = np.concatenate([np.asarray(e["gradient"]).ravel() for e in evals])
  fit = distributions.fit_families(g, zeros="exclude", max_samples=max_samples, seed=seed)
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
  import nibabel as nib
  from rodent_gbp import data
  with fileio.atomic_path(path, suffix=".nii.gz") as tmp:
    nib.save(data.to_nifti(array, volume), tmp)


def _load_or_train(config, workdir: pathlib.Path, data_dir, checkpoint, volumes, log,
                   split=None):
  """(config, params, split, checkpoint folder, training history)."""
  from rodent_gbp import checkpoint as checkpoint_lib
  from rodent_gbp import data
  from rodent_gbp import train

  if checkpoint is None:
    result = train.train_and_evaluate(config, workdir, data_dir=data_dir, split=split,
                                      log=log)
    return (config, result.params, result.split, pathlib.Path(result.checkpoint_dir),
            result.history)
  ckpt_dir = pathlib.Path(checkpoint)
  loaded = checkpoint_lib.load_model(ckpt_dir)
  stored = loaded.extras.get("split")
  if split is not None and stored is not None and data.check_split(
      stored, volumes, source=str(ckpt_dir)) != split:
    raise UsageError(f"--split_file gives a split other than the one {ckpt_dir} was "
                     f"trained on ({stored}); leave it out to use the checkpoint's")
  split = split or stored or data.split_animals(sorted(volumes), loaded.config.split_seed)
  meta = checkpoint_lib.read_meta(ckpt_dir, "latest") or loaded.extras.get("meta") or {}
  run_config = configs_lib.override(loaded.config, displacement=config.displacement)
  return run_config, loaded.params, split, ckpt_dir, meta.get("history", [])


def make_bundle(config, params, train_volumes, ckpt_dir: pathlib.Path, split, *,
                training: dict | None = None) -> bundle_lib.Bundle:
  """The model bundle of a trained run: tissue network, normalisation, bank, voxel size."""
  from rodent_gbp import checkpoint as checkpoint_lib
  from rodent_gbp import model as model_lib
  record = fileio.read_json(ckpt_dir / checkpoint_lib.NORMALISATION_FILE)
  bank = bank_lib.build_template_bank(
      model_lib.build_unet(config), params, train_volumes,
      classes=tuple(config.gradient_classes), method=config.saliency_method,
      score=config.saliency_score, batch_size=config.eval_batch_size)
  vs, source = bundle_lib.voxel_size_of(train_volumes, config)
  info = {"checkpoint_dir": str(ckpt_dir)}
  if training:
    info |= {k: training[k] for k in ("kept", "best_epoch", "epochs_completed")
             if k in training}
  return bundle_lib.Bundle(
      networks={"tissue": bundle_lib.Network(config=config, params=params, info=info)},
      normalisation=bundle_lib.normalisation_rule(
          record, ckpt_dir / checkpoint_lib.NORMALISATION_FILE),
      bank=bank, voxel_size=vs, voxel_size_source=source, split=split)


def data_record(data_dir: pathlib.Path, *, phantom: bool) -> dict[str, Any]:
  """Where the run's data came from (``results.json["data"]``).

  A converted public set: its ``dataset.json`` provenance (set, repository,
  commit, manifest hash, licence, citation, resolution, label kind); a
  phantom folder (written here or given as ``data_dir``): its generator
  settings from ``phantom.json``; any other folder: its path.
  """
  from rodent_gbp import datasets
  record_path = data_dir / "dataset.json"
  if record_path.is_file():
    rec = fileio.read_json(record_path)
    info = datasets.get(rec["dataset"]) if rec.get("dataset") in datasets.NAMES else None
    keep = ("dataset", "repository", "commit", "subdir", "source_url", "licence",
            "citation", "manifest_sha256", "converter_version", "resolution",
            "files_present", "files_in_manifest", "skipped_sessions", "skipped_animals")
    out = {k: rec[k] for k in keep if k in rec} | {"folder": str(data_dir)}
    out["labels"] = (rec.get("labels") or {}).get("kind", "labels")
    out["skull_stripped"] = bool(info.skull_stripped if info else rec.get("skull_stripped"))
    return out
  from rodent_gbp import phantom as phantom_lib
  if phantom or phantom_lib.is_complete(data_dir):
    info = fileio.read_json(data_dir / phantom_lib.COMPLETE_FILE)
    return {"dataset": "phantom", "folder": str(data_dir), "animals": info.get("animals"),
            "image_size": info.get("size"), "phantom_seed": info.get("seed"),
            "phantom_kind": info.get("kind", "standard"),
            "labels": "generator truth", "skull_stripped": False}
  return {"dataset": "folder", "folder": str(data_dir), "labels": "labels",
          "skull_stripped": False}


def _animal_columns(data_dir: pathlib.Path) -> dict[str, dict]:
  """The rows of a converted set's ``animals.csv`` by animal id (empty without one)."""
  import csv
  path = data_dir / "animals.csv"
  if not path.is_file():
    return {}
  with open(path, newline="") as f:
    return {r["animal_id"]: r for r in csv.DictReader(f)}


def resolve_data(workdir: pathlib.Path, config: configs_lib.Config, *, data_dir=None,
                 dataset: str | None = None, data_root=None, data_cache=None,
                 resolution: str = "paper", log: Callable[[str], None] = print
                 ) -> tuple[pathlib.Path, bool]:
  """The run's dataset folder, and whether it is the phantom.

  ``dataset`` (a public set's name) is converted (``datasets.prepare``) from
  ``data_root`` or downloaded, into ``data_cache``; otherwise ``data_dir`` is
  used as it is; with neither, the phantom is written into ``<workdir>/data``.
  """
  from rodent_gbp import datasets
  from rodent_gbp import phantom
  if dataset is not None and data_dir is not None:
    raise UsageError("give either --dataset (a public set) or --data_dir (a folder in "
                     "the project's layout), not both")
  if dataset is not None:
    folder = (datasets.prepare(dataset, data_root=data_root, cache_dir=data_cache,
                               resolution=resolution, log=log)
              if parallel.is_lead() else None)
    parallel.barrier("rodent_gbp:dataset")
    if folder is None:  # the other processes find the lead's conversion in the cache
      folder = datasets.prepare(dataset, data_root=data_root, cache_dir=data_cache,
                                resolution=resolution, log=None)
    return folder, False
  if data_root is not None:
    raise UsageError("--data_root names a local copy of a public set: give --dataset too")
  if data_dir is not None:
    return pathlib.Path(data_dir), False
  data_dir = workdir / "data"
  existing = phantom.kind_of(data_dir)
  if existing is not None and existing != config.phantom:
    raise UsageError(f"{data_dir}: holds a {existing} phantom and this run asks for a "
                     f"{config.phantom} one; give another --workdir")
  if existing is None and parallel.is_lead():
    log(f"writing the synthetic phantom ({config.animals} animals, {config.phantom}) "
        f"to {data_dir}")
    phantom.write_phantom(data_dir, animals=config.animals, seed=config.phantom_seed,
                          size=config.image_size, kind=config.phantom)
  parallel.barrier("rodent_gbp:phantom")
  return data_dir, True


def run(config: configs_lib.Config, workdir, *, data_dir=None, dataset=None,
              data_root=None, data_cache=None, resolution: str = "paper",
              split: dict | str | pathlib.Path | None = None, checkpoint=None,
              seed: int | None = None, figures: bool = True,
              log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the paper's experiment; returns the ``results.json`` content.

  Args:
    config: the run's configuration (``configs.get_config``); with
      ``checkpoint`` the checkpoint's own config is used (the caller refuses
      a conflicting pair) but for ``displacement``, which only the
      evaluation reads and which comes from ``config``.
    workdir: output folder (created).
    data_dir: a dataset folder (``<animal>/image.nii.gz``, ...); None (and no
      ``dataset``) writes the phantom into ``<workdir>/data``.
    dataset, data_root, data_cache, resolution: a public set by name
      (``rodent_gbp.datasets``), read from a local copy in the source's layout
      (``data_root``) or downloaded, converted once into ``data_cache``.
    split: ``{"train", "val", "test"}`` animal ids, or the path of a JSON split
      file holding them (``data.read_split_file``), instead of the split drawn
      from ``config.split_seed``.
    checkpoint: a training checkpoint folder (``<workdir>/checkpoints`` of an
      earlier run); None trains one into ``<workdir>/checkpoints``.
    seed: overrides ``config.seed`` (init, data order) when given.
    figures: write the paper's figures (PNG).
    log: progress sink.
  """
  from rodent_gbp import data
  from rodent_gbp import train

  t_start = time.time()
  timing: dict[str, float] = {}
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if seed is not None:
    config = configs_lib.override(config, seed=seed)

  data_dir, is_phantom = resolve_data(workdir, config, data_dir=data_dir, dataset=dataset,
                                      data_root=data_root, data_cache=data_cache,
                                      resolution=resolution, log=log)
  volumes = {v.animal_id: v for v in data.load_dataset(data_dir)}
  if isinstance(split, (str, pathlib.Path)):
    split = data.read_split_file(split, volumes)
  elif split is not None:
    split = data.check_split(split, volumes)
  source = data_record(data_dir, phantom=is_phantom)
  removal = not source["skull_stripped"]
  timing["data_s"] = time.time() - t_start

  t0 = time.time()
  run_seed = config.seed
  config, params, split, ckpt_dir, history = _load_or_train(
      config, workdir, data_dir, checkpoint, volumes, log, split)
  config = configs_lib.override(config, seed=run_seed)
  timing["train_s"] = time.time() - t0
  missing = [a for a in split["train"] + split["test"] if a not in volumes]
  if missing:
    raise DataError(f"{data_dir}: animals {missing} of the checkpoint's split are missing")
  training = train.training_summary(history, config)

  t0 = time.time()
  bundle = make_bundle(config, params, [volumes[a] for a in split["train"]], ckpt_dir, split,
                       training=training)
  bundle_lib.save_bundle(workdir / "model", bundle)
  bank = bundle.bank
  log(f"model bundle: {workdir / 'model'}; template bank of {len(bank.animal_ids)} training "
      f"animals, reference {bank.animal_ids[bank.reference]} (median brain volume)")
  timing["template_bank_s"] = time.time() - t0

  t0 = time.time()
  evals = []
  for a in split["test"]:
    evals.append(evaluation.evaluate_volume(volumes[a], bundle=bundle, removal=removal,
                                            batch_size=config.eval_batch_size))
    evals[-1]["counts"] |= baseline_counts(volumes[a], num_classes=config.num_classes,
                                           mixture="pseudo" not in source["labels"])
    log(f"evaluated test animal {a}")
  timing["evaluate_s"] = time.time() - t0

  results: dict[str, Any] = {"config": config.to_dict(),
                             "provenance": report.provenance(config.seed),
                             "data": source,
                             "split": split,
                             "reference_animal": bank.animal_ids[bank.reference],
                             "training": training}
  if not removal:
    results["absent"] = SKULL_STRIPPED_NOTE
    log(SKULL_STRIPPED_NOTE)
  results |= summarise(evals, bank)
  t0 = time.time()
  results["lognormal"] = lognormal_verdict(evals, seed=config.seed)
  timing["lognormal_s"] = time.time() - t0
  if removal:
    t0 = time.time()
    results["ablation"] = improved.ablation(
        [volumes[a] for a in split["test"]], bundle=bundle,
        gradients={e["animal_id"]: e["gradient"] for e in evals}, log=log)
    timing["ablation_s"] = time.time() - t0
  timing["total_s"] = time.time() - t_start
  results["timing"] = timing

  if not parallel.is_lead():  # every process computed; process 0 writes
    return results
  _write_outputs(workdir, results, evals, volumes, animals=_animal_columns(data_dir), log=log)
  if figures:
    t0 = time.time()
    _write_figures(workdir / "figures", evals, volumes, bundle, removal=removal)
    log(f"wrote figures to {workdir / 'figures'} ({time.time() - t0:.1f} s)")
  log(report.tables_markdown(results))
  return results


def _write_outputs(workdir: pathlib.Path, results, evals, volumes, *, animals=None,
                   log) -> None:
  fileio.write_json(workdir / "results.json", results)
  fileio.atomic_write_text(workdir / "tables.md", report.tables_markdown(results))
  fileio.write_csv(workdir / "per_animal.csv", per_animal_rows(results, animals))
  written = ["results.json", "tables.md", "per_animal.csv"]
  if "placement" in results:
    fileio.write_csv(workdir / "per_slice.csv", results["placement"]["per_slice"])
    written.append("per_slice.csv")
  if "ablation" in results:
    oracle = results["brain"].get("oracle", {}).get("dsc")
    fileio.atomic_write_text(workdir / "placement.md", improved.ablation_markdown(
        results["ablation"], oracle, animals=[e["animal_id"] for e in evals]))
    written.append("placement.md")
  out = workdir / "predictions"
  out.mkdir(exist_ok=True)
  for e in evals:
    v = volumes[e["animal_id"]]
    a = e["animal_id"]
    for way, lab in e["labels"].items():
      if way != "none":
        _save_nifti(lab.astype(np.uint8), v, out / f"{a}_labels_{way}.nii.gz")
    for name, mask in e["masks"].items():
      _save_nifti(mask.astype(np.uint8), v, out / f"{a}_brainmask_{name}.nii.gz")
  log(f"wrote {', '.join(written)} and predictions/ to {workdir}")


def _write_figures(out: pathlib.Path, evals, volumes, bundle, *, removal: bool = True
                   ) -> None:
  """The paper's Figs. 2-8 for the first test animal's slices (without
  ``removal``: the saliency figures 2, 3 and 5 only)."""
  import jax
  import jax.numpy as jnp
  from rodent_gbp import correlate
  from rodent_gbp import enhance
  from rodent_gbp import figures
  from rodent_gbp import guided

  out.mkdir(parents=True, exist_ok=True)
  net = bundle.network("tissue")
  model, params, config = net.model, net.params, net.config
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
  steps = {k: np.asarray(a) for k, a in enhance.enhancement_steps(
      jnp.asarray(e["gradient"][s]), center=config.enhance_center,
      width=config.enhance_width).items()}
  figures.fig5_histograms(out / "fig5_histograms.png", steps)
  from rodent_gbp import qc
  (out / "qc").mkdir(exist_ok=True)
  for ev in evals:  # one QC figure per test animal: the mask applied, the labels
    way = "gbp_improved" if "gbp_improved" in ev["masks"] else None
    vol = volumes[ev["animal_id"]]
    qc.scan_figure(out / "qc" / f"{ev['animal_id']}_{way or 'manual'}.png", vol.image,
                   ev["masks"][way] if way else vol.brainmask, ev["labels"][way or "manual"])
  if not removal:
    return
  gbp = e["placements"]["gbp"].details
  figures.fig4_noisy(out / "fig4_no_removal.png", raw, e["labels"]["none"][s],
                     e["labels"]["manual"][s], v.label[s])
  figures.fig6_enhanced(out / "fig6_enhanced.png", e["gradient"][s], gbp["signal"][s])
  figures.fig7_alignment(out / "fig7_alignment.png", gbp["template"][s], gbp["signal"][s],
                         gbp["correlation"][s], raw, raw * e["masks"]["gbp"][s],
                         displacement=e["placements"]["gbp"].displacement[s])
  # Fig. 8: the slice with brain where GBP removal hurts CSF most.
  csf_true = v.label == 3
  csf_gbp = e["labels"]["gbp"] == 3
  inter = (csf_true & csf_gbp).reshape(len(v.label), -1).sum(-1)
  total = csf_true.reshape(len(v.label), -1).sum(-1) + csf_gbp.reshape(len(v.label), -1).sum(-1)
  dice = np.where(total > 20, 2 * inter / np.maximum(total, 1), np.inf)
  s8 = int(np.argmin(dice))
  figures.fig8_panel(out / "fig8_csf.png", v.image[s8], v.image[s8] * v.brainmask[s8],
                     v.image[s8] * e["masks"]["gbp"][s8], v.label[s8], e["labels"]["gbp"][s8])
  per = [r for ev in evals for r in _overview_rows(ev)]
  figures.placement_overview(out / "placement.png", [r[0] for r in per], [r[1] for r in per],
                             [r[2] for r in per])


def _overview_rows(e):
  err = evaluation.placement_error(e, "gbp")
  return list(zip(e["slice_dice"]["gbp"], e["ceiling_dice"], err))


