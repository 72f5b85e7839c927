"""The same seed gives the same training and the same results.json (CPU).

Training: the session's smoke model is trained again with the same config,
data and seed into another workdir; the history and every parameter must be
bitwise equal. Evaluation: ``experiments/reproduce.py`` runs again in-process
from the smoke checkpoint (``--nofigures``) and must write the same
results.json as the session's ``smoke_reproduce`` run (which drew figures),
except timing, provenance and the training record's wall-clock fields.
Both reuse the session's compiled functions and shapes, so the check costs
one short training and one evaluation, not two whole main jobs.
"""

from __future__ import annotations

import json

import jax
import numpy as np

from rodent_gbp.training import tissue

_VOLATILE = ("timing", "provenance")
_VOLATILE_EPOCH = ("seconds", "train_seconds", "images_per_s")


def _steady(record: dict) -> dict:
  record = json.loads(json.dumps(record))
  record["training"].pop("epochs_seconds", None)
  for h in record["training"]["history"]:
    for k in _VOLATILE_EPOCH:
      h.pop(k, None)
  return {k: v for k, v in record.items() if k not in _VOLATILE}


def test_same_seed_same_training(tmp_path, smoke_run, phantom_dir):
  again = tissue.train_and_evaluate(smoke_run.config, tmp_path / "again", data_dir=phantom_dir)
  assert again.split == smoke_run.split
  steady = lambda hist: [{k: v for k, v in h.items() if k not in _VOLATILE_EPOCH}
                         for h in hist]
  assert steady(again.history) == steady(smoke_run.history)
  flat_a = jax.tree_util.tree_leaves_with_path(again.params)
  flat_b = jax.tree_util.tree_leaves_with_path(smoke_run.params)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  for (path, a), (_, b) in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def test_same_checkpoint_same_results(tmp_path, binary, smoke_run, phantom_dir,
                                      smoke_reproduce):
  _, first = smoke_reproduce
  workdir = tmp_path / "again"
  binary("reproduce", [f"--workdir={workdir}", f"--data_dir={phantom_dir}",
                       f"--checkpoint_dir={smoke_run.checkpoint_dir}", "--config=smoke",
                       "--nofigures"])
  assert not (workdir / "figures").exists()
  assert (workdir / "predictions").is_dir()
  second = json.loads((workdir / "results.json").read_text())
  a, b = _steady(first), _steady(second)
  assert a["config"]["name"] == "smoke"
  for key in ("tables", "brain", "placement", "per_animal"):
    assert key in a
    assert a[key] == b[key], key
  assert a == b
