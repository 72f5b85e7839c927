"""Benchmark: saliency throughput, and Captum's GuidedBackprop on the same weights.

On the default U-Net (features 16, depth 3, 4 classes, 96 x 96 slices) and a
batch of B = 8 slices, this script times, side by side in one process:

* ``vanilla_1``: the plain gradient of one class target (``method="vanilla"``);
* ``guided_1``: Guided Backpropagation for one class;
* ``guided_all``: Guided Backpropagation for all 4 classes (one forward pass,
  its pullback applied to the 4 class cotangents in one program, unrolled);
* ``guided_all_vmap``: the same with the pullback vmapped over the 4
  cotangents (the alternative ``pullback_mode``, kept for comparison);
* ``guided_image_and_logits``: the removal pipeline's call,
  ``guided.gradient_image_and_logits`` (tissue classes 1-3 and the
  segmentation logits from the same forward pass);
* ``guided_image_then_forward``: the same two results from two calls,
  ``guided.gradient_image`` and a separate forward pass (what the pipeline
  did before);
* ``captum_frozen``: Captum's ``GuidedBackprop`` on a PyTorch twin of the
  U-Net (``benchmarks/torch_unet.py``) holding the *same* weights, one
  ``attribute`` call per class (Captum explains one target at a time), with
  params frozen (``requires_grad=False``);
* ``captum``: the same as users call it: a plain ``nn.Module``, whose params
  require grad (torch's default).
  The torch model's output is the same objective per image and class: the sum
  over pixels of the softmax probability.

Captum computes its gradients with ``torch.autograd.grad(outputs, inputs)``,
which runs only the part of the backward pass that leads to ``inputs``: the
weight gradients are not computed even when params require grad, so the two
anchors are expected to cost the same (the record says whether they do).

Every JAX function is jitted and warmed up first. Repeats are interleaved
(vanilla, guided, all, ..., captum, vanilla, ...) so background load on this
shared machine hits all variants alike; medians are reported as slices/s. The maps of
``guided_all`` and ``captum`` are compared: max |ours - captum| divided by
max |captum|. Params are the randomly initialised U-Net with small random
biases (Flax starts biases at 0), or a trained run's with ``--checkpoint``.

  pip install torch captum      # the `bench` extra
  python benchmarks/saliency_bench.py [--batch 8] [--repeats 7] \
      [--out benchmarks/results/saliency.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

_HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))
sys.path.insert(0, str(_HERE))
from rodent_gbp import guided  # noqa: E402  (script run from a checkout)
from rodent_gbp import model as model_lib  # noqa: E402

_DEFAULT_OUT = _HERE / "results" / "saliency.json"


def _params(features: int, depth: int, size: int, checkpoint: str | None, seed: int):
  if checkpoint:
    from rodent_gbp.training import checkpoint as ckpt  # pylint: disable=g-import-not-at-top
    loaded = ckpt.load_model(checkpoint)
    c = loaded.config
    return (model_lib.UNet(features=c.features, depth=c.depth, num_classes=c.num_classes),
            jax.tree_util.tree_map(jnp.asarray, loaded.params))
  net = model_lib.UNet(features=features, depth=depth)
  params = model_lib.init_params(net, jax.random.key(seed), (size, size))
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [0.05 * jax.random.normal(k, v.shape) if path[-1].key == "bias" else v
            for k, (path, v) in zip(keys, leaves)]
  return net, jax.tree_util.tree_unflatten(tree, leaves)


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def run(batch: int, size: int, repeats: int, features: int = 16, depth: int = 3,
        checkpoint: str | None = None, seed: int = 0) -> dict:
  """Times the variants side by side; returns the JSON-able record."""
  import captum as captum_lib  # pylint: disable=g-import-not-at-top
  from captum.attr import GuidedBackprop  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import torch_unet  # pylint: disable=g-import-not-at-top

  net, params = _params(features, depth, size, checkpoint, seed)
  rng = np.random.default_rng(seed)
  images_np = rng.standard_normal((batch, size, size, 1)).astype(np.float32)
  images = jnp.asarray(images_np)
  num_classes = net.num_classes

  forward = jax.jit(lambda p, x: net.apply({"params": p}, x))

  def jax_fn(method, target, pullback_mode="unroll"):
    def go():
      return guided.saliency(net, params, images, method=method, target=target,
                             pullback_mode=pullback_mode).block_until_ready()
    return go

  ours = {
      "vanilla_1": jax_fn("vanilla", 1),
      "guided_1": jax_fn("guided", 1),
      "guided_all": jax_fn("guided", "all"),
      "guided_all_vmap": jax_fn("guided", "all", "vmap"),
      "guided_image_and_logits": lambda: jax.block_until_ready(
          guided.gradient_image_and_logits(net, params, images)),
      "guided_image_then_forward": lambda: jax.block_until_ready(
          (guided.gradient_image(net, params, images), forward(params, images))),
  }

  # Captum warns on every call (input grad switched on, hooks set); once is enough.
  warnings.filterwarnings("ignore", module="captum")
  images_t = torch.from_numpy(images_np.transpose(0, 3, 1, 2).copy())
  host_params = jax.device_get(params)

  def captum_fn(requires_grad: bool):
    """Captum's GBP of all classes on a fresh twin; params frozen or not."""
    tnet = torch_unet.from_flax(host_params, features=net.features, depth=net.depth,
                                num_classes=num_classes)
    for p in tnet.parameters():
      p.requires_grad_(requires_grad)
    gbp = GuidedBackprop(torch_unet.ClassScore(tnet))

    def go():
      return torch.stack([gbp.attribute(images_t, target=c)[:, 0]
                          for c in range(num_classes)], dim=1)
    return tnet, go

  tnet, captum_frozen = captum_fn(False)
  tnet_grad, captum = captum_fn(True)
  assert all(p.requires_grad for p in tnet_grad.parameters())
  anchors = {"captum_frozen": captum_frozen, "captum": captum}

  # Agreement of the forward pass and of the maps (same weights, same input).
  with torch.no_grad():
    logits_t = tnet(images_t).numpy().transpose(0, 2, 3, 1)
  logits_j = np.asarray(net.apply({"params": params}, images))
  captum_maps = captum().numpy()
  scale = np.abs(captum_maps).max()
  rel = lambda maps: float(np.abs(np.asarray(maps) - captum_maps).max() / scale)
  _, logits_shared = ours["guided_image_and_logits"]()
  # Which gradients Captum's backward computes when params require grad: the
  # output masks (input, weight, bias) of every conv backward of one call.
  with torch.profiler.profile(record_shapes=True) as prof:
    captum()
  masks = sorted({str(e.concrete_inputs[-1]) for e in prof.events()
                  if e.name == "aten::convolution_backward" and e.concrete_inputs})

  # Warm-up (compilation), then interleaved repeats.
  variants = {**ours, **anchors}
  for fn in variants.values():
    fn()
  times = {name: [] for name in variants}
  load_before = os.getloadavg()
  usage_before = _cpu_usage()
  for _ in range(repeats):
    for name, fn in variants.items():
      times[name].append(_timed(fn))
  others = _other_jobs_share(usage_before, _cpu_usage())
  load_after = os.getloadavg()

  median = {k: statistics.median(v) for k, v in times.items()}
  rate = {k: batch / v for k, v in median.items()}
  ratios = {
      "guided_1_over_vanilla_1_time": median["guided_1"] / median["vanilla_1"],
      "guided_all_over_guided_1_time": median["guided_all"] / median["guided_1"],
      "guided_all_over_captum_throughput": rate["guided_all"] / rate["captum"],
      "guided_all_over_captum_frozen_throughput": rate["guided_all"] / rate["captum_frozen"],
      "captum_frozen_over_captum_throughput": rate["captum_frozen"] / rate["captum"],
      "guided_all_vmap_over_guided_1_time": median["guided_all_vmap"] / median["guided_1"],
      "guided_image_and_logits_over_image_then_forward_time":
          median["guided_image_and_logits"] / median["guided_image_then_forward"],
  }
  targets = {
      "guided_1_over_vanilla_1_time": ("<=", 1.15),
      "guided_all_over_guided_1_time": ("<=", 3.0),
      "guided_all_over_captum_throughput": (">=", 2.0),
      "guided_all_over_captum_frozen_throughput": (">=", 1.3),
      "max_rel_map_difference": ("<=", 1e-4),
  }
  diff = rel(ours["guided_all"]())
  measured = dict(ratios, max_rel_map_difference=diff)
  met = {k: (measured[k] <= v if op == "<=" else measured[k] >= v)
         for k, (op, v) in targets.items()}
  return {
      "benchmark": "saliency",
      "model": {"features": net.features, "depth": net.depth,
                "num_classes": num_classes, "params": model_lib.count_params(params),
                "checkpoint": checkpoint},
      "batch": batch, "image": [size, size], "repeats": repeats,
      "median_seconds": median,
      "slices_per_s": rate,
      "all_times_seconds": times,
      "ratios": ratios,
      "max_rel_map_difference": diff,
      "max_rel_map_difference_vmap": rel(ours["guided_all_vmap"]()),
      "max_rel_map_difference_captum_frozen": rel(captum_frozen()),
      "max_rel_logit_difference": float(np.abs(logits_t - logits_j).max()
                                        / np.abs(logits_j).max()),
      "max_rel_logit_difference_image_and_logits": float(
          np.abs(np.asarray(logits_shared) - logits_j).max() / np.abs(logits_j).max()),
      "captum_conv_backward_output_masks": masks,
      "targets": {k: f"{op} {v}" for k, (op, v) in targets.items()},
      "targets_met": met,
      "environment": {
          "jax": jax.__version__, "torch": torch.__version__,
          "captum": captum_lib.__version__, "torch_threads": torch.get_num_threads(),
          "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
          "cpu_model": _cpu_model(),
          "platform": platform.platform(), "python": platform.python_version(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "loadavg_before": load_before, "loadavg_after": load_after,
          "other_jobs_cpu_share": others,
          "busy": others is not None and others > _BUSY,
          "note": ("shared machine; other_jobs_cpu_share is the share of all cores "
                   "that other processes used during the timed repeats; above "
                   f"{_BUSY} PyTorch's threads lose far more than XLA's, and "
                   "the ratios to Captum are not comparable"),
      },
  }


# Share of the cores other processes may use before a run counts as busy.
_BUSY = 0.1


def _cpu_usage():
  """(busy seconds of all cores, this process's CPU seconds, wall seconds)."""
  try:
    ticks = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
  except OSError:
    return None
  busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait
  own = os.times()
  return busy, own.user + own.system, time.perf_counter()


def _other_jobs_share(before, after) -> float | None:
  """Share of all cores that other processes used between two ``_cpu_usage``."""
  if before is None or after is None:
    return None
  busy, own, wall = (a - b for a, b in zip(after, before))
  return max(0.0, (busy - own) / (wall * os.cpu_count()))


def _cpu_model() -> str:
  """The CPU's model name (as ``lscpu`` gives it), for the record."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--features", type=int, default=16)
  parser.add_argument("--depth", type=int, default=3)
  parser.add_argument("--checkpoint", default=None,
                      help="a trained run's checkpoints folder (default: random init)")
  parser.add_argument("--out", default=str(_DEFAULT_OUT))
  args = parser.parse_args(argv)
  record = run(args.batch, args.size, args.repeats, args.features, args.depth,
               args.checkpoint)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(record, indent=2))
  print(json.dumps({k: record[k] for k in ("median_seconds", "slices_per_s", "ratios",
                                           "max_rel_map_difference",
                                           "max_rel_logit_difference",
                                           "captum_conv_backward_output_masks",
                                           "targets_met")}, indent=2))
  env = record["environment"]
  if env["busy"]:
    print(f"warning: other jobs used {env['other_jobs_cpu_share']:.0%} of the cores while "
          "timing; the ratios to Captum are not comparable (rerun on a quiet machine)")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
