"""Trains the segmentation U-Net (paper section 3.1).

  python experiments/train.py --workdir runs/train --config default
  python experiments/train.py --workdir runs/train --config default --resume

Without --data_dir the phantom is generated into <workdir>/data. Checkpoints,
config.json, split.json and normalisation.json go to <workdir>/checkpoints.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import configs
from rodent_gbp.training import tissue

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset root of <animal>/{image,labels,brainmask}.nii.gz; "
    "default: generate the phantom into <workdir>/data.")
_CONFIG = flags.DEFINE_enum("config", "default", sorted(configs.CONFIGS), "Named config.")
_RESUME = flags.DEFINE_bool("resume", False, "Continue from <workdir>/checkpoints/latest.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Override config.epochs.")
_LR = flags.DEFINE_float("learning_rate", None, "Override config.learning_rate.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Override config.batch_size.")
_CLIP = flags.DEFINE_float("clip_grad_norm", None,
                           "Override config.clip_grad_norm (global gradient norm; 0: no clipping).")
_SCORE = flags.DEFINE_enum("saliency_score", None, list(configs.SALIENCY_SCORES),
                           "Override config.saliency_score (kept in the checkpoint's config).")
cli.define_distributed_flags()


@cli.run_main  # expected errors: one "error: ..." line, exit code 2
def main(argv):
  cli.begin(argv)
  config = configs.override(configs.get_config(_CONFIG.value), epochs=_EPOCHS.value,
                            learning_rate=_LR.value, batch_size=_BATCH.value,
                            clip_grad_norm=_CLIP.value, saliency_score=_SCORE.value)
  tissue.train_and_evaluate(config, _WORKDIR.value, data_dir=_DATA_DIR.value,
                           resume=_RESUME.value,
                           log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
