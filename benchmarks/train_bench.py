"""Training throughput: host-fed vs device-resident epoch, and PyTorch as the anchor.

What is timed: training images/s of the ``default`` config's U-Net (features
16, depth 3, 535,556 params) at its batch size (5) on the default phantom's
training slices (6 animals x 40 slices of 96 x 96, 48 steps per epoch), soft
Dice + cross-entropy, SGD with Nesterov momentum, flips and intensity scale.
Three variants, each in its own subprocess, interleaved ``--repeats`` times:

* ``before``: ``tissue.train_and_evaluate`` of the commit ``--before`` (default:
  the parent of the commit that made the epoch device-resident), checked out
  with ``git worktree add``: each step gathers its batch on the host and
  ``device_put``s it;
* ``after``: the same of this tree: the training set is on the device once,
  each step gathers its batch there by index;
* ``torch``: ``benchmarks/torch_unet.TorchUNet`` (the same graph) trained on
  the same slices, batches (``trainer.epoch_rows``), loss, optimiser and
  augmentation with PyTorch on the CPU (all cores: ``torch.get_num_threads()``).

The JAX rates are the ``images_per_s`` the training record gives per epoch
(the training steps only: validation and checkpoints excluded); the first
epoch of every run is warm-up (compilation) and is dropped. PyTorch compiles
nothing: its warm-up is 2 steps, then the same epochs 1.. are timed. The rate of a
variant is the median over its measured epochs; ratios compare those medians
from one run of this script.

  python benchmarks/train_bench.py [--epochs 3] [--repeats 2] \
      [--out benchmarks/results/train_bench.json]

Needs torch (``pip install torch``) for the anchor and git for ``before``.
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
_DEFAULT_OUT = REPO / "benchmarks" / "results" / "train_bench.json"
# The commit that made the training epoch device-resident; "before" is its parent.
_DEVICE_RESIDENT_SUBJECT = "train: the training epoch is device-resident"
_TRAINING_FILES = tuple(f"rodent_gbp/{m}.py" for m in (
    "train", "losses", "checkpoint", "data", "model", "parallel", "configs"))
_TORCH_WARMUP_STEPS = 2  # PyTorch's "first epoch" (JAX's is compilation + 48 steps)


def _parse(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(_DEFAULT_OUT))
  p.add_argument("--before", default=None,
                 help="git revision of the host-fed loop (default: the parent of the "
                      "device-resident commit)")
  p.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
  p.add_argument("--repeats", type=int, default=2, help="interleaved runs per variant")
  p.add_argument("--data_dir", default=None, help="default: a fresh default phantom")
  p.add_argument("--child", choices=("jax", "torch"), default=None, help=argparse.SUPPRESS)
  p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def _config(epochs: int):
  from rodent_gbp import configs
  return configs.override(configs.get_config("default"), epochs=epochs,
                          max_train_seconds=0.0)


# ----------------------------------------------------------------------------
# Children: one run of one variant, a JSON line on stdout.
# ----------------------------------------------------------------------------


def _child_jax(args) -> dict:
  """train_and_evaluate of whichever rodent_gbp is first on sys.path."""
  import jax
  try:
    from rodent_gbp.training import tissue
  except ImportError:  # a commit from before rodent_gbp/training/
    from rodent_gbp import train as tissue
  config = _config(args.epochs)
  r = tissue.train_and_evaluate(config, args.workdir, data_dir=args.data_dir,
                               log=lambda msg: None)
  return {"images_per_s": [h["images_per_s"] for h in r.history],
          "loss": [h["loss"] for h in r.history], "module": tissue.__file__,
          "jax": jax.__version__}


def _child_torch(args) -> dict:
  """The same epochs in PyTorch: same slices, batches, loss, optimiser, augmentation."""
  import numpy as np
  import torch
  import torch.nn.functional as F
  sys.path.insert(0, str(REPO / "benchmarks"))
  from torch_unet import TorchUNet  # pylint: disable=g-import-not-at-top
  from rodent_gbp import data
  from rodent_gbp.training import trainer

  config = _config(args.epochs)
  volumes = {v.animal_id: v for v in data.load_dataset(pathlib.Path(args.data_dir))}
  split = data.split_animals(sorted(volumes), config.split_seed)
  stack = data.stack_slices([volumes[a] for a in split["train"]])
  images = torch.from_numpy(np.ascontiguousarray(stack["stripped"].transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(stack["label"].astype(np.int64))
  n, b, c = len(labels), config.batch_size, config.num_classes

  torch.manual_seed(config.seed)
  gen = torch.Generator().manual_seed(config.seed)
  net = TorchUNet(config.features, config.depth, c)
  opt = torch.optim.SGD(net.parameters(), lr=config.learning_rate,
                        momentum=config.momentum, nesterov=config.nesterov)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + config.decay * t))

  def loss_of(logits, y):  # soft Dice pooled over the batch (smooth 1) + mean CE
    probs = logits.softmax(1)
    onehot = F.one_hot(y, c).permute(0, 3, 1, 2).to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (total + 1)).mean() + F.cross_entropy(logits, y)

  rates, losses = [], []
  for epoch in range(config.epochs):
    rows = torch.from_numpy(
        trainer.epoch_rows(n, b, seed=config.seed, epoch=epoch).astype(np.int64))
    if epoch == 0:
      rows = rows[:_TORCH_WARMUP_STEPS]  # nothing to compile: a short warm-up
    t0, epoch_losses = time.perf_counter(), []
    for idx in rows:
      x, y = images[idx], labels[idx]
      flip = torch.rand(b, generator=gen) < 0.5  # the H (R-L) axis, as augment.flip_and_scale
      x = torch.where(flip[:, None, None, None], x.flip(2), x)
      y = torch.where(flip[:, None, None], y.flip(1), y)
      x = x * torch.empty(b, 1, 1, 1).uniform_(0.9, 1.1, generator=gen)
      opt.zero_grad(set_to_none=True)
      loss = loss_of(net(x), y)
      loss.backward()
      opt.step()
      sched.step()
      epoch_losses.append(loss.item())
    rates.append(len(rows) * b / (time.perf_counter() - t0))
    losses.append(float(np.mean(epoch_losses)))
  return {"images_per_s": rates, "loss": losses, "torch": torch.__version__,
          "threads": torch.get_num_threads()}


# ----------------------------------------------------------------------------
# Parent: data, worktree, interleaved runs, table and JSON.
# ----------------------------------------------------------------------------


def _git(*args: str) -> str:
  return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True,
                        text=True).stdout.strip()


def _before_revision() -> str:
  sha = _git("log", "--format=%H", "-n", "1", f"--grep={_DEVICE_RESIDENT_SUBJECT}",
             "--fixed-strings")
  if not sha:
    raise SystemExit("no device-resident commit found; pass --before REV")
  return _git("rev-parse", f"{sha}^")


def _run(variant: str, tree: pathlib.Path, args, workdir: pathlib.Path) -> dict:
  env = dict(os.environ, PYTHONPATH=str(tree), JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()),
         "--child", "torch" if variant == "torch" else "jax",
         "--epochs", str(args.epochs), "--data_dir", str(args.data_dir),
         "--workdir", str(workdir)]
  out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(f"{variant} run failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
  try:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
      if line.startswith("Model name:"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def main(argv=None) -> None:
  args = _parse(argv)
  if args.child:
    result = _child_jax(args) if args.child == "jax" else _child_torch(args)
    print(json.dumps(result))
    return

  from rodent_gbp import fileio, phantom
  before = args.before or _before_revision()
  before_sha = _git("rev-parse", before)
  with tempfile.TemporaryDirectory(prefix="train_bench_") as tmp:
    tmp = pathlib.Path(tmp)
    if args.data_dir is None:
      args.data_dir = tmp / "data"
      config = _config(args.epochs)
      phantom.write_phantom(args.data_dir, animals=config.animals,
                            seed=config.phantom_seed, size=config.image_size)
    _git("worktree", "add", "--detach", str(tmp / "before"), before_sha)
    try:
      trees = {"before": tmp / "before", "after": REPO, "torch": REPO}
      runs = {v: [] for v in trees}
      load = [os.getloadavg()[0]]
      for rep in range(args.repeats):
        for variant, tree in trees.items():
          r = _run(variant, tree, args, tmp / f"{variant}{rep}")
          runs[variant].append(r)
          print(f"{variant} run {rep}: "
                + " ".join(f"{x:.1f}" for x in r["images_per_s"]) + " images/s "
                + "(first epoch is warm-up); loss "
                + " ".join(f"{x:.4f}" for x in r["loss"]), flush=True)
          load.append(os.getloadavg()[0])
    finally:
      _git("worktree", "remove", "--force", str(tmp / "before"))

  rate = {v: statistics.median(x for r in rs for x in r["images_per_s"][1:])
          for v, rs in runs.items()}
  ratios = {"after / before": rate["after"] / rate["before"],
            "after / torch": rate["after"] / rate["torch"],
            "before / torch": rate["before"] / rate["torch"]}
  result = {
      "benchmark": "training images/s, default U-Net, batch 5, dice_ce, CPU",
      "command": " ".join(["python benchmarks/train_bench.py", *(argv or sys.argv[1:])]),
      "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(),
                  "python": platform.python_version(),
                  "load_average_1min": load},
      "before_commit": before_sha, "after_commit": _git("rev-parse", "HEAD"),
      # Uncommitted changes to what training runs (others' edits elsewhere aside).
      "after_training_files_dirty": bool(_git("status", "--porcelain", "--", *_TRAINING_FILES)),
      "epochs_per_run": args.epochs, "repeats": args.repeats,
      "steps_measured_per_variant": args.repeats * (args.epochs - 1) * 48,
      "images_per_s": rate, "ratios": ratios, "runs": runs,
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fileio.write_json(out, result)
  print(f"\n{'variant':8s} images/s (median, warm-up excluded)")
  for v, x in rate.items():
    print(f"{v:8s} {x:8.1f}")
  for k, x in ratios.items():
    print(f"{k:15s} {x:.2f}")
  print(f"wrote {out}")


if __name__ == "__main__":
  main()
