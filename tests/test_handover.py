"""The hand-over cases: a mouse-epi scan as stored and resliced is the same anatomy."""

from __future__ import annotations

import pathlib

import nibabel as nib
import numpy as np
import pytest

from rodent_gbp.studies import handover

EPI = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mouse-epi"
pytestmark = pytest.mark.skipif(not EPI.is_dir(), reason=f"no local copy of mouse-epi at {EPI}")


def test_epi_case_writes_the_stored_header_and_a_resliced_copy(tmp_path):
  stored, resliced = handover.epi_case(EPI, "19", tmp_path)
  a, b = (nib.load(str(c["input"])) for c in (stored, resliced))
  mask = nib.load(str(EPI / "masks" / "mask_19_1_4D_mcflirted.nii"))
  # As stored: the mask's header, voxel sizes x10, RSP.
  np.testing.assert_allclose(a.affine, mask.affine)
  assert nib.aff2axcodes(a.affine) == ("R", "S", "P")
  np.testing.assert_allclose(a.header.get_zooms()[:3], mask.header.get_zooms()[:3])
  assert b.shape == (a.shape[2], a.shape[0], a.shape[1])
  # Every voxel of the resliced copy sits where the stored voxel with the same
  # value does: same world coordinates, same intensity.
  va, vb = np.asarray(a.dataobj), np.asarray(b.dataobj)
  rng = np.random.default_rng(0)
  for _ in range(20):
    k, i, j = (int(rng.integers(n)) for n in b.shape)
    assert vb[k, i, j] == va[i, j, k]
    np.testing.assert_allclose(b.affine @ [k, i, j, 1], a.affine @ [i, j, k, 1], atol=1e-6)
  # The truth follows the image.
  ta, tb = (np.asarray(nib.load(str(c["truth"])).dataobj) for c in (stored, resliced))
  np.testing.assert_array_equal(np.transpose(ta, (2, 0, 1)), tb)
  assert ta.sum() == (np.asarray(mask.dataobj) > 0).sum() > 0
  assert stored["held_out"] and resliced["held_out"]
