"""Trains the supervised brain extractor and writes it into a model bundle.

  python experiments/train_extractor.py \\
      --data_dir /work/cache/mouse_epi-native-c103-m0afe45e3e55f-f5d2a5c4b \\
      --fold 0 --model_dir runs/extractor      # a new extractor-only bundle
  python experiments/train_extractor.py --data_dir DIR --split_file split.json \\
      --model_dir runs/main/model               # adds 'extractor' to an existing bundle

The U-Net (2 classes) is trained on raw normalised slices of every session of
the training animals against their brain masks, with the on-device
augmentation of ``rodent_gbp.training.augment``, for a fixed number of epochs; the
epoch with the best brain Dice on the validation animals (session 1) is kept
(``rodent_gbp.training.extraction``). The split comes from ``--split_file`` (JSON
``{"train", "val", "test"}``) or fold ``--fold`` of ``--folds``. Writes the
model folder ``--model_dir``: where it holds a bundle already (``bundle.json``),
the extractor is added to it (replacing an extractor there; the bundle's voxel
size, slice shape and normalisation must match), else a new extractor-only
bundle; and ``extractor_history.json`` beside ``bundle.json``.

The extractor's config is built from the flags below (--features, --epochs,
...); --set FIELD=VALUE sets any other field of it (e.g. --set
clip_grad_norm=0).
"""

import pathlib

from absl import app
from absl import flags

from rodent_gbp import bundle as bundle_lib
from rodent_gbp import cli
from rodent_gbp import fileio
from rodent_gbp.training import extraction
from rodent_gbp.errors import UsageError
from rodent_gbp.studies import crossval
from rodent_gbp import report

_HERE = pathlib.Path(__file__).resolve().parent

_DATA_DIR = flags.DEFINE_string("data_dir", None, "A converted data folder "
                                "(<animal>/image.nii.gz, brainmask.nii.gz, ...).",
                                required=True)
_SPLIT_FILE = flags.DEFINE_string("split_file", None, "JSON {train, val, test} animal ids.")
_FOLD = flags.DEFINE_integer("fold", None, "Use fold k of --folds as the split.")
_FOLDS = flags.DEFINE_string("folds", str(_HERE / "folds" / "mouse_epi.json"), "Fold file "
                             "of --fold.")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "The model folder (bundle) to write: "
                                 "an existing bundle gets the extractor added (or "
                                 "replaced), else a new extractor-only bundle is written.",
                                 required=True)
cli.define_extractor_config_flags(flags.FLAGS)


def _log(msg: str) -> None:
  print(msg, flush=True)


@cli.run_main
def main(argv):
  cli.begin(argv)
  if (_SPLIT_FILE.value is None) == (_FOLD.value is None):
    raise UsageError("give exactly one of --split_file and --fold")
  folder = pathlib.Path(_MODEL_DIR.value)
  existing = (folder / bundle_lib.BUNDLE_FILE).is_file()
  split, source = crossval.split_from(_SPLIT_FILE.value, _FOLD.value, _FOLDS.value)
  config, options = cli.extractor_config_from_flags(flags.FLAGS)
  vols = extraction.load_split(_DATA_DIR.value, split, log=_log,
                              source=source)
  result = extraction.train_extractor(vols["train"], vols["val"], config, options=options,
                                      log=_log)
  info = {"data_dir": str(_DATA_DIR.value), "augment": dict(options.__dict__),
          "provenance": report.provenance(config.seed)}
  if existing:
    extraction.add_to_bundle(folder, result, vols["train"], split, **info)
  else:
    folder = bundle_lib.save_bundle(folder, extraction.make_bundle(
        result, vols["train"], split, **info))
  fileio.write_json(folder / "extractor_history.json", {
      "split": split, "config": config.to_dict(), "history": result.history,
      "kept_epoch": result.kept_epoch, "val_brain_dsc": result.best_val_dice})
  _log(f"wrote {folder} (extractor kept at epoch {result.kept_epoch}, validation brain "
       f"Dice {result.best_val_dice:.4f})")


if __name__ == "__main__":
  app.run(main)
