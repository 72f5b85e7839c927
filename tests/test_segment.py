"""rodent-gbp-segment against planted answers on the smoke model.

* A test animal moved by a whole-voxel (dy, dx), zero-filled and written with
  the same affine, moves every CSV displacement by exactly (dy, dx), and its
  brain Dice against its own (equally moved) true mask stays that of the
  unmoved scan.
* The written brain mask is the mask that was applied: every labelled voxel
  lies inside it, and it is the chosen candidate dilated by the placer's
  dilation.
* The main job writes every placer's predictions, and they are the ones its
  evaluation scored (``test_reproduce``).

Each scan goes through the console script in-process
(``cli.segment_main``), the way a user runs it.
"""

from __future__ import annotations

import csv
import pathlib

import nibabel as nib
import numpy as np
import pytest

from rodent_gbp import cli
from rodent_gbp import data
from rodent_gbp import nifti
from rodent_gbp import placement

PLANTED = (3, -2)  # (dy, dx) in model voxels of the coronal slices (RAS x, z)
DICE_TOLERANCE = 0.01


def shift_slices(slices: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
  """(S, H, W) moved by whole voxels: out[:, y, x] = in[:, y - dy, x - dx], zero-filled."""
  dy, dx = shift
  out = np.zeros_like(slices)
  h, w = slices.shape[1:]
  out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      slices[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
  return out


def test_shift_slices_known_answer():
  x = np.arange(12).reshape(1, 3, 4)
  np.testing.assert_array_equal(shift_slices(x, (1, -2))[0],
                                [[0, 0, 0, 0], [2, 3, 0, 0], [6, 7, 0, 0]])


def _moved_nifti(src: pathlib.Path, dst: pathlib.Path, shift) -> np.ndarray:
  """Writes ``src`` (RAS+) moved in the coronal plane; returns the moved array."""
  img = nib.load(str(src))
  arr = np.asarray(img.dataobj)
  moved = data.from_slices(shift_slices(data.to_slices(arr, "coronal"), shift), "coronal")
  nib.save(nib.Nifti1Image(np.ascontiguousarray(moved), img.affine, header=img.header), dst)
  return moved


def _segment(scan_path, model_dir, out, *extra):
  cli.segment_main(["rodent-gbp-segment", f"--input={scan_path}",
                    f"--model_dir={model_dir}", f"--out_dir={out}", "--noqc", *extra])
  name = data_stem(scan_path)
  with open(out / f"{name}_slices.csv") as f:
    rows = list(csv.DictReader(f))
  arrays = {k: np.asarray(nib.load(str(out / f"{name}_{k}.nii.gz")).dataobj)
            for k in ("brainmask", "labels")}
  return rows, arrays


def data_stem(path: pathlib.Path) -> str:
  return path.name.removesuffix(".gz").removesuffix(".nii")


def dice(a: np.ndarray, b: np.ndarray) -> float:
  a, b = a.astype(bool), b.astype(bool)
  return 2 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


@pytest.fixture(scope="module")
def unmoved_and_moved(tmp_path_factory, scan, model_dir):
  """The test animal and its planted move, each segmented with the default placer."""
  t = tmp_path_factory.mktemp("planted")
  truth = np.asarray(nib.load(str(scan.parent / "brainmask.nii.gz")).dataobj)
  moved_truth = data.from_slices(
      shift_slices(data.to_slices(truth, "coronal"), PLANTED), "coronal")
  _moved_nifti(scan, t / "moved.nii.gz", PLANTED)
  return {"unmoved": (*_segment(scan, model_dir, t / "a"), truth),
          "moved": (*_segment(t / "moved.nii.gz", model_dir, t / "b"), moved_truth)}


def test_the_scan_is_on_the_model_grid(scan, smoke_bundle):
  """The planted move is in model voxels only if the scan is at the model's voxel size."""
  img = nib.load(str(scan))
  np.testing.assert_allclose(nifti.voxel_sizes_ras(img.affine), smoke_bundle.voxel_size)
  assert nib.aff2axcodes(img.affine) == ("R", "A", "S")


def test_planted_move_moves_the_displacement_exactly(unmoved_and_moved):
  (rows0, _, _), (rows1, _, _) = unmoved_and_moved["unmoved"], unmoved_and_moved["moved"]
  assert len(rows0) == len(rows1) == 40
  d0 = np.array([[int(r["dy_vox"]), int(r["dx_vox"])] for r in rows0])
  d1 = np.array([[int(r["dy_vox"]), int(r["dx_vox"])] for r in rows1])
  np.testing.assert_array_equal(d1 - d0, np.broadcast_to(PLANTED, d0.shape))
  v0 = [int(rows0[0]["volume_dy_vox"]), int(rows0[0]["volume_dx_vox"])]
  v1 = [int(rows1[0]["volume_dy_vox"]), int(rows1[0]["volume_dx_vox"])]
  assert np.subtract(v1, v0).tolist() == list(PLANTED)
  # The millimetre columns follow: 0.375 mm in-plane voxels.
  assert float(rows1[5]["dy_mm"]) - float(rows0[5]["dy_mm"]) == pytest.approx(
      0.375 * PLANTED[0])


def test_planted_move_keeps_the_brain_dice(unmoved_and_moved):
  (_, a0, t0), (_, a1, t1) = unmoved_and_moved["unmoved"], unmoved_and_moved["moved"]
  d0, d1 = dice(a0["brainmask"], t0), dice(a1["brainmask"], t1)
  assert abs(d1 - d0) <= DICE_TOLERANCE, (d0, d1)
  # And the written mask itself moved with the scan.
  moved_back = data.from_slices(shift_slices(data.to_slices(a1["brainmask"], "coronal"),
                                             (-PLANTED[0], -PLANTED[1])), "coronal")
  assert dice(moved_back, a0["brainmask"]) >= 1 - DICE_TOLERANCE


@pytest.mark.parametrize("run", ["unmoved", "moved"])
def test_labels_lie_inside_the_written_mask(unmoved_and_moved, run):
  _, arrays, _ = unmoved_and_moved[run]
  labels, mask = arrays["labels"], arrays["brainmask"]
  assert labels.any()
  assert not np.any((labels > 0) & (mask == 0)), int(((labels > 0) & (mask == 0)).sum())


def test_written_mask_is_the_dilated_choice(scan, model_dir, smoke_bundle, tmp_path):
  """The written mask is the chosen candidate, moved and dilated, read back from the CSV."""
  from rodent_gbp import candidates
  from rodent_gbp import correlate
  rows, arrays = _segment(scan, model_dir, tmp_path)
  mask = data.to_slices(arrays["brainmask"], "coronal").astype(bool)
  cands = placement.candidate_bank(smoke_bundle).masks()
  ids = smoke_bundle.bank.animal_ids
  scales = list(cands.scales)
  n_slices = cands.masks.shape[1]
  expected = []
  for r in rows:
    a = int(np.flatnonzero(np.asarray(cands.animal_index) == ids.index(r["template_animal"]))[0])
    s = int(np.clip(int(r["bank_slice"]) + int(r["slice_offset"]), 0, n_slices - 1))
    k = int(np.argmin(np.abs(np.asarray(scales) - float(r["scale"]))))
    expected.append(np.asarray(correlate.shift_image(
        cands.masks[a, s, k], np.array([int(r["dy_vox"]), int(r["dx_vox"])]))))
  placed = np.stack(expected)
  dilated = np.asarray(candidates.dilate(placed, placement.IMPROVED.dilate))
  assert placement.IMPROVED.dilate > 0 and dilated.sum() > placed.sum()
  np.testing.assert_array_equal(mask, dilated)
  assert [int(r["brain_voxels"]) for r in rows] == dilated.reshape(len(rows), -1).sum(-1).tolist()


def test_gbp_with_one_displacement_per_scan(scan, model_dir, tmp_path, capsys):
  """--displacement volume: every slice of the scan gets the same displacement,
  and the report says which reading placed it; a bad value is one error line."""
  import json
  rows, arrays = _segment(scan, model_dir, tmp_path / "v", "--placement=gbp",
                          "--displacement=volume")
  d = {(int(r["dy_vox"]), int(r["dx_vox"])) for r in rows}
  assert len(rows) == 40 and len(d) == 1
  report = json.loads((tmp_path / "v" / f"{data_stem(scan)}_report.json").read_text())
  assert (report["placement"], report["displacement"]) == ("gbp", "volume")
  assert arrays["brainmask"].any()
  capsys.readouterr()
  with pytest.raises(SystemExit) as e:
    _segment(scan, model_dir, tmp_path / "bad", "--placement=gbp", "--displacement=scan")
  assert e.value.code == 2
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert err == ["error: --displacement 'scan': must be one of slice, volume"]
  assert not (tmp_path / "bad").exists()


def test_segment_scan_twice_on_one_loaded_bundle(scan, model_dir, tmp_path):
  """One loaded bundle serves many calls: a call that asks for another displacement
  leaves the bundle as it was, and the same call twice gives the same outputs."""
  from rodent_gbp import bundle as bundle_lib
  from rodent_gbp import inference
  bundle = bundle_lib.load_bundle(model_dir)
  networks = dict(bundle.networks)
  config = bundle.network("tissue").config
  other = "volume" if config.displacement == "slice" else "slice"
  quiet = dict(log=lambda msg: None, qc=False, placement="gbp")
  a = inference.segment_scan(scan, None, tmp_path / "a", bundle=bundle,
                             displacement=other, **quiet)
  assert bundle.network("tissue").config == config      # not replaced in the bundle
  assert a["report"]["displacement"] == other
  b = inference.segment_scan(scan, None, tmp_path / "b", bundle=bundle, **quiet)
  c = inference.segment_scan(scan, None, tmp_path / "c", bundle=bundle, **quiet)
  assert b["report"]["displacement"] == c["report"]["displacement"] == config.displacement
  for key in ("brainmask", "labels", "saliency"):
    np.testing.assert_array_equal(nib.load(b["paths"][key]).get_fdata(),
                                  nib.load(c["paths"][key]).get_fdata())
  np.testing.assert_array_equal(b["placement"].displacement, c["placement"].displacement)
  assert bundle.networks.keys() == networks.keys()
  assert all(bundle.networks[k] is v for k, v in networks.items())  # the same objects


# --- an input already skull-stripped ---------------------------------------------------

T2_STRIPPED = (pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"
               / "mouse-t2-atlas" / "template_after_brain_extraction"
               / "tg4510_tp3_10_20130523_UT.nii.gz")


def _ellipsoid(shape, radii, centre=None) -> np.ndarray:
  grid = np.indices(shape, dtype=np.float64)
  centre = np.asarray(shape, float) / 2 if centre is None else np.asarray(centre, float)
  return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def test_stripped_and_whole_head_told_apart():
  """A brain-sized region with an exactly zero background is stripped; a head with a
  noisy background, a zero-background head too big for a brain, a head cut by the field
  of view and two regions are not."""
  from rodent_gbp import scan as scan_lib
  rng = np.random.default_rng(0)
  affine = np.diag([0.1, 0.1, 0.1, 1.0])
  brain = _ellipsoid((100, 100, 120), (44, 34, 52))          # 4/3 pi 4.4 3.4 5.2 = 326 mm^3
  image = np.where(brain, 1.0 + rng.random(brain.shape), 0.0)
  mm3 = brain.sum() * 1e-3
  assert 300 <= mm3 <= 750
  ok, why = scan_lib.looks_stripped(image, affine)
  assert ok and "mouse brain" in why, why
  noisy = image + 0.01 * rng.random(image.shape)                      # whole head: noise
  assert not scan_lib.looks_stripped(noisy, affine)[0]
  assert "exactly zero" in scan_lib.looks_stripped(noisy, affine)[1]
  head = np.where(_ellipsoid((100, 100, 120), (48, 46, 58)), 1.0, 0.0)
  coarse = np.diag([0.25, 0.25, 0.25, 1.0])                         # 8,400 mm^3: a head
  assert "fits no rodent brain" in scan_lib.looks_stripped(head, coarse)[1]
  cut = np.where(_ellipsoid((100, 100, 120), (44, 34, 52), centre=(50, 50, 110)), 1.0, 0.0)
  assert "field of view" in scan_lib.looks_stripped(cut, affine)[1]
  two = image.copy()
  two[:20, :20, :20] = 1.0                                 # 2 % of the nonzero voxels
  assert "separate regions" in scan_lib.looks_stripped(two, affine)[1]
  assert not scan_lib.looks_stripped(image, affine, species="rat")[0]


def test_phantom_whole_head_is_not_stripped(scan):
  from rodent_gbp import scan as scan_lib
  img = nib.load(str(scan))
  ok, why = scan_lib.looks_stripped(np.asarray(img.dataobj), img.affine)
  assert not ok and "exactly zero" in why


@pytest.mark.skipif(not T2_STRIPPED.is_file(), reason="mouse-t2-atlas not beside the repo")
def test_stripped_t2_atlas_scan_keeps_its_brain(model_dir, tmp_path):
  """mouse_t2_atlas as published (already stripped): the brain is the nonzero head,
  said in the report; Dice 1 against label > 0's nonzero support."""
  from rodent_gbp import inference
  out = inference.segment_scan(T2_STRIPPED, model_dir, tmp_path, qc=False,
                               log=lambda msg: None)
  report = out["report"]
  assert report["placement"] == "stripped" and report["stripped_input"]["detected"]
  assert "taken as the brain as given" in report["stripped_input"]["reason"]
  image = np.asarray(nib.load(str(T2_STRIPPED)).dataobj)
  mask = np.asarray(nib.load(str(out["paths"]["brainmask"])).dataobj) > 0
  dice = 2 * (mask & (image != 0)).sum() / (mask.sum() + (image != 0).sum())
  assert dice > 0.98, dice
  assert report["brain_volume"]["fits"] == ["mouse"]
  labels = np.asarray(nib.load(str(out["paths"]["labels"])).dataobj)
  assert not (labels[~mask] > 0).any()
  # The report says what the label values are and what the model's tissue network
  # learned them from (the smoke model states no definition: said so).
  assert report["labels"]["values"] == {"0": "Background", "1": "White matter",
                                        "2": "Gray matter", "3": "CSF"}
  assert report["labels"]["definition"] == "not stated by the model folder"


def test_species_flag(scan, model_dir, tmp_path, capsys):
  """--species rat on the phantom's mouse-sized brain: a warning in the report; an
  unknown species: one error line, nothing written."""
  import json
  with pytest.raises(SystemExit) as e:
    _segment(scan, model_dir, tmp_path / "bad", "--species=hamster")
  assert e.value.code == 2 and not (tmp_path / "bad").exists()
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --species")
  _segment(scan, model_dir, tmp_path / "rat", "--species=rat")
  report = json.loads((tmp_path / "rat" / f"{data_stem(scan)}_report.json").read_text())
  volume = report["brain_volume"]
  assert volume["species_given"] == "rat"
  outside = not 1200 <= volume["mm3"] <= 3200
  assert (volume["warning"] is not None) == outside
  assert (volume["warning"] in report["warnings"]) if outside else True
