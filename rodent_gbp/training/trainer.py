"""The one training loop: every network the project trains goes through :func:`fit`.

A :class:`Task` says what is trained: the network's config, the training set
(placed on the devices once), the pure step that takes one batch of it by
index, and how an epoch is scored for model selection (the tissue network:
validation mean tissue Dice; the extractor: validation 3D brain Dice). The
loop is the same for both:

* batches: the rows of epoch e are ``data.iterate_batches`` with
  ``drop_remainder=True`` (a permutation from (seed, epoch)); only the
  (steps, batch) int32 index array of an epoch crosses from the host, and the
  step gathers its batch on the devices;
* devices: batches are split over a ``parallel.make_mesh()`` mesh of all
  devices (and hosts), the state is replicated; the same jitted step runs on
  1 or N devices (the batch must be a multiple of the device count);
* non-finite stop: each step reports its loss and gradient norm; at the end
  of an epoch they are checked (``optim.check_finite``) and the first
  non-finite step stops training with a ``TrainingError`` before that epoch is
  scored or saved;
* selection: after every epoch the task scores the params; the kept params
  are the best by that score (NaN ranks lowest, the later epoch wins a tie, as
  Orbax's ``best_step`` does), or the latest without a score;
* checkpoints: one per epoch through :mod:`rodent_gbp.training.checkpoint`
  (Orbax ``CheckpointManager``: the newest two and the best); ``resume``
  continues after the latest one;
* time cap (``config.max_train_seconds`` > 0): checked after every step on
  process 0's clock, whose decision is broadcast so every process runs the
  same steps;
* progress: one line per epoch (loss, gradient norm, score, images/s, ETA).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import pathlib
import time
from typing import Any, Callable, Mapping

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import model as model_lib
from rodent_gbp import parallel
from rodent_gbp.errors import TrainingError
from rodent_gbp.training import checkpoint
from rodent_gbp.training import optim

_LOG = logging.getLogger(__name__)

Config = configs.Config
PyTree = Any

# Fields that must agree between a checkpoint and the config resuming it.
RESUME_MUST_MATCH = ("animals", "image_size", "phantom_seed", "split_seed", "features",
                     "depth", "num_classes", "optimizer", "seed")

# The clock of the time cap (tests replace it to make processes disagree).
clock = time.perf_counter


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training.

  Attributes:
    step: () int32, updates applied so far (t of the lr schedule).
    params: U-Net params.
    opt_state: optax state of ``optim.make_optimizer``.
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
  opt_state = optim.make_optimizer(config).init(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=opt_state, rng=aug_rng)


def checkpoint_tree(state: TrainState, best_score: float, epoch: int) -> dict:
  """What one epoch's checkpoint holds."""
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step,
          "rng": state.rng, "best_val_dice": np.float32(best_score),
          "epoch": np.int32(epoch)}


def _state_from_tree(tree: dict) -> TrainState:
  return TrainState(step=jnp.asarray(tree["step"]), params=tree["params"],
                    opt_state=tree["opt_state"], rng=jnp.asarray(tree["rng"]))


def abstract_checkpoint_state(config: Config) -> dict:
  """Shapes and dtypes of a checkpoint of ``config`` (nothing is allocated)."""
  size = 2**config.depth  # conv params do not depend on the image size
  state = jax.eval_shape(
      lambda: create_train_state(config, jax.random.PRNGKey(0), (size, size)))
  return checkpoint_tree(state, 0.0, 0) | {
      "best_val_dice": jax.ShapeDtypeStruct((), jnp.float32),
      "epoch": jax.ShapeDtypeStruct((), jnp.int32)}


def epoch_rows(n: int, batch_size: int, *, seed: int, epoch: int) -> np.ndarray:
  """(steps, batch_size) int32: the slice indices of every training step of ``epoch``.

  Exactly the rows ``data.iterate_batches(..., shuffle=True,
  drop_remainder=True)`` yields, in order (it is asked for them).
  """
  rows = data.iterate_batches({"row": np.arange(n, dtype=np.int32)}, batch_size,
                              seed=seed, epoch=epoch, shuffle=True, drop_remainder=True)
  return np.stack([b["row"] for b in rows])


def gather(slices: Mapping[str, jax.Array], rows: jax.Array, i: jax.Array,
           sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """The batch ``slices[rows[i]]`` of the device-resident training set, split over
  the devices by ``sharding`` (``P("data")``)."""
  idx = jax.lax.dynamic_index_in_dim(rows, i, keepdims=False)
  return jax.lax.with_sharding_constraint({k: v[idx] for k, v in slices.items()}, sharding)


def _agree(flag: bool) -> bool:
  """Process 0's ``flag`` on every process (a collective in multi-process runs)."""
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.bool_(flag)))


def kept_index(history: list[dict]) -> int | None:
  """Which epoch record's params a run keeps (what ``checkpoint`` calls "best").

  With a validation score: the highest ``val_mean_tissue_dice`` (the task's
  score; NaN ranks lowest; the later epoch wins a tie, as Orbax's
  ``best_step`` does). Without: the last epoch. None for an empty history.
  """
  if not history:
    return None
  if not any("val_dice" in r for r in history):
    return len(history) - 1
  ranks = [checkpoint.rank(r.get("val_mean_tissue_dice")) for r in history]
  return max(range(len(ranks)), key=lambda i: (ranks[i], i))


@dataclasses.dataclass(frozen=True)
class Task:
  """What :func:`fit` trains.

  Attributes:
    name: the network's name (``tissue``, ``extractor``), in progress lines.
    config: its config (network, optimiser, batch size, epochs, seed, time cap).
    slices: the training set, ``image`` (N, H, W[, 1]) and the task's target,
      host arrays placed on the devices once (replicated).
    step: ``step(state, batch, *, model, config) -> (state, metrics)``, pure,
      one update on a gathered batch (a dict like ``slices``); metrics hold
      ``loss``, ``grad_norm`` (before clipping) and ``lr``.
    validate: ``validate(params, mesh) -> (score, record fields)`` after every
      epoch, higher is better; None: no validation, the latest epoch is kept.
    describe: the validation part of an epoch's progress line from its record.
    init_params: params to start from instead of ``config.seed``'s initialisation
      (a fine-tune; the optimiser starts fresh); ignored on resume.
  """

  name: str
  config: Config
  slices: Mapping[str, np.ndarray]
  step: Callable[..., tuple[TrainState, dict]]
  validate: Callable[[PyTree, jax.sharding.Mesh], tuple[float, dict]] | None = None
  describe: Callable[[dict], str] = lambda record: ""
  init_params: PyTree | None = None


@dataclasses.dataclass
class Fit:
  """What :func:`fit` returns.

  Attributes:
    params: the kept params (numpy; the best by the task's score, or the latest).
    history: one dict per epoch: epoch (from 0), step, loss, lr, grad_norm_max,
      grad_norm_median, images_per_s, train_seconds, partial_epoch,
      val_mean_tissue_dice (the score; minus the loss without validation),
      the task's validation fields, seconds.
    best_score: the kept epoch's score.
    kept_epoch: the kept epoch (from 0), None when nothing was trained.
    mesh: the device mesh the run used.
  """

  params: PyTree
  history: list[dict]
  best_score: float
  kept_epoch: int | None
  mesh: jax.sharding.Mesh


def _check_resumable(task: Task, checkpoint_dir: pathlib.Path, split: dict | None) -> None:
  stored = checkpoint.read_config(checkpoint_dir)
  bad = [f for f in RESUME_MUST_MATCH if getattr(stored, f) != getattr(task.config, f)]
  if bad:
    raise checkpoint.CheckpointError(
        f"cannot resume from {checkpoint_dir}: config differs in "
        + ", ".join(f"{f} ({getattr(stored, f)!r} -> {getattr(task.config, f)!r})"
                    for f in bad))
  stored_split = checkpoint.read_split(checkpoint_dir)
  if split is not None and stored_split != split:
    raise checkpoint.CheckpointError(
        f"cannot resume from {checkpoint_dir}: its split {stored_split} differs from this "
        f"run's {split}")


def _indexed_step(state, slices, rows, i, *, task: Task, model, sharding):
  return task.step(state, gather(slices, rows, i, sharding), model=model, config=task.config)


def fit(task: Task, checkpoint_dir, *, split: dict | None = None,
        normalisation: dict | None = None, resume: bool = False,
        log: Callable[[str], None] = _LOG.info) -> Fit:
  """Trains ``task`` for ``task.config.epochs`` epochs (or until the time cap).

  Args:
    task: what to train (:class:`Task`).
    checkpoint_dir: the Orbax folder (``config.json``, ``split.json``,
      ``normalisation.json`` and ``epochs/``); an earlier run's checkpoints
      there are replaced unless ``resume``.
    split, normalisation: recorded beside the checkpoints (``split`` also
      checked on resume).
    resume: continue after the latest checkpoint in ``checkpoint_dir``; the
      stored config must agree on :data:`RESUME_MUST_MATCH` (else
      ``CheckpointError``); an epoch cut short by the time cap counts as done.
    log: one progress line per epoch.

  Raises:
    TrainingError: a non-finite loss or gradient norm.
  """
  config = task.config
  ckpt_dir = pathlib.Path(checkpoint_dir)
  n = len(task.slices["image"])
  steps_per_epoch = n // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{n} training slices is less than one batch of {config.batch_size}")
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh)
  log(f"{task.name}: {n} training slices of {tuple(task.slices['image'].shape[1:3])}, "
      f"{steps_per_epoch} steps per epoch; devices: {parallel.describe(mesh)}")
  model = model_lib.build_unet(config)
  state = create_train_state(config, jax.random.PRNGKey(config.seed),
                             task.slices["image"].shape[1:3])
  if task.init_params is not None:
    params = jax.tree.map(jnp.asarray, task.init_params)
    if jax.tree.structure(params) != jax.tree.structure(state.params):
      raise ValueError(f"{task.name}: init_params do not fit the config's network")
    state = state.replace(params=params, opt_state=optim.make_optimizer(config).init(params))
  track_best = task.validate is not None
  history: list[dict] = []
  best, best_epoch, best_params = -math.inf, None, None
  start_epoch = 0
  if resume and checkpoint.exists(ckpt_dir, "latest"):
    _check_resumable(task, ckpt_dir, split)
    template = checkpoint_tree(state, 0.0, 0)
    tree, meta = checkpoint.restore(ckpt_dir, "latest", template)
    state = _state_from_tree(tree)
    start_epoch = int(tree["epoch"]) + 1
    history = list(meta.get("history", []))
    # The JSON value, not the float32 in the tree: Orbax ranks by the former.
    best = math.nan if meta.get("best_val_dice") is None else meta["best_val_dice"]
    best_epoch = meta.get("kept_epoch")
    best_params = checkpoint.restore(ckpt_dir, "best",
                                     {"params": template["params"]})[0]["params"]
    log(f"resumed from {ckpt_dir} (epoch {start_epoch - 1}) at epoch {start_epoch}, "
        f"step {int(state.step)}, best score {best:.4f}")
  elif resume:
    log(f"nothing to resume in {ckpt_dir}; starting from scratch")
  state = parallel.replicate(state, mesh)
  slices = parallel.replicate(dict(task.slices), mesh)
  checkpoint.write_run_files(ckpt_dir, config=config, split=split or {},
                             normalisation=normalisation or {})
  manager = checkpoint.open_for_training(ckpt_dir, track_best=track_best,
                                         fresh=start_epoch == 0)
  step_fn = jax.jit(functools.partial(_indexed_step, task=task, model=model,
                                      sharding=parallel.batch_sharding(mesh)),
                    donate_argnums=0)

  t_start = clock()
  out_of_time = False
  reserve = 0.0  # seconds the last validation + checkpoint took, kept for the next
  for epoch in range(start_epoch, config.epochs):
    t_epoch = clock()
    rows = parallel.replicate(epoch_rows(n, config.batch_size, seed=config.seed, epoch=epoch),
                              mesh)
    step_losses, step_norms = [], []
    for i in range(steps_per_epoch):
      state, metrics = step_fn(state, slices, rows, np.int32(i))
      step_losses.append(metrics["loss"])
      step_norms.append(metrics["grad_norm"])
      if config.max_train_seconds > 0 and _agree(
          clock() - t_start + reserve > config.max_train_seconds):
        out_of_time = True
        break
    step_losses, step_norms = jax.device_get((step_losses, step_norms))
    try:
      optim.check_finite(step_losses, step_norms, config=config, epoch=epoch,
                         first_step=int(state.step) - len(step_losses),
                         checkpoint_dir=ckpt_dir)
    except TrainingError:
      manager.close()
      raise
    loss = float(np.mean(step_losses))
    t_train_end = clock()
    train_seconds = t_train_end - t_epoch
    record = {"epoch": epoch, "step": int(state.step), "loss": loss,
              "lr": float(metrics["lr"]), "grad_norm_max": float(np.max(step_norms)),
              "grad_norm_median": float(np.median(step_norms)),
              "images_per_s": len(step_losses) * config.batch_size / max(train_seconds, 1e-9),
              "train_seconds": train_seconds, "partial_epoch": out_of_time}
    if track_best:
      score, fields = task.validate(state.params, mesh)
      record |= fields
    else:
      score = -loss  # no validation: the latest epoch is kept
    record["val_mean_tissue_dice"] = score
    record["seconds"] = clock() - t_epoch
    history.append(record)

    if not track_best or checkpoint.rank(score) >= checkpoint.rank(best):
      best, best_epoch = score, epoch
      best_params = jax.device_get(state.params)
    meta = {"epoch": epoch, "step": int(state.step), "best_val_dice": best,
            "kept": "best" if track_best else "latest", "kept_epoch": best_epoch,
            "history": history}
    checkpoint.save(manager, epoch, checkpoint_tree(state, best, epoch), meta,
                    score if track_best else None)

    elapsed = clock() - t_start
    reserve = clock() - t_train_end
    remaining = (config.epochs - epoch - 1) * record["seconds"]
    if config.max_train_seconds > 0:
      remaining = min(remaining, max(config.max_train_seconds - elapsed, 0.0))
    log(f"{task.name} epoch {epoch + 1}/{config.epochs} step {record['step']} loss {loss:.4f} "
        f"grad norm {record['grad_norm_median']:.3g} (max {record['grad_norm_max']:.3g}) "
        f"val {task.describe(record)} (score {score:.4f}, best {best:.4f}) "
        f"{record['images_per_s']:.1f} img/s, {elapsed:.0f} s elapsed, ETA {remaining:.0f} s")
    if out_of_time:
      log(f"stopping: max_train_seconds={config.max_train_seconds} reached")
      break
  manager.close()
  return Fit(params=best_params, history=history, best_score=float(best),
             kept_epoch=best_epoch, mesh=mesh)
