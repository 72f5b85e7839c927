"""The slice axis read from the image, and scans in other geometries."""

import types

import nibabel as nib
import numpy as np
import pytest

from rodent_gbp import inference
from rodent_gbp import orient
from rodent_gbp.studies import orientation


def _egg(shape=(40, 56, 30), vs=(0.25, 0.25, 0.25)):
  """A brain-like mask in RAS axes: mirror-symmetric in x (L-R), longest and
  wider at the back along y (A-P), flat-bottomed along z (D-V)."""
  x, y, z = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
  width = 14.0 * (1.0 + 0.25 * y / (shape[1] / 2))     # wider posteriorly
  mask = (x / width) ** 2 + (y / 25.0) ** 2 + (z / 11.0) ** 2 <= 1.0
  return mask & (z > -7), np.asarray(vs)


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0), (2, 0, 1), (1, 0, 2)])
def test_brain_axes_follow_the_anatomy_in_any_axis_order(order):
  mask, vs = _egg()
  axes = orient.brain_axes(np.transpose(mask, order), vs[list(order)])
  where = {a: order.index(a) for a in range(3)}        # RAS axis -> voxel axis
  assert axes["confident"], axes["reason"]
  assert (axes["lr"], axes["ap"], axes["dv"]) == (where[0], where[1], where[2])


def test_brain_axes_read_a_slab_cut_along_anterior_posterior():
  """A slab of the brain, thin along A-P (voxel axis 2 here): the cut axis is A-P."""
  mask, vs = _egg()
  slab = np.transpose(mask[:, 24:30, :], (0, 2, 1))     # 6 voxels of A-P, now axis 2
  axes = orient.brain_axes(slab, vs)
  assert axes["confident"] and (axes["lr"], axes["ap"], axes["dv"]) == (0, 2, 1), axes


def test_brain_axes_refuse_a_shape_without_anatomy():
  x, y, z = np.meshgrid(*[np.arange(30) - 14.5] * 3, indexing="ij")
  ball = x**2 + y**2 + z**2 <= 144
  assert not orient.brain_axes(ball, np.ones(3))["confident"]
  assert not orient.brain_axes(np.zeros((5, 5, 5), bool), np.ones(3))["confident"]


def test_axis_is_open_only_without_a_thick_axis_and_with_auto():
  assert orient.axis_is_open(np.diag([0.2, 0.2, 0.3, 1.0]))
  assert not orient.axis_is_open(np.diag([0.25, 1.0, 0.25, 1.0]))
  assert not orient.axis_is_open(np.diag([0.2, 0.2, 0.3, 1.0]), plane="coronal")


def _fit(affine, slice_axis):
  return types.SimpleNamespace(affine=affine, slice_axis=slice_axis, warnings=[],
                               decisions={"slice_axis": {"axis": slice_axis}})


def test_axis_from_image_recuts_only_an_open_axis():
  mask, _ = _egg()          # A-P is voxel axis 1
  iso = np.diag([0.25, 0.25, 0.25, 1.0])
  fit = _fit(iso, slice_axis=2)          # a header that named axis 2
  assert inference.axis_from_image(fit, mask, "auto", log=lambda m: None) == 1
  assert fit.decisions["slice_axis"]["image"]["ap"] == 1 and not fit.warnings
  # The voxel sizes decided (axis 2 thick): no re-cut, a warning instead.
  thick = np.diag([0.25, 0.25, 1.0, 1.0])
  fit = _fit(thick, slice_axis=2)
  assert inference.axis_from_image(fit, mask[:, :, ::4], "auto", log=lambda m: None) is None
  assert len(fit.warnings) == 1 and "voxel axis 1" in fit.warnings[0]
  # --plane decides, and agreement changes nothing.
  fit = _fit(iso, slice_axis=2)
  assert inference.axis_from_image(fit, mask, "2", log=lambda m: None) is None
  fit = _fit(iso, slice_axis=1)
  assert inference.axis_from_image(fit, mask, "auto", log=lambda m: None) is None
  assert not fit.warnings


def test_variants_map_back_exactly_and_keep_world_positions():
  rng = np.random.default_rng(0)
  image = rng.random((12, 5, 10)).astype(np.float32)
  truth = image > 0.5
  affine = np.array([[0.2, 0, 0, -1.0], [0, 0, -1.0, 2.0], [0, 0.2, 0, 3.0], [0, 0, 0, 1]])
  vs = {v.name: v for v in orientation.variants(image, affine, truth, iso_mm=0.2)}
  assert set(vs) == {"stored", "order_120", "order_201", "labels_swapped", "isotropic",
                     "isotropic_swapped"}
  for name in ("stored", "order_120", "order_201", "labels_swapped"):
    t = np.asarray(vs[name].truth.dataobj) > 0
    np.testing.assert_array_equal(vs[name].to_original(t), truth)
  # A correct header in another axis order names the same world point for each voxel.
  v = vs["order_120"]
  moved = np.asarray(v.image.dataobj)
  np.testing.assert_array_equal(moved[3, 4, 1], image[1, 3, 4])
  np.testing.assert_allclose(v.image.affine @ [3, 4, 1, 1], affine @ [1, 3, 4, 1])
  # The lying header swaps the A-P and S-I directions, each axis keeps its size.
  sw = vs["labels_swapped"].image.affine
  assert "".join(nib.aff2axcodes(affine)) == "RSP"
  assert "".join(nib.aff2axcodes(sw)) == "RPS"
  np.testing.assert_allclose(np.linalg.norm(sw[:3, :3], axis=0), [0.2, 0.2, 1.0])
  # Isotropic: 0.2 mm voxels over the same field of view; back to the stored grid.
  iso = vs["isotropic"]
  assert iso.image.shape == (12, 5, 50)
  np.testing.assert_allclose(np.linalg.norm(iso.image.affine[:3, :3], axis=0), 0.2)
  back = iso.to_original(np.asarray(iso.truth.dataobj) > 0) > 0
  np.testing.assert_array_equal(back, truth)
