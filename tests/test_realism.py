"""Tests for rodent_gbp.studies.realism and studies.common.borders: every
statistic on arrays whose answer is known by construction (ratios, noise sd,
bias ratio, edge width, CV), and the binary's outputs on a tiny phantom."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from rodent_gbp import phantom
from rodent_gbp.studies import realism as R
from rodent_gbp.studies.common import borders as B

VS = (0.2, 0.5, 0.2)      # RAS voxel size in mm; coronal slices along axis 1


def _grid(shape):
  return np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")


def _disc(shape, radius, center=None):
  """A cylinder along the slice axis: the same disc in every coronal slice."""
  x, _, z = _grid(shape)
  cx, cz = center or ((shape[0] - 1) / 2, (shape[2] - 1) / 2)
  return (x - cx) ** 2 + (z - cz) ** 2 <= radius ** 2


# --- distances and surroundings -------------------------------------------------

def test_in_plane_distance_is_voxels_times_size_and_inf_without_region():
  mask = np.zeros((30, 3, 20), bool)
  mask[:10, :2] = True                      # slice 2 has no brain
  d = B.in_plane_distance(mask, VS)
  x = np.arange(30)
  np.testing.assert_allclose(d[:, 0, 5], np.maximum(x - 9, 0) * 0.2)
  assert np.all(np.isinf(d[:, 2]))


def test_shell_ratio_known_half_space():
  # Brain x < 10 (every slice): outside, the in-plane distance is x - 9 voxels.
  shape = (30, 3, 20)
  x = _grid(shape)[0]
  mask = x < 10
  image = np.select([mask, x - 9 <= 2, x - 9 <= 8], [2.0, 0.5, 1.0], 3.0)
  px = B.pixel_mm(VS)
  assert R.shell_ratio(image, mask, VS, 0, 2 * px) == pytest.approx(0.25)
  assert R.shell_ratio(image, mask, VS, 2 * px, 8 * px) == pytest.approx(0.5)
  assert math.isnan(R.shell_ratio(image, mask, VS, 50 * px, 60 * px))


def test_bright_surroundings_known_percentile():
  rng = np.random.default_rng(0)
  mask = np.zeros((20, 5, 20), bool)
  mask[5:15, :, 5:15] = True
  image = np.zeros(mask.shape)
  n = int((~mask).sum())
  image[~mask] = rng.permutation(np.linspace(0.0, 1.0, n))   # p99 = 0.99
  image[mask] = 0.5
  assert R.bright_surroundings(image, mask) == pytest.approx(0.99 / 0.5, rel=1e-9)


# --- noise --------------------------------------------------------------------------

def test_corner_background_recovers_gaussian_sd_and_skips_a_bright_corner():
  rng = np.random.default_rng(1)
  shape = (60, 8, 60)
  image = 1.0 + rng.normal(0.0, 0.1, shape)
  image[-6:, :, -6:] = 5.0                  # a fiducial marker filling one corner
  mask = _disc(shape, 15)
  image[mask] = 10.0
  cb = R.corner_background(image, mask=mask, corners=2)
  assert cb["level"] == pytest.approx(1.0, abs=0.01)
  assert cb["robust_sd"] == pytest.approx(0.1, rel=0.05)
  assert cb["voxels"] == 2 * 6 * 6 * 8


def test_corner_background_rayleigh_sigma_of_magnitude_noise():
  rng = np.random.default_rng(2)
  shape = (50, 10, 50)
  sigma = 0.2
  image = np.hypot(rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
  cb = R.corner_background(image)
  assert cb["rayleigh_sigma"] == pytest.approx(sigma, rel=0.03)
  assert cb["mean"] == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.03)


def test_residual_noise_sd_on_smooth_field_plus_white_noise():
  rng = np.random.default_rng(3)
  shape = (48, 6, 48)
  x, y, z = _grid(shape)
  smooth = 5.0 + 0.1 * x + np.sin(z / 7.0) + 0.02 * y + 0.001 * x * z
  region = np.zeros(shape, bool)
  region[4:44, :, 4:44] = True
  image = smooth + rng.normal(0.0, 0.05, shape)
  assert R.residual_noise_sd(image, region) == pytest.approx(0.05, rel=0.05)
  # A sharp edge through the region touches few voxels: the MAD ignores them.
  edged = image + np.where(x > 24, 1.0, 0.0)
  assert R.residual_noise_sd(edged, region) == pytest.approx(0.05, rel=0.08)
  assert R.residual_noise_sd(smooth, region) == pytest.approx(0.0, abs=1e-6)


# --- bias field -----------------------------------------------------------------------

def test_field_ratio_of_a_linear_log_field():
  shape = (41, 2, 3)
  x = _grid(shape)[0]
  a = 0.01
  mask = np.ones(shape, bool)
  # x uniform on 0..40: p95 - p5 = 0.9 * 40.
  assert R.field_ratio(a * x, mask) == pytest.approx(math.exp(0.9 * 40 * a), rel=1e-9)


def _ellipsoid(shape):
  x, y, z = _grid(shape)
  c = [(n - 1) / 2 for n in shape]
  return ((x - c[0]) / 16) ** 2 + ((y - c[1]) / 6) ** 2 + ((z - c[2]) / 14) ** 2 <= 1


def test_n4_recovers_a_known_smooth_bias_field():
  rng = np.random.default_rng(4)
  shape = (40, 10, 40)
  x, _, z = _grid(shape)
  mask = _ellipsoid(shape)
  log_field = 0.4 * x / 39 + 0.2 * np.sin(z / 39 * np.pi)
  labels = np.where(mask, np.where(((x - 19.5) / 8) ** 2 + ((z - 19.5) / 6) ** 2 <= 1,
                                   1, 2), 0)
  image = np.choose(labels, [0.0, 45.0, 62.0]) * np.exp(log_field)
  image = image + rng.normal(0.0, 0.5, shape)
  truth = R.field_ratio(log_field, mask)
  assert truth == pytest.approx(1.29, abs=0.01)
  measured = R.bias_statistics(image, mask, (0.3, 0.5, 0.3))["bias_p95_p5"]
  assert math.log(measured) == pytest.approx(math.log(truth), rel=0.1)


def test_class_bias_field_where_class_intensities_are_known():
  shape = (40, 10, 40)
  x, _, z = _grid(shape)
  mask = _ellipsoid(shape)
  log_field = 0.3 * x / 39
  labels = np.where(mask, np.where(z > 19.5, 1, 2), 0)
  values = {1: 0.45, 2: 0.62}
  image = np.choose(labels, [0.0, 0.45, 0.62]) * np.exp(log_field)
  field, known = R.class_bias_field(image, labels, values, (0.3, 0.5, 0.3), sigma_mm=0.6)
  assert np.array_equal(known, mask)
  assert R.field_ratio(field, mask) == pytest.approx(R.field_ratio(log_field, mask),
                                                     rel=0.02)


# --- partial volume -------------------------------------------------------------------

def test_transition_width_of_a_linear_ramp_and_of_its_mirror():
  pos = np.arange(-4.0, 4.01, 0.5)
  ramp = np.clip((pos + 2.0) / 4.0, 0.0, 1.0)      # 0 at -2, 1 at +2
  kw = dict(lo_range=(-4.0, -3.0), hi_range=(3.0, 4.0))
  w = B.transition_width(pos, 3.0 + 2.0 * ramp, **kw)
  assert w["width"] == pytest.approx(3.2)
  assert (w["s10"], w["s90"]) == pytest.approx((-1.6, 1.6))
  assert (w["lo"], w["hi"]) == pytest.approx((3.0, 5.0))
  # Brighter on the negative side: the same width.
  assert B.transition_width(pos, 5.0 - 2.0 * ramp, **kw)["width"] == pytest.approx(3.2)
  # Levels closer than min_contrast (5 % of the larger): no edge, no width.
  assert math.isnan(B.transition_width(pos, 1.0 + 0.04 * ramp, **kw)["width"])
  assert B.transition_width(pos, 1.0 + 0.06 * ramp, **kw)["width"] == pytest.approx(3.2)
  # A profile that never reaches its upper level has no width.
  assert math.isnan(B.transition_width(pos, ramp * 0.5, lo_range=(-4, -3),
                                       hi_range=(10, 11))["width"])


@pytest.mark.parametrize("blur", [1.0, 1.5, 2.5, 4.0])
def test_edge_width_of_a_gaussian_blurred_step(blur):
  # A straight border (x = 49.5) blurred by a Gaussian of sd ``blur`` voxels:
  # the 10-90 % width of the normal CDF is 2 * 1.2816 * blur (the half-voxel
  # placement of the border adds a variance of about 1/12 voxel^2).
  shape = (100, 2, 20)
  pos = _grid(shape)[0] >= 50
  image = ndimage.gaussian_filter(np.where(pos, 1.0, 0.0), (blur, 0, 0))
  w = B.edge_width(image, pos, ~pos, VS, lo_range=(-15, -12), hi_range=(12, 15))
  assert w["width"] == pytest.approx(2.5631 * math.sqrt(blur ** 2 + 1 / 12), rel=0.02)
  assert w["width_mm"] == pytest.approx(w["width"] * 0.2)
  assert w["s10"] == pytest.approx(-w["s90"])


def test_edge_width_of_a_sharp_and_a_blurred_disc():
  shape = (100, 2, 100)
  disc = _disc(shape, 32)
  sharp = np.where(disc, 1.0, 0.0)
  kw = dict(lo_range=(-10, -8), hi_range=(8, 10))
  assert 0.5 <= B.edge_width(sharp, disc, ~disc, VS, **kw)["width"] <= 0.85
  # A curved border reads a few per cent narrow (digitised distances).
  blurred = ndimage.gaussian_filter(sharp, (2.0, 0, 2.0))
  assert B.edge_width(blurred, disc, ~disc, VS, **kw)["width"] == pytest.approx(
      2.5631 * 2.0, rel=0.08)


def test_edge_profile_leaves_out_voxels_near_a_third_region():
  shape = (40, 2, 40)
  x = _grid(shape)[0]
  pos, neg = x >= 20, x < 20
  third = np.zeros(shape, bool)
  third[:, :, :10] = True
  full = B.edge_profile(x, pos, neg, VS, max_voxels=3.5)
  kept = B.edge_profile(x, pos, neg, VS, max_voxels=3.5, exclude=third, exclude_voxels=2)
  assert full["count"].sum() == 8 * 2 * 40
  assert kept["count"].sum() == 8 * 2 * (40 - 12)
  np.testing.assert_allclose(full["position"], [-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5])
  np.testing.assert_allclose(full["mean"], np.arange(16, 24))


def test_between_class_excess_zero_for_sharp_border_large_for_blurred():
  rng = np.random.default_rng(5)
  shape = (60, 4, 60)
  x = _grid(shape)[0]
  a, b = x < 30, x >= 30
  clean = np.where(a, 0.45, 0.62)
  sharp = clean + rng.normal(0, 0.02, shape)
  blurred = ndimage.gaussian_filter(clean, (1.5, 0, 0)) + rng.normal(0, 0.02, shape)
  assert abs(B.between_class_excess(sharp, a, b, VS)["excess"]) < 0.03
  assert B.between_class_excess(blurred, a, b, VS)["excess"] > 0.3


def test_rim_ratio_of_a_dark_outer_ring():
  shape = (50, 3, 50)
  disc = _disc(shape, 18)
  cross = np.zeros((3, 1, 3), bool)
  cross[1, 0, :] = cross[:, 0, 1] = True
  ring = disc & ~ndimage.binary_erosion(disc, structure=cross)
  image = np.where(ring, 0.5, np.where(disc, 1.0, 0.0))
  assert B.rim_ratio(image, disc, VS) == pytest.approx(0.5)


# --- size and summaries ---------------------------------------------------------------

def test_size_statistics_of_a_box():
  mask = np.zeros((40, 8, 30), bool)
  mask[5:15, 2:6, 3:9] = True               # 10 x 4 x 6 voxels of 0.2 x 0.5 x 0.3 mm
  s = R.size_statistics(mask, (0.2, 0.5, 0.3))
  assert s["volume_mm3"] == pytest.approx(240 * 0.2 * 0.5 * 0.3)
  assert (s["width_mm"], s["height_mm"], s["length_mm"]) == pytest.approx((2.0, 1.8, 2.0))
  assert s["fov_fraction"] == pytest.approx(10 / 40)


def test_coefficient_of_variation_and_set_level_statistics():
  # Linear size factors 0.9, 1.0, 1.1: width CV 0.1 exactly; volume scales as s^3.
  s = np.array([0.9, 1.0, 1.1])
  assert R.coefficient_of_variation(s) == pytest.approx(0.1)
  assert math.isnan(R.coefficient_of_variation([1.0]))
  per_animal = {f"a{i}": {"volume_mm3": 500 * f ** 3, "width_mm": 10 * f,
                          "height_mm": 7.0} for i, f in enumerate(s)}
  per_animal["tt"] = {"volume_mm3": 300.0, "width_mm": 9.0, "height_mm": 7.0}
  lvl = R.set_level_statistics(per_animal, groups={"WT": ["a0", "a1", "a2"],
                                                   "TT": ["tt", "absent"]})
  v = 500 * s ** 3
  assert lvl["volume_cv_WT"] == pytest.approx(np.std(v, ddof=1) / v.mean())
  assert math.isnan(lvl["volume_cv_TT"])    # one animal: no CV
  assert lvl["height_cv"] == 0.0
  assert lvl["volume_cv"] > lvl["volume_cv_WT"]


def test_summarise_and_table():
  assert R.summarise([3.0, None, float("nan"), 1.0, 2.0]) == {
      "median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
  assert R.summarise([None])["n"] == 0
  summary = {"phantom": R.summarise_set({"r0": {"gap_ratio": 0.2}, "r1": {"gap_ratio": 0.3}}),
             "mouse_epi": R.summarise_set({"01": {"gap_ratio": 0.5, "rim_ratio": 0.6},
                                           "02": {"gap_ratio": 0.5}})}
  rows = R.table_rows(summary, {"phantom": {"volume_cv": 0.05},
                                "mouse_epi": {"volume_cv": 0.04}})
  assert {r["set"] for r in rows} == {"mouse_epi"}      # the t2 rows are left out
  gap = next(r for r in rows if r["key"] == "gap_ratio")
  assert (gap["phantom"], gap["real"]) == ("0.25 [0.2, 0.3]", "0.5 [0.5, 0.5]")
  rim = next(r for r in rows if r["key"] == "rim_ratio")
  assert (rim["phantom"], rim["real"]) == ("n/a", "0.6 [0.6, 0.6] (n=1)")
  cv = next(r for r in rows if r["key"] == "volume_cv")
  assert (cv["phantom"], cv["real"]) == ("0.05", "0.04")
  md = R.markdown_table(rows)
  assert md.startswith("| statistic | phantom median [range] | real median [range] | set |")
  assert "| mean 1-2 voxels outside the brain / brain mean | 0.25 [0.2, 0.3] | 0.5 [0.5, " \
         "0.5] | mouse_epi |" in md


# --- on the phantom itself, against the generator's truth ------------------------------

def test_phantom_noise_and_bias_against_the_generator():
  animal = phantom.make_animal(0, 0, size=48)
  vs = animal.meta["voxel_size"]
  image, labels = animal.image.astype(np.float64), animal.labels
  mask = labels > 0
  bm = R.brain_median(image, mask)
  sur = R.surroundings_statistics(image, mask, vs)
  assert sur["corner_rayleigh_sigma"] * bm == pytest.approx(phantom.NOISE_SIGMA, rel=0.06)
  tis = R.tissue_statistics(image, labels, vs)
  assert tis["noise_gm"] * bm == pytest.approx(phantom.NOISE_SIGMA, rel=0.1)
  assert tis["brain_edge_width"] < 0.85     # no partial volume by construction
  assert tis["wm_over_gm"] == pytest.approx(phantom.WM / phantom.GM, rel=0.03)


def test_binary_writes_json_and_table(tmp_path, binary):
  root = tmp_path / "phantom"
  phantom.write_phantom(root, animals=2, seed=0, size=48)
  out = tmp_path / "out"
  binary("data_statistics", [f"--out_dir={out}", f"--phantom_dir={root}",
                             f"--epi_dir={root}", f"--t2_dir={root}",
                             f"--t2_paper_dir={root}", "--max_animals=2"])
  report = json.loads((out / "statistics.json").read_text())
  assert set(report["per_animal"]) == {"phantom", "mouse_epi", "mouse_t2_atlas",
                                       "mouse_t2_atlas_paper"}
  assert sorted(report["per_animal"]["mouse_epi"]) == ["rat00", "rat01"]
  assert report["sets"]["phantom"]["source"] == {"animals": 2, "seed": 0, "size": 48,
                                                 "kind": "standard"}
  # The same folder on both sides: the two cells of a row agree (the within-
  # genotype CVs aside: the phantom has no genotypes).
  same = [r for r in report["table"] if not r["key"].startswith("volume_cv_")]
  assert same and all(r["phantom"] == r["real"] for r in same)
  md = (out / "statistics.md").read_text()
  assert "| statistic | phantom median [range] | real median [range] | set |" in md
  assert len([r for r in report["table"]]) == md.count(" | mouse_")
  assert "--max_animals=2" in report["command"]
