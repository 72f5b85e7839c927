"""The main job on the smoke model: files written, the config it runs, predictions of every placer.

One run of ``experiments/reproduce.py`` in-process (the session fixture
``smoke_reproduce`` of conftest) from the session's smoke checkpoint, with ``--config=smoke`` given explicitly (it
matches the checkpoint's, so it is accepted); the tests read what it wrote.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from conftest import imported_binary
from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import metrics
from rodent_gbp.errors import UsageError

PLACERS = ("gbp", "gbp_improved", "intensity")
FIGURES = ("fig2_outputs", "fig3_translation", "fig4_no_removal", "fig5_histograms",
           "fig6_enhanced", "fig7_alignment", "fig8_csf", "placement")


def test_reproduce_writes_every_output(smoke_reproduce):
  workdir, _ = smoke_reproduce
  for name in ("results.json", "tables.md", "per_slice.csv", "placement.md"):
    assert (workdir / name).stat().st_size > 0
  for name in ("bundle.json", "tissue.msgpack", "templates.npz"):
    assert (workdir / "model" / name).stat().st_size > 0
  # --figures is on by default.
  assert sorted(p.stem for p in (workdir / "figures").glob("*.png")) == sorted(FIGURES)
  # One QC figure per test animal, of the mask the improved placement applied.
  animals = json.loads((workdir / "results.json").read_text())["split"]["test"]
  assert sorted(p.name for p in (workdir / "figures" / "qc").iterdir()) == [
      f"{a}_gbp_improved.png" for a in sorted(animals)]
  for fig in FIGURES:
    assert (workdir / "figures" / f"{fig}.png").stat().st_size > 1000


def test_results_json_layout(smoke_reproduce, smoke_run):
  _, on_disk = smoke_reproduce
  assert on_disk["config"]["name"] == "smoke"
  assert "reference" not in on_disk["config"]
  prov = on_disk["provenance"]
  assert {"version", "git_commit", "seed", "jax_version", "device"} <= set(prov)
  assert set(on_disk["tables"]) == {"none", "manual", *PLACERS, "all_gm", "mixture"}
  assert on_disk["data"]["dataset"] == "phantom" and not on_disk["data"]["skull_stripped"]
  for way in on_disk["tables"]:
    for cls in ("wm", "gm", "csf"):
      row = on_disk["tables"][way][cls]
      assert set(row) == {"accuracy", "specificity", "sensitivity", "precision", "dsc"}
      for v in row.values():
        assert v is None or 0.0 <= v <= 1.0
  brain = on_disk["brain"]
  assert {*PLACERS, "gbp_ceiling", "oracle"} <= set(brain)
  assert set(brain["gbp"]) == {"accuracy", "specificity", "sensitivity", "precision", "dsc"}
  # The ceiling is the best shift of the same mask: never below the placement.
  assert brain["gbp_ceiling"]["dsc"] >= brain["gbp"]["dsc"] - 1e-9
  placement = on_disk["placement"]
  assert placement["mean_abs_error_px"] >= 0
  assert "improved" not in placement
  test_animals = smoke_run.split["test"]
  for name in ("gbp_improved", "intensity"):
    assert placement[name]["mean_abs_error_px"] >= 0
    vd = placement[name]["volume_displacement"]
    assert set(vd) == set(test_animals) and all(len(v) == 2 for v in vd.values())
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


def test_time_cap_warning_in_tables(smoke_reproduce):
  """tables.md warns when max_train_seconds cut training short (and only then).

  Which epoch a run keeps is ``tissue.training_summary``'s business (test_train).
  """
  from rodent_gbp import report
  from rodent_gbp.training import tissue
  config = configs.override(configs.get_config("smoke"), epochs=5, max_train_seconds=30)
  history = [{"epoch": e, "seconds": t, "val_mean_tissue_dice": d, "val_dice": {},
              "partial_epoch": e == 2}
             for e, t, d in ((0, 10.0, 0.5), (1, 12.0, 0.7), (2, 8.5, 0.6))]
  tr = tissue.training_summary(history, config)
  assert (tr["epochs_planned"], tr["epochs_completed"]) == (5, 2)
  assert tr["stopped_by_time_cap"] is True
  assert tr["epochs_seconds"] == pytest.approx(30.5)
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


def _load(path) -> np.ndarray:
  return np.asarray(nib.load(str(path)).dataobj)


def _same_metrics(got: dict, recorded: dict) -> None:
  assert set(got) == set(recorded)
  for k, v in got.items():
    v = None if not np.isfinite(v) else float(v)
    assert (v is None and recorded[k] is None) or v == pytest.approx(recorded[k], abs=1e-12), k


@pytest.mark.parametrize("placer", PLACERS)
def test_predictions_of_every_placer_are_the_evaluated_ones(smoke_reproduce, phantom_dir,
                                                            placer):
  """predictions/ holds each placer's labels and removal mask, exactly the ones scored.

  Known answer: the metrics recomputed from the written files against the
  animal's truth are the per-animal metrics of results.json.
  """
  workdir, results = smoke_reproduce
  for animal, recorded in results["per_animal"].items():
    truth = data.load_animal(phantom_dir / animal)
    src = nib.load(str(phantom_dir / animal / "image.nii.gz"))
    paths = {k: workdir / "predictions" / f"{animal}_{k}_{placer}.nii.gz"
             for k in ("labels", "brainmask")}
    for p in paths.values():
      out = nib.load(str(p))
      assert out.shape == src.shape
      np.testing.assert_array_equal(out.affine, src.affine)
    mask = data.to_slices(_load(paths["brainmask"]), truth.plane)
    labels = data.to_slices(_load(paths["labels"]), truth.plane)
    assert set(np.unique(mask)) <= {0, 1} and set(np.unique(labels)) <= {0, 1, 2, 3}
    _same_metrics(metrics.metrics_from_counts(
        np.asarray(metrics.binary_counts(mask, truth.brainmask))), recorded["brain"][placer])
    counts = np.asarray(metrics.confusion_counts(labels, truth.label.astype(np.int32), 4))
    for c, cls in ((1, "wm"), (2, "gm"), (3, "csf")):
      _same_metrics(metrics.metrics_from_counts(counts[c]), recorded[placer][cls])


def test_prediction_labels_lie_inside_their_mask(smoke_reproduce):
  workdir, results = smoke_reproduce
  for animal in results["per_animal"]:
    for placer in PLACERS:
      labels = _load(workdir / "predictions" / f"{animal}_labels_{placer}.nii.gz")
      mask = _load(workdir / "predictions" / f"{animal}_brainmask_{placer}.nii.gz")
      assert not np.any((labels > 0) & (mask == 0)), placer


def test_tables_md_has_paper_numbers(smoke_reproduce):
  workdir, _ = smoke_reproduce
  text = (workdir / "tables.md").read_text()
  assert "(99.12)" in text and "(77.61)" in text  # paper Table 1 brain DSC, Table 2 CSF
  assert "Table 1" in text and "Table 2" in text


def test_model_folder_serves_segment(smoke_reproduce, smoke_run, phantom_dir, tmp_path, binary):
  """<workdir>/model is all rodent-gbp-segment needs, and it reproduces the main job.

  Known answer: the test animal at the model's own geometry gets exactly the
  main job's gbp_improved removal mask, and its labels inside that mask.
  """
  workdir, _ = smoke_reproduce
  animal = smoke_run.split["test"][0]
  scan = phantom_dir / animal / "image.nii.gz"
  binary("segment", [f"--input={scan}", f"--model_dir={workdir / 'model'}",
                     f"--out_dir={tmp_path}", "--noqc"])
  src = nib.load(str(scan))
  mask = nib.load(str(tmp_path / "image_brainmask.nii.gz"))
  np.testing.assert_array_equal(mask.affine, src.affine)
  main_mask = _load(workdir / "predictions" / f"{animal}_brainmask_gbp_improved.nii.gz")
  np.testing.assert_array_equal(np.asarray(mask.dataobj), main_mask)
  main_labels = _load(workdir / "predictions" / f"{animal}_labels_gbp_improved.nii.gz")
  np.testing.assert_array_equal(_load(tmp_path / "image_labels.nii.gz"),
                                main_labels * (main_mask > 0))


# ------------------------------------------------------ the run's config --


def _run_config(argv: list[str]) -> configs.Config:
  from absl import flags
  with imported_binary("reproduce") as module:
    flags.FLAGS(["reproduce", *argv])
    return module.run_config()


def test_checkpoint_config_is_used_without_config_flag(smoke_run):
  got = _run_config([f"--checkpoint_dir={smoke_run.checkpoint_dir}"])
  assert got == smoke_run.config and got.name == "smoke"
  # Explicit and matching: accepted.
  assert _run_config([f"--checkpoint_dir={smoke_run.checkpoint_dir}", "--config=smoke"]) == got
  # No checkpoint: the named config (default "default").
  assert _run_config([]) == configs.get_config("default")
  # The saliency target by flag: into the config, or refused against a checkpoint's.
  assert _run_config(["--saliency_score=logit"]) == configs.override(
      configs.get_config("default"), saliency_score="logit")
  assert _run_config([f"--checkpoint_dir={smoke_run.checkpoint_dir}",
                      f"--saliency_score={got.saliency_score}"]) == got
  with pytest.raises(UsageError, match="--saliency_score logit conflicts"):
    _run_config([f"--checkpoint_dir={smoke_run.checkpoint_dir}", "--saliency_score=logit"])
  # The displacement is evaluation only: it may differ from the checkpoint's.
  assert _run_config(["--displacement=slice"]) == configs.override(
      configs.get_config("default"), displacement="slice")
  assert got.displacement == "slice"
  assert _run_config([f"--checkpoint_dir={smoke_run.checkpoint_dir}",
                      "--displacement=volume"]) == configs.override(got, displacement="volume")


def test_a_checkpoint_is_evaluated_with_the_given_displacement(smoke_run, tmp_path):
  from rodent_gbp import job
  given = configs.override(smoke_run.config, displacement="volume")
  config, _, split, _, _ = job.load_or_train(
      given, tmp_path, None, smoke_run.checkpoint_dir, {}, lambda _: None)
  assert config == given and split == smoke_run.split


def test_conflicting_config_and_checkpoint_are_refused(smoke_run, tmp_path, binary, capsys):
  """--config default with a smoke checkpoint: one error line, exit 2, nothing written."""
  work = tmp_path / "work"
  with pytest.raises(SystemExit) as e:
    binary("reproduce", [f"--workdir={work}", f"--checkpoint_dir={smoke_run.checkpoint_dir}",
                         "--config=default", "--nofigures"])
  assert e.value.code == 2
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: --config default conflicts with")
  assert "name 'default' vs 'smoke'" in lines[0] and str(smoke_run.checkpoint_dir) in lines[0]
  assert not work.exists()


def test_config_fields_differing_from_the_checkpoint_are_named(smoke_run, tmp_path):
  """A checkpoint of the smoke config with 2 epochs conflicts with --config smoke."""
  from rodent_gbp.training import checkpoint
  from rodent_gbp import fileio
  ckpt = tmp_path / "checkpoints"
  ckpt.mkdir()
  fileio.write_json(ckpt / checkpoint.CONFIG_FILE,
                    configs.override(smoke_run.config, epochs=2, seed=7).to_dict())
  with pytest.raises(UsageError, match=r"\(epochs 1 vs 2\)"):
    _run_config([f"--checkpoint_dir={ckpt}", "--config=smoke"])
  # The seed is not a conflict (--seed overrides it); without --config it is used.
  assert _run_config([f"--checkpoint_dir={ckpt}"]).seed == 7


def test_config_without_the_unread_reference_field():
  """Config.reference was never read (the bank always takes the median-volume animal)."""
  assert "reference" not in configs.get_config("default").to_dict()
  stored = configs.get_config("smoke").to_dict() | {"reference": "median"}
  assert configs.from_dict(stored) == configs.get_config("smoke")
  with pytest.raises(ValueError, match="unknown fields"):
    configs.from_dict(stored | {"no_such_field": 1})
  assert configs.differences(configs.get_config("smoke"), configs.get_config("smoke")) == {}
  assert configs.differences(
      configs.get_config("smoke"), configs.override(configs.get_config("smoke"), epochs=3)
  ) == {"epochs": (1, 3)}


def test_placement_overview_leaves_the_error_panel_out_without_truth(tmp_path):
  import matplotlib.image as mpimg
  from rodent_gbp import figures
  dice, ceiling = [0.9, 0.8, 0.95], [0.95, 0.9, 0.96]
  figures.placement_overview(tmp_path / "truth.png", dice, ceiling, [1.0, 0.0, 2.0])
  figures.placement_overview(tmp_path / "none.png", dice, ceiling, [np.nan] * 3)
  with_panel = mpimg.imread(tmp_path / "truth.png").shape
  without = mpimg.imread(tmp_path / "none.png").shape
  # Same height; 10 in wide with the error panel, 6 in without it.
  assert with_panel[0] == without[0]
  assert without[1] / with_panel[1] == pytest.approx(0.6, abs=0.02)
