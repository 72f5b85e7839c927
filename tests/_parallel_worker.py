"""Subprocess side of tests/test_parallel.py (the device count is fixed at JAX start).

  python tests/_parallel_worker.py --devices 8 --out result.npz --local_only
  python tests/_parallel_worker.py --devices 2 --out p0.npz --meshes all \
      --coordinator 127.0.0.1:PORT --num_processes 2 --process_id 0

Runs, on a mesh of ONE device and on a mesh of ALL devices of the run (every
process's): three training steps with a large learning rate (the library's
``tissue.train_step``, jitted once per mesh), a deliberately wrong step on all
devices (each device's local loss and gradient, no cross-device mean), and the
GBP removal pipeline (template bank, ``pipeline.raw_pass``, the paper's
placement, ``pipeline.remove_and_segment``) on a tiny phantom animal.
Writes every result to ``--out`` (npz) for the test to compare. In a
multi-process run the one-device reference uses this process's first device.

  python tests/_parallel_worker.py --devices 1 --out p0.npz --train_loop WORKDIR \
      --data_dir DATA --coordinator 127.0.0.1:PORT --num_processes 2 --process_id 0

With ``--train_loop`` it runs ``tissue.train_and_evaluate`` instead (smoke
config, ``--epochs``, ``--max_train_seconds``) and writes its per-epoch steps
and losses. The environment variable ``RODENT_GBP_TEST_CLOCK_RATE`` (test only)
makes this process's training clock run that many times faster than the real
one, so two processes can disagree about the time cap.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import types


def _parse():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", type=int, required=True, help="CPU devices per process")
  p.add_argument("--out", required=True)
  p.add_argument("--coordinator", default=None)
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  p.add_argument("--size", type=int, default=32)
  p.add_argument("--meshes", default="one,all", help="one: first local device; all: every device")
  p.add_argument("--local_only", action="store_true",
                 help="also run the step without the cross-device mean (must differ)")
  p.add_argument("--train_loop", default=None, help="workdir: run train_and_evaluate")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--max_train_seconds", type=float, default=0.0)
  return p.parse_args()


ARGS = _parse()
# Must precede the first JAX import: the CPU device count is read once.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={ARGS.devices}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
# With the partitionable threefry (JAX's default) each random op costs XLA:CPU
# ~5 s to compile here; the classic one gives the same values on 1 and N
# devices too (it generates the full array), at a fraction of the cost.
jax.config.update("jax_threefry_partitionable", False)
if os.environ.get("RODENT_GBP_JAX_CACHE"):
  jax.config.update("jax_compilation_cache_dir", os.environ["RODENT_GBP_JAX_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from rodent_gbp import parallel  # noqa: E402

parallel.initialize_distributed(ARGS.coordinator, ARGS.num_processes, ARGS.process_id)

from jax.sharding import PartitionSpec as P  # noqa: E402

from rodent_gbp import bank as bank_lib  # noqa: E402
from rodent_gbp import bundle as bundle_lib  # noqa: E402
from rodent_gbp import configs  # noqa: E402
from rodent_gbp import model as model_lib  # noqa: E402
from rodent_gbp import phantom  # noqa: E402
from rodent_gbp import pipeline  # noqa: E402
from rodent_gbp import placement  # noqa: E402
from rodent_gbp.training import trainer  # noqa: E402
from rodent_gbp.training import tissue  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3


def phantom_volume(index: int, size: int):
  """A phantom animal as the pipeline sees a ``data.Volume`` (no NIfTI round trip)."""
  a = phantom.make_animal(0, index, size=size)
  to_slices = lambda v: np.moveaxis(v, 1, 0)  # coronal: (X, Y, Z) -> (Y, X, Z)
  image = to_slices(a.image).astype(np.float32)
  image = image / np.float32(np.percentile(image, 99.0))
  return types.SimpleNamespace(animal_id=a.meta["animal_id"], image=image,
                               label=to_slices(a.labels).astype(np.int32),
                               brainmask=to_slices(a.brainmask).astype(bool), meta=a.meta)


def training_batches(vol, config):
  """STEPS global batches of skull-stripped slices, the same on every process."""
  rng = np.random.default_rng(0)
  stripped = (vol.image * vol.brainmask)[..., None].astype(np.float32)
  out = []
  for _ in range(STEPS):
    idx = rng.choice(len(stripped), GLOBAL_BATCH, replace=False)
    out.append({"image": stripped[idx], "label": vol.label[idx]})
  return out


def initial_state(config, image_shape):
  """Host copy of the initial train state (one jitted init, not op by op)."""
  init = jax.jit(trainer.create_train_state, static_argnums=(0, 2))
  return jax.device_get(init(config, jax.random.PRNGKey(0), tuple(image_shape)))


def run_training(mesh, state, batches, step_fn):
  state = parallel.replicate(state, mesh)
  losses = []
  for b in batches:
    state, metrics = step_fn(state, parallel.shard_batch(parallel.local_share(b, mesh), mesh))
    losses.append(metrics["loss"])
  return parallel.to_host(state.params), np.asarray(parallel.to_host(losses))


def local_only_step(mesh, model, config):
  """The bug the equivalence test must catch: no cross-device gradient mean.

  Each device takes the step on its own shard's loss; the replicated output
  spec (unchecked) then keeps one device's params.
  """
  step = functools.partial(tissue.train_step, model=model, config=config)
  return jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")),
                               out_specs=(P(), P()), check_vma=False))


def train_loop():
  """train_and_evaluate on --data_dir; this process's clock skewed if asked."""
  rate = float(os.environ.get("RODENT_GBP_TEST_CLOCK_RATE", "1"))
  if rate != 1:
    import time
    t0 = time.perf_counter()
    trainer.clock = lambda: t0 + rate * (time.perf_counter() - t0)
  config = configs.override(configs.get_config("smoke"), animals=3, image_size=48,
                            epochs=ARGS.epochs, max_train_seconds=ARGS.max_train_seconds)
  r = tissue.train_and_evaluate(config, ARGS.train_loop, data_dir=ARGS.data_dir,
                               log=lambda msg: print(msg, flush=True))
  np.savez(ARGS.out, steps=np.array([h["step"] for h in r.history]),
           losses=np.array([h["loss"] for h in r.history]),
           partial=np.array([h["partial_epoch"] for h in r.history]))


def main():
  if ARGS.train_loop:
    train_loop()
    return
  config = configs.override(configs.get_config("smoke"), features=4, depth=2,
                            learning_rate=1.0, momentum=0.9, augment=True,
                            loss="dice_ce", batch_size=GLOBAL_BATCH, eval_batch_size=6)
  model = model_lib.build_unet(config)
  train_vols = [phantom_volume(i, ARGS.size) for i in (1, 2)]
  test_vol = phantom_volume(3, ARGS.size)
  batches = training_batches(train_vols[0], config)
  state0 = initial_state(config, batches[0]["label"].shape[1:])
  meshes = {"one": parallel.make_mesh(jax.local_devices()[:1]), "all": parallel.make_mesh()}
  out = {"device_count": np.int32(jax.device_count()),
         "process_count": np.int32(jax.process_count())}
  for name in ARGS.meshes.split(","):
    mesh = meshes[name]
    step_fn = jax.jit(functools.partial(tissue.train_step, model=model, config=config))
    params, losses = run_training(mesh, state0, batches, step_fn)
    out[f"{name}/loss"] = losses
    for k, v in jax.tree_util.tree_leaves_with_path(params):
      out[f"{name}/params{jax.tree_util.keystr(k)}"] = v

    # The removal pipeline with the initial params (3 steps at lr 1 collapse
    # to all background; the initial net labels every class but GM): template
    # bank, raw pass, the paper's placement, removal and segmentation again.
    # Batch 6 divides neither the 40 slices nor 8 devices: both kinds of
    # padding are used.
    b = 6
    templates = bank_lib.build_template_bank(model, state0.params, train_vols,
                                             batch_size=b, mesh=mesh)
    bundle = bundle_lib.Bundle(
        networks={"tissue": bundle_lib.Network(config=config, params=state0.params)},
        normalisation={"method": "fixed", "scale": 1.0}, bank=templates,
        voxel_size=np.array([0.375, 0.5, 0.375]), voxel_size_source="phantom")
    raw = pipeline.raw_pass(test_vol.image, bundle=bundle, batch_size=b, mesh=mesh)
    placed = placement.place_paper(test_vol.image, bundle=bundle, gradient=raw["gradient"],
                                   batch_size=b, mesh=mesh)
    manual = placement.Placement(mask=test_vol.brainmask)
    out[f"{name}/bank_gradients"] = templates.gradients
    out[f"{name}/bank_appearance"] = templates.appearance
    out[f"{name}/labels_none"] = raw["labels"]
    out[f"{name}/gradient"] = raw["gradient"]
    for way, where in (("manual", manual), ("gbp", placed)):
      out[f"{name}/labels_{way}"] = pipeline.remove_and_segment(
          test_vol.image, where, bundle=bundle, batch_size=b, mesh=mesh)
    out[f"{name}/displacement"] = placed.displacement
    out[f"{name}/placed"] = placed.mask
    for key in ("signal", "correlation"):
      out[f"{name}/{key}"] = getattr(placed.details, key)

  if ARGS.local_only:
    mesh = meshes["all"]
    bad, _ = run_training(mesh, state0, batches, local_only_step(mesh, model, config))
    for k, v in jax.tree_util.tree_leaves_with_path(bad):
      out[f"local_only/params{jax.tree_util.keystr(k)}"] = v
    try:
      parallel.check_divisible(5, mesh)
    except ValueError as e:
      out["refusal"] = np.array(str(e))
  np.savez(ARGS.out, **out)


if __name__ == "__main__":
  main()
