"""The saliency sanity check on real test animals: cascading randomisation.

Adebayo et al. (2018), "Sanity checks for saliency maps": a map that explains
the network must change when the network's weights do. The tissue network's
layers are re-initialised cumulatively from the top (output) layer down
(``common.randomise.layers_from_top``: head, then the expansion from the
last level up, the bottleneck, the contraction from the deepest level up),
each with its own initializer (the U-Net's ``init`` under one fixed seed, so
a layer's fresh params are the same at every step). At every step the
gradient image of each method (guided, vanilla, deconvnet) and target score
(probability, the paper's, and logit) is computed on the raw test slices and
compared with the trained network's by Spearman rank correlation
(``scipy.stats.spearmanr`` over the pixels of each slice).

What is correlated is the gradient image as the placers use it:
``G = sum_{c in gradient_classes} |saliency_c|`` (the config's classes, WM,
GM and CSF by default), i.e. absolute maps summed over the tissue classes.
The mean is over the test slices that contain brain (slices whose two maps
are constant, rho undefined, are left out and counted).

After full randomisation the saliency placers ``gbp`` and ``gbp_improved``
(``placement.place``) run with the randomised params in a copy of the bundle
whose raw-slice appearance (what ``gbp_improved`` locates with) is
recomputed under them (``common.randomise.with_params``); their brain DSC
against the true brain mask is reported beside the trained network's, for
both scores (the bundle's config with ``saliency_score`` replaced; the
paper's template, the bank's skull-stripped gradient images, stays the
trained network's).

Writes ``sanity.json``, ``sanity.md`` and ``sanity_maps.png`` (one slice's
maps as the layers are randomised) to ``out_dir``, atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rodent_gbp import fileio
from rodent_gbp import guided
from rodent_gbp import metrics
from rodent_gbp import placement
from rodent_gbp import scan
from rodent_gbp.errors import UsageError
from rodent_gbp.studies.common import context
from rodent_gbp.studies.common.gradients import gradient_images
from rodent_gbp.studies.common.randomise import (cascade_params, fresh_params, layers_from_top,
                                                 spearman_rows, with_params)
from rodent_gbp import bundle as bundle_lib
from rodent_gbp import candidates as candidates_lib
from rodent_gbp import configs
from rodent_gbp import search
from rodent_gbp.errors import DataError

_LOG = logging.getLogger(__name__)

METHODS = ("guided", "vanilla", "deconvnet")
SCORES = guided.SCORES
PLACERS = ("gbp", "gbp_improved")


def correlations(maps: np.ndarray, trained: np.ndarray, keep: np.ndarray) -> dict[str, Any]:
  """Spearman rho per slice of ``keep`` (slices with brain): mean, min, counts."""
  rho = spearman_rows(np.asarray(maps, np.float64)[keep], np.asarray(trained, np.float64)[keep])
  ok = np.isfinite(rho)
  return {"spearman_mean": float(np.mean(rho[ok])) if ok.any() else float("nan"),
          "spearman_min": float(np.min(rho[ok])) if ok.any() else float("nan"),
          "slices": int(keep.sum()), "undefined": int((~ok).sum())}


def check_choices(methods: Sequence[str], scores: Sequence[str]) -> None:
  """Raises UsageError for an unknown method or score, or an empty list."""
  bad = [m for m in methods if m not in guided.METHODS or m == "smoothgrad"]
  if not methods or bad:
    raise UsageError(f"methods must be some of {', '.join(METHODS)}; got {list(methods)}")
  bad = [s for s in scores if s not in SCORES]
  if not scores or bad:
    raise UsageError(f"scores must be some of {', '.join(SCORES)}; got {list(scores)}")


def depths_of(n_layers: int, steps: int) -> list[int]:
  """Layer counts evaluated: every one (``steps`` 0) or ``steps`` of them, 0 and all included."""
  depths = list(range(n_layers + 1))
  if steps and steps < len(depths):
    depths = sorted({int(round(x)) for x in np.linspace(0, n_layers, max(steps, 2))})
  return depths


def cascade_maps(model, params, images: np.ndarray, brain: np.ndarray, *, fresh,
                 order: Sequence[str], depths: Sequence[int],
                 methods: Sequence[str] = METHODS, scores: Sequence[str] = SCORES,
                 classes: Sequence[int] = (1, 2, 3), batch_size: int = 40,
                 figure_slice: int | None = None,
                 log: Callable[[str], None] = _LOG.info) -> tuple[list[dict], dict]:
  """The cascade on slices (N, H, W) with brain flags (N,).

  Returns:
    (rows, figure maps): one row per depth ``{"layers_randomised",
    "top_layer", "<method>/<score>": correlations(...)}``; figure maps
    ``{(method, score): [(H, W) per depth]}`` of slice ``figure_slice``.
  """
  keep = np.asarray(brain, bool)
  trained = {(m, s): gradient_images(model, params, images, method=m, score=s,
                                     classes=classes, batch_size=batch_size)
             for m in methods for s in scores}
  rows, shown = [], {key: [] for key in trained}
  for k in depths:
    p = cascade_params(params, fresh, order, k)
    row: dict[str, Any] = {"layers_randomised": int(k),
                           "top_layer": order[k - 1] if k else None}
    for key, t in trained.items():
      g = t if k == 0 else gradient_images(model, p, images, method=key[0], score=key[1],
                                           classes=classes, batch_size=batch_size)
      row[f"{key[0]}/{key[1]}"] = correlations(g, t, keep)
      if figure_slice is not None:
        shown[key].append(np.asarray(g[figure_slice], np.float32))
    rows.append(row)
    log(f"sanity: {k} layers randomised ({row['top_layer']}): " + ", ".join(
        f"{name} {row[name]['spearman_mean']:.3f}" for name in row if "/" in name))
  return rows, shown


def with_score(bundle, score: str):
  """``bundle`` whose tissue config's ``saliency_score`` is ``score`` (own placer cache)."""
  net = bundle.network("tissue")
  cfg = configs.override(net.config, saliency_score=score)
  return dataclasses.replace(
      bundle, networks={**bundle.networks, "tissue": dataclasses.replace(net, config=cfg)},
      cache={})


def placer_dice(volumes: Sequence, bundle, placers: Sequence[str] = PLACERS
                ) -> dict[str, dict[str, Any]]:
  """Brain DSC of each placer per volume and their mean (and, for placers
  that report one, the located volume displacement per animal)."""
  out, vd, loc, fin = {}, {}, {}, {}
  n_bank = bundle.bank.masks.shape[1]
  for name in placers:
    per = {}
    for v in volumes:
      pl = placement.place(name, v.image, bundle=bundle,
                           slice_index=scan.bank_slice_index(len(v.image), n_bank))
      per[v.animal_id] = metrics.mask_dice(pl.mask, v.brainmask)
      if isinstance(pl.details, placement.SearchDetails):
        # The one rigid shift per volume the GBP image locates (gbp_improved):
        # the intensity search within a few pixels of it does the rest.
        vd.setdefault(name, {})[v.animal_id] = [
            int(d) for d in np.asarray(pl.details.volume_displacement)]
        # After the local search around it (volume mode: one shift for all
        # slices; the most common row is reported), the centre of the choice.
        rows, counts = np.unique(np.asarray(pl.details.located).reshape(-1, 2), axis=0,
                                 return_counts=True)
        loc.setdefault(name, {})[v.animal_id] = [int(d) for d in rows[np.argmax(counts)]]
        rows, counts = np.unique(np.asarray(pl.displacement).reshape(-1, 2), axis=0,
                                 return_counts=True)
        fin.setdefault(name, {})[v.animal_id] = [int(d) for d in rows[np.argmax(counts)]]
    out[name] = {"brain_dsc": float(np.mean(list(per.values()))), "per_animal": per}
    if name in vd:
      out[name]["volume_displacement"] = vd[name]
      out[name]["located_displacement"] = loc[name]
      out[name]["final_displacement"] = fin[name]
  return out


def zero_displacement_dice(volumes: Sequence, bundle) -> dict[str, Any]:
  """Brain DSC of ``gbp_improved``'s choice stage searched around a zero shift.

  ``gbp_improved`` locates one rigid displacement per volume with the GBP
  image and then scores every candidate against the plain intensity within
  ``choice_radius`` of it (``search.place_improved``). Running that second
  stage around displacement 0 (no saliency at all) tells whether the located
  shift matters on a set of nearly aligned scans.
  """

  opts = placement.IMPROVED
  _, choice = placement.candidate_bank(bundle).for_options(opts)
  n_bank = bundle.bank.masks.shape[1]
  per = {}
  for v in volumes:
    images = np.asarray(v.image, np.float32)
    out = search.place_volume(
        images, choice, dataclasses.replace(
            opts, signal="intensity", template="mask", margin=opts.choice_margin,
            score="zncc", radius=opts.choice_radius),
        centre=np.zeros((len(images), 2), np.int32),
        slice_index=scan.bank_slice_index(len(images), n_bank))
    mask = np.asarray(candidates_lib.dilate(out["placed"], opts.dilate))
    per[v.animal_id] = metrics.mask_dice(mask, v.brainmask)
  return {"brain_dsc": float(np.mean(list(per.values()))), "per_animal": per}


def _figure(path, image: np.ndarray, shown: Mapping, depths: Sequence[int],
            order: Sequence[str]) -> pathlib.Path:
  from rodent_gbp.figures import plt
  keys = list(shown)
  cols = len(depths) + 1
  fig, axes = plt.subplots(len(keys), cols, figsize=(1.6 * cols, 1.7 * len(keys)),
                           squeeze=False)
  for r, key in enumerate(keys):
    # Slices are (H = R-L, W = S-I): shown transposed, superior up (as qc.show).
    axes[r, 0].imshow(image.T, cmap="gray", origin="lower")
    axes[r, 0].set_ylabel(f"{key[0]}\n{key[1]}", fontsize=7)
    for c, (k, g) in enumerate(zip(depths, shown[key])):
      ax = axes[r, c + 1]
      ax.imshow(g.T, cmap="magma", vmin=0, vmax=float(np.percentile(g, 99.5)) or 1.0,
                origin="lower")
      if r == 0:
        ax.set_title("trained" if k == 0 else f"-{order[k - 1]}\n({k})", fontsize=6)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_title("input", fontsize=6)
  fig.suptitle("gradient image as the top layers are randomised (cumulative)", fontsize=8)
  fig.tight_layout()
  # dpi 60: the grid of small maps stays readable and the PNG < 300 kB.
  with fileio.atomic_path(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=60)
  plt.close(fig)
  return pathlib.Path(path)


def markdown(report: Mapping[str, Any]) -> str:
  """``sanity.md``: the correlation table per depth and the placers' brain DSC."""
  keys = [f"{m}/{s}" for m in report["methods"] for s in report["scores"]]
  lines = [
      "# Saliency sanity check: cascading randomisation (Adebayo et al. 2018)", "",
      f"Model `{report['checkpoint']}`, data `{report['data_dir']}`, animals "
      f"{', '.join(report['animals'])} ({report['slices_with_brain']} slices with brain of "
      f"{report['slices']}); layers re-initialised cumulatively from the top (seed "
      f"{report['seed']}).", "",
      "Spearman rank correlation with the trained network's map, of the gradient image "
      f"as the placers use it (sum of |map| over classes {report['classes']}), per slice, "
      "mean over slices with brain:", "",
      "| layers randomised | top layer | " + " | ".join(keys) + " |",
      "|---|---|" + "---|" * len(keys)]
  for row in report["rows"]:
    lines.append(f"| {row['layers_randomised']} | {row['top_layer'] or 'none (trained)'} | "
                 + " | ".join(f"{row[k]['spearman_mean']:.3f}" for k in keys) + " |")
  pd = report.get("placers")
  if pd:
    lines += ["", "Brain DSC of the saliency placers (mean over the animals), trained "
              "network against every layer randomised:", "",
              "| placer | score | trained | randomised |", "|---|---|---|---|"]
    for name in report["placer_names"]:
      for s in report["scores"]:
        lines.append(f"| `{name}` | {s} | {pd['trained'][s][name]['brain_dsc']:.4f} | "
                     f"{pd['randomised'][s][name]['brain_dsc']:.4f} |")
    gi = lambda when, s: pd[when][s].get("gbp_improved", {})
    vd_rows = [(s, a, gi("trained", s)["volume_displacement"][a],
                gi("randomised", s)["volume_displacement"][a],
                gi("trained", s)["located_displacement"][a],
                gi("randomised", s)["located_displacement"][a],
                gi("trained", s)["final_displacement"][a],
                gi("randomised", s)["final_displacement"][a])
               for s in report["scores"] if "volume_displacement" in gi("trained", s)
               for a in report["animals"]]
    if vd_rows:
      lines += ["", "`gbp_improved` uses the GBP image only to locate one rigid displacement "
                "per volume (pixels, y x: the PSR-weighted median of the per-slice peaks, then "
                "a local search around it); the mask is then chosen by an intensity search "
                f"within {placement.IMPROVED.choice_radius} px of the located shift. Located "
                "shifts that differ by no more than that search radius can end on the same "
                "final shift and mask (most common row over the slices):", "",
                "| score | animal | coarse trained | coarse randomised | located trained "
                "| located randomised | final trained | final randomised |",
                "|---|---|---|---|---|---|---|---|"]
      lines += [f"| {s} | {a} | {tuple(t)} | {tuple(r)} | {tuple(lt)} | {tuple(lr)} "
                f"| {tuple(ft)} | {tuple(fr)} |" for s, a, t, r, lt, lr, ft, fr in vd_rows]
    zd = report.get("zero_displacement")
    if zd:
      lines += ["", f"The same intensity search around displacement (0, 0), no saliency: brain "
                f"DSC {zd['brain_dsc']:.4f} (" + ", ".join(
                    f"{a} {d:.4f}" for a, d in zd["per_animal"].items()) + ")."]
  return "\n".join(lines) + "\n"


def run(model_dir, out_dir, *, data_dir=None, animals: Sequence[str] | None = None,
        methods: Sequence[str] = METHODS, scores: Sequence[str] = SCORES, steps: int = 0,
        seed: int = 0, placers: bool = True, figure: bool = True,
        log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """The sanity check; writes ``sanity.json``, ``sanity.md``, ``sanity_maps.png``.

  Args:
    model_dir: a model bundle folder (``<workdir>/model``).
    out_dir: output folder (created once the inputs are checked).
    data_dir: dataset folder (default ``<model_dir>/../data``).
    animals: animal ids (default the bundle split's test animals).
    methods, scores: saliency methods and targets.
    steps: number of depths evaluated (0: every one; 0 and all layers always).
    seed: seed of the fresh initialisation.
    placers: also report the saliency placers' brain DSC.
    figure: write the figure.

  Raises:
    UsageError: an unknown method or score, negative steps; CheckpointError,
    DataError: from ``context.load_context``, or an animal without a brain mask.
  """
  methods, scores = list(methods), list(scores)
  check_choices(methods, scores)
  if steps < 0:
    raise UsageError(f"steps must be 0 (every layer) or more, got {steps}")
  b0 = bundle_lib.load_bundle(model_dir)
  wanted = list(animals) if animals else list((b0.split or {}).get("test", []))
  bank = b0.bank
  avail = (np.flatnonzero(bank.appearance_available) if bank.appearance_available is not None
           else [bank.reference])
  extra = [bank.animal_ids[i] for i in avail] if placers else []
  ctx = context.load_context(model_dir, data_dir,
                             animals=list(dict.fromkeys(wanted + extra)))
  test = [ctx.volumes[a] for a in wanted]
  if not test:
    raise UsageError("no animals to check (pass --animals)")
  for v in test:
    if v.brainmask is None:
      raise DataError(f"{ctx.data_dir / v.animal_id}: no brain mask")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  net = ctx.bundle.network("tissue")
  cfg = net.config
  order = layers_from_top(net.params)
  fresh = fresh_params(net.model, ctx.bundle.slice_shape, seed)
  depths = depths_of(len(order), steps)
  images = np.concatenate([v.image for v in test]).astype(np.float32)
  brain = np.concatenate([v.brainmask.reshape(len(v.image), -1).any(-1) for v in test])
  area = np.concatenate([v.brainmask.reshape(len(v.image), -1).sum(-1) for v in test])
  shown_slice = int(np.argmax(area))
  rows, shown = cascade_maps(net.model, net.params, images, brain, fresh=fresh, order=order,
                             depths=depths, methods=methods, scores=scores,
                             classes=cfg.gradient_classes, batch_size=cfg.eval_batch_size,
                             figure_slice=shown_slice if figure else None, log=log)
  report: dict[str, Any] = {
      "checkpoint": str(model_dir), "data_dir": str(ctx.data_dir), "animals": wanted,
      "methods": methods, "scores": scores, "seed": seed, "order": order,
      "classes": list(cfg.gradient_classes), "slices": int(len(images)),
      "slices_with_brain": int(brain.sum()),
      "correlated": "Spearman rho per slice of the gradient image sum_c |map_c| over "
                    "`classes` (the placers' input), mean over slices with brain",
      "rows": rows, "placer_names": list(PLACERS) if placers else []}
  if placers:
    full = cascade_params(net.params, fresh, order, len(order))
    report["placers"] = {"trained": {}, "randomised": {}}
    for s in scores:
      bs = with_score(ctx.bundle, s)
      trained_b = bs if s == cfg.saliency_score else with_params(bs, net.params, ctx.volumes)
      report["placers"]["trained"][s] = placer_dice(test, trained_b)
      report["placers"]["randomised"][s] = placer_dice(test, with_params(bs, full,
                                                                         ctx.volumes))
      log(f"sanity: placers ({s}) trained " + ", ".join(
          f"{k} {v['brain_dsc']:.4f}" for k, v in report["placers"]["trained"][s].items())
          + "; randomised " + ", ".join(
          f"{k} {v['brain_dsc']:.4f}" for k, v in report["placers"]["randomised"][s].items()))
    report["zero_displacement"] = zero_displacement_dice(test, ctx.bundle)
    log(f"sanity: gbp_improved's intensity search around (0, 0): brain DSC "
        f"{report['zero_displacement']['brain_dsc']:.4f}")
  files = ["sanity.json", "sanity.md"]
  if figure:
    v_index = np.cumsum([len(v.image) for v in test])
    a = int(np.searchsorted(v_index, shown_slice, side="right"))
    report["figure_slice"] = {"animal": test[a].animal_id,
                              "slice": int(shown_slice - (v_index[a - 1] if a else 0))}
    _figure(out / "sanity_maps.png", images[shown_slice],
            {k: shown[k] for k in shown}, depths, order)
    files.append("sanity_maps.png")
  report["files"] = files
  fileio.write_json(out / "sanity.json", report)
  fileio.atomic_write_text(out / "sanity.md", markdown(report))
  log(f"sanity: wrote {', '.join(files)} to {out}")
  return report
