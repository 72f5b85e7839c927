"""Cross-validation by animal of the supervised brain extractor, paired with the placers.

  python experiments/extraction_cv.py \\
      --data_dir runs/data/mouse_epi-native-... \\
      --workdir runs/extraction_cv

For each fold of the fold file (default ``experiments/folds/mouse_epi.json``):
train the extractor on the training animals (every session), keep the epoch
best on the validation animals, extract session 1 of the test animals; brain
Dice, HD95, Dice by slice position, QC and GBP saliency figures
(``rodent_gbp.studies.extraction_cv``). A fold whose ``results.json`` exists is
skipped (resumable). When every fold is done, writes ``cv.json``, ``cv.md`` and
``per_animal.csv`` paired with the committed per-animal brain Dice of the other
placers (``--baseline_dir``).

The extractor's config is built from the flags below (--features, --epochs,
...); --set FIELD=VALUE sets any other field of it.
"""

import pathlib
import sys

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import datasets
from rodent_gbp import fileio
from rodent_gbp.studies import crossval
from rodent_gbp.studies import extraction_cv

_HERE = pathlib.Path(__file__).resolve().parent

_DATA_DIR = flags.DEFINE_string("data_dir", None, "A converted mouse_epi folder (e.g. "
                                "/work/cache/mouse_epi-native-*); default: --data_root "
                                "converted through --data_cache.")
_DATA_ROOT = flags.DEFINE_string("data_root", None, "A local copy of mouse-epi in the "
                                 "source's layout, when --data_dir is not given.")
_DATA_CACHE = flags.DEFINE_string("data_cache", None, "Where converted sets are kept.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder (fold<k>/, cv.json, "
                                "cv.md, per_animal.csv).", required=True)
_FOLDS = flags.DEFINE_string("folds", str(_HERE / "folds" / "mouse_epi.json"), "Fold file.")
_BASELINE_DIR = flags.DEFINE_string("baseline_dir", str(_HERE / "results" / "cv_mouse_epi"),
                                    "Folder of the placers' committed fold<k>/per_animal.csv.")
_ONLY = flags.DEFINE_list("only", None, "Run only these fold numbers (e.g. 0,1).")
cli.define_extractor_config_flags(flags.FLAGS)
_FIGURES = flags.DEFINE_bool("figures", True, "Write QC and saliency figures.")


def _log(msg: str) -> None:
  print(msg, flush=True)


@cli.run_main
def main(argv):
  cli.begin(argv)
  folder = _DATA_DIR.value or datasets.prepare(
      "mouse_epi", data_root=_DATA_ROOT.value, cache_dir=_DATA_CACHE.value, log=_log)
  folds = crossval.read_fold_file(_FOLDS.value)
  config, options = cli.extractor_config_from_flags(flags.FLAGS)
  only = None if _ONLY.value is None else [int(x) for x in _ONLY.value]
  workdir = pathlib.Path(_WORKDIR.value)

  def run_fold(split, fold_dir):
    extraction_cv.run_fold(split, fold_dir, data_dir=folder, config=config, options=options,
                           figures=_FIGURES.value, log=_log)

  crossval.run(folds, workdir, run_fold=run_fold, only=only, log=_log)
  dirs = [workdir / f"fold{i}" for i in range(len(folds["folds"]))]
  if not all((d / "results.json").is_file() for d in dirs):
    _log("not every fold is done; run again without --only to finish")
    return
  baselines = extraction_cv.read_baselines(pathlib.Path(_BASELINE_DIR.value), len(dirs))
  cv = extraction_cv.summarise(dirs, baselines)
  cv["fold_file"] = _FOLDS.value
  cv["data_dir"] = str(folder)
  fileio.write_json(workdir / "cv.json", cv)
  extraction_cv.write_csv(workdir / "per_animal.csv",
                          [{"animal": a, **m} for a, m in cv["per_animal"].items()])
  text = extraction_cv.markdown(cv, command="python experiments/extraction_cv.py "
                                + " ".join(sys.argv[1:]))
  fileio.atomic_write_text(workdir / "cv.md", text)
  if _FIGURES.value:
    extraction_cv.summary_figure(workdir / "summary.png", cv)
  _log(text)


if __name__ == "__main__":
  app.run(main)
