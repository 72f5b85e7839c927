"""Where a run's data comes from: a public set, a folder, or the phantom.

:func:`resolve_data` is the one place that decides whether the phantom must be
written (the main job, the tissue trainer, the phantom binary and the test
fixtures call it); :func:`data_record` says what the data is
(``results.json["data"]``); :func:`animal_columns` reads a converted set's
per-animal table.
"""

from __future__ import annotations

import csv
import logging
import pathlib
from typing import Any, Callable

from rodent_gbp import configs
from rodent_gbp import datasets
from rodent_gbp import fileio
from rodent_gbp import parallel
from rodent_gbp import phantom as phantom_lib
from rodent_gbp.errors import UsageError

_LOG = logging.getLogger(__name__)


def resolve_data(workdir: pathlib.Path, config: configs.Config, *, data_dir=None,
                 dataset: str | None = None, data_root=None, data_cache=None,
                 resolution: str = "paper", log: Callable[[str], None] = _LOG.info
                 ) -> tuple[pathlib.Path, bool]:
  """The run's dataset folder, and whether it is the phantom.

  ``dataset`` (a public set's name) is converted (``datasets.prepare``) from
  ``data_root`` or downloaded, into ``data_cache``; otherwise ``data_dir`` is
  used as it is; with neither, the phantom is written into ``<workdir>/data``.
  """
  if dataset is not None and data_dir is not None:
    raise UsageError("give either --dataset (a public set) or --data_dir (a folder in "
                     "the project's layout), not both")
  if dataset is not None:
    folder = (datasets.prepare(dataset, data_root=data_root, cache_dir=data_cache,
                               resolution=resolution, log=log)
              if parallel.is_lead() else None)
    parallel.barrier("rodent_gbp:dataset")
    if folder is None:  # the other processes find the lead's conversion in the cache
      folder = datasets.prepare(dataset, data_root=data_root, cache_dir=data_cache,
                                resolution=resolution, log=None)
    return folder, False
  if data_root is not None:
    raise UsageError("--data_root names a local copy of a public set: give --dataset too")
  if data_dir is not None:
    return pathlib.Path(data_dir), False
  data_dir = workdir / "data"
  ensure_phantom(data_dir, config, log=log)
  return data_dir, True


def ensure_phantom(folder, config: configs.Config, *,
                   log: Callable[[str], None] = _LOG.info) -> pathlib.Path:
  """``folder`` holding the phantom of ``config`` (``animals``, ``phantom_seed``,
  ``image_size``, ``phantom`` kind): written unless a complete phantom is there.

  The one rule for "is the phantom already there?" (the main job, the tissue
  trainer, ``experiments/make_phantom.py`` and the test fixtures use it).

  Raises:
    UsageError: the folder holds a complete phantom of another kind.
  """
  folder = pathlib.Path(folder)
  existing = phantom_lib.kind_of(folder)
  if existing is not None and existing != config.phantom:
    raise UsageError(f"{folder}: holds a {existing} phantom and this run asks for a "
                     f"{config.phantom} one; give another --workdir")
  if existing is None and parallel.is_lead():
    log(f"writing the synthetic phantom ({config.animals} animals, {config.phantom}) "
        f"to {folder}")
    phantom_lib.write_phantom(folder, animals=config.animals, seed=config.phantom_seed,
                          size=config.image_size, kind=config.phantom)
  parallel.barrier("rodent_gbp:phantom")
  return folder


def data_record(data_dir: pathlib.Path, *, phantom: bool) -> dict[str, Any]:
  """Where the run's data came from (``results.json["data"]``).

  A converted public set: its ``dataset.json`` provenance (set, repository,
  commit, manifest hash, licence, citation, resolution, label kind); a
  phantom folder (written here or given as ``data_dir``): its generator
  settings from ``phantom.json``; any other folder: its path.
  """
  record_path = data_dir / "dataset.json"
  if record_path.is_file():
    rec = fileio.read_json(record_path)
    info = datasets.get(rec["dataset"]) if rec.get("dataset") in datasets.NAMES else None
    keep = ("dataset", "repository", "commit", "subdir", "source_url", "licence",
            "citation", "manifest_sha256", "converter_version", "resolution",
            "files_present", "files_in_manifest", "skipped_sessions", "skipped_animals")
    out = {k: rec[k] for k in keep if k in rec} | {"folder": str(data_dir)}
    out["labels"] = (rec.get("labels") or {}).get("kind", "labels")
    out["skull_stripped"] = bool(info.skull_stripped if info else rec.get("skull_stripped"))
    return out
  if phantom or phantom_lib.is_complete(data_dir):
    info = fileio.read_json(data_dir / phantom_lib.COMPLETE_FILE)
    return {"dataset": "phantom", "folder": str(data_dir), "animals": info.get("animals"),
            "image_size": info.get("size"), "phantom_seed": info.get("seed"),
            "phantom_kind": info.get("kind", "standard"),
            "labels": "generator truth", "skull_stripped": False}
  return {"dataset": "folder", "folder": str(data_dir), "labels": "labels",
          "skull_stripped": False}


def animal_columns(data_dir: pathlib.Path) -> dict[str, dict]:
  """The rows of a converted set's ``animals.csv`` by animal id (empty without one)."""
  path = data_dir / "animals.csv"
  if not path.is_file():
    return {}
  with open(path, newline="") as f:
    return {r["animal_id"]: r for r in csv.DictReader(f)}
