"""Placement study (issue 9, item 6): robustness, saliency sanity check, k-fold CV.

Not part of the main job (``experiments/placement_study.py`` runs it). Three parts,
each on the test animals of a trained model folder:

1. ``robustness``: brain DSC and placement error of the improved placement
   (GBP locates, intensity chooses; :data:`placement.IMPROVED`), of GBP alone
   (``choice="none"``) and of the plain-intensity baseline, against
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
   template, the reference's raw-slice GBP image, is recomputed with it).
3. ``cross_validation``: k folds over animals. Fold i's test animals are the
   test split of ``data.split_animals(ids, seed_i)``, seeds chosen so the test
   sets are disjoint (a k-fold partition when k * test size = N); each fold
   runs the main job (``reproduce.reproduce``, training included) and the
   tables are summarised by mean and standard deviation over folds.

Everything is written to ``out_dir``: ``placement_study.json`` and PNG figures.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from rodent_gbp import placement

#: Methods of the robustness curves: name -> changes from ``placement.IMPROVED``.
METHODS = {
    "gbp_improved": {},
    "gbp_only": {"choice": "none"},
    "intensity": {"signal": "intensity", "template": "mask", "margin": 2},
}


@dataclasses.dataclass
class Context:
  """A trained model, its template bank and its test animals."""

  model: Any
  params: Any
  config: Any
  bank: Any
  volumes: dict
  split: dict
  batch_size: int

  @property
  def test(self) -> list:
    return [self.volumes[a] for a in self.split["test"]]


def load_context(checkpoint_dir, data_dir, *, max_test_animals: int | None = None) -> Context:
  """Model, split, volumes and template bank (``templates.npz`` if present)."""
  from rodent_gbp import checkpoint as checkpoint_lib
  from rodent_gbp import data
  from rodent_gbp import model as model_lib
  from rodent_gbp import pipeline

  ckpt = pathlib.Path(checkpoint_dir)
  loaded = checkpoint_lib.load_model(ckpt)
  config = loaded.config
  volumes = {v.animal_id: v for v in data.load_dataset(data_dir)}
  split = loaded.extras["split"] or data.split_animals(sorted(volumes), config.split_seed)
  if max_test_animals:
    split = {**split, "test": split["test"][:max_test_animals]}
  model = model_lib.build_unet(config)
  bank_file = ckpt / "templates.npz"
  if bank_file.exists():
    bank = pipeline.TemplateBank.load(bank_file)
  else:
    bank = pipeline.build_template_bank(model, loaded.params,
                                        [volumes[a] for a in split["train"]],
                                        options=pipeline.PlacementOptions.from_config(config),
                                        batch_size=config.eval_batch_size)
  return Context(model=model, params=loaded.params, config=config, bank=bank,
                 volumes=volumes, split=split, batch_size=config.eval_batch_size)


# --------------------------------------------------------------------------
# Perturbed test volumes.
# --------------------------------------------------------------------------


def _shift_np(x: np.ndarray, d: Sequence[int]) -> np.ndarray:
  """(S, H, W) moved by integer (dy, dx), zero-filled (``correlate.shift_image``)."""
  out = np.zeros_like(x)
  dy, dx = int(d[0]), int(d[1])
  h, w = x.shape[-2:]
  if abs(dy) >= h or abs(dx) >= w:
    return out
  src = x[..., max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
  out[..., max(0, dy):max(0, dy) + src.shape[-2], max(0, dx):max(0, dx) + src.shape[-1]] = src
  return out


def shifted_volume(volume, shift: Sequence[int]):
  """The volume re-acquired ``shift`` (dy, dx) pixels further: image, labels,
  mask moved with zero fill; the recorded displacement moves with them."""
  meta = dict(volume.meta)
  if meta.get("displacement_hw") is not None:
    meta["displacement_hw"] = [float(a) + float(b) for a, b in zip(meta["displacement_hw"], shift)]
  return dataclasses.replace(
      volume, image=_shift_np(volume.image, shift), meta=meta,
      label=None if volume.label is None else _shift_np(volume.label, shift),
      brainmask=None if volume.brainmask is None else _shift_np(volume.brainmask, shift))


def artifact_volume(volume, alpha: float):
  """The volume with its non-brain part scaled by ``alpha`` (1: unchanged)."""
  m = volume.brainmask.astype(np.float32)
  image = (volume.image * m + alpha * volume.image * (1.0 - m)).astype(np.float32)
  return dataclasses.replace(volume, image=image)


def diagonal_shifts(size: float) -> list[tuple[int, int]]:
  """Two displacements of length ~``size`` along the two diagonals."""
  a = int(round(size / np.sqrt(2.0)))
  return [(a, a), (a, -a)] if a else [(0, 0)]


# --------------------------------------------------------------------------
# Placement of a set of volumes under some network.
# --------------------------------------------------------------------------


def place_all(ctx: Context, volumes: Sequence, cbank: placement.CandidateBank, *,
              params=None, methods: Mapping[str, Mapping[str, Any]] = METHODS,
              gradients: list[np.ndarray] | None = None) -> dict[str, dict[str, float]]:
  """Brain DSC and mean placement error of each method, mean over ``volumes``.

  ``gradients`` (one (S, H, W) guided gradient image per volume) skips the
  saliency pass when given.
  """
  from rodent_gbp import pipeline

  params = ctx.params if params is None else params
  per: dict[str, list[tuple[float, float]]] = {m: [] for m in methods}
  for i, v in enumerate(volumes):
    images = v.image[..., None].astype(np.float32)
    cache = {} if gradients is None else {"guided": gradients[i]}
    truth = placement.true_displacements(pipeline.recorded_displacement(v),
                                         ctx.bank.displacements, cbank.masks().to_reference)
    for name, changes in methods.items():
      o = dataclasses.replace(placement.IMPROVED, **changes)
      cands, choice = cbank.for_options(o)
      sig = placement.signal_for(ctx.model, params, images, o, cache=cache,
                                 batch_size=ctx.batch_size)
      pl = placement.place_improved(sig, images[..., 0], cands, choice, o)
      per[name].append(placement.placement_quality(pl, v, truth))
  return {m: {"brain_dsc": float(np.mean([x[0] for x in r])),
              "mean_abs_error_px": float(np.nanmean([x[1] for x in r]))}
          for m, r in per.items()}


def candidate_bank(ctx: Context, params=None) -> placement.CandidateBank:
  """Candidates with the reference's appearance under ``params`` (default: trained)."""
  params = ctx.params if params is None else params
  app, available = placement.bank_appearance(ctx.model, params, ctx.bank, ctx.volumes,
                                             batch_size=ctx.batch_size)
  return placement.CandidateBank(ctx.bank, appearance=app, available=available,
                                 scales=placement.IMPROVED.scales)


def robustness(ctx: Context, cbank: placement.CandidateBank, *,
               shifts: Sequence[float] = (0, 2, 4, 8, 12, 16),
               alphas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 3.0),
               log: Callable[[str], None] = print) -> dict[str, Any]:
  """Placement quality against extra displacement and artifact strength."""
  out: dict[str, Any] = {"displacement": [], "artifact": []}
  for size in shifts:
    rows = [place_all(ctx, [shifted_volume(v, d) for v in ctx.test], cbank)
            for d in diagonal_shifts(size)]
    row = {m: {k: float(np.mean([r[m][k] for r in rows])) for k in rows[0][m]}
           for m in rows[0]}
    out["displacement"].append({"size_px": float(size), "shifts": diagonal_shifts(size), **row})
    log(f"displacement +{size:g} px: " + ", ".join(
        f"{m} {row[m]['brain_dsc']:.4f}" for m in row))
  for alpha in alphas:
    row = place_all(ctx, [artifact_volume(v, alpha) for v in ctx.test], cbank)
    out["artifact"].append({"alpha": float(alpha), **row})
    log(f"artifact x{alpha:g}: " + ", ".join(f"{m} {row[m]['brain_dsc']:.4f}" for m in row))
  return out


# --------------------------------------------------------------------------
# Cascading randomisation (saliency sanity check).
# --------------------------------------------------------------------------


def layers_from_top(params: Mapping[str, Any]) -> list[str]:
  """The U-Net's conv layers from the output down (head, up0_*, ..., down0_*)."""
  names = list(params)

  def depth_key(name: str):
    if name == "head":
      return (0, 0, 0)
    part, conv = name.split("_conv")
    conv = -int(conv)
    if part.startswith("up"):
      return (1, int(part[2:]), conv)
    if part == "bottom":
      return (2, 0, conv)
    if part.startswith("down"):
      return (3, -int(part[4:]), conv)
    raise ValueError(f"unknown layer {name!r}")

  return sorted(names, key=depth_key)


def randomised_params(params, fresh, layers: Sequence[str]):
  """``params`` with ``layers`` taken from ``fresh`` (a new initialisation)."""
  out = dict(params)
  for name in layers:
    out[name] = fresh[name]
  return out


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Spearman rank correlation of each (H, W) pair of (S, H, W) maps; NaN if constant."""
  from scipy import stats
  ra = stats.rankdata(a.reshape(len(a), -1), axis=-1)
  rb = stats.rankdata(b.reshape(len(b), -1), axis=-1)
  ra -= ra.mean(-1, keepdims=True)
  rb -= rb.mean(-1, keepdims=True)
  den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def cascade(ctx: Context, *, steps: int = 0, seed: int = 0,
            log: Callable[[str], None] = print) -> dict[str, Any]:
  """Layer-by-layer randomisation from the top; ``steps`` > 0 evaluates that
  many depths (0 and all layers included), 0 every depth."""
  from rodent_gbp import guided
  from rodent_gbp import model as model_lib
  from rodent_gbp import pipeline

  order = layers_from_top(ctx.params)
  h, w = ctx.test[0].image.shape[-2:]
  fresh = model_lib.init_params(ctx.model, jax.random.key(seed), (h, w))
  depths = list(range(len(order) + 1))
  if steps and steps < len(depths):
    depths = sorted({int(round(x)) for x in np.linspace(0, len(order), steps)})

  def gradients(params):
    return [pipeline.run_batched(
        lambda images: guided.gradient_image(ctx.model, params, images),
        {"images": v.image[..., None].astype(np.float32)}, ctx.batch_size)["out"]
        for v in ctx.test]

  trained = gradients(ctx.params)
  rows = []
  for k in depths:
    p = randomised_params(ctx.params, fresh, order[:k])
    g = trained if k == 0 else gradients(p)
    rho = np.concatenate([spearman_rows(a, b) for a, b in zip(g, trained)])
    quality = place_all(ctx, ctx.test, candidate_bank(ctx, p), params=p,
                        methods={m: METHODS[m] for m in ("gbp_improved", "gbp_only")},
                        gradients=g)
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
  all new. Raises if ``folds`` disjoint test sets do not exist.
  """
  from rodent_gbp import data
  ids = sorted(animal_ids)
  n_test = len(data.split_animals(ids, 0)["test"])
  if folds * n_test > len(ids):
    raise ValueError(f"{folds} folds of {n_test} test animals need more than {len(ids)} animals")
  used: set[str] = set()
  out = []
  for seed in range(max_seed):
    test = data.split_animals(ids, seed)["test"]
    if used.isdisjoint(test):
      used |= set(test)
      out.append((seed, test))
      if len(out) == folds:
        return out
  raise ValueError(f"no {folds} disjoint test sets among seeds < {max_seed}")


def cross_validation(config, data_dir, out_dir, *, folds: int, epochs: int | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains and evaluates one model per fold (the main job); mean and spread."""
  from rodent_gbp import configs
  from rodent_gbp import data
  from rodent_gbp.studies import reproduce

  ids = [v.animal_id for v in data.load_dataset(data_dir)]
  runs = []
  for i, (seed, test) in enumerate(fold_seeds(ids, folds)):
    cfg = configs.override(config, split_seed=seed, epochs=epochs)
    t0 = time.time()
    res = reproduce.reproduce(cfg, pathlib.Path(out_dir) / f"fold{i}", data_dir=data_dir,
                              figures=False, log=lambda s: None)
    runs.append({"fold": i, "split_seed": seed, "test": test, "tables": res["tables"],
                 "brain": res["brain"], "seconds": time.time() - t0})
    log(f"fold {i} (test {test}): brain DSC improved "
        f"{res['brain'].get('gbp_improved', {}).get('dsc', float('nan')):.4f}, "
        f"{time.time() - t0:.0f} s")
  summary: dict[str, Any] = {"tables": {}, "brain": {}}
  for part in ("tables", "brain"):
    for way in runs[0][part]:
      if part == "tables":
        for cls in runs[0][part][way]:
          vals = [r[part][way][cls]["dsc"] for r in runs]
          summary[part].setdefault(way, {})[cls] = _mean_sd(vals)
      else:
        summary[part][way] = _mean_sd([r[part][way]["dsc"] for r in runs])
  return {"folds": runs, "summary_dsc": summary, "epochs": epochs, "config": config.name}


def _mean_sd(vals: Sequence[float | None]) -> dict[str, float]:
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
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
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


def run_study(out_dir, *, checkpoint=None, data_dir=None, config=None,
              shifts: Sequence[float] = (0, 2, 4, 8, 12, 16),
              alphas: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 3.0),
              cascade_steps: int = 0, folds: int = 0, epochs: int | None = None,
              ablation: bool = True,
              max_test_animals: int | None = None, seed: int = 0,
              log: Callable[[str], None] = print) -> dict[str, Any]:
  """The whole study; writes ``placement_study.json`` and figures to ``out_dir``.

  Args:
    out_dir: output folder (created).
    checkpoint: trained model folder; None trains ``config`` (``epochs``)
      into ``<out_dir>/model`` first.
    data_dir: dataset folder; None writes the phantom into ``<out_dir>/data``.
    config: ``configs.Config`` for training (default ``default``).
    shifts, alphas: robustness grid (empty: skip that curve).
    cascade_steps: depths of the randomisation cascade (0: every layer;
      negative: skip).
    folds: k of the cross-validation (0: skip).
    ablation: the full ablation table (``placement.ABLATION``, with the
      vanilla-gradient and deconvnet rows the main job leaves out).
    max_test_animals: use only the first test animals (quick runs).
  """
  from rodent_gbp import configs
  from rodent_gbp import phantom
  from rodent_gbp.studies import report

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  config = configs.get_config("default") if config is None else config
  if epochs is not None:
    config = configs.override(config, epochs=epochs)
  if data_dir is None:
    data_dir = out / "data"
    if not any(data_dir.glob("*/meta.json")):
      phantom.write_phantom(data_dir, animals=config.animals, seed=config.phantom_seed,
                            size=config.image_size)
  timing: dict[str, float] = {}
  study: dict[str, Any] = {"options": placement.IMPROVED.to_dict(), "methods": METHODS}
  t0 = time.time()
  if checkpoint is None:
    from rodent_gbp import train
    checkpoint = train.train_and_evaluate(config, out / "model", data_dir=data_dir,
                                          log=lambda s: None).checkpoint_dir
    timing["train_s"] = time.time() - t0
  ctx = load_context(checkpoint, data_dir, max_test_animals=max_test_animals)
  study["checkpoint"] = str(checkpoint)
  study["test_animals"] = ctx.split["test"]
  if shifts or alphas:
    t0 = time.time()
    study["robustness"] = robustness(ctx, candidate_bank(ctx), shifts=shifts, alphas=alphas,
                                     log=log)
    timing["robustness_s"] = time.time() - t0
  if ablation:
    t0 = time.time()
    evals = [{"animal_id": v.animal_id,
              "gradient": placement.signal_for(
                  ctx.model, ctx.params, v.image[..., None].astype(np.float32),
                  placement.ImprovedOptions(signal="gradient"), batch_size=ctx.batch_size)}
             for v in ctx.test]
    study["ablation"] = placement.run_improved(
        ctx.model, ctx.params, ctx.bank, ctx.volumes, evals, batch_size=ctx.batch_size,
        num_classes=ctx.config.num_classes, rows=placement.ABLATION,
        log=lambda s: None)["ablation"]
    (out / "placement_ablation.md").write_text(placement.ablation_markdown(study["ablation"]))
    timing["ablation_s"] = time.time() - t0
  if cascade_steps >= 0:
    t0 = time.time()
    study["cascade"] = cascade(ctx, steps=cascade_steps, seed=seed, log=log)
    timing["cascade_s"] = time.time() - t0
  if folds:
    t0 = time.time()
    study["cross_validation"] = cross_validation(config, data_dir, out / "folds",
                                                 folds=folds, epochs=epochs, log=log)
    timing["cross_validation_s"] = time.time() - t0
  study["timing"] = timing
  study["figures"] = _figures(out, study)
  fileio.write_json(out / "placement_study.json", study)
  log(f"wrote placement_study.json and {len(study['figures'])} figures to {out} "
      f"({', '.join(f'{k} {v:.0f}' for k, v in timing.items())})")
  return study
