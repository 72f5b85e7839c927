"""The saliency sanity check: cascading randomisation of the tissue network.

  python experiments/sanity_check.py --model_dir=<workdir>/model \
      [--data_dir=<dataset>] [--animals=03,05] [--methods=guided,vanilla,deconvnet] \
      [--scores=probability,logit] [--steps=0] [--seed=0] --out_dir=<folder>

Layers re-initialised cumulatively from the output down (Adebayo et al. 2018);
per step, method and score the Spearman rank correlation of the gradient
image with the trained network's (mean over slices with brain), and the brain
DSC of the placers gbp and gbp_improved after full randomisation. Writes
sanity.json, sanity.md and sanity_maps.png; see ``rodent_gbp.studies.sanity``.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp.studies import sanity

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Model bundle folder "
                                 "(<workdir>/model of the main job).", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset root; default <model_dir>/../data.")
_ANIMALS = flags.DEFINE_list("animals", [], "Animal ids; default the bundle's test animals.")
_METHODS = flags.DEFINE_list("methods", list(sanity.METHODS), "Saliency methods.")
_SCORES = flags.DEFINE_list("scores", list(sanity.SCORES),
                            "Saliency targets: probability (the paper's), logit.")
_STEPS = flags.DEFINE_integer("steps", 0, "Depths evaluated (0: every layer; the trained "
                              "network and full randomisation always).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the re-initialisation.")
_PLACERS = flags.DEFINE_bool("placers", True, "Brain DSC of gbp and gbp_improved.")
_FIGURE = flags.DEFINE_bool("figure", True, "Write sanity_maps.png.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)


@cli.run_main
def main(argv):
  cli.begin(argv)
  sanity.run(_MODEL_DIR.value, _OUT_DIR.value, data_dir=_DATA_DIR.value,
             animals=_ANIMALS.value or None, methods=_METHODS.value, scores=_SCORES.value,
             steps=_STEPS.value, seed=_SEED.value, placers=_PLACERS.value,
             figure=_FIGURE.value, log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
