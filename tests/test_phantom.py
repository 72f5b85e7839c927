"""Tests for the synthetic phantom: invariants, truth in meta.json, determinism."""

from __future__ import annotations

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest

from rodent_gbp import phantom
from rodent_gbp.errors import DataError, UsageError

MIDDLE = slice(15, 26)


@pytest.fixture(scope="module")
def animals():
  return [phantom.make_animal(0, i) for i in range(2)]


def test_shapes_dtypes_and_label_range(animals):
  for a in animals:
    assert a.image.shape == a.labels.shape == a.brainmask.shape == (96, 40, 96)
    assert a.image.dtype == np.float32 and a.labels.dtype == np.uint8
    assert np.all(np.isfinite(a.image)) and a.image.min() >= 0
    assert set(np.unique(a.labels)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(a.brainmask, a.labels > 0)


def test_every_class_in_middle_slices_and_csf_fraction(animals):
  for a in animals:
    for j in range(40)[MIDDLE]:
      assert set(np.unique(a.labels[:, j, :])) == {0, 1, 2, 3}, j
    counts = np.bincount(a.labels.ravel(), minlength=4)
    csf = counts[3] / counts[1:].sum()
    assert 0.03 < csf < 0.15
    assert csf == pytest.approx(a.meta["csf_fraction_of_brain"])
    # WM is a sizeable class, GM the largest.
    assert counts[2] > counts[1] > counts[3]


def test_brain_size_and_growth_along_slices(animals):
  for a in animals:
    widths = [np.ptp(np.nonzero(a.brainmask[:, j, :].any(1))[0]) + 1 for j in range(40)]
    heights = [np.ptp(np.nonzero(a.brainmask[:, j, :].any(0))[0]) + 1 for j in range(40)]
    s = a.meta["size_factor"]
    assert abs(max(widths) - 40 * s) <= 2.5
    assert abs(max(heights) - 27 * s) <= 2.5
    # The cross-section grows and shrinks: both ends well below the maximum.
    assert widths[0] < 0.85 * max(widths) and widths[-1] < 0.85 * max(widths)


def test_intensities_match_labels(animals):
  # Brain tissue carries its class intensity (times bias in 0.85..1.15, Rician noise).
  a = animals[0]
  for label, value in ((1, phantom.WM), (2, phantom.GM), (3, phantom.CSF)):
    median = np.median(a.image[a.labels == label])
    assert 0.85 * value < median < 1.15 * value + 0.02


def test_outside_brain_overlaps_brain_intensities(animals):
  for a in animals:
    outside = a.image[a.labels == 0]
    lo, hi = np.percentile(a.image[a.labels > 0], [5, 95])
    overlapping = np.count_nonzero((outside > lo) & (outside < hi))
    # More non-brain voxels look like brain tissue than there are brain voxels.
    assert overlapping > np.count_nonzero(a.labels)
    kinds = {o["kind"] for o in a.meta["foreign_objects"]}
    assert {"coil_edge", "tube", "fiducial_marker"} <= kinds
    for o in a.meta["foreign_objects"]:
      assert 0.5 <= o["intensity"] <= 1.0


def test_rician_background_statistics(animals):
  # Air far from the head and the objects: |N(0, s) + i N(0, s)| has mean s sqrt(pi / 2).
  a = animals[0]
  corner = a.image[:6, :, :6]
  assert corner.mean() == pytest.approx(phantom.NOISE_SIGMA * np.sqrt(np.pi / 2), rel=0.1)


def test_displacement_matches_meta():
  a = phantom.make_animal(0, 1)
  ref = phantom.make_animal(0, 1, displaced=False)
  dh, dw = a.meta["displacement_hw"]
  off = a.meta["slice_offset"]
  assert (dh, dw, off) == (12, -9, -1)  # a large shift, so the test is strong
  # Slice j of the acquisition cuts the anatomy of reference slice j + offset,
  # shifted by (dh, dw): the label maps agree exactly.
  for j in range(1, 39):
    np.testing.assert_array_equal(
        a.labels[:, j, :], np.roll(ref.labels[:, j + off, :], (dh, dw), axis=(0, 1)))
  js = np.arange(1, 39)
  got = np.argwhere(a.brainmask[:, js, :]).mean(0)
  want = np.argwhere(ref.brainmask[:, js + off, :]).mean(0)
  np.testing.assert_allclose(got[[0, 2]] - want[[0, 2]], [dh, dw], atol=1e-9)
  center = np.asarray(a.meta["brain_center_hw"]) - a.meta["brain_center_hw_undisplaced"]
  np.testing.assert_array_equal(center, [dh, dw])


def test_outline_deformation_at_most_one_voxel():
  a = phantom.make_animal(0, 0)
  plain = phantom.make_animal(0, 0, deformed=False)
  assert 0 < a.meta["outline_deformation_max_voxels"] <= 1.0
  changed = a.brainmask != plain.brainmask
  assert changed.any()
  # Every changed voxel lies within one voxel (in-plane) of the plain outline.
  m = plain.brainmask.astype(bool)
  edge = np.zeros_like(m)
  for axis in (0, 2):
    for step in (1, -1):
      edge |= m != np.roll(m, step, axis=axis)
  assert np.all(edge[changed])


def test_drawn_truth_ranges():
  draws = [phantom.draw_acquisition(3, i) for i in range(400)]
  s = np.array([d["size_factor"] for d in draws])
  d = np.array([d["displacement_hw"] for d in draws])
  o = np.array([d["slice_offset"] for d in draws])
  assert 0.97 <= s.min() < 0.975 and 1.025 < s.max() <= 1.03
  assert d.min() == -12 and d.max() == 12 and d.dtype.kind == "i"
  assert set(o.tolist()) == {-1, 0, 1}


def test_deterministic_and_seed_dependent(animals):
  again = phantom.make_animal(0, 0)
  np.testing.assert_array_equal(again.image, animals[0].image)
  np.testing.assert_array_equal(again.labels, animals[0].labels)
  assert again.meta == animals[0].meta
  other = phantom.make_animal(1, 0)
  assert not np.array_equal(other.image, animals[0].image)
  assert other.meta["size_factor"] != animals[0].meta["size_factor"]
  assert not np.array_equal(animals[1].labels, animals[0].labels)


def test_other_size_scales_geometry():
  a = phantom.make_animal(0, 0, size=48)
  assert a.image.shape == (48, 40, 48)
  assert a.meta["voxel_size"] == [0.75, 0.5, 0.75]
  ref = phantom.make_animal(0, 0)
  ratio = np.count_nonzero(a.brainmask) / np.count_nonzero(ref.brainmask)
  assert ratio == pytest.approx(0.25, rel=0.1)


def test_make_phantom_main_writes_nifti(tmp_path, binary):
  out = tmp_path / "ph"
  binary("make_phantom", [f"--out_dir={out}", "--animals=2", "--seed=0"])
  assert sorted(p.name for p in out.iterdir()) == ["phantom.json", "rat00", "rat01"]
  assert phantom.is_complete(out, animals=2)
  for folder in sorted(p for p in out.iterdir() if p.is_dir()):
    assert sorted(p.name for p in folder.iterdir()) == [
        "brainmask.nii.gz", "image.nii.gz", "labels.nii.gz", "meta.json"]
    meta = json.loads((folder / "meta.json").read_text())
    for name in ("image", "labels", "brainmask"):
      img = nib.load(folder / f"{name}.nii.gz")
      assert img.shape == (96, 40, 96)
      np.testing.assert_allclose(img.header.get_zooms(), (0.375, 0.5, 0.375))
      assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    expected = phantom.make_animal(0, int(meta["index"]))
    np.testing.assert_array_equal(nib.load(folder / "labels.nii.gz").get_fdata(),
                                  expected.labels)
    assert meta["displacement_hw"] == expected.meta["displacement_hw"]
    for key in ("animal_id", "seed", "size_factor", "displacement_hw", "slice_offset",
                "voxel_size"):
      assert key in meta


# --- writing is atomic: a whole phantom or none ------------------------------------


def _leftovers(parent: pathlib.Path) -> list[str]:
  return sorted(p.name for p in parent.iterdir())


def test_write_phantom_interrupted_leaves_nothing(tmp_path, monkeypatch):
  real = phantom.make_animal
  calls = []

  def failing(seed, index, **kw):
    calls.append(index)
    if len(calls) == 3:
      raise RuntimeError("interrupted while drawing the 3rd animal")
    return real(seed, index, **kw)

  monkeypatch.setattr(phantom, "make_animal", failing)
  out = tmp_path / "ph"
  with pytest.raises(RuntimeError, match="3rd animal"):
    phantom.write_phantom(out, animals=4, seed=0, size=48)
  assert calls == [0, 1, 2]
  # No output folder, no temporary folder beside it, no marker.
  assert _leftovers(tmp_path) == []
  assert not phantom.is_complete(out)


def test_write_phantom_complete_has_its_marker(tmp_path):
  out = tmp_path / "ph"
  paths = phantom.write_phantom(out, animals=2, seed=0, size=48)
  assert _leftovers(tmp_path) == ["ph"]
  assert paths == [out / "rat00", out / "rat01"]
  assert sorted(p.name for p in out.iterdir()) == ["phantom.json", "rat00", "rat01"]
  assert json.loads((out / "phantom.json").read_text()) == {
      "animals": 2, "seed": 0, "size": 48, "kind": "standard"}
  assert phantom.is_complete(out) and phantom.is_complete(out, animals=2)
  assert not phantom.is_complete(out, animals=3)
  # An empty folder is written into (and no temporary folder is left).
  empty = tmp_path / "empty"
  empty.mkdir()
  phantom.write_phantom(empty, animals=1, seed=0, size=48)
  assert phantom.is_complete(empty, animals=1)
  assert _leftovers(tmp_path) == ["empty", "ph"]


def test_write_phantom_refuses_a_non_empty_folder(tmp_path):
  out = tmp_path / "ph"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  with pytest.raises(DataError, match="not empty") as e:
    phantom.write_phantom(out, animals=1, size=48)
  assert str(out) in str(e.value)
  assert _leftovers(out) == ["notes.txt"] and _leftovers(tmp_path) == ["ph"]
  # A file in its place is refused too.
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(DataError, match="not empty"):
    phantom.write_phantom(f, animals=1, size=48)


def test_is_complete_needs_a_readable_marker(tmp_path):
  assert not phantom.is_complete(tmp_path / "missing")
  (tmp_path / "phantom.json").write_text("{broken")
  assert not phantom.is_complete(tmp_path)


# --- the measured kind ------------------------------------------------------

MEASURED = phantom.KINDS["measured"]


@pytest.fixture(scope="module")
def measured():
  return phantom.make_animal(0, 1, size=48, kind="measured")


def test_standard_kind_is_the_default_and_unchanged_by_the_kinds(animals):
  a = phantom.make_animal(0, 0, kind="standard")
  np.testing.assert_array_equal(a.image, animals[0].image)
  assert a.meta["kind"] == "standard" and "supersample" not in a.meta
  with pytest.raises(UsageError, match="measured"):
    phantom.make_animal(0, 0, kind="realistic")


def test_measured_labels_are_the_majority_of_the_finer_grid(measured):
  # Oracle: a loop over the 2 x 2 blocks of the anatomy rendered at twice the size.
  fine = phantom.anatomy(0, 1, size=96, look=MEASURED)["labels"]
  for j in (6, 20, 33):
    for h in range(48):
      for w in range(48):
        block = fine[2 * h:2 * h + 2, j, 2 * w:2 * w + 2].ravel()
        counts = np.bincount(block, minlength=4)
        want = 0 if counts[0] > 2 else 1 + int(np.argmax(counts[1:]))
        assert measured.labels[h, j, w] == want, (h, j, w, block)
  np.testing.assert_array_equal(measured.brainmask, measured.labels > 0)
  # The same animal: its brain where the standard kind has it, up to the border.
  standard = phantom.make_animal(0, 1, size=48)
  assert measured.meta["displacement_hw"] == standard.meta["displacement_hw"]
  assert (measured.brainmask == standard.brainmask).mean() > 0.98


def _interior(mask, iterations=2):
  from scipy import ndimage
  return ndimage.binary_erosion(mask, np.ones((3, 1, 3), bool), iterations=iterations)


def test_measured_follows_its_coil_falloff_and_contrast(measured, monkeypatch):
  # Known answer: with the random field, the texture and the noise switched
  # off, the tissue interior (no partial volume) is the class intensity times
  # exp(-d / 7.2 mm), d below the reference centre (held level above the coil).
  import dataclasses
  exact = dataclasses.replace(MEASURED, name="exact", bias_amplitude=0.0, brain_texture=0.0,
                              noise_sigma=1e-5, psf_sigma=0.0)
  monkeypatch.setitem(phantom.KINDS, "exact", exact)
  a = phantom.make_animal(0, 1, size=48, kind="exact")
  vz = phantom.voxel_size(48)[2]
  z = np.broadcast_to(np.arange(48)[None, None, :], a.image.shape)
  d_mm = np.maximum((round(phantom.BRAIN_CENTER_Z * 0.5) - z) * vz, -MEASURED.coil_height_mm)
  coil = np.exp(-d_mm / MEASURED.coil_decay_mm)
  # Pure voxels: all four sub-voxels of the finer grid carry the class.
  fine = phantom.anatomy(0, 1, size=96, look=exact)["labels"].reshape(48, 2, 40, 48, 2)
  for label, value in ((1, MEASURED.wm), (2, MEASURED.gm), (3, MEASURED.csf)):
    pure = (fine == label).all(axis=(1, 4))
    assert pure.sum() > 20
    np.testing.assert_allclose(a.image[pure], value * coil[pure], rtol=1e-3)
  assert MEASURED.wm / MEASURED.gm == pytest.approx(0.85)
  # With everything on, the field still spans more than 3x (EPI: 3.5 in the brain).
  assert measured.meta["bias_range"][1] / measured.meta["bias_range"][0] > 3
  gm = _interior(measured.labels == 2)
  ratio = measured.image[gm] / (MEASURED.gm * coil[gm])
  assert 0.85 < np.median(ratio) < 1.15


def test_measured_has_partial_volume_at_its_borders(animals):
  # The 10-90 % widths data_statistics measures: steps in the standard kind
  # (about half a voxel, the noise), wider once sub-voxels are averaged and the
  # point-spread function applied (mouse_t2_atlas: brain edge 1.1, GM/WM 1.7).
  from rodent_gbp.studies import realism
  # At size 96: at 48 the tracts are too thin for a border profile.
  measured = phantom.make_animal(0, 1, kind="measured")
  widths = {}
  for name, a in (("standard", animals[1]), ("measured", measured)):
    stripped = np.where(a.brainmask > 0, a.image, 0.0)
    widths[name] = realism.tissue_statistics(stripped, a.labels, a.meta["voxel_size"])
  assert widths["standard"]["gm_wm_width"] < 1.0, widths
  assert widths["measured"]["gm_wm_width"] > widths["standard"]["gm_wm_width"] + 0.5, widths
  assert (widths["measured"]["brain_edge_width"]
          > widths["standard"]["brain_edge_width"] + 0.15), widths


def test_write_phantom_records_its_kind(tmp_path):
  out = tmp_path / "m"
  phantom.write_phantom(out, animals=1, seed=0, size=48, kind="measured")
  assert phantom.kind_of(out) == "measured"
  assert phantom.is_complete(out, kind="measured") and not phantom.is_complete(out, kind="standard")
  assert json.loads((out / "rat00" / "meta.json").read_text())["kind"] == "measured"
  assert phantom.kind_of(tmp_path / "missing") is None
  with pytest.raises(UsageError, match="unknown phantom kind"):
    phantom.write_phantom(tmp_path / "x", animals=1, size=48, kind="nope")


def test_a_run_refuses_a_phantom_of_another_kind(tmp_path):
  from rodent_gbp import configs
  from rodent_gbp import sources
  phantom.write_phantom(tmp_path / "data", animals=1, seed=0, size=48)
  config = configs.override(configs.get_config("smoke"), phantom="measured")
  with pytest.raises(UsageError, match=r"data: holds a standard phantom"):
    sources.resolve_data(tmp_path, config, log=lambda s: None)
  folder, is_phantom = sources.resolve_data(
      tmp_path, configs.get_config("smoke"), log=lambda s: None)
  assert folder == tmp_path / "data" and is_phantom
  with pytest.raises(UsageError, match="unknown phantom kind"):
    configs.override(configs.get_config("smoke"), phantom="nope")
