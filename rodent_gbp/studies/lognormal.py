"""Is the GBP gradient image log-normal? (paper section 4.3, Fig. 5, Conclusion).

The paper's enhancement (linear expansion, log, z-score, Eq. 1) rests on the
hypothesis that gradient-image magnitudes follow a log-normal law; the paper
shows only a histogram. This module tests the hypothesis against the obvious
alternatives by maximum likelihood:

* ``fit_families`` (``rodent_gbp.distributions``, as is ``summarise``) fits
  log-normal, normal, gamma, Weibull and exponential laws to one set of
  positive samples (``scipy.stats`` ``fit``; location fixed at 0 for the
  positive families, free for the normal) and reports per family the
  log-likelihood, AIC, BIC and the Kolmogorov-Smirnov distance, plus an
  Anderson-Darling test of normality of ``log x``, the AIC winner and its
  margin over the runner-up.
* ``summarise`` aggregates per-slice verdicts (fraction of slices each
  family wins, median AIC margins).
* :func:`lognormal_study` runs both over stacks of gradient images (per slice
  and pooled, per class target, trained vs randomly initialised network) and
  returns a JSON-able report; :func:`report_markdown` renders it.
* ``plot_lognormal`` draws the paper's Fig. 5 a-d histograms and a Q-Q plot
  of the log magnitudes against the normal, ``plot_slice_fits`` one slice's
  fitted laws (both in ``studies.common.lognormal_figures``).
* :func:`run_experiment` wires a model bundle, its test slices and the
  saliency module into the study (used by ``experiments/lognormal.py``); the
  per-class gradient images are ``studies.common.gradients.gradient_stacks``,
  the random network ``studies.common.randomise.fresh_params``.

Two quantities, named in every report (:data:`QUANTITIES`):

* ``magnitude``: the gradient magnitudes ``G > 0`` of a slice, exact zeros
  dropped and counted. The families are fitted to ``G``; "log-normal wins"
  means "G is log-normal".
* ``eq1_log``: what Eq. 1 z-scores, ``q = ln(1 + 255 G~)`` of the *whole*
  slice with ``G~ = (G - min G) / (max G - min G)`` per slice (the pipeline's
  ``enhance.enhancement_steps``; equal to ``G / max G`` whenever the slice has
  a zero pixel, which they all do here). The z-score presumes ``q`` normal,
  i.e. ``y = 1 + 255 G~`` log-normal. Zeros of ``G~`` are *not* dropped:
  they are ``y = 1`` (``q = 0``) exactly, an atom of the empirical law, and
  their fraction is reported. All families are fitted to ``y >= 1`` (> 0, so
  every positive family takes every pixel, zeros included, with location 0):
  log-normal on ``y`` is exactly normal on ``q``, and one more family,
  ``logskewnormal`` (``q`` skew-normal, 3 parameters), asks whether a skewed
  law of ``q`` does better. Likelihoods are all densities of ``y``, so the
  AIC ranking is coherent (for ``q``-laws the Jacobian ``-sum ln y`` is the
  same for every family). No continuous law has an atom; with a large zero
  fraction every family is rejected by the goodness-of-fit tests, and that
  is the honest answer for Eq. 1's premise (the atom is part of what the
  z-score sees).

Goodness of fit with a stated critical value: the Anderson-Darling
statistic of ``ln x`` against the normal with mean and variance estimated
(critical values of Stephens 1974 for that case, 5 % level 0.752 /
(1 + 0.75/n + 2.25/n^2)); on ``magnitude`` that tests "G log-normal", on
``eq1_log`` "q normal". With 10^4 pixels it rejects nearly any real law, so
the parametric-bootstrap KS p-value of the log-normal (refit per resample,
``bootstrap`` resamples on a ``bootstrap_samples`` subsample, pooled fits
only) is reported beside it.

Everything except :func:`run_experiment` is host-side numpy / scipy.

Why no plain KS p-values: the KS null distribution assumes a *fully specified*
law. Once the parameters are estimated from the same data, the fitted law
hugs the sample, the statistic is biased low and the tabulated p-values are far
too large (Lilliefors); and with 10^5 pixels any real data rejects any simple
law anyway. So the KS statistic is reported as a *distance* (comparable across
families), and a p-value only from a parametric bootstrap (refit on every
resample) on a small subsample, if asked for.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rodent_gbp import configs
from rodent_gbp import fileio
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp.distributions import (EQ1_FAMILIES, FAMILIES, MEANING, MIN_SAMPLES, QUANTITIES,
                                      check_families, fit_families, summarise)
from rodent_gbp.studies.common import context
from rodent_gbp.studies.common.gradients import eq1_values, gradient_stacks
from rodent_gbp.studies.common.lognormal_figures import plot_lognormal, plot_slice_fits
from rodent_gbp.studies.common.randomise import fresh_params

_LOG = logging.getLogger(__name__)


def _slice_row(index: int, n_zero: int, n_pixels: int,
               verdict: Mapping[str, Any] | None, reason: str | None) -> dict[str, Any]:
  """Compact per-slice record (the full verdicts would bloat the JSON)."""
  row: dict[str, Any] = {"slice": index, "n_pixels": n_pixels, "n_zero": n_zero}
  if verdict is None:
    row["skipped"] = reason
    return row
  row.update(
      winner=verdict["winner"],
      aic_margin=verdict["aic_margin"],
      delta_aic=verdict["delta_aic"],
      ks={f: r["ks"] for f, r in verdict["families"].items()},
      anderson_log_statistic=verdict["anderson_log"]["statistic"],
      lognormal=verdict["families"].get("lognormal", {}).get("params"),
  )
  return row


def study_target(stack: Any, *, families: Sequence[str] | None = None,
                 quantity: str = "magnitude",
                 max_pixels: int | None = 20000, slice_max_pixels: int | None = None,
                 seed: int = 0, bootstrap: int = 0,
                 bootstrap_samples: int = 1000) -> dict[str, Any]:
  """Per-slice and pooled verdicts for one stack of gradient images (S, H, W).

  ``quantity="magnitude"``: zero pixels are excluded from every fit and
  counted (per slice and in total). ``quantity="eq1_log"``: every pixel of a
  slice is fitted as ``y = 1 + 255 G~`` (:func:`eq1_values`); the "zero"
  count is the pixels with ``G~ = 0`` (``q = 0``), which stay in the fits.
  Slices that cannot be fitted are skipped with a reason.
  """
  if quantity not in QUANTITIES:
    raise UsageError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
  if families is None:
    families = FAMILIES if quantity == "magnitude" else EQ1_FAMILIES
  g = np.asarray(stack, dtype=np.float64)
  if g.ndim != 3:
    raise DataError(f"expected gradient images (S, H, W), got shape {g.shape}")
  if quantity == "magnitude":
    zeros_per_slice = [int(z) for z in np.sum(g == 0, axis=(1, 2))]
    values = list(g)
    zeros = "exclude"
  else:
    values = [eq1_values(s) for s in g]
    zeros_per_slice = [int(s.size) if y is None else int(np.sum(y == 1.0))
                       for s, y in zip(g, values)]
    zeros = "error"  # y >= 1: a zero here would be a bug
  rows, verdicts = [], []
  for i in range(g.shape[0]):
    try:
      if values[i] is None:
        raise DataError("constant slice: G~ undefined")
      v = fit_families(values[i], families=families, zeros=zeros,
                       max_samples=slice_max_pixels, seed=seed + i)
      reason = None
    except DataError as e:
      v, reason = None, str(e)
    verdicts.append(v)
    rows.append(_slice_row(i, zeros_per_slice[i], int(g[i].size), v, reason))
  try:
    fitted = [y for y in values if y is not None]
    if not fitted:
      raise DataError("no slice with a defined G~")
    pooled = fit_families(np.concatenate([np.ravel(y) for y in fitted]), families=families,
                          zeros=zeros, max_samples=max_pixels, seed=seed, bootstrap=bootstrap,
                          bootstrap_samples=bootstrap_samples,
                          bootstrap_families=("lognormal",) if "lognormal" in families
                          else None)
    if quantity == "eq1_log":
      # The pooled fit took every pixel: report the q = 0 atom it contained.
      pooled["n_zero_q"] = int(sum(z for z, y in zip(zeros_per_slice, values) if y is not None))
  except DataError as e:
    pooled = {"skipped": str(e)}
  total = int(g.size)
  n_zero = int(sum(zeros_per_slice))
  return {
      "quantity": quantity,
      "shape": list(g.shape),
      "zero_pixels": {"count": n_zero, "total": total, "fraction": n_zero / total,
                      "per_slice": zeros_per_slice,
                      "meaning": ("G == 0, excluded from the fits" if quantity == "magnitude"
                                  else "G~ == 0 (q = 0, y = 1), included in the fits")},
      "pooled": pooled,
      "slices": summarise(verdicts),
      "per_slice": rows,
  }


def lognormal_study(gradients: Mapping[str, Mapping[str, Any]], *,
                    families: Sequence[str] | None = None, quantity: str = "magnitude",
                    max_pixels: int | None = 20000,
                    slice_max_pixels: int | None = None, seed: int = 0,
                    bootstrap: int = 0, bootstrap_samples: int = 1000) -> dict[str, Any]:
  """The log-normal study over gradient images (paper section 4.3, Fig. 5).

  Args:
    gradients: ``{network: {target: (S, H, W) magnitudes}}``, e.g.
      ``{"trained": {"sum": G, "wm": ..., "gm": ..., "csf": ...},
      "random": {...}}`` for the test slices; magnitudes >= 0.
    families: families to compare (default :data:`FAMILIES` for
      ``magnitude``, :data:`EQ1_FAMILIES` for ``eq1_log``).
    quantity: ``"magnitude"`` or ``"eq1_log"`` (module docstring).
    max_pixels: pooled fits use a seeded subsample of this many pixels
      (``None``: all).
    slice_max_pixels: same per slice (``None``: every pixel of the slice).
    seed: subsample seed.
    bootstrap: parametric-bootstrap resamples for the pooled log-normal KS
      p-value (0 off), on ``bootstrap_samples`` pixels.
    bootstrap_samples: subsample size of the bootstrap.

  Returns:
    JSON-able ``{"quantity", "meaning", "families", "settings", "networks":
    {network: {target: {"shape", "zero_pixels", "pooled", "slices",
    "per_slice"}}}, "verdict": {network: {target: {...}}}}``: ``pooled`` is a
    :func:`fit_families` verdict, ``slices`` a :func:`summarise` of the
    per-slice verdicts, ``per_slice`` a compact row per slice, ``verdict``
    the headline numbers.
  """
  if quantity not in QUANTITIES:
    raise UsageError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
  families = check_families(
      (FAMILIES if quantity == "magnitude" else EQ1_FAMILIES) if families is None
      else families)
  networks: dict[str, Any] = {}
  verdict: dict[str, Any] = {}
  for net, targets in gradients.items():
    networks[net], verdict[net] = {}, {}
    for target, stack in targets.items():
      r = study_target(stack, families=families, quantity=quantity, max_pixels=max_pixels,
                       slice_max_pixels=slice_max_pixels, seed=seed, bootstrap=bootstrap,
                       bootstrap_samples=bootstrap_samples)
      networks[net][target] = r
      pooled, sl = r["pooled"], r["slices"]
      ad = pooled.get("anderson_log", {})
      crit5 = [c for c, lv in zip(ad.get("critical_values", []),
                                   ad.get("significance_levels", [])) if lv == 5.0]
      boot = pooled.get("families", {}).get("lognormal", {}).get("ks_bootstrap")
      verdict[net][target] = {
          "quantity": quantity,
          "pooled_winner": pooled.get("winner"),
          "pooled_runner_up": pooled.get("runner_up"),
          "pooled_aic_margin": pooled.get("aic_margin"),
          "pooled_delta_aic": pooled.get("delta_aic"),
          "pooled_anderson_log_statistic": ad.get("statistic"),
          "pooled_anderson_log_critical_5pct": crit5[0] if crit5 else None,
          "pooled_anderson_log_n": pooled.get("n_fitted"),
          "pooled_lognormal_ks_bootstrap": boot,
          "slice_win_fraction": sl.get("win_fraction"),
          "slice_median_aic_margin": sl.get("median_aic_margin"),
          "slice_median_aic_vs_lognormal": sl.get("median_aic_vs_lognormal"),
          "slice_anderson_log_reject_5pct_fraction": sl.get(
              "anderson_log_reject_5pct_fraction"),
          "slice_median_anderson_log_statistic": sl.get("median_anderson_log_statistic"),
          "n_slices_fitted": sl.get("n"),
          "zero_pixel_fraction": r["zero_pixels"]["fraction"],
      }
      verdict[net][target]["sentence"] = verdict_sentence(verdict[net][target])
  return {
      "quantity": quantity,
      "meaning": MEANING[quantity],
      "families": list(families),
      "settings": {"max_pixels": max_pixels, "slice_max_pixels": slice_max_pixels,
                   "seed": seed, "bootstrap": bootstrap,
                   "bootstrap_samples": bootstrap_samples,
                   "zeros": ("exclude (counted)" if quantity == "magnitude"
                             else "included as y = 1 (q = 0), counted")},
      "networks": networks,
      "verdict": verdict,
  }


def family_label(family: str, quantity: str) -> str:
  """What a family fitted to the quantity's variable says, in words."""
  if quantity == "magnitude":
    return f"G {family}"
  return {"lognormal": "q normal", "logskewnormal": "q skew-normal"}.get(
      family, f"1 + 255 G~ {family}")


def verdict_sentence(v: Mapping[str, Any]) -> str:
  """One sentence on a verdict row, naming the quantity it is about."""
  quantity = v["quantity"]
  subject = ("magnitude G > 0" if quantity == "magnitude"
             else "eq1_log q = ln(1 + 255 G~), zeros included")
  hyp = family_label("lognormal", quantity)
  if v.get("pooled_winner") is None:
    return f"{subject}: not fitted."
  wf = v.get("slice_win_fraction") or {}
  ln_frac = wf.get("lognormal", 0.0)
  ad, crit = v.get("pooled_anderson_log_statistic"), v.get("pooled_anderson_log_critical_5pct")
  ad_txt = ("" if ad is None or crit is None else
            f"; Anderson-Darling of {hyp} {ad:.1f} vs 5 % critical {crit:.3f} "
            f"(n = {v.get('pooled_anderson_log_n')}): "
            + ("rejected" if ad > crit else "not rejected"))
  boot = v.get("pooled_lognormal_ks_bootstrap")
  boot_txt = ("" if not boot else
              f"; bootstrap KS p = {boot['pvalue']:.3f} (n = {boot['n']}, "
              f"{boot['n_boot']} resamples)")
  best = v["pooled_winner"]
  if best == "lognormal":
    rank = f"pooled AIC ranks {hyp} first (margin {v['pooled_aic_margin']:.0f})"
  else:
    rank = (f"pooled AIC prefers {family_label(best, quantity)} to {hyp} "
            f"(dAIC {v['pooled_delta_aic']['lognormal']:.0f})")
  return (f"{subject}: {rank}; {hyp} wins {100 * ln_frac:.0f} % of slices"
          f"{ad_txt}{boot_txt}.")


def _fmt(v: Any, nd: int = 1) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.{nd}f}"
  return str(v)


def report_markdown(report: Mapping[str, Any], *, title: str | None = None) -> str:
  """A Markdown summary of a :func:`lognormal_study` report."""
  fams = report["families"]
  quantity = report.get("quantity", "magnitude")
  lines = [
      title or f"# Is the GBP gradient image log-normal? quantity `{quantity}`",
      "",
      f"Quantity `{quantity}`: {report.get('meaning', MEANING[quantity])}. "
      "Maximum-likelihood fits (location 0 for the positive families); AIC = 2k - 2 logL. "
      f"Zero pixels: {report['settings']['zeros']}. KS is a distance "
      "(no plain p-value: the parameters are fitted on the same pixels). "
      "AD = Anderson-Darling of ln x against the normal, mean and variance estimated "
      "(Stephens' critical values); boot p = parametric-bootstrap KS p-value of the "
      f"log-normal ({report['settings'].get('bootstrap', 0)} resamples on "
      f"{report['settings'].get('bootstrap_samples', '-')} pixels, refit on each).",
      "",
      "## Pooled over test slices",
      "",
      "| network | target | zero px | winner | runner-up | AIC margin | "
      + " | ".join(f"dAIC {f}" for f in fams) + " | AD(ln x) | AD crit 5% | boot p |",
      "|---|---|---|---|---|---|" + "---|" * len(fams) + "---|---|---|",
  ]
  for net, targets in report["verdict"].items():
    for target, v in targets.items():
      d = v["pooled_delta_aic"] or {}
      boot = v.get("pooled_lognormal_ks_bootstrap")
      lines.append(
          f"| {net} | {target} | {100 * v['zero_pixel_fraction']:.2f}% | "
          f"{_fmt(v['pooled_winner'])} | {_fmt(v['pooled_runner_up'])} | "
          f"{_fmt(v['pooled_aic_margin'])} | "
          + " | ".join(_fmt(d.get(f)) for f in fams)
          + f" | {_fmt(v['pooled_anderson_log_statistic'], 2)}"
          f" | {_fmt(v.get('pooled_anderson_log_critical_5pct'), 3)}"
          f" | {_fmt(boot['pvalue'], 3) if boot else '-'} |")
  lines += [
      "",
      "## Per slice",
      "",
      "| network | target | slices | " + " | ".join(f"wins {f}" for f in fams)
      + " | median margin | median AIC(f) - AIC(lognormal) | AD rejects at 5% |",
      "|---|---|---|" + "---|" * len(fams) + "---|---|---|",
  ]
  for net, targets in report["verdict"].items():
    for target, v in targets.items():
      if not v["n_slices_fitted"]:
        lines.append(f"| {net} | {target} | 0 | " + " | ".join("-" for _ in fams)
                     + " | - | - | - |")
        continue
      wf = v["slice_win_fraction"] or {}
      vs = v["slice_median_aic_vs_lognormal"] or {}
      vs_txt = ", ".join(f"{f} {_fmt(vs.get(f))}" for f in fams if f != "lognormal")
      lines.append(
          f"| {net} | {target} | {v['n_slices_fitted']} | "
          + " | ".join(f"{100 * wf.get(f, 0.0):.0f}%" for f in fams)
          + f" | {_fmt(v['slice_median_aic_margin'])} | {vs_txt or '-'} | "
          + f"{100 * (v.get('slice_anderson_log_reject_5pct_fraction') or 0.0):.0f}% |")
  lines += ["", "## Verdicts", ""]
  for net, targets in report["verdict"].items():
    for target, v in targets.items():
      lines.append(f"- {net}, {target}: {v.get('sentence') or verdict_sentence(v)}")
  lines.append("")
  return "\n".join(lines)


SCORES = configs.SALIENCY_SCORES


def combined_markdown(report: Mapping[str, Any]) -> str:
  """Markdown of a :func:`run_experiment` report: headline table, then each study."""
  inp = report["inputs"]
  lines = [
      "# Is the GBP gradient image log-normal? (paper Fig. 5, Eq. 1)",
      "",
      f"Data: `{inp['data_dir']}`, animals {', '.join(inp['animals'])} "
      f"({inp['animals_from']}), {inp['n_slices']} raw slices; model `{inp['checkpoint']}`; "
      f"saliency {inp['saliency_method']}, classes {inp['classes']}; random network: "
      f"fresh init, seed {inp['random_init_seed']}.",
      "",
      "Quantities: " + "; ".join(f"`{q}`: {MEANING[q]}" for q in report["studies"]) + ". "
      "The hypothesis is G log-normal (magnitude) or q normal (eq1_log). Zero px: "
      "G == 0 (magnitude, dropped) or G~ == 0, q = 0 (eq1_log, kept in the fits). "
      "AD: Anderson-Darling of ln G resp. q against the normal with estimated mean and "
      "variance, 5 % critical value of Stephens (1974); boot KS p: parametric bootstrap, "
      "refit per resample, pooled fits only.",
      "",
      "## Verdict (target sum = G, the paper's gradient image)",
      "",
      "| quantity | score | network | zero px | slice wins (AIC) | median AIC margin "
      "| pooled winner | pooled dAIC of the hypothesis | AD(ln x) pooled vs 5% crit "
      "| slices AD-rejected | boot KS p (lognormal) | verdict |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for quantity, by_score in report["studies"].items():
    for score, study in by_score.items():
      for net, targets in study["verdict"].items():
        v = targets.get("sum")
        if v is None:
          continue
        wf = v["slice_win_fraction"] or {}
        wins = ", ".join(f"{family_label(f, quantity)} {100 * x:.0f}%" for f, x in
                         sorted(wf.items(), key=lambda kv: -kv[1]) if x > 0) or "-"
        d = (v["pooled_delta_aic"] or {}).get("lognormal")
        boot = v.get("pooled_lognormal_ks_bootstrap")
        lines.append(
            f"| {quantity} | {score} | {net} | {100 * v['zero_pixel_fraction']:.2f}% | {wins} "
            f"| {_fmt(v['slice_median_aic_margin'])} "
            f"| {family_label(v['pooled_winner'], quantity) if v['pooled_winner'] else '-'} "
            f"| {_fmt(d)} | {_fmt(v['pooled_anderson_log_statistic'], 1)} vs "
            f"{_fmt(v['pooled_anderson_log_critical_5pct'], 3)} (n={v['pooled_anderson_log_n']}) "
            f"| {100 * (v['slice_anderson_log_reject_5pct_fraction'] or 0):.0f}% "
            f"| {_fmt(boot['pvalue'], 3) if boot else '-'} | {v['sentence']} |")
  lines.append("")
  for quantity, by_score in report["studies"].items():
    for score, study in by_score.items():
      lines.append(report_markdown(
          study, title=f"## quantity `{quantity}`, score `{score}`").replace("\n## ", "\n### "))
  return "\n".join(lines)


def run_experiment(model_dir: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                   data_dir: str | pathlib.Path | None = None,
                   animals: Sequence[str] | None = None,
                   quantities: Sequence[str] = ("magnitude",),
                   scores: Sequence[str] | None = None, max_pixels: int = 20000,
                   slice_max_pixels: int | None = None, seed: int = 0, bootstrap: int = 0,
                   bootstrap_samples: int = 1000, figures: bool = True,
                   log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """The log-normal study on a model bundle's test slices (or chosen animals).

  Opens the bundle and its dataset (``context.load_context``); computes the
  gradient images of every slice of the animals per class target, per
  saliency score, for the trained params and for params freshly initialised
  from ``seed`` (same architecture); runs :func:`lognormal_study` per
  quantity and score and writes ``lognormal.json`` (strict JSON, NaN as
  null), ``lognormal.md`` and (``figures``) the PNGs into ``out_dir``.

  Args:
    model_dir: a model bundle folder (``<workdir>/model``).
    out_dir: output folder (created).
    data_dir: dataset root; ``None`` uses ``<model_dir>/../data``.
    animals: animal ids; ``None``: the bundle split's test animals.
    quantities: subset of :data:`QUANTITIES`.
    scores: saliency targets (``guided.SCORES``); ``None``: the bundle's.
    max_pixels: subsample size of the pooled fits.
    slice_max_pixels: subsample size of the per-slice fits (``None``: all).
    seed: random-network init and subsample seed.
    bootstrap: parametric-bootstrap resamples of the pooled log-normal KS
      p-value (0 off).
    bootstrap_samples: pixels subsampled for it.
    figures: write the PNGs: per score ``lognormal_<score>_fig5_<network>.png``
      and ``lognormal_<score>_qq.png`` (pooled), and
      ``lognormal_<score>_slice.png`` (:func:`plot_slice_fits` on the middle
      slice of the first animal, trained network).
    log: progress sink.

  Returns:
    The report ``{"inputs", "studies": {quantity: {score: study}}}``.

  Raises:
    CheckpointError, DataError: a missing or damaged bundle or dataset.
    UsageError: a bad quantity or score, or ``max_pixels`` /
      ``slice_max_pixels`` below the minimum sample count.
  """
  for name, n in (("max_pixels", max_pixels), ("slice_max_pixels", slice_max_pixels)):
    if n is not None and n < MIN_SAMPLES:
      raise UsageError(f"{name} must be at least {MIN_SAMPLES}, got {n}")
  quantities = tuple(quantities)
  bad = [q for q in quantities if q not in QUANTITIES] or (not quantities and ["(none)"])
  if bad:
    raise UsageError(f"quantities must be from {QUANTITIES}, got {list(quantities)}")
  ctx = context.load_context(model_dir, data_dir, animals="test" if not animals else animals)
  config = ctx.config
  scores = (config.saliency_score,) if not scores else tuple(scores)
  bad = [s for s in scores if s not in SCORES]
  if bad:
    raise UsageError(f"scores must be from {SCORES}, got {list(scores)}")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  ids = list(animals) if animals else list(ctx.split["test"])
  vols = [ctx.volumes[a] for a in ids]
  images = np.concatenate([v.image for v in vols]).astype(np.float32)[..., None]
  log(f"{images.shape[0]} slices of {ids}")

  net = ctx.bundle.network("tissue")
  model = net.model
  random_params = fresh_params(model, images.shape[1:3], seed)
  classes = tuple(config.gradient_classes)
  studies: dict[str, dict[str, Any]] = {q: {} for q in quantities}
  figure_names = []
  mid = vols[0].image.shape[0] // 2
  for score in scores:
    gradients = {}
    for name, params in (("trained", net.params), ("random", random_params)):
      gradients[name] = gradient_stacks(model, params, images, classes=classes,
                                        method=config.saliency_method, score=score,
                                        batch_size=config.eval_batch_size)
      log(f"{score}: gradient images of the {name} network: {sorted(gradients[name])}")
    for quantity in quantities:
      studies[quantity][score] = lognormal_study(
          gradients, quantity=quantity, max_pixels=max_pixels,
          slice_max_pixels=slice_max_pixels, seed=seed, bootstrap=bootstrap,
          bootstrap_samples=bootstrap_samples)
      log(f"{score}, {quantity}: done")
    if figures:
      paths = plot_lognormal({k: v["sum"] for k, v in gradients.items()}, out_dir, seed=seed,
                             prefix=f"lognormal_{score}")
      paths.append(plot_slice_fits(
          gradients["trained"]["sum"][mid], out_dir / f"lognormal_{score}_slice.png",
          label=f"animal {ids[0]} slice {mid}, trained network, score {score}"))
      figure_names += [p.name for p in paths]
  report: dict[str, Any] = {
      "inputs": {
          "checkpoint": str(model_dir), "data_dir": str(ctx.data_dir),
          "animals": ids, "animals_from": "--animals" if animals else "the bundle's test split",
          "test_animals": list(ctx.split["test"]), "n_slices": int(images.shape[0]),
          "image": "raw (not skull-stripped) slices", "saliency_method": config.saliency_method,
          "scores": list(scores), "quantities": list(quantities),
          "classes": list(classes), "random_init_seed": seed,
          "figure_slice": {"animal": ids[0], "slice": int(mid)},
          "config": config.to_dict(),
      },
      "studies": studies,
  }
  if figures:
    report["figures"] = figure_names
  fileio.write_json(out_dir / "lognormal.json", report)
  md = combined_markdown(report)
  fileio.atomic_write_text(out_dir / "lognormal.md", md)
  log(md)
  return report
