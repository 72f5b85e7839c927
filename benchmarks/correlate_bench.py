"""Benchmark: batched FFT cross-correlation vs scipy.signal.correlate per slice.

The localisation step (paper section 4.3) correlates a (96, 96) template with
every test slice's enhanced gradient image (mode "same"). This script times,
side by side in one process on the same random float32 data:

* ``ours``: ``rodent_gbp.correlate.cross_correlate`` jitted over a batch of B
  slices (one call, one template spectrum);
* ``scipy_fft``: ``scipy.signal.correlate(..., method="fft")`` in a Python
  loop over the same B slices;
* ``scipy_direct``: ``method="direct"`` over a few slices only (about 0.7 s
  per 96 x 96 slice on one core), reported per slice like the others.

Repeats are interleaved (ours, fft, direct, ours, ...) so background load
affects all three alike; the median over repeats is reported. Results are
printed and written as JSON to ``--out``.

  python benchmarks/correlate_bench.py [--batch 64] [--repeats 7] \
      [--direct_slices 2] [--out benchmarks/results/correlate.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np
import scipy
import scipy.signal

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from rodent_gbp import correlate  # noqa: E402  (script run from a checkout)

_DEFAULT_OUT = (pathlib.Path(__file__).resolve().parent / "results" /
                "correlate.json")


def _time(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def run(batch: int, size: int, repeats: int, direct_slices: int,
        seed: int = 0) -> dict:
  """Times the three methods; returns the JSON-able record."""
  rng = np.random.default_rng(seed)
  images = rng.random((batch, size, size), dtype=np.float32)
  template = rng.random((size, size), dtype=np.float32)
  direct_slices = min(direct_slices, batch)

  ours_fn = jax.jit(functools.partial(correlate.cross_correlate, mode="same"))
  images_dev, template_dev = jax.device_put(images), jax.device_put(template)
  compile_s = _time(lambda: ours_fn(images_dev, template_dev).block_until_ready())

  def ours():
    ours_fn(images_dev, template_dev).block_until_ready()

  def scipy_fft():
    for x in images:
      scipy.signal.correlate(x, template, mode="same", method="fft")

  def scipy_direct():
    for x in images[:direct_slices]:
      scipy.signal.correlate(x, template, mode="same", method="direct")

  # Agreement check on the slices scipy's direct method sees.
  got = np.asarray(ours_fn(images_dev, template_dev))[:direct_slices]
  want = np.stack([scipy.signal.correlate(x.astype(np.float64),
                                          template.astype(np.float64),
                                          mode="same", method="direct")
                   for x in images[:direct_slices]])
  rel_err = float(np.abs(got - want).max() / np.abs(want).max())

  ours()  # warm caches
  scipy_fft()
  times = {"ours": [], "scipy_fft": [], "scipy_direct": []}
  for _ in range(repeats):
    times["ours"].append(_time(ours))
    times["scipy_fft"].append(_time(scipy_fft))
    times["scipy_direct"].append(_time(scipy_direct))

  n_slices = {"ours": batch, "scipy_fft": batch, "scipy_direct": direct_slices}
  rate = {k: n_slices[k] / statistics.median(v) for k, v in times.items()}
  return {
      "task": f"cross-correlation, mode same, {size}x{size} image and template",
      "batch": batch, "size": size, "repeats": repeats,
      "direct_slices": direct_slices,
      "slices_per_s": rate,
      "speedup_vs_scipy_direct": rate["ours"] / rate["scipy_direct"],
      "speedup_vs_scipy_fft": rate["ours"] / rate["scipy_fft"],
      "median_s": {k: statistics.median(v) for k, v in times.items()},
      "all_s": times,
      "compile_s": compile_s,
      "max_rel_error_vs_direct": rel_err,
      "env": {
          "jax": jax.__version__, "numpy": np.__version__,
          "scipy": scipy.__version__, "python": platform.python_version(),
          "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
          "loadavg_before": list(os.getloadavg()),
      },
  }


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64,
                      help="slices per batch (ours and scipy fft)")
  parser.add_argument("--size", type=int, default=96,
                      help="image and template side length")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--direct_slices", type=int, default=2,
                      help="slices timed with scipy's direct method per repeat")
  parser.add_argument("--out", type=pathlib.Path, default=_DEFAULT_OUT)
  args = parser.parse_args(argv)
  record = run(args.batch, args.size, args.repeats, args.direct_slices)
  rate = record["slices_per_s"]
  print(f"{record['task']}, batch {args.batch}, median of {args.repeats}")
  for name in ("ours", "scipy_fft", "scipy_direct"):
    print(f"  {name:13s} {rate[name]:12.1f} slices/s")
  print(f"  speed-up vs scipy direct: {record['speedup_vs_scipy_direct']:.0f}x"
        f"  (target >= 10x)")
  print(f"  speed-up vs scipy fft:    {record['speedup_vs_scipy_fft']:.2f}x"
        f"  (target >= 1x)")
  print(f"  max relative error vs direct: {record['max_rel_error_vs_direct']:.1e}")
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(record, indent=2) + "\n")
  print(f"wrote {args.out}")
  return record


if __name__ == "__main__":
  main()
