"""README's examples run as written, so the docs cannot rot."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
import shlex

import numpy as np
import pytest

from conftest import REPO


def _blocks(lang: str) -> list[str]:
  text = (REPO / "README.md").read_text()
  return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_two_commands_and_ci_agree():
  blocks = [b.strip() for b in _blocks("bash")]
  assert blocks[0].startswith("python -m pip install -e . && python experiments/reproduce.py")
  test_command = blocks[1]
  assert "pytest" in test_command
  assert test_command in (REPO / ".ci" / "run").read_text()


def test_readme_function_example_runs():
  (code,) = [b for b in _blocks("python") if "from rodent_gbp.guided import saliency" in b]
  out = io.StringIO()
  scope: dict = {}
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md", "exec"), scope)
  assert out.getvalue().strip().startswith("(2, 4, 64, 64)")
  maps = np.asarray(scope["maps"])
  assert np.all(np.isfinite(maps)) and np.abs(maps).max() > 0


def test_readme_binary_example_runs(tmp_path, binary):
  (block,) = [b for b in _blocks("bash") if "experiments/train.py --workdir runs/train" in b]
  lines = [l for l in block.splitlines() if l.startswith("python experiments/train.py")]
  assert len(lines) == 2 and "--resume" in lines[1]
  for line in lines:
    argv = shlex.split(line)[2:]
    argv = [a.replace("runs/train", str(tmp_path / "train")) for a in argv]
    binary("train", argv)
  from rodent_gbp.training import checkpoint
  meta = checkpoint.read_meta(tmp_path / "train" / "checkpoints", "latest")
  # 2 epochs, then --resume continues to the 3rd: three history records.
  assert [h["epoch"] for h in meta["history"]] == [0, 1, 2]
  assert meta["step"] == 3 * meta["history"][0]["step"]


def test_readme_segment_example_runs(tmp_path):
  """``rodent-gbp-segment`` exactly as README shows it, with the shipped model, on a
  held-out mouse-epi scan written as a lab hands it over (x10 voxel sizes, RSP)."""
  import nibabel as nib
  import numpy as np
  from absl import flags
  from rodent_gbp import cli
  from rodent_gbp import metrics
  from rodent_gbp import models
  from rodent_gbp.studies import handover
  epi = REPO.parent / "shared" / "data" / "mouse-epi"
  if not epi.is_dir():
    pytest.skip(f"no local copy of mouse-epi at {epi}")
  text = (REPO / "README.md").read_text()
  # The first example (one scan); the study examples (a folder, shards) follow it.
  line = [l for b in _blocks("bash") for l in b.splitlines()
          if l.startswith("rodent-gbp-segment ")][0]
  assert line.startswith("rodent-gbp-segment --input scan.nii.gz "), line
  argv = shlex.split(line)
  assert "--checkpoint" not in line  # the installed model
  assert (models.default_model_dir() / "MODEL_CARD.md").is_file()
  case = handover.epi_case(epi, "20", tmp_path)[0]   # 20: held out of the shipped model
  (tmp_path / "scan.nii.gz").write_bytes(pathlib.Path(case["input"]).read_bytes())
  subst = {"scan.nii.gz": str(tmp_path / "scan.nii.gz"), "out/": str(tmp_path / "out")}
  cli.segment_main([subst.get(a, a) for a in argv])
  for name in ("scan_brainmask.nii.gz", "scan_brain.nii.gz", "scan_labels.nii.gz",
               "scan_saliency.nii.gz", "scan_report.json"):
    assert f"`<name>{name[4:]}`" in text and (tmp_path / "out" / name).is_file(), name
  mask = np.asarray(nib.load(str(tmp_path / "out" / "scan_brainmask.nii.gz")).dataobj) > 0
  truth = np.asarray(nib.load(str(case["truth"])).dataobj) > 0
  assert metrics.mask_dice(mask, truth) > 0.95
  # The placers README names for --placement are exactly those the command takes.
  fv = flags.FlagValues()
  cli.define_segment_flags(fv)
  sentence = text[text.index("`--placement` picks the placer:"):]
  sentence = sentence[:sentence.index(".\n")]
  named = set(re.findall(r"`(\w+)`", sentence)) - {"placement"}
  assert named == set(fv["placement"].parser.enum_values)
  assert f"`{fv['placement'].default}` (default" in sentence


def _lower_bounds() -> dict[str, tuple[int, ...]]:
  import configparser
  cfg = configparser.ConfigParser()
  cfg.read(REPO / "setup.cfg")
  bounds = {}
  for req in cfg["options"]["install_requires"].split("\n"):
    m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)>=([0-9.]+)\s*", req)
    if m:
      bounds[m.group(1)] = tuple(int(x) for x in m.group(2).split("."))
  return bounds


# (package, first release with the API, file using it, what in that file shows the use)
_API_FLOORS = (
    ("jax", (0, 5, 3), "rodent_gbp/parallel.py", "AxisType"),          # jax.sharding.AxisType
    ("jax", (0, 5, 3), "rodent_gbp/parallel.py", "axis_types="),       # make_mesh(axis_types=)
    ("orbax-checkpoint", (0, 11, 17), "rodent_gbp/training/checkpoint.py", "BestN("),  # default reverse
)


def test_install_requires_cover_the_apis_used():
  """setup.cfg's lower bounds are no older than the first release with each API used.

  jax 0.5.0-0.5.2 named the enum AxisTypes and make_mesh took auto_axes=...;
  jax.sharding.AxisType and make_mesh(axis_types=...) arrived in 0.5.3.
  orbax-checkpoint's BestN preservation policy needs ``reverse`` before 0.11.17.
  """
  bounds = _lower_bounds()
  assert {"jax", "flax", "optax", "orbax-checkpoint"} <= set(bounds)
  for package, floor, path, marker in _API_FLOORS:
    if marker in (REPO / path).read_text():
      assert bounds[package] >= floor, (package, bounds[package], floor, path, marker)
