"""Known answers for Guided Backpropagation and the saliency targets."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rodent_gbp import guided
from rodent_gbp import model as model_lib


def _vjp(fn, x, g):
  _, pullback = jax.vjp(fn, x)
  return pullback(g)[0]


# All four sign cases: (x > 0, g > 0), (x > 0, g < 0), (x < 0, g > 0),
# (x < 0, g < 0), plus the boundaries x = 0 and g = 0.
_X = jnp.array([2.0, 3.0, -1.0, -4.0, 0.0, 5.0])
_G = jnp.array([0.5, -2.0, 7.0, -3.0, 1.0, 0.0])


def test_guided_relu_forward_and_four_sign_cases():
  np.testing.assert_array_equal(guided.guided_relu(_X), [2, 3, 0, 0, 0, 5])
  # Only (x > 0, g > 0) passes; x = 0 and g = 0 pass nothing.
  np.testing.assert_array_equal(_vjp(guided.guided_relu, _X, _G), [0.5, 0, 0, 0, 0, 0])
  # The plain ReLU gradient, for contrast, passes a negative g where x > 0.
  np.testing.assert_array_equal(_vjp(jax.nn.relu, _X, _G), [0.5, -2.0, 0, 0, 0, 0])


def test_deconv_relu_ignores_forward_sign():
  np.testing.assert_array_equal(guided.deconv_relu(_X), [2, 3, 0, 0, 0, 5])
  # max(g, 0), whatever x was: (x < 0, g > 0) passes, (x > 0, g < 0) does not.
  np.testing.assert_array_equal(_vjp(guided.deconv_relu, _X, _G), [0.5, 0, 7.0, 0, 1.0, 0])


def test_guided_relu_closed_gate_gives_zero_not_nan():
  g = jnp.array([jnp.inf, -jnp.inf, jnp.nan])
  np.testing.assert_array_equal(_vjp(guided.guided_relu, jnp.array([-1.0, 1.0, -1.0]), g),
                                [0, 0, 0])


class _TinyNet(nn.Module):
  """x (B, 1, 5, 1) -> conv (1x2, 1 channel, no bias) -> activation -> readout.

  The readout is a VALID (1x4) conv to 2 class logits, so the output is a
  single pixel (B, 1, 1, 2).
  """

  num_classes: int = 2
  activation: object = nn.relu

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(1, (1, 2), padding="VALID", use_bias=False, name="conv")(x)
    x = self.activation(x)
    return nn.Conv(2, (1, 4), padding="VALID", name="readout")(x)


_TINY_PARAMS = {
    "conv": {"kernel": jnp.array([1.0, 2.0]).reshape(1, 2, 1, 1)},
    "readout": {
        "kernel": jnp.stack([jnp.zeros(4), jnp.array([1.0, -1.0, 2.0, -2.0])],
                            axis=-1).reshape(1, 4, 1, 2),
        "bias": jnp.array([0.0, 1.0]),
    },
}
_TINY_X = jnp.array([1.0, 0.0, 1.0, -1.0, -1.0]).reshape(1, 1, 5, 1)


def test_exact_gbp_map_of_tiny_net():
  """Hand derivation (x = [1, 0, 1, -1, -1], k = [1, 2], v = [1, -1, 2, -2]).

  Hidden h_j = x_j + 2 x_{j+1} = [1, 2, -1, -3], a = relu(h) = [1, 2, 0, 0].
  Logits z0 = 0, z1 = v . a + 1 = 1 - 2 + 1 = 0, so p1 = sigmoid(z1 - z0) = 1/2
  and d p1 / d z1 = p1 p0 = 1/4; d p1 / d a_j = v_j / 4 = [1/4, -1/4, 1/2, -1/2].
  Gates at h (x>0 / g>0):  (+,+)  (+,-)  (-,+)  (-,-)  -> every sign case.
  * vanilla: g 1[h>0]          = [1/4, -1/4, 0, 0]
  * guided:  g 1[h>0] 1[g>0]   = [1/4,  0,   0, 0]
  * deconv:  max(g, 0)         = [1/4,  0, 1/2, 0]
  Back through the conv: dx_i = dh_i * 1 + dh_{i-1} * 2, so
  * vanilla dx = [1/4, -1/4 + 1/2, -1/2, 0, 0] = [1/4, 1/4, -1/2, 0, 0]
  * guided  dx = [1/4, 1/2, 0, 0, 0]       (differs from vanilla)
  * deconv  dx = [1/4, 1/2, 1/2, 1, 0]
  Class 0 has p0 = 1 - p1, so its gradient at a is -v / 4 =
  [-1/4, 1/4, -1/2, 1/2]: guided dh = [0, 1/4, 0, 0] -> dx = [0, 1/4, 1/2, 0, 0].
  """
  net = _TinyNet()
  want = {
      "vanilla": [0.25, 0.25, -0.5, 0, 0],
      "guided": [0.25, 0.5, 0, 0, 0],
      "deconvnet": [0.25, 0.5, 0.5, 1.0, 0],
  }
  for method, expected in want.items():
    got = guided.saliency(net, _TINY_PARAMS, _TINY_X, method=method, target=1)
    assert got.shape == (1, 1, 5)
    np.testing.assert_allclose(got[0, 0], expected, atol=1e-7, err_msg=method)
  both = guided.saliency(net, _TINY_PARAMS, _TINY_X, method="guided", target="all")
  np.testing.assert_allclose(both[0, :, 0], [[0, 0.25, 0.5, 0, 0], [0.25, 0.5, 0, 0, 0]],
                             atol=1e-7)
  # Deconvnet, class 0: max(-v / 4, 0) = [0, 1/4, 0, 1/2] -> [0, 1/4, 1/2, 1/2, 1].
  both = guided.saliency(net, _TINY_PARAMS, _TINY_X, method="deconvnet", target="all")
  np.testing.assert_allclose(both[0, :, 0], [[0, 0.25, 0.5, 0.5, 1.0], want["deconvnet"]],
                             atol=1e-7)
  # Gradient image over both classes: |class 0| + |class 1|.
  g = guided.gradient_image(net, _TINY_PARAMS, _TINY_X, classes="all")
  np.testing.assert_allclose(g[0, 0], [0.25, 0.75, 0.5, 0, 0], atol=1e-7)


def test_logit_target_of_tiny_net():
  """The same network and input as above, target = the logit z1 of class 1.

  d z1 / d a = v = [1, -1, 2, -2] (4x the probability target's v / 4: here
  p1 = 1/2 and d p1 / d z1 = 1/4 at every output pixel, as there is one).
  * vanilla: v 1[h>0]          = [1, -1, 0, 0] -> dx = [1, 1, -2, 0, 0]
  * guided:  v 1[h>0] 1[v>0]   = [1,  0, 0, 0] -> dx = [1, 2, 0, 0, 0]
  * deconv:  max(v, 0)         = [1,  0, 2, 0] -> dx = [1, 2, 2, 4, 0]
  Class 0's logit has a zero kernel: it does not depend on x at all.
  """
  net = _TinyNet()
  want = {
      "vanilla": [1.0, 1.0, -2.0, 0, 0],
      "guided": [1.0, 2.0, 0, 0, 0],
      "deconvnet": [1.0, 2.0, 2.0, 4.0, 0],
  }
  for method, expected in want.items():
    got = guided.saliency(net, _TINY_PARAMS, _TINY_X, method=method, target="all",
                          score="logit")
    np.testing.assert_allclose(got[0, 1, 0], expected, atol=1e-6, err_msg=method)
    np.testing.assert_array_equal(got[0, 0, 0], np.zeros(5))
    prob = guided.saliency(net, _TINY_PARAMS, _TINY_X, method=method, target=1)
    np.testing.assert_allclose(prob[0, 0], np.asarray(expected) / 4, atol=1e-7, err_msg=method)


class _PixelNet(nn.Module):
  """Per pixel: h = [x, -x], a = activation(h), logits (0, u . a), u = [2, -1].

  1x1 convolutions only, so every pixel is its own small network and the
  output pixels differ in confidence.
  """

  num_classes: int = 2
  activation: object = nn.relu

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(2, (1, 1), use_bias=False, name="conv")(x)
    x = self.activation(x)
    return nn.Conv(2, (1, 1), use_bias=False, name="readout")(x)


_PIXEL_PARAMS = {
    "conv": {"kernel": jnp.array([1.0, -1.0]).reshape(1, 1, 1, 2)},
    "readout": {"kernel": jnp.array([[0.0, 2.0], [0.0, -1.0]]).reshape(1, 1, 2, 2)},
}
_PIXEL_X = np.array([1.0, -2.0, 3.0, -0.5, 6.0], np.float32)


@pytest.mark.parametrize("method", ["vanilla", "guided"])
def test_probability_target_saturates_where_logit_target_does_not(method):
  """z1 = 2 relu(x) - relu(-x), so d z1 / d x = 2 (x > 0) or 1 (x < 0).

  Logit target, class 1: vanilla 2 1[x>0] + 1[x<0]; guided blocks the second
  channel (d z1 / d a_2 = -1 < 0): 2 1[x>0]. Probability target: times
  p1 (1 - p1), p1 = sigmoid(z1) (z0 = 0), which vanishes on the confident
  pixels x = 3, 6. Class 0 (p0 = 1 - p1): minus that through vanilla; for
  guided the backward signal at a is -p1 (1 - p1) [2, -1], so only the
  second channel passes: -p1 (1 - p1) 1[x<0].
  """
  x = jnp.asarray(_PIXEL_X).reshape(1, 1, 5, 1)
  z1 = np.where(_PIXEL_X > 0, 2 * _PIXEL_X, _PIXEL_X)
  p1 = 1 / (1 + np.exp(-z1))
  slope = np.where(_PIXEL_X > 0, 2.0, 1.0 if method == "vanilla" else 0.0)
  logit = guided.saliency(_PixelNet(), _PIXEL_PARAMS, x, method=method, target=1,
                          score="logit")
  np.testing.assert_allclose(logit[0, 0], slope, rtol=1e-6)
  # float32 softmax: 1 - p1 loses digits as p1 -> 1 (relative error ~1e-7 / (1 - p1)).
  prob = guided.saliency(_PixelNet(), _PIXEL_PARAMS, x, method=method, target="all")
  np.testing.assert_allclose(prob[0, 1, 0], p1 * (1 - p1) * slope, rtol=1e-3, atol=1e-6)
  slope0 = -slope if method == "vanilla" else -(_PIXEL_X < 0).astype(np.float32)
  np.testing.assert_allclose(prob[0, 0, 0], p1 * (1 - p1) * slope0, rtol=1e-3, atol=1e-6)
  # At x = 6 (p1 = 0.999994) the probability map has all but vanished.
  assert abs(prob[0, 1, 0, 4]) < 1e-4 * abs(logit[0, 0, 4])


def _init(net, seed, size, bias=0.1):
  """Random params without running Flax's init (whose compilation is slow).

  Kernels ~ N(0, 1 / fan_in) (LeCun, as Flax's default); biases ~ N(0, bias^2)
  rather than Flax's zeros, so that zero padding does not look like a zero
  input and the checks below are general.
  """
  shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, size, size, 1)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "bias":
      return jnp.asarray(bias * rng.standard_normal(leaf.shape), jnp.float32)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.standard_normal(leaf.shape) / np.sqrt(fan_in), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def _small_unet(size=32, seed=0):
  net = model_lib.UNet(features=4, depth=1)
  return net, _init(net, seed, size)


@pytest.fixture(scope="module")
def small():
  net, params = _small_unet()
  images = jax.random.normal(jax.random.key(7), (2, 32, 32, 1))
  return net, params, images


def test_translation_shifts_map():
  """Paper Fig. 3: a translated input gives a translated saliency map.

  The U-Net is shift-equivariant for shifts by multiples of 2**depth = 4
  (max-pool grid), away from the borders: a gradient pixel depends on
  inputs and padding within about twice the receptive-field radius (~27),
  so on 128 x 128 the 8-shifted maps agree exactly with a margin of 48.
  """
  size, shift, margin = 128, 8, 48
  net, params = _small_unet(size)
  x = jax.random.normal(jax.random.key(3), (1, size, size, 1))
  shifted = jnp.zeros_like(x).at[:, shift:, shift:].set(x[:, :-shift, :-shift])
  # One call for both: maps are per image.
  a, b = np.asarray(guided.saliency(net, params, jnp.concatenate([x, shifted]), target=2))
  a_in = a[:-shift, :-shift][margin:-margin, margin:-margin]
  b_in = b[shift:, shift:][margin:-margin, margin:-margin]
  assert a_in.shape == (size - shift - 2 * margin,) * 2
  scale = np.abs(a).max()
  assert np.abs(a_in).max() > 1e-3 * scale  # the checked region is not empty
  np.testing.assert_allclose(b_in, a_in, atol=1e-5 * scale, rtol=0)
  # Near the borders it is not equivariant (padding): the check has teeth.
  assert not np.allclose(a[:-shift, :-shift], b[shift:, shift:], atol=1e-3 * scale)


@pytest.mark.parametrize("method", ["guided", "vanilla"])
def test_all_classes_equal_stacked_single_classes(small, method):
  net, params, images = small
  every = guided.saliency(net, params, images, method=method, target="all")
  assert every.shape == (2, 4, 32, 32)
  single = jnp.stack([guided.saliency(net, params, images, method=method, target=c)
                      for c in range(4)], axis=1)
  np.testing.assert_allclose(every, single, rtol=1e-5, atol=1e-6 * np.abs(single).max())
  if method != "guided":
    return
  vmapped = guided.saliency(net, params, images, method=method, target="all",
                            pullback_mode="vmap")
  np.testing.assert_allclose(vmapped, every, rtol=1e-5, atol=1e-6 * np.abs(single).max())
  picked = guided.saliency(net, params, images, method=method, target=(3, 1))
  np.testing.assert_allclose(picked, single[:, jnp.array([3, 1])], rtol=1e-5,
                             atol=1e-6 * np.abs(single).max())


def test_vanilla_is_the_autodiff_gradient(small):
  net, params, images = small
  fn = lambda x: jnp.sum(jax.nn.softmax(net.apply({"params": params}, x), -1)[..., 2])
  np.testing.assert_allclose(guided.saliency(net, params, images, method="vanilla", target=2),
                             jax.jit(jax.grad(fn))(images)[..., 0], rtol=1e-5, atol=1e-7)


def test_vanilla_logit_target_is_the_autodiff_gradient(small):
  net, params, images = small
  left = jnp.zeros((32, 32), bool).at[:, :16].set(True)
  logits = lambda x: net.apply({"params": params}, x)[..., 2]
  got = guided.saliency(net, params, images, method="vanilla", target=2, score="logit")
  want = jax.jit(jax.grad(lambda x: jnp.sum(logits(x))))(images)[..., 0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  # Over a region: the sum of the logit over the region's pixels.
  got = guided.saliency(net, params, images, method="vanilla", target=2, region=left,
                        score="logit")
  want = jax.jit(jax.grad(lambda x: jnp.sum(jnp.where(left, logits(x), 0.0))))(images)[..., 0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  # A callable target sees the logits.
  got = guided.saliency(net, params, images, method="vanilla", score="logit",
                        target=lambda z: jnp.sum(z[..., 2], (1, 2)))
  np.testing.assert_allclose(got, guided.saliency(net, params, images, method="vanilla",
                                                  target=2, score="logit"),
                             rtol=1e-6, atol=1e-9)


def test_gradient_image_and_logits_share_one_forward(small):
  net, params, images = small
  plain = net.apply({"params": params}, images)  # the ReLU U-Net
  for kwargs in ({}, {"score": "logit", "classes": "all"}):
    g, logits = guided.gradient_image_and_logits(net, params, images, **kwargs)
    assert g.shape == (2, 32, 32) and logits.shape == (2, 32, 32, 4)
    np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())
    want = guided.gradient_image(net, params, images, **kwargs)
    np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-9)
  # Smoothgrad's forward passes see noisy copies; its logits are still the clean ones.
  g, logits = guided.gradient_image_and_logits(net, params, images, method="smoothgrad",
                                               samples=2, rng=jax.random.key(3))
  np.testing.assert_allclose(logits, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())
  np.testing.assert_allclose(g, guided.gradient_image(net, params, images, method="smoothgrad",
                                                      samples=2, rng=jax.random.key(3)),
                             rtol=1e-6, atol=1e-9)


def test_maps_are_per_image(small):
  net, params, images = small
  batch = guided.saliency(net, params, images, target="all")
  one = guided.saliency(net, params, images[1:], target="all")
  np.testing.assert_allclose(batch[1:], one, rtol=1e-5, atol=1e-7)


def test_region_argmax_and_callable_targets(small):
  net, params, images = small
  probs = jax.nn.softmax(net.apply({"params": params}, images), -1)
  full = guided.saliency(net, params, images, target=2)
  # A region splits the pixel sum. The vanilla gradient is linear in the
  # cotangent, so two halves add up to the whole (the guided rule is not:
  # its gate depends on the sign of the backward signal).
  left = jnp.zeros((32, 32), bool).at[:, :16].set(True)
  whole = guided.saliency(net, params, images, method="vanilla", target=2)
  a = guided.saliency(net, params, images, method="vanilla", target=2, region=left)
  b = guided.saliency(net, params, images, method="vanilla", target=("region", ~left, 2))
  np.testing.assert_allclose(a + b, whole, rtol=1e-4, atol=1e-5 * np.abs(whole).max())
  assert not np.allclose(a, whole, atol=1e-3 * np.abs(whole).max())
  everywhere = jnp.ones((2, 32, 32), bool)
  np.testing.assert_allclose(guided.saliency(net, params, images, target=2, region=everywhere),
                             full, rtol=1e-6, atol=1e-9)
  # The argmax target is the region where the network predicts the class.
  pred = jnp.argmax(probs, -1)
  for c in range(4):
    got = guided.saliency(net, params, images, target=("argmax", c))
    want = guided.saliency(net, params, images, target=c, region=pred == c)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
  assert guided.saliency(net, params, images, target=("argmax", "all")).shape == (2, 4, 32, 32)
  # A callable on the softmax output: the class sum written by hand.
  got = guided.saliency(net, params, images, target=lambda p: jnp.sum(p[..., 2], (1, 2)))
  np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-7)


def test_smoothgrad(small):
  net, params, images = small
  # Zero noise: the average of identical maps is the base map.
  base = guided.saliency(net, params, images, method="vanilla")
  np.testing.assert_allclose(
      guided.saliency(net, params, images, method="smoothgrad", noise=0.0, samples=3),
      base, rtol=1e-5, atol=1e-6 * np.abs(base).max())
  noisy = guided.saliency(net, params, images, method="smoothgrad", samples=3,
                          rng=jax.random.key(1))
  assert noisy.shape == (2, 32, 32) and np.all(np.isfinite(noisy))
  # Deterministic in rng; a different rng gives a different map.
  again = guided.saliency(net, params, images, method="smoothgrad", samples=3,
                          rng=jax.random.key(1))
  other = guided.saliency(net, params, images, method="smoothgrad", samples=3,
                          rng=jax.random.key(2))
  np.testing.assert_array_equal(noisy, again)
  assert not np.allclose(noisy, other)


def test_gradient_image_sums_class_magnitudes(small):
  net, params, images = small
  maps = guided.saliency(net, params, images, target="all")
  scale = np.abs(maps).max()
  np.testing.assert_allclose(guided.gradient_image(net, params, images),
                             jnp.sum(jnp.abs(maps[:, 1:]), 1), rtol=1e-5, atol=1e-6 * scale)
  np.testing.assert_allclose(guided.gradient_image(net, params, images, classes="all"),
                             jnp.sum(jnp.abs(maps), 1), rtol=1e-5, atol=1e-6 * scale)
  np.testing.assert_allclose(guided.gradient_image(net, params, images, classes=2),
                             jnp.abs(maps[:, 2]), rtol=1e-5, atol=1e-6 * scale)


def test_compiles_once_per_shape(small):
  net, params, images = small
  guided.saliency(net, params, images, target="all")
  before = guided.saliency_jit._cache_size()
  for seed in range(3):
    x = jax.random.normal(jax.random.key(seed), images.shape)
    guided.saliency(net, params, x, target="all")
  # An equal (not identical) module instance hits the same cache entry, and
  # classes and argmax masking are data, not new compilations.
  guided.saliency(model_lib.UNet(features=4, depth=1), params, images, target="all")
  guided.saliency(net, params, images, target=("argmax", "all"))
  guided.saliency(net, params, images, target=(0, 3, 2, 1))
  assert guided.saliency_jit._cache_size() == before
  # A region (2D or 3D) adds one compilation, whatever its values.
  for region in (jnp.ones((2, 32, 32), bool), jnp.zeros((32, 32), bool)):
    guided.saliency(net, params, images, target=("argmax", "all"), region=region)
  assert guided.saliency_jit._cache_size() == before + 1
  # The logit target is another program.
  guided.saliency(net, params, images, target="all", score="logit")
  assert guided.saliency_jit._cache_size() == before + 2


def test_repeated_call_builds_no_spec_and_does_not_retrace(small, monkeypatch):
  net, params, images = small
  x = jnp.concatenate([images, images[:1]])  # batch 3: a shape no other test compiles
  traces, specs = [], []
  maps, normalise = guided._maps, guided._normalise_target

  def counted_maps(*args, **kwargs):
    traces.append(1)  # Python runs only while jit traces
    return maps(*args, **kwargs)

  def counted_normalise(*args, **kwargs):
    specs.append(1)
    return normalise(*args, **kwargs)

  monkeypatch.setattr(guided, "_maps", counted_maps)
  monkeypatch.setattr(guided, "_normalise_target", counted_normalise)
  guided._cached_target.cache_clear()
  for target in ("all", ("argmax", "all")):
    guided.saliency(net, params, x, target=target)
  guided.gradient_image(net, params, x)
  assert len(traces) == 2 and specs  # saliency once (argmax is data), gradient image once
  traces.clear()
  specs.clear()
  size = guided.saliency_jit._cache_size()
  for seed in range(2):
    y = jax.random.normal(jax.random.key(seed), x.shape)
    for target in ("all", ("argmax", "all")):
      guided.saliency(net, params, y, target=target)
    guided.gradient_image(net, params, y)
  assert traces == [] and specs == []
  assert guided.saliency_jit._cache_size() == size


def test_spec_first_built_under_an_outer_jit_holds_no_tracer(small):
  net, params, images = small
  guided._cached_target.cache_clear()
  inner = jax.jit(lambda x: guided.gradient_image(net, params, x, classes=(3, 1)))(images)
  outer = guided.gradient_image(net, params, images, classes=(3, 1))  # reuses the spec
  np.testing.assert_allclose(outer, inner, rtol=1e-5, atol=1e-6 * np.abs(inner).max())


def test_bad_arguments(small):
  net, params, images = small
  with pytest.raises(ValueError, match="method"):
    guided.saliency(net, params, images, method="lrp")
  with pytest.raises(ValueError, match="out of range"):
    guided.saliency(net, params, images, target=4)
  with pytest.raises(ValueError, match="B, H, W, 1"):
    guided.saliency(net, params, images[..., 0])
  with pytest.raises(ValueError, match="region"):
    guided.saliency(net, params, images, region=jnp.ones((16, 16), bool))
  with pytest.raises(ValueError, match="region"):
    guided.saliency(net, params, images, region=jnp.ones((32,), bool))
  with pytest.raises(ValueError, match="either in target or as region"):
    guided.saliency(net, params, images, target=("region", jnp.ones((32, 32), bool), 1),
                    region=jnp.ones((32, 32), bool))
  with pytest.raises(ValueError, match="callable target"):
    guided.saliency(net, params, images, target=lambda p: p[..., 1],
                    region=jnp.ones((32, 32), bool))
  for fn in (guided.saliency, guided.gradient_image, guided.gradient_image_and_logits):
    with pytest.raises(ValueError, match=r"score must be one of \('probability', 'logit'\)"):
      fn(net, params, images, score="log-odds")


def test_trained_network_differs_from_random(smoke_run, phantom_dir):
  """Sanity check (Adebayo et al.): the map must depend on the learned weights."""
  from rodent_gbp import data
  config = smoke_run.config
  net = model_lib.build_unet(config)
  volume = data.load_animal(phantom_dir / "rat00")
  images = jnp.asarray(volume.image[18:22, ..., None])
  random_params = _init(net, 123, images.shape[1], bias=0.0)
  trained = np.asarray(guided.gradient_image(net, smoke_run.params, images))
  rand = np.asarray(guided.gradient_image(net, random_params, images))
  assert np.all(np.isfinite(trained)) and trained.max() > 0
  unit = lambda g: g.ravel() / np.linalg.norm(g.ravel())
  cosine = float(unit(trained) @ unit(rand))
  assert cosine < 0.9, cosine


def test_saliency_experiment_writes_maps_and_figure(model_dir, phantom_dir, tmp_path):
  import json
  from rodent_gbp.studies import explain
  summary = explain.run(model_dir, tmp_path, data_dir=phantom_dir, animal="rat00",
                        slices=[20], shift=8)
  maps = np.load(tmp_path / "rat00_s20_maps.npy")
  shifted = np.load(tmp_path / "rat00_s20_shift8_maps.npy")
  assert maps.shape == shifted.shape == (4, 96, 96)
  np.testing.assert_allclose(np.load(tmp_path / "rat00_s20_probs.npy").sum(0), 1, atol=1e-5)
  assert (tmp_path / "rat00_s20.png").stat().st_size > 10_000
  assert json.loads((tmp_path / "saliency.json").read_text()) == summary
  # Fig. 3: the translated map is the translated map, up to the border band.
  entry = summary["slices"]["20"]
  assert entry["translation_rel_error_inner"] < 0.05 < entry["translation_rel_error_all"]
