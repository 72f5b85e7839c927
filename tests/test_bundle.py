"""The model bundle: save_bundle / load_bundle round trip and damaged folders."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

from conftest import synthetic_bundle
from rodent_gbp import bundle as bundle_lib
from rodent_gbp import configs
from rodent_gbp import model as model_lib
from rodent_gbp.errors import CheckpointError

H = W = 16


def _bundle():
  rng = np.random.default_rng(0)
  masks = rng.random((3, 2, H, W)) > 0.5
  masks[:, :, :2] = True                        # every animal has brain
  masks[1, :, :4] = True                        # animal 1 has the median volume
  masks[2] = True
  grads = rng.random(masks.shape).astype(np.float32)
  app = np.zeros(masks.shape, np.float32)
  app[1] = rng.normal(size=(2, H, W))
  b = synthetic_bundle(masks, gradients=grads, appearance=app, features=2, depth=2, seed=3)
  b.bank.displacements = np.array([[1.0, -2.0], [0.0, 0.0], [np.nan, np.nan]])
  b.split = {"train": ["a0", "a1", "a2"], "val": [], "test": ["t"]}
  b.info = {"note": "synthetic"}
  return b


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  b = _bundle()
  folder = tmp_path_factory.mktemp("bundle") / "model"
  assert bundle_lib.save_bundle(folder, b) == folder
  return b, folder


def test_round_trip_is_exact(saved):
  b, folder = saved
  assert sorted(p.name for p in folder.iterdir()) == [
      "bundle.json", "templates.npz", "tissue.msgpack"]
  back = bundle_lib.load_bundle(folder)
  # Params: the same tree, every leaf bitwise equal (same dtype, same bytes).
  want, got = b.network().params, back.network().params
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for x, y in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()
  assert back.network().config == b.network().config
  # The bank, every array.
  for name in ("masks", "gradients", "brain_volumes", "displacements", "appearance",
               "appearance_available"):
    np.testing.assert_array_equal(getattr(back.bank, name), getattr(b.bank, name), name)
  assert back.bank.animal_ids == b.bank.animal_ids
  assert back.bank.reference == b.bank.reference == 1
  assert back.normalisation == b.normalisation
  np.testing.assert_array_equal(back.voxel_size, b.voxel_size)
  assert back.voxel_size.dtype == np.float64
  assert back.voxel_size_source == b.voxel_size_source
  assert back.split == b.split and back.info == b.info
  assert back.slice_shape == (H, W)


def test_unknown_network_is_named(saved):
  _, folder = saved
  with pytest.raises(CheckpointError, match="no 'brain' network"):
    bundle_lib.load_bundle(folder).network("brain")


def _copy(saved, tmp_path):
  _, folder = saved
  out = tmp_path / "model"
  shutil.copytree(folder, out)
  return out


def _edit_json(folder, **changes):
  meta = json.loads((folder / "bundle.json").read_text())
  for k, v in changes.items():
    meta[k] = v
  (folder / "bundle.json").write_text(json.dumps(meta))
  return meta


def test_missing_folder_and_bundle_json(saved, tmp_path):
  with pytest.raises(CheckpointError, match="model folder not found") as e:
    bundle_lib.load_bundle(tmp_path / "nowhere")
  assert str(tmp_path / "nowhere") in str(e.value)
  folder = _copy(saved, tmp_path)
  (folder / "bundle.json").unlink()
  with pytest.raises(CheckpointError, match="not found") as e:
    bundle_lib.load_bundle(folder)
  assert str(folder / "bundle.json") in str(e.value)


def test_corrupt_bundle_json(saved, tmp_path):
  folder = _copy(saved, tmp_path)
  (folder / "bundle.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="corrupt") as e:
    bundle_lib.load_bundle(folder)
  assert str(folder / "bundle.json") in str(e.value)


def test_corrupt_msgpack(saved, tmp_path):
  folder = _copy(saved, tmp_path)
  raw = (folder / "tissue.msgpack").read_bytes()
  (folder / "tissue.msgpack").write_bytes(raw[: len(raw) // 2])
  with pytest.raises(CheckpointError, match="corrupt params") as e:
    bundle_lib.load_bundle(folder)
  assert str(folder / "tissue.msgpack") in str(e.value)
  (folder / "tissue.msgpack").unlink()
  with pytest.raises(CheckpointError, match="not found") as e:
    bundle_lib.load_bundle(folder)
  assert str(folder / "tissue.msgpack") in str(e.value)


def test_params_of_another_architecture(saved, tmp_path):
  folder = _copy(saved, tmp_path)
  meta = json.loads((folder / "bundle.json").read_text())
  # Another depth: the params tree has other blocks.
  meta["networks"]["tissue"]["config"]["depth"] = 1
  (folder / "bundle.json").write_text(json.dumps(meta))
  with pytest.raises(CheckpointError, match="do not fit the U-Net") as e:
    bundle_lib.load_bundle(folder)
  assert str(folder / "tissue.msgpack") in str(e.value)


def test_params_of_another_width(saved, tmp_path):
  folder = _copy(saved, tmp_path)
  config = configs.override(configs.get_config("smoke"), features=4, depth=2)
  shapes = jax.eval_shape(lambda: model_lib.init_params(
      model_lib.build_unet(config), jax.random.key(0), (H, W)))
  params = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  import flax.serialization
  (folder / "tissue.msgpack").write_bytes(flax.serialization.to_bytes(params))
  with pytest.raises(CheckpointError, match="do not fit") as e:
    bundle_lib.load_bundle(folder)
  assert str(folder / "tissue.msgpack") in str(e.value)


def test_bank_of_the_wrong_slice_shape(saved, tmp_path):
  b, folder = saved
  folder = _copy(saved, tmp_path)
  bank = b.bank
  # 18 x 18 slices: not a multiple of 4 = 2**depth.
  pad = lambda x: np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
  import dataclasses
  dataclasses.replace(bank, masks=pad(bank.masks), gradients=pad(bank.gradients),
                      appearance=pad(bank.appearance)).save(folder / "templates.npz")
  with pytest.raises(CheckpointError, match="do not fit the U-Net of depth 2") as e:
    bundle_lib.load_bundle(folder)
  assert str(folder / "templates.npz") in str(e.value)


def test_damaged_bank_and_metadata(saved, tmp_path):
  folder = _copy(saved, tmp_path)
  (folder / "templates.npz").write_bytes(b"PK\x03\x04 not a zip")
  with pytest.raises(CheckpointError, match="corrupt template bank") as e:
    bundle_lib.load_bundle(folder)
  assert str(folder / "templates.npz") in str(e.value)
  (folder / "templates.npz").unlink()
  with pytest.raises(CheckpointError, match="template bank not found"):
    bundle_lib.load_bundle(folder)
  folder = _copy(saved, tmp_path / "b")
  _edit_json(folder, voxel_size=[0.3, -1.0, 0.3])
  with pytest.raises(CheckpointError, match="voxel_size"):
    bundle_lib.load_bundle(folder)
  _edit_json(folder, voxel_size=[0.3, 0.5, 0.3], normalisation={"method": "zscore"})
  with pytest.raises(CheckpointError, match="unknown normalisation method"):
    bundle_lib.load_bundle(folder)
  _edit_json(folder, format=99)
  with pytest.raises(CheckpointError, match="unknown bundle format"):
    bundle_lib.load_bundle(folder)


def test_smoke_model_folder_is_a_bundle(smoke_bundle, smoke_run):
  """The session's model folder (conftest) loads as the main job writes it."""
  net = smoke_bundle.network("tissue")
  assert net.config == smoke_run.config
  for x, y in zip(jax.tree_util.tree_leaves(smoke_run.params),
                  jax.tree_util.tree_leaves(net.params)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
  bank = smoke_bundle.bank
  assert bank.animal_ids == smoke_run.split["train"]
  assert bank.appearance is not None and bank.appearance_available[bank.reference]
  assert smoke_bundle.split == smoke_run.split
  np.testing.assert_allclose(smoke_bundle.voxel_size, [0.375, 0.5, 0.375])
