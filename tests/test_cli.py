"""rodent-gbp-segment: geometry round trips, 4D series, outputs, the error edge.

The model folder is the session's smoke model bundle (conftest's
``model_dir``: what the main job writes to ``<workdir>/model``; networks,
normalisation, template bank with the reference's raw-slice appearance,
voxel size). Planted-answer tests of the placement are in ``test_segment``.
"""

from __future__ import annotations

import csv
import dataclasses

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from rodent_gbp import cli
from rodent_gbp import data
from rodent_gbp import nifti
from rodent_gbp import inference
from rodent_gbp import placement
from rodent_gbp import scan as scan_lib
from rodent_gbp.errors import DataError, UsageError

# ------------------------------------------------------------------ helpers --


def rewrite(img: nib.Nifti1Image, *, inplane_mm: float | None = None,
            perm=(0, 1, 2), flips=(), order: int = 1) -> nib.Nifti1Image:
  """The same RAS+ scan on another grid: in-plane voxel size, axis order, flips.

  Resampling works in world coordinates (input index = A_old^-1 A_new new
  index), independently of the code under test; the new grid keeps the field
  of view (voxel edges of the first and last voxels stay where they were).
  """
  arr = np.asarray(img.dataobj)
  affine = img.affine.copy()
  if inplane_mm is not None:
    old = np.sqrt((affine[:3, :3] ** 2).sum(0))
    new_vs = np.array([inplane_mm, old[1], inplane_mm])
    shape = np.round(np.array(arr.shape) * old / new_vs).astype(int)
    scale = np.diag(np.r_[new_vs / old, 1.0])
    # Voxel centre of the new index 0 sits half a new voxel inside the old edge.
    scale[:3, 3] = -0.5 + 0.5 * new_vs / old
    new_affine = affine @ scale
    m = np.linalg.inv(affine) @ new_affine
    arr = ndimage.affine_transform(arr.astype(np.float32 if order else arr.dtype),
                                   m[:3, :3], offset=m[:3, 3], output_shape=tuple(shape),
                                   order=order, mode="nearest", prefilter=False)
    affine = new_affine
  # Reorder / flip: old index[perm[k]] = new index k (or n_k - 1 - it if flipped).
  new = np.transpose(arr, perm)
  m = np.zeros((4, 4))
  m[3, 3] = 1
  for k, p in enumerate(perm):
    if k in flips:
      m[p, k], m[p, 3] = -1, new.shape[k] - 1
    else:
      m[p, k] = 1
  for k in flips:
    new = np.flip(new, k)
  out = nib.Nifti1Image(np.ascontiguousarray(new), affine @ m)
  out.set_qform(affine @ m, code=1)
  out.set_sform(affine @ m, code=1)
  return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a.astype(bool), b.astype(bool)
  return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


# ------------------------------------------------------------ unit pieces --


def test_axis_map_keeps_the_field_of_view_centred():
  # 144 voxels of 0.25 mm and 96 of 0.375 mm cover the same 36 mm.
  scale, offset = scan_lib._axis_map(144, 0.25, 96, 0.375)
  assert scale == 1.5
  # Target voxel 0's centre (0.1875 mm) is source index 0.25 (0.125 + 0.25 * 0.25).
  assert offset == pytest.approx(0.25)
  # Centre maps to centre.
  assert scale * 47.5 + offset == pytest.approx(71.5)


def test_resample_nearest_there_and_back_is_exact():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, (2, 12, 10)).astype(np.uint8)
  up = scan_lib.resample_inplane(labels, (0.5, 0.5), (0.25, 0.25), (24, 20), order=0)
  assert up.dtype == np.uint8
  np.testing.assert_array_equal(up[:, ::2, ::2], labels)
  np.testing.assert_array_equal(up[:, 1::2, 1::2], labels)
  down = scan_lib.resample_inplane(up, (0.25, 0.25), (0.5, 0.5), (12, 10), order=0)
  np.testing.assert_array_equal(down, labels)
  same = scan_lib.resample_inplane(labels, (0.5, 0.5), (0.5, 0.5), (12, 10), order=1)
  np.testing.assert_array_equal(same, labels)


def test_fit_and_unfit_invert_each_other():
  x = np.arange(2 * 7 * 13, dtype=np.float32).reshape(2, 7, 13)
  fitted = scan_lib.fit_to(x, (8, 8))       # pad H by 1 (after), crop W by 5
  assert fitted.shape == (2, 8, 8)
  np.testing.assert_array_equal(fitted[:, 7], 0)
  np.testing.assert_array_equal(fitted[:, :7, :], x[:, :, 2:10])
  back = scan_lib.unfit(fitted, (7, 13))
  np.testing.assert_array_equal(back[:, :, 2:10], x[:, :, 2:10])
  np.testing.assert_array_equal(back[:, :, :2], 0)


def test_bank_slice_index_by_relative_position():
  np.testing.assert_array_equal(scan_lib.bank_slice_index(40, 40), np.arange(40))
  np.testing.assert_array_equal(scan_lib.bank_slice_index(5, 40), [0, 10, 20, 29, 39])
  np.testing.assert_array_equal(scan_lib.bank_slice_index(1, 40), [19])
  idx = scan_lib.bank_slice_index(80, 40)
  assert idx[0] == 0 and idx[-1] == 39 and np.all(np.diff(idx) >= 0)


def test_voxel_sizes_follow_the_ras_axes():
  a = np.array([[0, 0, -0.3, 0], [0.5, 0, 0, 0], [0, 0.25, 0, 0], [0, 0, 0, 1.0]])
  # Input axes (A, S, L) -> RAS sizes (0.3, 0.5, 0.25).
  np.testing.assert_allclose(nifti.voxel_sizes_ras(a), [0.3, 0.5, 0.25])


# ------------------------------------------------------- end to end (smoke) --


def _run(scan_path, model_dir, out, **kw):
  return inference.segment_scan(scan_path, model_dir, out, log=lambda m: None, **kw)


@pytest.fixture(scope="module")
def native(tmp_path_factory, model_dir, scan):
  out = tmp_path_factory.mktemp("native")
  return _run(scan, model_dir, out)


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_outputs_written_with_the_input_grid(native, scan):
  img = nib.load(str(scan))
  paths = native["paths"]
  assert sorted(p.name for p in paths.values()) == sorted(
      ["image_brainmask.nii.gz", "image_labels.nii.gz", "image_saliency.nii.gz",
       "image_brain.nii.gz", "image_qc.png", "image_slices.csv", "image_report.json"])
  for key in inference.OUTPUTS:
    out = nib.load(str(paths[key]))
    assert out.shape == img.shape
    np.testing.assert_array_equal(out.affine, img.affine)
  mask = np.asarray(nib.load(str(paths["brainmask"])).dataobj)
  labels = np.asarray(nib.load(str(paths["labels"])).dataobj)
  assert mask.dtype == np.uint8 and labels.dtype == np.uint8
  # The phantom is RAS+ at the model's voxel size and slice shape: the outputs
  # are the model-grid mask (the one applied) and the labels inside it,
  # transposed back. (The network also labels some zeroed background; the
  # written labels keep only what lies inside the applied mask.)
  np.testing.assert_array_equal(mask, data.from_slices(native["mask"]).astype(np.uint8))
  np.testing.assert_array_equal(
      labels, data.from_slices(native["labels"] * native["mask"]).astype(np.uint8))
  rows = _rows(paths["csv"])
  assert len(rows) == img.shape[1]
  assert {"slice", "bank_slice", "dy_vox", "dx_vox", "dy_mm", "dx_mm", "confidence",
          "brain_voxels"} <= set(rows[0])
  assert [int(r["brain_voxels"]) for r in rows] == \
      native["mask"].reshape(len(rows), -1).sum(-1).tolist()
  assert all(np.isfinite(float(r["confidence"])) for r in rows)
  assert float(rows[3]["dy_mm"]) == pytest.approx(0.375 * int(rows[3]["dy_vox"]))
  assert not [p for p in paths["csv"].parent.iterdir() if p.name.startswith(".")]


def test_axis_order_changes_nothing_but_the_layout(native, scan, model_dir, tmp_path):
  """A scan stored (S-I, A-P, R-L) with flips segments exactly like the RAS+ one."""
  img = nib.load(str(scan))
  perm, flips = (2, 1, 0), (0, 2)
  moved = rewrite(img, perm=perm, flips=flips)
  moved.header["descrip"] = b"lab scanner 7"
  moved.header.set_xyzt_units("mm", "sec")
  nib.save(moved, tmp_path / "moved.nii.gz")
  res = _run(tmp_path / "moved.nii.gz", model_dir, tmp_path / "out", name="m")
  out = nib.load(str(res["paths"]["brainmask"]))
  assert out.shape == moved.shape
  np.testing.assert_array_equal(out.affine, moved.affine)
  assert out.header["descrip"] == moved.header["descrip"]
  assert out.header.get_xyzt_units() == ("mm", "sec")
  assert out.header.get_sform(coded=True)[1] == 1
  np.testing.assert_array_equal(res["mask"], native["mask"])
  np.testing.assert_array_equal(res["labels"], native["labels"])
  expected = np.asarray(nib.load(str(native["paths"]["brainmask"])).dataobj)
  expected = np.transpose(expected, perm)
  for k in flips:
    expected = np.flip(expected, k)
  np.testing.assert_array_equal(np.asarray(out.dataobj), expected)


def test_other_voxel_size_keeps_affine_and_mask(native, scan, model_dir, tmp_path):
  """0.25 mm in-plane and another axis order: outputs on the input's grid."""
  img = nib.load(str(scan))
  fine = rewrite(img, inplane_mm=0.25, perm=(1, 2, 0), flips=(1,))
  nib.save(fine, tmp_path / "fine.nii.gz")
  res = _run(tmp_path / "fine.nii.gz", model_dir, tmp_path / "out")
  assert res["grid"] == (96, 96)
  for key in inference.OUTPUTS:
    out = nib.load(str(res["paths"][key]))
    assert out.shape == fine.shape == (40, 144, 144)
    np.testing.assert_array_equal(out.affine, fine.affine)
  # The native mask taken to the fine grid the same way agrees with the output.
  mask_native = nib.load(str(native["paths"]["brainmask"]))
  expected = np.asarray(rewrite(mask_native, inplane_mm=0.25, perm=(1, 2, 0), flips=(1,),
                                order=0).dataobj)
  got = np.asarray(nib.load(str(res["paths"]["brainmask"])).dataobj)
  assert dice(got, expected) > 0.9
  # Labels stay inside the applied mask on the input's grid too.
  labels = np.asarray(nib.load(str(res["paths"]["labels"])).dataobj)
  assert not np.any((labels > 0) & (got == 0))


def test_4d_series_volume_and_average(scan, model_dir, tmp_path):
  img = nib.load(str(scan))
  x = np.asarray(img.dataobj, np.float32)
  series = nib.Nifti1Image(np.stack([0.5 * x, x, 1.5 * x], axis=-1), img.affine)
  nib.save(series, tmp_path / "dwi.nii.gz")
  nib.save(nib.Nifti1Image(x, img.affine), tmp_path / "b0.nii.gz")
  one = _run(tmp_path / "dwi.nii.gz", model_dir, tmp_path / "v", volume=1, qc=False)
  mean = _run(tmp_path / "dwi.nii.gz", model_dir, tmp_path / "a", average=True, qc=False)
  ref = _run(tmp_path / "b0.nii.gz", model_dir, tmp_path / "r", qc=False)
  # Normalisation divides out the global scale, so all three see the same slices.
  np.testing.assert_array_equal(one["mask"], ref["mask"])
  assert dice(mean["mask"], ref["mask"]) > 0.99
  out = nib.load(str(one["paths"]["labels"]))
  assert out.shape == img.shape and out.header["dim"][0] == 3
  np.testing.assert_array_equal(out.affine, img.affine)


def test_console_script_in_process(scan, model_dir, tmp_path, capsys):
  """``segment_main`` (the installed script) and its error edge, no subprocess."""
  with pytest.raises(SystemExit) as e:
    cli.segment_main(["rodent-gbp-segment", f"--input={scan}", f"--model_dir={model_dir}",
                      f"--out_dir={tmp_path}", "--volume=2"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "--volume 2 out of range" in err and str(scan) in err
  assert list(tmp_path.iterdir()) == []
  with pytest.raises(SystemExit) as e:
    cli.segment_main(["rodent-gbp-segment", "--no_such_flag"])
  assert e.value.code == 2


def test_binary_segments_with_fewer_slices(scan, model_dir, tmp_path, binary):
  """experiments/segment.py in-process on a 10-slice crop (relative A-P matching)."""
  img = nib.load(str(scan))
  crop = nib.Nifti1Image(np.asarray(img.dataobj)[:, 10:20], img.affine)
  nib.save(crop, tmp_path / "crop.nii.gz")
  assert binary("segment", [f"--input={tmp_path / 'crop.nii.gz'}",
                            f"--model_dir={model_dir}", f"--out_dir={tmp_path / 'o'}",
                            "--noqc"]) is None
  rows = _rows(tmp_path / "o" / "crop_slices.csv")
  # 10 slices spread over the bank's 40: 0, 4, 9, ..., 39.
  assert [int(r["bank_slice"]) for r in rows] == [0, 4, 9, 13, 17, 22, 26, 30, 35, 39]
  assert not (tmp_path / "o" / "crop_qc.png").exists()


def test_improved_placement_is_the_default(native, scan, smoke_bundle):
  """Default auto: gbp_improved for a bundle without an extractor (supervised with one);
  per-slice displacements near the one volume displacement."""
  import inspect
  from absl import flags
  assert inspect.signature(inference.segment_scan).parameters["placement"].default == "auto"
  fv = flags.FlagValues()
  cli.define_segment_flags(fv)
  assert fv["placement"].default == "auto"
  assert "extractor" not in smoke_bundle.networks
  assert inference.choose_placement("auto", smoke_bundle) == "gbp_improved"
  with_extractor = dataclasses.replace(smoke_bundle, networks={
      **smoke_bundle.networks, "extractor": smoke_bundle.networks["tissue"]})
  assert inference.choose_placement("auto", with_extractor) == "supervised"
  assert inference.choose_placement("gbp", with_extractor) == "gbp"
  rows = _rows(native["paths"]["csv"])
  assert {r["placement"] for r in rows} == {"gbp_improved"}
  assert {"volume_dy_vox", "volume_dx_vox", "template_animal", "slice_offset",
          "scale"} <= set(rows[0])
  assert "fallback" not in rows[0]  # no confidence threshold any more
  # The intensity choice searches within choice_radius of the volume
  # displacement the saliency located: every slice's displacement is there.
  pl = native["placement"]
  vol = pl.details.volume_displacement
  disp = np.array([[int(r["dy_vox"]), int(r["dx_vox"])] for r in rows])
  np.testing.assert_array_equal(disp, pl.displacement)
  assert np.abs(disp - vol).max() <= placement.IMPROVED.choice_radius
  assert [int(rows[0]["volume_dy_vox"]), int(rows[0]["volume_dx_vox"])] == vol.tolist()
  # Template animals are training animals (the test animal is not in the bank).
  bank = smoke_bundle.bank
  assert {r["template_animal"] for r in rows} <= set(bank.animal_ids)
  assert scan.parent.name not in bank.animal_ids
  assert {float(r["scale"]) for r in rows} <= set(placement.IMPROVED.scales)
  assert {int(r["slice_offset"]) for r in rows} <= set(
      range(-placement.IMPROVED.slice_offsets, placement.IMPROVED.slice_offsets + 1))


def test_paper_placement_by_flag(scan, smoke_bundle, model_dir, tmp_path, capsys):
  """--placement=gbp: the reference mask at each slice moved by its displacement."""
  from rodent_gbp import correlate
  cli.segment_main(["rodent-gbp-segment", f"--input={scan}", f"--model_dir={model_dir}",
                    f"--out_dir={tmp_path}", "--placement=gbp", "--noqc"])
  rows = _rows(tmp_path / "image_slices.csv")
  assert {r["placement"] for r in rows} == {"gbp"} and "volume_dy_vox" not in rows[0]
  img = nib.load(str(scan))
  out = nib.load(str(tmp_path / "image_brainmask.nii.gz"))
  np.testing.assert_array_equal(out.affine, img.affine)
  bank = smoke_bundle.bank
  disp = np.array([[int(r["dy_vox"]), int(r["dx_vox"])] for r in rows])
  expected = np.asarray(correlate.shift_image(bank.masks[bank.reference], disp))
  np.testing.assert_array_equal(data.to_slices(np.asarray(out.dataobj), "coronal"), expected)
  labels = np.asarray(nib.load(str(tmp_path / "image_labels.nii.gz")).dataobj)
  assert not np.any((labels > 0) & (np.asarray(out.dataobj) == 0))
  with pytest.raises(SystemExit) as e:
    cli.segment_main(["rodent-gbp-segment", f"--input={scan}", f"--model_dir={model_dir}",
                      f"--out_dir={tmp_path / 'x'}", "--placement=oracle"])
  assert e.value.code == 2 and "placement" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_old_placement_names_are_refused(scan, model_dir, tmp_path, capsys):
  """improved / paper were renamed gbp_improved / gbp: refused, not silently mapped."""
  for old in ("improved", "paper"):
    with pytest.raises(SystemExit) as e:
      cli.segment_main(["rodent-gbp-segment", f"--input={scan}", f"--model_dir={model_dir}",
                        f"--out_dir={tmp_path / old}", f"--placement={old}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "gbp_improved" in err
    assert not (tmp_path / old).exists()
  with pytest.raises(UsageError, match="--placement 'paper'"):
    inference.segment_scan(scan, model_dir, tmp_path / "lib", placement="paper")


def test_run_main_error_edge(capsys):
  """Project errors and OSError: one line, exit 2; anything else (ValueError too) is a bug."""
  def raising(exc):
    @cli.run_main
    def main(argv):
      raise exc
    return main

  for exc, text in ((DataError("a.nii: file is empty"), "a.nii: file is empty"),
                    (FileNotFoundError(2, "No such file", "b.nii"), "b.nii")):
    with pytest.raises(SystemExit) as e:
      raising(exc)([])
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0]
  for bug in (KeyError("a bug"), ValueError("a plain ValueError is a bug")):
    with pytest.raises(type(bug)):
      raising(bug)([])
    assert capsys.readouterr().err == ""
