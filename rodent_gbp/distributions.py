"""Which law do positive samples follow? Maximum-likelihood fits of several families.

:func:`fit_families` fits log-normal, normal, gamma, Weibull and exponential
laws to one set of positive samples (``scipy.stats`` ``fit``; location fixed
at 0 for the positive families, free for the normal) and reports per family
the log-likelihood, AIC, BIC and the Kolmogorov-Smirnov distance (a distance,
not a p-value: the parameters are estimated from the same data), plus an
Anderson-Darling test of normality of ``log x`` (Stephens 1974's critical
values for estimated mean and variance), the AIC winner and its margin over
the runner-up; :func:`bootstrap_ks_pvalue` gives a parametric-bootstrap KS
p-value; :func:`summarise` aggregates per-slice verdicts.

The main job's log-normal verdict (``results.json["lognormal"]``) and the
log-normal study (``rodent_gbp.studies.lognormal``) both use it. Host-side
numpy / scipy only.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from rodent_gbp.errors import DataError, UsageError

FAMILIES = ("lognormal", "normal", "gamma", "weibull", "exponential")
QUANTITIES = ("magnitude", "eq1_log")
# eq1_log adds a skewed law of q = ln y to the families.
EQ1_FAMILIES = FAMILIES + ("logskewnormal",)
# What "family f wins" says, per quantity (for the reports).
MEANING = {
    "magnitude": "families fitted to G > 0 (zeros dropped); lognormal = G log-normal",
    "eq1_log": ("families fitted to y = 1 + 255 G~ of the whole slice (zeros included, "
                "y = 1); lognormal on y = q = ln y normal (what the Eq. 1 z-score presumes); "
                "logskewnormal = q skew-normal"),
}

# scipy distribution and number of free parameters (loc is fixed at 0 for the
# positive families, so it is not counted there).
_DISTS = {
    "lognormal": (stats.lognorm, 2),
    "normal": (stats.norm, 2),
    "gamma": (stats.gamma, 2),
    "weibull": (stats.weibull_min, 2),
    "exponential": (stats.expon, 1),
    "logskewnormal": (stats.skewnorm, 3),
}

# Anderson-Darling critical values for normality with estimated mean and
# standard deviation (Stephens 1974, as in scipy.stats.anderson), used only if
# a future scipy stops returning them.
_AD_NORM_LEVELS = (15.0, 10.0, 5.0, 2.5, 1.0)
_AD_NORM_AVALS = (0.561, 0.631, 0.752, 0.873, 1.035)

MIN_SAMPLES = 20


def check_families(families: Sequence[str]) -> tuple[str, ...]:
  families = tuple(families)
  unknown = [f for f in families if f not in _DISTS]
  if unknown:
    raise UsageError(f"unknown families {unknown}; choose from {EQ1_FAMILIES}")
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


def subsample(x: np.ndarray, max_samples: int | None, seed: int) -> np.ndarray:
  if max_samples is None or x.size <= max_samples:
    return x
  rng = np.random.default_rng(seed)
  return x[rng.choice(x.size, size=max_samples, replace=False)]


class _LogLaw:
  """The law of ``x = exp(q)`` for a frozen scipy law of ``q`` (x > 0)."""

  def __init__(self, law):
    self.law = law

  def logpdf(self, x):
    x = np.asarray(x, dtype=np.float64)
    return self.law.logpdf(np.log(x)) - np.log(x)  # Jacobian dq/dx = 1/x

  def cdf(self, x):
    return self.law.cdf(np.log(np.asarray(x, dtype=np.float64)))

  def rvs(self, size, random_state):
    return np.exp(self.law.rvs(size=size, random_state=random_state))


def fit_one(family: str, x: np.ndarray, scale: float):
  """MLE fit of one family; returns the frozen scipy law in x's units.

  The fit runs on ``x / scale`` (scale = geometric mean), so the optimiser of
  the Weibull shape sees O(1) numbers whatever the units of the gradient
  (which can be ~1e-8); scale families map back exactly.
  """
  dist, _ = _DISTS[family]
  if family == "logskewnormal":
    a, loc, sc = dist.fit(np.log(x))
    return _LogLaw(dist(a, loc=loc, scale=sc)), {"a": a, "loc": loc, "scale": sc}
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
  family = check_families([family])[0]
  scale = float(np.exp(np.mean(np.log(x))))
  frozen, _ = fit_one(family, x, scale)
  d_obs = float(stats.kstest(x, frozen.cdf).statistic)
  rng = np.random.default_rng(seed)
  d_boot = np.empty(n_boot)
  for b in range(n_boot):
    xb = frozen.rvs(size=x.size, random_state=rng)
    if family != "normal":
      xb = np.maximum(xb, np.finfo(np.float64).tiny)
    sb = float(np.exp(np.mean(np.log(np.abs(xb) + np.finfo(np.float64).tiny))))
    fb, _ = fit_one(family, xb, sb)
    d_boot[b] = stats.kstest(xb, fb.cdf).statistic
  return {"statistic": d_obs, "pvalue": float((1 + np.sum(d_boot >= d_obs)) / (1 + n_boot)),
          "n_boot": n_boot, "n": int(x.size)}


def fit_families(samples: Any, *, families: Sequence[str] = FAMILIES,
                 zeros: str = "error", max_samples: int | None = 20000,
                 seed: int = 0, bootstrap: int = 0, bootstrap_samples: int = 1000,
                 bootstrap_families: Sequence[str] | None = None,
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
    bootstrap_samples: size of that subsample.
    bootstrap_families: the families bootstrapped (``None``: all fitted).
    min_samples: fewer positive samples raise ``DataError``.

  Returns:
    A JSON-able dict: ``n_input``, ``n_zero``, ``n_positive``, ``n_fitted``,
    ``families`` {name: {params, k, loglik, aic, bic, ks[, ks_bootstrap]}},
    ``anderson_log`` (see :func:`anderson_log_normality`), ``ranking``
    (families by increasing AIC), ``winner``, ``runner_up``, ``aic_margin``
    (AIC(runner-up) - AIC(winner) >= 0; ``None`` with one family),
    ``delta_aic`` {name: AIC - AIC(winner)}.
  """
  families = check_families(families)
  n_input = int(np.size(samples))
  x, n_zero = clean_samples(samples, zeros=zeros, min_samples=min_samples)
  n_positive = int(x.size)
  x = subsample(x, max_samples, seed)
  n = x.size
  scale = float(np.exp(np.mean(np.log(x))))
  fits = {}
  for fam in families:
    frozen, params = fit_one(fam, x, scale)
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
    xb = subsample(x, bootstrap_samples, seed + 1)
    for fam in (families if bootstrap_families is None else bootstrap_families):
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


def median_or_none(values: Sequence[float]) -> float | None:
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
  out["median_aic_margin"] = median_or_none([v["aic_margin"] for v in fitted])
  out["median_aic_margin_when_winning"] = {
      f: median_or_none([v["aic_margin"] for v in fitted if v["winner"] == f]) for f in families}
  out["median_delta_aic"] = {f: median_or_none([v["delta_aic"][f] for v in fitted]) for f in families}
  if "lognormal" in families:
    out["median_aic_vs_lognormal"] = {
        f: median_or_none([v["families"][f]["aic"] - v["families"]["lognormal"]["aic"]
                    for v in fitted]) for f in families}
  out["median_ks"] = {f: median_or_none([v["families"][f]["ks"] for v in fitted]) for f in families}
  out["anderson_log_reject_5pct_fraction"] = (
      sum(v["anderson_log"]["reject_5pct"] for v in fitted) / n)
  out["median_anderson_log_statistic"] = median_or_none(
      [v["anderson_log"]["statistic"] for v in fitted])
  return out
