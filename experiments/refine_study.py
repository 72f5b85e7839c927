"""Refinement of the placed brain mask to the individual brain, with ablations.

  python experiments/refine_study.py --checkpoint=<fold>/model \
      --data_dir=<converted mouse_epi folder> \
      (--split_file=<split.json> | --fold=0 [--folds=experiments/folds/mouse_epi.json]) \
      [--seed=0] [--figure] --out_dir=<folder>

``gbp_improved``'s chosen mask is refined (``rodent_gbp.refine``) with three
evidence images: the trained network's GBP image, the raw intensity's
gradient magnitude and a fully randomised network's GBP image; each one's
settings are chosen on the split's validation animals, then the test animals
are reported beside gbp, gbp_improved, the shipped ``gbp_refined`` and the
oracle (brain DSC per animal). Without --split_file or --fold the bundle's
own split is used. Writes refine.json, refine.md and refine_slices.png; see
``rodent_gbp.studies.refine_study``.
"""

import pathlib

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import fileio
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp.studies import crossval
from rodent_gbp.studies import refine_study

_HERE = pathlib.Path(__file__).resolve().parent

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Model bundle folder.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted dataset folder; default "
                                "<checkpoint>/../data.")
_SPLIT_FILE = flags.DEFINE_string("split_file", None, "JSON {train, val, test} animal ids.")
_FOLD = flags.DEFINE_integer("fold", None, "Use fold k of --folds as the split.")
_FOLDS = flags.DEFINE_string("folds", str(_HERE / "folds" / "mouse_epi.json"),
                             "Fold file of --fold.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the randomised network.")
_FIGURE = flags.DEFINE_bool("figure", True, "Write refine_slices.png.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)


def _split():
  """(split or None, where it came from)."""
  if _SPLIT_FILE.value is not None and _FOLD.value is not None:
    raise UsageError("give at most one of --split_file and --fold")
  if _SPLIT_FILE.value is not None:
    path = pathlib.Path(_SPLIT_FILE.value)
    if not path.is_file():
      raise DataError(f"{path}: split file not found")
    try:
      return fileio.read_json(path), str(path)
    except (ValueError, UnicodeDecodeError) as e:
      raise DataError(f"{path}: not a JSON split file ({e})") from None
  if _FOLD.value is not None:
    folds = crossval.read_fold_file(_FOLDS.value)["folds"]
    if not 0 <= _FOLD.value < len(folds):
      raise UsageError(f"--fold {_FOLD.value}: {_FOLDS.value} has folds 0..{len(folds) - 1}")
    return folds[_FOLD.value], f"{_FOLDS.value} fold {_FOLD.value}"
  return None, "the bundle's split"


@cli.run_main
def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {argv[1:]}")
  split, source = _split()
  refine_study.run(_CHECKPOINT.value, _OUT_DIR.value, data_dir=_DATA_DIR.value, split=split,
                   split_source=source, seed=_SEED.value, figure=_FIGURE.value,
                   log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
