"""Orbax checkpoints of a training run, and loading a trained model.

Layout of ``<workdir>/checkpoints/`` (the ``checkpoint_dir``)::

  config.json          Config.to_dict() of the run
  split.json           {"train": [...], "val": [...], "test": [...]} animal ids
  normalisation.json   the intensity normalisation the data layer applied
  epochs/              an ``orbax.checkpoint.CheckpointManager`` root
    <epoch>/           the checkpoint taken after epoch <epoch> (Orbax step = epoch)
      params/          U-Net params
      train_state/     opt_state, step, rng, best_val_dice, epoch
      meta/            JSON: epoch, step, best_val_dice, kept, kept_epoch, history
      metrics/         Orbax's: {"val_mean_tissue_dice": ...} (runs with validation)
  templates.npz        (added later by the pipeline: the template bank)

Which checkpoints stay: the newest :data:`MAX_TO_KEEP`, and, in runs with
validation animals, also the one with the best validation mean tissue Dice
(Orbax's preservation policy; at most ``MAX_TO_KEEP + 1`` on disk). ``"latest"``
names the newest; ``"best"`` the best by validation Dice, or the newest when
there are no validation animals. Each checkpoint's meta says which rule applied
(``kept``: ``"best"`` or ``"latest"``) and the epoch it picked (``kept_epoch``).

Atomicity: Orbax writes a checkpoint into a temporary folder beside
``<epoch>/`` and renames it into place when complete. A SIGKILL at any point
leaves the earlier checkpoints whole; readers ignore the temporary folder and
the next training run deletes it. Nothing is renamed when reading.

Multi-host: every process takes part in :func:`save` (Orbax synchronises them
and one process writes the shared files); the JSON run files are written by
process 0 alone. Reading (:func:`restore`, :func:`read_meta`, :func:`load_model`)
involves no other process.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from rodent_gbp import configs
from rodent_gbp import fileio
from rodent_gbp import model as model_lib
from rodent_gbp import parallel
from rodent_gbp.errors import CheckpointError

__all__ = ["CheckpointError", "LoadedModel", "load_model", "read_meta", "read_config",
           "write_run_files", "open_for_training", "save", "restore", "exists"]

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
NORMALISATION_FILE = "normalisation.json"
EPOCHS_DIR = "epochs"
MAX_TO_KEEP = 2  # newest checkpoints kept (resume needs one; the other is a spare)
SCORE = "val_mean_tissue_dice"  # the Orbax metric "best" is chosen by
_ITEMS = ("params", "train_state", "meta")


@dataclasses.dataclass
class LoadedModel:
  """A trained model as inference needs it.

  Attributes:
    config: the run's :class:`rodent_gbp.configs.Config`.
    params: the best (by validation Dice) U-Net params, as numpy arrays.
    normalisation: the contents of ``normalisation.json``.
    extras: everything else found: ``split`` (dict of animal ids), ``meta``
      (epoch, step, best_val_dice, kept, kept_epoch, history of the loaded
      checkpoint), ``checkpoint_dir``.
  """

  config: configs.Config
  params: Any
  normalisation: dict
  extras: dict


def _read_json(path: pathlib.Path) -> Any:
  try:
    return fileio.read_json(path)
  except FileNotFoundError:
    raise CheckpointError(f"missing {path.name} in {path.parent}") from None
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
    raise CheckpointError(f"corrupt {path.name} in {path.parent}: {e}") from None


def write_run_files(checkpoint_dir: PathLike, *, config: configs.Config,
                    split: dict, normalisation: dict) -> None:
  """Writes config.json, split.json and normalisation.json (atomically each)."""
  d = pathlib.Path(checkpoint_dir)
  if parallel.is_lead():  # one writer in multi-host runs
    d.mkdir(parents=True, exist_ok=True)
    fileio.write_json(d / CONFIG_FILE, config.to_dict())
    fileio.write_json(d / SPLIT_FILE, {k: list(v) for k, v in split.items()})
    fileio.write_json(d / NORMALISATION_FILE, normalisation)
  parallel.barrier("rodent_gbp:run_files")


def read_config(checkpoint_dir: PathLike) -> configs.Config:
  """The Config stored in ``checkpoint_dir/config.json``."""
  d = pathlib.Path(checkpoint_dir)
  raw = _read_json(d / CONFIG_FILE)
  try:
    return configs.from_dict(raw)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"config.json in {d} does not describe a Config: {e}") from None


def read_split(checkpoint_dir: PathLike) -> dict[str, list[str]]:
  """The split stored in ``checkpoint_dir/split.json``."""
  d = pathlib.Path(checkpoint_dir)
  raw = _read_json(d / SPLIT_FILE)
  if not isinstance(raw, dict):
    raise CheckpointError(f"split.json in {d} is not a train / val / test object")
  return {k: sorted(str(a) for a in raw.get(k, [])) for k in ("train", "val", "test")}


# ----------------------------------------------------------------------------
# The Orbax manager
# ----------------------------------------------------------------------------


def rank(score: float | None) -> float:
  """The value checkpoints are ranked by: the score, or -inf if missing or NaN.

  Ties go to the later checkpoint (Orbax's ``best_step`` and the training
  loop's ``>=`` agree on that).
  """
  return -math.inf if score is None or not math.isfinite(score) else float(score)


def _best_fn(metrics: dict) -> float:
  return rank(metrics.get(SCORE))


def _manager(root: pathlib.Path, *, track_best: bool, write: bool
             ) -> ocp.CheckpointManager:
  """A writer (every process, Orbax synchronises them) or a reader (this process only).

  Readers wait on no other process, so one process of a multi-host run may
  load a model or read a meta alone.
  """
  keep = [checkpoint_managers.LatestN(n=MAX_TO_KEEP)]
  if track_best:
    keep.append(checkpoint_managers.BestN(get_metric_fn=_best_fn, n=1))
  me = jax.process_index()
  processes = (ocp.options.MultiprocessingOptions() if write else
               ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))
  options = ocp.CheckpointManagerOptions(
      best_fn=_best_fn, best_mode="max", create=write, cleanup_tmp_directories=write,
      save_root_metadata=write, enable_async_checkpointing=False,
      multiprocessing_options=processes,
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(keep))
  tree = dict(multiprocessing_options=processes)
  handlers = {"params": ocp.StandardCheckpointHandler(**tree),
              "train_state": ocp.StandardCheckpointHandler(**tree),
              "meta": ocp.JsonCheckpointHandler(**tree)}
  return ocp.CheckpointManager(root, options=options, item_names=_ITEMS,
                               item_handlers=handlers)


def open_for_training(checkpoint_dir: PathLike, *, track_best: bool, fresh: bool
                      ) -> ocp.CheckpointManager:
  """The manager a training run saves through (every process calls this).

  Args:
    checkpoint_dir: the run's checkpoint folder.
    track_best: keep the best checkpoint by validation Dice besides the
      newest ones (runs with validation animals).
    fresh: delete an earlier run's checkpoints first (a run that does not
      resume starts its epochs at 0 again).

  Returns:
    An ``ocp.CheckpointManager``; close it when training ends.
  """
  root = pathlib.Path(checkpoint_dir).resolve() / EPOCHS_DIR
  if fresh and parallel.is_lead():
    shutil.rmtree(root, ignore_errors=True)
  parallel.barrier("rodent_gbp:checkpoints_fresh")
  return _manager(root, track_best=track_best, write=True)


def save(manager: ocp.CheckpointManager, epoch: int, state: dict, meta: dict,
         score: float | None) -> None:
  """Saves the checkpoint of ``epoch`` (every process calls this).

  Args:
    manager: from :func:`open_for_training`.
    epoch: the epoch just completed (the Orbax step).
    state: ``{"params", "opt_state", "step", "rng", "best_val_dice", "epoch"}``.
    meta: JSON-able dict (NaN is stored as null).
    score: validation mean tissue Dice, None in runs without validation.
  """
  state = jax.device_get(state)
  rest = {k: v for k, v in state.items() if k != "params"}
  manager.save(epoch, args=ocp.args.Composite(
      params=ocp.args.StandardSave(state["params"]),
      train_state=ocp.args.StandardSave(rest),
      meta=ocp.args.JsonSave(fileio.to_jsonable(dict(meta, saved_at=time.time())))),
      metrics=None if score is None else {SCORE: fileio.to_jsonable(score)})


def _reader(checkpoint_dir: PathLike) -> ocp.CheckpointManager | None:
  root = pathlib.Path(checkpoint_dir) / EPOCHS_DIR
  return _manager(root, track_best=True, write=False) if root.is_dir() else None


def _step(manager: ocp.CheckpointManager | None, which: str) -> int | None:
  if which not in ("best", "latest"):
    raise ValueError(f"unknown checkpoint {which!r}; use 'best' or 'latest'")
  if manager is None:
    return None
  latest = manager.latest_step()
  if which == "latest" or latest is None:
    return latest
  best = manager.best_step()  # None when no checkpoint has a score
  return latest if best is None else best


def exists(checkpoint_dir: PathLike, name: str = "latest") -> bool:
  """Whether a complete checkpoint ``name`` (best or latest) is in ``checkpoint_dir``."""
  return _step(_reader(checkpoint_dir), name) is not None


def _locate(checkpoint_dir: PathLike, name: str
            ) -> tuple[ocp.CheckpointManager, int, pathlib.Path]:
  manager = _reader(checkpoint_dir)
  step = _step(manager, name)
  if step is None:
    raise CheckpointError(
        f"no complete checkpoint {name!r} in {pathlib.Path(checkpoint_dir)}")
  return manager, step, pathlib.Path(checkpoint_dir) / EPOCHS_DIR / str(step)


def _restore_meta(manager, step: int, path: pathlib.Path) -> dict:
  try:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # Orbax raises several types for unreadable files.
    raise CheckpointError(f"corrupt checkpoint meta in {path}: {e}") from None


def read_meta(checkpoint_dir: PathLike, name: str = "latest") -> dict | None:
  """The meta of checkpoint ``name`` (epoch, step, kept, history, ...), or None."""
  manager = _reader(checkpoint_dir)
  step = _step(manager, name)
  if step is None:
    return None
  return _restore_meta(manager, step, pathlib.Path(checkpoint_dir) / EPOCHS_DIR / str(step))


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _abstract(tree: Any) -> Any:
  return jax.tree_util.tree_map(
      lambda x: x if isinstance(x, jax.ShapeDtypeStruct)
      else jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def restore(checkpoint_dir: PathLike, name: str, template: dict) -> tuple[dict, dict]:
  """Restores checkpoint ``name`` into the structure of ``template``.

  Args:
    checkpoint_dir: the run's checkpoint folder.
    name: ``latest`` or ``best``.
    template: a pytree like the saved state (arrays or ShapeDtypeStructs):
      ``params`` alone restores the params only; with ``opt_state``, ``step``,
      ``rng``, ``best_val_dice`` and ``epoch`` it restores everything. Its
      ``params`` shapes are checked against the stored ones first.

  Returns:
    (state as numpy arrays, meta dict).

  Raises:
    CheckpointError: missing checkpoint, unreadable state or meta, or params
      whose names or shapes differ from the template's.
  """
  manager, step, path = _locate(checkpoint_dir, name)
  meta = _restore_meta(manager, step, path)
  abstract = _abstract(template)
  try:
    stored = manager.item_metadata(step)["params"].tree
  except Exception as e:
    raise CheckpointError(f"corrupt checkpoint state in {path}: {e}") from None
  want, have = _shapes(abstract["params"]), _shapes(stored)
  if want != have:
    diff = [f"{k}: stored {have.get(k, 'missing')}, config {want.get(k, 'missing')}"
            for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
    raise CheckpointError(
        f"checkpoint params in {path} do not match the config's U-Net "
        f"({len(diff)} differ; first: {'; '.join(diff[:3])})")
  rest = {k: v for k, v in abstract.items() if k != "params"}
  args = {"params": ocp.args.StandardRestore(abstract["params"])}
  if rest:
    args["train_state"] = ocp.args.StandardRestore(rest)
  try:
    out = manager.restore(step, args=ocp.args.Composite(**args))
  except Exception as e:
    raise CheckpointError(f"cannot restore checkpoint state in {path}: {e}") from None
  state = dict(out["train_state"]) if rest else {}
  state["params"] = out["params"]
  return jax.device_get(state), meta


def abstract_params(config: configs.Config) -> Any:
  """Shapes and dtypes of the U-Net params of ``config`` (nothing is allocated)."""
  size = 2**config.depth  # conv params do not depend on the image size
  model = model_lib.build_unet(config)
  return jax.eval_shape(
      lambda: model_lib.init_params(model, jax.random.PRNGKey(0), (size, size)))


def load_model(checkpoint_dir: PathLike, *, which: str = "best") -> LoadedModel:
  """Loads the config, params and normalisation of a trained run.

  Args:
    checkpoint_dir: ``<workdir>/checkpoints`` of a run of ``train_and_evaluate``.
    which: ``best`` (default: the best by validation Dice, or the newest in
      runs without validation animals) or ``latest``.

  Raises:
    CheckpointError: naming the folder, if anything is missing, corrupt or
      inconsistent with the stored config.
  """
  d = pathlib.Path(checkpoint_dir)
  if not d.is_dir():
    raise CheckpointError(f"checkpoint folder {d} does not exist")
  config = read_config(d)
  state, meta = restore(d, which, {"params": abstract_params(config)})
  normalisation = _read_json(d / NORMALISATION_FILE)
  split = _read_json(d / SPLIT_FILE) if (d / SPLIT_FILE).is_file() else None
  return LoadedModel(config=config, params=state["params"], normalisation=normalisation,
                     extras={"split": split, "meta": meta, "checkpoint_dir": str(d)})
