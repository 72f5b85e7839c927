"""Oracle and known-answer tests for rodent_gbp.correlate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from rodent_gbp import correlate

_SIZES = [  # (H, W, h, w): odd, even, mixed, equal sizes, 1x1 template
    (9, 8, 4, 5), (8, 10, 3, 3), (7, 7, 7, 7), (10, 6, 10, 6), (6, 9, 1, 2),
    (11, 12, 6, 11),
]


def _scipy(image: np.ndarray, template: np.ndarray, mode: str) -> np.ndarray:
  return scipy.signal.correlate(image.astype(np.float64),
                                template.astype(np.float64), mode=mode,
                                method="direct")


@pytest.mark.parametrize("mode", ["full", "same"])
@pytest.mark.parametrize("sizes", _SIZES)
def test_equals_scipy_direct(sizes, mode):
  big_h, big_w, h, w = sizes
  rng = np.random.default_rng(big_h * 100 + h)
  image = rng.normal(size=(big_h, big_w)).astype(np.float32)
  template = rng.normal(size=(h, w)).astype(np.float32)
  got = np.asarray(correlate.cross_correlate(image, template, mode=mode))
  want = _scipy(image, template, mode)
  assert got.shape == want.shape == correlate.correlation_shape(
      (big_h, big_w), (h, w), mode)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("mode", ["full", "same"])
def test_batches_broadcast(mode):
  rng = np.random.default_rng(3)
  images = rng.normal(size=(2, 3, 9, 8)).astype(np.float32)
  one = rng.normal(size=(5, 4)).astype(np.float32)
  per_row = rng.normal(size=(2, 1, 5, 4)).astype(np.float32)
  got_one = np.asarray(correlate.cross_correlate(images, one, mode=mode))
  got_row = np.asarray(correlate.cross_correlate(images, per_row, mode=mode))
  for i in range(2):
    for j in range(3):
      want = _scipy(images[i, j], one, mode)
      np.testing.assert_allclose(got_one[i, j], want, atol=1e-4)
      want = _scipy(images[i, j], per_row[i, 0], mode)
      np.testing.assert_allclose(got_row[i, j], want, atol=1e-4)


def test_rejects_bad_input():
  with pytest.raises(ValueError):
    correlate.cross_correlate(np.zeros((4, 4)), np.zeros((5, 3)))
  with pytest.raises(ValueError):
    correlate.cross_correlate(np.zeros((4, 4)), np.zeros((2, 2)), mode="valid")
  with pytest.raises(ValueError):
    correlate.locate(np.zeros((4, 4)), image_shape=(4, 4), template_shape=(2, 2),
                     mode="full")


def _blob_template(rng, shape):
  """Random template: signed noise on a compact support (a unique peak)."""
  t = np.zeros(shape, np.float32)
  h, w = shape
  t[1:h - 1, 1:w - 1] = rng.normal(size=(h - 2, w - 2))
  return t


_SHIFTS = [(0, 0), (3, -2), (-4, 5), (-1, -1), (2, 0), (0, -3)]


@pytest.mark.parametrize("mode", ["full", "same"])
@pytest.mark.parametrize("template_hw", [(16, 15), (9, 8), (7, 10)])
def test_locate_recovers_known_shifts(mode, template_hw):
  rng = np.random.default_rng(7)
  frame = (16, 15)
  t = _blob_template(rng, template_hw)
  placed = np.zeros(frame, np.float32)  # the template at the image origin
  placed[:t.shape[0], :t.shape[1]] = t
  # Keep the moved support (rows 1..h-2, cols 1..w-2) inside the frame: a
  # clipped template may legitimately peak elsewhere.
  def inside(s):
    return all(1 + s[a] >= 0 and template_hw[a] - 2 + s[a] < frame[a]
               for a in (0, 1))
  shifts = np.array([s for s in _SHIFTS if inside(s)], np.int32)
  assert len(shifts) >= 2
  images = np.asarray(correlate.shift_image(placed, shifts))
  corr = correlate.cross_correlate(images, t, mode=mode)
  kw = dict(image_shape=frame, template_shape=template_hw, mode=mode)
  found = np.asarray(correlate.locate(corr, **kw))
  assert found.dtype == np.int32
  np.testing.assert_array_equal(found, shifts)
  fine = np.asarray(correlate.locate(corr, subpixel=True, **kw))
  np.testing.assert_allclose(fine, shifts, atol=0.5)


@pytest.mark.parametrize("mode", ["full", "same"])
def test_locate_negative_shift_same_size_template(mode):
  rng = np.random.default_rng(8)
  t = rng.normal(size=(12, 11)).astype(np.float32)
  for shift in [(0, 0), (-3, -4), (2, -5), (-6, 1)]:
    image = np.asarray(correlate.shift_image(t, np.array(shift)))
    corr = correlate.cross_correlate(image, t, mode=mode)
    d = correlate.locate(corr, image_shape=image.shape, template_shape=t.shape,
                         mode=mode)
    assert tuple(np.asarray(d)) == shift


def test_locate_subpixel_exact_on_paraboloid():
  # A map that is a paraboloid about a fractional point: the 3-point fit is exact.
  frame, template_hw = (21, 20), (21, 20)
  offset = (21 // 2, 20 // 2)  # zero displacement in "same" mode
  true = np.array([[2.3, -4.6], [-1.25, 0.4], [0.0, 0.0]])
  rows, cols = np.mgrid[0:21, 0:20]
  maps = np.stack([-(rows - offset[0] - dy)**2 - 2.0 * (cols - offset[1] - dx)**2
                   for dy, dx in true]).astype(np.float32)
  got = correlate.locate(maps, image_shape=frame, template_shape=template_hw,
                         mode="same", subpixel=True)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, true, atol=1e-4)


def test_locate_subpixel_on_smooth_image():
  # A Gaussian blob moved by a fractional shift: refinement beats the argmax.
  rows, cols = np.mgrid[0:32, 0:32].astype(np.float64)
  blob = lambda cy, cx: np.exp(-((rows - cy)**2 + (cols - cx)**2) / (2 * 2.5**2))
  template = blob(16.0, 16.0).astype(np.float32)
  true = np.array([2.4, -3.3])
  image = blob(16.0 + true[0], 16.0 + true[1]).astype(np.float32)
  corr = correlate.cross_correlate(image, template, mode="same")
  kw = dict(image_shape=image.shape, template_shape=template.shape, mode="same")
  coarse = np.asarray(correlate.locate(corr, **kw))
  fine = np.asarray(correlate.locate(corr, subpixel=True, **kw))
  np.testing.assert_array_equal(coarse, np.round(true))
  assert np.all(np.abs(fine - true) < 0.1)


def _shift_oracle(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
  out = np.zeros_like(x)
  h, w = x.shape
  for i in range(h):
    for j in range(w):
      if 0 <= i - dy < h and 0 <= j - dx < w:
        out[i, j] = x[i - dy, j - dx]
  return out


def test_shift_image_matches_loop_oracle():
  rng = np.random.default_rng(11)
  x = rng.normal(size=(2, 3, 7, 6)).astype(np.float32) + 5.0  # no zeros inside
  shifts = np.array([[[0, 0], [2, -1], [-3, 4]],
                     [[7, 0], [-9, -6], [1, 5]]], np.int32)  # incl. out of frame
  got = np.asarray(correlate.shift_image(x, shifts))
  traced = np.asarray(jax.jit(correlate.shift_image)(x, shifts))
  np.testing.assert_array_equal(got, traced)
  for i in range(2):
    for j in range(3):
      np.testing.assert_array_equal(got[i, j], _shift_oracle(x[i, j],
                                                             *shifts[i, j]))
  assert np.all(got[1, 0] == 0) and np.all(got[1, 1] == 0)


def test_shift_image_broadcasts_and_keeps_dtype():
  mask = np.zeros((6, 5), bool)
  mask[1:4, 2:4] = True
  shifts = np.array([[1, 1], [-1, 0], [0, -2]])
  got = np.asarray(correlate.shift_image(mask, shifts))
  assert got.dtype == bool and got.shape == (3, 6, 5)
  for k, (dy, dx) in enumerate(shifts):
    np.testing.assert_array_equal(got[k], _shift_oracle(mask, dy, dx))
  # Float shifts (e.g. from sub-pixel locate) are rounded.
  np.testing.assert_array_equal(
      correlate.shift_image(mask, np.array([0.6, -1.4], np.float32)),
      _shift_oracle(mask, 1, -1))


def test_peak_confidence_orders_sharp_over_flat():
  rng = np.random.default_rng(12)
  flat = rng.normal(size=(20, 20)).astype(np.float32)
  sharp = flat.copy()
  sharp[5, 7] = 50.0
  psr = np.asarray(correlate.peak_confidence(np.stack([flat, sharp]), exclude=2))
  assert psr.shape == (2,) and psr[1] > 5 * psr[0] and psr[1] > 20
  assert float(correlate.peak_confidence(np.ones((8, 8), np.float32))) == 0.0
