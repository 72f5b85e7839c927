"""Start-up time of ``rodent-gbp-segment``: this tree against another commit, side by side.

  python benchmarks/startup_bench.py --before d6e38f1 --repeats 15 --out_dir benchmarks/results

Two measures, each a fresh Python process (the way a user or a study script
starts the tool), timed from the parent:

* ``import``: ``import rodent_gbp.cli`` (what every call pays before any work);
* ``help``: ``rodent-gbp-segment --help`` in full (flag definitions, the
  placers' help text, the exit).

The ``--before`` commit is checked out into a temporary git worktree and put
first on ``PYTHONPATH``; the runs alternate (before, after, before, ...) so
that load on the machine hits both alike. Prints a table and writes
``startup.json`` (median, min and every run, seconds; the ratio after / before
of the medians) to ``--out_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CASES = {
    "import": ["-c", "import rodent_gbp.cli"],
    "help": ["-c", "import sys; from rodent_gbp import cli; sys.argv = ['rodent-gbp-segment', "
             "'--help']; cli.segment_main()"],
}


def _git(*args: str) -> str:
  return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True,
                        text=True).stdout.strip()


def _time(tree: pathlib.Path, argv: list[str]) -> float:
  env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS="cpu")
  t0 = time.perf_counter()
  subprocess.run([sys.executable, *argv], env=env, check=False, capture_output=True)
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--before", required=True, help="the commit to compare against")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results"))
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    before_tree = pathlib.Path(tmp) / "before"
    _git("worktree", "add", "--detach", str(before_tree), args.before)
    try:
      trees = {"before": before_tree, "after": REPO}
      runs = {case: {k: [] for k in trees} for case in CASES}
      for case, argv in CASES.items():
        for tree in trees.values():  # one warm-up each (disk cache, .pyc files)
          _time(tree, argv)
        for _ in range(args.repeats):
          for name, tree in trees.items():
            runs[case][name].append(_time(tree, argv))
    finally:
      _git("worktree", "remove", "--force", str(before_tree))
  result = {"before": _git("rev-parse", args.before), "after": _git("rev-parse", "HEAD"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(), "repeats": args.repeats, "cases": {}}
  print(f"{'case':8s} {'before s':>9s} {'after s':>9s} {'after/before':>13s}")
  for case, by in runs.items():
    med = {k: statistics.median(v) for k, v in by.items()}
    result["cases"][case] = {k: {"median_s": med[k], "min_s": min(v), "runs_s": v}
                             for k, v in by.items()} | {
                                 "ratio_median": med["after"] / med["before"]}
    print(f"{case:8s} {med['before']:9.3f} {med['after']:9.3f} "
          f"{med['after'] / med['before']:13.3f}")
  out = pathlib.Path(args.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "startup.json").write_text(json.dumps(result, indent=1))
  print(f"wrote {out / 'startup.json'}")


if __name__ == "__main__":
  main()
