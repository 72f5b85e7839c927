"""Supervised brain extraction: the U-Net trained on raw slices against brain masks.

What users of rodent brain extraction pick is a network that sees the raw
slice (skull, muscle and coil surroundings present) and outputs the brain
mask. This module trains the project's U-Net for that (network name
``extractor`` in a model bundle), predicts with it and post-processes the
prediction; ``placement.PLACERS["supervised"]`` calls :func:`extract`.

* Network: ``UNet(features, depth, num_classes=2)`` (background, brain) with a
  softmax. Two classes rather than one sigmoid logit: the project's loss
  (soft Dice + cross-entropy, ``losses.segmentation_loss``) and evaluation
  apply unchanged, and ``guided.saliency`` of the brain class with its
  probability target stays meaningful (a one-class softmax is constant, its
  saliency zero).
* Training: Adam on ``optim.make_optimizer``'s schedule, a fixed number of
  epochs (deterministic from ``config.seed``: init, batch order, one
  augmentation key per step, ``fold_in(rng, step)``), the augmentation of
  ``rodent_gbp.augment`` inside the jitted step; Adam rather than the
  tissue network's SGD-momentum because the budget is a few hundred steps on
  CPU and Adam reaches a good mask in that without a learning-rate search.
* Model selection: after every epoch the validation animals' evaluated
  session is extracted (with the post-processing) and the epoch of the best
  mean 3D brain Dice is kept (the earliest on a tie).
* Prediction: the brain probability averaged over the 8 in-plane
  orientations (test-time augmentation, :func:`brain_probability`).
* Post-processing (``scipy.ndimage``): threshold the brain probability at
  0.5, keep the largest 3D connected component (face connectivity), fill
  holes in every slice and then in 3D.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage

from rodent_gbp import augment as augment_lib
from rodent_gbp import bundle as bundle_lib
from rodent_gbp import configs
from rodent_gbp import losses
from rodent_gbp import metrics
from rodent_gbp import model as model_lib
from rodent_gbp import optim
from rodent_gbp import train as train_lib
from rodent_gbp.errors import CheckpointError, DataError, UsageError

NETWORK = "extractor"
BRAIN = 1  # class index of brain in the extractor's output


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


# --- post-processing -----------------------------------------------------------------


def largest_component(mask: np.ndarray) -> np.ndarray:
  """The largest face-connected component of a boolean array (empty stays empty)."""
  mask = np.asarray(mask, bool)
  labels, n = ndimage.label(mask)
  if n <= 1:
    return mask.copy()
  sizes = np.bincount(labels.ravel())
  sizes[0] = 0
  return labels == int(np.argmax(sizes))


def postprocess(mask: np.ndarray) -> np.ndarray:
  """(S, H, W) bool: largest 3D component, holes filled per slice, then in 3D."""
  mask = largest_component(mask)
  mask = np.stack([ndimage.binary_fill_holes(s) for s in mask]) if len(mask) else mask
  return ndimage.binary_fill_holes(mask)


# --- prediction ----------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "tta"))
def brain_probability(params, images: jax.Array, *, model: model_lib.UNet,
                      tta: bool = True) -> jax.Array:
  """(B, H, W) softmax probability of brain of (B, H, W) raw normalised slices.

  ``tta``: the mean over the 8 in-plane orientations (flips and quarter turns,
  each mapped back), which training made equally likely; for square slices
  only (otherwise the plain prediction).
  """
  def prob(x):
    return jax.nn.softmax(model.apply({"params": params}, x[..., None]), axis=-1)[..., BRAIN]

  if not tta or images.shape[1] != images.shape[2]:
    return prob(images)
  total = jnp.zeros(images.shape, jnp.float32)
  for flip in (False, True):
    x = images[:, ::-1] if flip else images
    for k in range(4):
      p = jnp.rot90(prob(jnp.rot90(x, k, axes=(1, 2))), -k, axes=(1, 2))
      total = total + (p[:, ::-1] if flip else p)
  return total / 8.0


def predict_probability(params, slices: np.ndarray, *, model: model_lib.UNet,
                        batch_size: int = 32) -> np.ndarray:
  """(S, H, W) brain probability, in fixed-size batches (one compile)."""
  slices = np.asarray(slices, np.float32)
  out = []
  for i in range(0, len(slices), batch_size):
    chunk = slices[i:i + batch_size]
    pad = batch_size - len(chunk)
    padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
    out.append(np.asarray(brain_probability(params, jnp.asarray(padded), model=model))
               [:len(chunk)])
  return np.concatenate(out) if out else np.zeros(slices.shape, np.float32)


def extract_with(params, slices: np.ndarray, *, model: model_lib.UNet,
                 batch_size: int = 32) -> dict[str, np.ndarray]:
  """Brain mask of one volume's slices: ``mask`` (S, H, W) bool (post-processed),
  ``raw_mask`` (thresholded only) and ``probability`` (S, H, W)."""
  prob = predict_probability(params, slices, model=model, batch_size=batch_size)
  raw = prob > 0.5
  return {"mask": postprocess(raw), "raw_mask": raw, "probability": prob}


def check_bundle(bundle) -> None:
  """Refuses a bundle without an ``extractor`` network (CheckpointError naming its file)."""
  if NETWORK not in bundle.networks:
    raise CheckpointError(
        f"{bundle.where(bundle_lib.BUNDLE_FILE)}: the model bundle has no {NETWORK!r} "
        f"network (it has {', '.join(sorted(bundle.networks))}), which placement "
        "'supervised' needs; add one with experiments/train_extractor.py --bundle")


def extract(slices: np.ndarray, *, bundle) -> dict[str, np.ndarray]:
  """:func:`extract_with` of the bundle's ``extractor`` on (S, H, W) raw normalised slices."""
  check_bundle(bundle)
  net = bundle.network(NETWORK)
  slices = np.asarray(slices, np.float32)
  if slices.ndim != 3:
    raise UsageError(f"extraction needs slices (S, H, W); got shape {slices.shape}")
  factor = 2**net.config.depth
  if slices.shape[1] % factor or slices.shape[2] % factor:
    raise UsageError(f"extraction needs H and W divisible by {factor}; got {slices.shape}")
  return extract_with(net.params, slices, model=net.model,
                      batch_size=net.config.eval_batch_size)


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


def train_step(state: train_lib.TrainState, images: jax.Array, masks: jax.Array,
               rows: jax.Array, i: jax.Array, *, model: model_lib.UNet,
               config: configs.Config, options: augment_lib.AugmentOptions
               ) -> tuple[train_lib.TrainState, dict[str, jax.Array]]:
  """One update on the batch ``rows[i]`` of the device-resident training set.

  The batch is gathered on the device and augmented there
  (``augment.augment_batch`` keyed by ``fold_in(state.rng, state.step)``).

  Args:
    state: current ``train.TrainState``.
    images: (N, H, W) float32 raw normalised slices; masks: (N, H, W) bool.
    rows: (steps, B) int32 slice indices of the epoch; i: () the step.
    model, config, options: the U-Net, its config (optimiser, loss), the
      augmentation ranges.
  """
  idx = jax.lax.dynamic_index_in_dim(rows, i, keepdims=False)
  x, m = images[idx], masks[idx]
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
          {"loss": loss, "grad_norm": optax.tree.norm(grads)})


def validation_dice(params, volumes: Sequence[Any], *, model: model_lib.UNet) -> list[float]:
  """3D brain Dice of the post-processed extraction of each volume."""
  return [metrics.mask_dice(extract_with(params, v.image, model=model)["mask"], v.brainmask)
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
                    log: Callable[[str], None] = print) -> ExtractorResult:
  """Trains the extractor for ``config.epochs`` epochs, keeps the best on validation.

  Args:
    train_volumes: ``data.Volume``s with brain masks (every session that trains).
    val_volumes: ``data.Volume``s the epoch is selected on (may be empty: the
      last epoch is kept).
    config: from :func:`extractor_config`.
    options: augmentation ranges.
    log: progress lines.

  Raises:
    TrainingError: a non-finite loss or gradient (``optim.check_finite``).
  """
  images, masks = stack_pairs(train_volumes)
  n = len(images)
  if n < config.batch_size:
    raise DataError(f"{n} training slices, fewer than one batch of {config.batch_size}")
  model = model_lib.build_unet(config)
  state = train_lib.create_train_state(config, jax.random.PRNGKey(config.seed),
                                       images.shape[1:])
  step = jax.jit(functools.partial(train_step, model=model, config=config, options=options),
                 donate_argnums=0)
  images_d, masks_d = jnp.asarray(images), jnp.asarray(masks)
  history, best, best_params, kept = [], -np.inf, None, 0
  for epoch in range(config.epochs):
    t0 = time.perf_counter()
    rows = jnp.asarray(train_lib.epoch_rows(n, config.batch_size, seed=config.seed,
                                            epoch=epoch))
    out = []
    for i in range(rows.shape[0]):
      state, m = step(state, images_d, masks_d, rows, jnp.int32(i))
      out.append(m)
    out = jax.device_get(out)
    step_losses = np.array([o["loss"] for o in out])
    norms = np.array([o["grad_norm"] for o in out])
    optim.check_finite(step_losses, norms, config=config, epoch=epoch,
                       first_step=epoch * rows.shape[0], checkpoint_dir="(not saved)")
    dice = validation_dice(state.params, val_volumes, model=model) if val_volumes else []
    val = float(np.mean(dice)) if dice else float("nan")
    history.append({"epoch": epoch + 1, "loss": float(step_losses.mean()),
                    "grad_norm_max": float(norms.max()), "val_dice": val,
                    "seconds": time.perf_counter() - t0})
    score = val if dice else float(epoch)  # without validation: the last epoch
    if score > best:
      best, kept = score, epoch + 1
      best_params = jax.device_get(state.params)
    log(f"epoch {epoch + 1}/{config.epochs}: loss {history[-1]['loss']:.4f}, "
        f"val brain Dice {val:.4f}, {history[-1]['seconds']:.1f} s")
  return ExtractorResult(config=config, params=best_params, history=history,
                         kept_epoch=kept, best_val_dice=best if val_volumes else float("nan"))


# --- data and bundle -------------------------------------------------------------------


def load_split(data_dir, split, *, log: Callable[[str], None] = print,
               source: str | None = None) -> dict[str, list[Any]]:
  """Volumes of a converted data folder by split part.

  ``train``: every session of each training animal (``data.other_sessions``);
  ``val`` and ``test``: each animal's evaluated session only. ``source``
  names the split in errors (default: the folder).

  Raises:
    DataError: the folder or an animal is missing, or the split does not fit it.
  """
  import pathlib
  from rodent_gbp import data
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

  Normalisation: the training volumes' rule (``train.normalisation_record``);
  voxel size: theirs (refused when they differ).
  """
  from rodent_gbp import bank as bank_lib
  rule = bundle_lib.normalisation_rule(train_lib.normalisation_record(train_volumes),
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
