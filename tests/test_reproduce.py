"""The main job on the smoke model: files written, keys present, values sane."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from rodent_gbp import configs
from rodent_gbp.studies import reproduce


@pytest.fixture(scope="module")
def smoke_reproduce(tmp_path_factory, phantom_dir, smoke_run):
  workdir = tmp_path_factory.mktemp("reproduce")
  results = reproduce.reproduce(configs.get_config("smoke"), workdir, data_dir=phantom_dir,
                                checkpoint=smoke_run.checkpoint_dir, log=lambda s: None)
  return workdir, results


def test_reproduce_writes_every_output(smoke_reproduce, smoke_run):
  workdir, _ = smoke_reproduce
  assert (smoke_run.checkpoint_dir / "templates.npz").exists()
  for name in ("results.json", "tables.md", "per_slice.csv"):
    assert (workdir / name).stat().st_size > 0
  for fig in ("fig2_outputs", "fig3_translation", "fig4_no_removal", "fig5_histograms",
              "fig6_enhanced", "fig7_alignment", "fig8_csf", "placement"):
    assert (workdir / "figures" / f"{fig}.png").stat().st_size > 1000


def test_results_json_layout(smoke_reproduce, smoke_run):
  workdir, results = smoke_reproduce
  on_disk = json.loads((workdir / "results.json").read_text())
  assert on_disk["config"]["name"] == "smoke"
  prov = on_disk["provenance"]
  assert {"version", "git_commit", "seed", "jax_version", "device"} <= set(prov)
  for way in ("none", "manual", "gbp"):
    for cls in ("wm", "gm", "csf"):
      row = on_disk["tables"][way][cls]
      assert set(row) == {"accuracy", "specificity", "sensitivity", "precision", "dsc"}
      for v in row.values():
        assert v is None or 0.0 <= v <= 1.0
  brain = on_disk["brain"]
  assert set(brain["gbp"]) == {"accuracy", "specificity", "sensitivity", "precision", "dsc"}
  # The ceiling is the best shift of the same mask: never below the placement.
  assert brain["gbp_ceiling"]["dsc"] >= brain["gbp"]["dsc"] - 1e-9
  placement = on_disk["placement"]
  assert placement["mean_abs_error_px"] >= 0
  test_animals = smoke_run.split["test"]
  assert len(placement["per_slice"]) == 40 * len(test_animals)
  assert set(on_disk["per_animal"]) == set(test_animals)
  assert on_disk["lognormal"]["winner"] in {"lognormal", "normal", "gamma", "weibull",
                                            "exponential"}
  # Training as the checkpoint recorded it (the smoke run: 1 epoch, no cap hit).
  tr = on_disk["training"]
  assert tr["epochs_planned"] == smoke_run.config.epochs == tr["epochs_completed"]
  assert tr["stopped_by_time_cap"] is False
  assert len(tr["history"]) == len(smoke_run.history)
  assert tr["best_val_mean_tissue_dice"] == pytest.approx(smoke_run.best_val_dice)


def test_training_summary_and_time_cap_warning(smoke_reproduce):
  from rodent_gbp.studies import report
  from rodent_gbp import train
  config = configs.override(configs.get_config("smoke"), epochs=5, max_train_seconds=30)
  history = [{"epoch": e, "seconds": t, "val_mean_tissue_dice": d, "val_dice": {},
              "partial_epoch": e == 2}
             for e, t, d in ((0, 10.0, 0.5), (1, 12.0, 0.7), (2, 8.5, 0.6))]
  tr = train.training_summary(history, config)
  assert (tr["epochs_planned"], tr["epochs_completed"], tr["best_epoch"]) == (5, 2, 2)
  assert tr["stopped_by_time_cap"] is True
  assert tr["epochs_seconds"] == pytest.approx(30.5)
  assert tr["best_val_mean_tissue_dice"] == pytest.approx(0.7)
  # Without validation animals the best epoch is the lowest loss: no val Dice claimed.
  unvalidated = [{k: v for k, v in h.items() if k != "val_dice"} for h in history]
  tr2 = train.training_summary(unvalidated, config)
  assert tr2["best_val_mean_tissue_dice"] is None and tr2["best_epoch"] == 2
  assert tr2["best_selected_by"].startswith("training loss")
  _, results = smoke_reproduce
  assert "Training stopped at the time cap" not in report.tables_markdown(results)
  text = report.tables_markdown({**results, "training": tr})
  assert "after 2 of 5 epochs" in text and "max_train_seconds = 30" in text


def test_placement_error_matches_meta(smoke_reproduce, phantom_dir):
  """Per-slice truth is the test minus the reference displacement of meta.json."""
  _, results = smoke_reproduce
  ref = json.loads((phantom_dir / results["reference_animal"] / "meta.json").read_text())
  row = results["placement"]["per_slice"][0]
  test = json.loads((phantom_dir / row["animal"] / "meta.json").read_text())
  expect = np.subtract(test["displacement_hw"], ref["displacement_hw"])
  assert [row["true_dy"], row["true_dx"]] == pytest.approx(list(expect))
  assert row["abs_error_px"] == pytest.approx(
      np.mean(np.abs([row["dy"] - expect[0], row["dx"] - expect[1]])))


def test_prediction_niftis_keep_input_geometry(smoke_reproduce, phantom_dir):
  workdir, results = smoke_reproduce
  animal = results["placement"]["per_slice"][0]["animal"]
  src = nib.load(phantom_dir / animal / "image.nii.gz")
  for kind in ("labels_gbp", "labels_manual", "brainmask_gbp"):
    out = nib.load(workdir / "predictions" / f"{animal}_{kind}.nii.gz")
    assert out.shape == src.shape
    np.testing.assert_array_equal(out.affine, src.affine)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 3}


def test_tables_md_has_paper_numbers(smoke_reproduce):
  workdir, _ = smoke_reproduce
  text = (workdir / "tables.md").read_text()
  assert "(99.12)" in text and "(77.61)" in text  # paper Table 1 brain DSC, Table 2 CSF
  assert "Table 1" in text and "Table 2" in text


def test_model_folder_serves_segment(smoke_reproduce, smoke_run, phantom_dir, tmp_path, binary):
  """The main job's model folder is all rodent-gbp-segment needs (improved placement)."""
  animal = smoke_run.split["test"][0]
  scan = phantom_dir / animal / "image.nii.gz"
  binary("segment", [f"--input={scan}", f"--checkpoint={smoke_run.checkpoint_dir}",
                     f"--out_dir={tmp_path}", "--noqc"])
  src = nib.load(scan)
  mask = nib.load(tmp_path / "image_brainmask.nii.gz")
  np.testing.assert_array_equal(mask.affine, src.affine)
  assert mask.shape == src.shape and np.asarray(mask.dataobj).any()
