"""Improved placement on synthetic ellipse brains with a planted answer.

Three bank "animals" with ellipse brains of different shapes, each acquired at
its own displacement; the test brain is animal 0's ellipse scaled by 1.06 and
moved. Signals and template weights are the ellipses' edge rings, what a
gradient image of a brain looks like. The search (``rodent_gbp.search``) and
its candidates (``rodent_gbp.candidates``) are tested directly, the shipped
placers (``placement.gbp_improved``, ``placement.intensity``) on a bundle
built by hand around the same bank with the reference's brain moved by a
planted shift.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from conftest import synthetic_bundle
from rodent_gbp import bank as bank_lib
from rodent_gbp import candidates as candidates_lib
from rodent_gbp import correlate
from rodent_gbp import enhance
from rodent_gbp import evaluators
from rodent_gbp import placement
from rodent_gbp import search

H = W = 48
S = 5
CENTRE = (23.0, 24.0)
# (semi-axis along H, semi-axis along W) per animal; animal 1 is the reference.
RADII = [(8.0, 11.0), (10.0, 7.5), (12.0, 12.0)]
BANK_DISP = np.array([[2, -3], [0, 0], [-4, 1]])


def _ellipse(ry: float, rx: float, centre=CENTRE) -> np.ndarray:
  y = np.arange(H)[:, None] - centre[0]
  x = np.arange(W)[None, :] - centre[1]
  return (y / ry) ** 2 + (x / rx) ** 2 <= 1.0


def _ring(mask: np.ndarray) -> np.ndarray:
  """Edge pixels of a mask (inside, with a 4-neighbour outside), blurred.

  Gradient images are smooth at the pixel scale; a one-pixel ring would make
  the comparison of scales depend on how a rescaled ring is sampled.
  """
  p = np.pad(mask, 1)
  inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
  return ndimage.gaussian_filter((mask & ~inner).astype(np.float32), 1.0)


def _shift(x: np.ndarray, d) -> np.ndarray:
  out = np.zeros_like(x)
  dy, dx = int(d[0]), int(d[1])
  src = x[max(0, -dy):H - max(0, dy), max(0, -dx):W - max(0, dx)]
  out[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
  return out


def _radii(ry: float, rx: float, s: int) -> tuple[float, float]:
  return ry * (1 + 0.05 * (s - 2)), rx * (1 - 0.05 * (s - 2))


def _bank() -> bank_lib.TemplateBank:
  masks, grads = [], []
  for (ry, rx), d in zip(RADII, BANK_DISP):
    # The outline changes along the slices, as a real brain's does; by aspect
    # ratio, so that no neighbouring slice mimics a scaled one.
    m = np.stack([_shift(_ellipse(*_radii(ry, rx, s)), d) for s in range(S)])
    masks.append(m)
    grads.append(np.stack([_ring(x) for x in m]))
  masks = np.stack(masks)
  return bank_lib.TemplateBank(
      animal_ids=[f"a{i}" for i in range(len(RADII))], masks=masks,
      gradients=np.stack(grads).astype(np.float32),
      brain_volumes=masks.reshape(len(RADII), -1).sum(-1), reference=1,
      displacements=BANK_DISP.astype(np.float64))


TEST_SCALE = 1.06
TEST_DISP = np.array([5, -4])   # the test acquisition's own displacement


def _test_volume():
  ry, rx = RADII[0]
  masks = np.stack([_shift(_ellipse(*(TEST_SCALE * r for r in _radii(ry, rx, s))), TEST_DISP)
                    for s in range(S)])
  return masks, np.stack([_ring(m) for m in masks])


@pytest.fixture(scope="module")
def cands():
  return candidates_lib.build_candidates(_bank(), template="gradient",
                                    scales=(0.94, 1.0, 1.06))


def test_bank_alignment_recovers_recorded_displacements(cands):
  # Moving animal a onto the reference undoes the difference of acquisitions.
  np.testing.assert_array_equal(cands.to_reference, BANK_DISP[1] - BANK_DISP)


@pytest.mark.parametrize("volume", [True, False])
def test_template_choice_recovers_planted_scale_and_shift(cands, volume):
  truth_mask, signal = _test_volume()
  options = search.ImprovedOptions(scales=(0.94, 1.0, 1.06), slice_offsets=1,
                                   radius=2, volume=volume)
  out = search.place_volume(signal, cands, options)
  np.testing.assert_array_equal(out["animal"], 0)
  np.testing.assert_array_equal(np.asarray(cands.scales)[out["scale_index"]], TEST_SCALE)
  truth = evaluators.true_displacements(TEST_DISP, BANK_DISP, cands.to_reference)
  np.testing.assert_array_equal(out["displacement"], np.broadcast_to(truth[0], (S, 2)))
  assert np.all(evaluators.placement_errors(out["displacement"], out["animal"], truth) == 0)
  # The placed masks are the test brains up to the rounding of the scaling.
  dice = 2 * (out["placed"] & truth_mask).sum() / (out["placed"].sum() + truth_mask.sum())
  assert dice > 0.97


def test_flat_slice_has_no_confidence_and_slices_move_alone(cands):
  _, signal = _test_volume()
  signal = signal.copy()
  signal[2] = 0.0                      # a flat correlation map: nothing to trust
  signal[3] = np.roll(signal[3], 1, axis=0)
  options = search.ImprovedOptions(scales=(1.0, 1.06), slice_offsets=1, radius=2,
                                   volume=False)
  out = search.place_volume(signal, cands, options)
  assert out["confidence"][2] == 0.0 and np.all(out["confidence"][[0, 1, 3, 4]] > 1)
  # The volume's displacement is the PSR-weighted median: the flat slice has
  # no say, the moved one is outvoted.
  truth = evaluators.true_displacements(TEST_DISP, BANK_DISP, cands.to_reference)
  np.testing.assert_array_equal(out["volume_displacement"], truth[0])
  # Per-slice placement follows the moved slice.
  np.testing.assert_array_equal(out["displacement"][3] - out["displacement"][0], [1, 0])
  np.testing.assert_array_equal(out["displacement"][[0, 1, 4]], [truth[0]] * 3)


def test_all_candidates_in_one_jitted_call(cands):
  _, signal = _test_volume()
  options = search.ImprovedOptions(scales=(0.94, 1.0, 1.06), slice_offsets=2,
                                   radius=1, volume=True)
  before = search.TRACE_COUNT["place_volume"]
  first = search.place_volume(signal, cands, options)
  traced = search.TRACE_COUNT["place_volume"] - before
  assert traced <= 1
  # Another volume of the same shape and options that differ only in data
  # (volume or per-slice mode, which candidates count): no retrace.
  search.place_volume(signal[:, ::-1].copy(), cands,
                      dataclasses.replace(options, volume=False, choose_template=False))
  search.place_volume(signal, cands, dataclasses.replace(options, scales=(1.0,)))
  assert search.TRACE_COUNT["place_volume"] - before == traced
  # 3 animals x 5 slice offsets x 3 scales were candidates of that one call.
  assert set(first["slice_offset"]) <= set(range(-2, 3))


@pytest.mark.parametrize("radius", [0, 1, 2, 5, candidates_lib.MAX_MARGIN])
def test_dilate_is_a_diamond_dilation(radius):
  """``candidates.dilate`` = scipy's binary dilation by a diamond of that radius."""
  rng = np.random.default_rng(radius)
  m = rng.random((2, 3, 21, 19)) > 0.97
  m[0, 0] = False                      # an empty mask stays empty
  m[1, 2, 0, 0] = True                 # growth is cut at the frame
  diamond = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), radius) \
      if radius else np.ones((1, 1), bool)
  want = np.stack([[ndimage.binary_dilation(x, structure=diamond) for x in row] for row in m])
  got = np.asarray(candidates_lib.dilate(m, radius))
  np.testing.assert_array_equal(got, want)
  assert got.dtype == bool


def test_dilate_adds_a_diamond():
  m = np.zeros((1, 7, 7), bool)
  m[0, 3, 3] = True
  d1 = np.asarray(candidates_lib.dilate(m, 1))[0]
  assert d1.sum() == 5 and d1[2, 3] and d1[3, 4] and not d1[2, 2]
  assert np.asarray(candidates_lib.dilate(m, 2))[0].sum() == 13
  np.testing.assert_array_equal(candidates_lib.dilate(m, 0), m)


def test_oracle_is_the_best_candidate_at_its_best_shift(cands):
  # Brute force over every candidate (animal, slice offset, scale) and every
  # integer shift whose moved mask is counted inside the frame (zero filled).
  truth_mask, _ = _test_volume()
  truth_mask = truth_mask[:2]
  counts, dice = evaluators.oracle_counts(truth_mask, cands, slice_offsets=1)
  masks = np.asarray(cands.masks)
  a_n, b_n, s_n, h, w = masks.shape
  want = []
  for s, truth in enumerate(truth_mask):
    best = -1.0
    for bs in range(max(s - 1, 0), min(s + 1, b_n - 1) + 1):
      for m in masks[:, bs].reshape(-1, h, w):
        for dy in range(-h // 2, h - h // 2):
          for dx in range(-w // 2, w - w // 2):
            moved = np.zeros_like(m)
            moved[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
                m[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
            denom = moved.sum() + truth.sum()
            best = max(best, 2 * (moved & truth).sum() / denom if denom else 0.0)
    want.append(best)
  np.testing.assert_allclose(dice, want, atol=1e-6)
  assert counts.sum() == truth_mask.size


def test_oracle_bounds_the_chosen_candidate(cands):
  truth_mask, signal = _test_volume()
  counts, dice = evaluators.oracle_counts(truth_mask, cands, slice_offsets=1)
  assert counts.sum() == truth_mask.size
  tp, fp, fn, _ = counts
  # Pooled over slices, the Dice lies between the slices' extremes.
  assert dice.min() - 1e-6 <= 2 * tp / (2 * tp + fp + fn) <= dice.max() + 1e-6
  out = search.place_volume(signal, cands, search.ImprovedOptions(
      scales=(0.94, 1.0, 1.06), slice_offsets=1, radius=2))
  p = out["placed"]
  placed_dice = 2 * (p & truth_mask).sum((1, 2)) / (p.sum((1, 2)) + truth_mask.sum((1, 2)))
  assert np.all(dice >= placed_dice - 1e-6) and dice.min() > 0.95


def test_weighted_median():
  v = np.array([1, 5, 2, 9], np.int32)
  assert int(search.weighted_median(v, np.array([1.0, 0.0, 1.0, 0.0]))) == 1
  assert int(search.weighted_median(v, np.array([0.0, 0.0, 0.0, 3.0]))) == 9
  assert int(search.weighted_median(v, np.zeros(4))) == 2


def test_two_stage_locates_with_the_reference_and_chooses_by_intensity():
  # Stage 1 sees only the reference (animal 1, another shape) in the edge
  # signal; stage 2 picks animal 0 at scale 1.06 from the plain intensity.
  truth_mask, signal = _test_volume()
  intensity = truth_mask.astype(np.float32) + 0.2
  bank = _bank()
  cbank = candidates_lib.CandidateBank(bank, scales=(0.94, 1.0, 1.06))
  options = search.ImprovedOptions(template="gradient", scales=(0.94, 1.0, 1.06),
                                   slice_offsets=1, radius=2,
                                   choice="intensity", choice_margin=2, choice_radius=3)
  cands, choice = cbank.for_options(options)
  assert cands.masks.shape[:3] == (1, S, 1) and choice.masks.shape[:3] == (3, S, 3)
  out = search.place_improved(signal, intensity, cands, choice, options)
  truth = evaluators.true_displacements(TEST_DISP, BANK_DISP, choice.to_reference)
  # The reference is another shape: its edge ring locates the brain only
  # roughly; the intensity choice corrects that within its window.
  assert np.abs(out["located"] - truth[1]).max() <= 3
  np.testing.assert_array_equal(out["animal"], 0)
  np.testing.assert_array_equal(np.asarray(choice.scales)[out["scale_index"]], TEST_SCALE)
  np.testing.assert_array_equal(out["displacement"], np.broadcast_to(truth[0], (S, 2)))
  # The confidence is the locating stage's.
  assert np.all(out["confidence"] > 0)


def test_candidates_of_some_animals_keep_the_bank_indices():
  bank = _bank()
  sub = candidates_lib.build_candidates(bank, template="mask", animals=(1, 2))
  full = candidates_lib.build_candidates(bank, template="mask")
  assert sub.reference == 0 and sub.masks.shape[0] == 2
  np.testing.assert_array_equal(sub.to_reference, full.to_reference[[1, 2]])
  np.testing.assert_array_equal(sub.masks, full.masks[1:])
  with pytest.raises(ValueError, match="reference"):
    candidates_lib.build_candidates(bank, template="mask", animals=(0, 2))


# --- the search placers on a planted bundle (placement.gbp_improved, intensity) ----

PLANT = np.array([3, -2])        # the test volume: the reference's brain moved by this


def _raw_gradient(mask: np.ndarray) -> np.ndarray:
  """A raw slice's gradient image: the brain's edge and a fainter skull edge 3 px out."""
  skull = np.asarray(candidates_lib.dilate(mask, 3))
  return _ring(mask) + 0.5 * _ring(skull)


@pytest.fixture(scope="module")
def planted():
  """(bundle, raw slices, their gradient image, true mask) with the planted PLANT.

  The bank is :func:`_bank`'s (reference animal 1); the reference's
  appearance is the log of its raw gradient image, and the test volume is
  the reference's brain (intensity) and raw gradient image moved by PLANT.
  """
  bank = _bank()
  ref = bank.reference
  grads = np.stack([[_raw_gradient(m) for m in a] for a in bank.masks])
  appearance = np.zeros_like(grads)
  appearance[ref] = np.asarray(enhance.log_gradient(grads[ref]))
  bundle = synthetic_bundle(bank.masks, gradients=bank.gradients, appearance=appearance,
                            reference=ref)
  shift = lambda x: np.asarray(correlate.shift_image(x, PLANT))
  truth = shift(bank.masks[ref])
  rng = np.random.default_rng(2)
  images = 0.6 * truth + 0.05 + 0.02 * rng.random(truth.shape)
  images[:, 2:5, 40:43] = 1.0                    # a bright object far from the brain
  return bundle, images.astype(np.float32), shift(grads[ref]).astype(np.float32), truth


@pytest.mark.parametrize("name", ["gbp_improved", "intensity"])
def test_search_placer_recovers_the_planted_volume_shift(planted, name):
  """The shipped readings place the reference, unscaled, at PLANT: within the dilation."""
  bundle, images, gradient, truth = planted
  out = placement.place(name, images, bundle=bundle, gradient=gradient)
  ref = bundle.bank.reference
  # The reference is aligned to itself: its truth is the planted shift.
  np.testing.assert_array_equal(out.displacement, np.broadcast_to(PLANT, (S, 2)))
  np.testing.assert_array_equal(out.details.volume_displacement, PLANT)
  np.testing.assert_array_equal(out.details.template_animal, ref)
  # The chosen bank slice is the slice's own (offsets are clipped at the ends).
  used = np.clip(np.arange(S) + out.details.slice_offset, 0, S - 1)
  np.testing.assert_array_equal(used, np.arange(S))
  # Brains of 8-12 px radius: scales 0.97 and 1.03 round to the same mask as
  # 1.0 (the first of tied candidates wins), so the mask is the known answer.
  assert set(out.details.scale.tolist()) <= {0.97, 1.0, 1.03}
  np.testing.assert_array_equal(out.details.placed, truth)
  # The removal mask is the placed one dilated by the reading's margin.
  options = placement.IMPROVED if name == "gbp_improved" else placement.INTENSITY
  np.testing.assert_array_equal(out.mask, np.asarray(candidates_lib.dilate(truth,
                                                                            options.dilate)))
  assert np.all(truth <= out.mask) and out.mask.dtype == bool
  assert np.all(out.confidence > 1)


def test_reported_slice_offset_is_the_one_used(planted):
  bundle, images, _, _ = planted
  out = placement.intensity(images, bundle=bundle)
  np.testing.assert_array_equal(out.details.slice_offset, 0)


def test_gbp_improved_locates_with_the_log_gradient(planted):
  """``gbp_improved`` reads its signal from the given gradient image (no network pass)."""
  bundle, images, gradient, _ = planted
  out = placement.gbp_improved(images, bundle=bundle, gradient=gradient)
  np.testing.assert_allclose(out.details.signal, enhance.log_gradient(gradient), rtol=1e-6)
  assert placement.IMPROVED.signal == "log" and placement.IMPROVED.template == "appearance"
  assert placement.INTENSITY.signal == "intensity"
  # The candidates are built once per bundle.
  assert placement.candidate_bank(bundle) is bundle.cache["candidates"]


def test_gbp_improved_needs_the_appearance(planted):
  from rodent_gbp.errors import CheckpointError
  bundle, images, gradient, _ = planted
  bare = dataclasses.replace(bundle, bank=dataclasses.replace(
      bundle.bank, appearance=None, appearance_available=None), cache={})
  with pytest.raises(CheckpointError, match="appearance"):
    placement.gbp_improved(images, bundle=bare, gradient=gradient)
