"""Getting a set's files: downloads from the pinned commit, and local copies.

Both ways check every file against the set's manifest (size, then sha256):

* :func:`fetch` downloads each file from ``<base_url>/<path>`` (by default the
  raw file URL of the source repository at the pinned commit) into ``dest`` in
  the source's own layout, writing through ``fileio.atomic_path`` so an
  interrupted download never leaves a partial file under the real name. Files
  already present with the right bytes are skipped. A file whose download is
  corrupt (wrong sha256) or truncated (fewer bytes than the manifest says) is
  refused: nothing is written under its name and the ``DataError`` names it.
* :func:`verify_copy` checks a local copy in the source's layout (what
  ``../shared/data/<set>/`` holds): files the copy lacks are listed as missing
  (a copy may hold part of a set); files with wrong bytes are refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import logging
import os
import pathlib
import urllib.error
import urllib.request
from typing import Callable, Iterable

from rodent_gbp import fileio
from rodent_gbp.datasets.registry import DatasetInfo, ManifestEntry, get
from rodent_gbp.errors import DataError

_LOG = logging.getLogger(__name__)

_CHUNK = 1 << 16


class _Refused(Exception):
  """A download whose bytes do not match the manifest."""


@dataclasses.dataclass(frozen=True)
class FileCheck:
  """What a set's files look like in one folder.

  Attributes:
    root: the folder (in the source's layout).
    present: manifest paths found with the right size and sha256.
    missing: manifest paths not in the folder.
  """

  root: pathlib.Path
  present: tuple[str, ...]
  missing: tuple[str, ...]


def sha256_file(path: str | os.PathLike) -> str:
  """Hex sha256 of a file's bytes."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _problem(path: pathlib.Path, entry: ManifestEntry) -> str | None:
  """Why ``path`` is not ``entry``'s file, or None if it is."""
  size = path.stat().st_size
  if size != entry.size:
    what = "truncated" if size < entry.size else "too long"
    return f"{what}: {size} bytes, the manifest says {entry.size}"
  digest = sha256_file(path)
  if digest != entry.sha256:
    return f"corrupt: sha256 {digest}, the manifest says {entry.sha256}"
  return None


def _select(info: DatasetInfo, only: Iterable[str] | None) -> tuple[ManifestEntry, ...]:
  entries = info.manifest
  if only is None:
    return entries
  wanted = list(only)
  known = {e.path: e for e in entries}
  unknown = [p for p in wanted if p not in known]
  if unknown:
    raise DataError(f"{info.name}: not in the manifest: {', '.join(unknown)}")
  return tuple(known[p] for p in dict.fromkeys(wanted))


def resolve_root(info: DatasetInfo, root: str | os.PathLike) -> pathlib.Path:
  """The set's root inside ``root``: ``root`` itself, or ``root/<subdir>`` for a
  clone of the whole source repository."""
  root = pathlib.Path(root)
  if info.subdir and (root / info.subdir).is_dir():
    return root / info.subdir
  return root


def verify_copy(name: str, data_root: str | os.PathLike, *,
                only: Iterable[str] | None = None) -> FileCheck:
  """Checks a local copy of set ``name`` (in the source's layout) against its manifest.

  Args:
    name: a set name (``registry.NAMES``).
    data_root: the copy's root: manifest paths are relative to it (a clone of
      the whole source repository is accepted too).
    only: manifest paths to check (default: all).

  Returns:
    A ``FileCheck``: the files present with the right bytes and those missing.

  Raises:
    DataError: ``data_root`` is not a folder, or files are there with wrong
      bytes (all of them named, with what is wrong).
  """
  info = get(name)
  root = resolve_root(info, data_root)
  if not root.is_dir():
    raise DataError(f"{root}: {info.name} data folder not found")
  present, missing, bad = [], [], []
  for entry in _select(info, only):
    path = root / entry.path
    if not path.is_file():
      missing.append(entry.path)
      continue
    problem = _problem(path, entry)
    if problem:
      bad.append(f"{path}: {problem}")
    else:
      present.append(entry.path)
  if bad:
    raise DataError(f"{len(bad)} file(s) of {info.name} do not match its manifest "
                    f"(replace them with the source's files at commit {info.commit}): "
                    + "; ".join(bad))
  if not present:
    raise DataError(f"{root}: none of the {info.name} manifest's files are there "
                    f"(expected e.g. {root / info.manifest[0].path})")
  return FileCheck(root, tuple(present), tuple(missing))


def _download(url: str, target: pathlib.Path, entry: ManifestEntry, *,
              timeout: float) -> str | None:
  """Downloads ``url`` to ``target`` atomically; returns the problem or None.

  The bytes are hashed while they stream; a bad download is never renamed
  onto ``target``.
  """
  target.parent.mkdir(parents=True, exist_ok=True)
  digest, size = hashlib.sha256(), 0
  try:
    with fileio.atomic_path(target) as tmp:
      with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
        while chunk := response.read(_CHUNK):
          # Stop reading a response longer than the manifest's file.
          if size + len(chunk) > entry.size + _CHUNK:
            raise _Refused(f"too long: more than {entry.size} bytes")
          digest.update(chunk)
          f.write(chunk)
          size += len(chunk)
      if size != entry.size:
        what = "truncated" if size < entry.size else "too long"
        raise _Refused(f"{what}: {size} bytes, the manifest says {entry.size}")
      if digest.hexdigest() != entry.sha256:
        raise _Refused(f"corrupt: sha256 {digest.hexdigest()}, the manifest says "
                       f"{entry.sha256}")
  except _Refused as e:
    return str(e)
  except http.client.IncompleteRead as e:
    return f"truncated: the connection closed after {size + len(e.partial)} of " \
           f"{entry.size} bytes"
  except urllib.error.HTTPError as e:
    return f"HTTP {e.code} {e.reason}"
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    return f"download failed ({getattr(e, 'reason', e)})"
  return None


def fetch(name: str, dest: str | os.PathLike, *, base_url: str | None = None,
          log: Callable[[str], None] | None = _LOG.info, only: Iterable[str] | None = None,
          timeout: float = 60.0) -> FileCheck:
  """Downloads set ``name`` from its source at the pinned commit into ``dest``.

  Files already in ``dest`` with the right size and sha256 are skipped; a file
  there with other bytes is downloaded again. Each download is checked (size,
  sha256) before it is renamed into place. Files that fail are reported
  together after the others are done (the good ones stay).

  Args:
    name: a set name (``registry.NAMES``).
    dest: folder to hold the set in the source's own layout (created).
    base_url: files come from ``<base_url>/<manifest path>``; default the raw
      file URLs of the source repository at the pinned commit
      (``DatasetInfo.raw_base_url``). Also ``file://`` URLs.
    log: progress lines (one per file), or None for silence.
    only: manifest paths to fetch (default: the whole set).
    timeout: seconds for each connection.

  Returns:
    A ``FileCheck`` of ``dest`` (``missing`` is empty on success).

  Raises:
    DataError: a download is corrupt, truncated or failed (every such file
      named, with its URL and what was wrong).
  """
  info = get(name)
  log = log or (lambda _: None)
  base = (base_url or info.raw_base_url).rstrip("/")
  dest = pathlib.Path(dest)
  dest.mkdir(parents=True, exist_ok=True)
  entries = _select(info, only)
  total = sum(e.size for e in entries)
  done, failed, present = 0, [], []
  log(f"{info.name}: {len(entries)} files, {total / 1e6:.1f} MB from {base}")
  for i, entry in enumerate(entries, 1):
    target = dest / entry.path
    step = f"[{i}/{len(entries)}] {entry.path}"
    if target.is_file() and _problem(target, entry) is None:
      present.append(entry.path)
      done += entry.size
      log(f"{step}: present")
      continue
    url = f"{base}/{entry.path}"
    problem = _download(url, target, entry, timeout=timeout)
    if problem:
      failed.append(f"{target} (from {url}): {problem}")
      log(f"{step}: REFUSED, {problem}")
      continue
    present.append(entry.path)
    done += entry.size
    log(f"{step}: {entry.size / 1e3:.0f} kB ({100 * done / max(total, 1):.0f} %)")
  if failed:
    raise DataError(f"{len(failed)} of {len(entries)} {info.name} file(s) refused "
                    "(nothing written under their names; run again to retry): "
                    + "; ".join(failed))
  return FileCheck(dest, tuple(present), ())
