"""``prepare``: a named set in the project's layout, converted once and cached.

The converted folder's name is its cache key::

  <cache_dir>/<name>-<resolution>-c<converter version>-m<manifest sha256[:12]>-f<files[:8]>

where ``files`` hashes the list of manifest paths the source copy held (a local
copy may hold part of a set, and that changes what is converted). Any change to
the manifest, the converter, the resolution or the files present gives a new
folder; an existing folder is complete (its ``dataset.json`` is written last and
the folder is renamed into place in one step), so it is reused as it is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import time
from typing import Any, Callable

from rodent_gbp import fileio
from rodent_gbp.datasets import download, mouse_epi, mouse_t2_atlas, pseudo_labels
from rodent_gbp.datasets.registry import get
from rodent_gbp.errors import UsageError

_LOG = logging.getLogger(__name__)

RESOLUTIONS = mouse_t2_atlas.RESOLUTIONS
CONVERTER_VERSIONS = {"mouse_epi": mouse_epi.CONVERTER_VERSION * 100
                      + pseudo_labels.METHOD_VERSION,
                      "mouse_t2_atlas": mouse_t2_atlas.CONVERTER_VERSION}
DATASET_FILE = "dataset.json"


def default_cache_dir() -> pathlib.Path:
  """``$RODENT_GBP_DATA_CACHE``, else ``$XDG_CACHE_HOME/rodent_gbp/datasets``
  (``~/.cache`` without XDG)."""
  env = os.environ.get("RODENT_GBP_DATA_CACHE")
  if env:
    return pathlib.Path(env)
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "rodent_gbp" / "datasets"


def _effective_resolution(name: str, resolution: str) -> str:
  if resolution not in RESOLUTIONS:
    raise UsageError(f"resolution {resolution!r}: must be one of {', '.join(RESOLUTIONS)}")
  # mouse_epi's native grid (0.25 x 0.25 x 1.0 mm, uncertain) already sits near the
  # paper's; it is never resampled, so both names give the same folder.
  return "native" if name == "mouse_epi" else resolution


def cache_key(name: str, resolution: str, present) -> str:
  """The converted folder's name (module docstring)."""
  info = get(name)
  files = hashlib.sha256("\n".join(sorted(present)).encode()).hexdigest()
  return (f"{info.name}-{_effective_resolution(info.name, resolution)}-"
          f"c{CONVERTER_VERSIONS[info.name]}-m{info.manifest_sha256[:12]}-f{files[:8]}")


def prepare(name: str, *, data_root: str | os.PathLike | None = None,
            cache_dir: str | os.PathLike | None = None, resolution: str = "paper",
            log: Callable[[str], None] | None = _LOG.info,
            base_url: str | None = None) -> pathlib.Path:
  """Set ``name`` in the project's layout: what ``data.load_dataset(folder)`` reads.

  Without ``data_root`` the set is first downloaded (``download.fetch``) into
  ``<cache_dir>/downloads/<name>-<commit[:12]>/``; with it, the local copy is
  checked against the manifest (files it lacks are skipped and listed, files
  with wrong bytes refused). The conversion runs once per cache key; later calls
  return the cached folder.

  The folder holds one animal folder per animal (``<id>/image.nii.gz``,
  ``labels.nii.gz``, ``brainmask.nii.gz``, ``meta.json``; for ``mouse_epi`` a
  second session in ``<id>/session<s>/``), ``animals.csv`` and ``dataset.json``
  (provenance: repository, commit, licence, citation, manifest hash; converter
  version; resolution; files missing from the copy; skipped sessions and
  animals; whether the labels are pseudo-labels; the conversion's time).

  Args:
    name: ``"mouse_epi"`` or ``"mouse_t2_atlas"``.
    data_root: a local copy in the source's layout (e.g.
      ``../shared/data/mouse-epi``), or None to download.
    cache_dir: where converted folders (and downloads) live; default
      :func:`default_cache_dir`.
    resolution: ``"paper"`` (near the paper's grid), ``"fine"`` (its slices at
      the native in-plane grid) or ``"native"``; only ``mouse_t2_atlas`` is
      resampled (``mouse_t2_atlas`` docstring).
    log: progress lines, or None for silence.
    base_url: where downloads come from (``download.fetch``); ignored with
      ``data_root``.

  Returns:
    The converted folder.

  Raises:
    DataError: a file is corrupt or truncated, or nothing can be converted.
    UsageError: an unknown set or resolution.
  """
  info = get(name)
  log = log or (lambda _: None)
  _effective_resolution(info.name, resolution)
  cache = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_dir()
  if data_root is not None:
    check = download.verify_copy(info.name, data_root)
    log(f"{info.name}: {len(check.present)} of {len(info.manifest)} files in {check.root}"
        + (f"; {len(check.missing)} not in the copy, skipped" if check.missing else ""))
  else:
    check = download.fetch(info.name, cache / "downloads" / f"{info.name}-{info.commit[:12]}",
                           base_url=base_url, log=log)
  final = cache / cache_key(info.name, resolution, check.present)
  if (final / DATASET_FILE).is_file():
    log(f"{info.name}: converted already: {final}")
    return final
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  start = time.perf_counter()
  try:
    summary = _convert(info.name, check, tmp, resolution, log)
    record = _record(info, check, resolution, summary, time.perf_counter() - start)
    fileio.write_json(tmp / DATASET_FILE, record)
    try:
      os.rename(tmp, final)
    except OSError:
      if not (final / DATASET_FILE).is_file():   # not another process's result
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  log(f"{info.name}: {len(summary['animals'])} animals converted in "
      f"{record['conversion_seconds']:.0f} s -> {final}")
  for row in summary.get("skipped_sessions", []) + summary.get("skipped_animals", []):
    what = f"{row['id']}" + (f"_{row['session']}" if "session" in row else "")
    log(f"  skipped {what}: {row['reason']}")
  return final


def _convert(name: str, check: download.FileCheck, out: pathlib.Path, resolution: str,
             log: Callable[[str], None]) -> dict[str, Any]:
  if name == "mouse_epi":
    return mouse_epi.convert(check, out, log=log)
  return mouse_t2_atlas.convert(check, out, resolution=resolution, log=log)


def _record(info, check: download.FileCheck, resolution: str, summary: dict[str, Any],
            seconds: float) -> dict[str, Any]:
  labels = ({**pseudo_labels.method_description(), "kind": "pseudo-labels",
             "note": "tissue DSC against these labels must say so; the brain masks "
                     "are the real truth of this set"}
            if info.name == "mouse_epi" else
            {"kind": "tissue classes from manual-atlas structure labels",
             "rule": mouse_t2_atlas.TISSUE_RULE})
  return {
      **info.provenance(),
      "converter_version": CONVERTER_VERSIONS[info.name],
      "resolution": _effective_resolution(info.name, resolution),
      "files_present": len(check.present),
      "files_in_manifest": len(info.manifest),
      "files_missing_from_copy": list(check.missing),
      "labels": labels,
      **summary,
      "conversion_seconds": round(seconds, 1),
  }
