"""The tissue table (rodent_gbp.tissue_table) and the DSURQE reader (datasets.mouse_dsurqe).

The table is checked against the label sources' local copies in ``../shared/data``
(skipped where they are absent): it covers every label that occurs, and its rows
agree with the sources' own tissue readings except where a reason is given.
``score`` is checked against a per-voxel oracle.
"""

from __future__ import annotations

import csv
import math
import pathlib
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest

from rodent_gbp import tissue_table as tt
from rodent_gbp.datasets import mouse_dsurqe
from rodent_gbp.errors import DataError, UsageError

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
T2, DSURQE = DATA / "mouse-t2-atlas", DATA / "mouse-dsurqe"
T2_MICE = ["tg4510_tp3_1_20130520_WT", "tg4510_tp3_18_20130526_TT"]
# mouse_t2_atlas's own reading (README): WM and CSF labels, GM the rest.
T2_WM, T2_CSF = {2, 4, 6, 20, 24, 26, 40}, {10}

needs_t2 = pytest.mark.skipif(not T2.is_dir(), reason=f"mouse-t2-atlas copy not in {DATA}")
needs_dsurqe = pytest.mark.skipif(not DSURQE.is_dir(),
                                  reason=f"mouse-dsurqe copy not in {DATA}")


def _percent(fractions: dict[str, float]) -> str:
  return ", ".join(f"{k} {100 * v:.2f} %" for k, v in fractions.items())


def _mapping() -> dict[int, dict[str, str]]:
  with open(DSURQE / mouse_dsurqe.MAPPING, newline="") as f:
    return {int(r["Label"]): r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def atlas() -> mouse_dsurqe.Atlas:
  if not DSURQE.is_dir():
    pytest.skip(f"mouse-dsurqe copy not in {DATA}")
  return mouse_dsurqe.read_dsurqe(DSURQE)


def _by_name(source: str) -> dict[str, tt.Row]:
  return {r.structure: r for r in tt.rows(source)}


# --- the table -----------------------------------------------------------------------


def test_table_loads_and_codes():
  rows = tt.load_table()
  assert tt.load_table() is rows  # cached
  assert {r.source for r in rows} == set(tt.SOURCES)
  assert tt.NAMES == ("background", "wm", "gm", "csf", "ignore")
  assert (tt.BACKGROUND, tt.WM, tt.GM, tt.CSF, tt.IGNORE) == (0, 1, 2, 3, 4)
  assert sorted(r.label for r in tt.rows("mouse_t2_atlas")) == list(range(1, 41))
  assert len(tt.rows("dsurqe")) == 336
  assert tt.table_path().name == "tissue_table.csv" and tt.table_path().is_file()
  first = rows[0]
  assert first["tissue"] == first.tissue and tt.CODES[first["tissue"]] == first.code
  with pytest.raises(KeyError):
    first["code"]
  text = tt.describe()
  assert "ignore" in text and "mouse_t2_atlas" in text and "DSURQE" in text


@pytest.mark.parametrize("line, problem", [
    ("dsurqe,8,right corpus callosum,myelin,", "unknown tissue 'myelin'"),
    ("dsurqe,7,another striatum,GM,", "dsurqe label 7 already on line 3"),
    ("mri,8,x,WM,", "unknown source 'mri'"),
    ("dsurqe,0,nothing,GM,", "label 0 < 1"),
    ("dsurqe,8.5,x,WM,", "not an integer"),
])
def test_table_errors_name_file_and_line(tmp_path, line, problem):
  path = tmp_path / "table.csv"
  path.write_text("source,label,structure,tissue,reason\n"
                  "mouse_t2_atlas,2,right External Capsule,WM,\n"
                  f"dsurqe,7,right striatum,GM,\n{line}\n")
  with pytest.raises(DataError) as err:
    tt.read_table(path)
  assert str(path) in str(err.value) and "line 4" in str(err.value)
  assert problem in str(err.value)


def test_lut_and_to_tissue():
  lut = tt.lut("mouse_t2_atlas")
  assert lut.shape == (41,) and lut[0] == tt.BACKGROUND
  assert lut[2] == tt.WM and lut[10] == tt.CSF and lut[14] == tt.GM and lut[8] == tt.IGNORE
  wide = tt.lut("mouse_t2_atlas", max_label=50)
  assert wide.shape == (51,) and np.all(wide[41:] == tt.UNKNOWN)
  assert tt.lut("mouse_t2_atlas", max_label=5).shape == (41,)
  labels = np.array([[0.0, 2.0001, 9.9999], [14.2, 8.0, 40.0]], np.float32)
  np.testing.assert_array_equal(tt.to_tissue("mouse_t2_atlas", labels),
                                [[0, 1, 3], [2, 4, 1]])
  assert tt.to_tissue("mouse_t2_atlas", labels).dtype == np.uint8
  for bad, shown in (([0, 41, 2], "41"), ([0, -1], "-1"), ([1000.2, 0], "1000")):
    with pytest.raises(DataError, match="mouse_t2_atlas labels: values not in "
                       f"tissue_table.csv: {shown}$"):
      tt.to_tissue("mouse_t2_atlas", np.array(bad))
  with pytest.raises(DataError, match="dsurqe labels: values not in tissue_table.csv: 2, 6"):
    tt.to_tissue("dsurqe", np.array([0, 2, 6, 8]))  # DSURQE has no labels 2 and 6
  with pytest.raises(DataError, match="NaN"):
    tt.to_tissue("dsurqe", np.array([0.0, np.nan]))
  with pytest.raises(ValueError, match="unknown label source"):
    tt.lut("allen")


def test_decided_rows():
  t2 = {r.label: r for r in tt.rows("mouse_t2_atlas")}
  assert t2[2].tissue == "WM" and t2[10].tissue == "CSF"
  for r in t2.values():
    if "Cerebellum" in r.structure or "Brain Stem" in r.structure or "Midbrain" in r.structure:
      assert r.tissue == "ignore", r
  for label in T2_WM:
    assert t2[label].tissue == "WM"
  ds = _by_name("dsurqe")
  assert ds["medulla"].tissue == ds["midbrain"].tissue == "ignore"
  septum = [r for n, r in ds.items() if "septum" in n]
  assert len(septum) == 4 and all(r.tissue == "GM" for r in septum)
  for side in ("right", "left"):
    assert ds[f"{side} anterior lobule white matter"].tissue == "WM"
  # Every departure from a source's own reading carries a reason, and only those.
  for r in t2.values():
    own = "WM" if r.label in T2_WM else "CSF" if r.label in T2_CSF else "GM"
    assert (r.tissue != own) == bool(r.reason), r


@needs_dsurqe
def test_dsurqe_rows_follow_the_mapping():
  mapping = _mapping()
  rows = {r.label: r for r in tt.rows("dsurqe")}
  assert set(rows) == set(mapping) - {0}
  for label, r in rows.items():
    own = mapping[label]["tissue type"]
    assert r.structure == mapping[label]["Structure"].strip()
    assert (r.tissue != own) == bool(r.reason), (label, r, own)


@needs_t2
def test_table_covers_mouse_t2_atlas_labels():
  for mouse in T2_MICE:
    labels = np.asarray(nib.load(T2 / "label" / f"{mouse}.nii.gz").dataobj)
    present = set(np.unique(np.rint(labels)).astype(int).tolist())
    assert present - {0} <= {r.label for r in tt.rows("mouse_t2_atlas")}
    assert {22, 30, 37}.isdisjoint(present)


@needs_t2
def test_mouse_t2_atlas_fractions_plausible():
  for mouse in T2_MICE:
    labels = np.asarray(nib.load(T2 / "label" / f"{mouse}.nii.gz").dataobj)
    f = tt.fractions(tt.to_tissue("mouse_t2_atlas", labels))
    message = f"{mouse}: {_percent(f)} of the brain"
    assert f["gm"] > 0.5 and f["gm"] > f["ignore"], message
    assert 0.02 <= f["wm"] <= 0.04, message
    assert 0.005 <= f["csf"] <= 0.025, message
    assert 0.25 <= f["ignore"] <= 0.5, message  # cerebellum, brain stem, midbrain, thalamus


# --- score -----------------------------------------------------------------------------


def _oracle(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
  out = {}
  for code, name in ((1, "wm"), (2, "gm"), (3, "csf")):
    tp = fp = fn = 0
    for p, t in zip(pred.ravel().tolist(), truth.ravel().tolist()):
      if t == tt.IGNORE:
        continue
      tp += p == code and t == code
      fp += p == code and t != code
      fn += p != code and t == code
    out[name] = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else math.nan
  tp = fp = fn = 0
  for p, t in zip(pred.ravel().tolist(), truth.ravel().tolist()):
    tp += p > 0 and t > 0
    fp += p > 0 and t == 0
    fn += p == 0 and t > 0
  out["brain_dice"] = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else math.nan
  return out


@pytest.mark.parametrize("seed", range(4))
def test_score_matches_oracle(seed):
  rng = np.random.default_rng(seed)
  truth = rng.integers(0, 5, size=(6, 7, 5)).astype(np.uint8)
  pred = rng.integers(0, 4, size=truth.shape)
  if seed == 3:
    truth[truth == tt.CSF] = tt.IGNORE  # no CSF in the truth
  got = tt.score(pred, truth)
  want = _oracle(pred, truth)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, nan_ok=True), key
  assert got["voxels"]["ignore"] == int(np.sum(truth == tt.IGNORE))
  assert got["voxels"]["scored"] == truth.size - got["voxels"]["ignore"]
  assert sum(got["counts"]["wm"]) == got["voxels"]["scored"]
  assert sum(got["counts"]["brain"]) == truth.size


def test_score_known_answers():
  truth = np.array([0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4, 4], np.uint8)
  perfect = np.where(truth == tt.IGNORE, 1, truth)  # ignore predicted WM: not counted
  got = tt.score(perfect, truth)
  assert got["wm"] == got["gm"] == got["csf"] == got["brain_dice"] == 1.0
  all_gm = np.where(truth > 0, 2, 0)
  got = tt.score(all_gm, truth)
  assert got["wm"] == 0.0 and got["csf"] == 0.0 and got["brain_dice"] == 1.0
  assert got["gm"] == pytest.approx(2 * 4 / (4 + 7))  # 4 GM of 7 scored brain voxels
  # Ignore predicted as background costs brain Dice only.
  got = tt.score(np.where(truth == tt.IGNORE, 0, truth), truth)
  assert got["wm"] == 1.0 and got["brain_dice"] == pytest.approx(2 * 7 / (7 + 10))
  # A class absent from truth and prediction: NaN (metrics' empty-mask policy).
  assert math.isnan(tt.score(np.array([0, 2]), np.array([0, 2]))["csf"])
  with pytest.raises(ValueError, match="shape"):
    tt.score(np.zeros(3, int), np.zeros(4, np.uint8))
  with pytest.raises(ValueError, match="prediction values"):
    tt.score(np.array([4]), np.array([4], np.uint8))


# --- DSURQE --------------------------------------------------------------------------


def test_dsurqe_read_geometry(atlas):
  image, labels, affine = atlas[:3]
  assert affine is atlas.affine and labels is atlas.labels
  assert atlas.image.shape == atlas.labels.shape == atlas.mask.shape == mouse_dsurqe.SHAPE_RAS
  assert nib.aff2axcodes(atlas.affine) == ("R", "A", "S")
  np.testing.assert_allclose(nib.affines.voxel_sizes(atlas.affine), [0.2] * 3)
  assert atlas.labels.dtype == np.int16 and atlas.mask.dtype == bool
  mapping = _mapping()
  assert set(np.unique(atlas.labels).tolist()) == set(mapping)
  # Anatomy in world (RAS) mm: right structures at x > 0, olfactory bulb anterior
  # to the cerebellum, cortex above the hypothalamus.
  ijk = np.indices(atlas.labels.shape).reshape(3, -1)
  xyz = (atlas.affine[:3, :3] @ ijk + atlas.affine[:3, 3:]).T
  flat = atlas.labels.ravel()

  def centre(pred) -> np.ndarray:
    return xyz[np.isin(flat, [k for k, r in mapping.items() if k and pred(r)])].mean(0)

  right = centre(lambda r: r["Hemisphere"] == "right")
  left = centre(lambda r: r["Hemisphere"] == "left")
  assert right[0] > 1.5 and left[0] < -1.5, (right, left)
  bulb = centre(lambda r: r["hierarchy"] == "Olfactory bulbs")
  cerebellum = centre(lambda r: r["hierarchy"].startswith("cerebellar"))
  assert bulb[1] - cerebellum[1] > 7, (bulb, cerebellum)  # A-P is axis 1
  cortex = centre(lambda r: "cortex" in r["Structure"].lower())
  hypothalamus = centre(lambda r: "hypothalamus" in r["Structure"])
  assert cortex[2] - hypothalamus[2] > 2, (cortex, hypothalamus)


def test_dsurqe_mirror_symmetry(atlas):
  """Flipped left-right (axis 0) with right and left labels swapped, the map matches itself."""
  rows = tt.rows("dsurqe")
  by_name = {r.structure: r.label for r in rows}
  swap = np.arange(atlas.labels.max() + 1)
  for r in rows:
    for this, other in (("right ", "left "), ("left ", "right ")):
      if r.structure.startswith(this):
        swap[r.label] = by_name[other + r.structure[len(this):]]
  labels = atlas.labels

  def agreement(other: np.ndarray) -> float:
    return float(np.mean((other == labels)[(labels > 0) | (other > 0)]))

  agree = agreement(swap[labels[::-1]])
  plain = agreement(labels[::-1])  # flipped, hemispheres not swapped
  other_axis = agreement(swap[labels[:, ::-1]])  # flipped along A-P instead
  assert agree > 0.75 and plain < 0.5 and other_axis < 0.2, (agree, plain, other_axis)


def test_dsurqe_tissue_fractions(atlas):
  codes, affine = mouse_dsurqe.tissue(DSURQE)
  np.testing.assert_array_equal(affine, atlas.affine)
  assert set(np.unique(codes).tolist()) == {0, 1, 2, 3, 4}
  np.testing.assert_array_equal(codes > 0, atlas.labels > 0)
  f = tt.fractions(codes)
  message = f"DSURQE: {_percent(f)} of label > 0 ({int(np.sum(codes > 0))} voxels)"
  assert 0.08 <= f["wm"] <= 0.13, message
  assert 0.70 <= f["gm"] <= 0.82, message
  assert 0.01 <= f["csf"] <= 0.02, message
  assert 0.08 <= f["ignore"] <= 0.16, message
  # The brain mask holds the labelled brain (and is about 8 % larger).
  assert np.all(atlas.mask[codes > 0])
  assert 1.03 < atlas.mask.sum() / np.sum(codes > 0) < 1.15, message


@needs_dsurqe
def test_dsurqe_errors(tmp_path, monkeypatch):
  root = tmp_path / "mouse-dsurqe"
  (root / mouse_dsurqe.SUBDIR).mkdir(parents=True)
  shutil.copy(DSURQE / mouse_dsurqe.MANIFEST, root)
  for rel in mouse_dsurqe.FILES:
    shutil.copy(DSURQE / rel, root / rel)
  assert len(mouse_dsurqe.verify(root)) == 4
  corrupt = root / mouse_dsurqe.MAPPING
  corrupt.write_bytes(corrupt.read_bytes().replace(b"GM", b"WM", 1))
  with pytest.raises(DataError, match=f"{corrupt}: corrupt: sha256"):
    mouse_dsurqe.read_dsurqe(root)
  (root / mouse_dsurqe.MASK).unlink()
  with pytest.raises(DataError, match=f"{root / mouse_dsurqe.MASK}: file not found"):
    mouse_dsurqe.read_dsurqe(root, check=False)
  with pytest.raises(DataError, match="DSURQE folder not found"):
    mouse_dsurqe.read_dsurqe(tmp_path / "absent")
  monkeypatch.setitem(sys.modules, "h5py", None)
  with pytest.raises(UsageError, match=r"needs h5py.*pip install -e \"\.\[data\]\""):
    mouse_dsurqe.read_dsurqe(root, check=False)
