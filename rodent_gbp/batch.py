"""Many scans in one call of ``rodent-gbp-segment``: inputs, shards, names, summary, index page.

A lab segments every scan of a study. One call takes many scans: ``--input``
repeated, or a folder (every ``.nii`` / ``.nii.gz`` in it, sorted by name; files
with ``mask`` in the name and the tool's own outputs left out). One process
loads the model once and compiles once per model grid (every scan is fitted to
the bank's slice shape, so one grid per model), and goes through the scans in
order, printing ``[3/8] <scan>`` before each; a scan that fails is listed and
the others go on. Every call with many scans writes ``<out_dir>/summary.csv``
(one row per scan, ``summary.COLUMNS``) and ``<out_dir>/index.html`` (every scan's
QC figure, numbers and warnings).

A study larger than one machine splits into shards, ``--shard K/N``: every N-th
scan from the K-th (0-based, as cluster job arrays number their tasks) of the
full sorted list; each shard writes ``summary_shard<K>of<N>.csv`` and
``index_shard<K>of<N>.html``, and ``--merge_summaries`` puts the shards'
summaries back together (``summary.merge_summaries``: all N shards, each scan
once, in the full list's order) into ``summary.csv`` and ``index.html``.

Exit codes of ``rodent-gbp-segment`` (:data:`EXIT_CODES`): 0 every scan
segmented (or skipped by ``--skip_existing``); 2 a usage error or bad input
that stops the call before any scan (for a single ``--input`` file: that
scan's error, as ever); 3 a call with many scans where at least one failed
(the summary lists it).

The pure functions (inputs, shards, names, rows, merging, the page) are
unit-tested with known answers; :func:`segment_many` runs them.
"""

from __future__ import annotations

import glob
import logging
import os
import pathlib
import re
import sys
import traceback
from typing import Any, Callable, Iterable, Mapping, Sequence

from rodent_gbp import fileio
from rodent_gbp import outputs
from rodent_gbp import scan as scan_lib
from rodent_gbp import summary as summary_lib
from rodent_gbp.errors import RodentGBPError, UsageError

_LOG = logging.getLogger(__name__)

SCAN_SUFFIXES = (".nii.gz", ".nii")
#: The NIfTI files ``rodent-gbp-segment`` writes, ``<name>_<suffix>.nii.gz``.
OWN_OUTPUTS = ("brainmask", "labels", "saliency", "brain")
#: A truth mask next to a scan ``<stem>.nii[.gz]``: ``<stem>_mask.nii[.gz]``.
TRUTH_SUFFIX = "_mask"
SUMMARY, INDEX = "summary", "index"
EXIT_OK, EXIT_USAGE, EXIT_SCANS_FAILED = 0, 2, 3
EXIT_CODES = {
    EXIT_OK: "every scan segmented (or skipped by --skip_existing)",
    EXIT_USAGE: "usage error or bad input before any scan; for a single --input file, "
                "that scan's error",
    EXIT_SCANS_FAILED: "a call with many scans where at least one scan failed (listed "
                       "in the summary; the others were segmented)"}
# What fails one scan of many with its one-line message (the console script's
# error edge, rodent_gbp.cli); any other exception is a bug, shown with its traceback.
_EXPECTED_ERRORS = (RodentGBPError, OSError)


def error_line(e: BaseException) -> str:
  """The exception's message on one line."""
  return " ".join(str(e).split()) or type(e).__name__


# --- inputs ------------------------------------------------------------------------------


def is_scan_file(name: str) -> bool:
  return name.endswith(SCAN_SUFFIXES)


def left_out(name: str) -> str | None:
  """Why a file in an input folder is not a scan to segment, or None (it is one)."""
  if not is_scan_file(name):
    return "not .nii / .nii.gz"
  stem = scan_lib.stem(pathlib.Path(name))
  if "mask" in stem.lower():
    return "a mask"
  if any(stem.endswith(f"_{suffix}") for suffix in OWN_OUTPUTS):
    return "an output of rodent-gbp-segment"
  return None


def expand_inputs(entries: Sequence[str | os.PathLike]) -> tuple[list[pathlib.Path], bool]:
  """(the scans, whether the call is one with many scans) of the ``--input`` values.

  A folder gives every file in it that :func:`left_out` keeps, sorted by name
  (not its subfolders); a file is taken as given (a bad one fails as that
  scan). Many: more than one value, or a folder.

  Raises:
    UsageError: no value, or a folder without a scan.
  """
  if not entries:
    raise UsageError("--input is required (a NIfTI scan, or a folder of them; repeatable)")
  scans: list[pathlib.Path] = []
  many = len(entries) > 1
  for entry in entries:
    path = pathlib.Path(entry)
    if path.is_dir():
      many = True
      found = sorted(p for p in path.iterdir() if p.is_file() and left_out(p.name) is None)
      if not found:
        raise UsageError(f"{path}: --input folder holds no scan (.nii / .nii.gz whose name "
                         "has no 'mask' and is no output of rodent-gbp-segment)")
      scans += found
    else:
      scans.append(path)
  return scans, many


def parse_shard(text: str | None) -> tuple[int, int] | None:
  """``"K/N"`` -> (K, N), 0 <= K < N; None -> None.

  Raises:
    UsageError: another form.
  """
  if text is None:
    return None
  match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
  if not match or not 0 <= int(match[1]) < int(match[2]):
    raise UsageError(f"--shard {text}: expected K/N with 0 <= K < N (every N-th scan from "
                     "the K-th, 0-based), e.g. --shard 0/4 ... --shard 3/4")
  return int(match[1]), int(match[2])


def shard_indices(n: int, shard: tuple[int, int] | None) -> list[int]:
  """The positions (in the full list of ``n``) a shard takes: K, K+N, K+2N, ..."""
  if shard is None:
    return list(range(n))
  k, count = shard
  return list(range(k, n, count))


def output_names(scans: Sequence[pathlib.Path], name: str | None = None) -> list[str]:
  """The output file prefix of each scan: its file name without .nii[.gz], or ``name``
  (one scan only)."""
  if name is not None:
    if len(scans) != 1:
      raise UsageError(f"--name {name}: names the outputs of one scan; with many inputs "
                       "each scan's outputs are named after its file")
    return [name]
  return [scan_lib.stem(p) for p in scans]


def check_names(scans: Sequence[pathlib.Path], names: Sequence[str]) -> None:
  """Refuses two scans with the same output name (before any work).

  Raises:
    UsageError: naming the first clash and how many there are.
  """
  seen: dict[str, pathlib.Path] = {}
  clashes = []
  for p, n in zip(scans, names):
    if n in seen:
      clashes.append((seen[n], p, n))
    else:
      seen[n] = p
  if clashes:
    a, b, n = clashes[0]
    more = f" ({len(clashes) - 1} more clashes)" if len(clashes) > 1 else ""
    raise UsageError(f"{a} and {b} would both write {n}_* in one --out_dir{more}; give the "
                     "scans distinct file names or segment them into separate folders")


def truth_for(path: pathlib.Path) -> pathlib.Path | None:
  """The truth mask beside a scan, ``<stem>_mask.nii.gz`` or ``.nii``, or None."""
  stem = scan_lib.stem(path)
  for suffix in SCAN_SUFFIXES:
    candidate = path.with_name(f"{stem}{TRUTH_SUFFIX}{suffix}")
    if candidate.is_file():
      return candidate
  return None


def summary_name(kind: str, shard: tuple[int, int] | None) -> str:
  """``summary.csv`` / ``index.html``, or a shard's ``summary_shard<K>of<N>.csv``."""
  ext = ".csv" if kind == SUMMARY else ".html"
  return f"{kind}{'' if shard is None else f'_shard{shard[0]}of{shard[1]}'}{ext}"


def exit_code(rows: Iterable[Mapping[str, Any]]) -> int:
  """:data:`EXIT_SCANS_FAILED` when a row failed, else :data:`EXIT_OK`."""
  return EXIT_SCANS_FAILED if any(r["status"] == "failed" for r in rows) else EXIT_OK


# --- the persistent compilation cache ---------------------------------------------------

#: Programs that took at least this long to compile are kept in the cache (JAX's
#: default, 1 s, leaves out most of the segmenting pipeline's programs).
CACHE_MIN_COMPILE_SECONDS = 0.1


def compile_cache_dir(environ: Mapping[str, str] = os.environ) -> pathlib.Path:
  """The user's cache folder for compiled programs: ``$XDG_CACHE_HOME/rodent_gbp/jax``,
  else ``~/.cache/rodent_gbp/jax``."""
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "rodent_gbp" / "jax"


def enable_compile_cache(enabled: bool = True) -> str | None:
  """Turns JAX's persistent compilation cache on (or off) for this process; returns
  the folder in use or None. For the console script only: importing the
  library changes nothing.

  A folder the user set (``JAX_COMPILATION_CACHE_DIR`` or JAX's config) is kept;
  else :func:`compile_cache_dir`. A folder that cannot be created leaves the
  cache off (the run goes on, compiling as before).
  """
  import jax
  if not enabled:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  folder = jax.config.jax_compilation_cache_dir
  if not folder:
    try:
      path = compile_cache_dir()
      path.mkdir(parents=True, exist_ok=True)
    except OSError:
      return None
    folder = str(path)
    jax.config.update("jax_compilation_cache_dir", folder)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      min(CACHE_MIN_COMPILE_SECONDS,
                          jax.config.jax_persistent_cache_min_compile_time_secs))
  return folder


# --- running ----------------------------------------------------------------------------


def segment_many(inputs: Sequence[str | os.PathLike], model_dir, out_dir: str | os.PathLike,
                 *, shard: tuple[int, int] | None = None, skip_existing: bool = False,
                 truth: str | os.PathLike | None = None, name: str | None = None,
                 overwrite: bool = False, log: Callable[[str], None] = _LOG.info,
                 **options) -> list[dict[str, Any]]:
  """Segments every scan of ``inputs`` (:func:`expand_inputs`) with one loaded model.

  Before any scan: the inputs expanded, names checked (:func:`check_names`), the
  shard taken, the model loaded once, and the call's summary claimed (a second
  call writing the same summary into ``out_dir`` is refused). Then each scan
  (``inference.segment_scan`` with the loaded bundle; its truth is
  :func:`truth_for`, or ``truth`` for a single input): its row goes into the
  summary, rewritten after every scan; an error fails that scan only. Ends
  with the index page. ``options``: the other arguments of ``segment_scan``.

  Returns:
    the summary rows (:func:`exit_code` gives the exit code).

  Raises:
    UsageError, CheckpointError, outputs.Busy: before any scan.
  """
  from rodent_gbp import inference  # JAX: loaded when scans are segmented
  scans, _ = expand_inputs(inputs)
  names = output_names(scans, name)
  check_names(scans, names)
  if truth is not None and len(scans) > 1:
    raise UsageError("--truth is for a single input; with many, a truth mask "
                     f"<stem>{TRUTH_SUFFIX}.nii.gz beside each scan is used")
  if skip_existing and overwrite:
    raise UsageError("--skip_existing and --overwrite exclude each other; pass one")
  out_dir = pathlib.Path(out_dir)
  picked = shard_indices(len(scans), shard)
  bundle, _, _ = inference.load_model(model_dir, bundle=options.pop("bundle", None))
  summary_path = out_dir / summary_name(SUMMARY, shard)
  index_path = out_dir / summary_name(INDEX, shard)
  rows: list[dict[str, Any]] = []
  with outputs.claim(out_dir, summary_path.name, [summary_path.name, index_path.name],
                     report=summary_path.name, log=log):
    for own in (summary_path, index_path):  # a killed call's half-written rewrite
      for stale in out_dir.glob(f".{glob.escape(own.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    summary_lib.write_summary(summary_path, rows)
    for count, i in enumerate(picked, 1):
      path, scan_name = scans[i], names[i]
      log(f"[{count}/{len(picked)}] {path} ...")
      report_path = out_dir / f"{scan_name}_report.json"

      def row(status, **kw):
        return summary_lib.summary_row(i, path, scan_name, status, out_dir=out_dir,
                                       shard=shard, **kw)

      if skip_existing and report_path.is_file():
        try:
          old = fileio.read_json(report_path)
        except (OSError, ValueError):
          old = None
        rows.append(row("skipped", report=old, error="outputs exist (--skip_existing)"))
        log(f"  skipped: {report_path.name} exists")
      else:
        try:
          result = inference.segment_scan(
              path, model_dir, out_dir, bundle=bundle, name=scan_name,
              truth=truth if truth is not None else truth_for(path), overwrite=overwrite,
              log=lambda msg: log(f"  {msg}"), **options)
          rows.append(row("ok", report=result["report"]))
        except _EXPECTED_ERRORS as e:
          rows.append(row("failed", error=error_line(e)))
          log(f"  failed: {error_line(e)}")
        except Exception as e:  # a bug: its traceback shown, the other scans go on
          traceback.print_exc(file=sys.stderr)
          rows.append(row("failed", error=f"internal error {type(e).__name__}: "
                                          f"{error_line(e)}"))
          log(f"  failed with an internal error ({type(e).__name__}); traceback above")
      summary_lib.write_summary(summary_path, rows)
    summary_lib.write_index(index_path, rows)
  counts = {s: sum(r["status"] == s for r in rows) for s in summary_lib.STATUSES}
  log(f"{len(rows)} scans: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} "
      f"skipped; wrote {summary_path.name} and {index_path.name} to {out_dir}")
  return rows


def run(inputs: Sequence[str | os.PathLike] | None, model_dir, out_dir, *,
        shard: tuple[int, int] | None = None, skip_existing: bool = False,
        log: Callable[[str], None] = _LOG.info, **options) -> int:
  """``rodent-gbp-segment``'s work: the exit code (:data:`EXIT_CODES`).

  One ``--input`` file without ``--shard`` is segmented as ever
  (``inference.segment_scan``: its error propagates, exit code 2, and no
  summary); anything else goes through :func:`segment_many`.
  """
  from rodent_gbp import inference
  scans, many = expand_inputs(inputs or [])
  if not out_dir:
    raise UsageError("--out_dir is required")
  if skip_existing and options.get("overwrite"):
    raise UsageError("--skip_existing and --overwrite exclude each other; pass one")
  if many or shard is not None:
    return exit_code(segment_many(inputs, model_dir, out_dir, shard=shard,
                                  skip_existing=skip_existing, log=log, **options))
  name = output_names(scans, options.pop("name", None))[0]
  report = pathlib.Path(out_dir) / f"{name}_report.json"
  if skip_existing and report.is_file():
    log(f"skipped {scans[0]}: {report} exists (--skip_existing)")
    return EXIT_OK
  inference.segment_scan(scans[0], model_dir, out_dir, name=name, log=log, **options)
  return EXIT_OK


# Flags of a segmentation run, which ``--merge_summaries`` (no scan is segmented) refuses.
SCAN_FLAGS = ("input", "model_dir", "shard", "truth", "name", "plane", "placement",
              "voxel_scale", "volume", "skip_existing", "overwrite")


def merge(entries: Sequence[str], out_dir: str | os.PathLike,
          log: Callable[[str], None] = _LOG.info, given: Sequence[str] = ()
          ) -> list[dict[str, Any]]:
  """``--merge_summaries``: the shards' summaries as ``<out_dir>/summary.csv`` and
  ``index.html`` (``summary.merge_summaries``). ``given``: flags of a segmentation
  run that were also given; refused, since they would be ignored."""
  if given:
    raise UsageError("--merge_summaries joins the shards' summaries and segments no scan; "
                     "it takes --out_dir only, not " + ", ".join(f"--{n}" for n in given))
  if not out_dir:
    raise UsageError("--out_dir is required (where the merged summary.csv goes)")
  paths = summary_lib.expand_summaries(entries)
  rows = summary_lib.merge_summaries(
      {str(p): summary_lib.read_summary(p) for p in paths},
      [s for s in map(summary_lib.shard_of_file, paths) if s])
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  summary_lib.write_summary(out_dir / summary_name(SUMMARY, None), rows)
  summary_lib.write_index(out_dir / summary_name(INDEX, None), rows)
  log(f"merged {len(paths)} summaries, {len(rows)} scans, into "
      f"{out_dir / summary_name(SUMMARY, None)} and {summary_name(INDEX, None)}")
  return rows
