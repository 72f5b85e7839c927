"""Label maps for synthesis and the tissue network's partial-label loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rodent_gbp import tissue_table
from rodent_gbp.datasets import label_maps
from rodent_gbp.training import tissue_synth


def _ellipsoid(shape, centre, radii):
  grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
  return (((grid - centre) / radii) ** 2).sum(-1) <= 1.0


def test_fit_masks_known_answer():
  """An ellipsoid and the same one twice as large, shifted: the fit maps one onto the other."""
  small = _ellipsoid((40, 40, 40), np.array([15.0, 20, 18]), np.array([5.0, 7, 4]))
  big = _ellipsoid((60, 60, 60), np.array([30.0, 28, 33]), np.array([10.0, 14, 8]))
  scale, shift = label_maps.fit_masks(small, np.ones(3), big, np.ones(3))
  np.testing.assert_allclose(scale, 2.0, rtol=0.03)
  np.testing.assert_allclose(scale * np.array([15.0, 20, 18]) + shift, [30, 28, 33], atol=0.3)
  # Voxel sizes are honoured: the same masks at half the big one's voxel size.
  scale2, _ = label_maps.fit_masks(small, np.ones(3), big, np.full(3, 0.5))
  np.testing.assert_allclose(scale2, 1.0, rtol=0.03)


def _toy_head_and_brain():
  rng = np.random.default_rng(0)
  shape = (40, 6, 40)
  mask = _ellipsoid(shape, np.array([20.0, 2.5, 20]), np.array([10.0, 4, 8]))
  image = rng.normal(1.0, 0.05, shape).astype(np.float32) * (
      np.abs(np.arange(40) - 20)[:, None, None] < 18)
  head = label_maps.Head("toy", image, mask, np.array([0.25, 1.0, 0.25]))
  bshape = (30, 30, 30)
  bmask = _ellipsoid(bshape, np.array([15.0, 15, 15]), np.array([12.0, 12, 10]))
  structures = np.where(bmask, 1 + (np.arange(30)[:, None, None] > 15), 0)  # 2 halves
  ids = np.where(bmask, label_maps.T2_OFFSET + structures, 0).astype(np.int16)
  target = np.where(bmask, np.where(structures == 1, 1, 2), 0).astype(np.uint8)
  brain = label_maps.Brain("toy:brain", ids, target, None, np.full(3, 0.15))
  return head, brain


def test_place_brain_puts_the_atlas_brain_in_the_head():
  head, brain = _toy_head_and_brain()
  labels, target, scale = label_maps.place_brain(head, brain)
  inside = target > 0
  # The placed brain covers the head's mask well (the fit matches centroid and spread).
  dice = 2 * (inside & head.mask).sum() / (inside.sum() + head.mask.sum())
  assert dice > 0.9, dice
  # Its structures where the brain is; head classes or GAP elsewhere; ids agree with target.
  assert set(np.unique(labels[inside])) <= {label_maps.T2_OFFSET + 1, label_maps.T2_OFFSET + 2}
  np.testing.assert_array_equal(target[labels == label_maps.T2_OFFSET + 1], 1)
  assert np.all(labels[head.mask & ~inside] == label_maps.GAP)
  assert set(np.unique(labels[~head.mask & ~inside])) <= {0, 1, 2, 3, 4, 5}
  # Zoom: head pixels (0.25 mm, header) hold brain of (atlas spread / head spread) size.
  assert scale.shape == (3,) and np.all((0.3 < scale) & (scale < 1.5)), scale
  # Each plane's slices carry the mean scale of its two in-plane axes as zoom.
  for plane, axes in (("coronal", [0, 2]), ("axial", [0, 1]), ("sagittal", [1, 2])):
    s = label_maps.head_slices(head, labels, target, scale, pixel_mm=0.25, shape=(40, 40),
                               subject="toy", plane=plane)
    np.testing.assert_allclose(s.zoom, np.mean(scale[axes]), rtol=1e-6)


def test_head_classes_follow_the_quantiles():
  head, _ = _toy_head_and_brain()
  classes = label_maps.head_classes(head)
  assert np.all(classes[head.mask] == 0)
  out = classes[~head.mask]
  fractions = np.bincount(out, minlength=6) / out.size
  expected = np.diff([0.0, *label_maps.HEAD_QUANTILES, 1.0])
  np.testing.assert_allclose(fractions, expected, atol=0.02)


def test_slices_on_the_model_grid():
  head, brain = _toy_head_and_brain()
  s = label_maps.brain_slices(brain, pixel_mm=0.25, shape=(32, 32))
  assert s.labels.shape[1:] == (32, 32) and s.labels.dtype == np.int16
  # 30 voxels of 0.15 mm are 18 pixels of 0.25 mm: the brain's width shrinks by 0.6.
  width = (s.target.max(axis=0) > 0).any(axis=1).sum()
  assert abs(width - 24 * 0.6) <= 2
  r = label_maps.real_head_slices(head, pixel_mm=0.25, shape=(40, 40))
  assert r.has_image.all() and set(np.unique(r.target)) == {0, tissue_table.IGNORE}
  np.testing.assert_array_equal(r.labels == label_maps.BRAIN_UNKNOWN, r.target > 0)
  # Other planes: one slice per voxel across the plane's axis, the physical extent kept
  # (the head's A-P voxels are 1 mm: 4 model pixels each).
  for plane, count, axes in (("axial", 40, (0, 1)), ("sagittal", 40, (1, 2))):
    t = label_maps.real_head_slices(head, pixel_mm=0.25, shape=(40, 40), plane=plane)
    assert t.labels.shape == (count, 40, 40)
    assert t.target.sum() > 0
    for dim, axis in enumerate(axes):
      voxels = int(head.mask.any(axis=tuple(a for a in range(3) if a != axis)).sum())
      pixels = int((t.target > 0).any(axis=(0, 2 - dim)).sum())
      assert abs(pixels - voxels * head.voxel_mm[axis] / 0.25) <= 2, (plane, axis)


def test_group_of_label_follows_the_table():
  groups = label_maps.group_of_label()
  t2 = tissue_table.lut("mouse_t2_atlas")
  assert groups[label_maps.T2_OFFSET + 2] == label_maps.G_WM == 1 and t2[2] == tissue_table.WM
  assert groups[label_maps.T2_OFFSET + 10] == label_maps.G_CSF
  assert groups[label_maps.AIR] == label_maps.G_OUTSIDE
  assert groups[3] == label_maps.G_HEAD


def _loss_oracle(logits, target):
  """Brute force over pixels: the partial-label loss of tissue_synth's docstring."""
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ce = []
  inter, total = np.zeros(4), np.zeros(4)
  for idx in np.ndindex(target.shape):
    t, q = target[idx], p[idx]
    ce.append(-np.log(q[1:].sum()) if t == 4 else -np.log(q[t]))
    truth = np.array([t == 0, t == 1, t == 2, t == 3], float)
    w = np.array([1.0, t != 4, t != 4, t != 4], float)
    inter += w * q * truth
    total += w * q + w * truth
  dice = 1 - np.mean((2 * inter + 1) / (total + 1))
  return dice + np.mean(ce)


def test_partial_label_loss_matches_a_loop():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
  target = rng.integers(0, 5, size=(2, 5, 6))
  loss, _ = tissue_synth.partial_label_loss(jnp.asarray(logits), jnp.asarray(target))
  np.testing.assert_allclose(float(loss), _loss_oracle(logits, target), rtol=1e-5)
  # Code 4 does not care which tissue: moving mass between WM and GM leaves its CE alone.
  t4 = np.full((1, 1, 1), 4)
  a = tissue_synth.partial_label_loss(jnp.array([[[[0.0, 2.0, 0.0, 0.0]]]]), jnp.asarray(t4))
  b = tissue_synth.partial_label_loss(jnp.array([[[[0.0, 0.0, 2.0, 0.0]]]]), jnp.asarray(t4))
  np.testing.assert_allclose(float(a[1]["ce"]), float(b[1]["ce"]), rtol=1e-5)


def test_train_from_label_maps_runs_and_selects(tmp_path):
  """Two epochs of the tissue task on toy label maps (16 x 16): finite losses, one
  record per epoch with the validation fields, the kept epoch the best score's,
  checkpoints to resume from, and a resumed run that trains nothing more."""
  rng = np.random.default_rng(0)
  n, size = 16, 16
  labels = np.zeros((n, size, size), np.int16)
  target = np.zeros((n, size, size), np.uint8)
  for i in range(n):
    c = rng.integers(5, 11)
    labels[i, c - 4:c + 4, 3:13] = label_maps.T2_OFFSET + 1            # GM
    labels[i, c - 1:c + 1, 5:11] = label_maps.T2_OFFSET + 2            # WM
    target[i] = np.where(labels[i] == label_maps.T2_OFFSET + 2, tissue_table.WM,
                         np.where(labels[i] > 0, tissue_table.GM, 0))
  slices = label_maps.SliceSet(labels, target, (labels > 0).astype(np.float32),
                               np.ones(n, bool), np.ones(n, np.float32), np.full(n, "toy"))
  val = [tissue_synth.ValidationSet("toy", slices.image[:4], target[:4], "tissue"),
         tissue_synth.ValidationSet("toyhead", slices.image[:4], np.where(target[:4] > 0, 4, 0),
                                    "brain")]
  config = tissue_synth.synth_config(features=2, depth=2, epochs=2, batch_size=8)
  # optax's Adam raises a Python float to an int32 count: standard promotion, as
  # the binaries run.
  with jax.numpy_dtype_promotion("standard"):
    run = tissue_synth.train(slices, val, config, tissue_synth.OPTIONS,
                             checkpoint_dir=tmp_path / "ck")
    again = tissue_synth.train(slices, val, config, tissue_synth.OPTIONS,
                               checkpoint_dir=tmp_path / "ck", resume=True)
  assert len(run.history) == 2
  assert all(np.isfinite(r["loss"]) for r in run.history)
  assert {"val_wm", "val_gm", "val_csf", "val_brain"} <= set(run.history[0])
  scores = [r["val_mean_tissue_dice"] for r in run.history]
  assert run.kept_epoch == 1 + max(range(2), key=lambda i: (np.nan_to_num(scores[i], nan=-1), i))
  assert len(again.history) == 2 and again.kept_epoch == run.kept_epoch


def test_read_heads_takes_second_sessions_when_asked(tmp_path):
  import nibabel as nib
  for folder in (tmp_path / "01", tmp_path / "02", tmp_path / "02" / "session2"):
    folder.mkdir(parents=True)
    for stem, value in (("image", 1.0), ("brainmask", 1)):
      nib.save(nib.Nifti1Image(np.full((4, 3, 4), value, np.float32),
                               np.diag([0.25, 1.0, 0.25, 1.0])), folder / f"{stem}.nii.gz")
  heads = label_maps.read_heads(tmp_path, ["01", "02"])
  assert [h.name for h in heads] == ["mouse_epi:01", "mouse_epi:02", "mouse_epi:02_2"]
  assert [h.name for h in label_maps.read_heads(tmp_path, ["02"], sessions=False)] == [
      "mouse_epi:02"]
  np.testing.assert_allclose(heads[0].voxel_mm, [0.25, 1.0, 0.25])


def test_a_head_of_known_size_keeps_it_and_its_scan_is_read_checked(tmp_path):
  import nibabel as nib
  from rodent_gbp.errors import DataError
  head, brain = _toy_head_and_brain()
  # Stored LPS-like (x flipped): read back in RAS+, the A-P range cut where asked.
  affine = np.diag([-0.25, 1.0, 0.25, 1.0])
  nib.save(nib.Nifti1Image(head.image[::-1], affine), tmp_path / "head.nii.gz")
  nib.save(nib.Nifti1Image(head.mask[::-1].astype(np.uint8), affine), tmp_path / "mask.nii.gz")
  rat = label_maps.read_scan_head(tmp_path / "head.nii.gz", tmp_path / "mask.nii.gz", "rat:toy",
                                  ap_range=(1, 5))
  assert rat.size_known and rat.image.shape == (40, 4, 40)
  np.testing.assert_array_equal(rat.mask, head.mask[:, 1:5])
  np.testing.assert_allclose(rat.image, head.image[:, 1:5])
  labels, target, scale = label_maps.place_brain(rat, brain)
  # The atlas brain is stretched to the head's brain; the slices keep the head's size.
  s = label_maps.head_slices(rat, labels, target, scale, pixel_mm=0.25, shape=(40, 40),
                             subject="rat:toy")
  np.testing.assert_array_equal(s.zoom, 1.0)
  mouse = label_maps.head_slices(head, *label_maps.place_brain(head, brain), pixel_mm=0.25,
                                 shape=(40, 40), subject="toy")
  assert not np.allclose(mouse.zoom, 1.0)
  nib.save(nib.Nifti1Image(np.zeros((40, 5, 40), np.uint8), affine), tmp_path / "other.nii.gz")
  with pytest.raises(DataError, match="other.nii.gz: not on the grid"):
    label_maps.read_scan_head(tmp_path / "head.nii.gz", tmp_path / "other.nii.gz", "x")
  with pytest.raises(DataError, match="coronal slices 4..6"):
    label_maps.read_scan_head(tmp_path / "head.nii.gz", tmp_path / "mask.nii.gz", "x",
                              ap_range=(4, 7))
