"""Training killed with SIGKILL resumes to exactly the uninterrupted result.

``experiments/train.py --config smoke`` runs in a subprocess on a tiny phantom
(3 animals of 48 x 40 x 48: 2 train, 1 test, 20 steps per epoch) for 3 epochs.
The run is killed twice at seeded points (a random delay after the latest
checkpoint of epoch 1, then of epoch 2, has appeared: the kill lands in the
next epoch's steps or in the middle of a checkpoint write), resumed with
``--resume`` each time, and its final params (latest and best) must equal an
uninterrupted run's with the same seed, bitwise on CPU (tolerance 1e-6).
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from rodent_gbp.training import checkpoint
from rodent_gbp import phantom

REPO = pathlib.Path(__file__).resolve().parent.parent
EPOCHS = 3


def _env() -> dict:
  # The subprocesses share the suite's persistent compile cache.
  cache = os.environ.get("RODENT_GBP_JAX_CACHE", str(REPO / ".jax_cache"))
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
              JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")


def _start(workdir: pathlib.Path, data_dir: pathlib.Path, resume: bool) -> subprocess.Popen:
  args = [sys.executable, "experiments/train.py", f"--workdir={workdir}",
          f"--data_dir={data_dir}", "--config=smoke", f"--epochs={EPOCHS}"]
  if resume:
    args.append("--resume")
  return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _latest_epoch(workdir: pathlib.Path) -> int:
  """The newest complete checkpoint's epoch (Orbax renames a finished one into
  ``epochs/<epoch>``; one being written has a temporary name), or -1."""
  try:
    done = [int(p.name) for p in (workdir / "checkpoints" / checkpoint.EPOCHS_DIR).iterdir()
            if p.name.isdigit()]
  except OSError:
    return -1  # not written yet
  return max(done, default=-1)


def _kill_after(proc: subprocess.Popen, workdir: pathlib.Path, epoch: int,
                delay: float) -> int:
  """SIGKILLs ``proc`` ``delay`` s after the checkpoint of ``epoch`` appears; returns its code."""
  deadline = time.monotonic() + 120
  while _latest_epoch(workdir) < epoch:
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.005)
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  return proc.returncode


def _finish(proc: subprocess.Popen) -> str:
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out[-3000:]
  return out


def _assert_same(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-6)


def test_sigkill_and_resume_matches_uninterrupted(tmp_path):
  data_dir = tmp_path / "data"
  phantom.write_phantom(data_dir, animals=3, seed=0, size=48)
  ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"

  _finish(_start(ref_dir, data_dir, resume=False))

  rng = np.random.default_rng(7)  # seeded kill points
  delays = rng.uniform(0.0, 0.3, size=2)
  codes = [_kill_after(_start(run_dir, data_dir, resume=False), run_dir, 0, delays[0])]
  codes.append(_kill_after(_start(run_dir, data_dir, resume=True), run_dir, 1, delays[1]))
  assert codes == [-signal.SIGKILL] * 2, codes
  out = _finish(_start(run_dir, data_dir, resume=True))
  assert "resumed from" in out

  for which in ("latest", "best"):
    ref = checkpoint.load_model(ref_dir / "checkpoints", which=which)
    got = checkpoint.load_model(run_dir / "checkpoints", which=which)
    _assert_same(got.params, ref.params)
    assert got.extras["meta"]["epoch"] == ref.extras["meta"]["epoch"]
    assert got.extras["meta"]["step"] == ref.extras["meta"]["step"] == EPOCHS * 20
  ref_hist = checkpoint.load_model(ref_dir / "checkpoints", which="latest").extras["meta"]
  got_hist = checkpoint.load_model(run_dir / "checkpoints", which="latest").extras["meta"]
  assert [h["loss"] for h in got_hist["history"]] == [h["loss"] for h in ref_hist["history"]]
