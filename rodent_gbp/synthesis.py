"""Training images synthesised from label maps on the device (pure JAX, keyed).

Domain randomisation in the manner of SynthSeg / SynthStrip, on 2D slices: a
network that only ever sees images whose contrast, resolution, bias, noise and
pose are drawn at random learns features that do not depend on any of them.
:func:`synthesize` turns a batch of label slices (``labels``: fine synthesis
label ids; ``target``: the training classes 0 background, 1 WM, 2 GM, 3 CSF,
4 brain of unknown tissue) into images, one PRNG key per slice (``vmap``).
Every stage is a pure function of static shapes, so a training step that
calls it compiles once per batch shape and :class:`SynthOptions`.

Per slice, in this order:

1. geometry, ONE resampling of the output grid: output pixel ``p`` reads the
   input at ``c + M (p - c) + t`` (``c`` the centre, (row, col)), with
   ``M = rotation @ diag(1 / zoom) @ D``. ``zoom`` is the slice's stored pixel
   size over the model's times a random log-uniform factor; ``D`` is a
   quarter turn (``np.rot90``: counter-clockwise, applied to the rows/cols
   of the array) and flips of either axis, acting on the output. Labels and
   target are sampled nearest (``map_coordinates`` order 0), a real image
   linearly; outside the input is label 0, target 0, image 0. With
   ``spatial`` off only ``zoom`` acts (zoom 1: the identity, exactly);
2. intensities, drawn on the OUTPUT grid (texture at output resolution): a
   mean in [0, 1] per label, either independently per label or, with
   probability ``p_coherent``, one mean per tissue GROUP plus a small
   per-label jitter (labels of one tissue look alike, as in a real scan). The
   outside group is dark air (``U(0, 0.03)``) with probability
   ``p_dark_outside`` in both modes. The image is ``mean[label]`` plus
   unsmoothed additive Gaussian texture of sd ``texture``, clipped at 0 (the
   blur and low-resolution stages below correlate it when they are on);
3. resolution, as ``H x H`` and ``W x W`` linear operators applied to rows and
   columns (matrix products, static shapes for any factor): with probability
   ``p_low_res`` a thick/coarse acquisition of per-axis factor
   ``f ~ U(1, max_low_res)`` (a Gaussian of the partial-volume width
   ``sqrt((f^2 - 1) / 12)``, samples every ``f`` pixels, linear interpolation
   back), then an anisotropic Gaussian blur of per-axis sd ``U(0,
   max_blur_px)`` truncated at a fixed radius;
4. a real image replaces the synthetic one when the slice has one and a coin
   (``p_real``) says so: it skips stages 2-3 and goes on with the rest;
5. a smooth multiplicative bias ``exp(field)`` (a coarse normal grid resized
   linearly), a division by the maximum (the scale for the following two
   stages), gamma ``x ** exp(N(0, gamma_sd))``, Rician noise
   ``sqrt((x + s n1)^2 + (s n2)^2)`` with ``s ~ U(0, max_noise)``;
6. with probability ``p_masked`` the image times its brain mask (target in
   1..4), as a skull-stripped scan; then :func:`robust_max_normalise`, the
   rule of ``rodent_gbp.data.normalise_intensity`` that inference applies;
7. with probability ``p_crop`` (0 by default) a field of view that ends
   inside the slice (:func:`field_of_view`): image, target and labels 0 beyond
   it, as a tightly cropped scan padded onto the model grid.

The key of a slice is split into one key per stage whatever the options, so
switching a stage off does not change the draws of the others. Example::

  out = jax.jit(synthesize, static_argnames="options")(
      key, labels, target, zoom, group_of_label, SynthOptions())
  image, target = out["image"], out["target"]
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

#: Tissue groups of the synthesis labels (``group_of_label`` values).
OUTSIDE, WM, GM, CSF, BRAIN_OTHER, HEAD = range(6)
NUM_GROUPS = 6
#: Upper bound of the dark air intensity.
AIR_MAX = 0.03
_HIGHEST = jax.lax.Precision.HIGHEST      # no TF32 in the resolution operators


@dataclasses.dataclass(frozen=True)
class SynthOptions:
  """Ranges of the random synthesis; hashable (a static jit argument).

  Intensities are relative to a [0, 1] range. Attributes beyond the stage
  switches: ``jitter`` (sd of a label's mean about its group's in a coherent
  draw), ``p_dark_outside`` (probability that the outside group is dark air),
  ``max_low_res`` (largest coarse-acquisition factor per axis), ``bias_grid``
  (side of the coarse bias grid) and ``percentile`` (of the normalisation).
  """

  num_labels: int = 512
  texture: float = 0.04
  p_coherent: float = 0.5
  jitter: float = 0.03
  p_dark_outside: float = 0.8
  spatial: bool = True
  rotate_deg: float = 15.0
  max_zoom: float = 1.2
  p_flip: float = 0.5
  p_turn: float = 0.25
  translate: float = 0.08
  blur: bool = True
  max_blur_px: float = 1.5
  low_res: bool = True
  p_low_res: float = 0.3
  max_low_res: float = 3.0
  bias: bool = True
  bias_strength: float = 0.4
  bias_grid: int = 5
  gamma: bool = True
  gamma_sd: float = 0.3
  noise: bool = True
  max_noise: float = 0.08
  p_real: float = 0.3
  p_masked: float = 0.5
  percentile: float = 99.0
  p_crop: float = 0.0
  max_crop: float = 0.35

  def __post_init__(self):
    # An integer given for a float field (p_real=1) would make an integer jax draw.
    for field in dataclasses.fields(self):
      if field.type == "float":
        object.__setattr__(self, field.name, float(getattr(self, field.name)))


# --- normalisation -------------------------------------------------------------

def robust_max_normalise(x: jax.Array, percentile: float = 99.0
                         ) -> tuple[jax.Array, jax.Array]:
  """``x / scale`` with ``scale`` the ``percentile`` of the voxels above the mean.

  The jittable twin of ``rodent_gbp.data.normalise_intensity`` for one image:
  the voxels above the mean are the top ``n`` of the sorted image, and the
  percentile interpolates linearly between ranks as ``np.percentile`` does.

  Args:
    x: an image, any shape.
    percentile: in [0, 100].

  Returns:
    (x / scale float32, scale () float32); scale is 1 when no voxel is above
    the mean or the percentile is <= 0 or not finite.
  """
  flat = x.reshape(-1).astype(jnp.float32)
  size = flat.shape[0]
  n = jnp.sum(flat > jnp.mean(flat)).astype(jnp.int32)
  ranked = jnp.sort(flat)
  pos = (n - 1).astype(jnp.float32) * (percentile / 100.0)
  lo = jnp.floor(pos)
  t = pos - lo
  lo = lo.astype(jnp.int32)
  hi = jnp.minimum(lo + 1, n - 1)
  a = ranked[jnp.clip(size - n + lo, 0, size - 1)]
  b = ranked[jnp.clip(size - n + hi, 0, size - 1)]
  # numpy's lerp: from the nearer end.
  q = jnp.where(t >= 0.5, b - (b - a) * (1.0 - t), a + (b - a) * t)
  scale = jnp.where((n > 0) & jnp.isfinite(q) & (q > 0), q, 1.0)
  return flat.reshape(x.shape) / scale, scale


# --- geometry ------------------------------------------------------------------

def _rotation(degrees: jax.Array) -> jax.Array:
  a = jnp.deg2rad(degrees)
  c, s = jnp.cos(a), jnp.sin(a)
  return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])


def geometry(key: jax.Array, zoom: jax.Array, shape: tuple[int, int],
             options: SynthOptions) -> tuple[jax.Array, jax.Array]:
  """A random output-to-input ``(matrix (2, 2), offset (2,))`` about the centre.

  Args:
    key: the geometry stage's key.
    zoom: () stored pixel size / model pixel size (content appears ``zoom`` x
      as large).
    shape: (H, W).
    options: ranges; with ``spatial`` off the map is ``diag(1 / zoom)``.
  """
  kt, kf, kr, kz, ks = jax.random.split(key, 5)
  zoom = jnp.asarray(zoom, jnp.float32)
  eye = jnp.eye(2, dtype=jnp.float32)
  if not options.spatial:
    return eye / zoom, jnp.zeros(2, jnp.float32)
  # Quarter turn (output to input of np.rot90: out[i, j] = in[j, W-1-i]), flips first.
  quarter = jnp.array([[0.0, 1.0], [-1.0, 0.0]], jnp.float32)
  turn = jnp.where(jax.random.bernoulli(kt, options.p_turn), quarter, eye)
  flips = jax.random.bernoulli(kf, options.p_flip, (2,))
  dihedral = turn @ jnp.diag(jnp.where(flips, -1.0, 1.0).astype(jnp.float32))
  angle = jax.random.uniform(kr, (), jnp.float32, -options.rotate_deg, options.rotate_deg)
  lz = math.log(options.max_zoom)
  zoom = zoom * jnp.exp(jax.random.uniform(kz, (), jnp.float32, -lz, lz))
  matrix = _rotation(angle) @ (eye / zoom) @ dihedral
  size = jnp.array(shape, jnp.float32)
  offset = jax.random.uniform(ks, (2,), jnp.float32, -options.translate,
                              options.translate) * size
  return matrix, offset


def source_points(matrix: jax.Array, offset: jax.Array, shape: tuple[int, int]
                  ) -> jax.Array:
  """(2, H, W) input coordinates ``c + matrix (p - c) + offset`` of every output pixel."""
  h, w = shape
  centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0], jnp.float32)
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                            jnp.arange(w, dtype=jnp.float32), indexing="ij")
  p = jnp.stack([rows, cols]) - centre[:, None, None]
  src = jnp.einsum("ij,jhw->ihw", matrix, p, precision=_HIGHEST) \
      + (centre + offset)[:, None, None]
  # Integers up to float error stay integers (exact quarter turns and identity).
  return jnp.where(jnp.abs(src - jnp.round(src)) < 1e-4, jnp.round(src), src)


def _sample(a: jax.Array, src: jax.Array, order: int) -> jax.Array:
  return jax.scipy.ndimage.map_coordinates(a.astype(jnp.float32), [src[0], src[1]],
                                           order=order, mode="constant", cval=0.0)


# --- intensities -----------------------------------------------------------------

def draw_intensities(key: jax.Array, group_of_label: jax.Array, options: SynthOptions
                     ) -> jax.Array:
  """(num_labels,) float32 means in [0, 1]: per group (coherent) or per label."""
  kc, kg, kj, ki, kd, ka = jax.random.split(key, 6)
  n = options.num_labels
  group = jnp.clip(group_of_label.astype(jnp.int32), 0, NUM_GROUPS - 1)
  group_mean = jax.random.uniform(kg, (NUM_GROUPS,), jnp.float32)
  coherent = jnp.clip(group_mean[group]
                      + options.jitter * jax.random.normal(kj, (n,), jnp.float32), 0.0, 1.0)
  independent = jax.random.uniform(ki, (n,), jnp.float32)
  means = jnp.where(jax.random.bernoulli(kc, options.p_coherent), coherent, independent)
  air = jax.random.uniform(ka, (n,), jnp.float32, 0.0, AIR_MAX)
  dark = jax.random.bernoulli(kd, options.p_dark_outside) & (group == OUTSIDE)
  return jnp.where(dark, air, means)


def gaussian_operator(n: int, sigma: jax.Array, radius: int) -> jax.Array:
  """(n, n) row-normalised Gaussian smoothing, zero beyond ``radius``; sd 0 is I."""
  i = jnp.arange(n, dtype=jnp.float32)
  d = i[:, None] - i[None, :]
  s = jnp.maximum(sigma, 1e-3)
  k = jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * (d / s) ** 2), 0.0)
  return k / jnp.sum(k, axis=1, keepdims=True)


def coarse_operator(n: int, factor: jax.Array) -> jax.Array:
  """(n, n) sampling every ``factor`` pixels, linear interpolation back; 1 is I."""
  u = jnp.arange(n, dtype=jnp.float32) / factor
  k0 = jnp.floor(u)
  t = (u - k0)[:, None]
  j = jnp.arange(n, dtype=jnp.float32)[None, :]
  hat = lambda s: jnp.maximum(0.0, 1.0 - jnp.abs(jnp.minimum(s, n - 1.0)[:, None] - j))
  return (1.0 - t) * hat(k0 * factor) + t * hat((k0 + 1.0) * factor)


def _apply(rows: jax.Array, cols: jax.Array, x: jax.Array) -> jax.Array:
  """``rows @ x @ cols.T`` at full float32 precision."""
  x = jnp.matmul(rows, x, precision=_HIGHEST)
  return jnp.matmul(x, cols.T, precision=_HIGHEST)


def degrade(key: jax.Array, x: jax.Array, options: SynthOptions) -> jax.Array:
  """The low-resolution and blur stages on an (H, W) image (each if switched on)."""
  kl, kf, kb = jax.random.split(key, 3)
  h, w = x.shape
  if options.low_res:
    coarse = jax.random.bernoulli(kl, options.p_low_res)
    f = jnp.where(coarse, jax.random.uniform(kf, (2,), jnp.float32, 1.0,
                                             options.max_low_res), 1.0)
    pv = jnp.sqrt((f * f - 1.0) / 12.0)             # partial-volume width beyond a pixel
    r = math.ceil(3 * math.sqrt((options.max_low_res ** 2 - 1) / 12.0))
    x = _apply(gaussian_operator(h, pv[0], r), gaussian_operator(w, pv[1], r), x)
    x = _apply(coarse_operator(h, f[0]), coarse_operator(w, f[1]), x)
  if options.blur:
    sd = jax.random.uniform(kb, (2,), jnp.float32, 0.0, options.max_blur_px)
    r = max(1, math.ceil(3 * options.max_blur_px))
    x = _apply(gaussian_operator(h, sd[0], r), gaussian_operator(w, sd[1], r), x)
  return x


def bias_field(key: jax.Array, shape: tuple[int, int], strength: float, grid: int
               ) -> jax.Array:
  """(H, W) smooth positive field ``exp`` of a resized coarse normal grid."""
  coarse = strength * jax.random.normal(key, (grid, grid), jnp.float32)
  return jnp.exp(jax.image.resize(coarse, shape, method="linear"))


# --- one slice, a batch ------------------------------------------------------------

def synthesize_one(key: jax.Array, labels: jax.Array, target: jax.Array, zoom: jax.Array,
                   group_of_label: jax.Array, options: SynthOptions,
                   image: jax.Array | None = None, has_image: jax.Array | None = None
                   ) -> dict[str, jax.Array]:
  """One slice of :func:`synthesize` ((H, W) inputs, () zoom and has_image)."""
  (k_geo, k_int, k_tex, k_res, k_real, k_bias, k_gamma, k_noise,
   k_mask) = jax.random.split(key, 9)
  shape = labels.shape
  matrix, offset = geometry(k_geo, zoom, shape, options)
  src = source_points(matrix, offset, shape)
  labels = _sample(labels, src, 0).astype(jnp.int32)
  target = _sample(target, src, 0).astype(jnp.int32)

  means = draw_intensities(k_int, group_of_label, options)
  x = means[jnp.clip(labels, 0, options.num_labels - 1)]
  x = jnp.maximum(x + options.texture * jax.random.normal(k_tex, shape, jnp.float32), 0.0)
  x = degrade(k_res, x, options)
  if image is not None:
    real = jnp.maximum(_sample(image, src, 1), 0.0)
    use = jnp.asarray(has_image, jnp.bool_) & jax.random.bernoulli(k_real, options.p_real)
    x = jnp.where(use, real, x)

  if options.bias:
    x = x * bias_field(k_bias, shape, options.bias_strength, options.bias_grid)
  peak = jnp.max(x)
  peak = jnp.where(peak > 0, peak, 1.0)
  x = x / peak
  if options.gamma:
    x = x ** jnp.exp(options.gamma_sd * jax.random.normal(k_gamma, (), jnp.float32))
  if options.noise:
    ks, k1, k2 = jax.random.split(k_noise, 3)
    s = jax.random.uniform(ks, (), jnp.float32, 0.0, options.max_noise)
    n1 = jax.random.normal(k1, shape, jnp.float32)
    n2 = jax.random.normal(k2, shape, jnp.float32)
    x = jnp.sqrt((x + s * n1) ** 2 + (s * n2) ** 2)
  brain = (target >= 1) & (target <= 4)
  masked = jax.random.bernoulli(k_mask, options.p_masked)
  x = jnp.where(masked & ~brain, 0.0, x)
  x, scale = robust_max_normalise(x, options.percentile)
  if options.p_crop > 0:
    x, target, labels = field_of_view(jax.random.fold_in(k_mask, 1), x, target, labels,
                                      options)
  return dict(image=x, target=target, labels=labels, intensities=means,
              scale=peak * scale)


def field_of_view(key: jax.Array, x: jax.Array, target: jax.Array, labels: jax.Array,
                  options: SynthOptions) -> tuple[jax.Array, jax.Array, jax.Array]:
  """With probability ``p_crop`` a scan whose field of view ends inside the
  slice: each side is cut by ``U(0, max_crop)`` of the size with probability
  1/2; image, target and labels are 0 beyond (as the zero padding of a tightly
  cropped scan on the model grid: no image there, so no brain either)."""
  k_on, k_side, k_cut = jax.random.split(key, 3)
  h, w = x.shape
  cut = jax.random.uniform(k_cut, (4,), jnp.float32, 0.0, options.max_crop)
  cut = jnp.where(jax.random.bernoulli(k_side, 0.5, (4,)), cut, 0.0)
  rows = jnp.arange(h, dtype=jnp.float32)[:, None] + 0.5
  cols = jnp.arange(w, dtype=jnp.float32)[None, :] + 0.5
  box = ((rows >= cut[0] * h) & (rows <= h - cut[1] * h)
         & (cols >= cut[2] * w) & (cols <= w - cut[3] * w))
  box = box | ~jax.random.bernoulli(k_on, options.p_crop)
  return (jnp.where(box, x, 0.0), jnp.where(box, target, 0).astype(target.dtype),
          jnp.where(box, labels, 0).astype(labels.dtype))


def synthesize(key: jax.Array, labels: jax.Array, target: jax.Array, zoom: jax.Array,
               group_of_label: jax.Array, options: SynthOptions = SynthOptions(),
               image: jax.Array | None = None, has_image: jax.Array | None = None
               ) -> dict[str, jax.Array]:
  """Images synthesised from a batch of label slices, one key per slice.

  Args:
    key: PRNG key; the same key gives bit-identical outputs.
    labels: (B, H, W) int synthesis label ids in ``[0, num_labels)``.
    target: (B, H, W) int training classes (0 background, 1 WM, 2 GM, 3 CSF,
      4 brain of unknown tissue), resampled exactly as ``labels``.
    zoom: (B,) float, stored pixel size / model pixel size.
    group_of_label: (num_labels,) int, each label's group (``OUTSIDE`` ...
      ``HEAD``).
    options: static ranges and switches.
    image: optional (B, H, W) float real images (any positive scale).
    has_image: (B,) bool, which slices have a real image (all when None).

  Returns:
    dict of ``image`` (B, H, W) float32 (robust-max normalised), ``target``
    and ``labels`` (B, H, W) int32 on the output grid, ``intensities`` (B,
    num_labels) float32 (the drawn means; meaningless for a real-image slice)
    and ``scale`` (B,) float32, the product of the two divisions (by the
    maximum and by the robust maximum): with bias, gamma and noise off,
    ``image * scale`` is the image before them (the drawn intensities plus
    texture, or the resampled real image).
  """
  keys = jax.random.split(key, labels.shape[0])
  zoom = jnp.asarray(zoom, jnp.float32)
  if image is not None and has_image is None:
    has_image = jnp.ones(labels.shape[:1], jnp.bool_)
  one = lambda k, l, t, z, im, hi: synthesize_one(k, l, t, z, group_of_label, options, im, hi)
  return jax.vmap(one)(keys, labels, target, zoom, image, has_image)
