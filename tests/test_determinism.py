"""Two main-job runs with the same seed write identical results.json metrics (CPU).

``experiments/reproduce.py`` in-process on the smoke config and a tiny
phantom (3 animals of 48 x 40 x 48), twice into separate workdirs, without
figures (once ``--figures=false``, once ``--nofigures``); everything in
results.json but timing, provenance and the training record's wall-clock
fields must agree exactly.
"""

from __future__ import annotations

import json

from rodent_gbp import phantom

_VOLATILE = ("timing", "provenance")
_VOLATILE_EPOCH = ("seconds", "train_seconds", "images_per_s")


def test_same_seed_same_results(tmp_path, binary):
  data_dir = tmp_path / "data"
  phantom.write_phantom(data_dir, animals=3, seed=0, size=48)
  runs = []
  for name, no_figures in (("a", "--figures=false"), ("b", "--nofigures")):
    binary("reproduce", [f"--workdir={tmp_path / name}", f"--data_dir={data_dir}",
                         "--config=smoke", "--seed=3", no_figures])
    assert not (tmp_path / name / "figures").exists()
    assert (tmp_path / name / "predictions").is_dir()
    runs.append(json.loads((tmp_path / name / "results.json").read_text()))
  for r in runs:  # wall-clock fields of the training record
    r["training"].pop("epochs_seconds")
    for h in r["training"]["history"]:
      for k in _VOLATILE_EPOCH:
        h.pop(k, None)
  a, b = ({k: v for k, v in r.items() if k not in _VOLATILE} for r in runs)
  assert a["config"]["name"] == "smoke" and a["config"]["epochs"] == 1
  for key in ("tables", "brain", "placement", "per_animal"):
    assert key in a
    assert a[key] == b[key], key
  assert a == b
  assert runs[0]["provenance"]["seed"] == runs[1]["provenance"]["seed"] == 3
