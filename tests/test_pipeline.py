"""Background-removal pipeline: known displacements, ceiling oracle, bank."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rodent_gbp import correlate
from rodent_gbp import enhance
from rodent_gbp import model as model_lib
from rodent_gbp import pipeline


def _ellipse(h, w, cy, cx, ry, rx):
  y, x = np.mgrid[:h, :w]
  return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def test_median_animal():
  assert pipeline.median_animal([5, 1, 3]) == 2
  assert pipeline.median_animal([4, 1, 3, 2]) == 3   # lower median (value 2)
  assert pipeline.median_animal([7]) == 0


def test_place_mask_recovers_planted_shift():
  """The enhanced-gradient-like ring of a shifted brain locates the template."""
  h = w = 32
  ref = _ellipse(h, w, 16, 16, 7, 5)
  ring = ref & ~_ellipse(h, w, 16, 16, 6, 4)
  shifts = np.array([[3, -4], [-5, 2], [0, 0]])
  signal = np.stack([np.roll(ring, tuple(s), axis=(0, 1)) for s in shifts]).astype(np.float32)
  template = np.broadcast_to(ring.astype(np.float32), signal.shape)
  refs = np.broadcast_to(ref, signal.shape)
  corr, disp, placed = jax.jit(pipeline.place_mask)(signal, template, refs)
  np.testing.assert_array_equal(np.asarray(disp), shifts)
  for i, s in enumerate(shifts):
    np.testing.assert_array_equal(np.asarray(placed[i]), np.roll(ref, tuple(s), axis=(0, 1)))


def test_place_mask_empty_template_gives_zero_shift():
  sig = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
  zeros = np.zeros((1, 16, 16), np.float32)
  _, disp, placed = pipeline.place_mask(sig, zeros, zeros > 0)
  np.testing.assert_array_equal(np.asarray(disp), [[0, 0]])
  assert not np.asarray(placed).any()


def test_remove_background_moves_the_reference_mask():
  """End to end on a tiny case: intensity signal, bare-mask template.

  Each test slice is the reference brain moved by a planted shift plus a
  bright object far away; the reference mask must arrive at the brain, the
  image outside it must be zeroed, and the template must come from the
  reference animal at the slice's own index.
  """
  h = w = 32
  rng = np.random.default_rng(1)
  masks = np.zeros((2, 3, h, w), bool)           # 2 bank animals x 3 slices
  for s in range(3):
    masks[0, s] = _ellipse(h, w, 16, 16, 5 + s, 4)
    masks[1, s] = _ellipse(h, w, 15, 15, 3, 3)   # not the reference
  grads = masks.astype(np.float32)
  shifts = np.array([[2, -3], [-4, 1], [1, 5]])
  images = np.zeros((3, h, w), np.float32)
  for s in range(3):
    images[s] = 0.6 * np.roll(masks[0, s], tuple(shifts[s]), axis=(0, 1))
  images[:, 1:3, 1:3] = 1.0                      # an artifact in a corner
  images += 0.01 * rng.random(images.shape).astype(np.float32)
  model = model_lib.UNet(features=2, depth=1)
  params = model_lib.init_params(model, jax.random.key(0), (h, w))
  options = pipeline.PlacementOptions(signal="intensity", template="mask")
  out = pipeline.remove_background(params, images[..., None], np.arange(3, dtype=np.int32),
                                   masks, grads, jnp.asarray(0, jnp.int32),
                                   model=model, options=options)
  np.testing.assert_array_equal(np.asarray(out["displacement"]), shifts)
  for s in range(3):
    expect = np.roll(masks[0, s], tuple(shifts[s]), axis=(0, 1))
    np.testing.assert_array_equal(np.asarray(out["placed"][s]), expect)
    np.testing.assert_array_equal(np.asarray(out["masked"][s, ..., 0]), images[s] * expect)
  assert np.asarray(out["labels"]).shape == (3, h, w)


def test_best_shift_dice_matches_brute_force():
  """The FFT ceiling equals an exhaustive loop over zero-filled shifts."""
  rng = np.random.default_rng(3)
  h, w = 12, 10
  true = _ellipse(h, w, 6, 4, 3, 2) | (rng.random((h, w)) > 0.93)
  ref = _ellipse(h, w, 5, 5, 3, 3)
  dice, shift, overlap, inside = pipeline.best_shift_dice_jit(true[None], ref[None])
  best, best_shift = -1.0, None
  for dy, dx in itertools.product(range(-(h // 2), h - h // 2), range(-(w // 2), w - w // 2)):
    moved = np.asarray(correlate.shift_image(ref, np.array([dy, dx])))
    d = 2 * (moved & true).sum() / (moved.sum() + true.sum())
    if d > best + 1e-12:
      best, best_shift = d, (dy, dx)
  assert float(dice[0]) == pytest.approx(best, abs=1e-6)
  moved = np.asarray(correlate.shift_image(ref, np.asarray(shift[0])))
  assert 2 * (moved & true).sum() / (moved.sum() + true.sum()) == pytest.approx(best, abs=1e-6)
  assert int(overlap[0]) == (moved & true).sum() and int(inside[0]) == moved.sum()
  del best_shift


def test_template_bank_roundtrip(tmp_path):
  bank = pipeline.TemplateBank(
      animal_ids=["a", "b"], masks=np.zeros((2, 3, 4, 4), bool),
      gradients=np.ones((2, 3, 4, 4), np.float32), brain_volumes=np.array([3, 5]),
      reference=1, displacements=np.array([[1.0, 2.0], [np.nan, np.nan]]))
  bank.save(tmp_path / "templates.npz")
  back = pipeline.TemplateBank.load(tmp_path / "templates.npz")
  assert back.animal_ids == ["a", "b"] and back.reference == 1
  np.testing.assert_array_equal(back.gradients, bank.gradients)
  np.testing.assert_array_equal(back.displacements, bank.displacements)


def test_make_template_readings():
  mask = jnp.asarray(_ellipse(8, 8, 4, 4, 2, 2))
  grad = jnp.linspace(0, 1, 64, dtype=jnp.float32).reshape(8, 8)
  np.testing.assert_allclose(pipeline.make_template(mask, grad, "mask"), mask)
  np.testing.assert_allclose(pipeline.make_template(mask, grad, "gradient"),
                             np.where(mask, grad, 0))
  np.testing.assert_allclose(
      pipeline.make_template(mask, grad, "enhanced", center=1.0, width=0.7),
      np.where(mask, enhance.enhance_gradient(grad, center=1.0, width=0.7), 0), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown template"):
    pipeline.make_template(mask, grad, "nope")
