"""Per-scan wall time of ``rodent-gbp-segment``: 8 scans in one call against 8 single
calls, cold and warm compilation cache, and against BET on the same scans; one run.

  python experiments/prepare_data.py --dataset mouse_epi \\
      --data_root ../shared/data/mouse-epi --out_dir DATA     # prints DATA's path
  python benchmarks/batch_bench.py --data_dir DATA --out benchmarks/results/batch.json \\
      [--bet_python /path/to/venv/bin/python]

Eight animals of the converted ``mouse_epi`` folder (``<animal>/image.nii.gz``,
the first eight by name) are linked into one folder as ``<animal>.nii.gz``
beside their ``<animal>_mask.nii.gz`` (the set's brain masks, so the summary
gives Dice and HD95). Every measure is a fresh process timed from this one, the
way a lab's script runs the tool, with the shipped model:

* ``single_cold``: 8 calls ``--input <scan>``, each with an empty compilation
  cache folder (every call compiles, as before the cache existed);
* ``single_warm``: 8 calls sharing one cache folder filled by a first call
  (not timed): a user's second and later calls;
* ``batch_cold``: one call ``--input <folder>`` with an empty cache folder;
* ``batch_warm``: the same call again, its cache filled by ``batch_cold``;
* ``bet``: the ``brainextractor`` package (a Python reimplementation of FSL's
  BET surface model; PyPI) on the same 8 scans, one process, its default
  parameters on the headers' voxel sizes x10 (BET's defaults are sized for a
  human brain), timed per scan inside that process after its import (its
  numba functions compile on the first scan, which is included). It runs
  under ``--bet_python`` (a separate environment: it pins numba); when that
  is missing or fails, the reason is recorded instead of times.

Per-scan seconds: the single calls' own wall times; a batch call's wall time
divided by 8 (start-up, model load and compiling shared by the 8; the
summary's ``wall_s`` column, kept in the JSON, gives each scan's own time
inside the call). Written to ``--out`` as JSON with the machine and the load
average; the processes' output goes to ``--log``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
SCANS = 8

_BET = r"""
import json, sys, time
import nibabel as nib
import numpy as np
from brainextractor import BrainExtractor
out = {}
for path, mask_path in zip(sys.argv[1::2], sys.argv[2::2]):
  img = nib.load(path)
  affine = img.affine.copy()
  affine[:3, :] *= 10.0  # voxel sizes x10: BET's defaults are a human brain's
  scaled = nib.Nifti1Image(np.asarray(img.dataobj, np.float32), affine)
  t0 = time.perf_counter()
  bet = BrainExtractor(scaled)
  bet.run()
  mask = np.asarray(bet.compute_mask(), bool)
  seconds = time.perf_counter() - t0
  truth = np.asarray(nib.load(mask_path).dataobj) > 0
  dice = 2 * float((mask & truth).sum()) / max(float(mask.sum() + truth.sum()), 1.0)
  out[path] = {"seconds": seconds, "dice": dice}
print("RESULT " + json.dumps(out))
"""


def _machine() -> dict:
  cpu = ""
  try:
    cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
               if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import jax
  return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "devices": [str(d) for d in jax.devices()]}


def _segment(argv: list[str], cache: pathlib.Path, log: pathlib.Path) -> float:
  """Wall seconds of one ``rodent-gbp-segment`` process (its exit code must be 0)."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env |= {"XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(REPO)}
  t0 = time.perf_counter()
  run = subprocess.run([sys.executable, "-m", "rodent_gbp.cli", *argv], env=env,
                       capture_output=True, text=True)
  seconds = time.perf_counter() - t0
  with open(log, "a") as f:
    f.write(f"$ rodent-gbp-segment {' '.join(argv)}\n{run.stdout}{run.stderr}\n")
  if run.returncode != 0:
    raise RuntimeError(f"rodent-gbp-segment {' '.join(argv)} exited {run.returncode}: "
                       f"{run.stderr[-2000:]}")
  return seconds


def _stats(per_scan: list[float]) -> dict:
  return {"per_scan_s": per_scan, "median_s": statistics.median(per_scan),
          "mean_s": statistics.mean(per_scan), "total_s": sum(per_scan)}


def _bet(python: str | None, scans: list[pathlib.Path]) -> dict:
  if not python:
    return {"not_run": "no --bet_python given (pip install brainextractor into a separate "
                       "environment and pass its python)"}
  argv = [str(a) for s in scans for a in (s, s.with_name(s.name.replace(".nii.gz",
                                                                         "_mask.nii.gz")))]
  t0 = time.perf_counter()
  run = subprocess.run([python, "-c", _BET, *argv], capture_output=True, text=True)
  wall = time.perf_counter() - t0
  lines = [l for l in run.stdout.splitlines() if l.startswith("RESULT ")]
  if run.returncode != 0 or not lines:
    return {"not_run": f"brainextractor failed (exit {run.returncode}): "
                       f"{(run.stderr or run.stdout)[-1500:]}"}
  got = json.loads(lines[-1][len("RESULT "):])
  per = [got[str(s)]["seconds"] for s in scans]
  return _stats(per) | {"process_wall_s": wall,
                        "dice": [got[str(s)]["dice"] for s in scans],
                        "median_dice": statistics.median(got[str(s)]["dice"] for s in scans)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="a converted mouse_epi folder")
  parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "batch.json"))
  parser.add_argument("--bet_python", default=None,
                      help="python of an environment with brainextractor installed")
  parser.add_argument("--log", default=os.path.join(tempfile.gettempdir(), "batch_bench.log"),
                      help="where the processes' output goes")
  args = parser.parse_args()
  animals = sorted(p.name for p in pathlib.Path(args.data_dir).iterdir()
                   if (p / "image.nii.gz").is_file())[:SCANS]
  if len(animals) < SCANS:
    raise SystemExit(f"{args.data_dir}: {len(animals)} animals, need {SCANS}")
  result = {"machine": _machine(), "data_dir": str(args.data_dir), "animals": animals,
            "load_average_before": os.getloadavg(), "command": " ".join(sys.argv)}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    scans_dir = tmp / "scans"
    scans_dir.mkdir()
    for a in animals:
      os.symlink(pathlib.Path(args.data_dir, a, "image.nii.gz").resolve(),
                 scans_dir / f"{a}.nii.gz")
      os.symlink(pathlib.Path(args.data_dir, a, "brainmask.nii.gz").resolve(),
                 scans_dir / f"{a}_mask.nii.gz")
    scans = [scans_dir / f"{a}.nii.gz" for a in animals]
    log = pathlib.Path(args.log)
    log.write_text("")
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {"single_cold": [], "single_warm": []}
    warm_cache = tmp / "cache_single"
    _segment([f"--input={scans[0]}", f"--out_dir={tmp / 'fill'}"], warm_cache, log)
    for i, s in enumerate(scans):
      print(f"single calls, scan {i + 1}/{SCANS}", flush=True)
      times["single_cold"].append(_segment([f"--input={s}", f"--out_dir={tmp / 'cold'}"],
                                           tmp / f"cache_cold_{i}", log))
      times["single_warm"].append(_segment([f"--input={s}", f"--out_dir={tmp / 'warm'}"],
                                           warm_cache, log))
    for mode in ("cold", "warm"):
      print(f"one call with {SCANS} scans, {mode} cache", flush=True)
      wall = _segment([f"--input={scans_dir}", f"--out_dir={tmp / f'batch_{mode}'}"],
                      tmp / "cache_batch", log)
      times[f"batch_{mode}"] = [wall / SCANS] * SCANS
      result[f"batch_{mode}_wall_s"] = wall
    summary = (tmp / "batch_warm" / "summary.csv").read_text().splitlines()
    result["summary_warm"] = summary
    print("BET (brainextractor)", flush=True)
    result["bet"] = _bet(args.bet_python, scans)
    shutil.rmtree(tmp / "fill", ignore_errors=True)
  result |= {name: _stats(v) for name, v in times.items()}
  result["load_average_after"] = os.getloadavg()
  pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
  print(f"{'measure':14s} {'median s/scan':>14s} {'mean s/scan':>12s}")
  for name in ("single_cold", "single_warm", "batch_cold", "batch_warm", "bet"):
    r = result[name]
    if "median_s" in r:
      print(f"{name:14s} {r['median_s']:14.2f} {r['mean_s']:12.2f}")
    else:
      print(f"{name:14s} not run: {r['not_run'][:200]}")
  print(f"wrote {args.out} (the processes' output: {args.log})")


if __name__ == "__main__":
  main()
