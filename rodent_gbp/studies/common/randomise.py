"""Cascading randomisation of the tissue network (Adebayo et al. 2018).

What the saliency sanity checks share (``studies.sanity``, the placement
study's ``cascade``, ``studies.refine_study``'s randomised network): the
U-Net's layers ordered from the output down (:func:`layers_from_top`), a
fresh initialisation (:func:`fresh_params`) whose layers replace the trained
ones from the top (:func:`randomised_params`, :func:`cascade_params`), a
bundle whose bank appearance is recomputed under the new params
(:func:`with_params`), and the rank correlation of two stacks of maps
(:func:`spearman_rows`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from rodent_gbp import bank as bank_lib
from rodent_gbp import enhance
from rodent_gbp import parallel
from rodent_gbp.errors import CheckpointError, DataError
from rodent_gbp import model as model_lib


def layers_from_top(params: Mapping[str, Any]) -> list[str]:
  """The U-Net's conv layers from the output down (head, up0_*, ..., down0_*).

  Raises:
    CheckpointError: a layer name that is not the U-Net's.
  """
  names = list(params)

  def depth_key(name: str):
    if name == "head":
      return (0, 0, 0)
    part, sep, conv = name.partition("_conv")
    if not sep or not conv.isdigit():
      raise CheckpointError(f"unknown layer {name!r} (not a layer of the U-Net)")
    conv = -int(conv)
    if part.startswith("up") and part[2:].isdigit():
      return (1, int(part[2:]), conv)
    if part == "bottom":
      return (2, 0, conv)
    if part.startswith("down") and part[4:].isdigit():
      return (3, -int(part[4:]), conv)
    raise CheckpointError(f"unknown layer {name!r} (not a layer of the U-Net)")

  return sorted(names, key=depth_key)


def randomised_params(params, fresh, layers: Sequence[str]):
  """``params`` with ``layers`` taken from ``fresh`` (a new initialisation)."""
  out = dict(params)
  for name in layers:
    out[name] = fresh[name]
  return out


def fresh_params(model, image_shape: tuple[int, int], seed: int = 0):
  """A new initialisation of ``model`` (every layer by its own initializer)."""
  return model_lib.init_params(model, jax.random.key(seed), image_shape)


def cascade_params(params, fresh, order: Sequence[str], k: int):
  """``params`` with the top ``k`` layers of ``order`` taken from ``fresh``."""
  return randomised_params(params, fresh, list(order[:k]))


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Spearman rank correlation of each (H, W) pair of (S, H, W) maps; NaN if constant."""
  from scipy import stats
  ra = stats.rankdata(a.reshape(len(a), -1), axis=-1)
  rb = stats.rankdata(b.reshape(len(b), -1), axis=-1)
  ra -= ra.mean(-1, keepdims=True)
  rb -= rb.mean(-1, keepdims=True)
  den = np.sqrt((ra * ra).sum(-1) * (rb * rb).sum(-1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def with_params(bundle, params, volumes: Mapping[str, Any]):
  """``bundle`` with the tissue network's ``params`` and the bank's appearance under them.

  The raw-slice appearance (what the improved placement locates with) of
  every bank animal that has one is recomputed with ``params`` from its
  volume in ``volumes``, exactly as ``bank.build_template_bank`` computes it;
  masks and the skull-stripped gradient images stay. The copy has its own
  placer cache.

  Raises:
    DataError: a bank animal with an appearance is not in ``volumes``.
  """
  net = bundle.network("tissue")
  b = bundle.bank
  available = (np.asarray(b.appearance_available, bool) if b.appearance_available is not None
               else np.arange(len(b.animal_ids)) == b.reference)
  missing = [b.animal_ids[i] for i in np.flatnonzero(available)
             if b.animal_ids[i] not in volumes]
  if missing:
    raise DataError(f"template animals {missing} are not in the dataset; their "
                    "appearance cannot be recomputed")
  mesh = parallel.make_mesh()
  replicated = parallel.replicate(params, mesh)
  classes = tuple(net.config.gradient_classes)
  app = np.zeros(b.masks.shape, np.float32)
  for i in np.flatnonzero(available):
    raw = volumes[b.animal_ids[i]].image[..., None].astype(np.float32)
    g = parallel.run_batched(
        lambda x: bank_lib.unit_gradient_image(replicated, x, model=net.model, classes=classes,
                                               method=net.config.saliency_method,
                                               score=net.config.saliency_score),
        {"x": raw}, net.config.eval_batch_size, mesh)["out"]
    app[i] = np.asarray(enhance.log_gradient(g))
  bank = dataclasses.replace(b, appearance=app, appearance_available=available)
  networks = {**bundle.networks, "tissue": dataclasses.replace(net, params=params)}
  return dataclasses.replace(bundle, networks=networks, bank=bank, cache={})
