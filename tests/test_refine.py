"""Known answers of the contour refinement (``rodent_gbp.refine``) on synthetic arrays.

A disk mask placed 2 px too small inside an image whose edge evidence lies on
the true disk's boundary is refined to the true disk; with no evidence it is
returned unchanged; the circular dynamic programme is checked against brute
force and the smoothness penalty against its two limits; the ``gbp_refined``
placer runs on a bundle built by hand (``conftest.synthetic_bundle``).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from conftest import synthetic_bundle
from rodent_gbp import placement
from rodent_gbp import refine
from rodent_gbp.errors import UsageError

H = W = 48
CENTRE = (23.4, 24.3)
TRUE_R = 13.0


def _disk(radius: float, centre=CENTRE, shape=(H, W)) -> np.ndarray:
  yy, xx = np.mgrid[:shape[0], :shape[1]]
  return np.hypot(yy - centre[0], xx - centre[1]) <= radius


def _edge(mask: np.ndarray) -> np.ndarray:
  """An edge image of a brain: the gradient magnitude of the smoothed mask."""
  return ndimage.gaussian_gradient_magnitude(mask.astype(np.float32), 1.0).astype(np.float32)


def _dice(a, b) -> float:
  a, b = np.asarray(a, bool), np.asarray(b, bool)
  return float(2 * (a & b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def disks():
  """(true (2, H, W), placed 2 px too small (2, H, W)): a disk and an ellipse-ish blob."""
  true = np.stack([_disk(TRUE_R), _disk(11.0, centre=(25.1, 22.8))])
  small = np.stack([_disk(TRUE_R - 2), _disk(9.0, centre=(25.1, 22.8))])
  return true, small


def _step(mask: np.ndarray) -> np.ndarray:
  """An image high inside the brain and low outside (what GBP looks like), smoothed."""
  return ndimage.gaussian_filter(mask.astype(np.float32), (0, 1.0, 1.0))


def test_too_small_disk_is_refined_to_the_true_disk(disks):
  """Drop feature: the steepest outward fall of the image lies on the true boundary."""
  true, small = disks
  options = refine.RefineOptions(feature="drop", reach=3.0, bias=0.0, prior=0.0,
                                 smoothness=0.3)
  out = refine.refine(small, _step(true), options)
  assert out["mask"].shape == true.shape and out["mask"].dtype == bool
  for s in range(len(true)):
    assert _dice(small[s], true[s]) < 0.9
    assert _dice(out["mask"][s], true[s]) > 0.98
  # Every ray moved out by the 2 px the disk was too small.
  np.testing.assert_array_equal(np.median(out["offset"], axis=1), [2.0, 2.0])


def test_value_feature_finds_an_edge_ridge_to_half_a_pixel(disks):
  true, small = disks
  options = refine.RefineOptions(feature="value", reach=3.0, bias=0.0, prior=0.0,
                                 smoothness=0.3)
  out = refine.refine(small, _edge(true), options)
  for s in range(len(true)):
    assert abs(float(np.median(out["offset"][s])) - 2.0) <= 0.5
    assert _dice(out["mask"][s], true[s]) > 0.95


def test_no_evidence_leaves_the_mask_unchanged(disks):
  _, small = disks
  for feature in refine.FEATURES:
    out = refine.refine(small, np.zeros(small.shape, np.float32),
                        refine.RefineOptions(feature=feature))
    np.testing.assert_array_equal(out["mask"], small)
    np.testing.assert_array_equal(out["offset"], 0.0)


def test_a_constant_contour_reconstructs_the_placed_mask_and_dilation_grows_it(disks):
  true, _ = disks
  # The evidence on the placed contour itself: offsets 0, the same mask.
  out = refine.refine(true, _step(true), refine.RefineOptions(feature="drop", prior=0.0))
  assert _dice(out["mask"], true) > 0.995
  grown = refine.refine(true, np.zeros(true.shape, np.float32),
                        refine.RefineOptions(dilate=1))["mask"]
  cross = ndimage.generate_binary_structure(2, 1)
  np.testing.assert_array_equal(grown, [ndimage.binary_dilation(m, cross) for m in true])


def test_small_and_empty_slices_stay_as_placed(disks):
  true, small = disks
  masks = np.stack([small[0], np.zeros((H, W), bool), _disk(1.5)])
  out = refine.refine(masks, _step(np.stack([true[0]] * 3)),
                      refine.RefineOptions(feature="drop", prior=0.0, min_area=20))
  assert _dice(out["mask"][0], true[0]) > 0.98
  np.testing.assert_array_equal(out["mask"][1:], masks[1:])


def test_circular_viterbi_matches_brute_force():
  rng = np.random.default_rng(0)
  for _ in range(3):
    unary = rng.normal(size=(5, 3)).astype(np.float32)
    pair = rng.uniform(0, 1, size=(3, 3)).astype(np.float32)
    best, cost = None, np.inf
    for states in itertools.product(range(3), repeat=5):
      c = sum(unary[j, s] for j, s in enumerate(states)) + sum(
          pair[states[j], states[(j + 1) % 5]] for j in range(5))
      if c < cost - 1e-6:
        best, cost = states, c
    got = np.asarray(refine.circular_viterbi(unary, pair))
    got_cost = sum(unary[j, s] for j, s in enumerate(got)) + sum(
        pair[got[j], got[(j + 1) % 5]] for j in range(5))
    np.testing.assert_allclose(got_cost, cost, rtol=1e-5, atol=1e-5)
    assert tuple(got) == best


def test_smoothness_penalty_limits(disks):
  """No smoothness: each ray takes its own best offset; a large one: one offset for all."""
  _, small = disks
  evidence = _edge(_disk(TRUE_R))
  # A spike of evidence 2 px inside the placed contour on a few rays only.
  yy, xx = np.mgrid[:H, :W]
  ang = np.arctan2(yy - CENTRE[0], xx - CENTRE[1])
  rho = np.hypot(yy - CENTRE[0], xx - CENTRE[1])
  spike = (np.abs(ang) < 0.12) & (np.abs(rho - (TRUE_R - 4)) < 0.7)
  evidence = np.maximum(evidence, 2.0 * evidence.max() * spike).astype(np.float32)
  masks = small[:1]
  free = refine.refine(masks, evidence[None], refine.RefineOptions(smoothness=0.0, prior=0.0))
  stiff = refine.refine(masks, evidence[None], refine.RefineOptions(smoothness=50.0, prior=0.0))
  off_free, off_stiff = free["offset"][0], stiff["offset"][0]
  # Ray 0 points along +x, into the spike: alone it jumps inward.
  assert off_free[0] < 0 and np.median(off_free) == pytest.approx(2.0, abs=0.5)
  # Stiff: every ray the same offset, the one most rays support (out by 2).
  assert np.ptp(off_stiff) == 0 and off_stiff[0] == pytest.approx(2.0, abs=0.5)
  # The cost the stiff path pays for the kink is what makes the free one cheaper.
  assert np.sum(np.abs(np.diff(off_free, append=off_free[:1]))) > 0


def test_evidence_sources_are_the_ablation_switch():
  rng = np.random.default_rng(1)
  slices = rng.random((2, 12, 10)).astype(np.float32)
  gradient = rng.random((2, 12, 10)).astype(np.float32) + 0.1
  gy, gx = np.gradient(slices, axis=(1, 2))
  np.testing.assert_allclose(
      refine.evidence_image(slices, gradient, refine.RefineOptions(source="intensity")),
      np.hypot(gy, gx), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(
      refine.evidence_image(slices, gradient, refine.RefineOptions(source="gbp")), gradient)
  lg = refine.evidence_image(slices, gradient, refine.RefineOptions(source="log"))
  ref = np.log(gradient + 0.01 * gradient.max(axis=(1, 2), keepdims=True))
  np.testing.assert_allclose(lg, ref - ref.min(axis=(1, 2), keepdims=True), rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(UsageError, match="needs the GBP gradient image"):
    refine.evidence_image(slices, None, refine.RefineOptions(source="gbp"))
  with pytest.raises(UsageError, match="unknown refinement source"):
    refine.RefineOptions(source="edges")


# --- the placer ----------------------------------------------------------------------

S = 3


@pytest.fixture(scope="module")
def bundle_and_brain():
  """A bank of 2 disk brains (radius 9 and 10), the test brain a disk of radius 12.

  It is bigger than every candidate (scales up to 1.06), so gbp_improved
  cannot reach it.
  """
  cross = ndimage.generate_binary_structure(2, 1)

  def gbp_like(masks):
    # GBP is strongest a little inside the brain's edge and falls across it:
    # the brain eroded by 1 px, smoothed (what REFINED's bias of 1 px expects).
    return _step(np.stack([ndimage.binary_erosion(m, cross) for m in masks]))

  bank = np.stack([np.stack([_disk(r, centre=(23.5, 24.5))] * S) for r in (9.0, 10.0)])
  app = np.zeros(bank.shape, np.float32)
  app[1] = np.log(gbp_like(bank[1]) + 0.01)
  bundle = synthetic_bundle(bank, appearance=app, reference=1)
  truth = np.stack([_disk(12.0, centre=(24.5, 23.5))] * S)
  images = (0.6 * truth + 0.05).astype(np.float32)
  gradient = gbp_like(truth)
  return bundle, images, gradient, truth


def test_placer_refines_gbp_improved_and_checks_shapes(bundle_and_brain):
  bundle, images, gradient, truth = bundle_and_brain
  start = placement.place("gbp_improved", images, bundle=bundle, gradient=gradient)
  out = placement.place("gbp_refined", images, bundle=bundle, gradient=gradient)
  assert out.mask.shape == images.shape and out.mask.dtype == bool
  np.testing.assert_array_equal(out.displacement, start.displacement)
  np.testing.assert_array_equal(out.details.start, start.mask)
  assert _dice(start.details.placed, truth) < 0.95
  assert _dice(out.mask, truth) > 0.98
  with pytest.raises(UsageError, match="slices"):
    placement.place("gbp_refined", images[0], bundle=bundle, gradient=gradient[0])
  with pytest.raises(UsageError, match="gradient image"):
    placement.place("gbp_refined", images, bundle=bundle, gradient=gradient[:, :-1])
  with pytest.raises(UsageError, match="one shape"):
    refine.refine(truth, gradient[:2])
  # Intensity evidence (the image's edges are the same brain's) refines it too;
  # the evidence used is the one the switch names.
  alt = placement.place_refined(images, bundle=bundle, gradient=gradient,
                             options=refine.RefineOptions(source="intensity"), start=start)
  np.testing.assert_allclose(alt.details.evidence, refine.gradient_magnitude(images),
                             rtol=1e-6)
  np.testing.assert_array_equal(out.details.evidence, gradient)


def test_study_split_and_grid():
  from rodent_gbp.studies import refine_study
  trained = {"train": ["01", "02"], "val": ["03"], "test": ["04"]}
  ok = refine_study.check_split({"train": ["01"], "val": ["03"], "test": ["04", "05"]}, trained,
                                "split.json")
  assert ok["val"] == ["03"] and ok["test"] == ["04", "05"]
  with pytest.raises(UsageError, match=r"split.json: animals \['02'\]"):
    refine_study.check_split({"val": ["03"], "test": ["02"]}, trained, "split.json")
  with pytest.raises(UsageError, match="validation and test"):
    refine_study.check_split({"val": [], "test": ["04"]}, trained, "split.json")
  grid = refine_study.grid_options({"bias": (0.0, 1.0), "smoothness": (0.1, 0.3, 1.0)},
                                   feature="drop")
  assert len(grid) == 6 and len(set(grid)) == 6 and all(o.feature == "drop" for o in grid)


def _fake_report(source, rows):
  from rodent_gbp.studies import refine_study
  test = {a: {w: v + 0.001 * i for i, w in enumerate(refine_study.POOLED)}
          for a, v in rows.items()}
  return {"split_source": source, "test": test}


def test_pool_over_folds_known_answers(tmp_path, binary):
  import json
  from rodent_gbp.errors import DataError
  from rodent_gbp.studies import refine_study
  # Fold 0: animals 01 (0.90 + 0.001 * column), 02 (0.94 ...); fold 1: animal 03 (0.80 ...).
  r0 = _fake_report("fold 0", {"01": 0.90, "02": 0.94})
  r1 = _fake_report("fold 1", {"03": 0.80})
  pooled = refine_study.pool([r0, r1], supervised={"01": 0.97, "02": 0.98, "03": 0.99, "x": 0})
  cols = refine_study.POOLED
  assert pooled["animals"] == ["01", "02", "03"] and pooled["columns"][-1] == "supervised"
  g = cols.index("gbp_improved") * 0.001
  assert pooled["fold_means"][0]["gbp_improved"] == pytest.approx(0.92 + g)
  assert pooled["fold_means"][1]["gbp_improved"] == pytest.approx(0.80 + g)
  # Mean and sd over the two fold means, and the mean over the three animals.
  assert pooled["mean"]["gbp_improved"] == pytest.approx(0.86 + g)
  assert pooled["sd"]["gbp_improved"] == pytest.approx(np.std([0.92, 0.80], ddof=1))
  assert pooled["animal_mean"]["supervised"] == pytest.approx(0.98)
  # Columns after gbp_improved carry larger offsets: they beat it on every animal.
  assert pooled["wins_vs_gbp_improved"]["oracle"] == 3
  assert pooled["wins_vs_gbp_improved"]["gbp"] == 0
  assert pooled["refined_gbp_beats"]["gbp_improved"] == 3
  assert pooled["refined_gbp_beats"]["supervised"] == 0
  assert pooled["per_animal"]["03"]["fold"] == 1
  with pytest.raises(DataError, match="animal 01 is a test animal of two"):
    refine_study.pool([r0, _fake_report("fold 2", {"01": 0.5})])
  with pytest.raises(DataError, match="animal 03 has no supervised"):
    refine_study.pool([r0, r1], supervised={"01": 0.9, "02": 0.9})
  # The binary: folders or files, a supervised CSV, and the refusal of --model_dir.
  for k, r in enumerate((r0, r1)):
    (tmp_path / f"f{k}").mkdir()
    (tmp_path / f"f{k}" / "refine.json").write_text(json.dumps(r))
  csv_path = tmp_path / "per_animal.csv"
  csv_path.write_text("animal,brain_dsc,fold\n01,0.97,0\n02,0.98,0\n03,0.99,1\n")
  binary("refine_study", [f"--pool={tmp_path / 'f0'},{tmp_path / 'f1' / 'refine.json'}",
                          f"--supervised_csv={csv_path}", f"--out_dir={tmp_path / 'out'}"])
  written = json.loads((tmp_path / "out" / "refine_pooled.json").read_text())
  assert written["mean"] == pytest.approx(pooled["mean"])
  md = (tmp_path / "out" / "refine_pooled.md").read_text()
  assert "| 03 | 1 |" in md and "mean +- sd over folds" in md
  with pytest.raises(SystemExit):
    binary("refine_study", [f"--pool={tmp_path / 'f0'}", "--model_dir=x",
                            f"--out_dir={tmp_path / 'o2'}"])
