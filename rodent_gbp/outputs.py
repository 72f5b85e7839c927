"""A scan's output set on disk: one writer at a time, all or nothing, nothing left behind.

``rodent-gbp-segment`` writes seven files per scan (``<name>_brainmask.nii.gz``
... ``<name>_report.json``). This module makes that set safe to run twice and
safe to kill:

* :func:`claim`: a per-scan lock, ``fcntl.flock`` on ``<out_dir>/.<name>.lock``,
  taken before any compute and without waiting: a second run for the same
  name in the same folder gets one error line naming the outputs and the
  holder's pid. The lock file is removed when the claim ends (while it is
  still held, so a run that opened it meanwhile sees the file gone and
  retries on a new one). A folder the claim created for the call is removed
  again when the call fails and the folder is empty;
* :func:`temporary_folder` and :func:`publish`: the files are written into a
  hidden ``.<name>.XXXXXXXX.tmp/`` inside the output folder (the same file
  system, so a rename moves them); publishing removes the previous report
  first, then the outputs of the same name the new set does not have (a QC
  figure a ``--noqc`` run does not write), renames every file into place and
  the report last. The report lists its files (``outputs``): a folder whose
  report is there holds one whole set;
* :func:`recover`, run by every claim: a ``.<name>.*.tmp/`` folder left by a
  killed run (its lock is free, since the claim holds it) is finished when it
  holds its report (the run was killed while publishing: the remaining files
  are moved into place, the report last) and removed otherwise.

A kill at any point leaves either the old set, or the new one, or a folder
the next claim of that name finishes or removes; never a report beside
another run's files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pathlib
import re
import shutil
import tempfile
import threading
from typing import Callable, Iterator, Sequence

from rodent_gbp.errors import InferenceError

_LOG = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
TMP_SUFFIX = ".tmp"
# tempfile.mkdtemp's random part: 8 characters of this alphabet.
_TOKEN = "[a-z0-9_]{8}"

# (out_dir, name, thread) of the claims this process holds now.
_HELD: set[tuple[str, str, int]] = set()
_HELD_LOCK = threading.Lock()


class Busy(InferenceError):
  """Another run holds the lock of the same outputs."""


def lock_path(out_dir: pathlib.Path, name: str) -> pathlib.Path:
  return pathlib.Path(out_dir) / f".{name}{LOCK_SUFFIX}"


def _key(out_dir: pathlib.Path, name: str) -> tuple[str, str, int]:
  return (os.path.abspath(out_dir), name, threading.get_ident())


def held(out_dir: str | os.PathLike, name: str) -> bool:
  """Whether this thread holds the claim of ``name`` in ``out_dir``."""
  with _HELD_LOCK:
    return _key(pathlib.Path(out_dir), name) in _HELD


def _holder(path: pathlib.Path) -> str:
  try:
    pid = path.read_text().strip()
  except OSError:
    return ""
  return f" (pid {pid})" if pid.isdigit() else ""


def _lock(path: pathlib.Path, names: Sequence[str]) -> int:
  """An open descriptor of ``path`` holding its exclusive flock; raises Busy."""
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      raise Busy(f"{path.parent}: another run{_holder(path)} is writing "
                 f"{', '.join(names)} now (lock {path.name}); wait for it to finish, "
                 "or give another --name or --out_dir") from None
    # The holder we raced with may have removed the file (it does so while it
    # still holds the lock): then this descriptor locks a file no one else
    # sees, and we start over on the path's current file.
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      os.ftruncate(fd, 0)
      os.write(fd, f"{os.getpid()}\n".encode())
      return fd
    os.close(fd)


def _unlock(path: pathlib.Path, fd: int) -> None:
  try:
    os.unlink(path)
  except FileNotFoundError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def claim(out_dir: str | os.PathLike, name: str, names: Sequence[str], *,
          report: str, log: Callable[[str], None] = _LOG.info) -> Iterator[None]:
  """Holds the lock of ``name``'s outputs in ``out_dir`` for the ``with`` block.

  Creates ``out_dir`` if needed (removed again, when empty, if the block
  fails), takes the lock without waiting and runs :func:`recover`. ``names``:
  every output file name of the set (for messages and recovery); ``report``:
  the report's file name (published last).

  Raises:
    Busy: another run (or another claim in this process) holds the lock.
    InferenceError: the folder cannot be created.
  """
  out_dir = pathlib.Path(out_dir)
  created = []
  parent = out_dir
  while not parent.exists():
    created.append(parent)
    parent = parent.parent
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise InferenceError(f"{out_dir}: cannot create the output folder "
                         f"({e.strerror})") from None
  path = lock_path(out_dir, name)
  try:
    fd = _lock(path, names)
  except BaseException:
    _remove_empty(created)
    raise
  key = _key(out_dir, name)
  with _HELD_LOCK:
    _HELD.add(key)
  try:
    recover(out_dir, name, names, report=report, log=log)
    yield
  except BaseException:
    _unlock(path, fd)
    fd = -1
    _remove_empty(created)
    raise
  finally:
    with _HELD_LOCK:
      _HELD.discard(key)
    if fd >= 0:
      _unlock(path, fd)


def _remove_empty(folders: Sequence[pathlib.Path]) -> None:
  """Removes the folders (deepest first) that are empty; leaves any other."""
  for folder in folders:
    try:
      folder.rmdir()
    except OSError:
      return


def temporary_folder(out_dir: pathlib.Path, name: str) -> pathlib.Path:
  """A new hidden ``.<name>.XXXXXXXX.tmp/`` in ``out_dir`` (hold the claim)."""
  return pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=out_dir))


def stale_folders(out_dir: pathlib.Path, name: str) -> list[pathlib.Path]:
  """The temporary folders of ``name`` in ``out_dir`` (exactly that name: ``a`` does
  not match ``a.b``'s)."""
  pattern = re.compile(rf"\.{re.escape(name)}\.{_TOKEN}{re.escape(TMP_SUFFIX)}")
  try:
    entries = list(pathlib.Path(out_dir).iterdir())
  except FileNotFoundError:
    return []
  return sorted(p for p in entries if pattern.fullmatch(p.name) and p.is_dir())


def publish(tmp: pathlib.Path, out_dir: pathlib.Path, files: Sequence[str], *, report: str,
            names: Sequence[str]) -> None:
  """Moves ``files`` and then ``report`` from ``tmp`` into ``out_dir``; removes ``tmp``.

  First the report in place goes (from then on the folder holds no whole set
  until the new report arrives), then every name of ``names`` the new set
  does not have. Files already moved (a publish that was killed and is now
  finished by :func:`recover`) are skipped.
  """
  (out_dir / report).unlink(missing_ok=True)
  keep = set(files) | {report}
  for stale in names:
    if stale not in keep:
      (out_dir / stale).unlink(missing_ok=True)
  for f in files:
    if f != report and (tmp / f).exists():
      os.replace(tmp / f, out_dir / f)
  os.replace(tmp / report, out_dir / report)
  shutil.rmtree(tmp, ignore_errors=True)


def recover(out_dir: pathlib.Path, name: str, names: Sequence[str], *, report: str,
            log: Callable[[str], None] = _LOG.info) -> list[pathlib.Path]:
  """Finishes or removes what killed runs of ``name`` left in ``out_dir`` (hold the
  claim). A temporary folder with its report is published (the report lists
  the files), any other removed. Returns the folders handled."""
  found = stale_folders(out_dir, name)
  for tmp in found:
    listed = None
    if (tmp / report).is_file():
      try:
        listed = list(json.loads((tmp / report).read_text())["outputs"].values())
      except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed = None
    if listed is not None:
      publish(tmp, out_dir, [f for f in listed if f in names], report=report, names=names)
      log(f"finished publishing {name}'s outputs, left by a run killed while moving "
          f"them into place ({tmp.name})")
    else:
      shutil.rmtree(tmp, ignore_errors=True)
      log(f"removed {tmp.name}, a temporary folder left by a killed run")
  return found
