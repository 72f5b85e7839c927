"""The supervised extractor: post-processing, HD95, a few training steps, the placer.

One tiny training run (32 x 32 disks in noise, U-Net features 4 x depth 2, a
few steps) is shared by the module.
"""

import pathlib

import jax
import numpy as np
from scipy import ndimage
import pytest

from rodent_gbp.training import flags as training_flags
from rodent_gbp import extractor
from rodent_gbp import bundle as bundle_lib
from rodent_gbp import data
from rodent_gbp import metrics
from rodent_gbp import placement
from rodent_gbp.training import extraction
from rodent_gbp.errors import CheckpointError

N = 32


def _disk(r: float, cy: float, cx: float, n: int = N) -> np.ndarray:
  y, x = np.mgrid[:n, :n]
  return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def _volume(animal: str, seed: int, slices: int = 8) -> data.Volume:
  """Disks of varying radius and place in noise with a bright 'skull' ring."""
  rng = np.random.default_rng(seed)
  masks, images = [], []
  for _ in range(slices):
    r, cy, cx = rng.uniform(6, 10), rng.uniform(13, 19), rng.uniform(13, 19)
    m = _disk(r, cy, cx)
    ring = _disk(r + 3, cy, cx) & ~_disk(r + 1.5, cy, cx)
    images.append(0.8 * m + 1.2 * ring + 0.1 * rng.standard_normal((N, N)))
    masks.append(m)
  affine = np.diag([0.25, 1.0, 0.25, 1.0])
  return data.Volume(animal_id=animal, image=np.asarray(images, np.float32), label=None,
                     brainmask=np.asarray(masks), meta={},
                     normalisation={"method": "robust_max", "percentile": 99.0, "scale": 1.0},
                     affine=affine, shape=(N, slices, N), orientation=np.zeros((3, 2)))


@pytest.fixture(scope="module")
def trained():
  train = [_volume("a", 0), _volume("b", 1)]
  val = [_volume("c", 2)]
  config = extraction.extractor_config(features=4, depth=2, epochs=4, batch_size=4,
                                       learning_rate=1e-2, decay=0.0)
  # optax.adam's bias correction (``decay ** count``, a Python float to an
  # int32 power) has no promotion path under the suite's strict dtype mode.
  with jax.numpy_dtype_promotion("standard"):
    result = extraction.train_extractor(train, val, config, log=lambda _: None)
  return train, val, result


def test_training_reduces_the_loss_and_keeps_the_best_epoch(trained):
  _, _, result = trained
  losses = [h["loss"] for h in result.history]
  assert len(losses) == 4 and losses[-1] < losses[0]
  vals = [h["val_dice"] for h in result.history]
  # The best validation Dice, the later epoch on a tie (trainer.kept_index's rule).
  assert result.kept_epoch == len(vals) - int(np.argmax(vals[::-1]))
  assert result.best_val_dice == pytest.approx(max(vals))


def test_postprocess_keeps_the_largest_component_and_fills_holes():
  mask = np.zeros((3, 12, 12), bool)
  mask[:, 2:9, 2:9] = True                  # the brain, 3 slices deep
  mask[1, 4:7, 4:7] = False                 # a hole inside one slice
  mask[0, 10:12, 10:12] = True              # a speck, not connected
  cavity = np.zeros((5, 9, 9), bool)
  cavity[:, 1:8, 1:8] = True
  cavity[1:4, 3:6, 3:6] = False             # closed in 3D, open in no slice? (slices 0, 4 shut it)
  out = extractor.postprocess(mask)
  expect = np.zeros_like(mask)
  expect[:, 2:9, 2:9] = True
  np.testing.assert_array_equal(out, expect)
  np.testing.assert_array_equal(extractor.postprocess(cavity), np.pad(
      np.ones((5, 7, 7), bool), ((0, 0), (1, 1), (1, 1))))
  assert not extractor.postprocess(np.zeros((2, 4, 4), bool)).any()


def test_postprocess_keeps_a_brain_cut_in_two_by_an_empty_slice():
  mask = np.zeros((9, 16, 16), bool)
  mask[4:9, 3:13, 3:13] = True              # the larger part: 5 slices of 100
  mask[0:2, 4:12, 4:12] = True              # cut off by empty slices 2-3: 128 voxels (>= 10 %)
  mask[5:7, 14:16, 0:16] = True             # beside the brain on its own slices: 64, dropped
  mask[2, 0:2, 0:2] = True                  # a speck on a slice of its own: 4 (< 10 %), dropped
  expect = np.zeros_like(mask)
  expect[4:9, 3:13, 3:13] = True
  expect[0:2, 4:12, 4:12] = True
  np.testing.assert_array_equal(extractor.postprocess(mask), expect)
  # Brute force: the kept set by the rule's definition, component by component.
  labels, n = ndimage.label(mask)
  sizes = [(labels == c).sum() for c in range(1, n + 1)]
  big = 1 + int(np.argmax(sizes))
  big_slices = (labels == big).any(axis=(1, 2))
  kept = [c for c in range(1, n + 1) if c == big or (
      sizes[c - 1] >= extractor.SPLIT_FRACTION * sizes[big - 1]
      and not ((labels == c).any(axis=(1, 2)) & big_slices).any())]
  np.testing.assert_array_equal(extractor.brain_components(mask), np.isin(labels, kept))
  # The same cut-off part under 10 % of the larger part is dropped.
  small = mask.copy()
  small[0:2] = False
  small[0, 6:8, 6:8] = True
  only = np.zeros_like(mask)
  only[4:9, 3:13, 3:13] = True
  np.testing.assert_array_equal(extractor.postprocess(small), only)


def test_hd95_known_answers():
  a, b = np.zeros((1, 9), bool), np.zeros((1, 9), bool)
  a[0, 0], b[0, 4] = True, True
  # Single voxels 4 columns apart at 0.25 mm: every distance is 1 mm.
  assert metrics.hd95(a, b, (1.0, 0.25)) == pytest.approx(1.0)
  disk = _disk(10, 31.5, 31.5, 64)
  assert metrics.hd95(disk, disk, (1.0, 1.0)) == 0.0
  # Concentric disks of radii 10 and 14: every boundary distance is about 4.
  assert metrics.hd95(_disk(14, 31.5, 31.5, 64), disk, (1.0, 1.0)) == pytest.approx(
      4.0, abs=1.0)
  # Concentric squares 20 and 30 wide: inner boundary 5 from the outer everywhere;
  # outer corners up to 5 sqrt(2): brute-force oracle of the pooled percentile.
  big, small = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
  big[5:35, 5:35], small[10:30, 10:30] = True, True
  eb, es = metrics.boundary(big), metrics.boundary(small)
  pb, ps = np.argwhere(eb) * [1.0, 0.5], np.argwhere(es) * [1.0, 0.5]
  d = np.sqrt(((pb[:, None] - ps[None]) ** 2).sum(-1))
  oracle = np.percentile(np.concatenate([d.min(1), d.min(0)]), 95)
  assert metrics.hd95(big, small, (1.0, 0.5)) == pytest.approx(oracle)
  assert metrics.hd95(big, np.zeros_like(big), (1, 1)) == float("inf")


def test_placer_refuses_a_bundle_without_an_extractor(tmp_path, trained):
  from conftest import synthetic_bundle
  b = synthetic_bundle(np.zeros((1, 2, 16, 16), bool) | _disk(5, 8, 8, 16)[None, None])
  bundle_lib.save_bundle(tmp_path / "tissue_only", b)
  loaded = bundle_lib.load_bundle(tmp_path / "tissue_only")
  with pytest.raises(CheckpointError, match=r"tissue_only/bundle.json.*'extractor'"):
    placement.check_placer("supervised", loaded)
  with pytest.raises(CheckpointError, match="bundle.json"):
    placement.place("supervised", np.zeros((2, 16, 16), np.float32), bundle=loaded)


def test_extractor_bundle_round_trip_and_placer(tmp_path, trained):
  train, val, result = trained
  folder = bundle_lib.save_bundle(tmp_path / "ext", extraction.make_bundle(
      result, train, {"train": ["a", "b"], "val": ["c"], "test": []}))
  loaded = bundle_lib.load_bundle(folder)
  assert loaded.bank is None and loaded.slice_shape == (N, N)
  assert set(loaded.networks) == {"extractor"}
  v = val[0]
  placed = placement.place("supervised", v.image, bundle=loaded)
  direct = extractor.extract_with(result.params, v.image, model=result.network().model)
  np.testing.assert_array_equal(placed.mask, direct["mask"])
  assert placed.mask.dtype == bool and placed.mask.shape == v.image.shape
  # The post-processed mask is one component without holes.
  assert np.array_equal(extractor.postprocess(placed.mask), placed.mask)
  # Rotating the input a quarter turn rotates the (orientation-averaged) probability.
  turned = extractor.extract_with(result.params, np.rot90(v.image, 1, axes=(1, 2)).copy(),
                                   model=result.network().model)
  np.testing.assert_allclose(turned["probability"],
                             np.rot90(direct["probability"], 1, axes=(1, 2)), atol=1e-5)
  # Adding the extractor to an existing bundle keeps its tissue network.
  from conftest import synthetic_bundle
  b = synthetic_bundle(np.zeros((1, 2, N, N), bool) | _disk(5, 8, 8)[None, None])
  b.voxel_size = loaded.voxel_size
  b.normalisation = loaded.normalisation
  bundle_lib.save_bundle(tmp_path / "both", b)
  extraction.add_to_bundle(tmp_path / "both", result, train, None)
  both = bundle_lib.load_bundle(tmp_path / "both")
  assert set(both.networks) == {"tissue", "extractor"}


# --- the binaries' shared flags and split reading ---------------------------------------


def test_extractor_flags_default_to_the_measured_setting():
  from absl import flags
  from conftest import imported_binary
  from rodent_gbp.studies import ship
  from rodent_gbp import cli
  required = {"train_extractor": ["--data_dir=x", "--model_dir=y"],
              "extraction_cv": ["--workdir=x"]}
  for script, extra in required.items():
    with imported_binary(script):
      flags.FLAGS([script, "--seed=3", "--features=4", *extra])
      config, options = training_flags.extractor_settings(flags.FLAGS)
      flags.FLAGS.unparse_flags()
    assert (config.depth, config.epochs, config.batch_size) == (
        ship.EXTRACTOR["depth"], ship.EXTRACTOR["epochs"], ship.EXTRACTOR["batch_size"])
    assert (config.features, config.seed, config.num_classes) == (4, 3, 2)
    assert options.resolution == 1.5
  assert extraction.extractor_config().features == ship.EXTRACTOR["features"]


def test_split_from_a_file_a_fold_or_neither(tmp_path):
  import json
  from rodent_gbp.errors import DataError, UsageError
  from rodent_gbp.studies import crossval
  folds_path = (pathlib.Path(__file__).resolve().parent.parent / "experiments" / "folds"
                / "mouse_epi.json")
  want = json.loads(folds_path.read_text())["folds"][2]
  assert crossval.split_from(None, 2, folds_path) == (want, f"{folds_path} fold 2")
  split = {"train": ["a"], "val": [], "test": ["b"]}
  f = tmp_path / "s.json"
  f.write_text(json.dumps(split))
  assert crossval.split_from(f, None, folds_path) == (split, str(f))
  assert crossval.split_from(None, None, folds_path) == (None, "none given")
  with pytest.raises(UsageError, match="at most one"):
    crossval.split_from(f, 0, folds_path)
  with pytest.raises(UsageError, match="has folds 0..4"):
    crossval.split_from(None, 5, folds_path)
  with pytest.raises(DataError, match="missing.json: split file not found"):
    crossval.split_from(tmp_path / "missing.json", None, folds_path)
  (tmp_path / "bad.json").write_text("{no")
  with pytest.raises(DataError, match="bad.json: not a JSON split file"):
    crossval.split_from(tmp_path / "bad.json", None, folds_path)
