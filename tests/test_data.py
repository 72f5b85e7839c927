"""Tests for the NIfTI data layer: loading, validation, orientation, splits, batches."""

from __future__ import annotations

import decimal
import pathlib

import nibabel as nib
import numpy as np
import pytest

from rodent_gbp import data
from rodent_gbp import nifti


def _save(path: pathlib.Path, array: np.ndarray, affine: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  nib.save(nib.Nifti1Image(array, affine), path)


def _small_animal(folder: pathlib.Path, *, shape=(8, 6, 7), affine=None, seed=0):
  """A tiny valid animal: image, labels 0..3, brainmask = labels > 0."""
  rng = np.random.default_rng(seed)
  affine = np.diag([0.375, 0.5, 0.375, 1.0]) if affine is None else affine
  labels = rng.integers(0, 4, size=shape).astype(np.uint8)
  image = (rng.uniform(0.1, 1.0, size=shape)).astype(np.float32)
  _save(folder / "image.nii.gz", image, affine)
  _save(folder / "labels.nii.gz", labels, affine)
  _save(folder / "brainmask.nii.gz", (labels > 0).astype(np.uint8), affine)
  return image, labels


@pytest.fixture(scope="module")
def volumes(phantom_dir):
  return data.load_dataset(phantom_dir)


def test_load_dataset_shapes_and_invariants(volumes, phantom_dir):
  assert [v.animal_id for v in volumes] == [f"rat{i:02d}" for i in range(5)]
  for v in volumes:
    assert v.image.shape == v.label.shape == v.brainmask.shape == (40, 96, 96)
    assert v.image.dtype == np.float32 and v.label.dtype == np.int32
    assert v.brainmask.dtype == bool
    np.testing.assert_array_equal(v.brainmask, v.label > 0)
    assert v.meta["animal_id"] == v.animal_id
    # Coronal slice j is the RAS volume's [:, j, :].
    raw = nib.load(phantom_dir / v.animal_id / "labels.nii.gz").get_fdata()
    np.testing.assert_array_equal(v.label[17], raw[:, 17, :])


def test_normalisation_rule(volumes, phantom_dir):
  v = volumes[0]
  raw = nib.load(phantom_dir / "rat00" / "image.nii.gz").get_fdata().astype(np.float32)
  scale = v.normalisation["scale"]
  assert v.normalisation["method"] == "robust_max"
  np.testing.assert_allclose(v.image, np.transpose(raw, (1, 0, 2)) / scale, rtol=1e-6)
  # The 99th percentile of the above-mean voxels becomes 1.
  assert np.percentile(v.image[v.image > v.image.mean()], 99) == pytest.approx(1.0, rel=1e-5)
  # Per-volume rule: invariant to a global gain; apply_normalisation reuses it.
  norm, params = data.normalise_intensity(3.0 * raw)
  np.testing.assert_allclose(norm, raw / scale, rtol=1e-5)
  assert params["scale"] == pytest.approx(3.0 * scale, rel=1e-5)
  np.testing.assert_allclose(data.apply_normalisation(3.0 * raw, v.normalisation), norm)
  fixed = dict(v.normalisation, method="fixed")
  np.testing.assert_allclose(data.apply_normalisation(raw, fixed), raw / scale, rtol=1e-6)
  # A constant image neither divides by zero nor returns NaN.
  assert np.all(np.isfinite(data.normalise_intensity(np.zeros((3, 3, 3)))[0]))


@pytest.mark.parametrize("n,counts", [(10, (6, 2, 2)), (5, (3, 1, 1)), (1, (1, 0, 0)),
                                      (3, (2, 0, 1)), (7, (5, 1, 1)), (13, (8, 2, 3))])
def test_split_counts(n, counts):
  split = data.split_animals([f"a{i}" for i in range(n)], seed=0)
  assert tuple(len(split[k]) for k in ("train", "val", "test")) == counts


def test_split_rule_matches_round_half_up_for_many_sizes():
  def rhu(x):
    return int(decimal.Decimal(x).quantize(0, rounding=decimal.ROUND_HALF_UP))
  for n in range(1, 60):
    split = data.split_animals(range(n), seed=1)
    test = rhu(decimal.Decimal(n) / 5)
    val = rhu(decimal.Decimal(n - test) / 5)
    assert (len(split["test"]), len(split["val"])) == (test, val)


def test_split_disjoint_deterministic_seeded():
  ids = [f"rat{i:02d}" for i in range(10)]
  split = data.split_animals(ids, seed=0)
  parts = [set(split[k]) for k in ("train", "val", "test")]
  assert sum(map(len, parts)) == 10 and set().union(*parts) == set(ids)
  assert all(not (a & b) for a in parts for b in parts if a is not b)
  assert split == data.split_animals(list(reversed(ids)), seed=0)
  others = [data.split_animals(ids, seed=s) for s in range(1, 6)]
  assert any(o["test"] != split["test"] for o in others)
  with pytest.raises(ValueError):
    data.split_animals(["a", "a", "b"], seed=0)


def test_stack_slices(volumes):
  arrays = data.stack_slices(volumes[:2])
  assert arrays["image"].shape == arrays["stripped"].shape == (80, 96, 96, 1)
  assert arrays["label"].shape == arrays["brainmask"].shape == (80, 96, 96)
  assert arrays["image"].dtype == arrays["stripped"].dtype == np.float32
  assert arrays["label"].dtype == np.int32 and arrays["brainmask"].dtype == bool
  np.testing.assert_array_equal(arrays["animal"], np.repeat([0, 1], 40))
  np.testing.assert_array_equal(arrays["slice_index"], np.tile(np.arange(40), 2))
  inside = arrays["brainmask"][..., None]
  np.testing.assert_array_equal(arrays["stripped"][~inside[..., 0]], 0.0)
  np.testing.assert_array_equal(np.where(inside, arrays["image"], 0), arrays["stripped"])
  np.testing.assert_array_equal(arrays["label"][45], volumes[1].label[5])


def test_iterate_batches_pure_in_seed_and_epoch():
  arrays = {"x": np.arange(23), "y": np.arange(23) * 10}
  def order(**kw):
    return np.concatenate([b["x"] for b in data.iterate_batches(arrays, 5, **kw)])
  a = order(seed=0, epoch=0)
  assert a.size == 20                                        # drop_remainder
  np.testing.assert_array_equal(a, order(seed=0, epoch=0))
  assert not np.array_equal(a, order(seed=0, epoch=1))
  assert not np.array_equal(a, order(seed=1, epoch=0))
  full = order(seed=0, epoch=0, drop_remainder=False)
  np.testing.assert_array_equal(np.sort(full), np.arange(23))  # each once
  np.testing.assert_array_equal(order(seed=0, epoch=3, shuffle=False), np.arange(20))
  for b in data.iterate_batches(arrays, 5, seed=2, epoch=0):
    np.testing.assert_array_equal(b["y"], b["x"] * 10)       # rows stay aligned


def _reorient_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
  """Rewrites an animal with axes permuted and flipped (e.g. 'PIL' storage)."""
  for name in ("image", "labels", "brainmask"):
    img = nib.load(src / f"{name}.nii.gz")
    target = nib.orientations.axcodes2ornt(("P", "I", "L"))
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(img.affine), target)
    dst.mkdir(parents=True, exist_ok=True)
    nib.save(img.as_reoriented(ornt), dst / f"{name}.nii.gz")


def test_other_orientation_loads_to_same_slices_and_round_trips(phantom_dir, tmp_path,
                                                              volumes):
  dst = tmp_path / "rat00"
  _reorient_copy(phantom_dir / "rat00", dst)
  stored = nib.load(dst / "labels.nii.gz")
  assert nib.aff2axcodes(stored.affine) == ("P", "I", "L")
  assert stored.shape == (40, 96, 96)
  v = data.load_animal(dst)
  ref = volumes[0]
  np.testing.assert_array_equal(v.label, ref.label)
  np.testing.assert_array_equal(v.image, ref.image)
  np.testing.assert_array_equal(v.brainmask, ref.brainmask)
  # Written back in the input's own orientation, shape and affine.
  out = data.to_nifti(v.label, v)
  np.testing.assert_array_equal(out.affine, stored.affine)
  np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(stored.dataobj))
  out = data.to_nifti(v.brainmask[..., None], v)
  np.testing.assert_array_equal(np.asarray(out.dataobj),
                                np.asarray(nib.load(dst / "brainmask.nii.gz").dataobj))


def test_matches_as_closest_canonical_and_other_planes(tmp_path):
  affine = np.array([[0, 0, -0.375, 5], [-0.5, 0, 0, 2], [0, 0.375, 0, -1], [0, 0, 0, 1]])
  image, labels = _small_animal(tmp_path / "a", affine=affine)
  canon = nib.as_closest_canonical(nib.Nifti1Image(labels, affine)).get_fdata()
  for plane, axes in (("coronal", (1, 0, 2)), ("axial", (2, 0, 1)),
                      ("sagittal", (0, 1, 2))):
    v = data.load_animal(tmp_path / "a", plane=plane)
    np.testing.assert_array_equal(v.label, np.transpose(canon, axes))
    out = data.to_nifti(v.label, v)
    np.testing.assert_array_equal(np.asarray(out.dataobj), labels)
    np.testing.assert_allclose(out.affine, affine)
  with pytest.raises(ValueError, match="plane"):
    data.load_animal(tmp_path / "a", plane="oblique")


def test_label_map_fsl_fast(tmp_path):
  _, labels = _small_animal(tmp_path / "a")
  fast = np.choose(labels, [0, 3, 2, 1]).astype(np.uint8)   # FAST: 1 CSF, 2 GM, 3 WM
  _save(tmp_path / "a" / "labels.nii.gz", fast, np.diag([0.375, 0.5, 0.375, 1.0]))
  expected = np.transpose(labels, (1, 0, 2))
  np.testing.assert_array_equal(data.load_animal(tmp_path / "a", label_map="fsl_fast").label,
                                expected)
  np.testing.assert_array_equal(
      data.load_animal(tmp_path / "a", label_map={1: 3, 3: 1}).label, expected)
  with pytest.raises(ValueError, match="preset"):
    data.load_animal(tmp_path / "a", label_map="spm")


def test_missing_labels(tmp_path):
  image, labels = _small_animal(tmp_path / "a")
  (tmp_path / "a" / "labels.nii.gz").unlink()
  (tmp_path / "a" / "brainmask.nii.gz").unlink()
  v = data.load_animal(tmp_path / "a", require_labels=False)
  assert v.label is None and v.brainmask is None
  with pytest.raises(data.DataError):
    data.stack_slices([v])


def test_brainmask_derived_from_labels_when_absent(tmp_path):
  _, labels = _small_animal(tmp_path / "a")
  (tmp_path / "a" / "brainmask.nii.gz").unlink()
  v = data.load_animal(tmp_path / "a")
  np.testing.assert_array_equal(v.brainmask, np.transpose(labels > 0, (1, 0, 2)))
  assert v.meta["brainmask_source"] == "labels"


def _corrupt(folder: pathlib.Path, case: str) -> str:
  """Breaks one file of a valid animal; returns the file name the error must name."""
  aff = np.diag([0.375, 0.5, 0.375, 1.0])
  shape = (8, 6, 7)
  if case == "missing_image":
    (folder / "image.nii.gz").unlink()
    return "image.nii.gz"
  if case == "missing_labels":
    (folder / "labels.nii.gz").unlink()
    return "labels.nii.gz"
  if case == "shape_mismatch":
    _save(folder / "labels.nii.gz", np.zeros((8, 6, 6), np.uint8), aff)
    return "labels.nii.gz"
  if case == "affine_mismatch":
    _save(folder / "brainmask.nii.gz", np.zeros(shape, np.uint8), np.diag([1, 1, 1, 1.0]))
    return "brainmask.nii.gz"
  if case == "label_out_of_range":
    _save(folder / "labels.nii.gz", np.full(shape, 5, np.uint8), aff)
    return "labels.nii.gz"
  if case == "label_negative":
    _save(folder / "labels.nii.gz", np.full(shape, -1, np.int16), aff)
    return "labels.nii.gz"
  if case == "label_not_integral":
    _save(folder / "labels.nii.gz", np.full(shape, 1.5, np.float32), aff)
    return "labels.nii.gz"
  if case == "image_nan":
    bad = np.ones(shape, np.float32)
    bad[1, 2, 3] = np.nan
    _save(folder / "image.nii.gz", bad, aff)
    return "image.nii.gz"
  if case == "image_4d":
    _save(folder / "image.nii.gz", np.ones(shape + (2,), np.float32), aff)
    return "image.nii.gz"
  if case == "mask_not_binary":
    _save(folder / "brainmask.nii.gz", np.full(shape, 2, np.uint8), aff)
    return "brainmask.nii.gz"
  if case == "not_nifti":
    (folder / "labels.nii.gz").write_bytes(b"not a nifti file")
    return "labels.nii.gz"
  raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "missing_image", "missing_labels", "shape_mismatch", "affine_mismatch",
    "label_out_of_range", "label_negative", "label_not_integral", "image_nan",
    "image_4d", "mask_not_binary", "not_nifti"])
def test_loader_errors_name_the_file(tmp_path, case):
  _small_animal(tmp_path / "ds" / "ratX")
  name = _corrupt(tmp_path / "ds" / "ratX", case)
  with pytest.raises(data.DataError, match=name.replace(".", r"\.")) as info:
    data.load_animal(tmp_path / "ds" / "ratX")
  assert isinstance(info.value, ValueError)
  assert "ratX" in str(info.value)


def test_label_map_out_of_range_is_reported(tmp_path):
  _small_animal(tmp_path / "a")
  with pytest.raises(data.DataError, match="after label_map"):
    data.load_animal(tmp_path / "a", label_map={2: 7})


def test_empty_or_missing_dataset(tmp_path):
  with pytest.raises(data.DataError, match="not found"):
    data.load_dataset(tmp_path / "nothing")
  (tmp_path / "empty" / "junk").mkdir(parents=True)
  with pytest.raises(data.DataError, match="no animal folders"):
    data.load_dataset(tmp_path / "empty")
  with pytest.raises(data.DataError, match="not found"):
    data.load_animal(tmp_path / "missing")


@pytest.mark.parametrize("axes,flips", [((0, 1, 2), (1, 1, 1)), ((1, 2, 0), (-1, 1, 1)),
                                        ((2, 0, 1), (1, -1, -1))])
def test_voxel_sizes_ras_follow_the_axes(axes, flips):
  """Voxel i of the file along RAS axis axes[i]: its size lands at that RAS position."""
  sizes = np.array([0.3, 0.5, 0.25])
  affine = np.eye(4)
  affine[:3, :3] = 0.0
  for i, (ax, f) in enumerate(zip(axes, flips)):
    affine[ax, i] = f * sizes[i]
  want = np.empty(3)
  want[list(axes)] = sizes
  np.testing.assert_allclose(nifti.voxel_sizes_ras(affine), want)
  # A small rotation keeps the nearest axes and the edge lengths.
  c, s = np.cos(0.1), np.sin(0.1)
  rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
  np.testing.assert_allclose(nifti.voxel_sizes_ras(rot @ affine), want, rtol=1e-12)
