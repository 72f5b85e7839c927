"""U-Net output shape, parameter count (by formula) and input checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from rodent_gbp import configs
from rodent_gbp import model as model_lib


def _conv(cin: int, cout: int, k: int = 3) -> int:
  """Weights plus biases of a k x k convolution."""
  return k * k * cin * cout + cout


def expected_params(features: int, depth: int, num_classes: int = 4,
                    in_channels: int = 1) -> int:
  """Parameter count of model.UNet, level by level (see its docstring)."""
  total, cin = 0, in_channels
  for level in range(depth):                      # contraction: conv, conv
    c = features * 2**level
    total += _conv(cin, c) + _conv(c, c)
    cin = c
  c = features * 2**depth                         # bottleneck
  total += _conv(cin, c) + _conv(c, c)
  for level in reversed(range(depth)):            # expansion
    c = features * 2**level
    total += _conv(2 * c, c)                      # conv after upsampling
    total += _conv(2 * c, c) + _conv(c, c)        # after concatenating the skip
  return total + _conv(features, num_classes, k=1)  # 1x1 head


@pytest.mark.parametrize("features,depth,size", [(16, 3, 16), (4, 2, 12), (2, 1, 6)])
def test_shape_and_param_count(features, depth, size):
  model = model_lib.UNet(features=features, depth=depth)
  shape = (size, size + 2**depth)  # rectangular on purpose
  # eval_shape: shapes without compiling the (large) default network.
  params = jax.eval_shape(lambda: model_lib.init_params(model, jax.random.PRNGKey(0), shape))
  assert model_lib.count_params(params) == expected_params(features, depth)
  x = jax.ShapeDtypeStruct((2, *shape, 1), jnp.float32)
  logits = jax.eval_shape(lambda p, x: model.apply({"params": p}, x), params, x)
  assert logits.shape == (2, *shape, 4) and logits.dtype == jnp.float32


def test_small_unet_runs():
  model = model_lib.UNet(features=2, depth=1)
  params = model_lib.init_params(model, jax.random.PRNGKey(0), (6, 8))
  logits = model.apply({"params": params}, jnp.ones((2, 6, 8, 1), jnp.float32))
  assert logits.shape == (2, 6, 8, 4)
  assert bool(jnp.all(jnp.isfinite(logits)))
  # Same input slice twice: same output (no batch coupling, no normalisation layers).
  assert bool(jnp.all(logits[0] == logits[1]))


def test_default_count_is_documented_number():
  config = configs.get_config("paper")
  assert expected_params(config.features, config.depth) == 535_556
  params = jax.eval_shape(lambda: model_lib.init_params(
      model_lib.build_unet(config), jax.random.PRNGKey(0), (96, 96)))
  assert model_lib.count_params(params) == 535_556


def test_rejects_size_not_divisible():
  model = model_lib.UNet(features=2, depth=3)
  with pytest.raises(ValueError, match="divisible by 8"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 20, 16, 1), jnp.float32))
  with pytest.raises(ValueError, match="batch, H, W"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((16, 16, 1), jnp.float32))
