"""Known answers of the on-device augmentation (rodent_gbp.training.augment)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rodent_gbp.training import augment


def _disk(n: int, r: float, centre=None) -> np.ndarray:
  cy, cx = ((n - 1) / 2,) * 2 if centre is None else centre
  y, x = np.mgrid[:n, :n]
  return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


@pytest.fixture(scope="module")
def pair():
  rng = np.random.default_rng(0)
  image = rng.random((24, 24)).astype(np.float32)
  return image, image > 0.5


def test_zero_angle_unit_scale_is_identity(pair):
  image, mask = pair
  out, m = augment.warp(jnp.asarray(image), jnp.asarray(mask), augment.rotation_matrix(0.0),
                        jnp.zeros(2))
  np.testing.assert_array_equal(np.asarray(out), image)
  np.testing.assert_array_equal(np.asarray(m), mask)
  # The whole random pipeline with every range at its identity.
  out, m = jax.jit(augment.augment_pair, static_argnums=3)(
      jax.random.key(3), jnp.asarray(image), jnp.asarray(mask), augment.IDENTITY)
  np.testing.assert_allclose(np.asarray(out), image, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(m), mask)


@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flip", [False, True])
def test_dihedral_equals_numpy(pair, k, flip):
  image, mask = pair
  out, m = augment.warp(jnp.asarray(image), jnp.asarray(mask),
                        augment.dihedral_matrix(jnp.int32(k), jnp.bool_(flip)), jnp.zeros(2))
  ref = np.rot90(np.flipud(image) if flip else image, k)
  np.testing.assert_array_equal(np.asarray(out), ref)
  np.testing.assert_array_equal(np.asarray(m), ref > 0.5)


def test_ninety_degree_rotation_equals_rot90(pair):
  image, mask = pair
  out, _ = augment.warp(jnp.asarray(image), jnp.asarray(mask), augment.rotation_matrix(90.0),
                        jnp.zeros(2))
  # The matrix maps output to source: +90 degrees of sampling is a clockwise turn.
  np.testing.assert_allclose(np.asarray(out), np.rot90(image, -1), atol=1e-5)


@pytest.mark.parametrize("factor", [1.4, 1 / 1.4])
def test_scaling_a_disk_scales_its_area_by_the_square(factor):
  disk = _disk(96, 16.0)
  matrix = jnp.diag(jnp.full((2,), 1.0 / factor, jnp.float32))
  out, m = augment.warp(jnp.asarray(disk, jnp.float32), jnp.asarray(disk), matrix,
                        jnp.zeros(2))
  ratio = np.asarray(m).sum() / disk.sum()
  assert ratio == pytest.approx(factor ** 2, rel=0.03)
  # Image and mask move together: the warped image thresholded is the warped mask.
  np.testing.assert_array_equal(np.asarray(out) > 0.5, np.asarray(m))


def test_random_masks_stay_binary_and_follow_the_image():
  disks = np.stack([_disk(32, r, (12 + r / 2, 15)) for r in (5, 7, 9, 11)])
  geometric = dataclasses.replace(augment.AugmentOptions(), bias=0.0, gamma=1.0, scale=1.0,
                                  noise=0.0)
  fn = jax.jit(augment.augment_batch, static_argnums=3)
  images, masks = fn(jax.random.key(0), jnp.asarray(disks, jnp.float32), jnp.asarray(disks),
                     geometric)
  assert masks.dtype == jnp.bool_ and masks.shape == disks.shape
  np.testing.assert_array_equal(np.asarray(images) > 0.5, np.asarray(masks))
  # Areas stay within the resolution range (1.5 x anisotropy 1.1 per axis, squared).
  ratio = np.asarray(masks).sum((1, 2)) / disks.sum((1, 2))
  assert np.all(ratio > 1 / 1.65 ** 2 * 0.9) and np.all(ratio < 1.65 ** 2 * 1.1)
  # Same key, same draw; another key, another draw.
  again = fn(jax.random.key(0), jnp.asarray(disks, jnp.float32), jnp.asarray(disks), geometric)
  np.testing.assert_array_equal(np.asarray(again[1]), np.asarray(masks))
  other = fn(jax.random.key(1), jnp.asarray(disks, jnp.float32), jnp.asarray(disks), geometric)
  assert not np.array_equal(np.asarray(other[1]), np.asarray(masks))


def test_intensity_ops_keep_the_mask():
  image = jnp.asarray(np.random.default_rng(1).random((3, 16, 16)), jnp.float32) + 0.5
  mask = image > 1.0
  intensity_only = dataclasses.replace(augment.IDENTITY, bias=0.3, gamma=1.4, scale=1.25,
                                       noise=0.05)
  out, m = augment.augment_batch(jax.random.key(2), image, mask, intensity_only)
  np.testing.assert_array_equal(np.asarray(m), np.asarray(mask))
  assert not np.allclose(np.asarray(out), np.asarray(image), atol=1e-3)


def test_bias_field_is_smooth_positive_and_bounded():
  field = np.asarray(augment.bias_field(jax.random.key(0), (32, 32), 0.3, 4))
  assert np.all(field > 0)
  # Bilinear of a 4 x 4 grid: neighbouring pixels differ by far less than the range.
  assert np.abs(np.diff(field, axis=0)).max() < 0.2 * (field.max() - field.min() + 1e-6) + 0.05
