"""Orbax checkpoints of a training run, and loading a trained model.

Layout of ``<workdir>/checkpoints/`` (the ``checkpoint_dir``)::

  config.json          Config.to_dict() of the run
  split.json           {"train": [...], "val": [...], "test": [...]} animal ids
  normalisation.json   the intensity normalisation the data layer applied
  latest/              the state after the most recent completed epoch
    state/             Orbax StandardCheckpointHandler tree (see below)
    meta.json          epoch, step, best_val_dice, history, time (written last)
  best/                the same, for the epoch with the best validation Dice
    state/
    meta.json
  templates.npz        (added later by the pipeline: the template bank)

The Orbax tree is a dict ``{"params", "opt_state", "step", "rng",
"best_val_dice", "epoch"}``: everything needed to continue training exactly.

Atomicity: a checkpoint is first written complete into ``.<name>.tmp`` (Orbax
state, then ``meta.json`` as the commit marker), and only then swapped in by
two renames (``<name>`` -> ``.<name>.old``, ``.<name>.tmp`` -> ``<name>``).  A
SIGKILL at any point leaves either the old or the new checkpoint complete;
:func:`restore` falls back to ``.<name>.old`` if the kill came between the two
renames.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from rodent_gbp import configs

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.json"
NORMALISATION_FILE = "normalisation.json"
META_FILE = "meta.json"
STATE_DIR = "state"


class CheckpointError(ValueError):
  """A checkpoint is missing, incomplete, corrupt or does not fit the config."""


@dataclasses.dataclass
class LoadedModel:
  """A trained model as inference needs it.

  Attributes:
    config: the run's :class:`rodent_gbp.configs.Config`.
    params: the best (by validation Dice) U-Net params, as numpy arrays.
    normalisation: the contents of ``normalisation.json``.
    extras: everything else found: ``split`` (dict of animal ids), ``meta``
      (epoch, step, best_val_dice, history of the best checkpoint),
      ``checkpoint_dir``.
  """

  config: configs.Config
  params: Any
  normalisation: dict
  extras: dict


def _write_json(path: pathlib.Path, obj: Any) -> None:
  """Writes JSON to a temporary name, fsyncs and renames it into place."""
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _json_default(x: Any) -> Any:
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, (np.ndarray, jax.Array)):
    return np.asarray(x).tolist()
  if isinstance(x, pathlib.Path):
    return str(x)
  raise TypeError(f"cannot write {type(x).__name__} to JSON")


def _read_json(path: pathlib.Path) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f"missing {path.name} in {path.parent}") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"corrupt {path.name} in {path.parent}: {e}") from None


def write_run_files(checkpoint_dir: PathLike, *, config: configs.Config,
                    split: dict, normalisation: dict) -> None:
  """Writes config.json, split.json and normalisation.json (atomically each)."""
  from rodent_gbp import parallel
  d = pathlib.Path(checkpoint_dir)
  if parallel.is_lead():  # one writer in multi-host runs
    d.mkdir(parents=True, exist_ok=True)
    _write_json(d / CONFIG_FILE, config.to_dict())
    _write_json(d / SPLIT_FILE, {k: list(v) for k, v in split.items()})
    _write_json(d / NORMALISATION_FILE, normalisation)
  parallel.barrier("rodent_gbp:run_files")


def read_config(checkpoint_dir: PathLike) -> configs.Config:
  """The Config stored in ``checkpoint_dir/config.json``."""
  d = pathlib.Path(checkpoint_dir)
  raw = _read_json(d / CONFIG_FILE)
  try:
    return configs.from_dict(raw)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"config.json in {d} does not describe a Config: {e}") from None


def _complete(path: pathlib.Path) -> bool:
  return (path / META_FILE).is_file() and (path / STATE_DIR).is_dir()


def _resolve(checkpoint_dir: PathLike, name: str) -> pathlib.Path | None:
  """The folder of checkpoint ``name``, recovering from an interrupted swap."""
  d = pathlib.Path(checkpoint_dir)
  path, old = d / name, d / f".{name}.old"
  if _complete(path):
    return path
  if not path.exists() and _complete(old):
    # Killed between the two renames of save(): the old one is still whole.
    os.replace(old, path)
    return path
  return None


def exists(checkpoint_dir: PathLike, name: str = "latest") -> bool:
  """Whether a complete checkpoint ``name`` is in ``checkpoint_dir``."""
  return _resolve(checkpoint_dir, name) is not None


def save(checkpoint_dir: PathLike, name: str, state: dict, meta: dict) -> pathlib.Path:
  """Writes checkpoint ``name`` (``latest`` or ``best``) and swaps it in atomically.

  Args:
    checkpoint_dir: the run's checkpoint folder.
    name: sub-folder name.
    state: pytree of arrays (params, opt_state, step, rng, ...).
    meta: JSON-serialisable dict written beside the state; written last, it
      marks the checkpoint complete.

  Returns:
    The folder of the new checkpoint.
  """
  from rodent_gbp import parallel
  d = pathlib.Path(checkpoint_dir).resolve()
  final, tmp, old = d / name, d / f".{name}.tmp", d / f".{name}.old"
  # Multi-host: every process takes part in Orbax's save (it synchronises
  # them); only process 0 prepares the folder, writes meta.json and renames.
  if parallel.is_lead():
    d.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
  parallel.barrier(f"rodent_gbp:save:{name}:prepare")
  state = jax.device_get(state)
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
    ckptr.save(tmp / STATE_DIR, args=ocp.args.StandardSave(state))
  if parallel.is_lead():
    _write_json(tmp / META_FILE, dict(meta, saved_at=time.time()))
    if final.exists():
      shutil.rmtree(old, ignore_errors=True)
      os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
  parallel.barrier(f"rodent_gbp:save:{name}:done")
  return final


def read_meta(checkpoint_dir: PathLike, name: str = "latest") -> dict | None:
  """The ``meta.json`` of complete checkpoint ``name`` (epoch, history, ...), or None."""
  path = _resolve(checkpoint_dir, name)
  return None if path is None else _read_json(path / META_FILE)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def restore(checkpoint_dir: PathLike, name: str, template: dict) -> tuple[dict, dict]:
  """Restores checkpoint ``name`` into the structure of ``template``.

  Args:
    checkpoint_dir: the run's checkpoint folder.
    name: ``latest`` or ``best``.
    template: a pytree like the saved state (arrays or ShapeDtypeStructs);
      its ``params`` shapes are checked against the stored ones first.

  Returns:
    (state as numpy arrays, meta dict).

  Raises:
    CheckpointError: missing or incomplete checkpoint, unreadable state, or
      params whose names or shapes differ from the template's.
  """
  path = _resolve(checkpoint_dir, name)
  if path is None:
    raise CheckpointError(
        f"no complete checkpoint {name!r} in {pathlib.Path(checkpoint_dir)}")
  meta = _read_json(path / META_FILE)
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
      if not isinstance(x, jax.ShapeDtypeStruct) else x, template)
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
    try:
      stored = ckptr.metadata(path / STATE_DIR).item_metadata.tree
    except Exception as e:  # Orbax raises several types for unreadable files.
      raise CheckpointError(f"corrupt checkpoint state in {path}: {e}") from None
    want = _shapes(abstract.get("params", {}))
    have = _shapes(stored.get("params", {})) if isinstance(stored, dict) else {}
    if want != have:
      diff = [f"{k}: stored {have.get(k, 'missing')}, config {want.get(k, 'missing')}"
              for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
      raise CheckpointError(
          f"checkpoint params in {path} do not match the config's U-Net "
          f"({len(diff)} differ; first: {'; '.join(diff[:3])})")
    try:
      state = ckptr.restore(path / STATE_DIR, args=ocp.args.StandardRestore(abstract))
    except Exception as e:
      raise CheckpointError(f"cannot restore checkpoint state in {path}: {e}") from None
  return jax.device_get(state), meta


def load_model(checkpoint_dir: PathLike, *, which: str = "best") -> LoadedModel:
  """Loads the config, best params and normalisation of a trained run.

  Args:
    checkpoint_dir: ``<workdir>/checkpoints`` of a run of ``train_and_evaluate``.
    which: ``best`` (default) or ``latest``.

  Raises:
    CheckpointError: naming the folder, if anything is missing, corrupt or
      inconsistent with the stored config.
  """
  # Imported here: train imports this module.
  from rodent_gbp import train

  d = pathlib.Path(checkpoint_dir)
  if not d.is_dir():
    raise CheckpointError(f"checkpoint folder {d} does not exist")
  config = read_config(d)
  template = train.abstract_checkpoint_state(config)
  state, meta = restore(d, which, template)
  normalisation = _read_json(d / NORMALISATION_FILE)
  split = _read_json(d / SPLIT_FILE) if (d / SPLIT_FILE).is_file() else None
  return LoadedModel(config=config, params=state["params"], normalisation=normalisation,
                     extras={"split": split, "meta": meta, "checkpoint_dir": str(d)})
