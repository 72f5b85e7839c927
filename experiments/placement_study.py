"""Placement study: robustness curves, saliency sanity check, k-fold CV (issue 9).

  # a modest run (~10-15 min on 2 CPU cores) on the main job's model:
  python experiments/placement_study.py --out_dir runs/study \
      --model_dir runs/main/model --folds 3 --epochs 2 --config default
  # a tiny run (~1 min): runs its own smoke main job first
  python experiments/placement_study.py --out_dir /tmp/study --config smoke \
      --shifts 0,8,16 --alphas 1,3 --cascade_steps 3 --folds 2 --epochs 1

Writes placement_study.json, placement_ablation.md (every reading, vanilla
and deconvnet included) and robustness.png, cascade.png, cross_validation.png
into --out_dir; see ``rodent_gbp.studies.placement_study``. The models trained
here (its own without --model_dir, the folds) use --config with each --set
FIELD=VALUE applied (--epochs is short for --set epochs=N).
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp.studies import placement_study

_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Model bundle folder (<workdir>/model of the main job); default: "
    "run the main job with --config into <out_dir>/main first.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset folder; default <model_dir>/../data, or the phantom "
    "written into <out_dir>/data when the study trains its own model.")
cli.define_config_flags(
    flags.FLAGS, config_help="The configuration of the models trained here (folds, own "
    "model).", fields=["epochs"])
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
  cli.begin(argv)  # also keeps the checkpoint library's chatter of the folds out
  config = cli.config_from_flags(flags.FLAGS)
  # The study records the epochs it was asked for (None: the config's).
  epochs = config.epochs if "epochs" in cli.config_changes(flags.FLAGS) else None
  placement_study.run_study(
      _OUT_DIR.value, model_dir=_MODEL_DIR.value, data_dir=_DATA_DIR.value,
      config=config, epochs=epochs, folds=_FOLDS.value,
      shifts=_SHIFTS.value, alphas=_ALPHAS.value, cascade_steps=_CASCADE.value,
      max_test_animals=_MAX_TEST.value, seed=_SEED.value, ablation=_ABLATION.value,
      log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
