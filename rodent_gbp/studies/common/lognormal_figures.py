"""The log-normal study's figures (paper Fig. 5 a-d, Q-Q plots, one slice's fits).

Drawn from stacks of gradient images (``studies.lognormal.run_experiment``
passes the trained and the randomly initialised network's): the enhancement's
histograms per step with a Q-Q plot of the log magnitudes
(:func:`plot_lognormal`), and one slice's two quantities with the laws
fitted to them (:func:`plot_slice_fits`; the fits are
``rodent_gbp.distributions``'). PNGs written atomically (``rodent_gbp.fileio``).
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Mapping

import numpy as np
from scipy import stats

from rodent_gbp import fileio
from rodent_gbp.distributions import FAMILIES, clean_samples, fit_one, subsample
from rodent_gbp.errors import DataError
from rodent_gbp.studies.common.gradients import eq1_values


def _pooled_values(stack: np.ndarray, max_points: int, seed: int) -> np.ndarray:
  x = np.asarray(stack, dtype=np.float64).ravel()
  return subsample(x, max_points, seed)


def plot_lognormal(gradients: Mapping[str, Any], out_dir: str | pathlib.Path, *,
                   steps_fn: Callable[[np.ndarray], Mapping[str, Any]] | None = None,
                   max_points: int = 200000, seed: int = 0, bins: int = 100,
                   prefix: str = "lognormal") -> list[pathlib.Path]:
  """Writes the paper's Fig. 5 a-d histograms and a Q-Q plot of log magnitudes.

  Args:
    gradients: ``{label: (S, H, W) gradient images}`` (e.g. "trained", "random").
    out_dir: folder for the PNGs.
    steps_fn: the enhancement of docs/design.md#enhancement-eq-1 returning
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
      fig.savefig(tmp, dpi=100)
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
    fig.savefig(tmp, dpi=100)
  plt.close(fig)
  paths.append(p)
  return paths


def plot_slice_fits(g_slice: Any, path: str | pathlib.Path, *, label: str = "",
                    seed: int = 0) -> pathlib.Path:
  """One slice, both quantities: histograms with the fitted laws, and Q-Q plots.

  Panels: (a) density histogram of ``G > 0`` with the five families fitted to
  it (``magnitude``; x on a log axis, densities per unit ln G so the
  log-normal is a Gaussian bump); (b) density histogram of
  ``q = ln(1 + 255 G~)`` over the whole slice (the ``q = 0`` atom is the
  first bar) with the normal and skew-normal of ``q`` fitted by maximum
  likelihood on every pixel (``eq1_log``); (c) Q-Q plots of standardised
  ``ln G`` (positive pixels) and of standardised ``q`` (all pixels) against
  the standard normal.

  Args:
    g_slice: one gradient image (H, W), >= 0.
    path: the PNG (dpi 100).
    label: title text (data set, slice, network, score).
    seed: unused by the fits (all pixels are used); kept for a seeded future
      subsample.

  Returns:
    ``path``.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  del seed
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  g = np.asarray(g_slice, dtype=np.float64)
  pos, _ = clean_samples(g, zeros="exclude")
  y = eq1_values(g)
  if y is None:
    raise DataError("constant gradient slice: nothing to plot")
  y = y.ravel()
  q = np.log(y)
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  # (a) magnitude: histogram of ln G, each law's density of ln G = f(x) x.
  lx = np.log(pos)
  ax = axes[0]
  ax.hist(lx, bins=60, density=True, color="0.75", label=f"ln G, {pos.size} px > 0")
  grid = np.linspace(lx.min(), lx.max(), 300)
  scale = float(np.exp(np.mean(lx)))
  for fam, style in zip(FAMILIES, ("r-", "b--", "g-.", "m:", "c-")):
    frozen, _ = fit_one(fam, pos, scale)
    xs = np.exp(grid)
    ax.plot(grid, np.exp(frozen.logpdf(xs)) * xs, style, lw=1.2, label=fam)
  ax.set_xlabel("ln G")
  ax.set_ylabel("density of ln G")
  ax.set_title(f"(a) magnitude: G > 0 ({g.size - pos.size} zeros dropped)", fontsize=9)
  ax.legend(fontsize=7)
  # (b) eq1_log: q over the whole slice, zeros (q = 0) included.
  ax = axes[1]
  ax.hist(q, bins=60, density=True, color="0.75",
          label=f"q, {int(np.sum(y == 1.0))} of {y.size} px at q = 0")
  grid = np.linspace(0.0, q.max(), 300)
  mu, sd = float(q.mean()), float(q.std())
  ax.plot(grid, stats.norm.pdf(grid, mu, sd), "r-", lw=1.2, label="normal (q)")
  a_, loc, sc = stats.skewnorm.fit(q)
  ax.plot(grid, stats.skewnorm.pdf(grid, a_, loc, sc), "b--", lw=1.2, label="skew-normal (q)")
  ax.set_xlabel("q = ln(1 + 255 G~)")
  ax.set_title("(b) eq1_log: what Eq. 1 z-scores", fontsize=9)
  ax.legend(fontsize=7)
  # (c) Q-Q of both against the normal.
  ax = axes[2]
  for vals, name in ((lx, "ln G (G > 0)"), (q, "q (all pixels)")):
    z = np.sort((vals - vals.mean()) / vals.std())
    t = stats.norm.ppf((np.arange(1, z.size + 1) - 0.5) / z.size)
    step = max(1, z.size // 3000)
    idx = np.unique(np.r_[np.arange(0, z.size, step), z.size - 1])
    ax.plot(t[idx], z[idx], ".", ms=2, label=name)
  ax.plot([-4.5, 4.5], [-4.5, 4.5], "k--", lw=1, label="normal")
  ax.set_xlabel("standard normal quantile")
  ax.set_ylabel("standardised value")
  ax.set_title("(c) Q-Q against the normal", fontsize=9)
  ax.legend(fontsize=7)
  fig.suptitle(f"Gradient-image laws on one slice (cf. paper Fig. 5): {label}", fontsize=10)
  fig.tight_layout()
  with fileio.atomic_path(path, suffix=".png") as tmp:
    fig.savefig(tmp, dpi=100)
  plt.close(fig)
  return path
