"""Chooses the improved placement's settings on a model's validation animals.

    python experiments/select_improved.py --model_dir runs/main/model --out_dir runs/main/selection

Scores every setting of ``studies.improved.SELECTION_GRID`` on the validation
animals of the bundle's split, and reports the chosen and the shipped reading
(``placement.IMPROVED``) on its test animals.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import improved

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A model bundle folder (<workdir>/model).",
                                 required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset folder; default <model_dir>/../data.")
cli.define_distributed_flags()


@cli.run_main
def main(argv):
  cli.begin(argv)
  improved.run_selection(_MODEL_DIR.value, _OUT_DIR.value, data_dir=_DATA_DIR.value,
                         log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
