"""The brain extractor trained from label maps (``training.extractor_synth``)."""

import dataclasses

import jax
import numpy as np

from rodent_gbp import data
from rodent_gbp.datasets import label_maps
from rodent_gbp.training import extractor_synth


def _toy_heads(n=16, size=16, seed=0):
  """Head classes around a brain of unknown tissue (code 4), as a real head's map."""
  rng = np.random.default_rng(seed)
  labels = np.zeros((n, size, size), np.int16)
  for i in range(n):
    c = rng.integers(6, 10)
    labels[i, 1:15, 1:15] = 2                                   # head class
    labels[i, c - 4:c + 4, 4:12] = label_maps.BRAIN_UNKNOWN
  target = np.where(labels == label_maps.BRAIN_UNKNOWN, 4, 0).astype(np.uint8)
  return label_maps.SliceSet(labels, target, np.zeros(labels.shape, np.float32),
                             np.zeros(n, bool), np.full(n, 0.7, np.float32),
                             np.full(n, "toy"))


def test_rat_sized_copies_scale_the_zoom_only():
  s = _toy_heads(n=4)
  both = extractor_synth.with_rat_sizes(s, scale=1.7)
  assert len(both) == 8
  np.testing.assert_array_equal(both.labels[4:], s.labels)
  np.testing.assert_allclose(both.zoom[4:], 0.7 * 1.7, rtol=1e-6)
  np.testing.assert_allclose(both.zoom[:4], 0.7)
  assert all(str(x).endswith("@rat") for x in both.subject[4:])


def test_finetune_slices_are_half_real_mouse_sized_heads():
  s = _toy_heads(n=6)
  s = dataclasses.replace(s, has_image=np.array([True, True, False, False, False, False]))
  both = extractor_synth.with_rat_sizes(s)            # rat copies of the real ones too
  ft = extractor_synth.finetune_slices(both, seed=1)
  real = ft.has_image & ~np.char.endswith(ft.subject.astype(str), "@rat")
  assert len(ft) == 4 and real.sum() == 2
  np.testing.assert_allclose(ft.zoom[real], 0.7)       # the real ones at their own size
  again = extractor_synth.finetune_slices(both, seed=1)
  np.testing.assert_array_equal(again.zoom, ft.zoom)   # seeded


def _volume(slices, mask):
  return data.Volume(animal_id="toy", image=slices, label=None, brainmask=mask, meta={},
                     normalisation={}, affine=np.diag([0.25, 1.0, 0.25, 1.0]),
                     shape=slices.shape, orientation=None, plane="coronal")


def test_synth_then_finetune_from_its_params(tmp_path):
  """One epoch from label maps (finite loss, last epoch kept without validation);
  a fine-tune at learning rate 0 keeps the params it starts from exactly, and one
  at the usual rate moves them and is selected on the validation volume."""
  slices = _toy_heads()
  config = extractor_synth.synth_extractor_config(features=2, depth=2, epochs=1,
                                                  batch_size=8)
  with jax.numpy_dtype_promotion("standard"):   # optax's Adam count, as the binaries run
    synth = extractor_synth.train(slices, [], config, extractor_synth.OPTIONS,
                                  checkpoint_dir=tmp_path / "a")
    assert np.isfinite(synth.history[0]["loss"]) and np.isnan(synth.best_val_dice)
    frozen = extractor_synth.train(slices, [], dataclasses.replace(config, learning_rate=0.0),
                                   extractor_synth.OPTIONS, init_params=synth.params,
                                   checkpoint_dir=tmp_path / "b")
    for a, b in zip(jax.tree.leaves(frozen.params), jax.tree.leaves(synth.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    image = (slices.labels[:4] > 0).astype(np.float32)
    val = [_volume(image, slices.target[:4] > 0)]
    tuned = extractor_synth.train(slices, val, config, dataclasses.replace(
        extractor_synth.OPTIONS, p_real=0.5), init_params=synth.params,
        checkpoint_dir=tmp_path / "c")
  assert 0.0 <= tuned.best_val_dice <= 1.0 and "val_dice" in tuned.history[0]
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(tuned.params), jax.tree.leaves(synth.params)))
