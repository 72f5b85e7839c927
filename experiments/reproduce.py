"""The main job: the paper's experiment end to end.

    python experiments/reproduce.py --workdir runs/main
    python experiments/reproduce.py --workdir runs/eval --checkpoint runs/main/checkpoints

Multi-host: the same command on every host, plus --coordinator_address,
--num_processes and --process_id (README, "Many devices, many hosts").
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import configs
from rodent_gbp.studies import reproduce

_WORKDIR = flags.DEFINE_string("workdir", "runs/main", "Output folder.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset folder (<animal>/image.nii.gz, labels.nii.gz, "
    "brainmask.nii.gz); default: write the synthetic phantom into the workdir.")
_CONFIG = flags.DEFINE_enum("config", "default", sorted(configs.CONFIGS),
                            "Named configuration.")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A trained model folder (e.g. runs/main/checkpoints); skips training.")
_SEED = flags.DEFINE_integer("seed", None, "Overrides the config's seed.")
_NOFIGURES = flags.DEFINE_bool("nofigs", False, "Skip the PNG figures.")
cli.define_distributed_flags()


@cli.run_main  # expected errors: one "error: ..." line, exit code 2
def main(argv):
  cli.begin(argv)
  reproduce.reproduce(configs.get_config(_CONFIG.value), _WORKDIR.value,
                      data_dir=_DATA_DIR.value, checkpoint=_CHECKPOINT.value,
                      seed=_SEED.value, figures=not _NOFIGURES.value,
                      log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
