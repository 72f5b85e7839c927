"""Refinement of the placed brain mask to the individual brain, with ablations.

  python experiments/refine_study.py --model_dir=<fold>/model \
      --data_dir=<converted mouse_epi folder> \
      (--split_file=<split.json> | --fold=0 [--folds=experiments/folds/mouse_epi.json]) \
      [--seed=0] [--figure] --out_dir=<folder>
  python experiments/refine_study.py --pool=<fold0>,<fold1>,... \
      [--supervised_csv=experiments/results/extraction_cv_mouse_epi/per_animal.csv] \
      --out_dir=<folder>

``gbp_improved``'s chosen mask is refined (``rodent_gbp.refine``) with three
evidence images: the trained network's GBP image, the raw intensity's
gradient magnitude and a fully randomised network's GBP image; each one's
settings are chosen on the split's validation animals, then the test animals
are reported beside gbp, gbp_improved, the shipped ``gbp_refined`` and the
oracle (brain DSC per animal). Without --split_file or --fold the bundle's
own split is used. Writes refine.json, refine.md and refine_slices.png; see
``rodent_gbp.studies.refine_study``. --pool pools finished folds over their
test animals (refine_pooled.json, refine_pooled.md).
"""

import pathlib

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp.errors import UsageError
from rodent_gbp.studies import crossval
from rodent_gbp.studies import refine_study

_HERE = pathlib.Path(__file__).resolve().parent

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Model bundle folder (not with --pool).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted dataset folder; default "
                                "<model_dir>/../data.")
_SPLIT_FILE = flags.DEFINE_string("split_file", None, "JSON {train, val, test} animal ids.")
_FOLD = flags.DEFINE_integer("fold", None, "Use fold k of --folds as the split.")
_FOLDS = flags.DEFINE_string("folds", str(_HERE / "folds" / "mouse_epi.json"),
                             "Fold file of --fold.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the randomised network.")
_FIGURE = flags.DEFINE_bool("figure", True, "Write refine_slices.png.")
_POOL = flags.DEFINE_list("pool", [], "Instead of a study: pool these folds' refine.json "
                          "files (or their folders) over their test animals.")
_SUPERVISED_CSV = flags.DEFINE_string("supervised_csv", None, "With --pool: a per_animal.csv "
                                      "(animal, brain_dsc) of the supervised placer to add.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)


@cli.run_main
def main(argv):
  cli.begin(argv)
  if _POOL.value:
    if _MODEL_DIR.value is not None:
      raise UsageError("--pool reads finished reports: leave out --model_dir")
    refine_study.pool_files(_POOL.value, _OUT_DIR.value, supervised_csv=_SUPERVISED_CSV.value,
                            log=lambda msg: print(msg, flush=True))
    return
  if _MODEL_DIR.value is None:
    raise UsageError("give --model_dir (a model bundle) or --pool (finished reports)")
  split, source = crossval.split_from(_SPLIT_FILE.value, _FOLD.value, _FOLDS.value)
  if split is None:
    source = "the bundle's split"
  refine_study.run(_MODEL_DIR.value, _OUT_DIR.value, data_dir=_DATA_DIR.value, split=split,
                   split_source=source, seed=_SEED.value, figure=_FIGURE.value,
                   log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
