"""The brain extractor taught from label maps: heads of any contrast, size and plane.

The shipped extractor (:mod:`rodent_gbp.training.extraction`) learned one lab's
mouse EPI. This module trains the same network (``UNet``, 2 classes,
``extractor`` in a bundle, the same prediction and post-processing in
:mod:`rodent_gbp.extractor`) on images synthesised inside the jitted step
(:func:`rodent_gbp.synthesis.synthesize`) from whole-head label maps
(:mod:`rodent_gbp.datasets.label_maps`): the ``mouse_epi`` training heads
split by intensity and atlas brains placed into them (the head's manual mask
beyond the placed brain counts as brain, as the masks the network is judged
on draw it), cut along all three axes, at mouse size and at rat size by scale
(:data:`RAT_SCALE`).

Two stages, each a fixed number of steps through ``trainer.fit``:

* ``synth``: synthesised images only (``p_real = 0``): no real image of any
  set is seen, and no validation image either (the last step is kept), so a
  test on real scans measures a contrast never seen;
* ``finetune``: starts from the ``synth`` params, on :func:`finetune_slices`
  (half real mouse-sized heads, whose real image is used with probability
  ``p_real``, half synthesised slices so the synthesis is not forgotten); the
  epoch is kept by the validation animals' 3D brain Dice
  (``extraction.validation_dice``), as the real-image extractor is.

Target: brain = tissue code 1..4 of the label map, background otherwise
(``losses.segmentation_loss``, soft Dice + cross-entropy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import tempfile
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import configs
from rodent_gbp import model as model_lib
from rodent_gbp import synthesis
from rodent_gbp.datasets import label_maps
from rodent_gbp.training import extraction
from rodent_gbp.training import losses
from rodent_gbp.training import tissue_synth
from rodent_gbp.training import trainer

_LOG = logging.getLogger(__name__)

#: Linear size of a rat brain over a mouse brain (about 17 x 11 mm against 10 x
#: 6.5 mm coronally, Paxinos atlases): the rat-sized copies' zoom factor.
RAT_SCALE = 1.7

#: The synthesis ranges of the extractor: every contrast (independent label
#: intensities half of the time), thick and coarse acquisitions, strong bias,
#: quarter turns and flips (orientation is not known), fields of view that end
#: inside the head 30 % of the time (tightly cropped scans), no brain-masked
#: images (a stripped input skips the extractor in the CLI).
OPTIONS = synthesis.SynthOptions(p_coherent=0.5, max_noise=0.08, p_low_res=0.4,
                                 max_low_res=4.0, max_blur_px=1.5, bias_strength=0.5,
                                 p_turn=0.25, rotate_deg=20.0, max_zoom=1.3, p_real=0.0,
                                 p_masked=0.0, p_crop=0.3)


def synth_extractor_config(*, features: int = 8, depth: int = 3, epochs: int = 10,
                           batch_size: int = 16, learning_rate: float = 2e-3,
                           decay: float = 2e-4, seed: int = 0) -> configs.Config:
  """The extractor's config for label-map training (``extraction.extractor_config``
  with a slower learning-rate decay for its thousands of steps)."""
  return extraction.extractor_config(features=features, depth=depth, epochs=epochs,
                                     batch_size=batch_size, learning_rate=learning_rate,
                                     decay=decay, seed=seed)


def with_rat_sizes(slices: label_maps.SliceSet, scale: float = RAT_SCALE
                   ) -> label_maps.SliceSet:
  """``slices`` followed by a copy of them whose zoom is ``scale`` times larger
  (rat-sized heads; the model's field of view crops them as it crops a rat)."""
  rat = dataclasses.replace(slices, zoom=(slices.zoom * scale).astype(np.float32),
                            subject=np.char.add(slices.subject.astype(str), "@rat"))
  return label_maps.concat([slices, rat])


def finetune_slices(slices: label_maps.SliceSet, seed: int = 0) -> label_maps.SliceSet:
  """The fine-tune's set: every mouse-sized slice with a real image, and as many
  slices drawn (seeded) from the others (synthesised: composites, rat sizes), so
  that half of the batches' slices are real images and half keep the synthesis."""
  rat = np.char.endswith(slices.subject.astype(str), "@rat")
  real = np.flatnonzero(slices.has_image & ~rat)
  others = np.flatnonzero(~(slices.has_image & ~rat))
  if not len(real):
    raise ValueError("no mouse-sized slice with a real image to fine-tune on")
  pick = np.random.default_rng(seed).choice(others, size=min(len(real), len(others)),
                                            replace=False)
  keep = np.sort(np.concatenate([real, pick]))
  return label_maps.SliceSet(**{f.name: getattr(slices, f.name)[keep]
                                for f in dataclasses.fields(label_maps.SliceSet)})


def train_step(state: trainer.TrainState, batch: dict[str, jax.Array], *,
               model: model_lib.UNet, config: configs.Config,
               options: synthesis.SynthOptions, groups: jax.Array
               ) -> tuple[trainer.TrainState, dict[str, jax.Array]]:
  """One update: synthesise the batch (``tissue_synth.synthesis_step``), fit brain."""
  def brain_loss(logits, target):
    return losses.segmentation_loss(logits, (target > 0).astype(jnp.int32), config.loss)

  return tissue_synth.synthesis_step(state, batch, model=model, config=config,
                                     options=options, groups=groups, loss=brain_loss)


def train(slices: label_maps.SliceSet, val_volumes: Sequence[Any], config: configs.Config,
          options: synthesis.SynthOptions, *, init_params=None, checkpoint_dir=None,
          split: dict | None = None, resume: bool = False,
          log: Callable[[str], None] = _LOG.info) -> extraction.ExtractorResult:
  """Trains the extractor from label-map ``slices`` for ``config.epochs`` epochs.

  Args:
    slices: training slices (``label_maps``).
    val_volumes: ``data.Volume``s with brain masks the epoch is kept by; empty:
      the last epoch is kept (the ``synth`` stage).
    config: from :func:`synth_extractor_config`.
    options: synthesis ranges (``p_real`` 0: synthesis only).
    init_params: params to start from (the ``finetune`` stage).
    checkpoint_dir, split, resume: as ``trainer.fit``.
  """
  model = model_lib.build_unet(config)

  def validate(params, mesh):
    score = float(np.mean(extraction.validation_dice(params, val_volumes, model=model)))
    return score, {"val_dice": score}

  task = trainer.Task(
      name="extractor", config=config, slices=slices.arrays(),
      step=functools.partial(train_step, options=options,
                             groups=jnp.asarray(label_maps.group_of_label())),
      validate=validate if val_volumes else None,
      describe=lambda r: f"brain Dice {r['val_dice']:.4f}" if "val_dice" in r else "",
      init_params=init_params)
  with contextlib.ExitStack() as stack:
    folder = checkpoint_dir or stack.enter_context(tempfile.TemporaryDirectory())
    run = trainer.fit(task, folder, split=split, resume=resume, log=log)
  return extraction.ExtractorResult(
      config=config, params=run.params, history=run.history, kept_epoch=run.kept_epoch + 1,
      best_val_dice=run.best_score if val_volumes else float("nan"))
