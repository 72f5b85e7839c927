"""Throughput of the whole GBP removal pipeline against devices and batch size.

What is timed, per call on a batch of B raw slices split over a
``parallel.make_mesh()`` mesh (params and template bank replicated): the
jitted ``pipeline.remove_background`` (GBP gradient image of WM+GM+CSF, Eq. 1
enhancement, FFT correlation with the reference template, mask placement,
zero-filled removal, re-segmentation) plus the confusion counts of the new
labels, i.e. every stage of the removal pipeline. Two rates, in slices/s:

* ``end_to_end``: host numpy in (``shard_batch``), labels, displacements and
  counts back on the host (``to_host``);
* ``compute``: inputs already on the devices, wait for the outputs there.

Data: a phantom made in memory with ``phantom.make_animal`` (no NIfTI, so
nibabel is not needed), slices repeated up to B. The network has random
weights (throughput does not depend on them) and the template bank holds the
phantom's brain masks with the mask itself as the reference gradient image
(the shapes, not the values, set the cost).

Two modes:

* CPU (default without a GPU): one subprocess per device count (1, 2, 4, 8)
  with ``--xla_force_host_platform_device_count``. Be clear about what this
  measures: fake CPU devices share the same physical cores (2 here), so more
  "devices" cannot run faster; the numbers show the overhead of splitting a
  batch (partitioning, collectives, transfers), which should stay small.
  They say nothing about speedup on real accelerators.
* GPU (``--gpu``, or automatic when JAX's default backend is a GPU): every
  visible GPU in one mesh, B in 64, 256, 1024, the device named in the output.
  A batch that does not fit is recorded with its error instead of a rate.

  python benchmarks/scale_bench.py                      # CPU, fake devices
  python benchmarks/scale_bench.py --gpu --out benchmarks/results/scale_gpu.json

Results go to ``--out`` as JSON; a compact table is printed at the end.
Needs only jax, flax, numpy (and this package).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=None,
                 help="JSON output (default benchmarks/results/scale.json, "
                      "scale_gpu.json in GPU mode)")
  p.add_argument("--gpu", action="store_true", help="time on the visible GPUs")
  p.add_argument("--cpu", action="store_true", help="force the CPU fake-device mode")
  p.add_argument("--devices", default="1,2,4,8", help="CPU mode: device counts")
  p.add_argument("--batches", default=None,
                 help="batch sizes (default 8,32 on CPU; 64,256,1024 on GPU)")
  p.add_argument("--size", type=int, default=96, help="in-plane matrix (paper: 96)")
  p.add_argument("--config", default="default", help="named config for the U-Net size")
  p.add_argument("--iters", type=int, default=None, help="timed calls (CPU 2, GPU 10)")
  p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
  return p.parse_args(argv)


# ----------------------------------------------------------------------------
# One process: time the pipeline on all of its devices.
# ----------------------------------------------------------------------------


def _phantom_slices(size: int, n_animals: int = 2):
  """Raw normalised slices (N, H, W), labels, brain masks of phantom animals."""
  import numpy as np
  from rodent_gbp import phantom
  images, labels, masks = [], [], []
  for i in range(n_animals):
    a = phantom.make_animal(0, i, size=size)
    to_slices = lambda v: np.moveaxis(v, 1, 0)  # coronal: (X, Y, Z) -> (Y, X, Z)
    img = to_slices(a.image).astype(np.float32)
    images.append(img / np.float32(np.percentile(img, 99.0)))
    labels.append(to_slices(a.labels).astype(np.int32))
    masks.append(to_slices(a.brainmask).astype(bool))
  return np.concatenate(images), np.concatenate(labels), np.stack(masks)


def time_pipeline(batches, *, size: int, config_name: str, iters: int) -> list[dict]:
  """Times the removal pipeline on every device of this process's run."""
  import functools
  import jax
  import jax.numpy as jnp
  import numpy as np
  from rodent_gbp import configs, metrics, parallel, pipeline
  from rodent_gbp import model as model_lib

  config = configs.get_config(config_name)
  model = model_lib.build_unet(config)
  options = pipeline.PlacementOptions.from_config(config)
  mesh = parallel.make_mesh()
  init = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 1), jnp.float32))["params"])
  params = parallel.replicate(jax.device_get(init(jax.random.PRNGKey(0))), mesh)
  images, labels, bank_masks = _phantom_slices(size)
  # The reference's gradient image only scales the template; its shape is
  # what costs, so the mask stands in for it (no extra saliency pass here).
  bank = parallel.replicate((bank_masks, bank_masks.astype(np.float32), np.int32(0)), mesh)
  n_slices = bank_masks.shape[1]

  @functools.partial(jax.jit, static_argnames=("model", "options"))
  def whole(params, images, slice_index, truth, bank_masks, bank_grads, ref, *, model,
            options):
    out = pipeline.remove_background(params, images, slice_index, bank_masks, bank_grads,
                                     ref, model=model, options=options)
    # Per-slice counts, so the batch axis stays split until the host sums.
    counts = jax.vmap(lambda p, t: metrics.confusion_counts(p, t, config.num_classes))(
        out["labels"], truth)
    return {"labels": out["labels"], "displacement": out["displacement"], "counts": counts}

  run = functools.partial(whole, model=model, options=options)
  rows = []
  for b in batches:
    idx = np.arange(b) % len(images)
    host = {"images": images[idx][..., None], "slice_index": (idx % n_slices).astype(np.int32),
            "truth": labels[idx]}
    row = {"devices": mesh.size, "device": parallel.describe(mesh), "batch": b}
    try:
      def place():
        return parallel.shard_batch(parallel.local_share(host, mesh), mesh)

      t0 = time.perf_counter()
      out = run(params, **place(), bank_masks=bank[0], bank_grads=bank[1], ref=bank[2])
      jax.block_until_ready(out)
      row["first_call_s"] = time.perf_counter() - t0  # compile + one run

      t0 = time.perf_counter()
      for _ in range(iters):
        res = parallel.to_host(run(params, **place(), bank_masks=bank[0], bank_grads=bank[1],
                                   ref=bank[2]))
      dt = time.perf_counter() - t0
      row["end_to_end_slices_per_s"] = b * iters / dt

      placed = place()
      jax.block_until_ready(placed)
      t0 = time.perf_counter()
      for _ in range(iters):
        out = run(params, **placed, bank_masks=bank[0], bank_grads=bank[1], ref=bank[2])
      jax.block_until_ready(out)
      dt = time.perf_counter() - t0
      row["compute_slices_per_s"] = b * iters / dt
      row["counts_total"] = int(res["counts"].sum())  # sanity: C * b * H * W
    except Exception as e:  # noqa: BLE001 - e.g. out of memory at the largest batch
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    rows.append(row)
    print(json.dumps(row), flush=True)
  return rows


def _child(args) -> None:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + f" --xla_force_host_platform_device_count={args.child}")
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(REPO))
  import jax
  # XLA:CPU compiles each partitionable-threefry op slowly (seconds); only the
  # random init uses it here.
  jax.config.update("jax_threefry_partitionable", False)
  rows = time_pipeline([int(b) for b in args.batches.split(",")], size=args.size,
                       config_name=args.config, iters=args.iters)
  print("RESULT " + json.dumps(rows), flush=True)


# ----------------------------------------------------------------------------
# The driver.
# ----------------------------------------------------------------------------


def _table(rows: list[dict]) -> str:
  lines = [f"{'devices':>7} {'batch':>6} {'end-to-end sl/s':>16} {'compute sl/s':>13} "
           f"{'1st call s':>10}  device"]
  for r in rows:
    if "error" in r:
      lines.append(f"{r['devices']:>7} {r['batch']:>6}  error: {r['error'][:60]}")
      continue
    lines.append(f"{r['devices']:>7} {r['batch']:>6} {r['end_to_end_slices_per_s']:>16.1f} "
                 f"{r['compute_slices_per_s']:>13.1f} {r['first_call_s']:>10.1f}  {r['device']}")
  return "\n".join(lines)


def main(argv=None) -> None:
  args = _parse(argv)
  if args.child:
    args.batches = args.batches or "8,32"
    args.iters = args.iters or 2
    _child(args)
    return

  sys.path.insert(0, str(REPO))
  gpu = args.gpu
  if not gpu and not args.cpu:
    import jax
    gpu = jax.default_backend() == "gpu"
  out = pathlib.Path(args.out or REPO / "benchmarks" / "results"
                     / ("scale_gpu.json" if gpu else "scale.json"))
  common = {"size": args.size, "config": args.config, "host": platform.node(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}
  if gpu:
    import jax
    batches = [int(b) for b in (args.batches or "64,256,1024").split(",")]
    iters = args.iters or 10
    rows = time_pipeline(batches, size=args.size, config_name=args.config, iters=iters)
    result = {"mode": "gpu", "jax": jax.__version__,
              "devices": [d.device_kind for d in jax.devices()], "iters": iters,
              **common, "results": rows}
  else:
    batches = args.batches or "8,32"
    iters = args.iters or 2
    rows = []
    for n in (int(d) for d in args.devices.split(",")):
      t0 = time.perf_counter()
      proc = subprocess.run(
          [sys.executable, __file__, "--child", str(n), "--batches", batches,
           "--size", str(args.size), "--config", args.config, "--iters", str(iters)],
          capture_output=True, text=True, cwd=REPO,
          env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
      found = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
      if proc.returncode or not found:
        raise RuntimeError(f"{n}-device run failed:\n{proc.stderr[-3000:]}")
      rows += json.loads(found[-1][len("RESULT "):])
      print(f"{n} fake CPU device(s): {time.perf_counter() - t0:.0f} s", flush=True)
    import jax
    result = {"mode": "cpu_fake_devices", "jax": jax.__version__, "iters": iters,
              "note": "fake CPU devices share the same physical cores: these numbers "
                      "measure the overhead of splitting a batch, not a speedup",
              **common, "results": rows}
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + "\n")
  print(f"\nwhole removal pipeline, {args.size}x{args.size} slices, config "
        f"{args.config!r} ({result['mode']}); wrote {out}")
  print(_table(rows))


if __name__ == "__main__":
  main()
