"""Cross-validation by animal of the main job on a public set, fold by fold.

  python experiments/cross_validate.py --dataset mouse_epi \\
      --data_root ../shared/data/mouse-epi --workdir runs/cv_epi
  python experiments/cross_validate.py --dataset mouse_t2_atlas \\
      --data_root ../shared/data/mouse-t2-atlas --workdir runs/cv_t2

The folds come from the committed fold file (default
``experiments/folds/<dataset>.json``; ``--write_folds`` makes one from the
animals of the converted set instead, and refuses to overwrite). Each fold runs
``experiments/reproduce.py``'s job into ``<workdir>/fold<k>/``; a fold whose
``results.json`` exists is skipped, so a stopped run resumes where it stopped.
Writes ``<workdir>/cv.json`` and ``cv.md`` (mean +- sd over folds).

The folds' config is --config with each --set FIELD=VALUE applied (--epochs,
--max_train_seconds and --displacement are short for --set of that field).
"""

import pathlib

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import data
from rodent_gbp import datasets
from rodent_gbp import fileio
from rodent_gbp.errors import UsageError
from rodent_gbp.studies import crossval
from rodent_gbp import job

_FOLDS_DIR = pathlib.Path(__file__).resolve().parent / "folds"

_DATASET = flags.DEFINE_enum("dataset", None, ["mouse_epi", "mouse_t2_atlas"],
                             "The public set.", required=True)
_DATA_ROOT = flags.DEFINE_string(
    "data_root", None, "A local copy in the source's own layout (e.g. "
    "../shared/data/mouse-epi); default: download the set.")
_DATA_CACHE = flags.DEFINE_string("data_cache", None, "Where converted sets are kept "
                                  "(default $RODENT_GBP_DATA_CACHE or ~/.cache/rodent_gbp).")
_RESOLUTION = flags.DEFINE_enum("resolution", "paper", list(datasets.RESOLUTIONS),
                                "mouse_t2_atlas grid: paper (0.3 mm in-plane), fine (0.15 mm "
                                "in-plane), both every third coronal slice; native.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder (fold<k>/ of each "
                                "fold's main job, cv.json, cv.md).", required=True)
_FOLDS = flags.DEFINE_string("folds", None, "Fold file (default "
                             "experiments/folds/<dataset>.json).")
_WRITE_FOLDS = flags.DEFINE_bool("write_folds", False, "Write a new fold file from the "
                                 "converted set's animals (--folds, or the default path) "
                                 "and stop; refuses to overwrite.")
_K = flags.DEFINE_integer("k", 5, "Folds, with --write_folds.")
_FOLD_SEED = flags.DEFINE_integer("fold_seed", 0, "Seed of the folds, with --write_folds.")
_ONLY = flags.DEFINE_list("only", None, "Run only these fold numbers (e.g. 0,1).")
cli.define_config_flags(flags.FLAGS, fields=[
    "epochs", cli.FieldFlag("max_train_seconds", "max_train_seconds", "Per fold"),
    cli.FieldFlag("displacement", "displacement", "The paper's placement (gbp): one "
                  "displacement per slice or per acquisition")])
_FIGURES = flags.DEFINE_bool("figures", True, "Write each fold's figures.")


def _log(msg: str) -> None:
  print(msg, flush=True)


@cli.run_main
def main(argv):
  cli.begin(argv)
  config = cli.config_from_flags(flags.FLAGS)
  folds_path = pathlib.Path(_FOLDS.value or _FOLDS_DIR / f"{_DATASET.value}.json")
  folder = datasets.prepare(_DATASET.value, data_root=_DATA_ROOT.value,
                            cache_dir=_DATA_CACHE.value, resolution=_RESOLUTION.value, log=_log)
  if _WRITE_FOLDS.value:
    if folds_path.exists():
      raise UsageError(f"{folds_path} exists; remove it first to make new folds")
    ids = [v.animal_id for v in data.load_dataset(folder)]
    fileio.write_json(folds_path, crossval.fold_file(_DATASET.value, ids, k=_K.value,
                                                     seed=_FOLD_SEED.value))
    _log(f"wrote {folds_path}")
    return
  folds = crossval.read_fold_file(folds_path)
  if folds.get("dataset") != _DATASET.value:
    raise UsageError(f"{folds_path} is a fold file of {folds.get('dataset')!r}, not "
                     f"{_DATASET.value!r}")
  only = None if _ONLY.value is None else [int(x) for x in _ONLY.value]

  def run_fold(split, fold_dir):
    job.run(config, fold_dir, data_dir=folder, split=split, figures=_FIGURES.value,
            log=_log)

  workdir = pathlib.Path(_WORKDIR.value)
  crossval.run(folds, workdir, run_fold=run_fold, only=only, log=_log)
  done = [d for d in (workdir / f"fold{i}" for i in range(len(folds["folds"])))
          if (d / "results.json").is_file()]
  if len(done) < len(folds["folds"]):
    _log(f"{len(done)} of {len(folds['folds'])} folds done; run again without --only "
         "to finish")
    return
  cv = crossval.summarise([fileio.read_json(d / "results.json") for d in done])
  cv["fold_file"] = str(folds_path)
  fileio.write_json(workdir / "cv.json", cv)
  text = crossval.markdown(cv)
  fileio.atomic_write_text(workdir / "cv.md", text)
  _log(text)


if __name__ == "__main__":
  app.run(main)
