"""The placement study on the smoke model, tiniest settings; and its helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rodent_gbp import data
from rodent_gbp import placement
from rodent_gbp.studies import placement_study


@pytest.fixture(scope="module")
def study(tmp_path_factory, smoke_run, phantom_dir):
  # conftest's ``binary`` fixture is per test; the study runs once per module.
  from conftest import run_binary
  out = tmp_path_factory.mktemp("study")
  run_binary("placement_study", [f"--out_dir={out}", f"--checkpoint={smoke_run.checkpoint_dir}",
                             f"--data_dir={phantom_dir}", "--shifts=0,4", "--alphas=1",
                             "--cascade_steps=2", "--folds=0",
                                 "--noablation"])
  return out, json.loads((out / "placement_study.json").read_text())


def test_zero_displacement_equals_the_main_evaluation(study, smoke_run, phantom_dir):
  _, s = study
  ctx = placement_study.load_context(smoke_run.checkpoint_dir, phantom_dir)
  cbank = placement_study.candidate_bank(ctx)
  dscs = []
  for v in ctx.test:
    r = placement.evaluate_improved(ctx.model, ctx.params, v, cbank, placement.IMPROVED,
                                    batch_size=ctx.batch_size, oracle=False)
    tp, fp, fn, _ = r["brain_counts"]["gbp_improved"]
    dscs.append(2 * tp / (2 * tp + fp + fn))
  zero = s["robustness"]["displacement"][0]
  assert zero["size_px"] == 0
  assert zero["gbp_improved"]["brain_dsc"] == pytest.approx(float(np.mean(dscs)), abs=1e-9)
  # alpha = 1 leaves the slices as acquired: the same numbers again.
  same = s["robustness"]["artifact"][0]
  assert same["alpha"] == 1.0
  for m in placement_study.METHODS:
    assert same[m]["brain_dsc"] == pytest.approx(zero[m]["brain_dsc"], abs=1e-9)


def test_randomising_every_layer_changes_the_maps(study, smoke_run):
  out, s = study
  rows = s["cascade"]["rows"]
  assert [r["layers_randomised"] for r in rows] == [0, len(s["cascade"]["order"])]
  assert rows[0]["spearman_mean"] == pytest.approx(1.0)
  assert rows[-1]["spearman_mean"] < 0.95
  assert len(s["cascade"]["order"]) == len(smoke_run.params)
  for name in ("robustness.png", "cascade.png"):
    assert (out / name).stat().st_size > 1000


def test_shifted_volume_moves_image_masks_and_truth(phantom_dir):
  v = data.load_animal(phantom_dir / "rat00")
  moved = placement_study.shifted_volume(v, (3, -5))
  np.testing.assert_array_equal(moved.image[:, 3:, :-5], v.image[:, :-3, 5:])
  assert not moved.image[:, :3].any() and not moved.brainmask[:, :, -5:].any()
  np.testing.assert_allclose(np.subtract(moved.meta["displacement_hw"],
                                         v.meta["displacement_hw"]), [3, -5])
  assert placement_study.shifted_volume(v, (0, 0)).brainmask.sum() == v.brainmask.sum()


def test_artifact_scaling_keeps_the_brain():
  image = np.arange(8, dtype=np.float32).reshape(1, 2, 4)
  mask = image > 3
  vol = data.Volume("a", image, None, mask, {}, {}, np.eye(4), (2, 1, 4), np.eye(3)[:, :2])
  out = placement_study.artifact_volume(vol, 3.0).image
  np.testing.assert_array_equal(out[mask], image[mask])
  np.testing.assert_array_equal(out[~mask], 3 * image[~mask])


def test_spearman_rows_known_answers():
  a = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
  rho = placement_study.spearman_rows(a, np.stack([a[0], -a[1], np.exp(a[2])]))
  np.testing.assert_allclose(rho, [1.0, -1.0, 1.0], atol=1e-12)
  assert np.isnan(placement_study.spearman_rows(a[:1], np.zeros_like(a[:1])))[0]


def test_layers_from_top_order():
  names = ["down0_conv1", "down0_conv2", "down1_conv1", "down1_conv2", "bottom_conv1",
           "bottom_conv2", "up1_conv0", "up1_conv1", "up1_conv2", "up0_conv0", "up0_conv1",
           "up0_conv2", "head"]
  order = placement_study.layers_from_top({n: None for n in names})
  assert order == ["head", "up0_conv2", "up0_conv1", "up0_conv0", "up1_conv2", "up1_conv1",
                   "up1_conv0", "bottom_conv2", "bottom_conv1", "down1_conv2", "down1_conv1",
                   "down0_conv2", "down0_conv1"]


@pytest.mark.parametrize("n, folds", [(10, 5), (5, 5), (10, 2)])
def test_fold_seeds_give_disjoint_test_sets(n, folds):
  ids = [f"rat{i:02d}" for i in range(n)]
  got = placement_study.fold_seeds(ids, folds)
  tests = [set(t) for _, t in got]
  assert len(got) == folds
  assert len(set().union(*tests)) == sum(len(t) for t in tests)
  for seed, t in got:
    assert data.split_animals(ids, seed)["test"] == sorted(t)
  if folds * len(tests[0]) == n:
    assert set().union(*tests) == set(ids)
  with pytest.raises(ValueError, match="folds"):
    placement_study.fold_seeds(ids, n + 1)
