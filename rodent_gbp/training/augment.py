"""On-device augmentation of raw slices and their brain masks (pure JAX, keyed).

One training pair is a raw normalised slice (H, W) and its brain mask (H, W).
:func:`augment_batch` draws, from one PRNG key per slice (``vmap``):

* geometry, applied identically to image and mask in ONE resampling: a random
  element of the dihedral group (flips and 90-degree rotations, so a
  mislabelled in-plane orientation of a scan does not matter), a small
  rotation, a global rescaling by a log-uniform factor in
  ``[1 / resolution, resolution]`` (the source's voxel size is uncertain:
  resolution jitter), a small anisotropic stretch and a small shift. The
  image is sampled bilinearly, the mask bilinearly then thresholded at 0.5
  (nearest-like, stays binary); outside the field of view is 0;
* intensity, on the image only: a smooth multiplicative bias field
  (``exp`` of a bilinearly upsampled coarse Gaussian grid), a gamma
  ``|x|**g`` with ``log g`` uniform, a global scale and additive Gaussian
  noise of random strength.

The geometric map sends output pixel ``p`` to source point
``A (p - c) + c + t`` (``c`` the image centre, (row, col) coordinates), so
``A = I, t = 0`` is the identity; :func:`warp` applies an explicit ``(A, t)``,
which the tests use for known answers.

Example::

  key = jax.random.key(0)
  images, masks = augment_batch(key, images, masks, AugmentOptions())
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
  """Ranges of the random transforms; hashable (a static jit argument).

  Attributes:
    dihedral: draw flips and 90-degree rotations (all 8 in-plane orientations).
    max_rotation: small rotations uniform in +- this many degrees.
    resolution: content rescaled by a log-uniform factor in
      ``[1 / resolution, resolution]`` (>= 1; 1 is no rescaling).
    anisotropy: per-axis extra log-uniform stretch in ``[1/a, a]``.
    max_shift: shift uniform in +- this many pixels per axis.
    bias: standard deviation of the log bias field's coarse grid values.
    bias_grid: coarse grid size of the bias field (smoothness).
    gamma: ``log g`` uniform in +- ``log(gamma)``.
    scale: global intensity factor log-uniform in ``[1/scale, scale]``.
    noise: additive Gaussian noise, sd uniform in ``[0, noise]``.
  """

  dihedral: bool = True
  max_rotation: float = 15.0
  resolution: float = 1.5
  anisotropy: float = 1.1
  max_shift: float = 4.0
  bias: float = 0.3
  bias_grid: int = 4
  gamma: float = 1.4
  scale: float = 1.25
  noise: float = 0.05


#: Nothing changes (the tests' identity).
IDENTITY = AugmentOptions(dihedral=False, max_rotation=0.0, resolution=1.0, anisotropy=1.0,
                          max_shift=0.0, bias=0.0, gamma=1.0, scale=1.0, noise=0.0)


def dihedral_matrix(k: jax.Array, flip: jax.Array) -> jax.Array:
  """(2, 2) exact integer matrix of ``np.rot90(np.flipud(x) if flip else x, k)``.

  The warp maps output to source, so this is the inverse map of that array
  operation in (row, col) coordinates about the centre.

  Args:
    k: () int, quarter turns (counter-clockwise, as ``np.rot90``).
    flip: () bool, flip rows (``np.flipud``) first.
  """
  # Inverse of rot90 by one quarter turn: out[i, j] = in[j, W-1-i] about the centre,
  # i.e. source = R @ (p - c) with R = [[0, 1], [-1, 0]]; rot90^k -> R^k.
  r = jnp.array([[0.0, 1.0], [-1.0, 0.0]], jnp.float32)
  powers = jnp.stack([jnp.eye(2, dtype=jnp.float32), r, r @ r, r @ r @ r])
  rk = powers[jnp.mod(k, 4)]
  f = jnp.where(flip, jnp.diag(jnp.array([-1.0, 1.0], jnp.float32)),
                jnp.eye(2, dtype=jnp.float32))
  # out = rot90^k(flipud(x)): source = F @ R^k @ (p - c).
  return f @ rk


def rotation_matrix(degrees: jax.Array) -> jax.Array:
  """(2, 2) rotation by ``degrees`` in (row, col) coordinates."""
  a = jnp.deg2rad(jnp.asarray(degrees, jnp.float32))
  c, s = jnp.cos(a), jnp.sin(a)
  return jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])


def warp(image: jax.Array, mask: jax.Array, matrix: jax.Array, offset: jax.Array
         ) -> tuple[jax.Array, jax.Array]:
  """Resamples image and mask at source points ``matrix (p - c) + c + offset``.

  Args:
    image: (H, W) float.
    mask: (H, W) bool or {0, 1}.
    matrix: (2, 2) output-to-source linear map (row, col).
    offset: (2,) source shift in pixels.

  Returns:
    image (H, W) float32 (bilinear, 0 outside), mask (H, W) bool (bilinear
    then > 0.5, so a mask stays binary and matches the image's geometry).
  """
  h, w = image.shape
  centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0], jnp.float32)
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32),
                            jnp.arange(w, dtype=jnp.float32), indexing="ij")
  p = jnp.stack([rows, cols]) - centre[:, None, None]
  src = jnp.einsum("ij,jhw->ihw", matrix.astype(jnp.float32), p) \
      + (centre + offset.astype(jnp.float32))[:, None, None]
  # Round coordinates that are integers up to float error (exact 90-degree turns).
  src = jnp.where(jnp.abs(src - jnp.round(src)) < 1e-4, jnp.round(src), src)
  sample = lambda a: jax.scipy.ndimage.map_coordinates(
      a.astype(jnp.float32), [src[0], src[1]], order=1, mode="constant", cval=0.0)
  return sample(image), sample(mask) > 0.5


def bias_field(key: jax.Array, shape: tuple[int, int], sd: float, grid: int) -> jax.Array:
  """(H, W) smooth positive field ``exp(upsampled coarse Gaussian grid)``."""
  coarse = sd * jax.random.normal(key, (grid, grid), jnp.float32)
  return jnp.exp(jax.image.resize(coarse, shape, method="linear"))


def _log_uniform(key: jax.Array, bound: float, shape=()) -> jax.Array:
  """exp(U(-log b, log b)): a factor in [1/b, b]."""
  lb = math.log(bound)
  return jnp.exp(jax.random.uniform(key, shape, jnp.float32, -lb, lb))


def geometry(key: jax.Array, options: AugmentOptions) -> tuple[jax.Array, jax.Array]:
  """A random output-to-source ``(matrix (2, 2), offset (2,))`` under ``options``."""
  kd, kf, kr, ks, ka, kt = jax.random.split(key, 6)
  if options.dihedral:
    d = dihedral_matrix(jax.random.randint(kd, (), 0, 4), jax.random.bernoulli(kf))
  else:
    d = jnp.eye(2, dtype=jnp.float32)
  angle = jax.random.uniform(kr, (), jnp.float32, -options.max_rotation, options.max_rotation)
  # Content scaled by s means sampling the source at 1/s the distance.
  zoom = _log_uniform(ks, options.resolution) * _log_uniform(ka, options.anisotropy, (2,))
  matrix = d @ rotation_matrix(angle) @ jnp.diag(1.0 / zoom)
  offset = jax.random.uniform(kt, (2,), jnp.float32, -options.max_shift, options.max_shift)
  return matrix, offset


def intensity(key: jax.Array, image: jax.Array, options: AugmentOptions) -> jax.Array:
  """Bias field, gamma, global scale and noise on an (H, W) image (mask untouched)."""
  kb, kg, ks, kn, kz = jax.random.split(key, 5)
  x = image * bias_field(kb, image.shape, options.bias, options.bias_grid)
  g = _log_uniform(kg, options.gamma)
  # Sign kept: a normalised raw slice may dip below 0 after noise or interpolation.
  x = jnp.sign(x) * jnp.abs(x) ** g
  x = x * _log_uniform(ks, options.scale)
  sd = jax.random.uniform(kn, (), jnp.float32, 0.0, options.noise)
  return x + sd * jax.random.normal(kz, image.shape, jnp.float32)


def augment_pair(key: jax.Array, image: jax.Array, mask: jax.Array,
                 options: AugmentOptions) -> tuple[jax.Array, jax.Array]:
  """One random augmentation of an (H, W) image and its (H, W) mask."""
  kg, ki = jax.random.split(key)
  matrix, offset = geometry(kg, options)
  image, mask = warp(image, mask, matrix, offset)
  return intensity(ki, image, options), mask


def augment_batch(key: jax.Array, images: jax.Array, masks: jax.Array,
                  options: AugmentOptions = AugmentOptions()
                  ) -> tuple[jax.Array, jax.Array]:
  """Independent augmentations of (B, H, W) images and masks, one key per slice.

  Returns:
    images (B, H, W) float32, masks (B, H, W) bool.
  """
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(augment_pair, in_axes=(0, 0, 0, None))(keys, images, masks, options)


def flip_and_scale(rng: jax.Array, image: jax.Array, label: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """The tissue preset: random left-right flip and intensity scale, independently per slice.

  Only the R-L axis (H) is flipped: the brain is near mirror-symmetric across
  the midline, while superior/inferior flips would make anatomy the test set
  never shows. The scale factor in [0.9, 1.1] mimics the phantom's +-15 % bias
  field between animals; zero (stripped) background stays zero.

  Args:
    rng: key.
    image: (B, H, W, 1).
    label: (B, H, W).
  """
  flip_rng, scale_rng = jax.random.split(rng)
  b = image.shape[0]
  flip = jax.random.bernoulli(flip_rng, 0.5, (b,))
  image = jnp.where(flip[:, None, None, None], image[:, ::-1], image)
  label = jnp.where(flip[:, None, None], label[:, ::-1], label)
  scale = jax.random.uniform(scale_rng, (b, 1, 1, 1), image.dtype, 0.9, 1.1)
  return image * scale, label
