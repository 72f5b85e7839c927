"""Known-answer tests for the Eq. 1 enhancement (rodent_gbp.enhance)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rodent_gbp import enhance


def test_hand_computed_two_by_two():
  # G = [[0, 0], [0, 1]]: e = [1, 1, 1, 256], v = [0, 0, 0, 8 ln 2],
  # mean m = 2 ln 2, deviations (-m, -m, -m, 3m), std = m sqrt(3),
  # z = (-1/sqrt3, -1/sqrt3, -1/sqrt3, sqrt3).
  g = np.array([[0.0, 0.0], [0.0, 1.0]], np.float32)
  steps = enhance.enhancement_steps(g)
  np.testing.assert_allclose(steps["expanded"], [[1, 1], [1, 256]], rtol=1e-6)
  ln256 = 8 * math.log(2)
  np.testing.assert_allclose(steps["log"], [[0, 0], [0, ln256]], atol=1e-6)
  r3 = math.sqrt(3.0)
  z = np.array([[-1 / r3, -1 / r3], [-1 / r3, r3]])
  np.testing.assert_allclose(steps["z"], z, rtol=1e-5)
  np.testing.assert_allclose(steps["enhanced"], np.exp(-((z - 2.0) / 0.5)**2),
                             rtol=1e-4)
  for v in steps.values():
    assert v.dtype == jnp.float32 and v.shape == (2, 2)


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_constant_image_is_defined(value):
  g = np.full((2, 5, 4), value, np.float32)
  steps = enhance.enhancement_steps(g)
  np.testing.assert_array_equal(steps["expanded"], 1.0)
  np.testing.assert_array_equal(steps["z"], 0.0)
  for center, width in [(2.0, 0.5), (1.0, 2.0)]:
    f = np.asarray(enhance.enhance_gradient(g, center=center, width=width))
    assert np.all(np.isfinite(f))
    np.testing.assert_allclose(f, math.exp(-(center / width)**2), rtol=1e-5)


def test_bump_peaks_at_center():
  rng = np.random.default_rng(0)
  g = rng.lognormal(size=(16, 16)).astype(np.float32)
  z = np.asarray(enhance.enhancement_steps(g)["z"])
  # The z-score has mean 0 and std 1 over the slice's pixels.
  assert abs(z.mean()) < 1e-5 and abs(z.std() - 1.0) < 1e-4
  # Centre the bump on one pixel's z: f == 1 there, and it is the maximum.
  k = np.unravel_index(np.argmin(np.abs(z - 1.5)), z.shape)
  f = np.asarray(enhance.enhance_gradient(g, center=float(z[k]), width=0.5))
  assert f[k] == pytest.approx(1.0, abs=1e-6)
  assert np.all(f <= f[k])
  # Default Eq. 1 is the Gaussian bump of z, monotone on either side of 2.
  f = np.asarray(enhance.enhance_gradient(g))
  np.testing.assert_allclose(f, np.exp(-((z - 2.0) / 0.5)**2), rtol=1e-5,
                             atol=1e-7)
  order = np.argsort(z.ravel())
  zs, fs = z.ravel()[order], f.ravel()[order]
  assert np.all(np.diff(fs[zs < 2.0]) >= 0) and np.all(np.diff(fs[zs > 2.0]) <= 0)


def test_per_slice_batched_and_affine_invariant():
  rng = np.random.default_rng(1)
  g = rng.gamma(2.0, size=(3, 2, 6, 7)).astype(np.float32)
  g[1, 0] = 0.0  # a constant slice in the batch must not disturb the others
  f = np.asarray(jax.jit(enhance.enhance_gradient)(g))
  assert f.shape == g.shape and np.all(np.isfinite(f))
  for i in range(3):
    for j in range(2):
      np.testing.assert_allclose(f[i, j], enhance.enhance_gradient(g[i, j]),
                                 rtol=1e-6)
  # The linear expansion removes any positive scale and offset of G.
  np.testing.assert_allclose(enhance.enhance_gradient(7.0 * g[0, 0] + 3.0),
                             f[0, 0], rtol=1e-4, atol=1e-6)


def test_rejects_1d():
  with pytest.raises(ValueError):
    enhance.enhance_gradient(np.zeros(5, np.float32))


def test_log_gradient_floors_at_one_percent_of_the_peak():
  g = np.array([[[0.0, 1.0], [4.0, 100.0]], [[0.0, 0.0], [0.0, 0.0]]], np.float32)
  got = np.asarray(enhance.log_gradient(g))
  # Slice 0: peak 100, floor 1 -> log(g + 1); an all-zero slice: log(0 + 0.01).
  np.testing.assert_allclose(got[0], np.log(g[0] + 1.0), rtol=1e-6)
  np.testing.assert_allclose(got[1], np.log(0.01), rtol=1e-6)
  assert got.dtype == np.float32 and np.all(np.isfinite(got))
  # A positive scale of G adds a constant per slice (zero-mean NCC ignores it).
  np.testing.assert_allclose(enhance.log_gradient(7.0 * g[0]), got[0] + np.log(7.0),
                             rtol=1e-5)
