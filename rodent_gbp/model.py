"""The U-Net of paper section 3.1 / 4.2, as a Flax Linen module.

Contraction: ``depth`` levels of (conv 3x3, act, conv 3x3, act, max-pool 2x2),
channels ``features * 2**level``; a bottleneck (conv, act, conv, act) at
``features * 2**depth``; expansion: nearest-neighbour upsampling x2, a 3x3 conv
(act), concatenation with the matching contraction features, then
(conv, act, conv, act). A final 1x1 conv gives ``num_classes`` logits per pixel;
no dense layers, no normalisation layers (so saliency and the guided variant
are exact functions of the params alone).

``activation`` is a module field: the guided network of ``rodent_gbp.guided``
is ``UNet(..., activation=guided_relu)`` applied to the *same* params.

Default size (``features=16, depth=3``, 1 input channel, 4 classes): 535,556
parameters (``tests/test_model.py`` checks the count).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def _upsample2x(x: jax.Array) -> jax.Array:
  """Nearest-neighbour upsampling by 2 of (B, H, W, C) -> (B, 2H, 2W, C)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UNet(nn.Module):
  """U-Net for per-pixel classification of (B, H, W, 1) slices.

  Attributes:
    features: channels at the first level (doubled at each level down).
    depth: number of 2x2 max-pool steps; H and W must be divisible by 2**depth.
    num_classes: output channels (logits; apply ``jax.nn.softmax`` for the
      paper's softmax output).
    activation: the nonlinearity after every conv but the last; ``nn.relu`` for
      training and segmentation, ``guided_relu`` / ``deconv_relu`` for saliency.
  """

  features: int = 16
  depth: int = 3
  num_classes: int = 4
  activation: Callable[[jax.Array], jax.Array] = nn.relu

  def _block(self, x: jax.Array, channels: int, name: str) -> jax.Array:
    x = nn.Conv(channels, (3, 3), padding="SAME", name=f"{name}_conv1")(x)
    x = self.activation(x)
    x = nn.Conv(channels, (3, 3), padding="SAME", name=f"{name}_conv2")(x)
    return self.activation(x)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Maps images (B, H, W, 1) to logits (B, H, W, num_classes)."""
    if x.ndim != 4:
      raise ValueError(f"UNet expects (batch, H, W, channels), got shape {x.shape}")
    factor = 2**self.depth
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(
          f"UNet of depth {self.depth} needs H and W divisible by {factor}; "
          f"got an image of {x.shape[1]} x {x.shape[2]}")
    skips = []
    for level in range(self.depth):
      x = self._block(x, self.features * 2**level, f"down{level}")
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = self._block(x, self.features * 2**self.depth, "bottom")
    for level in reversed(range(self.depth)):
      channels = self.features * 2**level
      x = _upsample2x(x)
      x = nn.Conv(channels, (3, 3), padding="SAME", name=f"up{level}_conv0")(x)
      x = self.activation(x)
      x = jnp.concatenate([skips[level], x], axis=-1)
      x = self._block(x, channels, f"up{level}")
    return nn.Conv(self.num_classes, (1, 1), name="head")(x)


def build_unet(config, activation: Callable[[jax.Array], jax.Array] = nn.relu) -> UNet:
  """The U-Net a :class:`rodent_gbp.configs.Config` describes."""
  return UNet(features=config.features, depth=config.depth,
              num_classes=config.num_classes, activation=activation)


def init_params(model: UNet, rng: jax.Array, image_shape: tuple[int, int]):
  """Initialises params for (H, W) single-channel images."""
  dummy = jnp.zeros((1, *image_shape, 1), jnp.float32)
  return model.init(rng, dummy)["params"]


def count_params(params) -> int:
  """Total number of scalars in a params pytree."""
  return int(sum(p.size for p in jax.tree_util.tree_leaves(params)))
