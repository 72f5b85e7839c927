"""The project's one tissue definition: structure labels -> WM / GM / CSF / ignore.

White matter is broad anatomical white matter as DSURQE's tissue types give it
(fibre tracts, commissures, capsules, cerebellar white matter). One table,
``tissue_table.csv`` beside this module (:func:`table_path`), maps every
structure label of each label source to one tissue; columns
``source,label,structure,tissue,reason``:

* ``source``: ``mouse_t2_atlas`` (40 labels, 1-20 right and 21-40 left, names
  from its ``docs/structure_label_list.csv``) or ``dsurqe`` (the 336 labels of
  ``DSURQE_40micron_R_mapping_long.csv``, label values as there).
* ``tissue``: ``WM``, ``GM``, ``CSF`` or ``ignore``. ``ignore`` is brain (it
  counts for the brain mask) whose tissue is neither trained nor scored: the
  structure mixes white and gray matter at the data's resolution, or holds
  white matter its source does not label.
* ``reason``: empty where the row follows the source's own reading (DSURQE's
  ``tissue type``; mouse_t2_atlas's WM = {2, 4, 6, 20, 24, 26, 40}, CSF = {10},
  GM the rest), else why the row departs from it.

Label 0 is background in both sources and has no row. Codes in the label maps
this module makes: 0 background, 1 WM, 2 GM, 3 CSF (the project's classes,
``classes.NAMES``) and 4 ignore.

Typical use::

  codes = tissue_table.to_tissue("mouse_t2_atlas", structures)   # (X, Y, Z) uint8
  result = tissue_table.score(prediction, codes)   # {"wm": DSC, ..., "brain_dice": ...}
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import pathlib

import numpy as np

from rodent_gbp import classes
from rodent_gbp.errors import DataError

BACKGROUND, WM, GM, CSF, IGNORE = 0, 1, 2, 3, 4
#: code -> name; the first four are ``classes.NAMES``.
NAMES = (*classes.NAMES, "ignore")
#: The table's tissue names -> code.
CODES = {"WM": WM, "GM": GM, "CSF": CSF, "ignore": IGNORE}
SOURCES = ("mouse_t2_atlas", "dsurqe")
COLUMNS = ("source", "label", "structure", "tissue", "reason")
#: A ``lut`` entry for a label the table does not have.
UNKNOWN = -1
_SCORED = (WM, GM, CSF)
_TABLE = "tissue_table.csv"


@dataclasses.dataclass(frozen=True)
class Row:
  """One structure of one source; fields also read as ``row["tissue"]`` (column names)."""
  source: str
  label: int
  structure: str
  tissue: str
  reason: str

  def __getitem__(self, column: str):
    if column not in COLUMNS:
      raise KeyError(column)
    return getattr(self, column)

  @property
  def code(self) -> int:
    """The tissue code (``WM`` ... ``IGNORE``)."""
    return CODES[self.tissue]


def table_path() -> pathlib.Path:
  """The table shipped with the package (``rodent_gbp/tissue_table.csv``)."""
  return pathlib.Path(__file__).resolve().with_name(_TABLE)


def read_table(path: str | pathlib.Path) -> tuple[Row, ...]:
  """Reads and validates a tissue table (uncached; :func:`load_table` is the package's).

  Raises:
    DataError: a missing file, wrong columns, an unknown source or tissue, a
      label that is not an integer >= 1, an empty structure name or a label
      listed twice for one source; the message names the file and the line.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except OSError as e:
    raise DataError(f"{path}: cannot read the tissue table ({e.strerror or e})") from None
  reader = csv.reader(text.splitlines())
  header = next(reader, None)
  if header is None or tuple(h.strip() for h in header) != COLUMNS:
    raise DataError(f"{path}: line 1: columns must be {','.join(COLUMNS)}, got {header}")
  rows, seen = [], {}
  for line, fields in enumerate(reader, start=2):
    if not fields:
      continue
    where = f"{path}: line {line}"
    if len(fields) != len(COLUMNS):
      raise DataError(f"{where}: {len(fields)} fields, expected {len(COLUMNS)}")
    source, label, structure, tissue, reason = (f.strip() for f in fields)
    if source not in SOURCES:
      raise DataError(f"{where}: unknown source {source!r} (known: {', '.join(SOURCES)})")
    try:
      value = int(label)
    except ValueError:
      raise DataError(f"{where}: label {label!r} is not an integer") from None
    if value < 1:
      raise DataError(f"{where}: label {value} < 1 (0 is background and has no row)")
    if tissue not in CODES:
      raise DataError(f"{where}: unknown tissue {tissue!r} (known: {', '.join(CODES)})")
    if not structure:
      raise DataError(f"{where}: empty structure name")
    if (source, value) in seen:
      raise DataError(f"{where}: {source} label {value} already on line "
                      f"{seen[source, value]}")
    seen[source, value] = line
    rows.append(Row(source, value, structure, tissue, reason))
  missing = set(SOURCES) - {r.source for r in rows}
  if missing:
    raise DataError(f"{path}: no rows for {', '.join(sorted(missing))}")
  return tuple(rows)


@functools.lru_cache(maxsize=1)
def load_table() -> tuple[Row, ...]:
  """The package's table (:func:`table_path`), validated, read once."""
  return read_table(table_path())


def rows(source: str) -> tuple[Row, ...]:
  """The rows of one source, in table order."""
  _check_source(source)
  return tuple(r for r in load_table() if r.source == source)


def _check_source(source: str) -> None:
  if source not in SOURCES:
    raise ValueError(f"unknown label source {source!r}; known: {', '.join(SOURCES)}")


@functools.lru_cache(maxsize=8)
def _lut(source: str, size: int) -> np.ndarray:
  table = np.full(size, UNKNOWN, np.int8)
  table[0] = BACKGROUND
  for row in rows(source):
    table[row.label] = row.code
  table.flags.writeable = False
  return table


def lut(source: str, max_label: int | None = None) -> np.ndarray:
  """Lookup table structure label -> tissue code of one source.

  Args:
    source: ``"mouse_t2_atlas"`` or ``"dsurqe"``.
    max_label: the largest label the table must index (default: the largest
      label in the table); the result has ``max(max_label, largest) + 1``
      entries.

  Returns:
    int8 (N,) read-only: 0 background for label 0, the row's code for a label
    in the table, ``UNKNOWN`` (-1) for any other.
  """
  largest = max(r.label for r in rows(source))
  size = max(largest if max_label is None else int(max_label), largest) + 1
  return _lut(source, size)


def to_tissue(source: str, labels: np.ndarray) -> np.ndarray:
  """Maps a structure label map to tissue codes.

  Args:
    source: ``"mouse_t2_atlas"`` or ``"dsurqe"``.
    labels: structure labels of any shape; floats are rounded to the nearest
      integer (both sources store labels as floats).

  Returns:
    uint8 codes of ``labels``' shape: 0 background, 1 WM, 2 GM, 3 CSF, 4 ignore.

  Raises:
    DataError: a label value the source's rows do not have (negative, not
      finite, or absent from the table); the message names the source and the
      values.
  """
  _check_source(source)
  values = np.asarray(labels)
  if np.issubdtype(values.dtype, np.floating):
    if not np.all(np.isfinite(values)):
      raise DataError(f"{source} labels: NaN or inf values")
    values = np.rint(values)
  present = np.unique(values).astype(np.int64)
  table = lut(source)
  inside = (present >= 0) & (present < table.size)
  bad = present[~inside | (table[np.where(inside, present, 0)] == UNKNOWN)]
  if bad.size:
    shown = ", ".join(str(v) for v in bad[:20]) + (" ..." if bad.size > 20 else "")
    raise DataError(f"{source} labels: values not in {table_path().name}: {shown}")
  return table[values.astype(np.int64)].astype(np.uint8)


def score(pred: np.ndarray, truth_codes: np.ndarray) -> dict:
  """Per-class DSC of a prediction against table-coded truth, ignore left out.

  Args:
    pred: integer prediction in the project's classes (0 background, 1 WM,
      2 GM, 3 CSF; ``classes.NAMES``).
    truth_codes: the same shape, codes of :func:`to_tissue` (0..4).

  Returns:
    ``{"wm", "gm", "csf"}``: DSC of each class over the voxels whose truth is
    not ignore (an ignore voxel counts for neither prediction nor truth);
    ``"brain_dice"``: DSC of ``pred > 0`` against ``truth > 0`` over all
    voxels (ignore is brain); ``"counts"``: ``[TP, FP, FN, TN]`` per class
    (over the scored voxels) and for ``"brain"`` (all voxels), to pool over
    animals; ``"voxels"``: the truth's voxels per code name and ``"scored"``.
    A DSC is NaN when prediction and truth are both empty (``metrics``'
    empty-mask policy).

  Raises:
    ValueError: shapes differ or a value is out of range.
  """
  from rodent_gbp import metrics
  pred, truth = np.asarray(pred), np.asarray(truth_codes)
  if pred.shape != truth.shape:
    raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
  for name, array, top in (("prediction", pred, CSF), ("truth", truth, IGNORE)):
    if array.size and (not np.issubdtype(array.dtype, np.integer)
                       and not np.issubdtype(array.dtype, np.bool_)):
      raise ValueError(f"{name} must be an integer array, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > top):
      raise ValueError(f"{name} values must be in 0..{top}, got "
                       f"{array.min()}..{array.max()}")
  scored = truth != IGNORE
  counts = {}
  for code in _SCORED:
    p, t = (pred == code) & scored, truth == code
    counts[NAMES[code]] = _confusion(p, t, scored)
  everywhere = np.ones(pred.shape, bool)
  counts["brain"] = _confusion(pred > 0, truth > 0, everywhere)
  dsc = {name: float(metrics.metrics_from_counts(c)["dsc"]) for name, c in counts.items()}
  voxels = {NAMES[c]: int(np.count_nonzero(truth == c)) for c in range(len(NAMES))}
  voxels["scored"] = int(np.count_nonzero(scored))
  return {**{NAMES[c]: dsc[NAMES[c]] for c in _SCORED}, "brain_dice": dsc["brain"],
          "counts": counts, "voxels": voxels}


def _confusion(p: np.ndarray, t: np.ndarray, within: np.ndarray) -> list[int]:
  """``[TP, FP, FN, TN]`` of masks ``p`` and ``t`` over the voxels of ``within``."""
  tp = int(np.count_nonzero(p & t))
  fp = int(np.count_nonzero(p & ~t))
  fn = int(np.count_nonzero(~p & t))
  return [tp, fp, fn, int(np.count_nonzero(within)) - tp - fp - fn]


def fractions(codes: np.ndarray) -> dict[str, float]:
  """Share of the brain (codes > 0) in each tissue, ignore included: {name: fraction}."""
  codes = np.asarray(codes)
  brain = int(np.count_nonzero(codes > 0))
  return {NAMES[c]: (float(np.count_nonzero(codes == c)) / brain if brain else float("nan"))
          for c in (WM, GM, CSF, IGNORE)}


def table_sha256() -> str:
  """Hex sha256 of the table file's bytes (names the definition in reports)."""
  return hashlib.sha256(table_path().read_bytes()).hexdigest()


def _label_set(source: str, tissue: str) -> str:
  return "{" + ", ".join(str(r.label) for r in rows(source) if r.tissue == tissue) + "}"


def describe() -> str:
  """The definition in a few sentences (report JSON, model card, README)."""
  dsurqe = rows("dsurqe")
  overrides = [r for r in dsurqe if r.reason]
  ignored = sorted({r.structure.split(" ", 1)[-1] if r.structure.startswith(
      ("right ", "left ")) else r.structure for r in rows("mouse_t2_atlas")
                    if r.tissue == "ignore"})
  counts = {t: sum(r.tissue == t for r in dsurqe) for t in CODES}
  return (
      "Tissue classes from structure labels (rodent_gbp/tissue_table.csv, sha256 "
      f"{table_sha256()[:12]}): white matter is broad anatomical white matter as the "
      "DSURQE atlas's tissue types give it. DSURQE: its tissue type per structure, "
      f"{len(overrides)} of {len(dsurqe)} structures changed with a stated reason "
      "(medulla, midbrain, pons and small brainstem and deep cerebellar nuclei: "
      "ignore; septum: GM; anterior lobule white matter, facial nerve, striae "
      f"terminalis and medullaris: WM); {counts['WM']} WM, {counts['GM']} GM, "
      f"{counts['CSF']} CSF, {counts['ignore']} ignore. mouse_t2_atlas: WM = "
      f"{_label_set('mouse_t2_atlas', 'WM')}, CSF = {_label_set('mouse_t2_atlas', 'CSF')}, "
      f"ignore = {_label_set('mouse_t2_atlas', 'ignore')} ({', '.join(ignored)}: white "
      "matter the atlas does not label), GM = the other labels > 0. Ignore is brain "
      "(it counts for the brain mask) but is left out of the WM / GM / CSF loss and "
      "scores; label 0 is background.")
