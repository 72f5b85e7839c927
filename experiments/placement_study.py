"""Placement study: robustness curves, saliency sanity check, k-fold CV (issue 9).

  # a modest run (~10-15 min on 2 CPU cores) on the main job's model:
  python experiments/placement_study.py --out_dir runs/study \
      --checkpoint runs/main/model --folds 3 --epochs 2 --config default
  # a tiny run (~1 min): runs its own smoke main job first
  python experiments/placement_study.py --out_dir /tmp/study --config smoke \
      --shifts 0,8,16 --alphas 1,3 --cascade_steps 3 --folds 2 --epochs 1

Writes placement_study.json, placement_ablation.md (every reading, vanilla
and deconvnet included) and robustness.png, cascade.png, cross_validation.png
into --out_dir; see ``rodent_gbp.studies.placement_study``.
"""

from absl import app
from absl import flags
from absl import logging

from rodent_gbp import cli
from rodent_gbp import configs
from rodent_gbp.errors import UsageError
from rodent_gbp.studies import placement_study

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Model bundle folder (<workdir>/model of the main job); default: "
    "run the main job with --config into <out_dir>/main first.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset folder; default <checkpoint>/../data, or the phantom "
    "written into <out_dir>/data when the study trains its own model.")
_CONFIG = flags.DEFINE_enum("config", "default", sorted(configs.CONFIGS),
                            "Configuration of the models trained here (folds, own model).")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Overrides the config's epochs for training.")
_FOLDS = flags.DEFINE_integer("folds", 0, "Cross-validation folds over animals (0: skip).")
_SHIFTS = flags.DEFINE_list("shifts", ["0", "2", "4", "8", "12", "16"],
                            "Extra displacements (px) of the robustness curve.")
_ALPHAS = flags.DEFINE_list("alphas", ["0", "0.5", "1", "2", "3"],
                            "Scales of the non-brain intensity (1: as acquired).")
_CASCADE = flags.DEFINE_integer(
    "cascade_steps", 0, "Depths of the randomisation cascade (0: every layer, -1: skip).")
_MAX_TEST = flags.DEFINE_integer("max_test_animals", None, "Use only the first test animals.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the randomised parameters.")
_ABLATION = flags.DEFINE_bool("ablation", True, "Full ablation table (vanilla, deconvnet too).")


@cli.run_main
def main(argv):
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # checkpoint-library chatter of the folds
  placement_study.run_study(
      _OUT_DIR.value, checkpoint=_CHECKPOINT.value, data_dir=_DATA_DIR.value,
      config=configs.get_config(_CONFIG.value), epochs=_EPOCHS.value, folds=_FOLDS.value,
      shifts=_SHIFTS.value, alphas=_ALPHAS.value, cascade_steps=_CASCADE.value,
      max_test_animals=_MAX_TEST.value, seed=_SEED.value, ablation=_ABLATION.value,
      log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
