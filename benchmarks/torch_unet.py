"""A PyTorch twin of ``rodent_gbp.model.UNet`` that carries the same weights.

Only the benchmark uses it (``pip install torch captum``, the ``bench`` extra).
Layer for layer as the Flax module: 3x3 convs with symmetric zero padding 1
(Flax "SAME"), ``nn.ReLU`` modules (Captum's GuidedBackprop hooks them),
2x2 max-pooling, nearest-neighbour x2 upsampling, concatenation in the order
``[skip, upsampled]``, a final 1x1 conv. Tensors are NCHW; Flax kernels
(H, W, in, out) become torch weights (out, in, H, W).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class _Block(nn.Module):

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
    self.act1 = nn.ReLU()
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
    self.act2 = nn.ReLU()

  def forward(self, x):
    return self.act2(self.conv2(self.act1(self.conv1(x))))


class TorchUNet(nn.Module):
  """Same graph as the Flax UNet; logits (B, C, H, W) for images (B, 1, H, W)."""

  def __init__(self, features: int = 16, depth: int = 3, num_classes: int = 4):
    super().__init__()
    self.depth = depth
    self.down = nn.ModuleList()
    cin = 1
    for level in range(depth):
      self.down.append(_Block(cin, features * 2**level))
      cin = features * 2**level
    self.pool = nn.MaxPool2d(2, 2)
    self.bottom = _Block(cin, features * 2**depth)
    self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
    self.up_conv0 = nn.ModuleList()
    self.up_act0 = nn.ModuleList()
    self.up = nn.ModuleList()
    for level in range(depth):  # indexed by level; run from the bottom up
      channels = features * 2**level
      self.up_conv0.append(nn.Conv2d(2 * channels, channels, 3, padding=1))
      self.up_act0.append(nn.ReLU())
      self.up.append(_Block(2 * channels, channels))
    self.head = nn.Conv2d(features, num_classes, 1)

  def forward(self, x):
    skips = []
    for level in range(self.depth):
      x = self.down[level](x)
      skips.append(x)
      x = self.pool(x)
    x = self.bottom(x)
    for level in reversed(range(self.depth)):
      x = self.up_act0[level](self.up_conv0[level](self.upsample(x)))
      x = torch.cat([skips[level], x], dim=1)
      x = self.up[level](x)
    return self.head(x)


class ClassScore(nn.Module):
  """Per-image, per-class objective (B, C): sum over pixels of softmax prob."""

  def __init__(self, unet: nn.Module):
    super().__init__()
    self.unet = unet

  def forward(self, x):
    return torch.softmax(self.unet(x), dim=1).sum(dim=(2, 3))


def _copy_conv(conv: nn.Conv2d, p: dict) -> None:
  kernel = np.asarray(p["kernel"], np.float32)  # (H, W, in, out)
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))))
    conv.bias.copy_(torch.from_numpy(np.array(p["bias"], np.float32)))


def from_flax(params, *, features: int, depth: int, num_classes: int) -> TorchUNet:
  """A TorchUNet holding the Flax UNet's ``params`` (the same numbers)."""
  net = TorchUNet(features, depth, num_classes)
  for level in range(depth):
    _copy_conv(net.down[level].conv1, params[f"down{level}_conv1"])
    _copy_conv(net.down[level].conv2, params[f"down{level}_conv2"])
    _copy_conv(net.up_conv0[level], params[f"up{level}_conv0"])
    _copy_conv(net.up[level].conv1, params[f"up{level}_conv1"])
    _copy_conv(net.up[level].conv2, params[f"up{level}_conv2"])
  _copy_conv(net.bottom.conv1, params["bottom_conv1"])
  _copy_conv(net.bottom.conv2, params["bottom_conv2"])
  _copy_conv(net.head, params["head"])
  return net.eval()
