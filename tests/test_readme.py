"""README's examples run as written, so the docs cannot rot."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex

import numpy as np

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
  meta = json.loads((tmp_path / "train" / "checkpoints" / "latest" / "meta.json").read_text())
  # 2 epochs, then --resume continues to the 3rd: three history records.
  assert [h["epoch"] for h in meta["history"]] == [0, 1, 2]
  assert meta["step"] == 3 * meta["history"][0]["step"]
