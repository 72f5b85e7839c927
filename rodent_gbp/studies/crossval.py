"""Cross-validation by animal: one seeded fold file, the main job per fold, mean +- sd.

A fold file (``experiments/folds/<set>.json``, made by :func:`make_folds` and
committed) holds::

  {"dataset": "mouse_epi", "seed": 0, "k": 5, "animals": [...],
   "rule": "...", "folds": [{"train": [...], "val": [...], "test": [...]}, ...]}

Every animal is a test animal in exactly one fold; each fold's validation
animals come from the rest. :func:`run` runs ``job.run`` once per
fold into ``<workdir>/fold<k>/`` and skips a fold whose ``results.json`` is
already there (a stopped run resumes fold by fold); :func:`summarise` pools the
folds' tables into mean and sd over folds per method and class
(``cv.json``, ``cv.md``).
"""

from __future__ import annotations

import logging
import math
import pathlib
from typing import Any, Callable, Sequence

import numpy as np

from rodent_gbp import data
from rodent_gbp import fileio
from rodent_gbp import report
from rodent_gbp.errors import DataError, UsageError

_LOG = logging.getLogger(__name__)

RULE = ("animals sorted, permuted by numpy default_rng(seed); fold k tests the k-th of "
        "k nearly equal consecutive chunks; its validation animals are round(0.2 * rest) "
        "drawn from the remaining animals with default_rng(seed + 1 + k); the rest train")


def make_folds(animal_ids: Sequence[str], *, k: int = 5, seed: int = 0,
               val_fraction: float = 0.2) -> list[dict[str, list[str]]]:
  """``k`` folds by animal (:data:`RULE`); each list sorted."""
  ids = sorted(str(a) for a in animal_ids)
  if len(set(ids)) != len(ids):
    raise DataError("animal ids are not unique")
  if len(ids) < k + 2:
    raise DataError(f"{len(ids)} animals are too few for {k} folds with validation animals")
  order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
  chunks = np.array_split(np.arange(len(ids)), k)
  folds = []
  for f, chunk in enumerate(chunks):
    test = [order[i] for i in chunk]
    rest = [a for a in order if a not in test]
    n_val = max(1, int(math.floor(val_fraction * len(rest) + 0.5)))
    pick = np.random.default_rng(seed + 1 + f).permutation(len(rest))[:n_val]
    val = [rest[i] for i in pick]
    folds.append({"train": sorted(a for a in rest if a not in val), "val": sorted(val),
                  "test": sorted(test)})
  return folds


def fold_file(dataset: str, animal_ids: Sequence[str], *, k: int = 5, seed: int = 0
              ) -> dict[str, Any]:
  """The content of a fold file for ``animal_ids`` of ``dataset``."""
  return {"dataset": dataset, "seed": seed, "k": k,
          "animals": sorted(str(a) for a in animal_ids), "rule": RULE,
          "folds": make_folds(animal_ids, k=k, seed=seed)}


def split_from(split_file: str | pathlib.Path | None, fold: int | None,
               folds: str | pathlib.Path) -> tuple[dict | None, str]:
  """The split a binary was given: a JSON split file, or fold ``fold`` of ``folds``.

  Returns (split or None when neither is given, where it came from, for
  messages). The split's ids are checked against the data later
  (``data.check_split``).

  Raises:
    UsageError: both given, or a fold number the fold file lacks;
    DataError: a missing or unreadable split file.
  """
  if split_file is not None and fold is not None:
    raise UsageError("give at most one of --split_file and --fold")
  if split_file is not None:
    path = pathlib.Path(split_file)
    if not path.is_file():
      raise DataError(f"{path}: split file not found")
    try:
      return fileio.read_json(path), str(path)
    except (ValueError, UnicodeDecodeError) as e:
      raise DataError(f"{path}: not a JSON split file ({e})") from None
  if fold is not None:
    entries = read_fold_file(folds)["folds"]
    if not 0 <= fold < len(entries):
      raise UsageError(f"--fold {fold}: {folds} has folds 0..{len(entries) - 1}")
    return entries[fold], f"{folds} fold {fold}"
  return None, "none given"


def read_fold_file(path: str | pathlib.Path) -> dict[str, Any]:
  """Reads and checks a fold file: every listed animal tested exactly once."""
  path = pathlib.Path(path)
  try:
    raw = fileio.read_json(path)
  except FileNotFoundError:
    raise DataError(f"{path}: fold file not found") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not a JSON fold file ({e})") from None
  if not isinstance(raw, dict) or not isinstance(raw.get("folds"), list) or not raw["folds"]:
    raise DataError(f"{path}: a fold file has a non-empty list 'folds'")
  animals = [str(a) for a in raw.get("animals", [])]
  folds = [data.check_split(f, animals, source=f"{path} fold {i}")
           for i, f in enumerate(raw["folds"])]
  tested = sorted(a for f in folds for a in f["test"])
  if tested != sorted(animals):
    raise DataError(f"{path}: every animal must be a test animal of exactly one fold")
  return raw | {"folds": folds}


def run(folds: dict[str, Any], workdir: str | pathlib.Path, *, run_fold: Callable,
        only: Sequence[int] | None = None, log: Callable[[str], None] = _LOG.info
        ) -> list[pathlib.Path]:
  """Runs ``run_fold(split, fold_workdir)`` for each fold not yet done.

  Returns the fold folders (done before or now) in fold order.
  """
  workdir = pathlib.Path(workdir)
  out = []
  for i, split in enumerate(folds["folds"]):
    fold_dir = workdir / f"fold{i}"
    if only is not None and i not in only:
      continue
    if (fold_dir / "results.json").is_file():
      log(f"fold {i}: done already ({fold_dir / 'results.json'})")
    else:
      log(f"fold {i} of {len(folds['folds'])}: test {', '.join(split['test'])}")
      run_fold(split, fold_dir)
    out.append(fold_dir)
  return out


def _stats(values: list[float]) -> dict[str, float]:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return {"mean": float("nan"), "sd": float("nan"), "n": 0}
  return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
          "n": int(v.size)}


def summarise(fold_results: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """Mean and sd over folds of each way's per-class metrics and each brain row.

  A fold's number is its mean over its test animals (``results.json``
  tables); the sd is over folds (ddof 1).
  """
  ways = sorted({w for r in fold_results for w in r["tables"]})
  tables = {}
  for w in ways:
    classes = sorted({c for r in fold_results if w in r["tables"] for c in r["tables"][w]})
    tables[w] = {c: {m: _stats([r["tables"][w][c].get(m) for r in fold_results
                                if w in r["tables"] and c in r["tables"][w]])
                     for m in ("dsc", "sensitivity", "precision")} for c in classes}
  brain_keys = sorted({k for r in fold_results for k in r.get("brain", {})})
  brain = {k: {m: _stats([r["brain"][k].get(m) for r in fold_results if k in r["brain"]])
               for m in ("dsc", "sensitivity", "precision")} for k in brain_keys}
  per_animal = {a: m for r in fold_results for a, m in r["per_animal"].items()}
  training = [{"epochs_completed": r["training"].get("epochs_completed"),
               "stopped_by_time_cap": r["training"].get("stopped_by_time_cap"),
               "losses_finite": all(np.isfinite(h["loss"]) for h in r["training"]["history"]),
               "final_loss": r["training"]["history"][-1]["loss"]
               if r["training"]["history"] else None} for r in fold_results]
  return {"folds": len(fold_results), "tables": tables, "brain": brain,
          "test_animals": sorted(per_animal), "per_animal": per_animal,
          "training": training, "data": fold_results[0].get("data"),
          "config": fold_results[0].get("config"), "absent": fold_results[0].get("absent")}


def _ms(s: dict[str, float]) -> str:
  if not s or s.get("n", 0) == 0:
    return "n/a"
  return f"{100 * s['mean']:.1f} +- {100 * s['sd']:.1f}"


def markdown(cv: dict[str, Any]) -> str:
  """``cv.md``: brain DSC per placement and tissue DSC per way, mean +- sd over folds."""
  data = cv.get("data") or {}
  lines = [f"# Cross-validation: {data.get('dataset', '?')}, {cv['folds']} folds by animal",
           "", "DSC in percent, mean +- sd over folds (a fold's value is the mean over its "
           f"test animals; {len(cv['test_animals'])} test animals in all).", ""]
  lines += report.data_lines(data)
  if cv["brain"]:
    per = {"volume": "one displacement per acquisition", "slice": "one displacement per slice"}
    how = per.get((cv.get("config") or {}).get("displacement", "slice"))
    names = {"gbp": f"gbp (the paper; {how})", "gbp_ceiling": "gbp_ceiling (its reference mask "
             "at the best shift)", "gbp_improved": "gbp_improved", "intensity": "intensity",
             "oracle": "oracle (best training mask, scale and shift)"}
    lines += ["## Brain DSC of the removal mask", "", "| Placement | Brain DSC |", "|---|---|"]
    lines += [f"| {names.get(k, k)} | {_ms(v['dsc'])} |" for k, v in cv["brain"].items()]
    lines.append("")
  order = [w for w in ("gbp", "gbp_improved", "intensity", "manual", "none", "all_gm",
                       "mixture") if w in cv["tables"]]
  lines += ["## Tissue DSC", "", "| Way | WM | GM | CSF |", "|---|---|---|---|"]
  for w in order:
    t = cv["tables"][w]
    lines.append(f"| {w} | " + " | ".join(_ms(t.get(c, {}).get("dsc")) for c in
                                          ("wm", "gm", "csf")) + " |")
  finite = all(t["losses_finite"] for t in cv["training"])
  lines += ["", f"Training loss finite at every epoch of every fold: {finite}; epochs "
            "completed per fold: " + ", ".join(str(t["epochs_completed"])
                                                for t in cv["training"]) + "."]
  if cv.get("absent"):
    lines += ["", f"Not shown: {cv['absent']}."]
  return "\n".join(lines) + "\n"
