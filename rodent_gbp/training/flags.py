"""The training binaries' flags for the brain extractor (``experiments/train_extractor.py``,
``experiments/extraction_cv.py``, ``experiments/ship_model.py``); the console
script's own flags stay in ``rodent_gbp.cli``.
"""

from __future__ import annotations

import inspect

from absl import flags

from rodent_gbp.training import augment
from rodent_gbp.training import extraction


def define_extractor_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """The supervised extractor's training flags on ``fv``; defaults: the measured
  setting (``extraction.extractor_config``, ``augment.AugmentOptions``)."""
  d = {k: p.default for k, p in inspect.signature(extraction.extractor_config).parameters.items()}
  flags.DEFINE_integer("features", d["features"], "U-Net channels at the first level.",
                       flag_values=fv)
  flags.DEFINE_integer("depth", d["depth"], "U-Net depth.", flag_values=fv)
  flags.DEFINE_integer("epochs", d["epochs"], "Training epochs (fixed).", flag_values=fv)
  flags.DEFINE_integer("batch_size", d["batch_size"], "Training batch size.", flag_values=fv)
  flags.DEFINE_float("learning_rate", d["learning_rate"], "Adam learning rate lr0.",
                     flag_values=fv)
  flags.DEFINE_float("decay", d["decay"], "Time-based decay of the learning rate per update.",
                     flag_values=fv)
  flags.DEFINE_integer("seed", d["seed"], "Init, batch order and augmentation seed.",
                       flag_values=fv)
  flags.DEFINE_float("resolution_jitter", augment.AugmentOptions().resolution,
                     "Content rescaled by a factor in [1/x, x].", flag_values=fv)


def extractor_settings(fv: flags.FlagValues = flags.FLAGS):
  """(``configs.Config``, ``augment.AugmentOptions``) of :func:`define_extractor_flags`."""
  config = extraction.extractor_config(
      features=fv["features"].value, depth=fv["depth"].value, epochs=fv["epochs"].value,
      batch_size=fv["batch_size"].value, learning_rate=fv["learning_rate"].value,
      decay=fv["decay"].value, seed=fv["seed"].value)
  return config, augment.AugmentOptions(resolution=fv["resolution_jitter"].value)
