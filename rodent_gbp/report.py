"""Results files of a run: ``results.json``, ``tables.md``, per-slice CSV.

Metrics are fractions in 0..1 in JSON; the Markdown tables print percentages
beside the paper's numbers (Tables 1 and 2) in the paper's layout.
"""

from __future__ import annotations

import math
import pathlib
import platform
import subprocess

from rodent_gbp import classes
from typing import Any, Mapping
import rodent_gbp


CLASS_NAMES = classes.PAPER_TITLES
TISSUE = tuple(classes.TISSUE.values())

# The paper's Tables 1 and 2 (percent; accuracy, specificity, sensitivity, DSC).
PAPER_TABLE1 = {
    "brain": (98.52, 99.17, 99.07, 99.12),
    "wm": (98.38, 87.9, 84.75, 86.05),
    "gm": (98.41, 81.83, 73.1, 76.76),
    "csf": (98.41, 53.61, 68.55, 60.15),
}
PAPER_TABLE2 = {
    "wm": (98.92, 92.67, 89.65, 91.05),
    "gm": (98.96, 89.45, 81.02, 84.65),
    "csf": (99.12, 71.79, 84.59, 77.61),
}


def git_commit() -> str | None:
  """The commit of the package's checkout, or None outside a git checkout."""
  here = pathlib.Path(__file__).resolve().parent
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                         text=True, timeout=10, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=here, capture_output=True, text=True, timeout=10).stdout
    return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return None


def provenance(seed: int) -> dict[str, Any]:
  import jax
  devices = jax.devices()
  return {
      "version": rodent_gbp.__version__,
      "git_commit": git_commit(),
      "seed": seed,
      "jax_version": jax.__version__,
      "device": f"{devices[0].platform}:{devices[0].device_kind} x{len(devices)}",
      "python": platform.python_version(),
  }


def _pct(x) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _row(name: str, ours: Mapping[str, float] | None, paper) -> str:
  ours = ours or {}
  cells = [CLASS_NAMES.get(name, name)]
  for i, key in enumerate(("accuracy", "specificity", "sensitivity", "dsc")):
    p = "" if paper is None else f" ({paper[i]:.2f})"
    cells.append(_pct(ours.get(key)) + p)
  cells.append(_pct(ours.get("precision")))
  return "| " + " | ".join(cells) + " |"


_HEADER = ("| Class | Accuracy | Specificity | Sensitivity | DSC | Precision |\n"
           "|---|---|---|---|---|---|")


def tables_markdown(results: Mapping[str, Any]) -> str:
  """The paper's Table 1 / Table 2 layout, ours with the paper's in brackets."""
  t = results["tables"]
  lines = [
      "# Results",
      "",
      "Percent; the paper's value in brackets. Specificity is TN/(TN+FP) and",
      "precision TP/(TP+FP) (the paper's 'specificity' behaves like precision for",
      "the small classes). Confusion counts are pooled over the slices of each test",
      f"animal; the table is the mean over {len(results.get('per_animal', {}))} test animals.",
      "",
  ]
  tr = results.get("training") or {}
  if tr.get("stopped_by_time_cap"):
    lines += [f"**Training stopped at the time cap** (max_train_seconds = "
              f"{tr['max_train_seconds']:g}) after {tr['epochs_completed']} of "
              f"{tr['epochs_planned']} epochs: these results depend on this machine's "
              "speed (rerun with a larger cap to compare runs).", ""]
  lines += data_lines(results.get("data") or {})
  if "gbp" in t:
    lines += [
        "## Table 1. After background removal with GBP (the paper's method)",
        "",
        _HEADER,
        _row("brain", results["brain"]["gbp"], PAPER_TABLE1["brain"]),
    ]
    lines += [_row(c, t["gbp"].get(c), PAPER_TABLE1[c]) for c in TISSUE]
    lines.append("")
  lines += ["## Table 2. After manual background removal (true brain mask)", "",
            _HEADER]
  lines += [_row(c, t["manual"].get(c), PAPER_TABLE2[c]) for c in TISSUE]
  lines += ["", "## Without background removal (paper Fig. 4)", "", _HEADER]
  lines += [_row(c, t["none"].get(c), None) for c in TISSUE]
  baselines = {"all_gm": "every brain voxel gray matter (true brain mask)",
               "mixture": "bias-corrected 3-class mixture alone (true brain mask)"}
  for key, title in baselines.items():
    if key in t:
      lines += ["", f"## Baseline: {title}", "", _HEADER]
      lines += [_row(c, t[key].get(c), None) for c in TISSUE]
  if "gbp" not in t:
    if results.get("absent"):
      lines += ["", f"Not shown: {results['absent']}."]
    return "\n".join(lines) + "\n"
  titles = {"gbp_improved": "After background removal with improved GBP placement",
            "intensity": "After background removal placed by intensity (no saliency)"}
  for key, title in titles.items():
    if key in t:
      lines += ["", f"## {title}", "", _HEADER]
      if key in results["brain"]:
        lines.append(_row("brain", results["brain"][key], None))
      lines += [_row(c, t[key].get(c), None) for c in TISSUE]
  b = results["brain"]
  pl = results.get("placement", {})
  truth = pl.get("displacement_truth", True)
  lines += ["", "## Brain mask placement", "",
            "Brain DSC of the removal mask (the mask applied before segmenting again)."
            + ("" if truth else " The test animals record no acquisition displacement, "
               "so there is no placement error column."), ""]
  lines += (["| Placement | Brain DSC | mean abs error (px) |", "|---|---|---|"] if truth
            else ["| Placement | Brain DSC |", "|---|---|"])
  rows = [("gbp", "gbp: the paper's method", pl.get("mean_abs_error_px")),
          ("gbp_ceiling", "gbp_ceiling: reference mask at its best shift", "0 by definition"),
          ("gbp_improved", "gbp_improved: improved GBP placement",
           pl.get("gbp_improved", {}).get("mean_abs_error_px")),
          ("intensity", "intensity: the same search located by intensity",
           pl.get("intensity", {}).get("mean_abs_error_px")),
          ("oracle", "oracle: best template, scale and shift", "0 by definition")]
  for key, label, err in rows:
    if key in b:
      cell = (err if isinstance(err, str) else _fmt(err)) if truth else None
      lines.append(f"| {label} | {_pct(b[key].get('dsc'))} |"
                   + (f" {cell} |" if truth else ""))
  return "\n".join(lines) + "\n"


def data_lines(data: Mapping[str, Any]) -> list[str]:
  """What the tables were measured on, and what the tissue truth is."""
  name = data.get("dataset")
  if name is None:
    return []
  out = [f"Data: {name}" + (f" (commit {data['commit'][:12]})" if data.get("commit") else "")
         + f"; tissue truth: {data.get('labels', 'labels')}."]
  if "pseudo" in str(data.get("labels", "")):
    out.append("Tissue DSC on this set is agreement with pseudo-labels (N4 bias correction "
               "and a 3-class mixture inside the manual mask), not with anatomy; brain "
               "DSC is against the manual brain masks, the real truth here.")
  return out + [""]


def _fmt(x) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"

