"""Cross-validation by animal of the supervised extractor, paired with the placers.

For each fold of a fold file (``experiments/folds/<set>.json``): train the
extractor (``rodent_gbp.training.extraction``) on the training animals (every
session), keep the epoch best on the validation animals, extract the test
animals' evaluated session (session 1) and score it against the manual brain
mask: 3D brain Dice, HD95 (``metrics.hd95``: 95th percentile of the pooled
symmetric boundary distances, mm, in the volume's own voxel geometry) and Dice by relative slice
position. Each fold writes ``<workdir>/fold<k>/`` (``results.json`` last, so
a stopped run resumes at the first unfinished fold): the extractor-only
bundle (``model/``), ``per_animal.csv``, ``per_slice.csv`` and QC figures
(outlines of truth and extraction; GBP saliency of the brain class).

:func:`summarise` pools the folds: mean +- sd over folds of the fold means,
the worst test animal, Dice by slice position, and per animal the paired
difference to the committed per-animal brain Dice of the other placers
(``experiments/results/cv_mouse_epi/fold<k>/per_animal.csv``, columns
``<placer>_brain_dsc``) with a Wilcoxon signed-rank test.
"""

from __future__ import annotations

import csv
import logging
import pathlib
from typing import Any, Callable, Sequence

import numpy as np
from rodent_gbp.training import augment as augment_lib
from rodent_gbp import extractor
from rodent_gbp import bundle as bundle_lib
from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import fileio
from rodent_gbp import metrics
from rodent_gbp.training import extraction
from rodent_gbp.errors import DataError
from rodent_gbp import guided

_LOG = logging.getLogger(__name__)

#: Committed placers' brain Dice columns paired with the extractor.
BASELINES = ("gbp", "gbp_improved", "intensity", "gbp_ceiling", "oracle")
#: Relative slice position bins (slice index / (S - 1)).
POSITION_BINS = 5


# --- metrics ----------------------------------------------------------------------------


def position_bin(s: int, n: int) -> int:
  """Relative position bin (0 .. POSITION_BINS - 1) of slice ``s`` of ``n``."""
  rel = s / max(n - 1, 1)
  return min(int(rel * POSITION_BINS), POSITION_BINS - 1)


# --- one fold ---------------------------------------------------------------------------


def run_fold(split: dict, fold_dir: pathlib.Path, *, data_dir, config: configs.Config,
             options: augment_lib.AugmentOptions = augment_lib.AugmentOptions(),
             figures: bool = True, log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Trains, selects, extracts the test animals and writes the fold's files."""
  fold_dir = pathlib.Path(fold_dir)
  vols = extraction.load_split(data_dir, split, log=log)
  result = extraction.train_extractor(vols["train"], vols["val"], config, options=options,
                                      log=log)
  bundle = extraction.make_bundle(result, vols["train"], split, data_dir=str(data_dir))
  bundle_lib.save_bundle(fold_dir / "model", bundle)
  model = bundle.network(extractor.NETWORK).model
  animals, slices, extractions = {}, [], {}
  for v in vols["test"]:
    out = extractor.extract(v.image, bundle=bundle)
    extractions[v.animal_id] = out
    spacing = data.slice_spacing(v)
    animals[v.animal_id] = {
        "brain_dsc": metrics.mask_dice(out["mask"], v.brainmask),
        "brain_hd95_mm": metrics.hd95(out["mask"], v.brainmask, spacing),
        "raw_brain_dsc": metrics.mask_dice(out["raw_mask"], v.brainmask),
        "slices": int(len(v.image))}
    n = len(v.image)
    for s in range(n):
      if v.brainmask[s].any() or out["mask"][s].any():
        slices.append({"animal": v.animal_id, "slice": s, "relative_position": s / max(n - 1, 1),
                       "position_bin": position_bin(s, n),
                       "brain_dsc": metrics.mask_dice(out["mask"][s], v.brainmask[s])})
  write_csv(fold_dir / "per_animal.csv", [{"animal": a, **m} for a, m in animals.items()])
  write_csv(fold_dir / "per_slice.csv", slices)
  if figures:
    for v in vols["test"]:
      qc_figure(fold_dir / "figures" / f"qc_{v.animal_id}.png", v,
                            extractions[v.animal_id]["mask"])
    v = vols["test"][0]
    saliency_figure(fold_dir / "figures" / f"saliency_{v.animal_id}.png", v,
                                extractions[v.animal_id], model=model,
                                params=bundle.network(extractor.NETWORK).params)
  res = {"split": split, "config": config.to_dict(), "augment": options.__dict__,
         "history": result.history, "kept_epoch": result.kept_epoch,
         "val_brain_dsc": result.best_val_dice, "per_animal": animals,
         "mean": {k: float(np.mean([m[k] for m in animals.values()]))
                  for k in ("brain_dsc", "brain_hd95_mm", "raw_brain_dsc")},
         "train_seconds": float(sum(h["seconds"] for h in result.history))}
  fileio.write_json(fold_dir / "results.json", res)
  log(f"fold done: test brain Dice {res['mean']['brain_dsc']:.4f}, HD95 "
      f"{res['mean']['brain_hd95_mm']:.3f} mm, kept epoch {result.kept_epoch}")
  return res


def _slices_to_show(mask: np.ndarray, count: int) -> list[int]:
  """``count`` slices evenly over those with brain."""
  have = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
  if not have.size:
    return []
  return sorted({int(have[i]) for i in np.linspace(0, len(have) - 1, count).round().astype(int)})


def qc_figure(path: pathlib.Path, volume, mask: np.ndarray, *, count: int = 6) -> None:
  """Raw slices with the manual mask (green) and the extraction (red) outlined."""
  from rodent_gbp import figures
  plt = figures.plt
  idx = _slices_to_show(volume.brainmask, count)
  fig, axes = plt.subplots(1, len(idx), figsize=(1.6 * len(idx), 2.0), squeeze=False)
  for ax, s in zip(axes[0], idx):
    figures.show(ax, volume.image[s], f"slice {s}: "
                 f"{100 * metrics.mask_dice(mask[s], volume.brainmask[s]):.0f}", vmin=0,
                 vmax=1.2)
    ax.contour(volume.brainmask[s].T.astype(float), [0.5], colors="lime", linewidths=0.6)
    ax.contour(mask[s].T.astype(float), [0.5], colors="red", linewidths=0.6)
  fig.suptitle(f"{volume.animal_id}: manual (green), extractor (red), slice DSC %",
               fontsize=8)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def saliency_figure(path: pathlib.Path, volume, extraction: dict, *, model, params,
                    count: int = 3) -> None:
  """Per slice: raw input, brain probability, |GBP saliency| of the brain class.

  The saliency is ``guided.saliency`` of the extractor (target: the brain
  class, probability score): what the extraction network looks at.
  """
  import jax.numpy as jnp
  from rodent_gbp import figures
  plt = figures.plt
  idx = _slices_to_show(volume.brainmask, count)
  maps = np.asarray(guided.saliency(model, params, jnp.asarray(volume.image[idx][..., None]),
                                    method="guided", target=extractor.BRAIN))
  fig, axes = plt.subplots(len(idx), 3, figsize=(5.4, 1.9 * len(idx)), squeeze=False)
  for row, s in enumerate(idx):
    figures.show(axes[row, 0], volume.image[s], f"{volume.animal_id} slice {s}: input",
                 vmin=0, vmax=1.2)
    axes[row, 0].contour(volume.brainmask[s].T.astype(float), [0.5], colors="lime",
                         linewidths=0.5)
    figures.show(axes[row, 1], extraction["probability"][s], "brain probability",
                 vmin=0, vmax=1, cmap="viridis")
    m = np.abs(maps[row])
    figures.show(axes[row, 2], m, "|GBP| brain class", vmin=0,
                 vmax=float(np.percentile(m, 99.5)) or 1.0, cmap="magma")
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def summary_figure(path: pathlib.Path, cv: dict[str, Any]) -> None:
  """Per-animal brain Dice against the placers', and Dice by relative slice position."""
  from rodent_gbp import figures
  plt = figures.plt
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(8.0, 3.4))
  ys = np.array([m["brain_dsc"] for m in cv["per_animal"].values()])
  for b, colour in (("gbp", "tab:gray"), ("gbp_improved", "tab:blue"), ("oracle", "tab:green")):
    xs = np.array([m.get(f"{b}_brain_dsc") or np.nan for m in cv["per_animal"].values()])
    ax.scatter(100 * xs, 100 * ys, s=12, color=colour, label=b)
  lo = 100 * np.nanmin([ys.min(), 0.85])
  ax.plot([lo, 100], [lo, 100], "k:", lw=0.8)
  ax.set_xlabel("placer brain DSC (%)", fontsize=8)
  ax.set_ylabel("supervised brain DSC (%)", fontsize=8)
  ax.set_title("per test animal (above the line: supervised better)", fontsize=8)
  ax.legend(fontsize=7)
  ax.tick_params(labelsize=7)
  keys = list(cv["dice_by_position"])
  means = [100 * cv["dice_by_position"][k]["mean"] for k in keys]
  sds = [100 * cv["dice_by_position"][k]["sd"] for k in keys]
  bx.bar(range(len(keys)), means, yerr=sds, color="tab:red", alpha=0.7)
  bx.set_xticks(range(len(keys)), keys, fontsize=7)
  bx.set_ylim(max(0.0, min(means) - 15), 100)
  bx.set_xlabel("relative slice position (0: first slice)", fontsize=8)
  bx.set_ylabel("slice brain DSC (%), mean +- sd", fontsize=8)
  bx.tick_params(labelsize=7)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  """Rows of dicts (one key set) as CSV."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", newline="") as f:
    if not rows:
      return
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def read_baselines(baseline_dir: pathlib.Path, folds: int) -> dict[str, dict[str, float]]:
  """animal -> {placer: brain Dice} of the committed per_animal.csv files."""
  out: dict[str, dict[str, float]] = {}
  for k in range(folds):
    path = pathlib.Path(baseline_dir) / f"fold{k}" / "per_animal.csv"
    if not path.is_file():
      raise DataError(f"{path}: per-animal baseline file not found")
    with open(path) as f:
      for row in csv.DictReader(f):
        out[row["animal"]] = {b: float(row[f"{b}_brain_dsc"]) for b in BASELINES
                              if f"{b}_brain_dsc" in row}
  return out


# --- pooling ----------------------------------------------------------------------------


def _ms(values) -> dict[str, float]:
  v = np.asarray([x for x in values if np.isfinite(x)], np.float64)
  return {"mean": float(v.mean()) if v.size else float("nan"),
          "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def summarise(fold_dirs: Sequence[pathlib.Path], baselines: dict[str, dict[str, float]]
              ) -> dict[str, Any]:
  """Pools the folds' results with the committed placers' per-animal brain Dice."""
  from scipy import stats
  results = [fileio.read_json(pathlib.Path(d) / "results.json") for d in fold_dirs]
  per_animal = {a: m | {"fold": k} for k, r in enumerate(results)
                for a, m in r["per_animal"].items()}
  fold_means = {"supervised": [r["mean"]["brain_dsc"] for r in results],
                "supervised_hd95_mm": [r["mean"]["brain_hd95_mm"] for r in results]}
  for b in BASELINES:
    fold_means[b] = [float(np.mean([baselines[a][b] for a in r["per_animal"]
                                    if a in baselines and b in baselines[a]]))
                     for r in results]
  paired = {}
  for b in BASELINES:
    ids = [a for a in per_animal if a in baselines and b in baselines[a]]
    if not ids:
      continue
    diff = np.array([per_animal[a]["brain_dsc"] - baselines[a][b] for a in ids])
    p = float(stats.wilcoxon(diff).pvalue) if len(ids) > 1 and np.any(diff != 0) else 1.0
    paired[b] = {"animals": len(ids), "mean_difference": float(diff.mean()),
                 "sd_difference": float(diff.std(ddof=1)) if len(ids) > 1 else 0.0,
                 "supervised_better": int((diff > 0).sum()), "wilcoxon_p": p}
  worst = min(per_animal, key=lambda a: per_animal[a]["brain_dsc"])
  positions = {}
  for d in fold_dirs:
    with open(pathlib.Path(d) / "per_slice.csv") as f:
      for row in csv.DictReader(f):
        positions.setdefault(int(row["position_bin"]), []).append(float(row["brain_dsc"]))
  return {"folds": len(results),
          "brain_dsc": {k: _ms(v) | {"per_fold": v} for k, v in fold_means.items()},
          "paired": paired,
          "worst_animal": {"animal": worst, **per_animal[worst],
                           **{f"{b}_brain_dsc": baselines.get(worst, {}).get(b)
                              for b in BASELINES}},
          "dice_by_position": {
              f"{b / POSITION_BINS:.1f}-{(b + 1) / POSITION_BINS:.1f}":
              _ms(positions[b]) for b in sorted(positions)},
          "per_animal": {a: per_animal[a] | {f"{b}_brain_dsc": baselines.get(a, {}).get(b)
                                             for b in BASELINES} for a in sorted(per_animal)},
          "kept_epochs": [r["kept_epoch"] for r in results],
          "train_seconds": [r["train_seconds"] for r in results],
          "config": results[0]["config"], "augment": results[0]["augment"]}


def markdown(cv: dict[str, Any], *, command: str = "") -> str:
  """``cv.md``: the table of brain Dice / HD95 and the paired comparison."""
  pct = lambda s: f"{100 * s['mean']:.1f} +- {100 * s['sd']:.1f}"
  c = cv["config"]
  lines = [f"# Supervised brain extraction: mouse_epi, {cv['folds']}-fold CV by animal", "",
           f"Extractor: U-Net features {c['features']}, depth {c['depth']}, 2 classes, "
           f"Adam lr {c['learning_rate']:g} (decay {c['decay']:g}), batch {c['batch_size']}, "
           f"{c['epochs']} epochs, seed {c['seed']}; trained on every session of the "
           "training animals, epoch kept by validation brain Dice (kept: "
           f"{', '.join(map(str, cv['kept_epochs']))}), tested on session 1 of the test "
           f"animals ({len(cv['per_animal'])} in all). Training seconds per fold: "
           f"{', '.join(f'{s:.0f}' for s in cv['train_seconds'])}.", "",
           "Brain DSC in percent, mean +- sd over folds of the fold means (other placers: "
           "the committed experiments/results/cv_mouse_epi per_animal.csv, same animals).", "",
           "| placer | brain DSC | paired diff (supervised - it), mean +- sd over animals "
           "| supervised better | Wilcoxon p |", "|---|---|---|---|---|",
           f"| supervised | {pct(cv['brain_dsc']['supervised'])} | | | |"]
  for b in BASELINES:
    if b in cv["paired"]:
      p = cv["paired"][b]
      lines.append(f"| {b} | {pct(cv['brain_dsc'][b])} | {100 * p['mean_difference']:+.2f} "
                   f"+- {100 * p['sd_difference']:.2f} | {p['supervised_better']}/"
                   f"{p['animals']} | {p['wilcoxon_p']:.2g} |")
  h = cv["brain_dsc"]["supervised_hd95_mm"]
  w = cv["worst_animal"]
  lines += ["", f"HD95 of the extraction: {h['mean']:.3f} +- {h['sd']:.3f} mm (mean +- sd "
            "over folds).", "",
            f"Worst test animal: {w['animal']} (fold {w['fold']}): brain DSC "
            f"{100 * w['brain_dsc']:.1f}, HD95 {w['brain_hd95_mm']:.2f} mm (gbp_improved "
            f"{100 * (w.get('gbp_improved_brain_dsc') or float('nan')):.1f}, oracle "
            f"{100 * (w.get('oracle_brain_dsc') or float('nan')):.1f}).", "",
            "## Dice by relative slice position (pooled slices)", "",
            "| position | slice DSC | slices |", "|---|---|---|"]
  lines += [f"| {k} | {pct(v)} | {v['n']} |" for k, v in cv["dice_by_position"].items()]
  lines += ["", "## Per animal", "", "| animal | fold | supervised | HD95 mm | gbp | "
            "gbp_improved | intensity | oracle |", "|---|---|---|---|---|---|---|---|"]
  f1 = lambda x: "" if x is None else f"{100 * x:.1f}"
  for a, m in cv["per_animal"].items():
    lines.append(f"| {a} | {m['fold']} | {f1(m['brain_dsc'])} | {m['brain_hd95_mm']:.2f} | "
                 f"{f1(m['gbp_brain_dsc'])} | {f1(m['gbp_improved_brain_dsc'])} | "
                 f"{f1(m['intensity_brain_dsc'])} | {f1(m['oracle_brain_dsc'])} |")
  if command:
    lines += ["", f"Command: `{command}`"]
  return "\n".join(lines) + "\n"
