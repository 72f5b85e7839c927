"""The placement study: known answers on a small hand-built bundle, the binary, helpers.

The bundle (``build_study_model``) is an untrained smoke-sized U-Net with its
template bank on a 4-animal, 16-slice, 64 x 64 phantom: cheap to build, and
every answer checked here holds for any network (the placements are
shift-equivariant, the bank's own animal is placed exactly).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from rodent_gbp import data
from rodent_gbp import placement
from rodent_gbp.errors import CheckpointError, DataError, UsageError
from rodent_gbp.studies.common import context
from rodent_gbp.studies.common import randomise
from rodent_gbp.studies import placement_study


def build_study_model(root: pathlib.Path, *, animals: int = 4, size: int = 64,
                      n_slices: int = 16, seed: int = 0) -> pathlib.Path:
  """``<root>/model`` (a bundle) and ``<root>/data`` (its phantom), built once.

  The U-Net's params are drawn with numpy (He-normal kernels, zero biases)
  in the shapes of ``model.init_params``, which saves an initialisation
  compile; the bank is ``bank.build_template_bank`` of the training split,
  as the main job builds it. Reused when ``<root>/model/bundle.json`` exists.
  """
  import jax
  import nibabel as nib
  from rodent_gbp import bank as bank_lib
  from rodent_gbp import bundle as bundle_lib
  from rodent_gbp import configs
  from rodent_gbp import fileio
  from rodent_gbp import model as model_lib
  from rodent_gbp import phantom

  model_dir = root / "model"
  if (model_dir / bundle_lib.BUNDLE_FILE).is_file():
    return model_dir
  for index in range(animals):
    animal = phantom.make_animal(seed, index, size=size, n_slices=n_slices)
    folder = root / "data" / animal.meta["animal_id"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("image", animal.image), ("labels", animal.labels),
                        ("brainmask", animal.brainmask)):
      nib.save(nib.Nifti1Image(array, animal.affine), folder / f"{name}.nii.gz")
    fileio.write_json(folder / "meta.json", animal.meta)
  config = configs.override(configs.get_config("smoke"), image_size=size, animals=animals)
  volumes = {v.animal_id: v for v in data.load_dataset(root / "data")}
  split = data.split_animals(sorted(volumes), config.split_seed)
  model = model_lib.build_unet(config)
  shapes = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.key(0), (size, size)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "bias":
      return np.zeros(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(draw, shapes)
  train = [volumes[a] for a in split["train"]]
  bank = bank_lib.build_template_bank(model, params, train, batch_size=config.eval_batch_size)
  vs, source = bundle_lib.voxel_size_of(train, config)
  bundle_lib.save_bundle(model_dir, bundle_lib.Bundle(
      networks={"tissue": bundle_lib.Network(config=config, params=params)},
      normalisation={"method": "robust_max", "percentile": 99.0}, bank=bank,
      voxel_size=vs, voxel_size_source=source, split=split))
  return model_dir


@pytest.fixture(scope="session")
def study_model(tmp_path_factory) -> pathlib.Path:
  """The hand-built bundle folder (shared by the study tests of every module)."""
  return build_study_model(tmp_path_factory.getbasetemp() / "study_model")


@pytest.fixture(scope="module")
def ctx(study_model):
  return context.load_context(study_model)


# --- known answers of the placements ---------------------------------------------


@pytest.mark.parametrize("placer", ["intensity", "gbp_improved"])
def test_shifted_volume_moves_the_volume_displacement_by_the_shift(ctx, placer):
  v = ctx.test[0]
  base = placement.place(placer, v.image, bundle=ctx.bundle).details.volume_displacement
  # Multiples of 4 keep the U-Net (two 2x2 pools) shift-equivariant for gbp_improved.
  for shift in [(4, -8), (-4, 4)]:
    moved = placement_study.shifted_volume(v, shift)
    got = placement.place(placer, moved.image, bundle=ctx.bundle).details.volume_displacement
    np.testing.assert_allclose(got - base, shift, atol=1)


def test_the_reference_animal_is_placed_exactly(ctx):
  # The bank's reference is its own best candidate: its own mask at its own
  # slice, scale 1 and zero displacement (no dilation): DSC 1, error 0.
  b = ctx.bundle.bank
  ref = ctx.volumes[b.animal_ids[b.reference]]
  methods = {m: {**c, "dilate": 0} for m, c in placement_study.METHODS.items()}
  got = placement_study.place_all([ref], bundle=ctx.bundle, methods=methods)
  for m in methods:
    assert got[m] == {"brain_dsc": 1.0, "mean_abs_error_px": 0.0}, m
  # Dilation by 1 pixel only adds the mask's outer ring: DSC 2|M| / (2|M| + ring).
  dilated = placement_study.place_all([ref], bundle=ctx.bundle,
                                      methods={"intensity": placement_study.METHODS["intensity"]})
  from rodent_gbp import candidates
  ring = int(np.asarray(candidates.dilate(ref.brainmask, 1)).sum() - ref.brainmask.sum())
  want = 2 * ref.brainmask.sum() / (2 * ref.brainmask.sum() + ring)
  assert dilated["intensity"]["brain_dsc"] == pytest.approx(want, abs=1e-9)


def test_true_shifts_of_a_shifted_volume_move_with_it(ctx):
  v = ctx.test[0]
  before = placement_study.true_shifts(v, ctx.bundle)
  after = placement_study.true_shifts(placement_study.shifted_volume(v, (5, -2)), ctx.bundle)
  np.testing.assert_allclose(after - before, np.broadcast_to([5, -2], before.shape))


# --- the binary ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory, study_model):
  from conftest import run_binary
  out = tmp_path_factory.mktemp("study")
  run_binary("placement_study", [f"--out_dir={out}", f"--model_dir={study_model}",
                                 "--shifts=0,4", "--alphas=1", "--cascade_steps=2",
                                 "--noablation"])
  text = (out / "placement_study.json").read_text()
  return out, json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_study_curves_are_shift_and_alpha_invariant(study, ctx):
  _, s = study
  zero, four = s["robustness"]["displacement"]
  assert (zero["size_px"], zero["shifts"]) == (0, [[0, 0]])
  assert (four["size_px"], four["shifts"]) == (4, [[3, 3], [3, -3]])
  # A 3-pixel shift of image, mask and truth moves the intensity placement
  # with them: the same DSC (the brain is far from the zero-filled border).
  assert four["intensity"]["brain_dsc"] == pytest.approx(zero["intensity"]["brain_dsc"],
                                                         abs=1e-3)
  # alpha = 1 leaves the slices as acquired: the zero-shift numbers exactly.
  same = s["robustness"]["artifact"][0]
  assert same["alpha"] == 1.0
  for m in placement_study.METHODS:
    assert same[m] == zero[m]
  # And they are those of the placers on the unshifted test animals.
  want = placement_study.place_all(ctx.test, bundle=ctx.bundle,
                                   methods={"intensity": placement_study.METHODS["intensity"]})
  assert zero["intensity"] == want["intensity"]
  assert s["test_animals"] == ctx.split["test"]


def test_randomising_every_layer_changes_the_maps(study, ctx):
  out, s = study
  rows = s["cascade"]["rows"]
  order = s["cascade"]["order"]
  assert len(order) == len(ctx.bundle.network("tissue").params)
  assert [r["layers_randomised"] for r in rows] == [0, len(order)]
  assert rows[0]["top_layer"] is None and rows[-1]["top_layer"] == order[-1] == "down0_conv1"
  assert rows[0]["spearman_mean"] == pytest.approx(1.0)
  assert rows[-1]["spearman_mean"] < 0.95
  for name in ("robustness.png", "cascade.png"):
    assert (out / name).stat().st_size > 1000


def test_bad_flags_end_in_one_error_line(study_model, tmp_path, capsys):
  from conftest import run_binary
  with pytest.raises(SystemExit) as e:
    run_binary("placement_study", [f"--out_dir={tmp_path}", f"--model_dir={study_model}",
                                   "--shifts=0,four"])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      "error: shifts: 'four' is not a number"]
  with pytest.raises(SystemExit) as e:
    run_binary("placement_study", [f"--out_dir={tmp_path}",
                                   f"--model_dir={tmp_path / 'nothing'}"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / 'nothing'}")


# --- loading ------------------------------------------------------------------------


def test_load_context_errors(study_model, tmp_path):
  import shutil
  from rodent_gbp import bundle as bundle_lib
  from rodent_gbp import fileio
  with pytest.raises(CheckpointError, match="model folder not found"):
    context.load_context(tmp_path / "none")
  with pytest.raises(DataError, match="dataset folder not found"):
    context.load_context(study_model, tmp_path / "no_data")
  copy = tmp_path / "model"
  shutil.copytree(study_model, copy)
  meta = fileio.read_json(copy / bundle_lib.BUNDLE_FILE)
  fileio.write_json(copy / bundle_lib.BUNDLE_FILE, {**meta, "split": None})
  with pytest.raises(CheckpointError, match="no training split"):
    context.load_context(copy, study_model.parent / "data")
  ctx = context.load_context(study_model, animals="test")
  assert sorted(ctx.volumes) == ctx.split["test"]
  assert context.default_data_dir(study_model) == study_model.parent.resolve() / "data"


# --- helpers ------------------------------------------------------------------------


def test_shifted_volume_moves_image_masks_and_truth(ctx):
  v = ctx.test[0]
  moved = placement_study.shifted_volume(v, (3, -5))
  np.testing.assert_array_equal(moved.image[:, 3:, :-5], v.image[:, :-3, 5:])
  np.testing.assert_array_equal(moved.label[:, 3:, :-5], v.label[:, :-3, 5:])
  assert moved.brainmask.dtype == bool and moved.label.dtype == v.label.dtype
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
  np.testing.assert_array_equal(placement_study.artifact_volume(vol, 0.0).image,
                                np.where(mask, image, 0))


def test_diagonal_shifts():
  assert placement_study.diagonal_shifts(0) == [(0, 0)]
  assert placement_study.diagonal_shifts(8) == [(6, 6), (6, -6)]
  assert placement_study.diagonal_shifts(16) == [(11, 11), (11, -11)]


def test_spearman_rows_known_answers():
  a = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
  rho = randomise.spearman_rows(a, np.stack([a[0], -a[1], np.exp(a[2])]))
  np.testing.assert_allclose(rho, [1.0, -1.0, 1.0], atol=1e-12)
  assert np.isnan(randomise.spearman_rows(a[:1], np.zeros_like(a[:1])))[0]


def test_layers_from_top_order():
  names = ["down0_conv1", "down0_conv2", "down1_conv1", "down1_conv2", "bottom_conv1",
           "bottom_conv2", "up1_conv0", "up1_conv1", "up1_conv2", "up0_conv0", "up0_conv1",
           "up0_conv2", "head"]
  order = randomise.layers_from_top({n: None for n in names})
  assert order == ["head", "up0_conv2", "up0_conv1", "up0_conv0", "up1_conv2", "up1_conv1",
                   "up1_conv0", "bottom_conv2", "bottom_conv1", "down1_conv2", "down1_conv1",
                   "down0_conv2", "down0_conv1"]
  with pytest.raises(CheckpointError, match="dense"):
    randomise.layers_from_top({"dense": None})


def test_randomised_params_takes_only_the_named_layers():
  params = {"head": 1, "up0_conv1": 2, "down0_conv1": 3}
  fresh = {"head": 10, "up0_conv1": 20, "down0_conv1": 30}
  assert randomise.randomised_params(params, fresh, ["head", "up0_conv1"]) == {
      "head": 10, "up0_conv1": 20, "down0_conv1": 3}
  assert params == {"head": 1, "up0_conv1": 2, "down0_conv1": 3}


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
  with pytest.raises(UsageError, match="folds"):
    placement_study.fold_seeds(ids, n + 1)


def test_mean_sd_and_floats():
  assert placement_study.mean_sd([1.0, None, 3.0, float("nan")]) == {
      "mean": 2.0, "sd": pytest.approx(np.sqrt(2.0)), "n": 2}
  assert context.floats(["0", "2.5", 4], "shifts") == [0.0, 2.5, 4.0]
  with pytest.raises(UsageError, match="alphas: 'x' is not a number"):
    context.floats(["1", "x"], "alphas")


# --- the saliency binary (Figs. 2-3) ---------------------------------------------------


@pytest.mark.parametrize("flags, want", [
    (["--slices=8,99"], "error: {data}/{animal}: slices [99] are not in 0..15"),
    (["--slices=8", "--shift=64"], "error: shift 64 must be smaller than the slice size 64 x 64"),
    (["--animal=rat99"], "error: {data}/rat99: animal folder not found"),
])
def test_saliency_binary_checks_its_input_before_any_work(study_model, tmp_path, capsys,
                                                          flags, want):
  from conftest import run_binary
  ctx = context.load_context(study_model, animals=())
  with pytest.raises(SystemExit) as e:
    run_binary("saliency", [f"--model_dir={study_model}", f"--out_dir={tmp_path / 'out'}",
                            *flags])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      want.format(data=ctx.data_dir, animal=ctx.split["test"][0])]
  assert not (tmp_path / "out").exists()
