"""Tests of rodent_gbp.parallel: 1 device vs 8 fake CPU devices vs 2 processes.

The device count of a JAX process is fixed when JAX starts, and this pytest
process has one CPU device, so the many-device runs happen in subprocesses
(``tests/_parallel_worker.py``), started together once per module:

* 8 fake CPU devices (``--xla_force_host_platform_device_count=8``) in one
  process: training and the removal pipeline on a mesh of the first device and
  on a mesh of all 8, plus a step that forgets the cross-device gradient mean;
* 2 processes x 2 CPU devices joined by ``jax.distributed`` on 127.0.0.1 (gloo
  CPU collectives), each handing over only its rows of every batch.

The 1-device results are the reference for both. Three more runs train for
real: ``train.train_and_evaluate`` on 4 fake devices against 1 (the worker's
``--train_loop``), ``experiments/train.py`` (and its resume) on two processes
against one, and two processes whose clocks disagree about
``max_train_seconds``.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from conftest import FAST_COMPILE_FLAGS
from rodent_gbp import parallel

REPO = pathlib.Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "_parallel_worker.py"
RTOL = 1e-5
EXACT = ("labels_none", "labels_manual", "labels_gbp", "displacement", "placed")
FLOATS = ("bank_gradients", "bank_appearance", "gradient", "signal", "correlation", "loss")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _worker(args: list[str], log: pathlib.Path, env_extra: dict | None = None
            ) -> subprocess.Popen:
  env = dict(os.environ, **(env_extra or {}))
  env["XLA_FLAGS"] = FAST_COMPILE_FLAGS  # the worker adds its device count
  env["JAX_PLATFORMS"] = "cpu"
  env.setdefault("RODENT_GBP_JAX_CACHE", str(REPO / ".jax_cache"))
  return subprocess.Popen([sys.executable, str(WORKER), *args], cwd=REPO, env=env,
                          stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
  """Results of the 8-device run and of both processes of the 2-process run."""
  tmp = tmp_path_factory.mktemp("parallel")
  port = _free_port()
  jobs = {"eight": _worker(["--devices", "8", "--out", str(tmp / "eight.npz"),
                            "--local_only"], tmp / "eight.log")}
  for pid in (0, 1):
    jobs[f"proc{pid}"] = _worker(
        ["--devices", "2", "--out", str(tmp / f"proc{pid}.npz"), "--meshes", "all",
         "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
         "--process_id", str(pid)], tmp / f"proc{pid}.log")
  try:
    for name, job in jobs.items():
      rc = job.wait(timeout=600)
      if rc:
        pytest.fail(f"{name} worker exited {rc}:\n{(tmp / f'{name}.log').read_text()[-4000:]}")
  finally:
    for job in jobs.values():
      if job.poll() is None:
        job.kill()
  return {name: dict(np.load(tmp / f"{name}.npz")) for name in jobs}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| / max |b|: relative to the array's scale (elementwise ratios of
  near-zero entries, e.g. a gradient's tails, would measure nothing)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _params(result: dict, prefix: str) -> dict[str, np.ndarray]:
  return {k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix + "params")}


def _param_error(result: dict, ref: dict, prefix: str) -> float:
  got, want = _params(result, prefix), _params(ref, "one/")
  assert got.keys() == want.keys() and len(want) == 26  # 13 convs: kernel and bias
  return max(_rel(got[k], want[k]) for k in want)


def _assert_pipeline_equal(result: dict, prefix: str, ref: dict) -> None:
  for key in EXACT:
    np.testing.assert_array_equal(result[prefix + key], ref["one/" + key], err_msg=key)
  for key in FLOATS:
    assert _rel(result[prefix + key], ref["one/" + key]) <= RTOL, key


# --- one device, in this process ------------------------------------------------


def test_one_device_is_a_mesh_of_one():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data",) and mesh.size == jax.device_count() == 1
  batch = {"image": np.arange(12, dtype=np.float32).reshape(3, 2, 2),
           "label": np.arange(3, dtype=np.int32)}
  assert parallel.local_rows(mesh, 3) == slice(0, 3)
  placed = parallel.shard_batch(parallel.local_share(batch, mesh), mesh)
  assert placed["image"].sharding.spec == P("data")
  params = parallel.replicate({"w": np.ones((2, 3), np.float32)}, mesh)
  assert params["w"].sharding.spec == P()
  back = parallel.to_host(placed)
  np.testing.assert_array_equal(back["image"], batch["image"])
  assert parallel.describe(mesh).endswith("(1 process)")
  with pytest.raises(ValueError, match="empty"):
    parallel.pad_batch({"x": np.zeros((0,), np.float32)}, 2)


def test_pad_batch_repeats_last_row_and_marks_it():
  batch = {"x": np.arange(5, dtype=np.float32), "y": np.arange(10).reshape(5, 2)}
  padded, valid = parallel.pad_batch(batch, 4)
  np.testing.assert_array_equal(padded["x"], [0, 1, 2, 3, 4, 4, 4, 4])
  np.testing.assert_array_equal(padded["y"][5:], [[8, 9]] * 3)
  np.testing.assert_array_equal(valid, [True] * 5 + [False] * 3)
  same, valid = parallel.pad_batch(batch, 5)
  assert same["x"].shape == (5,) and valid.all()
  assert [parallel.padded_size(n, 8) for n in (1, 8, 9, 40)] == [8, 8, 16, 40]
  with pytest.raises(ValueError, match="leading size"):
    parallel.pad_batch({"a": np.zeros(2), "b": np.zeros(3)}, 2)


@pytest.mark.parametrize("n,count", [(10, 3), (3, 5), (40, 2), (0, 2), (7, 1)])
def test_process_shard_blocks_cover_items_in_order(n, count):
  items = list(range(n))
  blocks = [parallel.process_shard(items, p, count) for p in range(count)]
  assert sum(blocks, []) == items
  assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
  assert parallel.process_shard(items) == items  # this run: one process


def test_process_shard_rejects_bad_index():
  with pytest.raises(ValueError, match="not a valid process"):
    parallel.process_shard([1, 2], 2, 2)


def test_initialize_distributed_only_when_asked():
  assert parallel.initialize_distributed() is False
  assert parallel.initialize_distributed(None, 1, 0) is False
  with pytest.raises(ValueError, match="without --coordinator_address"):
    parallel.initialize_distributed(None, 2, 1)
  with pytest.raises(ValueError, match="together"):
    parallel.initialize_distributed("127.0.0.1:1234", 2, None)
  with pytest.raises(ValueError, match="out of range"):
    parallel.initialize_distributed("127.0.0.1:1234", 2, 2)


# --- 8 fake devices and 2 processes (subprocesses) ------------------------------


def test_workers_saw_their_devices(runs):
  assert int(runs["eight"]["device_count"]) == 8
  assert int(runs["eight"]["process_count"]) == 1
  for p in ("proc0", "proc1"):
    assert int(runs[p]["device_count"]) == 4 and int(runs[p]["process_count"]) == 2


def test_training_on_8_devices_equals_1_device(runs):
  r = runs["eight"]
  # lr 1 with momentum: the loss moves far in 3 steps, so an error grows.
  assert r["one/loss"][0] - r["one/loss"][-1] > 0.5
  assert _param_error(r, r, "all/") <= RTOL
  assert _rel(r["all/loss"], r["one/loss"]) <= RTOL


def test_missing_gradient_mean_is_caught(runs):
  """Each device stepping on its own shard's loss must fail the same check."""
  r = runs["eight"]
  assert _param_error(r, r, "local_only/") > 100 * RTOL


def test_training_refuses_a_batch_the_devices_do_not_divide(runs):
  msg = str(runs["eight"]["refusal"])
  assert "batch_size=5" in msg and "8 devices" in msg and "multiple of 8" in msg


def test_pipeline_on_8_devices_equals_1_device(runs):
  r = runs["eight"]
  # The reference labels are not degenerate: three classes present.
  assert (np.bincount(r["one/labels_none"].ravel(), minlength=4) > 0).sum() >= 3
  assert np.abs(r["one/displacement"]).max() > 0
  _assert_pipeline_equal(r, "all/", r)


def test_two_processes_equal_one_process(runs):
  ref = runs["eight"]
  for p in ("proc0", "proc1"):
    r = runs[p]
    assert _param_error(r, ref, "all/") <= RTOL
    _assert_pipeline_equal(r, "all/", ref)


def test_training_loop_on_4_devices_equals_1_device(tmp_path):
  """train_and_evaluate (the device-resident epoch) on 4 fake devices and on 1."""
  from rodent_gbp import phantom
  phantom.write_phantom(tmp_path / "data", animals=3, seed=0, size=48)
  jobs = {n: _worker(["--devices", str(n), "--out", str(tmp_path / f"d{n}.npz"),
                      "--train_loop", str(tmp_path / f"d{n}"),
                      "--data_dir", str(tmp_path / "data"), "--epochs", "2"],
                     tmp_path / f"d{n}.log") for n in (1, 4)}
  try:
    for n, job in jobs.items():
      assert job.wait(timeout=600) == 0, (tmp_path / f"d{n}.log").read_text()[-3000:]
  finally:
    for job in jobs.values():
      if job.poll() is None:
        job.kill()
  one, four = (dict(np.load(tmp_path / f"d{n}.npz")) for n in (1, 4))
  assert "4 x cpu (1 process)" in (tmp_path / "d4.log").read_text()
  np.testing.assert_array_equal(four["steps"], [20, 40])
  np.testing.assert_array_equal(one["steps"], [20, 40])
  assert one["losses"][0] - one["losses"][1] > 0.05  # it trains
  np.testing.assert_allclose(four["losses"], one["losses"], rtol=RTOL)


def test_time_cap_is_one_decision_for_all_processes(tmp_path):
  """max_train_seconds on two processes whose clocks disagree.

  Process 0's clock runs a million times fast (it is out of time after the
  first step), process 1's is real (it never is, with a cap of 600 s). If each
  process stopped on its own clock, process 1 would enter step 2's gradient
  all-reduce while process 0 waits in the checkpoint's barrier: a hang (the
  timeout below), or different step counts. Both must stop after step 1.
  """
  from rodent_gbp import phantom
  phantom.write_phantom(tmp_path / "data", animals=3, seed=0, size=48)  # 20 steps / epoch
  port = _free_port()
  jobs = []
  for pid in (0, 1):
    args = ["--devices", "1", "--out", str(tmp_path / f"p{pid}.npz"),
            "--train_loop", str(tmp_path / "run"), "--data_dir", str(tmp_path / "data"),
            "--epochs", "2", "--max_train_seconds", "600",
            "--coordinator", f"127.0.0.1:{port}", "--num_processes", "2",
            "--process_id", str(pid)]
    env_extra = {"RODENT_GBP_JAX_CACHE": ""}  # no cache: see the binary test below
    if pid == 0:
      env_extra["RODENT_GBP_TEST_CLOCK_RATE"] = "1e6"
    jobs.append(_worker(args, tmp_path / f"p{pid}.log", env_extra))
  try:
    for pid, job in enumerate(jobs):
      try:
        rc = job.wait(timeout=240)
      except subprocess.TimeoutExpired:
        pytest.fail(f"process {pid} hung:\n{(tmp_path / f'p{pid}.log').read_text()[-3000:]}")
      assert rc == 0, (tmp_path / f"p{pid}.log").read_text()[-3000:]
  finally:
    for job in jobs:
      if job.poll() is None:
        job.kill()
  runs = [dict(np.load(tmp_path / f"p{pid}.npz")) for pid in (0, 1)]
  for r in runs:
    np.testing.assert_array_equal(r["steps"], [1])
    np.testing.assert_array_equal(r["partial"], [True])
  np.testing.assert_array_equal(runs[0]["losses"], runs[1]["losses"])
  from rodent_gbp.training import checkpoint
  assert checkpoint.read_meta(tmp_path / "run" / "checkpoints", "latest")["step"] == 1


def test_train_binary_on_two_processes_matches_one(tmp_path, binary):
  """experiments/train.py with --coordinator_address etc., for real.

  Epoch 1 is trained by one process (in-process) into a workdir, and a copy
  of that workdir is resumed for epoch 2 by two processes: both restore the
  shared checkpoint, train, and take part in the Orbax save of epoch 2 (only
  process 0 writes the shared files). The checkpoint must be complete and its
  loss history equal to the same resume in one process. (Two processes
  launched once: each start compiles everything without a cache.)
  """
  env = dict(os.environ, PYTHONPATH=str(REPO))  # this tree, whatever is installed
  env["XLA_FLAGS"] = f"{FAST_COMPILE_FLAGS} --xla_force_host_platform_device_count=2"
  env["JAX_PLATFORMS"] = "cpu"
  # No persistent compile cache here: only process 0 writes it, so process 1
  # would compile what process 0 loads and reach the first collective more
  # than gloo's 30 s context deadline later.
  from rodent_gbp import phantom
  phantom_dir = tmp_path / "data"
  phantom.write_phantom(phantom_dir, animals=3, seed=0, size=48)  # 20 steps / epoch

  def two_processes(extra):
    port = _free_port()
    common = [sys.executable, str(REPO / "experiments" / "train.py"),
              f"--workdir={tmp_path / 'two'}", f"--data_dir={phantom_dir}", "--config=smoke",
              f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", *extra]
    procs = [subprocess.Popen(common + [f"--process_id={i}"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
      outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
    for p, out in zip(procs, outs):
      assert p.returncode == 0, out[-2000:]

  def one_process(extra):
    binary("train", [f"--workdir={tmp_path / 'one'}", f"--data_dir={phantom_dir}",
                     "--config=smoke", *extra])

  import shutil
  from rodent_gbp.training import checkpoint
  read = lambda d: checkpoint.read_meta(tmp_path / d / "checkpoints", "latest")
  one_process(["--epochs=1"])
  epoch1 = read("one")
  assert epoch1["step"] == 20 and len(epoch1["history"]) == 1
  shutil.copytree(tmp_path / "one", tmp_path / "two")
  two_processes(["--epochs=2", "--resume"])
  one_process(["--epochs=2", "--resume"])
  two, one = read("two"), read("one")
  assert two["step"] == one["step"] == 40
  assert len(two["history"]) == len(one["history"]) == 2
  assert two["history"][0] == epoch1["history"][0]  # restored, not retrained
  np.testing.assert_allclose([h["loss"] for h in two["history"]],
                             [h["loss"] for h in one["history"]], rtol=1e-5)
