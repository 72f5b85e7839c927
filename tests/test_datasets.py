"""rodent_gbp.datasets on the local copies of the public sets (never the internet).

The copies live in ``../shared/data`` beside the repository (read-only; CI lays
them out at the same place). Downloads are served by an ``http.server`` on
127.0.0.1; conversions run on 2 animals of each set (the whole sets are the
``experiments/prepare_data.py`` command's job).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import pathlib
import threading

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from rodent_gbp import data, datasets, nifti
from rodent_gbp.datasets import mouse_t2_atlas, pseudo_labels
from rodent_gbp.errors import DataError, UsageError

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
EPI, T2 = DATA / "mouse-epi", DATA / "mouse-t2-atlas"
pytestmark = pytest.mark.skipif(not (EPI.is_dir() and T2.is_dir()),
                                reason=f"local copies of the public sets not in {DATA}")

EPI_FILES = ["source_images/N_05_1.mat", "source_images/N_05_2.mat",
             "masks/mask_05_1_4D_mcflirted.nii", "masks/mask_05_2_4D_mcflirted.nii",
             "source_images/N_10_1.mat", "source_images/N_10_2.mat",
             "masks/mask_10_1_4D_mcflirted.nii"]
T2_MICE = ["tg4510_tp3_1_20130520_WT", "tg4510_tp3_18_20130526_TT"]
T2_FILES = [f"{d}/{m}.nii.gz" for m in T2_MICE
            for d in ("template_after_brain_extraction", "label")]


def _copy_subset(src: pathlib.Path, dest: pathlib.Path, paths) -> pathlib.Path:
  """A partial copy of a set in its source's layout (symlinks to the read-only copy)."""
  for p in paths:
    (dest / p).parent.mkdir(parents=True, exist_ok=True)
    (dest / p).symlink_to(src / p)
  return dest


@contextlib.contextmanager
def _serve(folder: pathlib.Path):
  """An HTTP server on 127.0.0.1 serving ``folder``; yields (base URL, requested paths)."""
  requested: list[str] = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
      pass

    def do_GET(self):
      requested.append(self.path)
      super().do_GET()

  server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}", requested
  finally:
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


# --- registry --------------------------------------------------------------------


@pytest.mark.parametrize("name,folder", [("mouse_epi", EPI), ("mouse_t2_atlas", T2)])
def test_registry_matches_the_local_copies(name, folder):
  info = datasets.get(name)
  assert info.manifest_text == (folder / "MANIFEST.sha256").read_text()
  assert info.commit == (folder / "COMMIT").read_text().strip()
  licence = (folder / "LICENSE").read_text()
  assert ("MIT License" in licence) == (info.licence == "MIT")
  assert ("GNU GENERAL PUBLIC LICENSE" in licence) == (info.licence == "GPL-3.0")
  assert info.raw_base_url.startswith(
      f"https://raw.githubusercontent.com/{info.repository}/{info.commit}")
  assert info.manifest_sha256 == hashlib.sha256(info.manifest_text.encode()).hexdigest()
  assert datasets.get(info.local_name) is info


def test_unknown_names_and_bad_manifests_are_refused(tmp_path):
  with pytest.raises(UsageError, match="mouse_epi"):
    datasets.get("rat_t2")
  with pytest.raises(UsageError, match="resolution"):
    datasets.prepare("mouse_t2_atlas", data_root=T2, cache_dir=tmp_path, resolution="coarse")
  with pytest.raises(ValueError, match="line 1"):
    datasets.registry.parse_manifest("abc  12  x\n")


# --- downloads and local copies ------------------------------------------------------


def test_fetch_checks_every_download_and_skips_what_is_present(tmp_path):
  good = ["masks/mask_01_1_4D_mcflirted.nii", "source_images/N_02_1.mat"]
  corrupt, truncated = "source_images/N_03_1.mat", "masks/mask_03_1_4D_mcflirted.nii"
  served = _copy_subset(EPI, tmp_path / "served", good)
  for path, damage in ((corrupt, lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:]),
                       (truncated, lambda b: b[: len(b) // 2])):
    (served / path).parent.mkdir(parents=True, exist_ok=True)
    (served / path).write_bytes(damage((EPI / path).read_bytes()))
  dest = tmp_path / "dest"
  # A wrong file already under a good name is downloaded again.
  (dest / good[0]).parent.mkdir(parents=True)
  (dest / good[0]).write_bytes(b"not a mask")
  lines: list[str] = []
  with _serve(served) as (url, requested):
    with pytest.raises(DataError) as e:
      datasets.fetch("mouse_epi", dest, base_url=url, log=lines.append,
                     only=good + [corrupt, truncated])
    message = str(e.value)
    assert corrupt in message and "corrupt: sha256" in message
    assert truncated in message and "truncated" in message
    assert not any(p in message for p in good)
    for p in good:
      assert datasets.sha256_file(dest / p) == datasets.sha256_file(EPI / p)
    # Refused files leave nothing behind, under their names or as temporaries.
    assert not (dest / corrupt).exists() and not (dest / truncated).exists()
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == sorted(
        pathlib.Path(p).name for p in good)
    assert any("REFUSED" in line for line in lines) and lines[0].startswith("mouse_epi")
    # Present and correct: skipped without a request.
    before = len(requested)
    check = datasets.fetch("mouse_epi", dest, base_url=url, log=lines.append, only=good)
    assert len(requested) == before
    assert check.present == tuple(good) and lines[-1].endswith("present")


def test_a_local_copy_lists_missing_files_and_refuses_wrong_bytes(tmp_path):
  copy = _copy_subset(EPI, tmp_path / "copy", EPI_FILES[:4])
  check = datasets.verify_copy("mouse_epi", copy)
  assert set(check.present) == set(EPI_FILES[:4])
  assert len(check.missing) == len(datasets.get("mouse_epi").manifest) - 4
  assert "source_images/N_10_1.mat" in check.missing
  bad = "masks/mask_10_1_4D_mcflirted.nii"
  (copy / bad).parent.mkdir(parents=True, exist_ok=True)
  (copy / bad).write_bytes((EPI / bad).read_bytes()[:-1] + b"\x01")
  with pytest.raises(DataError, match=str(copy / bad)):
    datasets.verify_copy("mouse_epi", copy)
  with pytest.raises(DataError, match="not found"):
    datasets.verify_copy("mouse_epi", tmp_path / "nowhere")


# --- mouse_epi -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def epi(tmp_path_factory):
  """Animals 05 (two identical sessions) and 10 (session 2 without a mask), converted."""
  root = tmp_path_factory.mktemp("epi")
  copy = _copy_subset(EPI, root / "copy", EPI_FILES)
  lines: list[str] = []
  folder = datasets.prepare("mouse_epi", data_root=copy, cache_dir=root / "cache",
                            log=lines.append)
  return folder, copy, lines


def test_epi_conversion_known_answers(epi):
  folder, _, lines = epi
  record = json.loads((folder / "dataset.json").read_text())
  assert record["commit"] == datasets.get("mouse_epi").commit
  assert record["labels"]["kind"] == "pseudo-labels"
  assert record["animals"] == ["05", "10"]
  assert record["sessions"] == {"05": [1, 2], "10": [1]}
  skipped = {(r["id"], r["session"]): r["reason"] for r in record["skipped_sessions"]}
  assert "no mask in the set" in skipped[("10", 2)]
  assert "no mask in the set" in skipped[("23", 1)]
  assert "not in the local copy" in skipped[("01", 1)]
  assert {r["id"] for r in record["skipped_animals"]} >= {"01", "23", "31"}
  assert len(record["files_missing_from_copy"]) == 120 - len(EPI_FILES)
  assert any("skipped 10_2" in line for line in lines)

  for animal, n_sessions in (("05", 2), ("10", 1)):
    for s, sub in datasets.session_dirs(folder / animal).items():
      img = nib.load(sub / "image.nii.gz")
      assert img.shape == (80, 80, 17)
      np.testing.assert_allclose(img.header.get_zooms(), (0.25, 0.25, 1.0), atol=1e-6)
      mask_img = nib.load(EPI / f"masks/mask_{animal}_{s}_4D_mcflirted.nii")
      expected = np.array(mask_img.affine)
      expected[:3] /= 10
      np.testing.assert_allclose(img.affine, expected, atol=1e-6)
      N = scipy.io.loadmat(EPI / f"source_images/N_{animal}_{s}.mat")["N"]
      np.testing.assert_array_equal(np.asarray(img.dataobj), N.astype(np.float32))
      np.testing.assert_array_equal(np.asarray(nib.load(sub / "brainmask.nii.gz").dataobj),
                                    np.asarray(mask_img.dataobj).astype(np.uint8))
    assert len(datasets.session_dirs(folder / animal)) == n_sessions

  # One volume per animal for load_dataset (session 1); session 2 beside it.
  volumes = data.load_dataset(folder)
  assert [v.animal_id for v in volumes] == ["05", "10"]
  np.testing.assert_allclose(nifti.voxel_sizes_ras(volumes[0].affine), (0.25, 1.0, 0.25),
                             atol=1e-6)
  assert volumes[0].image.shape == (17, 80, 80)          # coronal slices along A-P
  second = data.load_animal(folder / "05" / "session2")
  np.testing.assert_array_equal(second.image, volumes[0].image)   # the same volume
  assert (second.brainmask != volumes[0].brainmask).any()         # two raters' masks
  meta = json.loads((folder / "05" / "meta.json").read_text())
  assert meta["sessions"] == {"1": ".", "2": "session2"}
  assert meta["sessions_with_identical_volume"] == [2]
  assert meta["labels"]["kind"].startswith("pseudo-labels")
  assert "uncertain" in meta["voxel_size_note"]


def test_epi_conversion_is_cached(epi):
  folder, copy, _ = epi
  lines: list[str] = []
  again = datasets.prepare("mouse_epi", data_root=copy, cache_dir=folder.parent,
                           resolution="native", log=lines.append)
  assert again == folder and "converted already" in lines[-1]
  assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_pseudo_labels_are_deterministic_inside_the_mask_with_three_classes(epi):
  folder, copy, _ = epi
  volume = data.load_animal(folder / "05")
  assert set(np.unique(volume.label[volume.brainmask])) == {1, 2, 3}
  assert not volume.label[~volume.brainmask].any()
  # A second run from the source files gives the converted labels bit for bit.
  N = scipy.io.loadmat(copy / "source_images/N_05_1.mat")["N"]
  mask = np.asarray(nib.load(copy / "masks/mask_05_1_4D_mcflirted.nii").dataobj) > 0
  labels, fit = pseudo_labels.tissue_pseudo_labels(N, mask, spacing=(0.25, 0.25, 1.0))
  np.testing.assert_array_equal(labels, np.asarray(nib.load(
      folder / "05" / "labels.nii.gz").dataobj))
  means = [fit[c]["mean"] for c in ("wm", "gm", "csf")]
  assert means == sorted(means)            # 1 WM darkest ... 3 CSF brightest
  assert sum(fit[c]["voxels"] for c in fit) == mask.sum()


# --- mouse_t2_atlas ------------------------------------------------------------------


@pytest.fixture(scope="module")
def t2_copy(tmp_path_factory):
  return _copy_subset(T2, tmp_path_factory.mktemp("t2") / "copy", T2_FILES)


def _source(mouse):
  image = np.asarray(nib.load(T2 / f"template_after_brain_extraction/{mouse}.nii.gz")
                     .dataobj)
  labels = np.asarray(nib.load(T2 / f"label/{mouse}.nii.gz").dataobj).round().astype(int)
  return image, labels


def test_t2_native_tissue_counts_and_brain_truth(t2_copy, tmp_path):
  folder = datasets.prepare("mouse_t2_atlas", data_root=t2_copy, cache_dir=tmp_path,
                            resolution="native", log=None)
  volumes = data.load_dataset(folder)
  assert [v.animal_id for v in volumes] == sorted(T2_MICE)
  for mouse in T2_MICE:
    _, structures = _source(mouse)
    tissue = np.asarray(nib.load(folder / mouse / "labels.nii.gz").dataobj)
    assert tissue.shape == (112, 128, 80)
    wm = np.isin(structures, [2, 4, 6, 20, 24, 26, 40])
    assert (tissue == 1).sum() == wm.sum()
    assert (tissue == 3).sum() == (structures == 10).sum()
    assert (tissue == 2).sum() == ((structures > 0) & ~wm & (structures != 10)).sum()
    brain = np.asarray(nib.load(folder / mouse / "brainmask.nii.gz").dataobj)
    np.testing.assert_array_equal(brain, (structures > 0).astype(np.uint8))
    meta = json.loads((folder / mouse / "meta.json").read_text())
    assert meta["genotype"] == mouse[-2:] and meta["voxel_size_mm"] == [0.15] * 3
  csv = (folder / "animals.csv").read_text().splitlines()
  assert csv[0].startswith("animal_id,genotype") and "tg4510_tp3_18_20130526_TT,TT" in csv[1]


def test_t2_paper_grid(t2_copy, tmp_path):
  folder = datasets.prepare("mouse_t2_atlas", data_root=t2_copy, cache_dir=tmp_path,
                            log=None)
  mouse = T2_MICE[0]
  img = nib.load(folder / mouse / "image.nii.gz")
  assert img.shape == (56, 43, 40)
  np.testing.assert_allclose(img.header.get_zooms(), (0.3, 0.45, 0.3), atol=1e-5)
  # Voxel (i, j, k) is the mean of native (2i..2i+1, 3j+1, 2k..2k+1), and its centre
  # is that block's centre in millimetres.
  image, structures = _source(mouse)
  native = nib.load(T2 / f"template_after_brain_extraction/{mouse}.nii.gz").affine
  i, j, k = 30, 20, 22
  np.testing.assert_allclose(np.asarray(img.dataobj)[i, j, k],
                             image[2 * i:2 * i + 2, 3 * j + 1, 2 * k:2 * k + 2].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(img.affine @ [i, j, k, 1],
                             native @ [2 * i + 0.5, 3 * j + 1, 2 * k + 0.5, 1], atol=1e-5)
  volume = data.load_animal(folder / mouse)
  np.testing.assert_array_equal(volume.brainmask, volume.label > 0)
  assert set(np.unique(volume.label)) == {0, 1, 2, 3}


def test_t2_fine_grid_is_every_third_native_slice(t2_copy, tmp_path):
  folder = datasets.prepare("mouse_t2_atlas", data_root=t2_copy, cache_dir=tmp_path,
                            resolution="fine", log=None)
  assert "-fine-" in folder.name
  mouse = T2_MICE[0]
  img = nib.load(folder / mouse / "image.nii.gz")
  assert img.shape == (112, 43, 80)
  np.testing.assert_allclose(img.header.get_zooms(), (0.15, 0.45, 0.15), atol=1e-5)
  image, structures = _source(mouse)
  np.testing.assert_array_equal(np.asarray(img.dataobj), image[:, 1::3, :].astype(np.float32))
  labels = np.asarray(nib.load(folder / mouse / "labels.nii.gz").dataobj)
  np.testing.assert_array_equal(labels, mouse_t2_atlas.tissue_lut()[structures[:, 1::3, :]])
  native = nib.load(T2 / f"template_after_brain_extraction/{mouse}.nii.gz").affine
  np.testing.assert_allclose(img.affine @ [5, 7, 9, 1], native @ [5, 22, 9, 1], atol=1e-5)


def test_block_vote_breaks_ties_toward_the_rarer_class():
  tissue = np.zeros((4, 3, 2), np.uint8)
  tissue[0:2, 1, 0:2] = [[1, 2], [2, 1]]      # WM 2 : GM 2 -> WM
  tissue[2:4, 1, 0:2] = [[3, 0], [0, 2]]      # BG 2 : CSF 1 : GM 1 -> BG
  image = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
  img, vote, affine = mouse_t2_atlas.to_paper_grid(image, tissue, np.eye(4))
  assert vote.shape == (2, 1, 1) and vote[:, 0, 0].tolist() == [1, 0]
  assert img[0, 0, 0] == image[0:2, 1, 0:2].mean()
  np.testing.assert_allclose(affine @ [1, 0, 0, 1], [2.5, 1, 0.5, 1])


def test_t2_class_means_follow_the_pseudo_label_order():
  """On real T2 tissue labels: WM darkest, CSF brightest (the rule pseudo_labels uses)."""
  image, structures = _source(T2_MICE[0])
  tissue = mouse_t2_atlas.tissue_lut()[structures]
  means = [image[tissue == c].mean() for c in (1, 2, 3)]
  assert means == sorted(means)


def test_prepare_data_binary(binary, t2_copy, tmp_path, capsys):
  binary("prepare_data", ["--dataset", "mouse_t2_atlas", "--data_root", str(t2_copy),
                          "--out_dir", str(tmp_path)])
  out = capsys.readouterr().out.strip().splitlines()
  folder = pathlib.Path(out[-1])
  assert folder.parent == tmp_path and (folder / "dataset.json").is_file()
  assert any("skipped tg4510_tp3_10_20130523_UT" in line for line in out)
  with pytest.raises(SystemExit) as e:
    binary("prepare_data", ["--dataset", "mouse_epi", "--data_root",
                            str(tmp_path / "nowhere"), "--out_dir", str(tmp_path)])
  assert e.value.code == 2
  assert "nowhere" in capsys.readouterr().err


# --- the main job on real scans (smoke config, two animals of each set) ----------------


def _smoke(**changes):
  from rodent_gbp import configs
  return configs.override(configs.get_config("smoke"), **changes)


def test_reproduce_on_mouse_epi_without_displacement_truth(epi, tmp_path, binary):
  import csv
  import warnings
  from rodent_gbp import job
  folder, copy, _ = epi
  split = tmp_path / "split.json"
  split.write_text(json.dumps({"train": ["05"], "val": [], "test": ["10"]}))
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)   # no "Mean of empty slice"
    r = job.run(_smoke(), tmp_path / "run", dataset="mouse_epi", data_root=copy,
                            data_cache=folder.parent, split=str(split), figures=False,
                            log=lambda _: None)
  run = tmp_path / "run"
  assert r["split"] == {"train": ["05"], "val": [], "test": ["10"]}
  info = datasets.get("mouse_epi")
  assert (r["data"]["dataset"], r["data"]["commit"], r["data"]["manifest_sha256"]) == (
      "mouse_epi", info.commit, info.manifest_sha256)
  assert r["data"]["labels"] == "pseudo-labels" and not r["data"]["skull_stripped"]
  assert set(r["brain"]) == {"gbp", "gbp_improved", "intensity", "gbp_ceiling", "oracle"}
  # The oracle searches every candidate at every shift; the reference mask at
  # its own slice, scale 1, is one of them (up to the aligned bank's cropping).
  assert r["brain"]["oracle"]["dsc"] >= r["brain"]["gbp_ceiling"]["dsc"] - 0.01
  assert r["placement"]["displacement_truth"] is False
  assert "mean_abs_error_px" not in r["placement"]
  with open(run / "per_slice.csv") as f:
    header = next(csv.reader(f))
  assert "abs_error_px" not in header and "dy" in header
  tables = (run / "tables.md").read_text()
  assert "mean abs error" not in tables and "pseudo-labels" in tables
  # The mixture baseline is left out where the labels are that mixture.
  assert "all_gm" in r["tables"] and "mixture" not in r["tables"]
  with open(run / "per_animal.csv") as f:
    rows = list(csv.DictReader(f))
  assert [row["animal"] for row in rows] == ["10"]
  assert float(rows[0]["gbp_brain_dsc"]) == pytest.approx(r["brain"]["gbp"]["dsc"])
  # Session 2 of the training animal trained too: 2 x 17 slices, batch 4.
  assert r["training"]["history"][0]["step"] == 34 // 4
  # A split naming an animal the set lacks is refused, naming the file.
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"train": ["05"], "test": ["99"]}))
  with pytest.raises(SystemExit) as e:
    binary("reproduce", ["--dataset", "mouse_epi", "--data_root", str(copy), "--data_cache",
                         str(folder.parent), "--split_file", str(bad), "--config", "smoke",
                         "--workdir", str(tmp_path / "bad")])
  assert e.value.code == 2


def test_reproduce_on_a_skull_stripped_set_reports_what_applies(t2_copy, tmp_path):
  from rodent_gbp import job
  split = {"train": [T2_MICE[0]], "val": [], "test": [T2_MICE[1]]}
  r = job.run(_smoke(eval_batch_size=16), tmp_path / "run",
                          dataset="mouse_t2_atlas", data_root=t2_copy,
                          data_cache=tmp_path / "cache", split=split, log=lambda _: None)
  run = tmp_path / "run"
  assert r["data"]["skull_stripped"] and "skull-stripped" in r["absent"]
  assert "placement" not in r and "ablation" not in r and r["brain"] == {}
  assert {"none", "manual", "all_gm", "mixture"} <= set(r["tables"])
  assert "gbp" not in r["tables"]
  assert not (run / "placement.md").exists() and not (run / "per_slice.csv").exists()
  assert (run / "figures" / "fig3_translation.png").is_file()
  assert not (run / "figures" / "fig7_alignment.png").exists()
  assert "Not shown: the images are skull-stripped" in (run / "tables.md").read_text()
  # All-GM baseline by hand: GM DSC = 2 |GM| / (|GM| + |brain|), WM and CSF 0.
  v = data.load_animal(pathlib.Path(r["data"]["folder"]) / T2_MICE[1])
  gm, brain = int((v.label == 2).sum()), int(v.brainmask.sum())
  gm_dsc = r["per_animal"][T2_MICE[1]]["all_gm"]["gm"]["dsc"]
  assert gm_dsc == pytest.approx(2 * gm / (gm + brain))
  assert r["per_animal"][T2_MICE[1]]["all_gm"]["wm"]["dsc"] == 0.0


def test_split_files_and_fold_files_are_checked(tmp_path):
  from rodent_gbp.studies import crossval
  ids = ["a", "b", "c"]
  cases = {"missing.json": None, "bad.json": "{not json",
           "twice.json": {"train": ["a"], "test": ["a"]},
           "unknown.json": {"train": ["a"], "test": ["z"]},
           "empty.json": {"train": [], "test": ["a"]},
           "key.json": {"train": ["a"], "tset": ["b"]}}
  for name, content in cases.items():
    path = tmp_path / name
    if content is not None:
      path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataError, match=name):
      data.read_split_file(path, ids)
  for n in (7, 18, 22):
    folds = crossval.make_folds([f"{i:02d}" for i in range(n)], k=5, seed=0)
    tested = sorted(a for f in folds for a in f["test"])
    assert tested == [f"{i:02d}" for i in range(n)]
    for f in folds:
      assert not set(f["train"]) & set(f["val"]) and not set(f["val"]) & set(f["test"])
      assert len(f["train"]) + len(f["val"]) + len(f["test"]) == n and f["val"]
  assert crossval.make_folds(list("abcdefg"), seed=3) == crossval.make_folds(
      list("gfedcba"), seed=3)


@pytest.mark.parametrize("name", ["mouse_epi", "mouse_t2_atlas"])
def test_committed_fold_files_cover_the_local_copies(name):
  from rodent_gbp.studies import crossval
  folds = crossval.read_fold_file(REPO / "experiments" / "folds" / f"{name}.json")
  assert folds["dataset"] == name and len(folds["folds"]) == 5
  assert folds["folds"] == crossval.make_folds(folds["animals"], k=5, seed=folds["seed"])
  copy = DATA / datasets.get(name).local_name
  if name == "mouse_epi":
    present = {p.name.split("_")[1] for p in (copy / "masks").glob("mask_*_1_*.nii")}
  else:
    present = {p.name[:-len(".nii.gz")] for p in (copy / "label").glob("*.nii.gz")}
  assert set(folds["animals"]) == present


def test_cross_validation_resumes_fold_by_fold_and_pools_folds(tmp_path):
  from rodent_gbp import fileio
  from rodent_gbp.studies import crossval
  folds = {"folds": [{"train": ["a"], "val": [], "test": ["b"]},
                     {"train": ["b"], "val": [], "test": ["a"]}]}
  ran = []

  def run_fold(split, fold_dir, dsc={"b": 0.8, "a": 0.6}):
    ran.append(split["test"][0])
    a = split["test"][0]
    fileio.write_json(fold_dir / "results.json", {
        "tables": {"manual": {"wm": {"dsc": dsc[a]}}}, "brain": {"gbp": {"dsc": dsc[a] / 2}},
        "per_animal": {a: {}}, "training": {"epochs_completed": 1, "history": [{"loss": 0.5}]}})

  (tmp_path / "fold0").mkdir()
  (tmp_path / "fold1").mkdir()
  crossval.run(folds, tmp_path, run_fold=run_fold, only=[1], log=lambda _: None)
  crossval.run(folds, tmp_path, run_fold=run_fold, log=lambda _: None)
  assert ran == ["a", "b"]   # fold 1 once, then only the missing fold 0
  cv = crossval.summarise([fileio.read_json(tmp_path / f"fold{i}" / "results.json")
                           for i in (0, 1)])
  wm = cv["tables"]["manual"]["wm"]["dsc"]
  assert wm["mean"] == pytest.approx(0.7) and wm["sd"] == pytest.approx(np.std([0.8, 0.6],
                                                                              ddof=1))
  assert cv["brain"]["gbp"]["dsc"]["mean"] == pytest.approx(0.35)
  assert cv["test_animals"] == ["a", "b"] and cv["training"][0]["losses_finite"]
  assert "70.0 +- 14.1" in crossval.markdown(cv)
  # The gbp row says which displacement the folds' config took (per slice when unrecorded).
  assert "| gbp (the paper; one displacement per slice) | 35.0 +- 7.1 |" in crossval.markdown(cv)
  assert "| gbp (the paper; one displacement per acquisition) |" in crossval.markdown(
      {**cv, "config": {"displacement": "volume"}})


def test_cross_validate_binary_refuses_another_sets_fold_file(epi, tmp_path, binary, capsys):
  folder, copy, _ = epi
  with pytest.raises(SystemExit) as e:
    binary("cross_validate", ["--dataset", "mouse_epi", "--data_root", str(copy),
                              "--data_cache", str(folder.parent), "--workdir", str(tmp_path),
                              "--folds", str(REPO / "experiments" / "folds" /
                                             "mouse_t2_atlas.json")])
  assert e.value.code == 2 and "mouse_t2_atlas.json" in capsys.readouterr().err
