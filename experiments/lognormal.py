"""Tests the log-normal hypothesis of the GBP gradient image (paper Fig. 5).

  python experiments/lognormal.py --checkpoint=<workdir>/checkpoints \
      --data_dir=<dataset> --out_dir=<folder>

Writes lognormal.json, lognormal.md and the Fig. 5 / Q-Q figures.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp.studies import lognormal

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Trained model folder.", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset root; default <workdir>/data beside the checkpoint.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", 20000, "Pixels subsampled for pooled fits.")
_SEED = flags.DEFINE_integer("seed", 0, "Random-network init and subsample seed.")


@cli.run_main
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  lognormal.run_experiment(_CHECKPOINT.value, _OUT_DIR.value, data_dir=_DATA_DIR.value,
                           max_pixels=_MAX_PIXELS.value, seed=_SEED.value)


if __name__ == "__main__":
  app.run(main)
