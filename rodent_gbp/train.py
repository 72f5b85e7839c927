"""Training of the segmentation U-Net (paper section 3.1).

Phases of :func:`train_and_evaluate`, top to bottom: data (phantom or a NIfTI
folder, split by animal), model and optimiser state, the jitted step, the epoch
loop (train on skull-stripped slices, validate, checkpoint), and a last
evaluation of the kept params on the test animals.

Loss (``config.loss``, :mod:`rodent_gbp.losses`): ``"dice"`` (the paper), soft
Dice; ``"dice_ce"`` (the ``default``), soft Dice + mean pixel cross-entropy.

Optimiser: SGD with momentum and Keras' time-based decay
``lr_t = lr0 / (1 + decay * t)``, t = number of updates already applied
(:mod:`rodent_gbp.optim`); ``paper`` uses lr0 3e-4, decay 1.5e-6, momentum 0.9,
batch 5, no clipping; ``default`` clips the gradient to global norm 2 first.

Non-finite stop: each step reports its gradient's global norm (before any
clipping); at the end of an epoch the gathered per-step losses and norms are
checked (``optim.check_finite``) and the first non-finite step stops training
with a ``TrainingError`` before that epoch is validated or checkpointed. The
history records the median and max gradient norm of every epoch.

Batches: the training slices are placed on the devices once (replicated), and
each step gathers its batch there by index (:func:`indexed_train_step`). The
rows of epoch e are those of ``data.iterate_batches`` with
``drop_remainder=True`` (a permutation from (seed, epoch); the last partial
batch is dropped, so every slice is seen over epochs): only the (steps, batch)
int32 index array of the epoch crosses from the host. Evaluation pads the last
batch and masks the padding out of the counts.

Devices: batches are split over a ``parallel.make_mesh()`` mesh of all devices
(and hosts) and the state is replicated; the same jitted step runs on 1 or N
devices, jit inserting the cross-device sums of the pooled loss. The training
batch must be a multiple of the device count (refused otherwise, see
``parallel.check_divisible``); evaluation batches are padded up to one.

Time cap (``config.max_train_seconds``): checked after every step on process
0's clock, and process 0's decision is broadcast, so every process runs the
same steps (each deciding on its own clock could leave one waiting in a
collective the others never enter).

Checkpoints: one per epoch through :mod:`rodent_gbp.checkpoint` (Orbax); the
params kept are the best by validation mean tissue Dice, or the latest when
there are no validation animals.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from typing import Any, Callable

from absl import logging
import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax

from rodent_gbp import checkpoint
from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import losses
from rodent_gbp import model as model_lib
from rodent_gbp import optim
from rodent_gbp import parallel
from rodent_gbp import phantom
from rodent_gbp.errors import TrainingError

Config = configs.Config
PyTree = Any

# Fields that must agree between a checkpoint and the config resuming it.
_RESUME_MUST_MATCH = ("animals", "image_size", "phantom_seed", "split_seed", "features",
                      "depth", "num_classes", "optimizer", "seed")

dice_loss = losses.dice_loss  # its home was this module

# The clock of the time cap (tests replace it to make processes disagree).
_clock = time.perf_counter

# The optimiser and the non-finite stop live in rodent_gbp.optim.
learning_rate_fn = optim.learning_rate_fn
make_optimizer = optim.make_optimizer
check_finite = optim.check_finite

# ----------------------------------------------------------------------------
# State and steps
# ----------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: () int32, updates applied so far (t of the lr schedule).
    params: U-Net params.
    opt_state: optax state of :func:`make_optimizer`.
    rng: (2,) uint32 key; augmentation at step t uses ``fold_in(rng, t)``.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  rng: jax.Array


def create_train_state(config: Config, rng: jax.Array,
                       image_shape: tuple[int, int]) -> TrainState:
  """Initial state: U-Net params from ``rng``, fresh optimiser, step 0."""
  init_rng, aug_rng = jax.random.split(rng)
  model = model_lib.build_unet(config)
  params = model_lib.init_params(model, init_rng, tuple(image_shape))
  opt_state = make_optimizer(config).init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=opt_state, rng=aug_rng)


def _checkpoint_tree(state: TrainState, best_val_dice: float, epoch: int) -> dict:
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "rng": state.rng, "best_val_dice": np.float32(best_val_dice),
          "epoch": np.int32(epoch)}


def _state_from_tree(tree: dict) -> TrainState:
  return TrainState(step=jnp.asarray(tree["step"]), params=tree["params"],
                    opt_state=tree["opt_state"], rng=jnp.asarray(tree["rng"]))


def abstract_checkpoint_state(config: Config) -> dict:
  """Shapes and dtypes of a checkpoint of ``config`` (nothing is allocated)."""
  size = 2**config.depth  # conv params do not depend on the image size
  state = jax.eval_shape(
      lambda: create_train_state(config, jax.random.PRNGKey(0), (size, size)))
  return _checkpoint_tree(state, 0.0, 0) | {
      "best_val_dice": jax.ShapeDtypeStruct((), jnp.float32),
      "epoch": jax.ShapeDtypeStruct((), jnp.int32)}


def augment(rng: jax.Array, image: jax.Array, label: jax.Array
            ) -> tuple[jax.Array, jax.Array]:
  """Random left-right flip and intensity scale, independently per slice.

  Only the R-L axis (H) is flipped: the brain is near mirror-symmetric across
  the midline, while superior/inferior flips would make anatomy the test set
  never shows. The scale factor in [0.9, 1.1] mimics the phantom's +-15 % bias
  field between animals; zero (stripped) background stays zero.

  Args:
    rng: key.
    image: (B, H, W, 1).
    label: (B, H, W).
  """
  flip_rng, scale_rng = jax.random.split(rng)
  b = image.shape[0]
  flip = jax.random.bernoulli(flip_rng, 0.5, (b,))
  image = jnp.where(flip[:, None, None, None], image[:, ::-1], image)
  label = jnp.where(flip[:, None, None], label[:, ::-1], label)
  scale = jax.random.uniform(scale_rng, (b, 1, 1, 1), image.dtype, 0.9, 1.1)
  return image * scale, label


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: model_lib.UNet,
               config: Config) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD update on a batch of skull-stripped slices.

  Pure; jit it once at the call site, e.g.
  ``jax.jit(functools.partial(train_step, model=m, config=c), donate_argnums=0)``.

  Args:
    state: current :class:`TrainState`.
    batch: ``image`` (B, H, W, 1) float32, ``label`` (B, H, W) int32.
    model: the U-Net.
    config: supplies ``loss``, ``augment`` and the optimiser settings.

  Returns:
    (new state, metrics: loss, its terms, lr used by this update, global
    norm of the gradient before any clipping).
  """
  image, label = batch["image"], batch["label"]
  if config.augment:
    image, label = augment(jax.random.fold_in(state.rng, state.step), image, label)

  def loss_of(params):
    logits = model.apply({"params": params}, image)
    return losses.segmentation_loss(logits, label, config.loss)

  (loss, terms), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "lr": learning_rate_fn(config)(state.step),
             "grad_norm": optax.tree.norm(grads), **terms}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


def epoch_rows(n: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
  """(steps, batch_size) int32: the slice indices of every training step of ``epoch``.

  Exactly the rows ``data.iterate_batches(..., shuffle=True,
  drop_remainder=True)`` yields, in order (it is asked for them).
  """
  rows = data.iterate_batches({"row": np.arange(n, dtype=np.int32)}, batch_size,
                              seed=seed, epoch=epoch, shuffle=True, drop_remainder=True)
  return np.stack([b["row"] for b in rows])


def indexed_train_step(state: TrainState, slices: dict[str, jax.Array], rows: jax.Array,
                       i: jax.Array, *, model: model_lib.UNet, config: Config,
                       sharding: jax.sharding.Sharding
                       ) -> tuple[TrainState, dict[str, jax.Array]]:
  """:func:`train_step` on the batch ``slices[rows[i]]``, gathered on the devices.

  Args:
    state: current :class:`TrainState`.
    slices: the whole training set, ``image`` (N, H, W, 1), ``label`` (N, H, W),
      placed once (replicated).
    rows: (steps, B) int32 from :func:`epoch_rows`.
    i: () int, the step of the epoch.
    model, config: as for :func:`train_step`.
    sharding: how the batch is split over the devices (``P("data")``).
  """
  idx = jax.lax.dynamic_index_in_dim(rows, i, keepdims=False)
  batch = jax.lax.with_sharding_constraint({k: v[idx] for k, v in slices.items()}, sharding)
  return train_step(state, batch, model=model, config=config)


def _agree(flag: bool) -> bool:
  """Process 0's ``flag`` on every process (a collective in multi-process runs)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.bool_(flag)))


# ----------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
  """What :func:`train_and_evaluate` returns.

  Attributes:
    config: the config trained.
    params: the kept params (the best by validation mean tissue Dice; the
      latest without validation animals), numpy arrays.
    history: one dict per epoch (epoch, step, loss, val_dice per class,
      val_mean_tissue_dice, images_per_s, seconds, ...).
    best_val_dice: validation mean tissue Dice (WM, GM, CSF) of the kept
      params (minus their training loss without validation animals).
    checkpoint_dir: ``<workdir>/checkpoints``.
    normalisation: the data layer's normalisation record (also in
      ``normalisation.json``).
    split: {"train", "val", "test"} animal ids.
    test_dice: Dice of the kept params on the test animals' skull-stripped
      slices (manual background removal), see ``losses.evaluate``.
  """

  config: Config
  params: PyTree
  history: list[dict]
  best_val_dice: float
  checkpoint_dir: pathlib.Path
  normalisation: dict
  split: dict
  test_dice: dict | None = None


def _load_data(config: Config, workdir: pathlib.Path, data_dir, log, split=None) -> tuple:
  """Split, slice stacks and normalisation record (writing the phantom first
  when ``data_dir`` is None).

  ``split`` (checked against the dataset) replaces the seeded one. Training
  stacks every session of a training animal (``data.other_sessions``);
  validation and test use the animal's evaluated session only.
  """
  if data_dir is None:
    data_dir = workdir / "data"
    if not any(data_dir.glob("*/meta.json")) and parallel.is_lead():
      log(f"writing a {config.animals}-animal {config.phantom} phantom (seed "
          f"{config.phantom_seed}) to {data_dir}")
      phantom.write_phantom(data_dir, animals=config.animals, seed=config.phantom_seed,
                            size=config.image_size, kind=config.phantom)
    parallel.barrier("rodent_gbp:phantom")
  volumes = data.load_dataset(pathlib.Path(data_dir))
  ids = [v.animal_id for v in volumes]
  if split is None:
    split = data.split_animals(ids, config.split_seed)
  else:
    split = data.check_split(split, ids)
  by_id = dict(zip(ids, volumes))
  stacks = {}
  for part in ("train", "val", "test"):
    vols = [by_id[a] for a in split[part]]
    if part == "train":
      extra = [o for v in vols for o in data.other_sessions(v)]
      if extra:
        log(f"training on {len(extra)} further sessions of the training animals too")
      vols = vols + extra
    stacks[part] = data.stack_slices(vols) if vols else None
  return split, stacks, normalisation_record(volumes)


def normalisation_record(volumes) -> dict:
  """What ``normalisation.json`` holds: the rule, and each animal's params.

  The top level is a params dict ``data.apply_normalisation`` accepts (for the
  per-volume ``robust_max`` rule without a fixed ``scale``: inference recomputes
  it per scan, as training did); ``per_animal`` keeps every volume's params.
  """
  rule = dict(volumes[0].normalisation)
  if rule.get("method") == "robust_max":
    rule.pop("scale", None)
  return {**rule, "per_animal": {v.animal_id: dict(v.normalisation) for v in volumes}}


def _check_resumable(stored: Config, config: Config, checkpoint_dir) -> None:
  bad = [f for f in _RESUME_MUST_MATCH if getattr(stored, f) != getattr(config, f)]
  if bad:
    raise checkpoint.CheckpointError(
        f"cannot resume from {checkpoint_dir}: config differs in "
        + ", ".join(f"{f} ({getattr(stored, f)!r} -> {getattr(config, f)!r})" for f in bad))


def kept_index(history: list[dict]) -> int | None:
  """Which epoch record's params a run keeps (what ``checkpoint`` calls "best").

  With validation animals: the highest validation mean tissue Dice (NaN
  ranks lowest; the later epoch wins a tie, as Orbax's ``best_step`` does).
  Without: the last epoch. None for an empty history.
  """
  if not history:
    return None
  if not any("val_dice" in r for r in history):
    return len(history) - 1
  ranks = [checkpoint.rank(r.get("val_mean_tissue_dice")) for r in history]
  return max(range(len(ranks)), key=lambda i: (ranks[i], i))


def training_summary(history: list[dict], config: Config) -> dict[str, Any]:
  """What a run's results should say about its training (``results.json``).

  ``stopped_by_time_cap`` is True when ``max_train_seconds`` cut an epoch
  short: the run then trained fewer epochs than planned, and its results
  depend on the speed of the machine. ``kept`` says which params the run
  kept (``"best"`` by validation Dice, or ``"latest"`` without validation
  animals) and ``best_epoch`` their epoch, counted from 1.
  """
  done = [r for r in history if not r.get("partial_epoch")]
  validated = any("val_dice" in r for r in history)
  kept = kept_index(history)
  score = None if kept is None else history[kept].get("val_mean_tissue_dice")
  return {
      "epochs_planned": int(config.epochs),
      "epochs_completed": len(done),
      "stopped_by_time_cap": any(r.get("partial_epoch") for r in history),
      "max_train_seconds": config.max_train_seconds,
      "epochs_seconds": float(sum(r.get("seconds", 0.0) for r in history)),  # with validation
      "kept": "best" if validated else "latest",
      "best_epoch": None if kept is None else int(history[kept]["epoch"]) + 1,
      "best_selected_by": ("validation mean tissue dice" if validated
                           else "latest epoch (no validation animals)"),
      "best_val_mean_tissue_dice": (float(score) if validated and score is not None
                                    else None),
      "history": history,
  }


def _fmt_dice(d: dict) -> str:
  return " ".join(f"{k}={v:.3f}" for k, v in d.items() if k != "background")


def train_and_evaluate(config: Config, workdir, *, data_dir=None, resume: bool = False,
                       split: dict | None = None,
                       log: Callable[[str], None] = logging.info) -> TrainResult:
  """Trains the U-Net of ``config``; validates and checkpoints every epoch.

  Args:
    config: run settings (``configs.get_config(name)``).
    workdir: output folder; checkpoints go to ``<workdir>/checkpoints`` and, if
      ``data_dir`` is None, the phantom to ``<workdir>/data``.
    data_dir: a folder of ``<animal>/{image,labels,brainmask}.nii.gz``; None
      generates the phantom (``config.animals``, ``image_size``,
      ``phantom_seed``).
    resume: continue from the latest checkpoint in ``<workdir>/checkpoints``
      (at the epoch after the one it recorded; an epoch cut short by
      ``max_train_seconds`` counts as done) instead of starting over. The
      stored config must agree on the data, split, network and seed fields
      (else ``CheckpointError``); epochs, learning rate etc. may change.
    split: ``{"train", "val", "test"}`` animal ids (e.g. ``data.read_split_file``)
      instead of the split drawn from ``config.split_seed``.
    log: receives one progress line per epoch.

  Returns:
    :class:`TrainResult`; ``params`` are the kept ones (best by validation mean
    tissue Dice, or the latest without validation animals).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ckpt_dir = workdir / "checkpoints"

  # --- data: split by animal, skull-stripped slices for training ---
  split, stacks, normalisation = _load_data(config, workdir, data_dir, log, split)
  train_arrays, val_arrays = stacks["train"], stacks["val"]
  if train_arrays is None:
    raise ValueError(f"no training animals in split {split}")
  image_shape = train_arrays["stripped"].shape[1:3]
  n_train = train_arrays["label"].shape[0]
  steps_per_epoch = n_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{n_train} training slices is less than one batch of "
                     f"{config.batch_size}")
  log(f"split {split}; {n_train} training slices of {image_shape}, "
      f"{steps_per_epoch} steps per epoch")

  # --- devices, model, state, training set on the devices, jitted steps ---
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh)
  log(f"devices: {parallel.describe(mesh)}")
  model = model_lib.build_unet(config)
  state = create_train_state(config, jax.random.PRNGKey(config.seed), image_shape)
  track_best = val_arrays is not None
  history: list[dict] = []
  best_val, best_epoch, best_params = -math.inf, None, None
  start_epoch = 0
  if resume and checkpoint.exists(ckpt_dir, "latest"):
    _check_resumable(checkpoint.read_config(ckpt_dir), config, ckpt_dir)
    stored_split = checkpoint.read_split(ckpt_dir)
    if stored_split != split:
      raise checkpoint.CheckpointError(
          f"cannot resume from {ckpt_dir}: its split {stored_split} differs from this "
          f"run's {split}")
    template = _checkpoint_tree(state, 0.0, 0)
    tree, meta = checkpoint.restore(ckpt_dir, "latest", template)
    state = _state_from_tree(tree)
    start_epoch = int(tree["epoch"]) + 1
    history = list(meta.get("history", []))
    # The JSON value, not the float32 in the tree: Orbax ranks by the former.
    best_val = math.nan if meta.get("best_val_dice") is None else meta["best_val_dice"]
    best_epoch = meta.get("kept_epoch")
    best_params = checkpoint.restore(ckpt_dir, "best",
                                     {"params": template["params"]})[0]["params"]
    log(f"resumed from {ckpt_dir} (epoch {start_epoch - 1}) at epoch {start_epoch}, "
        f"step {int(state.step)}, best val dice {best_val:.4f}")
  elif resume:
    log(f"nothing to resume in {ckpt_dir}; starting from scratch")
  state = parallel.replicate(state, mesh)
  slices = parallel.replicate(
      {"image": train_arrays["stripped"], "label": train_arrays["label"]}, mesh)
  checkpoint.write_run_files(ckpt_dir, config=config, split=split,
                             normalisation=normalisation)
  manager = checkpoint.open_for_training(ckpt_dir, track_best=track_best,
                                         fresh=start_epoch == 0)

  step_fn = jax.jit(functools.partial(indexed_train_step, model=model, config=config,
                                      sharding=parallel.batch_sharding(mesh)),
                    donate_argnums=0)
  eval_fn = jax.jit(functools.partial(losses.eval_step, model=model))

  # --- epochs ---
  t_start = _clock()
  out_of_time = False
  reserve = 0.0  # seconds the last validation + checkpoint took, kept for the next
  for epoch in range(start_epoch, config.epochs):
    t_epoch = _clock()
    rows = parallel.replicate(
        epoch_rows(n_train, config.batch_size, seed=config.seed, epoch=epoch), mesh)
    step_losses, step_norms = [], []
    for i in range(steps_per_epoch):
      state, metrics = step_fn(state, slices, rows, np.int32(i))
      step_losses.append(metrics["loss"])
      step_norms.append(metrics["grad_norm"])
      if config.max_train_seconds > 0 and _agree(
          _clock() - t_start + reserve > config.max_train_seconds):
        out_of_time = True
        break
    step_losses, step_norms = jax.device_get((step_losses, step_norms))
    try:
      check_finite(step_losses, step_norms, config=config, epoch=epoch,
                   first_step=int(state.step) - len(step_losses), checkpoint_dir=ckpt_dir)
    except TrainingError:
      manager.close()
      raise
    loss = float(np.mean(step_losses))
    t_train_end = _clock()
    train_seconds = t_train_end - t_epoch
    images_per_s = len(step_losses) * config.batch_size / max(train_seconds, 1e-9)

    record = {"epoch": epoch, "step": int(state.step), "loss": loss,
              "lr": float(metrics["lr"]), "grad_norm_max": float(np.max(step_norms)),
              "grad_norm_median": float(np.median(step_norms)), "images_per_s": images_per_s,
              "train_seconds": train_seconds, "partial_epoch": out_of_time}
    if track_best:
      val = losses.evaluate(eval_fn, state.params, val_arrays,
                            batch_size=config.eval_batch_size, mesh=mesh)
      record["val_dice"] = val["dice_mean_over_animals"]
      score = val["mean_tissue_dice"]
    else:
      score = -loss  # no validation animals: the latest epoch is kept
    record["val_mean_tissue_dice"] = score
    record["seconds"] = _clock() - t_epoch
    history.append(record)

    if not track_best or checkpoint.rank(score) >= checkpoint.rank(best_val):
      best_val, best_epoch = score, epoch
      best_params = jax.device_get(state.params)
    meta = {"epoch": epoch, "step": int(state.step), "best_val_dice": best_val,
            "kept": "best" if track_best else "latest", "kept_epoch": best_epoch,
            "history": history}
    checkpoint.save(manager, epoch, _checkpoint_tree(state, best_val, epoch), meta,
                    score if track_best else None)

    elapsed = _clock() - t_start
    reserve = _clock() - t_train_end
    remaining = (config.epochs - epoch - 1) * record["seconds"]
    if config.max_train_seconds > 0:
      remaining = min(remaining, max(config.max_train_seconds - elapsed, 0.0))
    log(f"epoch {epoch + 1}/{config.epochs} step {record['step']} loss {loss:.4f} "
        f"grad norm {record['grad_norm_median']:.3g} (max {record['grad_norm_max']:.3g}) "
        f"val {_fmt_dice(record.get('val_dice', {}))} (mean {score:.4f}, best "
        f"{best_val:.4f}) {images_per_s:.1f} img/s, {elapsed:.0f} s elapsed, "
        f"ETA {remaining:.0f} s")
    if out_of_time:
      log(f"stopping: max_train_seconds={config.max_train_seconds} reached")
      break
  manager.close()

  # --- the kept params on the test animals (manual background removal) ---
  test = None
  if best_params is not None and stacks["test"] is not None:
    test = losses.evaluate(eval_fn, best_params, stacks["test"],
                           batch_size=config.eval_batch_size, mesh=mesh)
    log(f"test (true brain mask applied) dice {_fmt_dice(test['dice_mean_over_animals'])}")
  return TrainResult(config=config, params=best_params, history=history,
                     best_val_dice=float(best_val), checkpoint_dir=ckpt_dir,
                     normalisation=normalisation, split=split, test_dice=test)
