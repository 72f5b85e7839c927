"""The extractor task: the U-Net trained on raw slices against brain masks.

What users of rodent brain extraction pick is a network that sees the raw
slice (skull, muscle and coil surroundings present) and outputs the brain
mask; its prediction and post-processing are :mod:`rodent_gbp.extractor`
(network name ``extractor`` in a model bundle). This module trains it through
the one training loop (``trainer.fit``).

* Network: ``UNet(features, depth, num_classes=2)`` (background, brain) with a
  softmax. Two classes rather than one sigmoid logit: the project's loss
  (soft Dice + cross-entropy, ``losses.segmentation_loss``) and evaluation
  apply unchanged, and ``guided.saliency`` of the brain class with its
  probability target stays meaningful (a one-class softmax is constant, its
  saliency zero).
* Training: Adam on ``optim.make_optimizer``'s schedule, a fixed number of
  epochs (deterministic from ``config.seed``: init, batch order, one
  augmentation key per step, ``fold_in(rng, step)``), the extractor preset of
  ``rodent_gbp.training.augment`` inside the jitted step; Adam rather than the
  tissue network's SGD-momentum because the budget is a few hundred steps on
  CPU and Adam reaches a good mask in that without a learning-rate search.
* Model selection: after every epoch the validation animals' evaluated
  session is extracted (with the post-processing) and the epoch of the best
  mean 3D brain Dice is kept (the later one on a tie, as for every task).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pathlib
import tempfile
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rodent_gbp import bank as bank_lib
from rodent_gbp import bundle as bundle_lib
from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import extractor
from rodent_gbp import metrics
from rodent_gbp import model as model_lib
from rodent_gbp.training import augment as augment_lib
from rodent_gbp.training import losses
from rodent_gbp.training import optim
from rodent_gbp.training import trainer
from rodent_gbp.errors import CheckpointError, DataError, UsageError

_LOG = logging.getLogger(__name__)

NETWORK = extractor.NETWORK
BRAIN = extractor.BRAIN


def extractor_config(*, features: int = 8, depth: int = 3, epochs: int = 30,
                     batch_size: int = 16, learning_rate: float = 2e-3, decay: float = 1e-3,
                     seed: int = 0, clip_grad_norm: float = 2.0) -> configs.Config:
  """The extractor's ``configs.Config`` (2 classes, Adam, Dice + cross-entropy).

  The defaults are the setting of the 5-fold cross-validation and the shipped
  model (``experiments/results/extraction_cv_mouse_epi``).

  ``decay`` is the time-based decay of ``optim.learning_rate_fn`` (per update).
  """
  if features < 1 or depth < 1 or epochs < 1 or batch_size < 1:
    raise UsageError(f"features, depth, epochs and batch_size must be >= 1; got "
                     f"{features}, {depth}, {epochs}, {batch_size}")
  return configs.Config(name=NETWORK, features=features, depth=depth, num_classes=2,
                        optimizer="adam", learning_rate=learning_rate, decay=decay,
                        batch_size=batch_size, epochs=epochs, loss="dice_ce", augment=True,
                        seed=seed, clip_grad_norm=clip_grad_norm, gradient_classes=(BRAIN,),
                        eval_batch_size=32)


# --- training ------------------------------------------------------------------------


def stack_pairs(volumes: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
  """(N, H, W) float32 raw normalised slices and (N, H, W) bool brain masks."""
  if not volumes:
    raise DataError("no training volumes")
  for v in volumes:
    if v.brainmask is None:
      raise DataError(f"{v.meta.get('source', {}).get('image', v.animal_id)}: "
                      "no brain mask to train the extractor on")
  shapes = {v.image.shape[1:] for v in volumes}
  if len(shapes) != 1:
    raise DataError(f"volumes have different slice shapes {sorted(shapes)}")
  return (np.concatenate([v.image for v in volumes]).astype(np.float32),
          np.concatenate([v.brainmask for v in volumes]).astype(bool))


def train_step(state: trainer.TrainState, batch: dict[str, jax.Array], *,
               model: model_lib.UNet, config: configs.Config,
               options: augment_lib.AugmentOptions
               ) -> tuple[trainer.TrainState, dict[str, jax.Array]]:
  """One update on a batch of raw slices and brain masks.

  The batch is augmented on the device (``augment.augment_batch``, the
  extractor preset, keyed by ``fold_in(state.rng, state.step)``).

  Args:
    state: current ``trainer.TrainState``.
    batch: ``image`` (B, H, W) float32 raw normalised slices, ``mask`` (B, H, W) bool.
    model, config, options: the U-Net, its config (optimiser, loss), the
      augmentation ranges.
  """
  x, m = batch["image"], batch["mask"]
  if config.augment:
    x, m = augment_lib.augment_batch(jax.random.fold_in(state.rng, state.step), x, m, options)

  def loss_of(params):
    logits = model.apply({"params": params}, x[..., None])
    return losses.segmentation_loss(logits, m.astype(jnp.int32), config.loss)

  (loss, _), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = optim.make_optimizer(config).update(grads, state.opt_state,
                                                           state.params)
  params = optax.apply_updates(state.params, updates)
  return (state.replace(step=state.step + 1, params=params, opt_state=opt_state),
          {"loss": loss, "grad_norm": optax.tree.norm(grads),
           "lr": optim.learning_rate_fn(config)(state.step)})


def validation_dice(params, volumes: Sequence[Any], *, model: model_lib.UNet) -> list[float]:
  """3D brain Dice of the post-processed extraction of each volume."""
  return [metrics.mask_dice(extractor.extract_with(params, v.image, model=model)["mask"], v.brainmask)
          for v in volumes]


@dataclasses.dataclass
class ExtractorResult:
  """What :func:`train_extractor` returns.

  Attributes:
    config: the extractor's config.
    params: the kept params (numpy).
    history: per epoch: epoch, loss (mean over steps), grad_norm_max,
      val_dice (mean over validation volumes, NaN without any), seconds.
    kept_epoch: the epoch (from 1) whose params are kept.
    best_val_dice: its validation Dice.
  """

  config: configs.Config
  params: Any
  history: list[dict]
  kept_epoch: int
  best_val_dice: float

  def network(self, **info: Any) -> bundle_lib.Network:
    """The bundle network of the kept params (``info`` recorded with it)."""
    return bundle_lib.Network(config=self.config, params=self.params, info={
        "kept": "best validation brain Dice", "epoch": self.kept_epoch,
        "val_brain_dice": self.best_val_dice, "epochs": self.config.epochs, **info})


def train_extractor(train_volumes: Sequence[Any], val_volumes: Sequence[Any],
                    config: configs.Config, *,
                    options: augment_lib.AugmentOptions = augment_lib.AugmentOptions(),
                    checkpoint_dir=None, split: dict | None = None, resume: bool = False,
                    log: Callable[[str], None] = _LOG.info) -> ExtractorResult:
  """Trains the extractor for ``config.epochs`` epochs, keeps the best on validation.

  Args:
    train_volumes: ``data.Volume``s with brain masks (every session that trains).
    val_volumes: ``data.Volume``s the epoch is selected on (may be empty: the
      last epoch is kept).
    config: from :func:`extractor_config`.
    options: augmentation ranges.
    checkpoint_dir: the Orbax folder of the run (``trainer.fit``); None: a
      temporary folder, removed at the end.
    split: recorded beside the checkpoints, checked on resume.
    resume: continue after the latest checkpoint in ``checkpoint_dir``.
    log: progress lines.

  Raises:
    TrainingError: a non-finite loss or gradient (``optim.check_finite``).
  """
  images, masks = stack_pairs(train_volumes)
  if len(images) < config.batch_size:
    raise DataError(f"{len(images)} training slices, fewer than one batch of "
                    f"{config.batch_size}")
  model = model_lib.build_unet(config)

  def validate(params, mesh):
    score = float(np.mean(validation_dice(params, val_volumes, model=model)))
    return score, {"val_dice": score}

  task = trainer.Task(
      name=NETWORK, config=config, slices={"image": images, "mask": masks},
      step=functools.partial(train_step, options=options),
      validate=validate if val_volumes else None,
      describe=lambda record: f"brain Dice {record.get('val_dice', float('nan')):.4f}")
  with contextlib.ExitStack() as stack:
    folder = checkpoint_dir or stack.enter_context(tempfile.TemporaryDirectory())
    run = trainer.fit(task, folder, split=split, resume=resume, log=log)
  return ExtractorResult(config=config, params=run.params, history=run.history,
                         kept_epoch=run.kept_epoch + 1,
                         best_val_dice=run.best_score if val_volumes else float("nan"))


# --- data and bundle -------------------------------------------------------------------


def load_split(data_dir, split, *, log: Callable[[str], None] = _LOG.info,
               source: str | None = None) -> dict[str, list[Any]]:
  """Volumes of a converted data folder by split part.

  ``train``: every session of each training animal (``data.other_sessions``);
  ``val`` and ``test``: each animal's evaluated session only. ``source``
  names the split in errors (default: the folder).

  Raises:
    DataError: the folder or an animal is missing, or the split does not fit it.
  """
  root = pathlib.Path(data_dir)
  if not root.is_dir():
    raise DataError(f"{root}: data folder not found")
  ids = sorted(p.name for p in root.iterdir() if p.is_dir() and (
      (p / "image.nii.gz").is_file() or (p / "image.nii").is_file()))
  split = data.check_split(split, ids, source=source or str(root))
  out: dict[str, list[Any]] = {"train": [], "val": [], "test": []}
  for part in out:
    for a in split[part]:
      v = data.load_animal(root / a)
      out[part].append(v)
      if part == "train":
        out[part] += data.other_sessions(v)
  log(f"{len(out['train'])} training volumes ({len(split['train'])} animals), "
      f"{len(out['val'])} validation, {len(out['test'])} test")
  return out


def make_bundle(result: ExtractorResult, train_volumes: Sequence[Any], split: dict | None,
                **info: Any) -> bundle_lib.Bundle:
  """An extractor-only bundle (no tissue network, no template bank) of ``result``.

  Normalisation: the training volumes' rule (``data.normalisation_record``);
  voxel size: theirs (refused when they differ).
  """
  rule = bundle_lib.normalisation_rule(data.normalisation_record(train_volumes),
                                       "training volumes")
  vs = bank_lib.common_voxel_size(train_volumes)
  if vs is None:
    raise DataError("the training volumes have no common voxel size")
  shape = [int(n) for n in train_volumes[0].image.shape[1:]]
  return bundle_lib.Bundle(
      networks={NETWORK: result.network()}, normalisation=rule, bank=None, voxel_size=vs,
      voxel_size_source="training volumes", split=split,
      info={"slice_shape": shape, **info})


def add_to_bundle(folder, result: ExtractorResult, train_volumes: Sequence[Any],
                  split: dict | None, **info: Any) -> bundle_lib.Bundle:
  """Adds (or replaces) the ``extractor`` of an existing bundle folder and saves it.

  Raises:
    CheckpointError: the bundle's voxel size, slice shape or normalisation
      rule differ from the training volumes' (the extractor would see other
      slices than it was trained on).
  """
  existing = bundle_lib.load_bundle(folder)
  mine = make_bundle(result, train_volumes, split, **info)
  where = existing.where(bundle_lib.BUNDLE_FILE)
  if not np.allclose(existing.voxel_size, mine.voxel_size, rtol=1e-4):
    raise CheckpointError(f"{where}: voxel size {existing.voxel_size.tolist()} differs from "
                          f"the extractor's training volumes' {mine.voxel_size.tolist()}")
  if existing.slice_shape != mine.slice_shape:
    raise CheckpointError(f"{where}: slice shape {existing.slice_shape} differs from the "
                          f"extractor's {mine.slice_shape}")
  if existing.normalisation != mine.normalisation:
    raise CheckpointError(f"{where}: normalisation {existing.normalisation} differs from "
                          f"the extractor's {mine.normalisation}")
  existing.networks[NETWORK] = mine.networks[NETWORK]
  existing.info[f"{NETWORK}_split"] = split
  if "tissue" not in existing.networks:  # the split is the extractor's alone
    existing.split = split
  bundle_lib.save_bundle(folder, existing)
  return existing
