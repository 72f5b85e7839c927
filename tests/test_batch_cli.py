"""rodent-gbp-segment with many scans, twice at once, and killed: the smoke model end to end.

A folder of three small scans (10-slice crops of the phantom's test animal,
one with a truth mask beside it) and one truncated file:

* one call segments the good ones, lists the bad one as failed (exit code 3),
  prints progress per scan, compiles nothing after the first scan, writes a
  summary and an index page linking every QC figure; its masks equal single
  calls' masks; ``--skip_existing``, ``--shard`` and ``--merge_summaries``;
* two runs into one folder (a real second process holding the lock): the
  second is refused with one line naming the outputs, nothing is lost;
* a run killed while writing (``os._exit`` in that second process,
  ``tests/_segment_driver.py``) and runs interrupted (an exception in this
  process) after taking the lock, while writing and while renaming into
  place, then run again: nothing hidden or temporary is left, and the folder
  holds one whole set whose report lists exactly its files;
* ``--overwrite --noqc`` removes the earlier QC figure; ``--version``;
  ``--help`` gives the exit codes.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import jax
import nibabel as nib
import numpy as np
import pytest

import rodent_gbp
from rodent_gbp import batch
from rodent_gbp import summary
from rodent_gbp import cli
from rodent_gbp import fileio
from rodent_gbp import inference

REPO = pathlib.Path(__file__).resolve().parent.parent
CROPS = {"a": (5, 15), "b": (15, 25), "c": (25, 35)}


@pytest.fixture(scope="module")
def scans(tmp_path_factory, scan) -> pathlib.Path:
  folder = tmp_path_factory.mktemp("scans")
  img = nib.load(str(scan))
  x = np.asarray(img.dataobj)
  mask = np.asarray(nib.load(str(scan.parent / "brainmask.nii.gz")).dataobj)
  for name, (lo, hi) in CROPS.items():
    nib.save(nib.Nifti1Image(x[:, lo:hi], img.affine), folder / f"{name}.nii.gz")
  nib.save(nib.Nifti1Image(mask[:, 5:15].astype(np.uint8), img.affine),
           folder / "a_mask.nii.gz")
  raw = (folder / "b.nii.gz").read_bytes()
  (folder / "bad.nii.gz").write_bytes(raw[: len(raw) // 2])
  return folder


def _segment(argv, capsys) -> tuple[int, str, str]:
  """``rodent-gbp-segment argv`` in this process: (exit code, stdout, stderr)."""
  code = 0
  try:
    cli.segment_main(["rodent-gbp-segment", *map(str, argv)])
  except SystemExit as e:
    code = e.code or 0
  out = capsys.readouterr()
  return code, out.out, out.err


def _mask(path) -> np.ndarray:
  return np.asarray(nib.load(str(path)).dataobj)


def _hidden(folder: pathlib.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _whole_set(folder: pathlib.Path, name: str) -> list[str]:
  """The set's files; asserts its report lists exactly the files of ``name`` there."""
  report = fileio.read_json(folder / f"{name}_report.json")
  present = sorted(p.name for p in folder.iterdir() if p.name.startswith(f"{name}_"))
  assert sorted(report["outputs"].values()) == present
  return present


@pytest.fixture(scope="module")
def study(tmp_path_factory, scans, model_dir, smoke_bundle):
  """One batch call over the folder (the library's function, to watch compiles; the
  session's loaded bundle, whose programs the other tests here reuse)."""
  out = tmp_path_factory.mktemp("study")
  (out / ".summary.csv.4242.tmp").write_text("half")  # a killed call's summary rewrite
  compiles, logs = [], []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, *a, **k: compiles.append(event) if "compile" in event else None)
  def log(msg):
    logs.append((msg, len(compiles)))
  rows = batch.segment_many([scans], model_dir, out, log=log, bundle=smoke_bundle)
  return out, rows, logs


def test_a_folder_with_a_bad_scan(study, scans):
  out, rows, logs = study
  assert [(r["name"], r["status"]) for r in rows] == [
      ("a", "ok"), ("b", "ok"), ("bad", "failed"), ("c", "ok")]
  assert "truncated or corrupt" in rows[2]["error"] and str(scans / "bad.nii.gz") in rows[2][
      "error"]
  assert batch.exit_code(rows) == 3
  progress = [(m, n) for m, n in logs if m.startswith("[")]
  assert [m for m, _ in progress] == [f"[{i}/4] {scans / f}.nii.gz ..."
                                      for i, f in enumerate(["a", "b", "bad", "c"], 1)]
  # One compile per model grid: nothing compiled once the first scan is done.
  assert progress[1][1] == progress[-1][1] == logs[-1][1]
  written = summary.read_summary(out / "summary.csv")
  assert [r["status"] for r in written] == ["ok", "ok", "failed", "ok"]
  assert float(written[0]["dice"]) > 0.5 and written[0]["truth"].endswith("a_mask.nii.gz")
  assert written[1]["dice"] == "" and float(written[1]["brain_mm3"]) > 0
  page = (out / "index.html").read_text()
  for name in ("a", "b", "c"):
    assert (out / f"{name}_qc.png").is_file() and f"<img src='{name}_qc.png'" in page
    _whole_set(out, name)
  assert "truncated or corrupt" in page
  assert not (out / "bad_report.json").exists() and _hidden(out) == []


def test_batch_masks_equal_single_calls(study, scans, model_dir, smoke_bundle, tmp_path,
                                        capsys):
  """a: the console script with one --input (its own process's model load); b, c: the
  library's single call."""
  out, _, _ = study
  code, _, err = _segment([f"--input={scans / 'a'}.nii.gz", f"--model_dir={model_dir}",
                           f"--out_dir={tmp_path}", "--noqc"], capsys)
  assert code == 0, err
  assert not (tmp_path / "summary.csv").exists()  # a single scan writes no summary
  for name in ("b", "c"):
    inference.segment_scan(scans / f"{name}.nii.gz", model_dir, tmp_path, qc=False,
                           bundle=smoke_bundle, log=lambda m: None)
  for name in CROPS:
    np.testing.assert_array_equal(_mask(tmp_path / f"{name}_brainmask.nii.gz"),
                                  _mask(out / f"{name}_brainmask.nii.gz"))


def test_skip_existing_shards_and_merge(study, scans, model_dir, capsys):
  out, rows, _ = study
  argv = [f"--input={scans}", f"--model_dir={model_dir}", f"--out_dir={out}",
          "--skip_existing"]
  for k in (0, 1):
    code, stdout, _ = _segment([*argv, f"--shard={k}/2"], capsys)
    assert code == (3 if k == 0 else 0)  # bad.nii.gz (index 2, shard 0/2) fails again
    assert f"[1/2] {scans / ('a' if k == 0 else 'b')}.nii.gz" in stdout
  shard0 = summary.read_summary(out / "summary_shard0of2.csv")
  assert [(r["name"], r["status"], r["shard"]) for r in shard0] == [
      ("a", "skipped", "0/2"), ("bad", "failed", "0/2")]
  code, stdout, _ = _segment([f"--merge_summaries={out}/summary_shard*of2.csv",
                              f"--out_dir={out / 'merged'}"], capsys)
  assert code == 0 and "merged 2 summaries, 4 scans" in stdout
  merged = summary.read_summary(out / "merged" / "summary.csv")
  assert [r["name"] for r in merged] == [r["name"] for r in rows]
  # Skipped rows carry the existing report's numbers.
  assert [r["brain_mm3"] for r in merged] == [str(r["brain_mm3"]) for r in rows]
  assert "<img src='../a_qc.png'" in (out / "merged" / "index.html").read_text()
  # With a scan flag too, it would be ignored: refused, naming it, nothing written.
  code, _, stderr = _segment([f"--merge_summaries={out}/summary_shard*of2.csv",
                              f"--input={scans}", f"--out_dir={out / 'again'}"], capsys)
  assert code == 2 and "--merge_summaries" in stderr and "not --input" in stderr, stderr
  assert not (out / "again").exists()


def test_two_names_alike_are_refused_before_any_work(scans, tmp_path, capsys):
  other = tmp_path / "other"
  other.mkdir()
  shutil.copy(scans / "a.nii.gz", other / "a.nii.gz")
  code, _, err = _segment([f"--input={scans}", f"--input={other}",
                           f"--out_dir={tmp_path / 'o'}"], capsys)
  assert code == 2 and "would both write a_*" in err and not (tmp_path / "o").exists()


def _driver(go: str, stage: str, argv) -> subprocess.Popen:
  cache = os.environ.get("RODENT_GBP_JAX_CACHE", str(REPO / ".jax_cache"))
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             JAX_COMPILATION_CACHE_DIR=cache)
  return subprocess.Popen([sys.executable, str(REPO / "tests" / "_segment_driver.py"), go,
                           stage, "--", *map(str, argv)], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_locked(lock: pathlib.Path, proc: subprocess.Popen) -> None:
  """Until another process holds ``lock``'s flock."""
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()[0][-2000:]
    if lock.exists():
      with open(lock) as f:
        try:
          fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
          fcntl.flock(f, fcntl.LOCK_UN)
        except BlockingIOError:
          return
    time.sleep(0.05)
  raise AssertionError("the driver never took the lock")


def test_two_processes_one_folder_then_killed(scans, model_dir, tmp_path, capsys):
  """A second process holds the lock: this run is refused, nothing lost; that process
  is then killed while writing (os._exit): its leftovers go with the next run,
  and the earlier set stays whole."""
  out = tmp_path / "out"
  args = [f"--input={scans / 'a.nii.gz'}", f"--model_dir={model_dir}", f"--out_dir={out}"]
  assert _segment(args, capsys)[0] == 0  # a whole set with its QC figure
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  go = tmp_path / "go"
  proc = _driver(str(go), "writing", [*args, "--overwrite", "--noqc"])
  try:
    _wait_locked(out / ".a.lock", proc)
    code, _, err = _segment([*args, "--overwrite"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert f"another run (pid {proc.pid}) is writing a_brainmask.nii.gz" in lines[0]
    assert "a_report.json" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name[0] != "."} == before
    go.touch()
    assert proc.wait(timeout=300) == 9, proc.communicate()[0][-2000:]
  finally:
    proc.kill()
  # Killed while writing its temporary folder: that folder and its lock file stay.
  assert sorted(h.split(".")[-1] for h in _hidden(out)) == ["lock", "tmp"]
  assert {p.name: p.read_bytes() for p in out.iterdir() if p.name[0] != "."} == before
  code, stdout, err = _segment(args, capsys)
  assert "removed .a." in stdout and code == 2 and "already exists" in err
  assert _hidden(out) == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before
  assert "a_qc.png" in _whole_set(out, "a")


@pytest.mark.parametrize("stage", ["reading", "writing", "publishing"])
def test_interrupted_at_a_stage_then_run_again(stage, scans, model_dir, smoke_bundle,
                                               tmp_path, monkeypatch):
  """An exception (a Ctrl-C) after the lock, while writing the temporary folder, and
  after the first rename into place; then the same call again."""
  out = tmp_path / "out"
  run = lambda: inference.segment_scan(scans / "b.nii.gz", model_dir, out, qc=False,
                                       bundle=smoke_bundle, log=lambda m: None)
  replace, moved = os.replace, []

  def interrupted(*a, **k):
    raise KeyboardInterrupt(stage)

  def replace_once(src, dst, *a, **k):
    if pathlib.Path(dst).parent == out:
      if moved:
        raise KeyboardInterrupt(stage)
      moved.append(dst)
    return replace(src, dst, *a, **k)

  if stage == "reading":
    monkeypatch.setattr(inference, "read_input", interrupted)
  elif stage == "writing":
    monkeypatch.setattr(inference.fileio, "write_csv", interrupted)
  else:
    monkeypatch.setattr(inference.outputs.os, "replace", replace_once)
  with pytest.raises(KeyboardInterrupt):
    run()
  monkeypatch.undo()
  if stage != "publishing":  # nothing at all is left, not even the folder
    assert not out.exists()
    run()
  else:  # one file moved; the rest, report last, in the temporary folder
    assert [p.name for p in out.iterdir() if p.name[0] != "."] == ["b_brainmask.nii.gz"]
    assert [h.endswith(".tmp") for h in _hidden(out)] == [True]
    # The next call finishes that set, then will not replace it without overwrite.
    with pytest.raises(inference.InferenceError, match="already exists"):
      run()
  assert _hidden(out) == [] and len(_whole_set(out, "b")) == 6


def test_overwrite_without_qc_removes_the_old_figure(scans, model_dir, smoke_bundle, tmp_path):
  kw = dict(bundle=smoke_bundle, log=lambda m: None)
  inference.segment_scan(scans / "c.nii.gz", model_dir, tmp_path, **kw)
  assert (tmp_path / "c_qc.png").is_file()
  inference.segment_scan(scans / "c.nii.gz", model_dir, tmp_path, overwrite=True, qc=False,
                         **kw)
  assert "c_qc.png" not in _whole_set(tmp_path, "c")


def test_version_and_exit_codes_in_help(capsys):
  code, stdout, _ = _segment(["--version"], capsys)
  assert code == 0 and stdout.strip() == f"rodent-gbp-segment {rodent_gbp.__version__}"
  code, stdout, _ = _segment(["--help"], capsys)
  assert code == 0 and "exit codes:" in stdout
  for exit_code, text in batch.EXIT_CODES.items():
    assert f"  {exit_code}: {text}" in stdout
  assert "--shard" in stdout and "--merge_summaries" in stdout and "compile_cache" in stdout
  assert "0 background = not brain, 1 white matter, 2 gray matter, 3 CSF" in stdout
