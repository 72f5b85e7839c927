"""Pooling several folds' study reports over their test animals.

What the readings search (``studies.readings``) and the refinement study
(``studies.refine_study``) do alike when they pool folds: read each fold's
JSON report (:func:`read_reports`), read a per-animal number from a CSV
beside them (:func:`animal_column`), summarise the folds by the mean over
each fold's animals and the mean and spread of those
(:func:`fold_statistics`), and lay out the Markdown cells
(:func:`mean_sd_cells`, :func:`animal_table`).
"""

from __future__ import annotations

import csv
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np

from rodent_gbp import fileio
from rodent_gbp.errors import DataError


def read_reports(paths: Sequence, name: str) -> tuple[list[Any], list[str]]:
  """The reports to pool: each path a ``name`` file or a folder holding one.

  Returns:
    (the reports read, their file paths as text).

  Raises:
    DataError: a path without the file.
  """
  reports, sources = [], []
  for p in paths:
    path = pathlib.Path(p)
    path = path / name if path.is_dir() else path
    if not path.is_file():
      raise DataError(f"{path}: no {name} to pool")
    reports.append(fileio.read_json(path))
    sources.append(str(path))
  return reports, sources


def animal_column(path, column: str) -> dict[str, float]:
  """``{animal: value}`` of a CSV's columns ``animal`` and ``column``.

  Raises:
    DataError: the CSV has no rows or lacks either column.
  """
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or not {"animal", column} <= set(rows[0]):
    raise DataError(f"{path}: needs the columns animal and {column}")
  return {r["animal"]: float(r[column]) for r in rows}


def fold_statistics(folds: Sequence[Mapping[str, Mapping[str, float]]],
                    columns: Sequence[str]) -> dict[str, Any]:
  """``fold_means`` (per fold, each column's mean over its animals' rows), and
  the ``mean`` and ``sd`` (ddof 1; 0 for a single fold) of those over folds."""
  fold_means = [{c: float(np.mean([r[c] for r in rows.values()])) for c in columns}
                for rows in folds]
  return {"fold_means": fold_means,
          "mean": {c: float(np.mean([f[c] for f in fold_means])) for c in columns},
          "sd": {c: float(np.std([f[c] for f in fold_means], ddof=1)) if len(folds) > 1
                 else 0.0 for c in columns}}


def mean_sd_cells(pooled: Mapping[str, Any], columns: Sequence[str]) -> str:
  """``mean +- sd`` over folds of each column, as Markdown cells."""
  return " | ".join(f"{pooled['mean'][c]:.4f} +- {pooled['sd'][c]:.4f}" for c in columns)


def animal_table(pooled: Mapping[str, Any], columns: Sequence[str]) -> list[str]:
  """Markdown table lines: one row per pooled animal, its fold, then ``columns``."""
  lines = ["| animal | fold | " + " | ".join(columns) + " |",
           "|---|---|" + "---|" * len(columns)]
  for a in pooled["animals"]:
    r = pooled["per_animal"][a]
    lines.append(f"| {a} | {r['fold']} | " + " | ".join(f"{r[c]:.4f}" for c in columns)
                 + " |")
  return lines
