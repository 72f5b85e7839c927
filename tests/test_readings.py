"""The reading search of the paper's placement: planted cases with known answers,
and the binary on a small hand-built bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rodent_gbp import bank as bank_lib
from rodent_gbp.errors import UsageError
from rodent_gbp.studies.common import context
from rodent_gbp.studies.common import gradients
from rodent_gbp.studies import readings

H = W = 32
RADIUS = 5
CENTRE = (16, 16)


def _disk(center, radius=RADIUS, h=H, w=W):
  yy, xx = np.mgrid[:h, :w]
  return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius ** 2


def _at(shift):
  return _disk((CENTRE[0] + shift[0], CENTRE[1] + shift[1]))


def test_calibrated_centre_places_a_disk_exactly():
  # A gradient image that is 1 on a disk and 0 elsewhere: after the linear
  # expansion and the log it takes two values, so its z inside the disk is
  # sqrt((1 - p) / p) for the disk's pixel fraction p; Eq. 1 centred there is 1
  # on the disk and ~0 elsewhere, and the bare-mask correlation is the overlap.
  ref = _at((0, 0))
  shift = (3, -4)
  test = _at(shift)
  maps = np.zeros((2, 4, H, W), np.float32)
  maps[:, 2] = test
  ref_raw = np.zeros_like(maps)
  ref_raw[:, 2] = ref
  p = ref.mean()
  centre = gradients.calibrated_center(ref_raw, np.stack([ref, ref]), (2,))
  assert centre == pytest.approx(np.sqrt((1 - p) / p), rel=1e-5)
  disp, placed = readings.place(maps, ref_raw, np.stack([ref, ref]), np.float32(centre),
                                np.float32(0.5), classes=(2,), template="mask")
  np.testing.assert_array_equal(np.asarray(disp), [shift, shift])
  np.testing.assert_array_equal(np.asarray(placed), np.stack([test, test]))


def _planted() -> readings.Inputs:
  """Two animals of one slice each; which class map shows the brain is planted.

  ``sel`` (selection): the GM map is a disk on its brain, the WM map a disk
  far away (a decoy). ``tst`` (test): the other way round. The reference's
  brain is the disk at the centre, in every class map.
  """
  ref = _at((0, 0))
  truth = {"sel": (3, -4), "tst": (-3, 2)}
  decoy = {"sel": (-6, 7), "tst": (6, -6)}
  brain_class = {"sel": 2, "tst": 1}
  maps = np.zeros((2, 4, H, W), np.float32)
  for i, a in enumerate(("sel", "tst")):
    maps[i, brain_class[a]] = _at(truth[a])
    maps[i, 3 - brain_class[a]] = _at(decoy[a])
  ref_maps = np.zeros_like(maps)
  ref_maps[:, 1:3] = ref
  true = np.stack([_at(truth["sel"]), _at(truth["tst"])])
  return readings.Inputs(
      animals=["sel", "tst"], test=["tst"], maps=maps, ref_maps=ref_maps,
      ref_masks=np.stack([ref, ref]), true_masks=true, owner=np.array([0, 1]),
      has_brain=np.array([True, True]),
      true_disp=np.array([truth["sel"], truth["tst"]], np.float64),
      ref_raw_maps=ref_maps[:1], ref_raw_masks=ref[None], reference="ref")


def test_search_chooses_on_the_selection_animals_only():
  inputs = _planted()
  grid = [readings.Reading(c, 2.0, 0.5, "mask") for c in ("wm", "gm")]
  r = readings.search(inputs, grid, log=lambda s: None)
  p = _at((0, 0)).mean()
  z = np.sqrt((1 - p) / p)
  assert r["calibrated_centers"] == {"wm": pytest.approx(z, rel=1e-5),
                                     "gm": pytest.approx(z, rel=1e-5)}
  # 2 fixed readings + calibrated centre x 2 class sets x 1 template x 1 width.
  assert len(r["rows"]) == 4 and sum(x["reading"]["calibrated"] for x in r["rows"]) == 2
  decoy_error = {"sel": np.abs(np.subtract((-6, 7), (3, -4))).mean(),
                 "tst": np.abs(np.subtract((6, -6), (-3, 2))).mean()}
  for row in r["rows"]:
    # The class that shows an animal's brain places it exactly (DSC 1, error
    # 0); the other places the mask on the decoy, which the brain does not touch.
    gm = row["reading"]["classes"] == "gm"
    assert row["per_animal_brain_dsc"] == {"sel": float(gm), "tst": float(not gm)}, row["label"]
    assert row["selection_error_px"] == (0.0 if gm else decoy_error["sel"])
    assert row["test_error_px"] == (decoy_error["tst"] if gm else 0.0)
  chosen = r["chosen_on_selection"]
  assert chosen["reading"]["classes"] == "gm"
  assert (chosen["selection_brain_dsc"], chosen["test_brain_dsc"]) == (1.0, 0.0)
  hindsight = r["best_on_test_in_hindsight"]
  assert hindsight["reading"]["classes"] == "wm" and hindsight["test_brain_dsc"] == 1.0
  best_cal = r["best_calibrated_on_selection"]
  assert best_cal["reading"]["calibrated"] and best_cal["reading"]["classes"] == "gm"
  assert (r["selection_animals"], r["test_animals"]) == (["sel"], ["tst"])
  md = readings.markdown(r)
  assert f"| chosen on the selection animals: {chosen['label']} | 100.00 | 0.00 | " in md


def test_grid_puts_the_default_first_once_and_rejects_unknown_names():
  g = readings.grid(["tissue", "gm"], ["1", 2.0], ["0.5"], ["gradient", "mask"])
  assert g[0] == readings.Reading(**readings.DEFAULT)
  assert len(g) == len(set(g)) == 2 * 2 * 1 * 2 * 2
  assert {r.center for r in g} == {1.0, 2.0}
  assert {r.displacement for r in g} == {"slice", "volume"}
  assert len(readings.grid(["tissue"], [2.0], [0.5], ["mask"], ["volume"])) == 2  # + default
  with pytest.raises(UsageError, match="displacement 'scan'"):
    readings.grid(displacements=["scan"])
  with pytest.raises(UsageError, match="class set 'grey'"):
    readings.grid(["grey"])
  with pytest.raises(UsageError, match="template 'ring'"):
    readings.grid(templates=["ring"])
  with pytest.raises(UsageError, match="centers: 'two' is not a number"):
    readings.grid(centers=["two"])
  with pytest.raises(UsageError, match="widths must be positive"):
    readings.grid(widths=[0.0])


# --- on a hand-built bundle ---------------------------------------------------------


@pytest.fixture(scope="module")
def study_model(tmp_path_factory):
  from test_placement_study import build_study_model
  return build_study_model(tmp_path_factory.getbasetemp() / "study_model")


@pytest.fixture(scope="module")
def searched(tmp_path_factory, study_model):
  from conftest import run_binary
  out = tmp_path_factory.mktemp("readings")
  run_binary("paper_readings", [f"--model_dir={study_model}", f"--out_dir={out}",
                                "--class_sets=tissue", "--centers=1,2", "--widths=0.5",
                                "--templates=gradient,mask"])
  text = (out / "readings.json").read_text()
  return out, json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_binary_writes_the_search_of_the_bundles_animals(searched, study_model):
  out, r = searched
  for name in ("readings.md", "readings.png"):
    assert (out / name).stat().st_size > 500
  ctx = context.load_context(study_model)
  bank = ctx.bundle.bank
  ref = bank.animal_ids[bank.reference]
  assert r["reference"] == ref
  assert r["test_animals"] == ctx.split["test"]
  # Every labelled animal that is neither a test animal nor the reference.
  assert r["selection_animals"] == sorted(set(ctx.volumes) - set(ctx.split["test"]) - {ref})
  assert r["default"]["reading"] == {**readings.DEFAULT, "calibrated": False}
  # (4 fixed readings + calibrated centre x 2 templates x 1 width) x 2 displacements.
  assert len(r["rows"]) == 12
  assert sum(x["reading"]["calibrated"] for x in r["rows"]) == 4
  chosen = r["chosen_on_selection"]
  assert chosen["selection_brain_dsc"] == max(x["selection_brain_dsc"] for x in r["rows"])
  for row in r["rows"]:
    per = row["per_animal_brain_dsc"]
    assert row["test_brain_dsc"] == pytest.approx(np.mean([per[a] for a in r["test_animals"]]))


def test_prepare_stacks_every_animal_against_the_reference(study_model):
  ctx = context.load_context(study_model)
  inputs = readings.prepare(ctx.volumes, ctx.split["test"], bundle=ctx.bundle)
  bank = ctx.bundle.bank
  ref_id = bank.animal_ids[bank.reference]
  ref = ctx.volumes[ref_id]
  assert inputs.animals[-len(ctx.split["test"]):] == ctx.split["test"]
  assert ref_id not in inputs.animals
  n = ref.image.shape[0]
  assert np.asarray(inputs.maps).shape == (n * len(inputs.animals), 4, *ref.image.shape[1:])
  for i, a in enumerate(inputs.animals):
    rows = inputs.owner == i
    v = ctx.volumes[a]
    np.testing.assert_array_equal(np.asarray(inputs.true_masks)[rows], v.brainmask)
    np.testing.assert_array_equal(np.asarray(inputs.ref_masks)[rows], bank.masks[bank.reference])
    want = bank_lib.recorded_displacement(v) - bank_lib.recorded_displacement(ref)
    np.testing.assert_array_equal(inputs.true_disp[rows], np.broadcast_to(want, (n, 2)))
  # The reference's own raw maps are |saliency| of its raw slices: >= 0, not all 0.
  assert inputs.ref_raw_maps.min() >= 0 and inputs.ref_raw_maps.max() > 0


def test_bad_class_set_ends_in_one_error_line(study_model, tmp_path, capsys):
  from conftest import run_binary
  with pytest.raises(SystemExit) as e:
    run_binary("paper_readings", [f"--model_dir={study_model}", f"--out_dir={tmp_path}",
                                  "--class_sets=grey"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: unknown class set 'grey'")
  assert not any(tmp_path.iterdir())


# --- pooling folds -------------------------------------------------------------------


def _fold(test, default, chosen, label="gm, centre 1, width 1.5, template mask"):
  return {"test_animals": list(test),
          "default": {"per_animal_brain_dsc": dict(zip(test, default))},
          "chosen_on_selection": {"label": label,
                                  "per_animal_brain_dsc": dict(zip(test, chosen))}}


def test_pool_means_over_folds_and_counts_folds_near_the_ceiling():
  folds = [_fold(["a", "b"], [0.80, 0.90], [0.92, 0.94]), _fold(["c"], [0.95], [0.90])]
  ceilings = {"a": 0.95, "b": 0.95, "c": 0.96, "z": 0.5}
  p = readings.pool(folds, ceilings)
  # Fold means: default 0.85, 0.95; chosen 0.93, 0.90; ceiling 0.95, 0.96.
  assert p["mean"]["default"] == pytest.approx(0.90)
  assert p["mean"]["chosen"] == pytest.approx(0.915)
  assert p["mean"]["ceiling"] == pytest.approx(0.955)
  assert p["sd"]["default"] == pytest.approx(np.std([0.85, 0.95], ddof=1))
  assert p["gap"]["chosen"] == pytest.approx(0.955 - 0.915)
  # Within 0.02: fold 0 chosen 0.93 >= 0.93 and fold 1 default 0.95 >= 0.94.
  assert p["folds_within_margin"] == {"default": 1, "chosen": 1}
  assert p["animals"] == ["a", "b", "c"] and p["per_animal"]["c"]["fold"] == 1
  md = readings.pool_markdown(p, ["f0", "f1"])
  assert "| 0 | gm, centre 1, width 1.5, template mask | 0.8500 | 0.9300 | 0.9500 |" in md


def test_pool_refuses_an_animal_twice_or_without_a_ceiling():
  from rodent_gbp.errors import DataError
  with pytest.raises(DataError, match="animal a is a test animal of two"):
    readings.pool([_fold(["a"], [0.9], [0.9]), _fold(["a"], [0.9], [0.9])], {"a": 0.95})
  with pytest.raises(DataError, match="animal b .*no gbp_ceiling"):
    readings.pool([_fold(["b"], [0.9], [0.9])], {"a": 0.95})


def test_binary_pools_a_search_beside_its_ceilings(searched, tmp_path):
  from conftest import run_binary
  out, r = searched
  csv_path = tmp_path / "per_animal.csv"
  ceil = {a: 0.5 + 0.1 * i for i, a in enumerate(r["test_animals"])}
  csv_path.write_text("animal,gbp_ceiling_brain_dsc\n"
                      + "".join(f"{a},{v}\n" for a, v in ceil.items()))
  run_binary("paper_readings", [f"--out_dir={tmp_path / 'pooled'}", f"--pool={out}",
                                f"--ceilings={csv_path}"])
  p = json.loads((tmp_path / "pooled" / "readings_pooled.json").read_text())
  chosen = r["chosen_on_selection"]["per_animal_brain_dsc"]
  for a in r["test_animals"]:
    assert p["per_animal"][a]["chosen"] == pytest.approx(chosen[a])
    assert p["per_animal"][a]["ceiling"] == pytest.approx(ceil[a])
  assert p["mean"]["chosen"] == pytest.approx(r["chosen_on_selection"]["test_brain_dsc"])
  assert "readings_pooled" in str(sorted((tmp_path / "pooled").iterdir()))
