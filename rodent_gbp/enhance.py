"""Enhancement of the GBP gradient image (paper section 4.3, Eq. 1, Figs. 5-6).

The paper assumes the gradient magnitudes of a slice are log-normal: after a
log the histogram is close to a Gaussian, so a z-score puts every slice on the
same scale and a fixed band of z (Eq. 1) picks out the strong edges the network
looks at. Per slice, over its H x W pixels:

  e = 1 + 255 (G - min G) / (max G - min G)     linear expansion to [1, 256]
  v = ln e                                      log compression, in [0, ln 256]
  z = (v - mean v) / std v                      z-score (population std, ddof 0)
  f = exp(-((z - center) / width)^2)            Eq. 1, center 2, width 0.5

Degenerate slices are defined, never NaN: a constant G (max == min, e.g. an
all-zero gradient) gives e = 1, v = 0 and z = 0 everywhere, hence
f = exp(-(center / width)^2) everywhere. Whenever max > min the expansion makes
std v >= ln(256) / sqrt(2 N) > 0 for N pixels, so the z-score is well conditioned in
float32. NaN or inf in G propagate (they are not a defined input).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

_AXES = (-2, -1)


def _safe_divisor(x: jax.Array) -> jax.Array:
  """x where x > 0, else 1: a zero range or std leaves the numerator (0) as is."""
  return jnp.where(x > 0, x, jnp.ones_like(x))


@jax.jit
def enhancement_steps(g: ArrayLike, *, center: ArrayLike = 2.0,
                      width: ArrayLike = 0.5) -> dict[str, jax.Array]:
  """Every intermediate of the enhancement, for the histograms of Fig. 5.

  Args:
    g: gradient images (..., H, W); any real dtype, computed in float32. Each
      (H, W) slice is enhanced on its own statistics.
    center: the z at which Eq. 1 peaks (paper: 2). Traced, so changing it does
      not recompile.
    width: the width of the Eq. 1 bump in z units (paper: 0.5); must be > 0.

  Returns:
    dict of float32 arrays, each (..., H, W): ``expanded`` (e, in [1, 256]),
    ``log`` (v = ln e), ``z`` (per-slice z-score of v) and ``enhanced``
    (f = Eq. 1 of z, in (0, 1]).
  """
  g = jnp.asarray(g, jnp.float32)
  if g.ndim < 2:
    raise ValueError(f"enhance expects (..., H, W), got shape {g.shape}")
  g_min = jnp.min(g, axis=_AXES, keepdims=True)
  g_range = jnp.max(g, axis=_AXES, keepdims=True) - g_min
  # Constant slice: range 0 -> numerator 0 -> e = 1 everywhere (defined, not NaN).
  expanded = 1.0 + 255.0 * (g - g_min) / _safe_divisor(g_range)
  log = jnp.log(expanded)
  mean = jnp.mean(log, axis=_AXES, keepdims=True)
  centred = log - mean
  std = jnp.sqrt(jnp.mean(centred * centred, axis=_AXES, keepdims=True))
  z = centred / _safe_divisor(std)
  center = jnp.asarray(center, jnp.float32)
  width = jnp.asarray(width, jnp.float32)
  enhanced = jnp.exp(-jnp.square((z - center) / width))  # Eq. 1
  return {"expanded": expanded, "log": log, "z": z, "enhanced": enhanced}


@jax.jit
def enhance_gradient(g: ArrayLike, *, center: ArrayLike = 2.0,
                     width: ArrayLike = 0.5) -> jax.Array:
  """Enhanced gradient image f of paper Eq. 1, per (H, W) slice.

  Args:
    g: gradient images (..., H, W), e.g. (B, H, W) from
      ``guided.gradient_image``.
    center: z at which f = 1 (paper: 2.0); traced, no recompile per value.
    width: Eq. 1 width in z units (paper: 0.5); must be > 0.

  Returns:
    float32 (..., H, W) in (0, 1]. A constant slice maps to the constant
    exp(-(center / width)^2) (z = 0 there by definition).

  Example:
    >>> f = enhance_gradient(jnp.zeros((2, 4, 4)))  # finite, never NaN
  """
  return enhancement_steps(g, center=center, width=width)["enhanced"]


def log_gradient(g: ArrayLike) -> jax.Array:
  """Log of gradient images (..., H, W), floored at 1 % of each slice's maximum.

  The paper models the magnitudes as log-normal (Fig. 5); the log makes the
  brain's weaker responses count beside the strongest edges.
  """
  g = jnp.asarray(g, jnp.float32)
  peak = jnp.max(g, axis=(-2, -1), keepdims=True)
  return jnp.log(g + 0.01 * jnp.where(peak > 0, peak, 1.0))
