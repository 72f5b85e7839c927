"""rodent-gbp-segment on real-world headers: the decisions, the report, the outputs.

* Slice axis (``scan.choose_plane``): the header's anterior-posterior axis
  (also when it is voxel axis 2), a thick axis that contradicts the header
  (warning, the thick axis), ``--plane 0|1|2`` and named planes override.
* Voxel sizes stored x10 (``scan.voxel_scale``) by the field of view: the
  mouse-epi geometry 80x80x16 at 2.5x2.5x10 mm is x10, the same at
  0.25x0.25x1.0 is not, the rat 256x24x256 at 0.1125x1.0x0.1125 is not.
* HD95 (``metrics.hd95``): concentric squares by hand, a k-d tree oracle.
* End to end on the smoke model: the report's fields, the skull-stripped
  image is input x mask (every volume of a 4D series, masked on the mean),
  Dice and HD95 against the truth recomputed independently, a scan x1000
  (with the default model folder planted) or with an offset, x10 voxel sizes
  with ``--plane 1``, and a scan at twice the model's in-plane resolution give
  the mask of the plain scan.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import pathlib
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from rodent_gbp import cli
from rodent_gbp import metrics
from rodent_gbp import models
from rodent_gbp import qc
from rodent_gbp import scan as scan_lib
from rodent_gbp.errors import CheckpointError, UsageError

REPO = pathlib.Path(__file__).resolve().parent.parent

# ----------------------------------------------------------- slice axis --

# Voxel axes (R, S, P): the mouse-epi headers' orientation, AP on axis 2.
RSP = np.array([[2.5, 0, 0, 0], [0, 0, -10.0, 0], [0, 2.5, 0, 0], [0, 0, 0, 1]])


def test_plane_follows_the_headers_ap_axis_on_axis_2():
  plane, axis, reason, warning = scan_lib.choose_plane(RSP)
  assert (plane, axis, warning) == ("coronal", 2, None)
  assert "anterior-posterior" in reason and "also the thick one" in reason
  # Equal voxel sizes: the header alone decides.
  iso = RSP.copy()
  iso[1, 2] = -2.5
  assert scan_lib.choose_plane(iso)[:2] == ("coronal", 2)


def test_thick_axis_against_the_header_wins_with_a_warning():
  # RAS header, but voxel axis 2 (the header's S) is 4x thicker: a stack of
  # thick slices whose header orientation is wrong.
  affine = np.diag([0.25, 0.25, 1.0, 1.0])
  plane, axis, reason, warning = scan_lib.choose_plane(affine)
  assert (plane, axis) == ("axial", 2)
  assert warning and "thick voxel axis 2" in warning and "axis 1" in warning
  assert "thicker" in reason
  # Below the stated ratio (2x) it is not thick: the header's AP axis.
  assert scan_lib.THICK_RATIO == 2.0
  assert scan_lib.choose_plane(np.diag([0.25, 0.25, 0.49, 1.0]))[:2] == ("coronal", 1)
  assert scan_lib.choose_plane(np.diag([0.25, 0.25, 0.5, 1.0]))[:2] == ("axial", 2)


@pytest.mark.parametrize("given,want", [("1", ("coronal", 1)), (1, ("coronal", 1)),
                                        ("0", ("sagittal", 0)), ("2", ("axial", 2)),
                                        ("coronal", ("coronal", 1)),
                                        ("sagittal", ("sagittal", 0))])
def test_plane_flag_overrides(given, want):
  affine = np.diag([0.25, 0.25, 1.0, 1.0])
  plane, axis, reason, warning = scan_lib.choose_plane(affine, given)
  assert (plane, axis) == want and warning is None and reason.startswith("--plane")


def test_plane_voxel_axis_of_a_permuted_header():
  # (S, A, L) voxel axes: voxel axis 1 is AP, axis 0 the header's S.
  affine = np.array([[0, 0, -0.3, 0], [0, 0.3, 0, 0], [0.3, 0, 0, 0], [0, 0, 0, 1.0]])
  assert scan_lib.choose_plane(affine)[:2] == ("coronal", 1)
  assert scan_lib.choose_plane(affine, "0")[:2] == ("axial", 0)
  assert scan_lib.choose_plane(affine, "2")[:2] == ("sagittal", 2)
  with pytest.raises(UsageError, match="--plane 'oblique'"):
    scan_lib.choose_plane(affine, "oblique")


# ------------------------------------------------------- voxel scale x10 --


@pytest.mark.parametrize("shape,sizes,factor", [
    ((80, 80, 16), (2.5, 2.5, 10.0), 0.1),        # mouse-epi as stored: 200 mm FOV
    ((80, 80, 16), (0.25, 0.25, 1.0), 1.0),       # the same in mm: 20 mm FOV
    ((256, 24, 256), (0.1125, 1.0, 0.1125), 1.0),  # rat-t2w: 28.8 mm FOV
    ((96, 40, 96), (0.375, 0.5, 0.375), 1.0),     # the phantom: 36 mm
])
def test_voxel_scale_by_the_field_of_view(shape, sizes, factor):
  got, reason, warning = scan_lib.voxel_scale(shape, np.diag([*sizes, 1.0]))
  assert got == factor and warning is None
  assert ("stored x10" in reason) == (factor == 0.1)


def test_voxel_scale_given_and_implausible():
  affine = np.diag([2.5, 2.5, 10.0, 1.0])
  got, reason, warning = scan_lib.voxel_scale((80, 80, 16), affine, 1.0)
  assert got == 1.0 and "--voxel_scale 1 given" in reason
  assert warning and "200 mm" in warning          # 200 mm is no rodent head
  assert scan_lib.voxel_scale((80, 80, 16), affine, 0.1)[0] == 0.1
  # 100 mm: neither a head nor ten times one; kept, with a warning.
  got, _, warning = scan_lib.voxel_scale((100, 100, 10), np.eye(4))
  assert got == 1.0 and warning
  with pytest.raises(UsageError, match="--voxel_scale -1"):
    scan_lib.voxel_scale((8, 8, 8), np.eye(4), -1.0)
  np.testing.assert_allclose(scan_lib.voxel_sizes(scan_lib.scale_affine(RSP, 0.1)),
                             [0.25, 0.25, 1.0])


def test_remove_offset():
  x = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
  x[:2] = 0.0
  same, offset, _ = scan_lib.remove_offset(1000 * x)
  assert offset == 0.0 and same is not None
  np.testing.assert_array_equal(same, 1000 * x)
  shifted, offset, reason = scan_lib.remove_offset(x + np.float32(7.0))
  assert offset == pytest.approx(7.0) and "subtracted" in reason
  np.testing.assert_allclose(shifted, x, atol=1e-6)
  negative, offset, _ = scan_lib.remove_offset(x - np.float32(0.5))
  np.testing.assert_allclose(negative, x, atol=1e-6)


# --------------------------------------------------------------- HD95 --


def _square(n: int, half: int) -> np.ndarray:
  m = np.zeros((n, n), bool)
  c = n // 2
  m[c - half:c + half + 1, c - half:c + half + 1] = True
  return m


def test_hd95_concentric_squares_by_hand():
  inner, outer = _square(31, 5), _square(31, 8)
  # Inner boundary: 40 voxels, each 3 from the outer side opposite it. Outer
  # boundary: 64 voxels; per side the 11 with |t| <= 5 are 3 away, the rest
  # (t = 6, 7, 8 beyond the inner corner) sqrt(9 + (t - 5)^2).
  outer_d = []
  for x in range(-8, 9):
    for y in range(-8, 9):
      if max(abs(x), abs(y)) != 8:
        continue
      dx, dy = max(abs(x) - 5, 0), max(abs(y) - 5, 0)
      outer_d.append(np.hypot(dx, dy))
  pooled = np.r_[np.full(40, 3.0), outer_d]
  assert len(outer_d) == 64
  assert metrics.hd95(inner, outer, (1.0, 1.0)) == pytest.approx(np.percentile(pooled, 95))
  assert metrics.hd95(outer, inner, (1.0, 1.0)) == pytest.approx(np.percentile(pooled, 95))
  # Voxels of 0.5 mm halve every distance.
  assert metrics.hd95(inner, outer, (0.5, 0.5)) == pytest.approx(
      0.5 * np.percentile(pooled, 95))
  assert metrics.hd95(inner, inner, (1.0, 1.0)) == 0.0
  assert metrics.hd95(inner, np.zeros_like(inner), (1.0, 1.0)) == float("inf")
  assert metrics.mask_dice(inner, outer) == pytest.approx(2 * 121 / (121 + 289))


def _kd_hd95(a, b, spacing):
  """Oracle: nearest boundary voxel by a k-d tree over the millimetre coordinates."""
  pa = np.argwhere(metrics.boundary(a)) * spacing
  pb = np.argwhere(metrics.boundary(b)) * spacing
  d = np.r_[cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]]
  return float(np.percentile(d, 95))


def test_hd95_against_a_kd_tree_oracle_anisotropic_3d():
  rng = np.random.default_rng(1)
  a = ndimage.gaussian_filter(rng.random((20, 14, 18)), 2) > 0.5
  b = ndimage.binary_dilation(a, iterations=2) & (rng.random(a.shape) > 0.05)
  spacing = np.array([0.25, 1.0, 0.4])
  assert metrics.hd95(a, b, spacing) == pytest.approx(_kd_hd95(a, b, spacing))
  # The boundary: a mask voxel with a face neighbour outside (the edge included).
  cube = np.ones((3, 3, 3), bool)
  edge = metrics.boundary(cube)
  assert edge.sum() == 26 and not edge[1, 1, 1]


def test_grid_slices():
  np.testing.assert_array_equal(qc.grid_slices(10), np.arange(10))
  picks = qc.grid_slices(40)
  assert len(picks) == 16 and picks[0] == 0 and picks[-1] == 39
  assert np.all(np.diff(picks) > 0)


# -------------------------------------------------------- default model --


def test_default_model_folder_absent_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(models, "model_dir", lambda name=models.DEFAULT: tmp_path / name)
  with pytest.raises(CheckpointError, match="pass --model_dir") as e:
    models.default_model_dir()
  assert str(tmp_path / "mouse") in str(e.value)
  # The real one lies inside the package, under models/mouse.
  monkeypatch.undo()
  assert models.model_dir() == REPO / "rodent_gbp" / "models" / "mouse"


def test_setup_cfg_packages_the_model_files():
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  patterns = cfg["options.package_data"]["rodent_gbp.models"].split()
  assert {"*/*.msgpack", "*/*.json", "*/*.npz", "*/*.md", "*/LICENSE"} <= set(patterns)
  # Every file of the shipped folders is package data (the LICENSE travels with it).
  for path in (REPO / "rodent_gbp" / "models").glob("*/*"):
    rel = path.relative_to(REPO / "rodent_gbp" / "models").as_posix()
    assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel


# ------------------------------------------------------ end to end (smoke) --


def _segment(scan_path, out, *flags):
  cli.segment_main(["rodent-gbp-segment", f"--input={scan_path}", f"--out_dir={out}",
                    *flags])
  name = scan_lib.stem(pathlib.Path(scan_path))
  report = json.loads((out / f"{name}_report.json").read_text())
  arrays = {k: np.asanyarray(nib.load(str(out / f"{name}_{k}.nii.gz")).dataobj)
            for k in ("brainmask", "brain")}
  return report, arrays


@pytest.fixture(scope="module")
def plain(tmp_path_factory, scan, model_dir):
  """The test animal with its truth and the QC figure: the reference run."""
  out = tmp_path_factory.mktemp("plain")
  truth = scan.parent / "brainmask.nii.gz"
  return _segment(scan, out, f"--model_dir={model_dir}", f"--truth={truth}") + (out,)


def test_report_fields(plain, scan, model_dir):
  report, arrays, out = plain
  assert report["slice_axis"]["axis"] == 1 and report["slice_axis"]["plane"] == "coronal"
  assert "anterior-posterior" in report["slice_axis"]["reason"]
  assert report["voxel_scale"]["factor"] == 1.0 and report["voxel_scale"]["mode"] == "auto"
  assert report["intensity"]["offset"] == 0.0
  res = report["resolution"]
  assert res["input_inplane_mm"] == pytest.approx([0.375, 0.375])
  assert res["model_inplane_mm"] == pytest.approx([0.375, 0.375])
  assert res["input_grid"] == [96, 96] and res["resampled"] is False
  assert report["placement"] == "gbp_improved"
  assert report["model_dir"] == str(model_dir) and report["model_source"] == "--model_dir"
  assert report["cpu_seconds"] > 0
  voxel_mm3 = 0.375 * 0.5 * 0.375
  assert report["brain_volume"]["mm3"] == pytest.approx(arrays["brainmask"].sum() * voxel_mm3)
  assert report["brain_volume"]["species_mm3"] == {"mouse": [300.0, 750.0],
                                                   "rat": [1200.0, 3200.0]}
  # The warning is there exactly when the volume fits neither species.
  mm3 = report["brain_volume"]["mm3"]
  fits = [s for s, (lo, hi) in (("mouse", (300, 750)), ("rat", (1200, 3200)))
          if lo <= mm3 <= hi]
  assert report["brain_volume"]["fits"] == fits
  assert (report["brain_volume"]["warning"] is not None) == (not fits)
  qc_png = out / "image_qc.png"
  assert qc_png.is_file() and qc_png.stat().st_size < 1_500_000  # 224 px a slice


def test_brain_image_is_input_times_mask(plain, scan):
  _, arrays, _ = plain
  x = np.asanyarray(nib.load(str(scan)).dataobj).astype(np.float32)
  np.testing.assert_array_equal(arrays["brain"], x * (arrays["brainmask"] > 0))
  out = nib.load(str(plain[2] / "image_brain.nii.gz"))
  np.testing.assert_array_equal(out.affine, nib.load(str(scan)).affine)


def test_truth_scores_recomputed(plain, scan):
  report, arrays, _ = plain
  truth = np.asanyarray(nib.load(str(scan.parent / "brainmask.nii.gz")).dataobj) > 0
  mask = arrays["brainmask"] > 0
  dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
  assert report["truth"]["dice"] == pytest.approx(dice)
  assert report["truth"]["hd95_mm"] == pytest.approx(
      _kd_hd95(mask, truth, np.array([0.375, 0.5, 0.375])))
  assert 0.5 < dice <= 1.0


def test_intensity_scale_with_the_default_model(plain, scan, model_dir, tmp_path,
                                                monkeypatch):
  """x1000, no --model_dir: the planted default folder serves; the same mask."""
  planted = tmp_path / "models" / models.DEFAULT
  shutil.copytree(model_dir, planted)
  monkeypatch.setattr(models, "model_dir", lambda name=models.DEFAULT: planted.parent / name)
  img = nib.load(str(scan))
  x = np.asanyarray(img.dataobj).astype(np.float32)
  nib.save(nib.Nifti1Image(1000 * x, img.affine), tmp_path / "x1000.nii.gz")
  report, arrays = _segment(tmp_path / "x1000.nii.gz", tmp_path / "o", "--noqc")
  assert report["model_dir"] == str(planted)
  assert report["model_source"].startswith("default")
  np.testing.assert_array_equal(arrays["brainmask"], plain[1]["brainmask"])


def test_intensity_offset_gives_the_same_mask(plain, scan, model_dir, tmp_path):
  img = nib.load(str(scan))
  x = np.asanyarray(img.dataobj).astype(np.float32)
  nib.save(nib.Nifti1Image(x + np.float32(3.0), img.affine), tmp_path / "off.nii.gz")
  report, arrays = _segment(tmp_path / "off.nii.gz", tmp_path / "o",
                            f"--model_dir={model_dir}", "--noqc")
  assert report["intensity"]["offset"] == pytest.approx(3.0 + float(x.min()), rel=1e-5)
  a, b = arrays["brainmask"] > 0, plain[1]["brainmask"] > 0
  assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99


def test_4d_series_masked_on_its_mean(plain, scan, model_dir, tmp_path):
  img = nib.load(str(scan))
  x = np.asanyarray(img.dataobj).astype(np.float32)
  series = np.stack([0.5 * x, x, 1.5 * x], axis=-1)
  nib.save(nib.Nifti1Image(series, img.affine), tmp_path / "dwi.nii.gz")
  report, arrays = _segment(tmp_path / "dwi.nii.gz", tmp_path / "o",
                            f"--model_dir={model_dir}", "--noqc")
  assert report["segmented"].startswith("mean of 3 volumes")
  assert report["shape"] == [96, 40, 96, 3]
  mask = arrays["brainmask"] > 0
  assert mask.shape == x.shape
  # The mean is x up to rounding, whose robust-max normalisation is the same.
  b = plain[1]["brainmask"] > 0
  assert 2 * (mask & b).sum() / (mask.sum() + b.sum()) >= 0.99
  assert arrays["brain"].shape == series.shape
  np.testing.assert_array_equal(arrays["brain"], series * mask[..., None])


def test_x10_voxel_sizes_and_plane_override(plain, scan, model_dir, tmp_path):
  img = nib.load(str(scan))
  x10 = scan_lib.scale_affine(img.affine, 10.0)
  nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), x10), tmp_path / "x10.nii.gz")
  report, arrays = _segment(tmp_path / "x10.nii.gz", tmp_path / "o",
                            f"--model_dir={model_dir}", "--noqc", "--plane=1")
  assert report["voxel_scale"]["factor"] == 0.1
  assert "stored x10" in report["voxel_scale"]["reason"]
  assert report["voxel_scale"]["header_voxel_size_mm"] == pytest.approx([3.75, 5.0, 3.75])
  assert report["slice_axis"]["axis"] == 1 and report["slice_axis"]["reason"].startswith(
      "--plane 1")
  assert report["brain_volume"]["mm3"] == pytest.approx(plain[0]["brain_volume"]["mm3"])
  np.testing.assert_array_equal(arrays["brainmask"], plain[1]["brainmask"])
  out = nib.load(str(tmp_path / "o" / "x10_brainmask.nii.gz"))
  np.testing.assert_allclose(out.affine, x10)      # written in the input's own header


def test_twice_the_model_resolution_goes_there_and_back(plain, scan, model_dir, tmp_path):
  """0.1875 mm in-plane (2x the model's 0.375): each voxel split in four, same mask."""
  img = nib.load(str(scan))
  x = np.asanyarray(img.dataobj)
  fine = np.repeat(np.repeat(x, 2, axis=0), 2, axis=2)
  affine = img.affine @ np.diag([0.5, 1.0, 0.5, 1.0])
  affine[:3, 3] = img.affine[:3, 3] - 0.25 * (img.affine[:3, 0] + img.affine[:3, 2])
  nib.save(nib.Nifti1Image(fine, affine), tmp_path / "fine.nii.gz")
  report, arrays = _segment(tmp_path / "fine.nii.gz", tmp_path / "o",
                            f"--model_dir={model_dir}", "--noqc")
  res = report["resolution"]
  assert res["input_grid"] == [192, 192] and res["model_grid"] == [96, 96]
  assert res["resampled"] is True
  mask = arrays["brainmask"]
  assert mask.shape == fine.shape
  coarse = plain[1]["brainmask"]
  expected = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=2)
  a, b = mask > 0, expected > 0
  assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.98
  assert report["brain_volume"]["mm3"] == pytest.approx(plain[0]["brain_volume"]["mm3"],
                                                        rel=0.03)


def test_thick_axis_against_the_header_end_to_end(plain, scan, model_dir, tmp_path, capsys):
  """A header that calls the thick A-P axis S: sliced across it, with the plain mask.

  The phantom stored (R, S, A) under an RAS header with 1 mm voxels on axis 2:
  the header's A is really S. The thick-axis rule slices across axis 2 (the
  header's "axial" plane), whose in-plane arrays (R, S) and slice order are
  the plain scan's coronal slices; they go to the model's coronal in-plane
  size, so nothing is resampled and the mask is the plain one.
  """
  x = np.asanyarray(nib.load(str(scan)).dataobj)
  stored = np.ascontiguousarray(np.transpose(x, (0, 2, 1)))
  nib.save(nib.Nifti1Image(stored, np.diag([0.375, 0.375, 1.0, 1.0])),
           tmp_path / "thick.nii.gz")
  report, arrays = _segment(tmp_path / "thick.nii.gz", tmp_path / "o",
                            f"--model_dir={model_dir}", "--noqc")
  assert report["slice_axis"]["axis"] == 2 and report["slice_axis"]["plane"] == "axial"
  assert any("thick voxel axis 2" in w for w in report["warnings"])
  assert "warning: slicing across the thick voxel axis 2" in capsys.readouterr().out
  assert report["resolution"]["resampled"] is False
  np.testing.assert_array_equal(np.transpose(arrays["brainmask"], (0, 2, 1)),
                                plain[1]["brainmask"])
