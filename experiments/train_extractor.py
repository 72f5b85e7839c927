"""Trains the supervised brain extractor and writes it into a model bundle.

  python experiments/train_extractor.py \\
      --data_dir /work/cache/mouse_epi-native-c103-m0afe45e3e55f-f5d2a5c4b \\
      --fold 0 --out runs/extractor            # a new extractor-only bundle
  python experiments/train_extractor.py --data_dir DIR --split_file split.json \\
      --bundle runs/main/model                  # adds 'extractor' to an existing bundle

The U-Net (2 classes) is trained on raw normalised slices of every session of
the training animals against their brain masks, with the on-device
augmentation of ``rodent_gbp.training.augment``, for a fixed number of epochs; the
epoch with the best brain Dice on the validation animals (session 1) is kept
(``rodent_gbp.training.extraction``). The split comes from ``--split_file`` (JSON
``{"train", "val", "test"}``) or fold ``--fold`` of ``--folds``. Writes the
bundle folder (``--out``: new, extractor only; or ``--bundle``: an existing
bundle, whose voxel size, slice shape and normalisation must match) and
``extractor_history.json`` beside ``bundle.json``.
"""

import pathlib

from absl import app
from absl import flags

from rodent_gbp.training import flags as training_flags
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
_OUT = flags.DEFINE_string("out", None, "New bundle folder (extractor only).")
_BUNDLE = flags.DEFINE_string("bundle", None, "Existing bundle folder to add the "
                              "extractor to.")
training_flags.define_extractor_flags(flags.FLAGS)


def _log(msg: str) -> None:
  print(msg, flush=True)


@cli.run_main
def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {argv[1:]}")
  if (_OUT.value is None) == (_BUNDLE.value is None):
    raise UsageError("give exactly one of --out (a new bundle) and --bundle (an existing one)")
  if _OUT.value is not None and (pathlib.Path(_OUT.value) / bundle_lib.BUNDLE_FILE).exists():
    raise UsageError(f"{_OUT.value} holds a bundle already; use --bundle {_OUT.value} to "
                     "replace its extractor")
  if (_SPLIT_FILE.value is None) == (_FOLD.value is None):
    raise UsageError("give exactly one of --split_file and --fold")
  split, source = crossval.split_from(_SPLIT_FILE.value, _FOLD.value, _FOLDS.value)
  config, options = training_flags.extractor_settings(flags.FLAGS)
  vols = extraction.load_split(_DATA_DIR.value, split, log=_log,
                              source=source)
  result = extraction.train_extractor(vols["train"], vols["val"], config, options=options,
                                      log=_log)
  info = {"data_dir": str(_DATA_DIR.value), "augment": dict(options.__dict__),
          "provenance": report.provenance(config.seed)}
  if _OUT.value is not None:
    folder = bundle_lib.save_bundle(_OUT.value, extraction.make_bundle(
        result, vols["train"], split, **info))
  else:
    folder = pathlib.Path(_BUNDLE.value)
    extraction.add_to_bundle(folder, result, vols["train"], split, **info)
  fileio.write_json(folder / "extractor_history.json", {
      "split": split, "config": config.to_dict(), "history": result.history,
      "kept_epoch": result.kept_epoch, "val_brain_dsc": result.best_val_dice})
  _log(f"wrote {folder} (extractor kept at epoch {result.kept_epoch}, validation brain "
       f"Dice {result.best_val_dice:.4f})")


if __name__ == "__main__":
  app.run(main)
