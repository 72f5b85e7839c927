"""The reading search of the paper's placement: analytic case, and the binary
on the smoke model against the main job's own evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rodent_gbp import pipeline
from rodent_gbp.studies import placement_study
from rodent_gbp.studies import readings


def _disk(h, w, center, radius):
  yy, xx = np.mgrid[:h, :w]
  return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2


def test_calibrated_centre_places_a_disk_exactly():
  # A gradient image that is 1 on a disk and 0 elsewhere: after the linear
  # expansion and the log it takes two values, so its z inside the disk is
  # sqrt((1 - p) / p) for the disk's pixel fraction p; Eq. 1 centred there is 1
  # on the disk and ~0 elsewhere, and the bare-mask correlation is the overlap.
  h = w = 32
  ref = _disk(h, w, (16, 16), 5)
  shift = (3, -4)
  test = _disk(h, w, (16 + shift[0], 16 + shift[1]), 5)
  maps = np.zeros((2, 4, h, w), np.float32)
  maps[:, 2] = test
  ref_raw = np.zeros_like(maps)
  ref_raw[:, 2] = ref
  p = ref.mean()
  centre = readings.calibrated_center(ref_raw, np.stack([ref, ref]), (2,))
  assert centre == pytest.approx(np.sqrt((1 - p) / p), rel=1e-5)
  disp, placed = readings.place(maps, ref_raw, np.stack([ref, ref]), np.float32(centre),
                                np.float32(0.5), classes=(2,), template="mask")
  np.testing.assert_array_equal(np.asarray(disp), [shift, shift])
  np.testing.assert_array_equal(np.asarray(placed), np.stack([test, test]))


def test_grid_puts_the_default_first_once_and_rejects_unknown_names():
  g = readings.grid(["tissue", "gm"], [1.0, 2.0], [0.5], ["gradient", "mask"])
  assert g[0] == readings.Reading(**readings.DEFAULT)
  assert len(g) == len(set(g)) == 2 * 2 * 1 * 2
  with pytest.raises(ValueError, match="class set 'grey'"):
    readings.grid(["grey"])
  with pytest.raises(ValueError, match="template 'ring'"):
    readings.grid(templates=["ring"])


@pytest.fixture(scope="module")
def searched(tmp_path_factory, model_dir, phantom_dir):
  from conftest import run_binary
  out = tmp_path_factory.mktemp("readings")
  run_binary("paper_readings", [f"--checkpoint={model_dir}", f"--data_dir={phantom_dir}",
                                f"--out_dir={out}", "--class_sets=tissue",
                                "--centers=1,2", "--widths=0.5",
                                "--templates=gradient,mask"])
  return out, json.loads((out / "readings.json").read_text())


def test_default_reading_is_the_main_jobs_gbp_placement(searched, model_dir, phantom_dir):
  out, r = searched
  for name in ("readings.md", "readings.png"):
    assert (out / name).stat().st_size > 500
  ctx = placement_study.load_context(model_dir, phantom_dir)
  options = pipeline.PlacementOptions.from_config(ctx.config)
  dscs = {}
  for v in ctx.test:
    e = pipeline.evaluate_volume(ctx.model, ctx.params, v, ctx.bank, options=options,
                                 batch_size=ctx.batch_size)
    tp, fp, fn, _ = np.asarray(e["brain_counts"]["gbp"], np.float64)
    dscs[v.animal_id] = 2 * tp / (2 * tp + fp + fn)
  default = r["default"]
  assert default["reading"] == {**readings.DEFAULT, "calibrated": False}
  assert default["per_animal_brain_dsc"].keys() >= dscs.keys()
  for a, d in dscs.items():
    assert default["per_animal_brain_dsc"][a] == pytest.approx(d, abs=1e-9)
  # The choice never looks at the test animals.
  assert set(r["selection_animals"]).isdisjoint(r["test_animals"])
  assert r["reference"] not in r["selection_animals"]
  chosen = r["chosen_on_selection"]
  assert chosen["selection_brain_dsc"] == max(x["selection_brain_dsc"] for x in r["rows"])
  # 4 fixed readings + calibrated centre x 2 templates x 1 width.
  assert len(r["rows"]) == 6
  assert sum(x["reading"]["calibrated"] for x in r["rows"]) == 2
