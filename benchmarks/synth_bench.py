"""Training images/s with synthesis in the step against stored slices, one run.

Both variants are the tissue network's training step
(``rodent_gbp.training.tissue_synth.train_step``: the same U-Net, partial-label
loss, Adam, batch) on the same device-resident slices; they differ only in the
images:

* ``synth``: every step synthesises its batch from label maps
  (``synthesis.synthesize`` with the default ``SynthOptions``, ``p_real`` 0.3);
* ``stored``: every step takes the stored images as they are (the
  synthesis replaced by the identity: the real-only control without any
  augmentation), which is what training on stored slices costs.

Each variant is compiled and warmed (``--warmup`` steps), then ``--steps`` steps
are timed; the variants alternate ``--repeats`` times in one process and the
median rate of each is kept.

  python benchmarks/synth_bench.py [--features 16] [--batch 16] [--size 80] \
      [--out benchmarks/results/synth.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rodent_gbp import model as model_lib
from rodent_gbp import synthesis
from rodent_gbp.datasets import label_maps
from rodent_gbp.training import tissue_synth
from rodent_gbp.training import trainer

REPO = pathlib.Path(__file__).resolve().parent.parent


def _slices(n: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random blob label maps (a brain of two structures in a head of five classes)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size] - size / 2
  labels = np.zeros((n, size, size), np.int16)
  target = np.zeros((n, size, size), np.uint8)
  for i in range(n):
    r = size * rng.uniform(0.25, 0.4)
    head = (yy / r) ** 2 + (xx / (1.2 * r)) ** 2 < 1
    brain = (yy / (0.6 * r)) ** 2 + (xx / (0.8 * r)) ** 2 < 1
    labels[i] = np.where(head, 1 + (np.abs(xx) > 0.5 * r) + (yy > 0), 0)
    labels[i] = np.where(brain, label_maps.T2_OFFSET + 1 + (xx > 0), labels[i])
    target[i] = np.where(brain, 1 + (xx > 0), 0)
  image = labels.astype(np.float32) / labels.max()
  return {"image": image, "labels": labels, "target": target,
          "has_image": np.ones(n, bool), "zoom": np.ones(n, np.float32)}


def _stored_step(state, batch, *, model, config):
  def loss_of(params):
    logits = model.apply({"params": params}, batch["image"][..., None])
    return tissue_synth.partial_label_loss(logits, batch["target"].astype(jnp.int32))
  (loss, _), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  from rodent_gbp.training import optim
  import optax
  updates, opt = optim.make_optimizer(config).update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt), {"loss": loss}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--features", type=int, default=16)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--size", type=int, default=80)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "synth.json"))
  a = p.parse_args(argv)
  config = tissue_synth.synth_config(features=a.features, batch_size=a.batch)
  model = model_lib.build_unet(config)
  data = {k: jnp.asarray(v) for k, v in _slices(4 * a.batch, a.size).items()}
  groups = jnp.asarray(label_maps.group_of_label())
  steps = {
      "synth": functools.partial(tissue_synth.train_step, model=model, config=config,
                                 options=synthesis.SynthOptions(), groups=groups),
      "stored": functools.partial(_stored_step, model=model, config=config)}
  jitted = {k: jax.jit(lambda s, i, f=f: f(s, {k2: v[i] for k2, v in data.items()}),
                       donate_argnums=0) for k, f in steps.items()}
  rng = np.random.default_rng(0)
  batches = [jnp.asarray(rng.choice(len(data["image"]), a.batch, replace=False))
             for _ in range(a.steps)]
  rates: dict[str, list[float]] = {k: [] for k in steps}
  states = {k: trainer.create_train_state(config, jax.random.PRNGKey(0), (a.size, a.size))
            for k in steps}
  for k in steps:
    for i in range(a.warmup):
      states[k], m = jitted[k](states[k], batches[i])
    jax.block_until_ready(m["loss"])
  for _ in range(a.repeats):
    for k in steps:
      t = time.perf_counter()
      for b in batches:
        states[k], m = jitted[k](states[k], b)
      jax.block_until_ready(m["loss"])
      rates[k].append(a.steps * a.batch / (time.perf_counter() - t))
  med = {k: statistics.median(v) for k, v in rates.items()}
  result = {"what": "tissue network training images/s: synthesis in the step vs stored slices",
            "features": a.features, "batch": a.batch, "size": a.size, "steps": a.steps,
            "repeats": a.repeats, "images_per_s": rates, "median_images_per_s": med,
            "synthesis_cost": 1.0 - med["synth"] / med["stored"],
            "device": str(jax.devices()[0]), "machine": platform.processor() or platform.machine(),
            "cpu_count": __import__("os").cpu_count()}
  pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(a.out).write_text(json.dumps(result, indent=1))
  print(json.dumps({k: result[k] for k in ("median_images_per_s", "synthesis_cost")}))


if __name__ == "__main__":
  main()
