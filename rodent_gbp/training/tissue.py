"""The tissue task: the paper's U-Net (section 3.1) on skull-stripped slices against tissue labels.

:func:`train_and_evaluate` loads the data (phantom or a NIfTI folder, split by
animal; ``sources.resolve_data`` decides whether the phantom must be
written), hands :func:`task` to the one training loop
(``trainer.fit``: mesh, Orbax checkpoints, resume, time cap, non-finite
stop, progress) and evaluates the kept params on the test animals.

Loss (``config.loss``, :mod:`rodent_gbp.training.losses`): ``"dice"`` (the
paper), soft Dice; ``"dice_ce"`` (the ``default``), soft Dice + mean pixel
cross-entropy.

Optimiser: SGD with momentum and Keras' time-based decay
``lr_t = lr0 / (1 + decay * t)``, t = number of updates already applied
(:mod:`rodent_gbp.training.optim`); ``paper`` uses lr0 3e-4, decay 1.5e-6,
momentum 0.9, batch 5, no clipping; ``default`` clips the gradient to global
norm 2 first.

Augmentation (``config.augment``): the tissue preset of
:mod:`rodent_gbp.training.augment` (``flip_and_scale``).

Selection: validation mean tissue Dice (WM, GM, CSF) of the animals'
evaluated sessions, or the latest epoch without validation animals.
Evaluation pads the last batch and masks the padding out of the counts.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib
from typing import Any, Callable

import jax
import optax

from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import model as model_lib
from rodent_gbp import sources
from rodent_gbp.training import augment
from rodent_gbp.training import losses
from rodent_gbp.training import optim
from rodent_gbp.training import trainer

Config = configs.Config
PyTree = Any
_LOG = logging.getLogger(__name__)


def train_step(state: trainer.TrainState, batch: dict[str, jax.Array], *, model: model_lib.UNet,
               config: Config) -> tuple[trainer.TrainState, dict[str, jax.Array]]:
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
    image, label = augment.flip_and_scale(jax.random.fold_in(state.rng, state.step), image, label)

  def loss_of(params):
    logits = model.apply({"params": params}, image)
    return losses.segmentation_loss(logits, label, config.loss)

  (loss, terms), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  updates, opt_state = optim.make_optimizer(config).update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "lr": optim.learning_rate_fn(config)(state.step),
             "grad_norm": optax.tree.norm(grads), **terms}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return new_state, metrics


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
  """Split, slice stacks and normalisation record (``data_dir`` None: the
  phantom of ``sources.resolve_data``, written there first if it is not).

  ``split`` (checked against the dataset) replaces the seeded one. Training
  stacks every session of a training animal (``data.other_sessions``);
  validation and test use the animal's evaluated session only.
  """
  if data_dir is None:
    data_dir, _ = sources.resolve_data(workdir, config, log=log)
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
  return split, stacks, data.normalisation_record(volumes)


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
  kept = trainer.kept_index(history)
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
                       log: Callable[[str], None] = _LOG.info) -> TrainResult:
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
  split, stacks, normalisation = _load_data(config, workdir, data_dir, log, split)
  if stacks["train"] is None:
    raise ValueError(f"no training animals in split {split}")
  log(f"split {split}")
  model = model_lib.build_unet(config)
  eval_fn = jax.jit(functools.partial(losses.eval_step, model=model))
  run = trainer.fit(task(config, stacks["train"], stacks["val"], eval_fn),
                    workdir / "checkpoints", split=split, normalisation=normalisation,
                    resume=resume, log=log)
  test = None
  if run.params is not None and stacks["test"] is not None:
    test = losses.evaluate(eval_fn, run.params, stacks["test"],
                           batch_size=config.eval_batch_size, mesh=run.mesh)
    log(f"test (true brain mask applied) dice {_fmt_dice(test['dice_mean_over_animals'])}")
  return TrainResult(config=config, params=run.params, history=run.history,
                     best_val_dice=run.best_score, checkpoint_dir=workdir / "checkpoints",
                     normalisation=normalisation, split=split, test_dice=test)


def task(config: Config, train_arrays: dict, val_arrays: dict | None,
         eval_fn: Callable) -> trainer.Task:
  """The tissue network's ``trainer.Task``: skull-stripped slices and labels,
  :func:`train_step`, validation mean tissue Dice (None without validation
  animals: the latest epoch is kept)."""

  def validate(params, mesh):
    val = losses.evaluate(eval_fn, params, val_arrays, batch_size=config.eval_batch_size,
                          mesh=mesh)
    return val["mean_tissue_dice"], {"val_dice": val["dice_mean_over_animals"]}

  return trainer.Task(
      name="tissue", config=config,
      slices={"image": train_arrays["stripped"], "label": train_arrays["label"]},
      step=train_step, validate=None if val_arrays is None else validate,
      describe=lambda record: _fmt_dice(record.get("val_dice", {})))
