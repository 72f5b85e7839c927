"""Builds the mouse_epi model folder (installed with the package up to 0.2.0).

  python experiments/ship_model.py --data_root ../shared/data/mouse-epi \
      --workdir runs/ship --model_dir runs/mouse_epi_model

Its extractor is the one of the installed ``rodent_gbp/models/mouse``
(``experiments/ship_tissue.py --base_model runs/mouse_epi_model``).

The main job on mouse-epi animals 01-16 (validation 17-18, test 19-22;
``experiments/splits/mouse_epi_shipped.json``), then the supervised brain
extractor on the same animals, into one bundle with MODEL_CARD.md; see
``rodent_gbp.studies.ship``.
"""

import pathlib
import sys

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp.studies import ship

_HERE = pathlib.Path(__file__).resolve().parent
_DATA_ROOT = flags.DEFINE_string("data_root", None, "Local copy of the mouse-epi set "
                                 "in its source's layout.", required=True)
_DATA_CACHE = flags.DEFINE_string("data_cache", None, "Where the converted set is kept "
                                  "(default: under --workdir).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder (<workdir>/tissue: the "
                               "main job's run).", required=True)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "The model folder to write (replaced).",
                                 required=True)
_SPLIT_FILE = flags.DEFINE_string("split_file", str(_HERE / "splits" / "mouse_epi_shipped.json"),
                                  "JSON {train, val, test} animal ids.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of both networks.")


@cli.run_main
def main(argv):
  cli.begin(argv)
  ship.build(_DATA_ROOT.value, _WORKDIR.value, _MODEL_DIR.value, split_file=_SPLIT_FILE.value,
             data_cache=_DATA_CACHE.value, seed=_SEED.value,
             command="python experiments/ship_model.py " + " ".join(sys.argv[1:]),
             log=lambda m: print(m, flush=True))


if __name__ == "__main__":
  app.run(main)
