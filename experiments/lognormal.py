"""Tests the log-normal hypothesis of the GBP gradient image (paper Fig. 5).

  python experiments/lognormal.py --model_dir=<workdir>/model \
      [--data_dir=<dataset>] [--animals=03,05] [--quantity=both] [--score=both] \
      [--bootstrap=99] --out_dir=<folder>

--quantity magnitude fits the families to G > 0 (zeros dropped); eq1_log to
y = 1 + 255 G~ of the whole slice (q = ln y is what Eq. 1 z-scores; zeros
included). --score picks the saliency target (probability: the paper's).

Writes lognormal.json, lognormal.md and the Fig. 5 / Q-Q figures; see
``rodent_gbp.studies.lognormal``.
"""

from absl import app
from absl import flags

from rodent_gbp import cli
from rodent_gbp.studies import lognormal

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Model bundle folder "
                                 "(<workdir>/model of the main job).", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Dataset root; default <model_dir>/../data.")
_ANIMALS = flags.DEFINE_list("animals", [], "Animal ids; default the bundle's test animals.")
_QUANTITY = flags.DEFINE_enum("quantity", "both", ["magnitude", "eq1_log", "both"],
                              "magnitude: G > 0, zeros dropped; eq1_log: q = ln(1 + 255 G~) "
                              "of the whole slice, zeros included.")
_SCORE = flags.DEFINE_enum("score", "both", ["probability", "logit", "both"],
                           "Saliency target: summed class probability (the paper's) or logit.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 99, "Parametric-bootstrap resamples of the "
                                  "pooled log-normal KS p-value (0: off).")
_BOOTSTRAP_SAMPLES = flags.DEFINE_integer("bootstrap_samples", 1000,
                                          "Pixels subsampled for the bootstrap.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder.", required=True)
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", 20000, "Pixels subsampled for pooled fits.")
_SLICE_MAX_PIXELS = flags.DEFINE_integer(
    "slice_max_pixels", None, "Pixels subsampled for each per-slice fit (default: all).")
_SEED = flags.DEFINE_integer("seed", 0, "Random-network init and subsample seed.")
_FIGURES = flags.DEFINE_bool("figures", True, "Write the Fig. 5 and Q-Q figures.")


@cli.run_main
def main(argv):
  cli.begin(argv)
  quantities = lognormal.QUANTITIES if _QUANTITY.value == "both" else (_QUANTITY.value,)
  scores = lognormal.SCORES if _SCORE.value == "both" else (_SCORE.value,)
  lognormal.run_experiment(_MODEL_DIR.value, _OUT_DIR.value, data_dir=_DATA_DIR.value,
                           animals=_ANIMALS.value or None, quantities=quantities,
                           scores=scores, bootstrap=_BOOTSTRAP.value,
                           bootstrap_samples=_BOOTSTRAP_SAMPLES.value,
                           max_pixels=_MAX_PIXELS.value,
                           slice_max_pixels=_SLICE_MAX_PIXELS.value, seed=_SEED.value,
                           figures=_FIGURES.value, log=lambda msg: print(msg, flush=True))


if __name__ == "__main__":
  app.run(main)
