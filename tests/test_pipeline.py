"""Background removal where the stages meet: planted displacements, the ceiling, the bank.

The placers run on bundles built by hand (``conftest.synthetic_bundle``):
a few synthetic ellipse brains, test slices that are the reference brain
moved by a known whole-voxel (dy, dx), so the displacement and the mask a
placer returns are known answers.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_bundle
from rodent_gbp import bank as bank_lib
from rodent_gbp import correlate
from rodent_gbp import enhance
from rodent_gbp import evaluators
from rodent_gbp import guided
from rodent_gbp import parallel
from rodent_gbp import pipeline
from rodent_gbp import placement
from rodent_gbp.errors import UsageError

H = W = 32
S = 3
SHIFTS = np.array([[2, -3], [-4, 1], [1, 5]])     # planted, one per slice


def _ellipse(h, w, cy, cx, ry, rx):
  y, x = np.mgrid[:h, :w]
  return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _shift(x, d):
  return np.asarray(correlate.shift_image(jnp.asarray(x), jnp.asarray(d)))


def _masks() -> np.ndarray:
  """3 bank animals x 3 slices; animal 0 has the median volume (the reference)."""
  masks = np.zeros((3, S, H, W), bool)
  for s in range(S):
    masks[0, s] = _ellipse(H, W, 16, 16, 5 + s, 4)
    masks[1, s] = _ellipse(H, W, 15, 15, 3, 3)
    masks[2, s] = _ellipse(H, W, 16, 16, 9, 8)
  return masks


@pytest.fixture(scope="module")
def planted():
  """A bundle, raw test slices and their gradient images with the planted SHIFTS.

  The reference's gradient image ``G`` is a random log-normal texture inside
  its brain, and the bank holds Eq. 1 of it (what the paper's template
  weights are: ``mask x gradient``). The test gradient image is ``G`` moved
  by the planted shift, so the paper's signal (Eq. 1 of it) is the template
  moved: the correlation peaks exactly there (Cauchy-Schwarz; the texture
  has no other self-match).
  """
  masks = _masks()
  rng = np.random.default_rng(0)
  g = (masks * rng.lognormal(size=masks.shape)).astype(np.float32)
  bank_grads = np.asarray(enhance.enhance_gradient(g)) * masks
  bundle = synthetic_bundle(masks, gradients=bank_grads)
  assert bundle.bank.reference == 0
  gradient = np.stack([_shift(g[0, s], SHIFTS[s]) for s in range(S)])
  images = np.stack([0.6 * _shift(masks[0, s].astype(np.float32), SHIFTS[s])
                     for s in range(S)])
  images[:, 1:3, 1:3] = 1.0                       # a bright artifact in a corner
  images += 0.01 * rng.random(images.shape).astype(np.float32)
  return bundle, images.astype(np.float32), gradient, masks


def test_median_animal():
  assert bank_lib.median_animal([5, 1, 3]) == 2
  assert bank_lib.median_animal([4, 1, 3, 2]) == 3   # lower median (value 2)
  assert bank_lib.median_animal([7]) == 0


def test_scale_to_unit():
  g = np.array([[[0.0, 2.0], [1.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]], np.float32)
  np.testing.assert_array_equal(bank_lib.scale_to_unit(g),
                                [[[0, 0.5], [0.25, 1]], [[0, 0], [0, 0]]])


def test_place_mask_recovers_planted_shift():
  """The enhanced-gradient-like ring of a shifted brain locates the template."""
  h = w = 32
  ref = _ellipse(h, w, 16, 16, 7, 5)
  ring = ref & ~_ellipse(h, w, 16, 16, 6, 4)
  shifts = np.array([[3, -4], [-5, 2], [0, 0]])
  signal = np.stack([np.roll(ring, tuple(s), axis=(0, 1)) for s in shifts]).astype(np.float32)
  template = np.broadcast_to(ring.astype(np.float32), signal.shape)
  refs = np.broadcast_to(ref, signal.shape)
  corr, disp, placed = jax.jit(placement.place_mask)(signal, template, refs)
  np.testing.assert_array_equal(np.asarray(disp), shifts)
  for i, s in enumerate(shifts):
    np.testing.assert_array_equal(np.asarray(placed[i]), np.roll(ref, tuple(s), axis=(0, 1)))


def test_place_mask_empty_template_gives_zero_shift():
  sig = np.random.default_rng(0).random((1, 16, 16)).astype(np.float32)
  zeros = np.zeros((1, 16, 16), np.float32)
  _, disp, placed = placement.place_mask(sig, zeros, zeros > 0)
  np.testing.assert_array_equal(np.asarray(disp), [[0, 0]])
  assert not np.asarray(placed).any()


def test_gbp_placer_recovers_the_planted_shift(planted):
  """``place("gbp")``: the displacement is the planted one, the mask the moved reference."""
  bundle, images, gradient, masks = planted
  out = placement.place("gbp", images, bundle=bundle, gradient=gradient)
  np.testing.assert_array_equal(out.displacement, SHIFTS)
  for s in range(S):
    np.testing.assert_array_equal(out.mask[s], _shift(masks[0, s], SHIFTS[s]))
  # The signal is Eq. 1 of the given gradient image; the template Fig. 7a's.
  np.testing.assert_allclose(out.details.signal, enhance.enhance_gradient(gradient),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out.details.template,
                             masks[0] * bundle.bank.gradients[0], atol=1e-7)
  np.testing.assert_array_equal(out.details.gradient, gradient)
  assert out.mask.dtype == bool and np.all(out.confidence > 1)


def test_gbp_placer_takes_the_template_at_the_slice_index(planted):
  """``slice_index`` picks the reference's template slice (bank slice 2 for every slice)."""
  bundle, images, gradient, masks = planted
  g = np.stack([gradient[2]] * 2)
  out = placement.gbp(np.stack([images[2]] * 2), bundle=bundle, slice_index=[2, 2],
                      gradient=g)
  np.testing.assert_array_equal(out.displacement, [SHIFTS[2]] * 2)
  np.testing.assert_array_equal(out.mask[1], _shift(masks[0, 2], SHIFTS[2]))


def test_volume_displacement_is_the_argmax_of_the_summed_maps():
  """Brute force: per volume, sum the maps of slices with a template, argmax, minus the centre."""
  rng = np.random.default_rng(3)
  corr = rng.random((7, 12, 10)).astype(np.float32)
  owner = np.array([0, 0, 1, 1, 1, 2, 2], np.int32)
  template_sum = np.array([1.0, 0.0, 2.0, 1.0, 0.5, 0.0, 0.0], np.float32)
  got = np.asarray(placement.volume_displacement(jnp.asarray(corr), jnp.asarray(template_sum),
                                                 jnp.asarray(owner), num_volumes=3))
  want = np.zeros((7, 2), np.int64)
  for v in (0, 1):
    rows = (owner == v) & (template_sum > 0)
    r, c = np.unravel_index(np.argmax(corr[rows].sum(0)), corr.shape[1:])
    want[owner == v] = (r - 12 // 2, c - 10 // 2)
  # Volume 2 has no template at all: no displacement, as place_mask's empty case.
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.int32


def test_volume_displacement_outvotes_one_slice_that_disagrees(planted):
  """One acquisition moved by D, one slice's gradient image moved elsewhere: the slice
  reading follows that slice, the volume reading puts every slice at D."""
  bundle, images, gradient, masks = planted
  d, other = np.array([2, -3]), np.array([-6, 6])
  # The reference's texture G (the fixture's gradient moved back: the brains lie
  # well inside the frame, so nothing is lost), moved by d, slice 1 by another.
  g_ref = np.stack([_shift(gradient[s], -SHIFTS[s]) for s in range(S)])
  grad = np.stack([_shift(g_ref[s], d) for s in range(S)])
  grad[1] = _shift(g_ref[1], other)
  per_slice = placement.place_paper(images, bundle=bundle, gradient=grad)
  np.testing.assert_array_equal(per_slice.displacement, [d, other, d])
  vol = placement.place_paper(images, bundle=bundle, gradient=grad,
                              options=placement.PaperOptions(displacement="volume"))
  np.testing.assert_array_equal(vol.displacement, [d] * S)
  for s in range(S):
    np.testing.assert_array_equal(vol.mask[s], _shift(masks[0, s], d))
  assert np.all(vol.confidence == vol.confidence[0]) and vol.confidence[0] > 1
  with pytest.raises(UsageError, match="displacement must be one of slice, volume"):
    placement.place_paper(images, bundle=bundle, gradient=grad,
                          options=placement.PaperOptions(displacement="scan"))


def test_paper_intensity_reading_and_removal(planted):
  """Intensity signal, bare-mask template: no saliency; then removal and re-segmentation.

  Each test slice is the reference brain moved by a planted shift plus a
  bright object far away; the reference mask must arrive at the brain, and
  the network must see the slices zeroed outside it.
  """
  bundle, images, _, masks = planted
  options = placement.PaperOptions(signal="intensity", template="mask")
  out = placement.place_paper(images, bundle=bundle, options=options)
  np.testing.assert_array_equal(out.displacement, SHIFTS)
  for s in range(S):
    np.testing.assert_array_equal(out.mask[s], _shift(masks[0, s], SHIFTS[s]))
  labels = pipeline.remove_and_segment(images, out, bundle=bundle)
  net = bundle.network()
  masked = images * out.mask
  want = np.argmax(net.model.apply({"params": net.params}, masked[..., None]), -1)
  # Outside the removal mask every pixel is background, whatever the network says.
  np.testing.assert_array_equal(labels, np.where(out.mask, want, 0))
  assert not labels[~out.mask].any()
  assert labels.dtype == np.int32 and labels.shape == (S, H, W)


def test_run_is_raw_pass_then_each_placer(planted):
  """``pipeline.run``: one raw pass; each placer's mask applied, then segmented again."""
  bundle, images, _, _ = planted
  net = bundle.network()
  raw, removals = pipeline.run(images, ["gbp", "intensity"], bundle=bundle, batch_size=2)
  # The raw pass: the labels of the raw slices and the GBP gradient image.
  np.testing.assert_array_equal(raw["labels"], pipeline.segment_slices(images, bundle=bundle))
  g = guided.gradient_image(net.model, net.params, jnp.asarray(images[..., None]))
  np.testing.assert_allclose(raw["gradient"], g, rtol=1e-5, atol=1e-7)
  assert set(removals) == {"gbp", "intensity"}
  for name, removal in removals.items():
    assert removal.placer == name
    again = placement.place(name, images, bundle=bundle, gradient=raw["gradient"])
    np.testing.assert_array_equal(removal.placement.mask, again.mask)
    np.testing.assert_array_equal(removal.labels, np.where(again.mask, pipeline.segment_slices(
        images * again.mask, bundle=bundle), 0))


def test_placers_check_their_input(planted):
  bundle, images, _, _ = planted
  with pytest.raises(UsageError, match="unknown placement"):
    placement.place("nope", images, bundle=bundle)
  with pytest.raises(UsageError, match="model grid"):
    placement.place("gbp", images[:, :16], bundle=bundle)
  with pytest.raises(UsageError, match="slice_index"):
    placement.place("gbp", images, bundle=bundle, slice_index=[0, 1])


def test_best_shift_dice_matches_brute_force():
  """The FFT ceiling equals an exhaustive loop over zero-filled shifts."""
  rng = np.random.default_rng(3)
  h, w = 12, 10
  true = _ellipse(h, w, 6, 4, 3, 2) | (rng.random((h, w)) > 0.93)
  ref = _ellipse(h, w, 5, 5, 3, 3)
  dice, shift, overlap, inside = evaluators.best_shift_dice_jit(true[None], ref[None])
  best = -1.0
  for dy, dx in itertools.product(range(-(h // 2), h - h // 2), range(-(w // 2), w - w // 2)):
    moved = _shift(ref, [dy, dx])
    d = 2 * (moved & true).sum() / (moved.sum() + true.sum())
    best = max(best, d)
  assert float(dice[0]) == pytest.approx(best, abs=1e-6)
  moved = _shift(ref, shift[0])
  assert 2 * (moved & true).sum() / (moved.sum() + true.sum()) == pytest.approx(best, abs=1e-6)
  assert int(overlap[0]) == (moved & true).sum() and int(inside[0]) == moved.sum()


def test_ceiling_counts_are_those_of_the_best_shift():
  masks = _masks()
  truth = np.stack([_shift(masks[0, s], SHIFTS[s]) for s in range(S)])
  truth[1, 0, 0] = True                       # one pixel no shift can reach
  out = evaluators.ceiling(truth, masks[0], batch_size=2)
  np.testing.assert_array_equal(out["shift"], SHIFTS)
  tp = sum((truth[s] & _shift(masks[0, s], SHIFTS[s])).sum() for s in range(S))
  assert out["counts"].tolist() == [tp, 0, 1, S * H * W - tp - 1]
  np.testing.assert_allclose(out["dice"], [1.0, 2 * masks[0, 1].sum() /
                                           (2 * masks[0, 1].sum() + 1), 1.0], rtol=1e-6)


def test_template_bank_roundtrip(tmp_path):
  rng = np.random.default_rng(0)
  app = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
  bank = bank_lib.TemplateBank(
      animal_ids=["a", "b"], masks=rng.random((2, 3, 4, 4)) > 0.5,
      gradients=np.ones((2, 3, 4, 4), np.float32), brain_volumes=np.array([3, 5]),
      reference=1, displacements=np.array([[1.0, 2.0], [np.nan, np.nan]]),
      appearance=app, appearance_available=np.array([False, True]))
  bank.save(tmp_path / "templates.npz")
  back = bank_lib.TemplateBank.load(tmp_path / "templates.npz")
  assert back.animal_ids == ["a", "b"] and back.reference == 1
  for name in ("masks", "gradients", "brain_volumes", "displacements", "appearance",
               "appearance_available"):
    np.testing.assert_array_equal(getattr(back, name), getattr(bank, name), name)
  # Without appearance: loads as None.
  bank.appearance = bank.appearance_available = None
  bank.save(tmp_path / "plain.npz")
  assert bank_lib.TemplateBank.load(tmp_path / "plain.npz").appearance is None


def test_recorded_displacement():
  class V:
    meta = {"displacement_hw": [3, -2]}
  np.testing.assert_array_equal(bank_lib.recorded_displacement(V), [3.0, -2.0])
  V.meta = {}
  assert np.isnan(bank_lib.recorded_displacement(V)).all()


def test_make_template_readings():
  mask = jnp.asarray(_ellipse(8, 8, 4, 4, 2, 2))
  grad = jnp.linspace(0, 1, 64, dtype=jnp.float32).reshape(8, 8)
  np.testing.assert_allclose(placement.make_template(mask, grad, "mask"), mask)
  np.testing.assert_allclose(placement.make_template(mask, grad, "gradient"),
                             np.where(mask, grad, 0))
  np.testing.assert_allclose(
      placement.make_template(mask, grad, "enhanced", center=1.0, width=0.7),
      np.where(mask, enhance.enhance_gradient(grad, center=1.0, width=0.7), 0), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown template"):
    placement.make_template(mask, grad, "nope")


# --- padding and batching (parallel.pad_batch, parallel.run_batched) ---------------


def test_pad_batch_repeats_the_last_row():
  a = np.arange(10).reshape(5, 2)
  b = np.arange(5, dtype=np.float32)
  out, valid = parallel.pad_batch({"a": a, "b": b}, 4)
  np.testing.assert_array_equal(out["a"], np.concatenate([a, [[8, 9]] * 3]))
  np.testing.assert_array_equal(out["b"], [0, 1, 2, 3, 4, 4, 4, 4])
  np.testing.assert_array_equal(valid, [True] * 5 + [False] * 3)
  assert out["b"].dtype == np.float32
  out, valid = parallel.pad_batch({"a": a}, 4, size=7)
  assert out["a"].shape == (7, 2) and valid.sum() == 5
  np.testing.assert_array_equal(out["a"][5:], [[8, 9], [8, 9]])
  out, valid = parallel.pad_batch({"a": a}, 5)
  np.testing.assert_array_equal(out["a"], a)
  assert valid.all()
  out, _ = parallel.pad_batch({"a": a}, 1, size=5)
  np.testing.assert_array_equal(out["a"], a)
  with pytest.raises(ValueError, match="cannot pad 5 rows to 4"):
    parallel.pad_batch({"a": a}, 1, size=4)
  with pytest.raises(ValueError, match="disagree"):
    parallel.pad_batch({"a": a, "b": b[:4]}, 1)
  with pytest.raises(ValueError, match="empty"):
    parallel.pad_batch({"a": a[:0]}, 1)


def test_run_batched_is_exact_and_compiles_once():
  traces = []

  @jax.jit
  def fn(x, y):
    traces.append(x.shape)
    return {"sum": jnp.sum(x, axis=-1) * y, "x": x + 1.0}

  rng = np.random.default_rng(0)
  x = rng.normal(size=(11, 3)).astype(np.float32)
  y = rng.normal(size=(11,)).astype(np.float32)
  out = parallel.run_batched(fn, {"x": x, "y": y}, 4)
  assert traces == [(4, 3)]                       # 4 + 4 + 3 (padded): one compile
  np.testing.assert_allclose(out["sum"], x.sum(-1) * y, rtol=1e-6)
  np.testing.assert_array_equal(out["x"], x + 1.0)
  assert out["x"].shape == (11, 3)
  # One array out: under "out".
  single = parallel.run_batched(jax.jit(lambda x: x * 2.0), {"x": x}, 11)
  np.testing.assert_array_equal(single["out"], x * 2.0)
  # A batch larger than the input: one padded call.
  bigger = parallel.run_batched(jax.jit(lambda x: x[:, 0]), {"x": x[:2]}, 8)
  np.testing.assert_array_equal(bigger["out"], x[:2, 0])
