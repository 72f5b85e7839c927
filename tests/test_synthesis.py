"""Known answers of the label-to-image synthesis (rodent_gbp.synthesis).

Three option settings, each compiled once for a (4, 32, 32) batch of 16
labels: OFF (every random stage off, real images always used where present),
TURN (only a forced quarter turn) and ON (every stage on, always masked).
"""

import dataclasses
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rodent_gbp import data
from rodent_gbp import synthesis as sy

B, N, L = 4, 32, 16
# Label -> group; groups -> target class (head tissue is background to the model).
GROUPS = np.array([0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 5, 5, 0, 5], np.int32)
GROUP_TARGET = np.array([0, 1, 2, 3, 4, 0], np.int32)
TABLE = GROUP_TARGET[GROUPS]

OFF = sy.SynthOptions(num_labels=L, spatial=False, blur=False, low_res=False, bias=False,
                      gamma=False, noise=False, p_real=1.0, p_masked=0.0)
TURN = dataclasses.replace(OFF, spatial=True, p_turn=1.0, rotate_deg=0.0, max_zoom=1.0,
                           p_flip=0.0, translate=0.0, p_real=0.0)
ON = sy.SynthOptions(num_labels=L, p_masked=1.0)
HAS_IMAGE = np.array([False, False, True, True])

_run = jax.jit(sy.synthesize, static_argnames="options")


def _inputs() -> dict[str, np.ndarray]:
  """Blocky label maps (an 8 x 8 grid of random labels, 4 px cells, a 0 border),
  their targets through TABLE, zoom 1 and random real images."""
  rng = np.random.default_rng(0)
  cells = rng.integers(0, L, (B, 8, 8)).astype(np.int32)
  labels = np.kron(cells, np.ones((1, 4, 4), np.int32))
  labels[:, :4], labels[:, -4:], labels[:, :, :4], labels[:, :, -4:] = 0, 0, 0, 0
  return dict(labels=labels, target=TABLE[labels], zoom=np.ones(B, np.float32),
              image=rng.random((B, N, N)).astype(np.float32) + 0.1)


def _call(options, key=0, **inputs):
  out = _run(jax.random.key(key), inputs["labels"], inputs["target"], inputs["zoom"],
             jnp.asarray(GROUPS), options, inputs["image"], HAS_IMAGE)
  return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def inputs():
  return _inputs()


@pytest.fixture(scope="module")
def off(inputs):
  return _call(OFF, **inputs)


@pytest.fixture(scope="module")
def on(inputs):
  return [_call(ON, key, **inputs) for key in (0, 0, 1)]


def test_each_label_takes_its_drawn_intensity(inputs, off):
  texture = OFF.texture
  before = off["image"] * off["scale"][:, None, None]     # undo the normalisation
  checked = 0
  for b in np.flatnonzero(~HAS_IMAGE):
    for label in range(L):
      voxels = before[b][off["labels"][b] == label]
      if voxels.size == 0:
        continue
      mean = off["intensities"][b, label]
      # Clipping at 0 biases a near-black label's mean by up to 0.4 texture sd.
      assert abs(voxels.mean() - mean) < 0.5 * texture + 4 * texture / np.sqrt(voxels.size)
      assert np.all(np.abs(voxels - mean) < 4.5 * texture)
      checked += 1
  assert checked >= 10
  assert np.all((off["intensities"] >= 0) & (off["intensities"] <= 1))
  # A slice with a real image (p_real 1) shows it, untextured.
  for b in np.flatnonzero(HAS_IMAGE):
    np.testing.assert_allclose(off["image"][b] * off["scale"][b], inputs["image"][b],
                               rtol=1e-5)


def test_keys_decide_the_images(inputs, on, tmp_path):
  first, again, other = on
  np.testing.assert_array_equal(first["image"], again["image"])
  assert not np.array_equal(first["image"], other["image"])
  # The same key in a fresh process.
  np.savez(tmp_path / "inputs.npz", **inputs)
  script = f"""
import jax, numpy as np
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", {str(_cache_dir())!r})
from rodent_gbp import synthesis as sy
from rodent_gbp.synthesis import SynthOptions
d = np.load({str(tmp_path / "inputs.npz")!r})
out = jax.jit(sy.synthesize, static_argnames="options")(
    jax.random.key(0), d["labels"], d["target"], d["zoom"],
    np.array({GROUPS.tolist()}, np.int32), {ON!r}, d["image"], np.array({HAS_IMAGE.tolist()}))
np.save({str(tmp_path / "out.npy")!r}, np.asarray(out["image"]))
"""
  root = pathlib.Path(__file__).resolve().parent.parent
  subprocess.run([sys.executable, "-c", script], check=True, cwd=root, env=dict(os.environ),
                 timeout=120)
  np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), first["image"])


def _cache_dir() -> str:
  return jax.config.jax_compilation_cache_dir or ""


def test_spatial_transform_keeps_labels_and_target_together(inputs, off, on):
  for out in on:
    np.testing.assert_array_equal(TABLE[out["labels"]], out["target"])
  assert not np.array_equal(on[0]["labels"], inputs["labels"])
  # zoom 1, spatial off: unchanged.
  np.testing.assert_array_equal(off["labels"], inputs["labels"])
  np.testing.assert_array_equal(off["target"], inputs["target"])


def test_zoom_shrinks_the_content(inputs):
  out = _call(OFF, **{**inputs, "zoom": np.full(B, 0.5, np.float32)})
  np.testing.assert_array_equal(TABLE[out["labels"]], out["target"])
  ratio = (out["labels"] > 0).sum() / (inputs["labels"] > 0).sum()
  assert 0.2 < ratio < 0.3                                  # area scales by 0.5 ** 2


def test_forced_quarter_turn_is_rot90(inputs):
  out = _call(TURN, **inputs)
  # Counter-clockwise, as np.rot90(x) with its default k=1 and axes (0, 1).
  for key in ("labels", "target"):
    np.testing.assert_array_equal(out[key], np.rot90(inputs[key], 1, axes=(1, 2)))


def test_robust_max_normalise_matches_numpy(on):
  rng = np.random.default_rng(1)
  images = np.stack([rng.random((N, N)), rng.lognormal(0, 1, (N, N)),
                     np.where(rng.random((N, N)) < 0.7, 0, rng.random((N, N)) * 5),
                     np.zeros((N, N)), np.full((N, N), 3.0)]).astype(np.float32)
  got, scale = jax.jit(jax.vmap(sy.robust_max_normalise))(images)
  for b, image in enumerate(images):
    ref, params = data.normalise_intensity(image)
    np.testing.assert_allclose(float(scale[b]), params["scale"], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got[b]), ref, rtol=1e-5, atol=1e-7)
  # The synthesised images come out normalised.
  for image in on[0]["image"]:
    assert abs(data.normalise_intensity(image)[1]["scale"] - 1.0) < 1e-3


def test_masking_zeroes_everything_outside_the_brain(on):
  for out in on:
    assert np.all(out["image"][out["target"] == 0] == 0)
    assert out["image"][out["target"] > 0].max() > 0


def test_all_stages_on_are_finite_and_shaped(on):
  out = on[0]
  assert out["image"].shape == (B, N, N) and out["image"].dtype == np.float32
  assert out["target"].shape == (B, N, N) and out["target"].dtype == np.int32
  assert out["intensities"].shape == (B, L) and out["intensities"].dtype == np.float32
  assert np.all(np.isfinite(out["image"])) and np.all(out["image"] >= 0)


def test_field_of_view_cut_is_a_box_with_nothing_beyond(inputs):
  """p_crop 1: image, target and labels are zero outside one axis-aligned box
  per slice (the rest as without the cut); the cut is off by default."""
  crop = dataclasses.replace(OFF, p_crop=1.0, max_crop=0.4)
  labels = np.where(inputs["labels"] == 0, 1, inputs["labels"])   # no label 0 anywhere
  filled = {**inputs, "labels": labels, "target": TABLE[labels]}
  cut = 0
  for key in range(4):
    out = _call(crop, key, **filled)
    full = _call(OFF, key, **filled)
    for b in range(B):
      kept = out["labels"][b] == full["labels"][b]
      box_r = np.flatnonzero(kept.any(axis=1))
      box_c = np.flatnonzero(kept.any(axis=0))
      # What is kept is one box; outside it everything is 0, inside it untouched.
      inside = np.zeros((N, N), bool)
      inside[box_r.min():box_r.max() + 1, box_c.min():box_c.max() + 1] = True
      np.testing.assert_array_equal(kept, inside)
      np.testing.assert_array_equal(out["image"][b][inside], full["image"][b][inside])
      np.testing.assert_array_equal(out["target"][b][inside], full["target"][b][inside])
      assert np.all(out["image"][b][~inside] == 0) and np.all(out["target"][b][~inside] == 0)
      assert np.all(out["labels"][b][~inside] == 0)
      cut += int((~kept).any())
  assert cut > 0
  assert OFF.p_crop == 0.0 and sy.SynthOptions().p_crop == 0.0
