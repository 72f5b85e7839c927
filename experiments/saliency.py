"""Per-class saliency maps of a trained U-Net, and of a translated input (Figs. 2-3).

  python experiments/saliency.py --model_dir=<workdir>/model \
      [--data_dir=<dataset>] [--animal=rat07] [--slices=14,20,26] [--shift=8] \
      [--method=guided] [--score=probability] --out_dir=<folder>

Writes per-class maps and probabilities (.npy), one figure per slice as the
paper's Figs. 2-3, and saliency.json (how well the translated input's map
matches the translated map); see ``rodent_gbp.studies.explain``.
"""

from __future__ import annotations

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp import fileio
from rodent_gbp import guided
from rodent_gbp.studies import explain

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Model bundle folder "
                                 "(<workdir>/model of the main job).", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset root; default <model_dir>/../data.")
_ANIMAL = flags.DEFINE_string("animal", None, "Animal id; default the first test animal.")
_SLICES = flags.DEFINE_list("slices", ["14", "20", "26"], "Coronal slice indices.")
_SHIFT = flags.DEFINE_integer("shift", 8, "Translation (voxels, both axes) of the second input.")
_METHOD = flags.DEFINE_enum("method", "guided", list(guided.METHODS), "Saliency method.")
_SCORE = flags.DEFINE_enum(
    "score", None, list(guided.SCORES),
    "Saliency target: the sum of the class's softmax probability (the paper's) or of its "
    "logit; default the model config's saliency_score.")
_STRIPPED = flags.DEFINE_bool("stripped", False, "Zero the input outside the brain mask.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)


@cli.run_main
def main(argv):
  cli.begin(argv)
  summary = explain.run(_MODEL_DIR.value, _OUT_DIR.value, data_dir=_DATA_DIR.value,
                        animal=_ANIMAL.value, slices=_SLICES.value, shift=_SHIFT.value,
                        method=_METHOD.value, stripped=_STRIPPED.value,
                        score=_SCORE.value)
  print(fileio.dumps_json(summary), end="")


if __name__ == "__main__":
  app.run(main)
