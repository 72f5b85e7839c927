"""What the main job reports: tables, per-animal and per-slice rows, baselines,
the log-normal verdict, and the files and figures it writes (``job.run``).
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np

from rodent_gbp import correlate
from rodent_gbp import data
from rodent_gbp import distributions
from rodent_gbp import enhance
from rodent_gbp import evaluation
from rodent_gbp import fileio
from rodent_gbp import figures
from rodent_gbp import guided
from rodent_gbp import improved
from rodent_gbp import metrics
from rodent_gbp import nifti
from rodent_gbp import placement as placement_lib
from rodent_gbp import qc
from rodent_gbp import report
from rodent_gbp.datasets import pseudo_labels

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
    spacing = nifti.voxel_sizes_ras(volume.affine)[list(data.plane_axes(volume.plane))]
    out["mixture"] = pseudo_labels.tissue_pseudo_labels(
        volume.image, volume.brainmask, spacing=spacing)[0].astype(np.int32)
  return {k: np.asarray(metrics.confusion_counts(v, truth, num_classes))
          for k, v in out.items()}


def has_displacement_truth(evals: list[evaluation.AnimalEvaluation]) -> bool:
  """Whether the test animals record their acquisition displacement (the phantom does)."""
  return bool(evals) and all(
      e.true_displacement is not None and np.all(np.isfinite(e.true_displacement)) for e in evals)


def per_slice_rows(evals: list[evaluation.AnimalEvaluation], bank) -> list[dict[str, Any]]:
  """One row per test slice: each placer's displacement, confidence and Dice
  (with displacement truth also the true displacement and the error)."""
  rows = []
  truth = has_displacement_truth(evals)
  for e in evals:
    gbp = e.placements["gbp"]
    err = evaluation.placement_error(e, "gbp")
    for s in range(len(err)):
      row = {"animal": e.animal_id, "slice": s,
             "dy": int(gbp.displacement[s, 0]), "dx": int(gbp.displacement[s, 1])}
      if truth:
        row |= {"true_dy": e.true_displacement[s, 0],
                "true_dx": e.true_displacement[s, 1], "abs_error_px": float(err[s])}
      row |= {"confidence_psr": float(gbp.confidence[s]),
              "brain_dice": float(e.slice_dice["gbp"][s]),
              "ceiling_dice": float(e.ceiling_dice[s])}
      for name in evaluation.SEARCH_PLACERS:
        if name not in e.placements:
          continue
        pl = e.placements[name]
        row |= {f"{name}_dy": int(pl.displacement[s, 0]),
                f"{name}_dx": int(pl.displacement[s, 1])}
        if truth:
          true = np.asarray(e.true_shifts)[pl.details.template_animal[s]]
          row |= {f"{name}_true_dy": true[0], f"{name}_true_dx": true[1],
                  f"{name}_abs_error_px": float(evaluation.placement_error(e, name)[s])}
        row |= {f"{name}_confidence_psr": float(pl.confidence[s]),
                f"{name}_template_animal": bank.animal_ids[int(pl.details.template_animal[s])],
                f"{name}_slice_offset": int(pl.details.slice_offset[s]),
                f"{name}_scale": float(pl.details.scale[s]),
                f"{name}_brain_dice": float(e.slice_dice[name][s])}
      if e.oracle_dice is not None:
        row["oracle_dice"] = float(e.oracle_dice[s])
      rows.append(row)
  return rows


def summarise(evals: list[evaluation.AnimalEvaluation], bank) -> dict[str, Any]:
  """Tables, brain rows, placement and per-animal metrics from evaluations."""
  ways = [w for w in WAYS + BASELINES if w in evals[0].counts]
  tables = {w: metrics.class_table([e.counts[w] for e in evals]) for w in ways}
  brain = {k: metrics.binary_row([e.brain_counts[k] for e in evals])
           for k in evals[0].brain_counts if all(k in e.brain_counts for e in evals)}
  out = {"tables": tables, "brain": brain}
  if "gbp" in evals[0].placements:
    out["placement"] = placement_summary(evals, bank)
  per_animal = {
      e.animal_id: {
          w: {k: metrics.metrics_from_counts(np.asarray(e.counts[w])[c])
              for c, k in metrics.CLASS_NAMES.items()} for w in ways
      } | {"brain": {k: metrics.metrics_from_counts(np.asarray(v))
                     for k, v in e.brain_counts.items()}}
      for e in evals
  }
  return out | {"per_animal": per_animal}


def placement_summary(evals: list[evaluation.AnimalEvaluation], bank) -> dict[str, Any]:
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
  placement["per_slice"] = per_slice_rows(evals, bank)
  for name in evaluation.SEARCH_PLACERS:
    if name in evals[0].placements:
      placement[name] = {"volume_displacement": {e.animal_id: e.placements[name].details.volume_displacement for e in evals}}
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


def lognormal_verdict(evals: list[evaluation.AnimalEvaluation], *, seed: int,
                      max_samples: int = 20000) -> dict[str, Any]:
  """Pooled log-normal test of the test slices' gradient images (a subsample).

  Zero-gradient pixels are counted and excluded; the full study with per-slice
  verdicts and a random-network control is ``experiments/lognormal.py``.
  """
  g = np.concatenate([np.asarray(e.gradient).ravel() for e in evals])
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


def save_nifti(array: np.ndarray, volume, path: pathlib.Path) -> None:
  with fileio.atomic_path(path, suffix=".nii.gz") as tmp:
    nib.save(data.to_nifti(array, volume), tmp)


def write_outputs(workdir: pathlib.Path, results, evals, volumes, *, animals=None,
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
        results["ablation"], oracle, animals=[e.animal_id for e in evals]))
    written.append("placement.md")
  out = workdir / "predictions"
  out.mkdir(exist_ok=True)
  for e in evals:
    v = volumes[e.animal_id]
    a = e.animal_id
    for way, lab in e.labels.items():
      if way != "none":
        save_nifti(lab.astype(np.uint8), v, out / f"{a}_labels_{way}.nii.gz")
    for name, mask in e.masks.items():
      save_nifti(mask.astype(np.uint8), v, out / f"{a}_brainmask_{name}.nii.gz")
  log(f"wrote {', '.join(written)} and predictions/ to {workdir}")


def write_figures(out: pathlib.Path, evals, volumes, bundle, *, removal: bool = True
                   ) -> None:
  """The paper's Figs. 2-8 for the first test animal's slices (without
  ``removal``: the saliency figures 2, 3 and 5 only)."""

  out.mkdir(parents=True, exist_ok=True)
  net = bundle.network("tissue")
  model, params, config = net.model, net.params, net.config
  e = evals[0]
  v = volumes[e.animal_id]
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
      jnp.asarray(e.gradient[s]), center=config.enhance_center,
      width=config.enhance_width).items()}
  figures.fig5_histograms(out / "fig5_histograms.png", steps)
  (out / "qc").mkdir(exist_ok=True)
  for ev in evals:  # one QC figure per test animal: the mask applied, the labels
    way = "gbp_improved" if "gbp_improved" in ev.masks else None
    vol = volumes[ev.animal_id]
    qc.scan_figure(out / "qc" / f"{ev.animal_id}_{way or 'manual'}.png", vol.image,
                   ev.masks[way] if way else vol.brainmask, ev.labels[way or "manual"])
  if not removal:
    return
  gbp = e.placements["gbp"].details
  figures.fig4_noisy(out / "fig4_no_removal.png", raw, e.labels["none"][s],
                     e.labels["manual"][s], v.label[s])
  figures.fig6_enhanced(out / "fig6_enhanced.png", e.gradient[s], gbp.signal[s])
  figures.fig7_alignment(out / "fig7_alignment.png", gbp.template[s], gbp.signal[s],
                         gbp.correlation[s], raw, raw * e.masks["gbp"][s],
                         displacement=e.placements["gbp"].displacement[s])
  # Fig. 8: the slice with brain where GBP removal hurts CSF most.
  csf_true = v.label == 3
  csf_gbp = e.labels["gbp"] == 3
  inter = (csf_true & csf_gbp).reshape(len(v.label), -1).sum(-1)
  total = csf_true.reshape(len(v.label), -1).sum(-1) + csf_gbp.reshape(len(v.label), -1).sum(-1)
  dice = np.where(total > 20, 2 * inter / np.maximum(total, 1), np.inf)
  s8 = int(np.argmin(dice))
  figures.fig8_panel(out / "fig8_csf.png", v.image[s8], v.image[s8] * v.brainmask[s8],
                     v.image[s8] * e.masks["gbp"][s8], v.label[s8], e.labels["gbp"][s8])
  per = [r for ev in evals for r in overview_rows(ev)]
  figures.placement_overview(out / "placement.png", [r[0] for r in per], [r[1] for r in per],
                             [r[2] for r in per])


def overview_rows(e):
  err = evaluation.placement_error(e, "gbp")
  return list(zip(e.slice_dice["gbp"], e.ceiling_dice, err))
