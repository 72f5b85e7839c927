"""Trains the segmentation U-Net (paper section 3.1).

  python experiments/train.py --workdir runs/train --config default
  python experiments/train.py --workdir runs/train --config default --resume
  python experiments/train.py --workdir runs/lr --set learning_rate=0.01 --set nesterov=false

The config is --config (a name of configs.get_config) with each --set
FIELD=VALUE applied; --epochs, --learning_rate, --batch_size, --clip_grad_norm
and --saliency_score are short for --set of that field.

Without --data_dir the phantom is generated into <workdir>/data. Checkpoints,
config.json, split.json and normalisation.json go to <workdir>/checkpoints.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp.training import tissue

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder (checkpoints, the "
                                "phantom when no --data_dir is given).", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset root of <animal>/{image,labels,brainmask}.nii.gz; "
    "default: generate the phantom into <workdir>/data.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue from <workdir>/checkpoints/latest.")
cli.define_config_flags(flags.FLAGS, fields=[
    "epochs", "learning_rate", "batch_size",
    cli.FieldFlag("clip_grad_norm", "clip_grad_norm", "Global gradient norm; 0: no clipping"),
    cli.FieldFlag("saliency_score", "saliency_score", "Kept in the checkpoint's config")])
cli.define_distributed_flags()


@cli.run_main  # expected errors: one "error: ..." line, exit code 2
def main(argv):
  cli.begin(argv)
  tissue.train_and_evaluate(cli.config_from_flags(flags.FLAGS), _WORKDIR.value,
                            data_dir=_DATA_DIR.value, resume=_RESUME.value,
                            log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
