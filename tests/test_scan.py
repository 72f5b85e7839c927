"""A user's scan on its way to the model grid and back (rodent_gbp.scan): known answers."""

from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np
import pytest

from rodent_gbp import data
from rodent_gbp import nifti
from rodent_gbp import scan
from rodent_gbp.errors import DataError, UsageError


def _read_scan(path, **kw):
  """A 3D volume of a scan as the CLI takes it: ``read_series`` then ``collapse``."""
  series, img = scan.read_series(path)
  return scan.collapse(series, path, **kw)[0], img


def _save(tmp_path: pathlib.Path, array, affine=None, name="s.nii.gz") -> pathlib.Path:
  path = tmp_path / name
  nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), path)
  return path


def _volume(shape=(4, 3, 5), seed=0) -> np.ndarray:
  return np.random.default_rng(seed).random(shape).astype(np.float32) + 0.1


def test_stem():
  assert scan.stem(pathlib.Path("/x/rat.01.nii.gz")) == "rat.01"
  assert scan.stem(pathlib.Path("b0.nii")) == "b0"
  assert scan.stem(pathlib.Path("scan.img")) == "scan"


def test_read_scan_3d_keeps_the_file_axis_order(tmp_path):
  v = _volume()
  affine = np.diag([-0.3, 0.5, 0.25, 1.0])
  image, img = _read_scan(_save(tmp_path, v.astype(np.float64), affine))
  assert image.dtype == np.float32 and image.shape == (4, 3, 5)
  np.testing.assert_array_equal(image, v)
  np.testing.assert_allclose(img.affine, affine, rtol=1e-6)


def test_read_scan_4d_volume_average_and_trailing_axes(tmp_path):
  series = np.stack([_volume(seed=i) for i in range(3)], axis=-1)     # (4, 3, 5, 3)
  path = _save(tmp_path, series)
  np.testing.assert_array_equal(_read_scan(path, volume=2)[0], series[..., 2])
  np.testing.assert_allclose(_read_scan(path, average=True)[0], series.mean(-1),
                             rtol=1e-6)
  # Without --volume a series is segmented on its mean.
  np.testing.assert_allclose(_read_scan(path)[0], series.mean(-1), rtol=1e-6)
  full, _ = scan.read_series(path)
  np.testing.assert_array_equal(full, series)
  assert scan.collapse(full, path)[1].startswith("mean of 3 volumes")
  assert scan.collapse(full, path, volume=0)[1] == "volume 0 of 3"
  with pytest.raises(DataError, match="out of range"):
    _read_scan(path, volume=3)
  # One volume in 4D, and a 5D file with singleton trailing axes, read as 3D.
  one = _save(tmp_path, series[..., :1], name="one.nii.gz")
  np.testing.assert_array_equal(_read_scan(one)[0], series[..., 0])
  five = _save(tmp_path, series[..., :1, None], name="five.nii.gz")
  np.testing.assert_array_equal(_read_scan(five)[0], series[..., 0])


@pytest.mark.parametrize("case,match", [
    ("missing", "file not found"), ("empty", "file is empty"), ("2d", "expected a 3D"),
    ("constant", "constant"), ("nan", "NaN or inf"), ("singular", "singular")])
def test_read_scan_errors_name_the_file(tmp_path, case, match):
  v = _volume()
  if case == "missing":
    path = tmp_path / "nowhere.nii.gz"
  elif case == "empty":
    path = tmp_path / "e.nii.gz"
    path.write_bytes(b"")
  elif case == "2d":
    path = _save(tmp_path, v[:, :, 0])
  elif case == "constant":
    path = _save(tmp_path, np.ones_like(v))
  elif case == "nan":
    v[1, 1, 1] = np.nan
    path = _save(tmp_path, v)
  else:
    header = nib.Nifti1Header()
    header.set_sform(np.diag([0.375, 0.0, 0.375, 1.0]), code=1)   # an axis of length 0
    path = tmp_path / "sing.nii.gz"
    nib.save(nib.Nifti1Image(v, None, header=header), path)
  with pytest.raises(DataError, match=match) as e:
    _read_scan(path)
  assert str(path) in str(e.value)


def test_to_volume_reorients_normalises_and_slices():
  ras = _volume((4, 3, 5))
  vs = np.array([0.3, 0.5, 0.25])
  rule = {"method": "fixed", "scale": 2.0}
  plain = scan.to_volume(ras, np.diag([*vs, 1.0]), plane="coronal", name="a",
                         normalisation=rule)
  # Coronal slices (S, H, W) = RAS axes (A; R, S), divided by the fixed scale.
  np.testing.assert_allclose(plain.image, np.transpose(ras, (1, 0, 2)) / 2.0, rtol=1e-6)
  assert plain.animal_id == "a" and plain.label is None and plain.brainmask is None
  assert plain.shape == (4, 3, 5) and plain.normalisation == rule
  # The same anatomy stored (L, S, A): axes flipped and permuted in the file.
  stored = np.transpose(ras[::-1], (0, 2, 1))
  affine = np.array([[-vs[0], 0, 0, 0], [0, 0, vs[1], 0], [0, vs[2], 0, 0], [0, 0, 0, 1.0]])
  moved = scan.to_volume(stored, affine, plane="coronal", name="b", normalisation=rule)
  np.testing.assert_array_equal(moved.image, plain.image)
  np.testing.assert_allclose(nifti.voxel_sizes_ras(affine), vs)
  # The way back writes the file's own layout.
  back = np.asanyarray(data.to_nifti(moved.image, moved).dataobj)
  np.testing.assert_allclose(back, stored / 2.0, rtol=1e-6)


@pytest.mark.parametrize("plane", ["coronal", "axial", "sagittal"])
def test_inplane_axes_are_the_slices_axes(plane):
  ras = np.zeros((2, 3, 4))
  assert data.to_slices(ras, plane).shape[1:] == tuple(
      np.asarray(ras.shape)[scan.INPLANE_AXES[plane]])


def test_resample_inplane_linear_ramp_known_values():
  # 4 voxels of 1 mm -> 2 voxels of 2 mm over the same 4 mm: the centres of
  # the new voxels sit at source indices 0.5 and 2.5.
  ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None], (4, 6))[None]
  out = scan.resample_inplane(ramp, (1.0, 1.0), (2.0, 2.0), (2, 3), order=1)
  assert out.shape == (1, 2, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out[0], [[0.5] * 3, [2.5] * 3], rtol=1e-6)
  # Labels by nearest neighbour keep their dtype; the same grid is a copy.
  labels = np.arange(12, dtype=np.uint8).reshape(1, 3, 4)
  same = scan.resample_inplane(labels, (0.5, 0.5), (0.5, 0.5), (3, 4), order=0)
  np.testing.assert_array_equal(same, labels)
  assert same is not labels and same.dtype == np.uint8
  up = scan.resample_inplane(labels, (0.5, 0.5), (0.25, 0.25), (6, 8), order=0)
  np.testing.assert_array_equal(up[0, ::2, ::2], labels[0])
  np.testing.assert_array_equal(up[0, 1::2, 1::2], labels[0])


def test_fit_to_pads_and_crops_centred():
  x = np.arange(1, 7, dtype=np.int32).reshape(1, 2, 3)
  padded = scan.fit_to(x, (4, 5))
  want = np.zeros((1, 4, 5), np.int32)
  want[0, 1:3, 1:4] = x[0]
  np.testing.assert_array_equal(padded, want)
  np.testing.assert_array_equal(scan.unfit(padded, (2, 3)), x)
  y = np.arange(25).reshape(1, 5, 5)
  np.testing.assert_array_equal(scan.fit_to(y, (3, 3)), y[:, 1:4, 1:4])
  back = scan.unfit(scan.fit_to(y, (3, 3)), (5, 5))
  np.testing.assert_array_equal(back[:, 1:4, 1:4], y[:, 1:4, 1:4])
  assert back.sum() == y[:, 1:4, 1:4].sum()         # the cropped border comes back 0


def test_bank_slice_index_known_values():
  np.testing.assert_array_equal(scan.bank_slice_index(5, 5), [0, 1, 2, 3, 4])
  np.testing.assert_array_equal(scan.bank_slice_index(3, 5), [0, 2, 4])
  np.testing.assert_array_equal(scan.bank_slice_index(4, 7), [0, 2, 4, 6])
  np.testing.assert_array_equal(scan.bank_slice_index(1, 5), [2])
  np.testing.assert_array_equal(scan.bank_slice_index(6, 2), [0, 0, 0, 1, 1, 1])
  assert scan.bank_slice_index(3, 5).dtype == np.int32


def test_like_input_keeps_affine_and_header(tmp_path):
  v = _volume()
  affine = np.diag([-0.3, 0.5, 0.25, 1.0])
  img = nib.Nifti1Image(v, affine)
  img.header.set_xyzt_units("mm")
  img.set_qform(affine, code=1)
  img.header.set_slope_inter(2.0, 1.0)
  out = scan.like_input(np.ones((4, 3, 5)), img, np.uint8)
  assert out.get_data_dtype() == np.uint8
  np.testing.assert_allclose(out.affine, affine, rtol=1e-6)
  assert out.header.get_xyzt_units() == ("mm", "unknown")
  assert int(out.header["qform_code"]) == 1
  nib.save(out, tmp_path / "o.nii.gz")
  back = nib.load(tmp_path / "o.nii.gz")
  np.testing.assert_array_equal(np.asanyarray(back.dataobj), 1)   # no scaling applied


def test_file_to_slices_inverts_to_nifti():
  stored = _volume((4, 3, 5))
  affine = np.array([[0, 0, -0.3, 0], [0.5, 0, 0, 0], [0, 0.25, 0, 0], [0, 0, 0, 1.0]])
  for plane in data.PLANES:
    vol = scan.to_volume(stored, affine, plane=plane, name="a",
                         normalisation={"method": "fixed", "scale": 1.0})
    slices = scan.file_to_slices(stored, vol)
    np.testing.assert_array_equal(slices, vol.image)
    np.testing.assert_array_equal(np.asanyarray(data.to_nifti(slices, vol).dataobj), stored)


# --- honest about the input: stored voxel sizes, oblique and sheared axes, species ---


def test_zero_or_negative_stored_voxel_size_is_refused(tmp_path):
  """nibabel reads a stored zero voxel size as 1 mm; the raw pixdim is checked."""
  good = tmp_path / "good.nii.gz"
  nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.diag([0.2, 0.2, 0.5, 1])), good)
  _, img = scan.read_series(good)
  scan.check_stored_voxel_sizes(good, img)       # no error
  for value, name in ((0.0, "zero"), (-0.2, "negative"), (np.nan, "nan")):
    path = tmp_path / f"{name}.nii"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.diag([0.2, 0.2, 0.5, 1])),
             path)
    raw = bytearray(path.read_bytes())
    raw[84:88] = np.float32(value).tobytes()    # pixdim[2] (pixdim starts at byte 76)
    path.write_bytes(bytes(raw))
    np.testing.assert_allclose(nifti.stored_pixdim(path)[[0, 2]], [0.2, 0.5], rtol=1e-6)
    _, img = scan.read_series(path)
    with pytest.raises(DataError, match=r"stored voxel sizes .* must be positive and finite"):
      scan.check_stored_voxel_sizes(path, img)


def test_affine_warning_oblique_and_shear():
  assert scan.affine_warning(np.diag([0.1, 0.2, 0.3, 1.0])) is None
  flipped = np.array([[0, -0.1, 0, 0], [0.2, 0, 0, 0], [0, 0, -0.3, 0], [0, 0, 0, 1]])
  assert scan.affine_warning(flipped) is None       # permuted and flipped: not oblique
  c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
  rotated = np.diag([1.0, 1.0, 1.0, 1.0])
  rotated[:2, :2] = [[c, -s], [s, c]]
  assert "oblique: a voxel axis is 10.0 degrees" in scan.affine_warning(rotated)
  sheared = np.diag([1.0, 1.0, 1.0, 1.0])
  sheared[0, 1] = np.tan(np.radians(5))             # axis 1 leans 5 degrees towards axis 0
  assert "sheared: two voxel axes are 85.0 degrees apart" in scan.affine_warning(sheared)
  # The determinant is the voxel volume; column lengths overstate it under shear.
  assert scan.voxel_volume(sheared) == pytest.approx(1.0)
  assert np.prod(nifti.voxel_sizes(sheared)) == pytest.approx(1 / np.cos(np.radians(5)))


@pytest.mark.parametrize("mm3,species,fits,warns", [
    (500.0, None, ["mouse"], False), (2000.0, None, ["rat"], False),
    (1000.0, None, [], True), (5000.0, None, [], True), (0.0, None, [], True),
    (500.0, "rat", ["mouse"], True), (2000.0, "rat", ["rat"], False)])
def test_species_fit(mm3, species, fits, warns):
  warning, record = scan.species_fit(mm3, species)
  assert record["fits"] == fits and (warning is not None) == warns
  assert record["warning"] == warning and record["species_given"] == species


def test_unknown_species_is_refused():
  with pytest.raises(UsageError, match="--species 'hamster'"):
    scan.species_fit(500.0, "hamster")
