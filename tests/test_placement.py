"""Improved placement on synthetic ellipse brains with a planted answer.

Three bank "animals" with ellipse brains of different shapes, each acquired at
its own displacement; the test brain is animal 1's ellipse scaled by 1.06 and
moved. Signals and template weights are the ellipses' edge rings, what a
gradient image of a brain looks like.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from rodent_gbp import pipeline
from rodent_gbp import placement

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


def _bank() -> pipeline.TemplateBank:
  masks, grads = [], []
  for (ry, rx), d in zip(RADII, BANK_DISP):
    # The outline changes along the slices, as a real brain's does; by aspect
    # ratio, so that no neighbouring slice mimics a scaled one.
    m = np.stack([_shift(_ellipse(*_radii(ry, rx, s)), d) for s in range(S)])
    masks.append(m)
    grads.append(np.stack([_ring(x) for x in m]))
  masks = np.stack(masks)
  return pipeline.TemplateBank(
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
  return placement.build_candidates(_bank(), template="gradient",
                                    scales=(0.94, 1.0, 1.06))


def test_bank_alignment_recovers_recorded_displacements(cands):
  # Moving animal a onto the reference undoes the difference of acquisitions.
  np.testing.assert_array_equal(cands.to_reference, BANK_DISP[1] - BANK_DISP)


@pytest.mark.parametrize("volume", [True, False])
def test_template_choice_recovers_planted_scale_and_shift(cands, volume):
  truth_mask, signal = _test_volume()
  options = placement.ImprovedOptions(scales=(0.94, 1.0, 1.06), slice_offsets=1,
                                      radius=2, volume=volume, min_confidence=0.0)
  out = placement.place_volume(signal, cands, options)
  np.testing.assert_array_equal(out["animal"], 0)
  np.testing.assert_array_equal(np.asarray(cands.scales)[out["scale_index"]], TEST_SCALE)
  truth = placement.true_displacements(TEST_DISP, BANK_DISP, cands.to_reference)
  np.testing.assert_array_equal(out["displacement"], np.broadcast_to(truth[0], (S, 2)))
  assert np.all(placement.placement_errors(out, truth) == 0)
  # The placed masks are the test brains up to the rounding of the scaling.
  dice = 2 * (out["placed"] & truth_mask).sum() / (out["placed"].sum() + truth_mask.sum())
  assert dice > 0.97


def test_flat_slice_falls_back_to_the_volume_displacement(cands):
  _, signal = _test_volume()
  signal = signal.copy()
  signal[2] = 0.0                      # a flat correlation map: nothing to trust
  signal[3] = np.roll(signal[3], 1, axis=0)
  options = placement.ImprovedOptions(scales=(1.0, 1.06), slice_offsets=1, radius=2,
                                      volume=False, min_confidence=1.0)
  out = placement.place_volume(signal, cands, options)
  assert out["confidence"][2] == 0.0
  assert out["fallback"][2] and not out["fallback"][[0, 1, 3, 4]].any()
  np.testing.assert_array_equal(out["displacement"][2], out["volume_displacement"])
  # Per-slice placement follows the moved slice; the volume's ignores it.
  np.testing.assert_array_equal(out["displacement"][3] - out["displacement"][0], [1, 0])


def test_all_candidates_in_one_jitted_call(cands):
  _, signal = _test_volume()
  options = placement.ImprovedOptions(scales=(0.94, 1.0, 1.06), slice_offsets=2,
                                      radius=1, volume=True, min_confidence=0.5)
  before = placement.TRACE_COUNT["place_volume"]
  first = placement.place_volume(signal, cands, options)
  traced = placement.TRACE_COUNT["place_volume"] - before
  assert traced <= 1
  # Another volume of the same shape and the other options' values: no retrace.
  placement.place_volume(signal[:, ::-1].copy(), cands,
                         dataclasses.replace(options, min_confidence=2.0))
  assert placement.TRACE_COUNT["place_volume"] - before == traced
  # 3 animals x 5 slice offsets x 3 scales were candidates of that one call.
  assert set(first["slice_offset"]) <= set(range(-2, 3))


def test_dilate_adds_a_diamond():
  m = np.zeros((1, 7, 7), bool)
  m[0, 3, 3] = True
  d1 = np.asarray(placement.dilate(m, 1))[0]
  assert d1.sum() == 5 and d1[2, 3] and d1[3, 4] and not d1[2, 2]
  assert np.asarray(placement.dilate(m, 2))[0].sum() == 13
  np.testing.assert_array_equal(placement.dilate(m, 0), m)


def test_oracle_bounds_the_chosen_candidate(cands):
  truth_mask, signal = _test_volume()
  shifts = placement.true_displacements(TEST_DISP, BANK_DISP, cands.to_reference)
  counts, dice = placement.oracle_counts(truth_mask, cands, shifts, slice_offsets=1)
  assert counts.sum() == truth_mask.size
  tp, fp, fn, _ = counts
  # Pooled over slices, the Dice lies between the slices' extremes.
  assert dice.min() - 1e-6 <= 2 * tp / (2 * tp + fp + fn) <= dice.max() + 1e-6
  out = placement.place_volume(signal, cands, placement.ImprovedOptions(
      scales=(0.94, 1.0, 1.06), slice_offsets=1, radius=2, min_confidence=0.0))
  p = out["placed"]
  placed_dice = 2 * (p & truth_mask).sum((1, 2)) / (p.sum((1, 2)) + truth_mask.sum((1, 2)))
  assert np.all(dice >= placed_dice - 1e-6) and dice.min() > 0.95


def test_weighted_median():
  v = np.array([1, 5, 2, 9], np.int32)
  assert int(placement.weighted_median(v, np.array([1.0, 0.0, 1.0, 0.0]))) == 1
  assert int(placement.weighted_median(v, np.array([0.0, 0.0, 0.0, 3.0]))) == 9
  assert int(placement.weighted_median(v, np.zeros(4))) == 2


def test_two_stage_locates_with_the_reference_and_chooses_by_intensity():
  # Stage 1 sees only the reference (animal 1, another shape) in the edge
  # signal; stage 2 picks animal 0 at scale 1.06 from the plain intensity.
  truth_mask, signal = _test_volume()
  intensity = truth_mask.astype(np.float32) + 0.2
  bank = _bank()
  cbank = placement.CandidateBank(bank, scales=(0.94, 1.0, 1.06))
  options = placement.ImprovedOptions(template="gradient", scales=(0.94, 1.0, 1.06),
                                      slice_offsets=1, radius=2, min_confidence=0.0,
                                      choice="intensity", choice_margin=2, choice_radius=3)
  cands, choice = cbank.for_options(options)
  assert cands.masks.shape[:3] == (1, S, 1) and choice.masks.shape[:3] == (3, S, 3)
  out = placement.place_improved(signal, intensity, cands, choice, options)
  truth = placement.true_displacements(TEST_DISP, BANK_DISP, choice.to_reference)
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
  sub = placement.build_candidates(bank, template="mask", animals=(1, 2))
  full = placement.build_candidates(bank, template="mask")
  assert sub.reference == 0 and sub.masks.shape[0] == 2
  np.testing.assert_array_equal(sub.to_reference, full.to_reference[[1, 2]])
  np.testing.assert_array_equal(sub.masks, full.masks[1:])
  with pytest.raises(ValueError, match="reference"):
    placement.build_candidates(bank, template="mask", animals=(0, 2))
