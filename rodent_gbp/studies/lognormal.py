"""Is the GBP gradient image log-normal? (paper section 4.3, Fig. 5, Conclusion).

The paper's enhancement (linear expansion, log, z-score, Eq. 1) rests on the
hypothesis that gradient-image magnitudes follow a log-normal law; the paper
shows only a histogram. This module tests the hypothesis against the obvious
alternatives by maximum likelihood:

* :func:`fit_families` fits log-normal, normal, gamma, Weibull and exponential
  laws to one set of positive samples (``scipy.stats`` ``fit``; location fixed
  at 0 for the positive families, free for the normal) and reports per family
  the log-likelihood, AIC, BIC and the Kolmogorov-Smirnov distance, plus an
  Anderson-Darling test of normality of ``log x``, the AIC winner and its
  margin over the runner-up.
* :func:`summarise` aggregates per-slice verdicts (fraction of slices each
  family wins, median AIC margins).
* :func:`lognormal_study` runs both over stacks of gradient images (per slice
  and pooled, per class target, trained vs randomly initialised network) and
  returns a JSON-able report; :func:`report_markdown` renders it.
* :func:`plot_lognormal` draws the paper's Fig. 5 a-d histograms and a Q-Q plot
  of the log magnitudes against the normal.
* :func:`run_experiment` wires a model bundle, its test slices and the
  saliency module into the study (used by ``experiments/lognormal.py``).

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

import math
import pathlib
import warnings
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import stats

from rodent_gbp import fileio
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp.studies import context

FAMILIES = ("lognormal", "normal", "gamma", "weibull", "exponential")

# scipy distribution and number of free parameters (loc is fixed at 0 for the
# positive families, so it is not counted there).
_DISTS = {
    "lognormal": (stats.lognorm, 2),
    "normal": (stats.norm, 2),
    "gamma": (stats.gamma, 2),
    "weibull": (stats.weibull_min, 2),
    "exponential": (stats.expon, 1),
}

# Anderson-Darling critical values for normality with estimated mean and
# standard deviation (Stephens 1974, as in scipy.stats.anderson), used only if
# a future scipy stops returning them.
_AD_NORM_LEVELS = (15.0, 10.0, 5.0, 2.5, 1.0)
_AD_NORM_AVALS = (0.561, 0.631, 0.752, 0.873, 1.035)

MIN_SAMPLES = 20


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
  families = tuple(families)
  unknown = [f for f in families if f not in _DISTS]
  if unknown:
    raise UsageError(f"unknown families {unknown}; choose from {FAMILIES}")
  if len(families) < 1 or len(set(families)) != len(families):
    raise UsageError(f"families must be distinct and non-empty, got {families}")
  return families


def clean_samples(samples: Any, *, zeros: str = "error",
                  min_samples: int = MIN_SAMPLES) -> tuple[np.ndarray, int]:
  """Flattens ``samples`` to positive float64 values.

  Args:
    samples: any array of magnitudes (flattened).
    zeros: ``"error"`` raises on exact zeros; ``"exclude"`` drops them and
      returns how many were dropped (zero-gradient pixels must be counted,
      never silently lost).
    min_samples: fewer positive values than this raise ``DataError``.

  Returns:
    (positive values (n,), number of zeros excluded).

  Raises:
    UsageError: an unknown ``zeros``.
    DataError: non-finite or negative values, zeros under ``zeros="error"``,
      too few samples, or all samples equal (no law can be fitted).
  """
  if zeros not in ("error", "exclude"):
    raise UsageError(f'zeros must be "error" or "exclude", got {zeros!r}')
  x = np.asarray(samples, dtype=np.float64).ravel()
  if not np.all(np.isfinite(x)):
    raise DataError(f"samples contain {int(np.sum(~np.isfinite(x)))} non-finite values")
  n_neg = int(np.sum(x < 0))
  if n_neg:
    raise DataError(f"samples must be magnitudes (>= 0); got {n_neg} negative values")
  zero = x == 0
  n_zero = int(np.sum(zero))
  if n_zero and zeros == "error":
    raise DataError(
        f"{n_zero} of {x.size} samples are exactly 0 (log-normal, gamma, Weibull "
        'need x > 0); pass zeros="exclude" to count and drop them')
  x = x[~zero]
  if x.size < min_samples:
    raise DataError(f"need at least {min_samples} positive samples, got {x.size}")
  if np.all(x == x[0]):
    raise DataError(f"all {x.size} positive samples equal {x[0]!r}: nothing to fit")
  return x, n_zero


def _subsample(x: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
  if max_samples is None or x.size <= max_samples:
    return x
  rng = np.random.default_rng(seed)
  return x[rng.choice(x.size, size=max_samples, replace=False)]


def _fit_one(family: str, x: np.ndarray, scale: float):
  """MLE fit of one family; returns the frozen scipy law in x's units.

  The fit runs on ``x / scale`` (scale = geometric mean), so the optimiser of
  the Weibull shape sees O(1) numbers whatever the units of the gradient
  (which can be ~1e-8); scale families map back exactly.
  """
  dist, _ = _DISTS[family]
  y = x / scale
  if family == "normal":
    loc, sd = dist.fit(y)
    return dist(loc=loc * scale, scale=sd * scale), {"mean": loc * scale, "std": sd * scale}
  if family == "exponential":
    _, sc = dist.fit(y, floc=0)
    return dist(loc=0, scale=sc * scale), {"scale": sc * scale}
  shape, _, sc = dist.fit(y, floc=0)
  frozen = dist(shape, loc=0, scale=sc * scale)
  if family == "lognormal":
    # scipy's (s, scale) is (sigma, exp(mu)) of log x ~ N(mu, sigma^2).
    return frozen, {"sigma": shape, "mu": math.log(sc * scale), "scale": sc * scale}
  return frozen, {"shape": shape, "scale": sc * scale}


def anderson_log_normality(x: np.ndarray) -> dict[str, Any]:
  """Anderson-Darling test of normality of ``log x`` (mean, std estimated).

  Returns ``statistic`` (= ``scipy.stats.anderson(np.log(x), "norm")``),
  ``critical_values`` at ``significance_levels`` (percent), ``reject_5pct``
  and, where scipy offers it (>= 1.17), the interpolated ``pvalue``.
  """
  logx = np.log(x)
  with warnings.catch_warnings():
    # scipy 1.17 warns that the critical-value interface will go in 1.19.
    warnings.simplefilter("ignore", FutureWarning)
    res = stats.anderson(logx, "norm")
  stat = float(res.statistic)
  crit = getattr(res, "critical_values", None)
  levels = getattr(res, "significance_level", None)
  if crit is None or levels is None:
    n = logx.size
    crit = np.asarray(_AD_NORM_AVALS) / (1.0 + 0.75 / n + 2.25 / n**2)
    levels = np.asarray(_AD_NORM_LEVELS)
  out = {
      "statistic": stat,
      "critical_values": [float(c) for c in crit],
      "significance_levels": [float(s) for s in levels],
  }
  five = [c for c, s in zip(out["critical_values"], out["significance_levels"]) if s == 5.0]
  out["reject_5pct"] = bool(five and stat > five[0])
  try:
    res_p = stats.anderson(logx, "norm", method="interpolate")
    out["pvalue"] = float(res_p.pvalue)
  except TypeError:  # scipy < 1.17 has no ``method``
    pass
  return out


def bootstrap_ks_pvalue(x: np.ndarray, family: str, *, n_boot: int = 200,
                        seed: int = 0) -> dict[str, Any]:
  """Parametric-bootstrap KS p-value of ``family`` on the sample ``x``.

  Fits the law to ``x``, draws ``n_boot`` samples of the same size from the
  fit, refits each and recomputes its KS distance; the p-value is
  ``(1 + #{D_b >= D}) / (1 + n_boot)``. The refit on every resample is what
  makes it valid where the plain KS p-value is not (see module docstring).
  Cost ~ n_boot fits: use a subsample of ~1-2k values.
  """
  family = _check_families([family])[0]
  scale = float(np.exp(np.mean(np.log(x))))
  frozen, _ = _fit_one(family, x, scale)
  d_obs = float(stats.kstest(x, frozen.cdf).statistic)
  rng = np.random.default_rng(seed)
  d_boot = np.empty(n_boot)
  for b in range(n_boot):
    xb = frozen.rvs(size=x.size, random_state=rng)
    if family != "normal":
      xb = np.maximum(xb, np.finfo(np.float64).tiny)
    sb = float(np.exp(np.mean(np.log(np.abs(xb) + np.finfo(np.float64).tiny))))
    fb, _ = _fit_one(family, xb, sb)
    d_boot[b] = stats.kstest(xb, fb.cdf).statistic
  return {"statistic": d_obs, "pvalue": float((1 + np.sum(d_boot >= d_obs)) / (1 + n_boot)),
          "n_boot": n_boot, "n": int(x.size)}


def fit_families(samples: Any, *, families: Sequence[str] = FAMILIES,
                 zeros: str = "error", max_samples: int | None = 20000,
                 seed: int = 0, bootstrap: int = 0, bootstrap_samples: int = 1000,
                 min_samples: int = MIN_SAMPLES) -> dict[str, Any]:
  """Fits each family by maximum likelihood and ranks them by AIC.

  ``AIC = 2k - 2 logL`` and ``BIC = k ln n - 2 logL`` with ``k`` the number of
  free parameters (2 for log-normal, normal, gamma, Weibull; 1 for the
  exponential; the location is fixed at 0 for all but the normal) and ``n``
  the number of samples fitted. ``ks`` is
  ``scipy.stats.kstest(x, fitted.cdf).statistic`` on the fitted samples: a
  distance, not a test (its p-value is meaningless after fitting on the same
  data, see module docstring); a valid p-value comes only from the optional
  parametric bootstrap.

  Args:
    samples: magnitudes (any shape, flattened), >= 0.
    families: subset of :data:`FAMILIES`.
    zeros: ``"error"`` or ``"exclude"`` (count and drop exact zeros).
    max_samples: fit a random subsample of this many values (seeded) when
      there are more; ``None`` fits all. 20k pins AIC differences of the size
      that matter here at a fraction of a second.
    seed: subsample and bootstrap seed.
    bootstrap: number of parametric-bootstrap resamples for KS p-values (0 =
      off); run per family on a further subsample of ``bootstrap_samples``.
    min_samples: fewer positive samples raise ``DataError``.

  Returns:
    A JSON-able dict: ``n_input``, ``n_zero``, ``n_positive``, ``n_fitted``,
    ``families`` {name: {params, k, loglik, aic, bic, ks[, ks_bootstrap]}},
    ``anderson_log`` (see :func:`anderson_log_normality`), ``ranking``
    (families by increasing AIC), ``winner``, ``runner_up``, ``aic_margin``
    (AIC(runner-up) - AIC(winner) >= 0; ``None`` with one family),
    ``delta_aic`` {name: AIC - AIC(winner)}.
  """
  families = _check_families(families)
  n_input = int(np.size(samples))
  x, n_zero = clean_samples(samples, zeros=zeros, min_samples=min_samples)
  n_positive = int(x.size)
  x = _subsample(x, max_samples, seed)
  n = x.size
  scale = float(np.exp(np.mean(np.log(x))))
  fits = {}
  for fam in families:
    frozen, params = _fit_one(fam, x, scale)
    k = _DISTS[fam][1]
    loglik = float(np.sum(frozen.logpdf(x)))
    fits[fam] = {
        "params": {p: float(v) for p, v in params.items()},
        "k": k,
        "loglik": loglik,
        "aic": 2 * k - 2 * loglik,
        "bic": k * math.log(n) - 2 * loglik,
        "ks": float(stats.kstest(x, frozen.cdf).statistic),
    }
  if bootstrap:
    xb = _subsample(x, bootstrap_samples, seed + 1)
    for fam in families:
      fits[fam]["ks_bootstrap"] = bootstrap_ks_pvalue(xb, fam, n_boot=bootstrap, seed=seed)
  # A -inf loglik (e.g. a sample outside a support) gives AIC inf: ranks last.
  ranking = sorted(families, key=lambda f: (fits[f]["aic"], families.index(f)))
  best = fits[ranking[0]]["aic"]
  return {
      "n_input": n_input,
      "n_zero": n_zero,
      "n_positive": n_positive,
      "n_fitted": int(n),
      "families": fits,
      "anderson_log": anderson_log_normality(x),
      "ranking": ranking,
      "winner": ranking[0],
      "runner_up": ranking[1] if len(ranking) > 1 else None,
      "aic_margin": (fits[ranking[1]]["aic"] - best) if len(ranking) > 1 else None,
      "delta_aic": {f: fits[f]["aic"] - best for f in families},
  }


def _median(values: Sequence[float]) -> float | None:
  vals = [v for v in values if v is not None and np.isfinite(v)]
  return float(np.median(vals)) if vals else None


def summarise(verdicts: Sequence[Mapping[str, Any] | None]) -> dict[str, Any]:
  """Aggregates per-slice :func:`fit_families` verdicts.

  ``None`` entries (slices that could not be fitted, e.g. all-zero gradient)
  are counted under ``n_skipped`` and left out of the fractions.

  Returns:
    ``n`` (verdicts fitted), ``n_skipped``, ``win_fraction`` {family: fraction
    of fitted slices it wins by AIC}, ``win_count``, ``median_aic_margin``
    (winner over runner-up, all slices), ``median_aic_margin_when_winning``
    {family: median margin over the slices it wins}, ``median_delta_aic``
    {family: median AIC(family) - AIC(winner)}, ``median_aic_vs_lognormal``
    {family: median AIC(family) - AIC(lognormal); positive = log-normal
    better} when log-normal was fitted, ``median_ks`` {family},
    ``anderson_log_reject_5pct_fraction`` and ``median_anderson_log_statistic``.
  """
  fitted = [v for v in verdicts if v is not None]
  n = len(fitted)
  out: dict[str, Any] = {"n": n, "n_skipped": len(verdicts) - n}
  if not n:
    return out
  families = list(fitted[0]["families"])
  wins = {f: sum(v["winner"] == f for v in fitted) for f in families}
  out["win_count"] = wins
  out["win_fraction"] = {f: wins[f] / n for f in families}
  out["median_aic_margin"] = _median([v["aic_margin"] for v in fitted])
  out["median_aic_margin_when_winning"] = {
      f: _median([v["aic_margin"] for v in fitted if v["winner"] == f]) for f in families}
  out["median_delta_aic"] = {f: _median([v["delta_aic"][f] for v in fitted]) for f in families}
  if "lognormal" in families:
    out["median_aic_vs_lognormal"] = {
        f: _median([v["families"][f]["aic"] - v["families"]["lognormal"]["aic"]
                    for v in fitted]) for f in families}
  out["median_ks"] = {f: _median([v["families"][f]["ks"] for v in fitted]) for f in families}
  out["anderson_log_reject_5pct_fraction"] = (
      sum(v["anderson_log"]["reject_5pct"] for v in fitted) / n)
  out["median_anderson_log_statistic"] = _median(
      [v["anderson_log"]["statistic"] for v in fitted])
  return out


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


def study_target(stack: Any, *, families: Sequence[str] = FAMILIES,
                 max_pixels: int | None = 20000, slice_max_pixels: int | None = None,
                 seed: int = 0, bootstrap: int = 0) -> dict[str, Any]:
  """Per-slice and pooled verdicts for one stack of gradient images (S, H, W).

  Zero pixels are excluded from every fit and counted (per slice and in
  total); slices with too few positive pixels are skipped with a reason.
  """
  g = np.asarray(stack, dtype=np.float64)
  if g.ndim != 3:
    raise DataError(f"expected gradient images (S, H, W), got shape {g.shape}")
  zeros_per_slice = [int(z) for z in np.sum(g == 0, axis=(1, 2))]
  rows, verdicts = [], []
  for i in range(g.shape[0]):
    try:
      v = fit_families(g[i], families=families, zeros="exclude",
                       max_samples=slice_max_pixels, seed=seed + i)
      reason = None
    except DataError as e:
      v, reason = None, str(e)
    verdicts.append(v)
    rows.append(_slice_row(i, zeros_per_slice[i], int(g[i].size), v, reason))
  try:
    pooled = fit_families(g, families=families, zeros="exclude",
                          max_samples=max_pixels, seed=seed, bootstrap=bootstrap)
  except DataError as e:
    pooled = {"skipped": str(e)}
  total = int(g.size)
  n_zero = int(sum(zeros_per_slice))
  return {
      "shape": list(g.shape),
      "zero_pixels": {"count": n_zero, "total": total, "fraction": n_zero / total,
                      "per_slice": zeros_per_slice},
      "pooled": pooled,
      "slices": summarise(verdicts),
      "per_slice": rows,
  }


def lognormal_study(gradients: Mapping[str, Mapping[str, Any]], *,
                    families: Sequence[str] = FAMILIES, max_pixels: int | None = 20000,
                    slice_max_pixels: int | None = None, seed: int = 0,
                    bootstrap: int = 0) -> dict[str, Any]:
  """The log-normal study over gradient images (paper section 4.3, Fig. 5).

  Args:
    gradients: ``{network: {target: (S, H, W) magnitudes}}``, e.g.
      ``{"trained": {"sum": G, "wm": ..., "gm": ..., "csf": ...},
      "random": {...}}`` for the test slices; magnitudes >= 0.
    families: families to compare.
    max_pixels: pooled fits use a seeded subsample of this many positive
      pixels (``None``: all).
    slice_max_pixels: same per slice (``None``: every pixel of the slice).
    seed: subsample seed.
    bootstrap: parametric-bootstrap resamples for pooled KS p-values (0 off).

  Returns:
    JSON-able ``{"families", "settings", "networks": {network: {target:
    {"shape", "zero_pixels", "pooled", "slices", "per_slice"}}}, "verdict":
    {network: {target: {...}}}}``: ``pooled`` is a :func:`fit_families`
    verdict, ``slices`` a :func:`summarise` of the per-slice verdicts,
    ``per_slice`` a compact row per slice, ``verdict`` the headline numbers.
  """
  families = _check_families(families)
  networks: dict[str, Any] = {}
  verdict: dict[str, Any] = {}
  for net, targets in gradients.items():
    networks[net], verdict[net] = {}, {}
    for target, stack in targets.items():
      r = study_target(stack, families=families, max_pixels=max_pixels,
                       slice_max_pixels=slice_max_pixels, seed=seed, bootstrap=bootstrap)
      networks[net][target] = r
      pooled, sl = r["pooled"], r["slices"]
      verdict[net][target] = {
          "pooled_winner": pooled.get("winner"),
          "pooled_runner_up": pooled.get("runner_up"),
          "pooled_aic_margin": pooled.get("aic_margin"),
          "pooled_delta_aic": pooled.get("delta_aic"),
          "pooled_anderson_log_statistic": pooled.get("anderson_log", {}).get("statistic"),
          "slice_win_fraction": sl.get("win_fraction"),
          "slice_median_aic_margin": sl.get("median_aic_margin"),
          "slice_median_aic_vs_lognormal": sl.get("median_aic_vs_lognormal"),
          "n_slices_fitted": sl.get("n"),
          "zero_pixel_fraction": r["zero_pixels"]["fraction"],
      }
  return {
      "families": list(families),
      "settings": {"max_pixels": max_pixels, "slice_max_pixels": slice_max_pixels,
                   "seed": seed, "bootstrap": bootstrap, "zeros": "exclude (counted)"},
      "networks": networks,
      "verdict": verdict,
  }


def _fmt(v: Any, nd: int = 1) -> str:
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.{nd}f}"
  return str(v)


def report_markdown(report: Mapping[str, Any]) -> str:
  """A Markdown summary of a :func:`lognormal_study` report."""
  fams = report["families"]
  lines = [
      "# Is the GBP gradient image log-normal?",
      "",
      "Maximum-likelihood fits (location 0 for the positive families); AIC = 2k - 2 logL. "
      "Zero-gradient pixels are excluded from the fits and counted. KS is a distance "
      "(no p-value: the parameters are fitted on the same pixels).",
      "",
      "## Pooled over test slices",
      "",
      "| network | target | zero px | winner | runner-up | AIC margin | "
      + " | ".join(f"dAIC {f}" for f in fams) + " | AD(log x) |",
      "|---|---|---|---|---|---|" + "---|" * len(fams) + "---|",
  ]
  for net, targets in report["verdict"].items():
    for target, v in targets.items():
      d = v["pooled_delta_aic"] or {}
      lines.append(
          f"| {net} | {target} | {100 * v['zero_pixel_fraction']:.2f}% | "
          f"{_fmt(v['pooled_winner'])} | {_fmt(v['pooled_runner_up'])} | "
          f"{_fmt(v['pooled_aic_margin'])} | "
          + " | ".join(_fmt(d.get(f)) for f in fams)
          + f" | {_fmt(v['pooled_anderson_log_statistic'], 2)} |")
  lines += [
      "",
      "## Per slice",
      "",
      "| network | target | slices | " + " | ".join(f"wins {f}" for f in fams)
      + " | median margin | median AIC(f) - AIC(lognormal) |",
      "|---|---|---|" + "---|" * len(fams) + "---|---|",
  ]
  for net, targets in report["verdict"].items():
    for target, v in targets.items():
      if not v["n_slices_fitted"]:
        lines.append(f"| {net} | {target} | 0 | " + " | ".join("-" for _ in fams)
                     + " | - | - |")
        continue
      wf = v["slice_win_fraction"] or {}
      vs = v["slice_median_aic_vs_lognormal"] or {}
      vs_txt = ", ".join(f"{f} {_fmt(vs.get(f))}" for f in fams if f != "lognormal")
      lines.append(
          f"| {net} | {target} | {v['n_slices_fitted']} | "
          + " | ".join(f"{100 * wf.get(f, 0.0):.0f}%" for f in fams)
          + f" | {_fmt(v['slice_median_aic_margin'])} | {vs_txt or '-'} |")
  lines.append("")
  return "\n".join(lines)


def _pooled_values(stack: np.ndarray, max_points: int, seed: int) -> np.ndarray:
  x = np.asarray(stack, dtype=np.float64).ravel()
  return _subsample(x, max_points, seed)


def plot_lognormal(gradients: Mapping[str, Any], out_dir: str | pathlib.Path, *,
                   steps_fn: Callable[[np.ndarray], Mapping[str, Any]] | None = None,
                   max_points: int = 200000, seed: int = 0, bins: int = 100,
                   prefix: str = "lognormal") -> list[pathlib.Path]:
  """Writes the paper's Fig. 5 a-d histograms and a Q-Q plot of log magnitudes.

  Args:
    gradients: ``{label: (S, H, W) gradient images}`` (e.g. "trained", "random").
    out_dir: folder for the PNGs.
    steps_fn: the enhancement of DESIGN.md section 1 returning
      ``{"expanded", "log", "z", "enhanced"}`` per slice; defaults to
      ``rodent_gbp.enhance.enhancement_steps``.
    max_points: values plotted per panel (seeded subsample).
    seed: subsample seed.
    bins: histogram bins.
    prefix: file name prefix.

  Returns:
    Paths written: ``<prefix>_fig5_<label>.png`` (raw G, ln of the expanded
    G, z-score, Eq. 1; paper Fig. 5 a-d) per label and ``<prefix>_qq.png``
    (standardised ln G of positive pixels vs standard normal quantiles).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if steps_fn is None:
    from rodent_gbp import enhance
    steps_fn = enhance.enhancement_steps
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = []
  qq = {}
  for label, stack in gradients.items():
    g = np.asarray(stack, dtype=np.float32)
    steps = {k: np.asarray(v) for k, v in steps_fn(g).items()}
    panels = [
        ("(a) gradient magnitude G", g),
        ("(b) v = ln(1 + 255 (G - min) / (max - min))", steps["log"]),
        ("(c) z = (v - mean v) / std v", steps["z"]),
        ("(d) Eq. 1: exp(-((z - 2) / 0.5)^2)", steps["enhanced"]),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (title, values) in zip(axes, panels):
      vals = _pooled_values(values, max_points, seed)
      ax.hist(vals, bins=bins, color="0.3")
      ax.set_title(title, fontsize=9)
      ax.set_yscale("log")
    if "z" in steps:
      # The hypothesis behind Eq. 1: z should look standard normal.
      zs = np.linspace(-4, 4, 200)
      vals = _pooled_values(steps["z"], max_points, seed)
      width = (vals.max() - vals.min()) / bins if vals.size else 1.0
      axes[2].plot(zs, vals.size * width * stats.norm.pdf(zs), "r-", lw=1, label="N(0, 1)")
      axes[2].legend(fontsize=8)
    fig.suptitle(f"Histogram transform (paper Fig. 5 a-d), {label}, pooled over "
                 f"{g.shape[0]} slices", fontsize=10)
    fig.tight_layout()
    p = out_dir / f"{prefix}_fig5_{label}.png"
    with fileio.atomic_path(p, suffix=".png") as tmp:
      fig.savefig(tmp, dpi=110)
    plt.close(fig)
    paths.append(p)
    pos = _pooled_values(g, max_points, seed)
    pos = pos[pos > 0]
    if pos.size >= 2:
      lx = np.log(pos)
      lx = np.sort((lx - lx.mean()) / lx.std())
      q = stats.norm.ppf((np.arange(1, lx.size + 1) - 0.5) / lx.size)
      qq[label] = (q, lx)
  fig, ax = plt.subplots(figsize=(5, 5))
  for label, (q, lx) in qq.items():
    step = max(1, q.size // 5000)  # thin the line, keep the tails
    idx = np.unique(np.r_[np.arange(0, q.size, step), q.size - 1])
    ax.plot(q[idx], lx[idx], ".", ms=2, label=label)
  ax.plot([-4.5, 4.5], [-4.5, 4.5], "k--", lw=1, label="normal")
  ax.set_xlabel("standard normal quantile")
  ax.set_ylabel("standardised ln G (positive pixels)")
  ax.set_title("Q-Q: ln of gradient magnitudes vs normal")
  ax.legend(fontsize=8)
  fig.tight_layout()
  p = out_dir / f"{prefix}_qq.png"
  with fileio.atomic_path(p, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)
  paths.append(p)
  return paths


CLASS_NAMES = {1: "wm", 2: "gm", 3: "csf"}


def gradient_stacks(model, params, images: np.ndarray, *, classes: Sequence[int] = (1, 2, 3),
                    method: str = "guided", batch_size: int = 40,
                    score: str = "probability") -> dict[str, np.ndarray]:
  """Per-class GBP magnitudes and their sum for the study, on the host.

  Args:
    model: the U-Net (``model.build_unet``).
    params: its params (trained or freshly initialised).
    images: raw (not skull-stripped) slices (N, H, W, 1), as the pipeline
      computes gradient images (DESIGN.md section 1).
    classes: class targets; each gives ``|saliency_c|`` under its name
      (``wm``, ``gm``, ``csf``), and ``sum`` is the paper's gradient image
      ``G = sum_c |saliency_c|`` (equal to ``guided.gradient_image``).
    method: saliency method.
    batch_size: slices per jitted call.
    score: the saliency target (``guided.SCORES``).

  Returns:
    ``{"sum": (N, H, W), "<class name>": (N, H, W), ...}`` float64 arrays.
  """
  from rodent_gbp import guided
  from rodent_gbp import parallel

  classes = tuple(int(c) for c in classes)
  # One forward pass for every class: (B, K, H, W); padded batches, one compile.
  maps = parallel.run_batched(
      lambda images: guided.saliency(model, params, images, method=method, target=classes,
                                     score=score),
      {"images": np.asarray(images, np.float32)}, batch_size)["out"]
  maps = np.abs(np.asarray(maps, dtype=np.float64))
  out = {"sum": maps.sum(axis=1)}
  for i, c in enumerate(classes):
    out[CLASS_NAMES.get(c, f"class{c}")] = maps[:, i]
  return out


def run_experiment(checkpoint: str | pathlib.Path, out_dir: str | pathlib.Path, *,
                   data_dir: str | pathlib.Path | None = None, max_pixels: int = 20000,
                   slice_max_pixels: int | None = None, seed: int = 0, figures: bool = True,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
  """The log-normal study on a model bundle's test slices.

  Opens the bundle and its dataset (``context.load_context``: the
  split is the bundle's); computes the gradient images of every test slice
  per class target for the trained params and for params freshly initialised
  from ``seed`` (same architecture); runs :func:`lognormal_study` and writes
  ``lognormal.json`` (strict JSON, NaN as null), ``lognormal.md`` and
  (``figures``) the Fig. 5 / Q-Q PNGs into ``out_dir``.

  Args:
    checkpoint: a model bundle folder (``<workdir>/model`` of the main job).
    out_dir: output folder (created).
    data_dir: dataset root; ``None`` uses ``<checkpoint>/../data`` (where the
      main job writes the phantom).
    max_pixels: subsample size of the pooled fits.
    slice_max_pixels: subsample size of the per-slice fits (``None``: all).
    seed: random-network init and subsample seed.
    figures: write the PNGs.
    log: progress sink.

  Returns:
    The report (also written as ``lognormal.json``).

  Raises:
    CheckpointError, DataError: a missing or damaged bundle or dataset.
    UsageError: ``max_pixels`` or ``slice_max_pixels`` below the minimum
      sample count.
  """
  import jax
  from rodent_gbp import model as model_lib

  for name, n in (("max_pixels", max_pixels), ("slice_max_pixels", slice_max_pixels)):
    if n is not None and n < MIN_SAMPLES:
      raise UsageError(f"{name} must be at least {MIN_SAMPLES}, got {n}")
  ctx = context.load_context(checkpoint, data_dir, animals="test")
  config = ctx.config
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  test = ctx.split["test"]
  images = np.concatenate([v.image for v in ctx.test]).astype(np.float32)[..., None]
  log(f"{images.shape[0]} test slices of {test}")

  net = ctx.bundle.network("tissue")
  model = net.model
  random_params = model_lib.init_params(model, jax.random.key(seed), images.shape[1:3])
  classes = tuple(config.gradient_classes)
  gradients = {}
  for name, params in (("trained", net.params), ("random", random_params)):
    gradients[name] = gradient_stacks(model, params, images, classes=classes,
                                      method=config.saliency_method,
                                      score=config.saliency_score,
                                      batch_size=config.eval_batch_size)
    log(f"gradient images of the {name} network: {sorted(gradients[name])}")

  report = lognormal_study(gradients, max_pixels=max_pixels,
                           slice_max_pixels=slice_max_pixels, seed=seed)
  report["inputs"] = {
      "checkpoint": str(checkpoint), "data_dir": str(ctx.data_dir),
      "test_animals": list(test), "n_slices": int(images.shape[0]),
      "image": "raw (not skull-stripped) slices", "saliency_method": config.saliency_method,
      "saliency_score": config.saliency_score,
      "classes": list(classes), "random_init_seed": seed, "config": config.to_dict(),
  }
  if figures:
    paths = plot_lognormal({k: v["sum"] for k, v in gradients.items()}, out_dir, seed=seed)
    report["figures"] = [p.name for p in paths]
  fileio.write_json(out_dir / "lognormal.json", report)
  fileio.atomic_write_text(out_dir / "lognormal.md", report_markdown(report))
  log(report_markdown(report))
  return report
