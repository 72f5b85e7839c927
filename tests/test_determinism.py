"""Two main-job runs with the same seed write identical results.json metrics (CPU).

``reproduce.reproduce`` on the smoke config and a tiny phantom (3 animals of
48 x 40 x 48), twice into separate workdirs; everything in results.json but
timing, provenance and the training record's
wall-clock fields must agree exactly.
"""

from __future__ import annotations

import json

from rodent_gbp import configs
from rodent_gbp import phantom
from rodent_gbp.studies import reproduce

_VOLATILE = ("timing", "provenance")
_VOLATILE_EPOCH = ("seconds", "train_seconds", "images_per_s")


def test_same_seed_same_results(tmp_path):
  data_dir = tmp_path / "data"
  phantom.write_phantom(data_dir, animals=3, seed=0, size=48)
  config = configs.override(configs.get_config("smoke"), epochs=1)
  runs = []
  for name in ("a", "b"):
    reproduce.reproduce(config, tmp_path / name, data_dir=data_dir, seed=3, figures=False,
                        log=lambda msg: None)
    runs.append(json.loads((tmp_path / name / "results.json").read_text()))
  for r in runs:  # wall-clock fields of the training record
    r["training"].pop("epochs_seconds")
    for h in r["training"]["history"]:
      for k in _VOLATILE_EPOCH:
        h.pop(k)
  a, b = ({k: v for k, v in r.items() if k not in _VOLATILE} for r in runs)
  for key in ("tables", "brain", "placement", "per_animal"):
    assert key in a
    assert a[key] == b[key], key
  assert a == b
  assert runs[0]["provenance"]["seed"] == runs[1]["provenance"]["seed"] == 3
