"""Writing result files: atomically, and JSON with NaN as null.

One definition of each: every module that writes a file it must not leave
half-written goes through :func:`atomic_path` (write to a hidden temporary file
beside the target, then ``os.replace``), so an interrupted run leaves the old
file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import pathlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[pathlib.Path]:
  """Yields a temporary path beside ``path``; renames it onto ``path`` on success.

  ``suffix`` is appended to the temporary name for writers that insist on an
  extension (``np.savez`` adds ``.npz``, nibabel picks the format from it).
  On an exception the temporary file is removed and ``path`` is untouched.

  Example::

    with atomic_path(out / "bank.npz", suffix=".npz") as tmp:
      np.savez_compressed(tmp, masks=masks)
  """
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def atomic_write_text(path: PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  with atomic_path(path) as tmp:
    tmp.write_text(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
  """Writes ``data`` to ``path`` atomically."""
  with atomic_path(path) as tmp:
    tmp.write_bytes(data)


def to_jsonable(x: Any) -> Any:
  """A JSON-able copy: numpy scalars and arrays to Python, NaN and inf to None."""
  if isinstance(x, Mapping):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return to_jsonable(x.tolist())
  if isinstance(x, np.bool_):
    return bool(x)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, (np.floating, float)):
    f = float(x)
    return None if math.isnan(f) or math.isinf(f) else f
  if isinstance(x, pathlib.PurePath):
    return str(x)
  return x


def dumps_json(obj: Any) -> str:
  """Strict JSON text of ``obj`` (NaN written as null; never invalid JSON)."""
  return json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: PathLike, obj: Any) -> None:
  """Writes ``obj`` as strict JSON (NaN as null), atomically."""
  atomic_write_text(path, dumps_json(obj))


def read_json(path: PathLike) -> Any:
  """Reads a JSON file (errors are the caller's to word)."""
  return json.loads(pathlib.Path(path).read_text())


def write_csv(path: PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
  """Writes flat dicts as CSV, atomically; columns in order of first appearance.

  NaN is written as an empty cell.
  """
  keys: list[str] = []
  for r in rows:
    keys += [k for k in r if k not in keys]
  with atomic_path(path) as tmp:
    with open(tmp, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=keys)
      w.writeheader()
      for r in rows:
        w.writerow({k: to_jsonable(v) for k, v in r.items()})
