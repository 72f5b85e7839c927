"""Template localisation by 2D cross-correlation (paper section 4.3, Fig. 7).

The enhanced gradient image of a test slice is cross-correlated with a shape
template from the reference animal; the argmax of the correlation gives the
displacement of the test acquisition relative to the reference, and the
reference mask moved by it (zero-filled, no wrap-around) removes the
background.

Conventions (all arrays (..., H, W); image (H, W), template (h, w), h <= H,
w <= W):

* ``cross_correlate(image, template, mode)`` equals
  ``scipy.signal.correlate(image, template, mode, method="direct")`` for real
  inputs, i.e. ``full[k] = sum_n image[n] * template[n - k + (h - 1, w - 1)]``
  with output (H + h - 1, W + w - 1); ``same`` is the centred (H, W) crop
  ``same = full[(h-1)//2 : (h-1)//2 + H, (w-1)//2 : (w-1)//2 + W]``.
* Displacement: if ``image[n] = template[n - d]`` (the template put at the
  image origin, then moved by d = (dy, dx)), the correlation peaks at
  ``full[d + (h - 1, w - 1)]`` = ``same[d + (h // 2, w // 2)]``, and
  ``locate`` returns d. For a template the size of the image d = 0 is perfect
  alignment (the ``same`` peak sits at (H // 2, W // 2)); d may be negative.
* ``shift_image(x, d)[n] = x[n - d]`` inside the frame, 0 outside, so
  ``shift_image(template, locate(...))`` reproduces the image's placement.

FFT sizes: a linear (not circular) correlation needs FFT length >= H + h - 1
per axis for ``full``; ``same`` only reads outputs from (h - 1)//2 on, so
length H + h//2 already keeps wrap-around out of the kept window. Each length
is rounded up to the next 2,3,5-smooth number (e.g. 96 x 96 image and
template, ``same``: 144 instead of 191 -> 192 for ``full``). Inputs are zero
padded at the end; the template is flipped so the product of spectra is a
convolution with the flipped template. Computation is float32 (complex64
spectra); agreement with scipy's float64 direct sum is to float32 rounding
(relative ~1e-6 of the output's scale).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

_MODES = ("full", "same")


def _fast_len(n: int) -> int:
  """Smallest 2,3,5-smooth integer >= n (cheap FFT length)."""
  best = 1
  while best < n:
    best *= 2
  p5 = 1
  while p5 < best:
    p35 = p5
    while p35 < best:
      p = p35
      while p < n:
        p *= 2
      best = min(best, p)
      p35 *= 3
    p5 *= 5
  return best


def _check_shapes(image_hw: tuple[int, ...], template_hw: tuple[int, ...],
                  mode: str) -> None:
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
  if len(image_hw) != 2 or len(template_hw) != 2:
    raise ValueError(f"need (H, W) shapes, got {image_hw} and {template_hw}")
  if template_hw[0] > image_hw[0] or template_hw[1] > image_hw[1]:
    raise ValueError(f"template {template_hw} must not be larger than the "
                     f"image {image_hw} on either axis")


def correlation_shape(image_hw: tuple[int, int], template_hw: tuple[int, int],
                      mode: str) -> tuple[int, int]:
  """(Hc, Wc) of ``cross_correlate``: (H + h - 1, W + w - 1) full, (H, W) same."""
  _check_shapes(tuple(image_hw), tuple(template_hw), mode)
  if mode == "full":
    return (image_hw[0] + template_hw[0] - 1, image_hw[1] + template_hw[1] - 1)
  return (image_hw[0], image_hw[1])


def _peak_offset(template_hw: tuple[int, int], mode: str) -> tuple[int, int]:
  """Index of zero displacement in the correlation map (see module doc)."""
  h, w = template_hw
  if mode == "full":
    return (h - 1, w - 1)
  return (h // 2, w // 2)


def _with_rank(x: jax.Array, ndim: int) -> jax.Array:
  """Prepends size-1 axes (explicit, so strict rank promotion is satisfied)."""
  return x.reshape((1,) * (ndim - x.ndim) + x.shape)


@functools.partial(jax.jit, static_argnames=("mode",))
def cross_correlate(image: ArrayLike, template: ArrayLike,
                    mode: str = "full") -> jax.Array:
  """2D cross-correlation by FFT, equal to scipy's direct correlation.

  Args:
    image: (..., H, W) real array (e.g. enhanced gradient images (B, H, W)).
    template: (..., h, w) real array with h <= H and w <= W; leading axes
      broadcast against the image's (a single (h, w) template serves a batch,
      and its spectrum is computed once).
    mode: "full" -> (..., H + h - 1, W + w - 1); "same" -> (..., H, W), the
      centred crop scipy returns.

  Returns:
    float32 (..., Hc, Wc) equal to ``scipy.signal.correlate(image, template,
    mode, method="direct")`` per slice, up to float32 rounding.
  """
  image = jnp.asarray(image, jnp.float32)
  template = jnp.asarray(template, jnp.float32)
  if image.ndim < 2 or template.ndim < 2:
    raise ValueError(f"need (..., H, W) arrays, got {image.shape} and "
                     f"{template.shape}")
  (big_h, big_w), (h, w) = image.shape[-2:], template.shape[-2:]
  _check_shapes((big_h, big_w), (h, w), mode)
  if mode == "full":
    start, out_hw = (0, 0), (big_h + h - 1, big_w + w - 1)
  else:
    start, out_hw = ((h - 1) // 2, (w - 1) // 2), (big_h, big_w)
  # A length >= (full length - start) keeps circular wrap-around out of the
  # kept window (wrapped terms land below index `start`).
  fft_hw = (_fast_len(big_h + h - 1 - start[0]),
            _fast_len(big_w + w - 1 - start[1]))
  ndim = max(image.ndim, template.ndim)
  image, template = _with_rank(image, ndim), _with_rank(template, ndim)
  spec_image = jnp.fft.rfft2(image, s=fft_hw)
  # Correlation = convolution with the flipped template.
  spec_template = jnp.fft.rfft2(jnp.flip(template, axis=(-2, -1)), s=fft_hw)
  full = jnp.fft.irfft2(spec_image * spec_template, s=fft_hw)
  return full[..., start[0]:start[0] + out_hw[0], start[1]:start[1] + out_hw[1]]


def _flat_peak(corr: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(B, Hc, Wc) -> row, col (B,) int32 of the first maximum, and the batch index."""
  batch, _, wc = corr.shape
  flat = jnp.argmax(corr.reshape(batch, -1), axis=-1).astype(jnp.int32)
  return flat // wc, flat % wc, jnp.arange(batch, dtype=jnp.int32)


def _parabolic(minus: jax.Array, centre: jax.Array, plus: jax.Array,
               inside: jax.Array) -> jax.Array:
  """Vertex of the parabola through (-1, minus), (0, centre), (1, plus).

  0 at the border of the map (``inside`` False) or where the three points are
  not strictly concave; clipped to [-0.5, 0.5] (a discrete maximum's vertex
  lies within half a pixel of it).
  """
  curvature = minus - 2.0 * centre + plus
  ok = inside & (curvature < 0)
  delta = 0.5 * (minus - plus) / jnp.where(ok, curvature, -1.0)
  return jnp.where(ok, jnp.clip(delta, -0.5, 0.5), 0.0)


def locate(corr: ArrayLike, *, image_shape: tuple[int, ...],
           template_shape: tuple[int, ...], mode: str,
           subpixel: bool = False) -> jax.Array:
  """Displacement (dy, dx) of the template in the image from a correlation map.

  Args:
    corr: (..., Hc, Wc) output of ``cross_correlate(image, template, mode)``.
    image_shape: the image's shape; only its last two entries (H, W) are used
      (to check ``corr``'s size).
    template_shape: the template's shape; last two entries (h, w) are used.
    mode: the mode ``corr`` was computed with, "full" or "same".
    subpixel: if True, refine the integer peak per axis with a parabola through
      the peak and its two neighbours along that axis.

  Returns:
    (..., 2) displacement d with ``image[n] ~= template[n - d]``: int32 when
    ``subpixel`` is False, float32 otherwise. Ties go to the first maximum in
    row-major order. Pure jnp; jit at the call site with the shapes and mode
    static.
  """
  corr = jnp.asarray(corr)
  image_hw = tuple(int(s) for s in image_shape[-2:])
  template_hw = tuple(int(s) for s in template_shape[-2:])
  expected = correlation_shape(image_hw, template_hw, mode)
  if corr.ndim < 2 or corr.shape[-2:] != expected:
    raise ValueError(f"corr has shape {corr.shape}; mode {mode!r} with image "
                     f"{image_hw} and template {template_hw} gives (..., "
                     f"{expected[0]}, {expected[1]})")
  lead = corr.shape[:-2]
  flat = corr.reshape((-1,) + expected)
  row, col, batch = _flat_peak(flat)
  offset = _peak_offset(template_hw, mode)
  disp = jnp.stack([row - offset[0], col - offset[1]], axis=-1)
  if not subpixel:
    return disp.reshape(lead + (2,))
  flat = flat.astype(jnp.float32)
  hc, wc = expected
  centre = flat[batch, row, col]
  dy = _parabolic(flat[batch, jnp.maximum(row - 1, 0), col], centre,
                  flat[batch, jnp.minimum(row + 1, hc - 1), col],
                  (row > 0) & (row < hc - 1))
  dx = _parabolic(flat[batch, row, jnp.maximum(col - 1, 0)], centre,
                  flat[batch, row, jnp.minimum(col + 1, wc - 1)],
                  (col > 0) & (col < wc - 1))
  refined = disp.astype(jnp.float32) + jnp.stack([dy, dx], axis=-1)
  return refined.reshape(lead + (2,))


def _shift_one(x: jax.Array, shift: jax.Array) -> jax.Array:
  """(H, W) moved by integer (2,) shift, zero-filled: out[n] = x[n - shift]."""
  big_h, big_w = x.shape
  padded = jnp.pad(x, ((big_h, big_h), (big_w, big_w)))
  # Start (H - dy, W - dx) in the padded frame; shifts beyond the frame are
  # clipped to +-H / +-W, which already read zeros only.
  dy = jnp.clip(shift[0], -big_h, big_h)
  dx = jnp.clip(shift[1], -big_w, big_w)
  return lax.dynamic_slice(padded, (big_h - dy, big_w - dx), (big_h, big_w))


def shift_image(x: ArrayLike, shift: ArrayLike) -> jax.Array:
  """Integer translation with zero fill (no wrap-around), batched.

  Args:
    x: (..., H, W) images or masks (dtype kept; bool masks stay bool).
    shift: (..., 2) displacement (dy, dx); leading axes broadcast against x's.
      May be traced (works under jit with dynamic shifts). Float shifts are
      rounded to the nearest integer.

  Returns:
    (broadcast leading axes..., H, W) with ``out[..., n] = x[..., n - shift]``
    where ``n - shift`` lies inside the frame and 0 elsewhere; the convention
    of ``locate``, so ``shift_image(template, locate(...))`` matches the image.
  """
  x = jnp.asarray(x)
  shift = jnp.asarray(shift)
  if x.ndim < 2 or shift.ndim < 1 or shift.shape[-1] != 2:
    raise ValueError(f"need x (..., H, W) and shift (..., 2), got {x.shape} "
                     f"and {shift.shape}")
  if jnp.issubdtype(shift.dtype, jnp.floating):
    shift = jnp.round(shift)
  shift = shift.astype(jnp.int32)
  lead = jnp.broadcast_shapes(x.shape[:-2], shift.shape[:-1])
  hw = x.shape[-2:]
  x = jnp.broadcast_to(x, lead + hw).reshape((-1,) + hw)
  shift = jnp.broadcast_to(shift, lead + (2,)).reshape(-1, 2)
  return jax.vmap(_shift_one)(x, shift).reshape(lead + hw)


def peak_confidence(corr: ArrayLike, *, exclude: int = 5) -> jax.Array:
  """Peak-to-sidelobe ratio of correlation maps, a placement-confidence score.

  PSR = (peak - mean(sidelobe)) / std(sidelobe), the sidelobe being every
  pixel outside the (2 exclude + 1)^2 window around the maximum. A sharp,
  isolated peak scores high; a flat or ambiguous map scores near 0.

  Args:
    corr: (..., Hc, Wc) correlation maps.
    exclude: half-width of the window around the peak left out of the sidelobe.

  Returns:
    float32 (...,). 0 where the sidelobe is constant (std 0).
  """
  corr = jnp.asarray(corr, jnp.float32)
  lead, (hc, wc) = corr.shape[:-2], corr.shape[-2:]
  flat = corr.reshape(-1, hc, wc)
  row, col, batch = _flat_peak(flat)
  peak = flat[batch, row, col]
  rows = lax.broadcasted_iota(jnp.int32, (1, hc, wc), 1)
  cols = lax.broadcasted_iota(jnp.int32, (1, hc, wc), 2)
  near = ((jnp.abs(rows - row[:, None, None]) <= exclude)
          & (jnp.abs(cols - col[:, None, None]) <= exclude))
  side = ~near
  count = jnp.maximum(jnp.sum(side, axis=(1, 2)), 1).astype(jnp.float32)
  mean = jnp.sum(jnp.where(side, flat, 0.0), axis=(1, 2)) / count
  dev = jnp.where(side, flat - mean[:, None, None], 0.0)
  std = jnp.sqrt(jnp.sum(dev * dev, axis=(1, 2)) / count)
  psr = jnp.where(std > 0, (peak - mean) / jnp.where(std > 0, std, 1.0), 0.0)
  return psr.reshape(lead)
