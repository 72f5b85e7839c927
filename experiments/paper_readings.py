"""The paper's placement under every reading the paper leaves open (docs/design.md#readings-the-paper-leaves-open).

  # the full grid on the main job's model (~2 min on 2 CPU cores):
  python experiments/paper_readings.py --model_dir runs/main/model \
      --out_dir runs/readings
  # a few readings:
  python experiments/paper_readings.py --model_dir runs/main/model \
      --data_dir runs/main/data --out_dir /tmp/readings \
      --class_sets tissue,gm --centers 1,2 --widths 0.5 --templates gradient,mask

  # pool finished folds (one search per fold model) beside their ceilings:
  python experiments/paper_readings.py --out_dir runs/readings_pooled \
      --pool runs/readings_fold0,runs/readings_fold1 \
      --ceilings runs/cv_epi/fold0/per_animal.csv,runs/cv_epi/fold1/per_animal.csv

Ranks readings on the animals that are neither test animals nor the reference
and reports the chosen reading on the test animals. Writes readings.json,
readings.md and readings.png into --out_dir; see ``rodent_gbp.studies.readings``.
--pool pools finished searches over their test animals, beside the one-reference
ceiling of each animal from the cross-validation's per_animal.csv files
(readings_pooled.json, readings_pooled.md).
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp.errors import UsageError
from rodent_gbp.studies import readings

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Model bundle folder "
                                 "(<workdir>/model of the main job); not with --pool.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset folder the model was trained "
                                "on; default <model_dir>/../data.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_CLASS_SETS = flags.DEFINE_list("class_sets", list(readings.CLASS_SETS),
                                "Gradient images: " + ", ".join(readings.CLASS_SETS) + ".")
_CENTERS = flags.DEFINE_list("centers", [f"{c:g}" for c in readings.CENTERS],
                             "Eq. 1 centres (paper: 2).")
_WIDTHS = flags.DEFINE_list("widths", [f"{w:g}" for w in readings.WIDTHS],
                            "Eq. 1 widths (paper: 0.5).")
_POOL = flags.DEFINE_list("pool", [], "Instead of a search: pool these folds' readings.json "
                          "(files or their folders).")
_CEILINGS = flags.DEFINE_list("ceilings", [], "With --pool: per_animal.csv files with the "
                              "column gbp_ceiling_brain_dsc covering every pooled test animal.")
_TEMPLATES = flags.DEFINE_list("templates", list(readings.TEMPLATES),
                               "Templates: " + ", ".join(readings.TEMPLATES) + ".")
_DISPLACEMENTS = flags.DEFINE_list(
    "displacements", list(readings.DISPLACEMENTS), "Whose argmax: slice (each slice's own) "
    "or volume (one per acquisition, from the sum of its slices' correlation maps).")


@cli.run_main
def main(argv):
  cli.begin(argv)
  if _POOL.value:
    if _MODEL_DIR.value:
      raise UsageError("--pool reads finished searches: leave out --model_dir")
    if not _CEILINGS.value:
      raise UsageError("--pool needs --ceilings (the folds' per_animal.csv files)")
    readings.pool_files(_POOL.value, _CEILINGS.value, _OUT_DIR.value,
                        log=lambda msg: print(msg, flush=True))
    return
  if not _MODEL_DIR.value:
    raise UsageError("give --model_dir (a model bundle) or --pool (finished searches)")
  grid = readings.grid(_CLASS_SETS.value, _CENTERS.value, _WIDTHS.value, _TEMPLATES.value,
                        _DISPLACEMENTS.value)
  readings.run(_MODEL_DIR.value, _OUT_DIR.value, data_dir=_DATA_DIR.value, readings=grid,
               log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
