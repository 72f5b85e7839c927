"""rodent_gbp.batch and rodent_gbp.outputs without a model: known answers.

Inputs from folders (masks and the tool's outputs left out), shards as job
arrays number them, output names and their clashes, truth masks beside a
scan, summary rows from a report, merging shards' summaries, the index page,
the compilation cache folder, and the per-scan lock, publishing and recovery
of ``outputs`` (two claims of one name; a publish killed half way finished by
the next claim; a temporary folder without its report removed).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from rodent_gbp import batch
from rodent_gbp import summary
from rodent_gbp import outputs
from rodent_gbp.errors import UsageError

REPO = pathlib.Path(__file__).resolve().parent.parent


def _touch(folder: pathlib.Path, *names: str) -> None:
  folder.mkdir(parents=True, exist_ok=True)
  for n in names:
    (folder / n).write_bytes(b"x")


# --- inputs, shards, names ---------------------------------------------------------------


def test_folder_input_keeps_scans_only(tmp_path):
  _touch(tmp_path / "in", "b.nii.gz", "a.nii", "a_mask.nii.gz", "Brainmask_ref.nii", "c.txt",
         "b_brainmask.nii.gz", "b_labels.nii.gz", "b_saliency.nii.gz", "b_brain.nii.gz",
         "b_qc.png", "b_report.json", "brainstem.nii.gz")
  (tmp_path / "in" / "sub.nii.gz").mkdir()
  scans, many = batch.expand_inputs([tmp_path / "in"])
  assert [p.name for p in scans] == ["a.nii", "b.nii.gz", "brainstem.nii.gz"]
  assert many
  assert batch.left_out("x_mask.nii.gz") == "a mask"
  assert batch.left_out("x_labels.nii.gz") == "an output of rodent-gbp-segment"
  assert batch.left_out("x.png") == "not .nii / .nii.gz"
  # Files as given (a missing one fails as its scan); one file is a single call.
  one, many = batch.expand_inputs([str(tmp_path / "nope.nii.gz")])
  assert [p.name for p in one] == ["nope.nii.gz"] and not many
  two, many = batch.expand_inputs(["x.nii", tmp_path / "in"])
  assert [p.name for p in two] == ["x.nii", "a.nii", "b.nii.gz", "brainstem.nii.gz"] and many
  _touch(tmp_path / "empty", "only_mask.nii.gz")
  with pytest.raises(UsageError, match="holds no scan"):
    batch.expand_inputs([tmp_path / "empty"])
  with pytest.raises(UsageError, match="--input is required"):
    batch.expand_inputs([])


def test_shards_take_every_nth_from_the_kth():
  assert batch.parse_shard("1/3") == (1, 3)
  assert batch.parse_shard(" 0 / 1 ") == (0, 1)
  assert batch.parse_shard(None) is None
  for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
    with pytest.raises(UsageError, match="--shard"):
      batch.parse_shard(bad)
  assert batch.shard_indices(8, (0, 3)) == [0, 3, 6]
  assert batch.shard_indices(8, (1, 3)) == [1, 4, 7]
  assert batch.shard_indices(8, (2, 3)) == [2, 5]
  assert batch.shard_indices(2, (2, 3)) == []
  assert batch.shard_indices(3, None) == [0, 1, 2]
  # Every scan in exactly one shard.
  together = sorted(i for k in range(4) for i in batch.shard_indices(11, (k, 4)))
  assert together == list(range(11))
  assert batch.summary_name("summary", (2, 4)) == "summary_shard2of4.csv"
  assert batch.summary_name("index", None) == "index.html"


def test_names_and_clashes(tmp_path):
  scans = [pathlib.Path("a/x.nii.gz"), pathlib.Path("b/y.nii"), pathlib.Path("c/x.nii")]
  names = batch.output_names(scans)
  assert names == ["x", "y", "x"]
  with pytest.raises(UsageError, match="a/x.nii.gz and c/x.nii would both write x_"):
    batch.check_names(scans, names)
  batch.check_names(scans[:2], names[:2])
  assert batch.output_names(scans[:1], "mine") == ["mine"]
  with pytest.raises(UsageError, match="--name"):
    batch.output_names(scans, "mine")


def test_truth_beside_a_scan(tmp_path):
  _touch(tmp_path, "a.nii.gz", "a_mask.nii.gz", "b.nii", "b_mask.nii", "c.nii.gz")
  assert batch.truth_for(tmp_path / "a.nii.gz") == tmp_path / "a_mask.nii.gz"
  assert batch.truth_for(tmp_path / "b.nii") == tmp_path / "b_mask.nii"
  assert batch.truth_for(tmp_path / "c.nii.gz") is None


# --- summary rows, merging -----------------------------------------------------------------

REPORT = {"slice_axis": {"axis": 1, "plane": "coronal"}, "voxel_scale": {"factor": 0.1},
          "placement": "supervised", "brain_volume": {"mm3": 456.789, "fits": ["mouse"]},
          "warnings": ["w one", "w two"], "truth": {"path": "t.nii", "dice": 0.912345,
                                                     "hd95_mm": 0.33333},
          "wall_seconds": 2.3456, "outputs": {"qc": "s_qc.png", "report": "s_report.json"}}


def test_summary_row_from_a_report(tmp_path):
  row = summary.summary_row(3, "in/s.nii.gz", "s", "ok", report=REPORT, out_dir=tmp_path,
                          shard=(1, 2))
  assert tuple(row) == summary.COLUMNS
  assert row | {"out_dir": ""} == {
      "index": 3, "scan": "in/s.nii.gz", "name": "s", "status": "ok", "error": "",
      "slice_axis": 1, "plane": "coronal", "voxel_scale": 0.1, "placement": "supervised",
      "brain_mm3": 456.8, "species_fit": "mouse", "warnings": "w one | w two",
      "truth": "t.nii", "dice": 0.9123, "hd95_mm": 0.333, "wall_s": 2.35, "qc": "s_qc.png",
      "out_dir": "", "shard": "1/2"}
  failed = summary.summary_row(0, "x.nii", "x", "failed", error="x.nii: file is empty",
                             out_dir=tmp_path)
  assert failed["error"] == "x.nii: file is empty" and failed["brain_mm3"] == ""
  assert batch.exit_code([row, failed]) == 3
  assert batch.exit_code([row, row | {"status": "skipped"}]) == 0
  with pytest.raises(ValueError):
    summary.summary_row(0, "x", "x", "done", out_dir=tmp_path)


def _shard_rows(out, n, total):
  return {f"s{k}": [summary.summary_row(i, f"in/{i}.nii", str(i), "ok", out_dir=out,
                                      shard=(k, n))
                    for i in batch.shard_indices(total, (k, n))] for k in range(n)}


def test_merge_puts_shards_back_in_order(tmp_path):
  tables = _shard_rows(tmp_path, 3, 7)
  merged = summary.merge_summaries(tables)
  assert [r["index"] for r in merged] == list(range(7))
  assert [r["shard"] for r in merged] == ["0/3", "1/3", "2/3", "0/3", "1/3", "2/3", "0/3"]
  # Written and read back as CSV, through the command's function.
  for k, rows in tables.items():
    summary.write_summary(tmp_path / f"summary_{k}.csv", rows)
  rows = batch.merge([str(tmp_path / "summary_s*.csv")], tmp_path / "m", log=lambda m: None)
  assert [int(r["index"]) for r in rows] == list(range(7))
  back = summary.read_summary(tmp_path / "m" / "summary.csv")
  assert [r["name"] for r in back] == [str(i) for i in range(7)]
  assert (tmp_path / "m" / "index.html").is_file()
  # A shard missing, a shard twice, two splits, a file that is no summary.
  with pytest.raises(UsageError, match="no summary of shard 1/3"):
    summary.merge_summaries({k: v for k, v in tables.items() if k != "s1"})
  # A shard without scans (8 scans, 10 shards) is known by its file's name.
  empty = {k: v for k, v in _shard_rows(tmp_path, 10, 8).items() if v}
  assert len(summary.merge_summaries(empty, ["8/10", "9/10"])) == 8
  with pytest.raises(UsageError, match="no summary of shard 9/10"):
    summary.merge_summaries(empty, ["8/10"])
  assert summary.shard_of_file("o/summary_shard8of10.csv") == "8/10"
  assert summary.shard_of_file("o/summary.csv") is None
  with pytest.raises(UsageError, match="also in s0"):
    summary.merge_summaries({**tables, "again": tables["s0"]})
  other = _shard_rows(tmp_path, 2, 7)
  with pytest.raises(UsageError, match="different splits"):
    summary.merge_summaries({"a": tables["s0"], "b": other["s1"]})
  (tmp_path / "x.csv").write_text("a,b\n1,2\n")
  with pytest.raises(UsageError, match="not a summary"):
    summary.read_summary(tmp_path / "x.csv")
  with pytest.raises(UsageError, match="matches no file"):
    summary.expand_summaries([str(tmp_path / "none*.csv")])


def test_index_page_links_every_qc_figure(tmp_path):
  rows = [summary.summary_row(0, "a.nii", "a<b", "ok", report=REPORT, out_dir=tmp_path / "o"),
          summary.summary_row(1, "b.nii", "b", "failed", error="b.nii: file is empty",
                            out_dir=tmp_path / "o")]
  page = summary.index_html(rows, tmp_path)
  assert "<img src='o/s_qc.png'" in page and page.count("<img ") == 1
  assert "a&lt;b" in page and "a<b" not in page
  assert "b.nii: file is empty" in page and "warning: w one" in page
  assert "2 scans: 1 ok, 1 failed, 0 skipped" in page


# --- the compilation cache ------------------------------------------------------------------


def test_compile_cache_folder(tmp_path):
  assert batch.compile_cache_dir({"XDG_CACHE_HOME": "/x"}) == pathlib.Path("/x/rodent_gbp/jax")
  home = pathlib.Path(os.path.expanduser("~"))
  assert batch.compile_cache_dir({}) == home / ".cache" / "rodent_gbp" / "jax"


_CACHE_PROBE = textwrap.dedent("""
  import json, sys
  import jax
  import rodent_gbp.batch, rodent_gbp.inference
  on_import = jax.config.jax_compilation_cache_dir
  used = rodent_gbp.batch.enable_compile_cache(sys.argv[1] == "on")
  print(json.dumps({"on_import": on_import, "used": used,
                    "enabled": jax.config.jax_enable_compilation_cache,
                    "min_s": jax.config.jax_persistent_cache_min_compile_time_secs}))
""")


def test_compile_cache_set_by_the_command_only(tmp_path):
  """Importing the library sets no cache; the command's default is the user's cache
  folder, a folder the user set is kept, --nocompile_cache turns it off."""
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  env |= {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "PYTHONPATH": str(REPO),
          "JAX_PLATFORMS": "cpu"}

  def probe(mode, **extra):
    run = subprocess.run([sys.executable, "-c", _CACHE_PROBE, mode], env=env | extra,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])

  got = probe("on")
  assert got["on_import"] is None
  assert got["used"] == str(tmp_path / "xdg" / "rodent_gbp" / "jax") and got["enabled"]
  assert got["min_s"] == batch.CACHE_MIN_COMPILE_SECONDS
  assert (tmp_path / "xdg" / "rodent_gbp" / "jax").is_dir()
  mine = str(tmp_path / "mine")
  got = probe("on", JAX_COMPILATION_CACHE_DIR=mine)
  assert got["on_import"] == mine and got["used"] == mine
  got = probe("off")
  assert got["used"] is None and not got["enabled"]


# --- outputs: lock, publish, recover -------------------------------------------------------

NAMES = ["s_a.txt", "s_b.txt", "s_qc.png", "s_report.json"]


def _claim(out, **kw):
  return outputs.claim(out, "s", NAMES, report="s_report.json", log=lambda m: None, **kw)


def test_a_second_claim_of_a_name_is_refused(tmp_path):
  out = tmp_path / "out"
  with _claim(out):
    assert outputs.held(out, "s") and (out / ".s.lock").is_file()
    with pytest.raises(outputs.Busy, match=r"another run \(pid \d+\) is writing s_a.txt, "
                                           r"s_b.txt, s_qc.png, s_report.json"):
      with _claim(out):
        pass
    with outputs.claim(out, "t", ["t_x"], report="t_x", log=lambda m: None):
      pass  # another name in the same folder is free
  assert not outputs.held(out, "s")
  assert list(out.iterdir()) == []  # the lock file goes with the claim


def test_a_failed_claim_removes_the_folder_it_made(tmp_path):
  with pytest.raises(KeyError):
    with _claim(tmp_path / "a" / "b"):
      raise KeyError("boom")
  assert list(tmp_path.iterdir()) == []


def _write_set(tmp: pathlib.Path, text: str, files=("s_a.txt", "s_b.txt")) -> None:
  for f in files:
    (tmp / f).write_text(text)
  (tmp / "s_report.json").write_text(json.dumps({"outputs": {
      f: f for f in (*files, "s_report.json")}}))


def test_publish_replaces_the_set_whole(tmp_path):
  out = tmp_path
  with _claim(out):
    tmp = outputs.temporary_folder(out, "s")
    _write_set(tmp, "old", files=("s_a.txt", "s_b.txt", "s_qc.png"))
    outputs.publish(tmp, out, ["s_a.txt", "s_b.txt", "s_qc.png"], report="s_report.json",
                    names=NAMES)
    tmp = outputs.temporary_folder(out, "s")
    _write_set(tmp, "new")
    outputs.publish(tmp, out, ["s_a.txt", "s_b.txt"], report="s_report.json", names=NAMES)
  assert sorted(p.name for p in out.iterdir()) == ["s_a.txt", "s_b.txt", "s_report.json"]
  assert (out / "s_a.txt").read_text() == "new"


def test_a_killed_publish_is_finished_by_the_next_claim(tmp_path, monkeypatch):
  out = tmp_path
  (out / "s_qc.png").write_text("old figure")
  (out / "s_report.json").write_text("old report")
  with _claim(out):
    tmp = outputs.temporary_folder(out, "s")
    _write_set(tmp, "new")
    real, moved = os.replace, []

    def dies_after_one(a, b):
      if moved:
        raise KeyboardInterrupt  # killed between the first and second rename
      moved.append(b)
      real(a, b)

    monkeypatch.setattr(outputs.os, "replace", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
      outputs.publish(tmp, out, ["s_a.txt", "s_b.txt"], report="s_report.json", names=NAMES)
    monkeypatch.setattr(outputs.os, "replace", real)
  # Half published: no report (the old one went first), the tmp folder holds the rest.
  assert not (out / "s_report.json").exists() and (out / "s_a.txt").read_text() == "new"
  assert outputs.stale_folders(out, "s") == [tmp]
  logs = []
  with outputs.claim(out, "s", NAMES, report="s_report.json", log=logs.append):
    pass
  assert sorted(p.name for p in out.iterdir()) == ["s_a.txt", "s_b.txt", "s_report.json"]
  assert (out / "s_b.txt").read_text() == "new" and "finished publishing" in logs[0]


def test_a_temporary_folder_without_its_report_is_removed(tmp_path):
  out = tmp_path
  (out / "s_a.txt").write_text("kept")
  stale = outputs.temporary_folder(out, "s")
  (stale / "s_a.txt").write_text("half")
  other = outputs.temporary_folder(out, "s.v2")  # another name's: not touched
  assert outputs.stale_folders(out, "s") == [stale]
  logs = []
  with outputs.claim(out, "s", NAMES, report="s_report.json", log=logs.append):
    pass
  assert not stale.exists() and other.exists() and "removed" in logs[0]
  assert (out / "s_a.txt").read_text() == "kept"
