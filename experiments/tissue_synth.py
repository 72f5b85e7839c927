r"""Tissue from label maps: cross-validation, transfer and the shipped tissue network.

Trains the tissue network on images synthesised from label maps
(``rodent_gbp.training.tissue_synth``) and judges it through
``rodent-gbp-segment`` on real scans it never saw. One run per fold k: the
atlas fold k's test mice (``experiments/folds/mouse_t2_atlas.json``) and the
``mouse_epi`` fold k's test animals (``experiments/folds/mouse_epi.json``) give
neither images nor label maps to training; their validation animals select the
epoch.

* ``--mode synth``: synthesised heads and brains plus the real images
  (``p_real`` of the time); ``--mode real``: the real-only control (the same
  slices that have a real image, always the real image, same grid and budget).
* ``--without dsurqe`` / ``--without mouse_t2_atlas``: transfer runs that
  leave a whole label source out; the left-out source is then tested.
* Tests per fold (native grids, tissue table classes): the atlas test mice as
  published (skull-stripped) through ``rodent-gbp-segment``, beside the all-GM
  and mixture baselines on the same brains; the ``mouse_epi`` test animals'
  brain Dice of the network's foreground on their raw slices; DSURQE when it
  was left out.

Example (fold 0, reduced budget)::

  python experiments/tissue_synth.py --workdir /tmp/ts --folds 0 --epochs 1
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import subprocess
import sys

from absl import app
from absl import flags
import nibabel as nib
import numpy as np

from rodent_gbp import bundle as bundle_lib
from rodent_gbp import cli
from rodent_gbp import fileio
from rodent_gbp import metrics
from rodent_gbp import tissue_table
from rodent_gbp.datasets import cache
from rodent_gbp.datasets import label_maps
from rodent_gbp.datasets import mouse_dsurqe
from rodent_gbp.datasets import mouse_t2_atlas
from rodent_gbp.training import tissue_synth

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("data_root", str(REPO.parent / "shared" / "data"),
                    "Folder with mouse-epi/, mouse-t2-atlas/ and mouse-dsurqe/.")
flags.DEFINE_string("data_cache", None,
                    "Where converted sets are kept (default: the project's cache).")
flags.DEFINE_string("workdir", None, "Where runs, bundles and results go.", required=True)
flags.DEFINE_list("folds", ["0", "1", "2", "3", "4"], "Folds to run.")
flags.DEFINE_enum("mode", "synth", ["synth", "real"], "Synthesis or the real-only control.")
flags.DEFINE_enum("without", "", ["", "dsurqe", "mouse_t2_atlas"],
                  "Leave a whole label source out of training (transfer) and test on it.")
flags.DEFINE_integer("epochs", 14, "Epochs: passes over the synthesis run's training "
                     "slices (the real-only control runs as many steps on its fewer slices).")
flags.DEFINE_integer("features", 8, "U-Net base features.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("copies", 3, "Composite heads per mouse_epi training session.")
flags.DEFINE_integer("seed", 0, "Seed (init, batches, synthesis, composites).")
flags.DEFINE_float("p_real", 0.3, "Probability a slice with a real image uses it.")
flags.DEFINE_string("base_model", str(REPO / "rodent_gbp" / "models" / "mouse"),
                    "Model folder whose extractor and template bank the fold bundles keep.")
flags.DEFINE_string("model_only", None, "Train nothing: run each fold's tests with this "
                    "model folder (e.g. an earlier shipped model, as the baseline).")
flags.DEFINE_bool("test", True, "Run the tests after training.")
flags.DEFINE_bool("all_train", False, "The shipped network: every atlas mouse but fold k's "
                  "validation mice, the mouse_epi animals of experiments/splits/"
                  "mouse_epi_shipped.json (its validation animals select, its test animals "
                  "are tested).")

PIXEL_MM = 0.25
SHAPE = (80, 80)


def _folds(name: str) -> dict:
  return fileio.read_json(REPO / "experiments" / "folds" / f"{name}.json")


def _atlas_paths(root: pathlib.Path, mouse: str) -> tuple[pathlib.Path, pathlib.Path]:
  base = root / "mouse-t2-atlas"
  return (base / mouse_t2_atlas.IMAGE_DIR / f"{mouse}.nii.gz",
          base / mouse_t2_atlas.LABEL_DIR / f"{mouse}.nii.gz")


def _atlas_brain(root: pathlib.Path, mouse: str) -> label_maps.Brain:
  image, structures, affine = mouse_t2_atlas.read_mouse(*_atlas_paths(root, mouse))
  return label_maps.t2_brain(image, structures, affine, mouse)


def _val_sets(brains, heads) -> list[tissue_synth.ValidationSet]:
  sets = []
  for b in brains:
    s = label_maps.brain_slices(b, pixel_mm=PIXEL_MM, shape=SHAPE)
    sets.append(tissue_synth.ValidationSet(b.name, s.image, s.target, "tissue"))
  for h in heads:
    s = label_maps.real_head_slices(h, pixel_mm=PIXEL_MM, shape=SHAPE)
    sets.append(tissue_synth.ValidationSet(h.name, s.image, s.target, "brain"))
  return sets


def _segment(inputs: list[pathlib.Path], model_dir: pathlib.Path, out_dir: pathlib.Path):
  cmd = [sys.executable, "-m", "rodent_gbp.cli", "--model_dir", str(model_dir),
         "--out_dir", str(out_dir), "--overwrite"]
  for p in inputs:
    cmd += ["--input", str(p)]
  subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)


def _mixture(image: np.ndarray, brain: np.ndarray, seed: int) -> np.ndarray:
  """A plain 3-class Gaussian mixture of the brain's intensities (darkest WM,
  brightest CSF). Not the main job's ``mixture`` baseline (``results.baseline_counts``:
  N4 bias correction first, several starts): cheaper, and a weaker baseline."""
  from sklearn.mixture import GaussianMixture  # the [data] extra
  x = image[brain].reshape(-1, 1).astype(np.float64)
  gm = GaussianMixture(3, random_state=seed).fit(x)
  order = np.argsort(gm.means_[:, 0])          # T2: WM darkest, GM, CSF brightest
  cls = np.empty(3, np.int64)
  cls[order] = [1, 2, 3]
  out = np.zeros(image.shape, np.int64)
  out[brain] = cls[gm.predict(x)]
  return out


def _test_atlas(root, mice, model_dir: pathlib.Path, out_dir: pathlib.Path) -> dict:
  images = [_atlas_paths(root, m)[0] for m in mice]
  _segment(images, model_dir, out_dir)
  rows = {}
  for m, img_path in zip(mice, images):
    img = nib.load(img_path)
    truth = tissue_table.to_tissue("mouse_t2_atlas", np.asarray(
        nib.load(_atlas_paths(root, m)[1]).dataobj))
    labels_path = out_dir / f"{m}_labels.nii.gz"
    if not labels_path.is_file():
      rows[m] = {"error": f"{labels_path} not written"}
      continue
    pred = np.asarray(nib.load(labels_path).dataobj).astype(np.int64)
    image = np.asarray(img.dataobj, np.float32)
    brain = truth > 0
    rows[m] = {"network": tissue_table.score(pred, truth),
               "all_gm": tissue_table.score(np.where(brain, 2, 0), truth),
               "mixture": tissue_table.score(_mixture(image, brain, 0), truth)}
  return rows


def _test_dsurqe(root, model_dir: pathlib.Path, out_dir: pathlib.Path) -> dict:
  image, structures, affine = mouse_dsurqe.read_dsurqe(root / "mouse-dsurqe")[:3]
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / "dsurqe_average.nii.gz"
  nib.save(nib.Nifti1Image(np.where(structures > 0, image, 0).astype(np.float32), affine), path)
  _segment([path], model_dir, out_dir)
  truth = tissue_table.to_tissue("dsurqe", structures)
  pred = np.asarray(nib.load(out_dir / "dsurqe_average_labels.nii.gz").dataobj).astype(np.int64)
  brain = truth > 0
  return {"dsurqe": {"network": tissue_table.score(pred, truth),
                     "all_gm": tissue_table.score(np.where(brain, 2, 0), truth),
                     "mixture": tissue_table.score(_mixture(image, brain, 0), truth)}}


def _test_epi_foreground(result, heads) -> dict:
  """Brain Dice of the tissue network's foreground on each head's raw slices;
  ``result``: anything with the network's ``config`` and ``params``."""
  model = bundle_lib.Network(result.config, result.params).model
  out = {}
  for h in heads:
    s = label_maps.real_head_slices(h, pixel_mm=PIXEL_MM, shape=SHAPE)
    pred = tissue_synth.predict(result.params, s.image, model=model)
    out[h.name] = metrics.mask_dice(pred > 0, s.target > 0)
  return out


def _model_only(k: int, root, epi_dir, work: pathlib.Path, atlas: dict, epi: dict) -> dict:
  """The tests of fold ``k`` for the model folder ``--model_only`` (no training)."""
  model_dir = pathlib.Path(FLAGS.model_only)
  fold_dir = work / f"fold{k}"
  record = {"fold": k, "mode": "model_only", "without": "", "model_dir": str(model_dir),
            "split": {"mouse_t2_atlas": atlas, "mouse_epi": epi}, "history": [],
            "kept_epoch": None,
            "atlas_test": _test_atlas(root, atlas["test"], model_dir, fold_dir / "segment"),
            "epi_test_foreground_dice": _test_epi_foreground(
                bundle_lib.load_bundle(model_dir).networks["tissue"],
                label_maps.read_heads(epi_dir, epi["test"], sessions=False))}
  fileio.write_json(fold_dir / "result.json", record)
  return record


def run_fold(k: int, root: pathlib.Path, epi_dir: pathlib.Path, work: pathlib.Path,
             dsurqe: label_maps.Brain | None, log) -> dict:
  atlas, epi = _folds("mouse_t2_atlas")["folds"][k], _folds("mouse_epi")["folds"][k]
  if FLAGS.all_train:
    # The shipped network: every atlas mouse but fold k's validation mice; the
    # mouse_epi animals of the shipped split (its test animals 19-22 stay out:
    # the placers are measured on them).
    atlas = {**atlas, "train": sorted(atlas["train"] + atlas["test"]), "test": []}
    epi = fileio.read_json(REPO / "experiments" / "splits" / "mouse_epi_shipped.json")
  if FLAGS.model_only:
    return _model_only(k, root, epi_dir, work, atlas, epi)
  use_atlas = FLAGS.without != "mouse_t2_atlas"
  use_dsurqe = FLAGS.without != "dsurqe"
  brains = [_atlas_brain(root, m) for m in atlas["train"]] if use_atlas else []
  if use_dsurqe:
    brains.append(dsurqe)
  heads = label_maps.read_heads(epi_dir, epi["train"], sessions=True)
  parts = [label_maps.brain_slices(b, pixel_mm=PIXEL_MM, shape=SHAPE) for b in brains]
  parts += [label_maps.real_head_slices(h, pixel_mm=PIXEL_MM, shape=SHAPE) for h in heads]
  parts.append(label_maps.composite_heads(heads, brains, copies=FLAGS.copies,
                                          pixel_mm=PIXEL_MM, shape=SHAPE, seed=FLAGS.seed + k))
  slices = label_maps.concat(parts)
  options = dataclasses.replace(tissue_synth.OPTIONS, p_real=FLAGS.p_real)
  epochs = FLAGS.epochs
  steps = FLAGS.epochs * (len(slices) // FLAGS.batch_size)
  if FLAGS.mode == "real":
    keep = slices.has_image
    slices = label_maps.SliceSet(**{f: getattr(slices, f)[keep] for f in (
        "labels", "target", "image", "has_image", "zoom", "subject")})
    options = dataclasses.replace(tissue_synth.OPTIONS, p_real=1.0)
    # The same budget in steps as the synthesis run of this fold.
    epochs = -(-steps // (len(slices) // FLAGS.batch_size))
  if use_atlas:
    val = _val_sets([_atlas_brain(root, m) for m in atlas["val"]],
                    label_maps.read_heads(epi_dir, epi["val"], sessions=False))
  else:
    # No tissue truth left to select on (DSURQE trains): the last epoch is kept.
    log("no tissue validation data without mouse_t2_atlas: the last epoch is kept")
    val = []
  log(f"fold {k}: {len(slices)} training slices ({int(slices.has_image.sum())} with a real "
      f"image) from {len(brains)} brains and {len(heads)} heads; mode {FLAGS.mode}")
  config = tissue_synth.synth_config(features=FLAGS.features, epochs=epochs,
                                     batch_size=FLAGS.batch_size, seed=FLAGS.seed)
  fold_dir = work / f"fold{k}"
  split = {"mouse_t2_atlas": atlas, "mouse_epi": epi, "without": FLAGS.without}
  result = tissue_synth.train(slices, val, config, options,
                              checkpoint_dir=fold_dir / "checkpoints", split=split,
                              resume=True, log=log)
  bundle = bundle_lib.load_bundle(FLAGS.base_model)
  bundle.networks["tissue"] = bundle_lib.Network(config, result.params, {
      "kept": "best validation score", "epoch": result.kept_epoch,
      "score": result.best_score, "trained_on": "label maps (rodent_gbp.training.tissue_synth)",
      "mode": FLAGS.mode, "without": FLAGS.without, "split": split,
      "tissue_definition": tissue_table.describe()})
  model_dir = bundle_lib.save_bundle(fold_dir / "model", bundle)
  record = {"fold": k, "mode": FLAGS.mode, "without": FLAGS.without, "split": split,
            "command": "python experiments/tissue_synth.py " + " ".join(sys.argv[1:]),
            "training_slices": len(slices), "kept_epoch": result.kept_epoch,
            "best_score": result.best_score, "history": result.history,
            "options": dataclasses.asdict(options), "config": config.to_dict()}
  if FLAGS.test:
    if atlas["test"] and (use_atlas or FLAGS.without == "mouse_t2_atlas"):
      record["atlas_test"] = _test_atlas(root, atlas["test"], model_dir, fold_dir / "segment")
    if FLAGS.without == "mouse_t2_atlas":
      record["atlas_test"] = _test_atlas(root, atlas["test"] + atlas["train"] + atlas["val"],
                                         model_dir, fold_dir / "segment")
    if FLAGS.without == "dsurqe":
      record["dsurqe_test"] = _test_dsurqe(root, model_dir, fold_dir / "segment_dsurqe")
    if epi["test"]:
      record["epi_test_foreground_dice"] = _test_epi_foreground(
          result, label_maps.read_heads(epi_dir, epi["test"], sessions=False))
  fileio.write_json(fold_dir / "result.json", record)
  return record


def main(argv):
  cli.begin(argv)

  def log(line: str) -> None:
    print(line, flush=True)

  root = pathlib.Path(FLAGS.data_root)
  work = pathlib.Path(FLAGS.workdir)
  epi_dir = cache.prepare("mouse_epi", data_root=root / "mouse-epi",
                          cache_dir=FLAGS.data_cache,
                          resolution="native", log=log)
  image, structures, affine = mouse_dsurqe.read_dsurqe(root / "mouse-dsurqe")[:3]
  dsurqe = label_maps.dsurqe_brain(image, structures, affine)
  for k in FLAGS.folds:
    rec = run_fold(int(k), root, epi_dir, work, dsurqe, log)
    log(json.dumps({key: rec[key] for key in rec if key.endswith("test")}, default=str)[:2000])


if __name__ == "__main__":
  app.run(main)
