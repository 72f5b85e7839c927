"""The model bundle: everything a scan needs besides itself, saved and loaded by one pair.

A bundle folder holds:

* ``bundle.json``: format version, the networks (name -> config, params file,
  which training checkpoint they came from), the intensity normalisation rule,
  the model's RAS voxel size (and where it came from), the training split and
  any provenance the writer adds;
* ``<network>.msgpack``: each network's params (``flax.serialization``);
* ``templates.npz``: the template bank (``bank.TemplateBank``, with the
  reference's raw-slice appearance).

It can hold more than one named network: ``tissue`` (the segmentation U-Net
whose saliency places the mask) and, when trained, others such as the brain
extraction network ``extractor`` (``rodent_gbp.extractor``). A bundle of an
``extractor`` alone (``experiments/train_extractor.py`` without ``--bundle``)
has no ``tissue`` network and no template bank; its ``bundle.json`` records
the slice shape (``info["slice_shape"]``) instead. Training checkpoints (Orbax, ``rodent_gbp.training.checkpoint``)
are the training run's state; the bundle is what is handed to users.

Example::

  bundle = load_bundle("runs/main/model")
  tissue = bundle.network("tissue")
  logits = tissue.model.apply({"params": tissue.params}, images)
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Mapping

import flax.serialization
import jax
import numpy as np

from rodent_gbp import bank as bank_lib
from rodent_gbp import configs
from rodent_gbp import fileio
from rodent_gbp import model as model_lib
from rodent_gbp import parallel
from rodent_gbp import phantom
from rodent_gbp.errors import CheckpointError

BUNDLE_FILE = "bundle.json"
TEMPLATES_FILE = "templates.npz"
FORMAT = 1
NORMALISATION_METHODS = ("robust_max", "fixed")


@dataclasses.dataclass
class Network:
  """One trained network of a bundle.

  Attributes:
    config: its ``configs.Config`` (architecture and training settings).
    params: its Flax params.
    info: where it came from (e.g. ``{"kept": "best", "epoch": 12}``).
  """

  config: configs.Config
  params: Any
  info: dict = dataclasses.field(default_factory=dict)

  @property
  def model(self) -> model_lib.UNet:
    """The ReLU U-Net of ``config`` (the guided variant is derived from it)."""
    return model_lib.build_unet(self.config)


@dataclasses.dataclass
class Bundle:
  """A trained model as users get it (see the module doc).

  Attributes:
    networks: name -> :class:`Network`; ``tissue`` is there unless the
      bundle holds an ``extractor`` alone.
    normalisation: the intensity rule (``data.apply_normalisation`` params).
    bank: the template bank (None in an extractor-only bundle).
    voxel_size: (3,) RAS voxel size in mm that slices are resampled to.
    voxel_size_source: where ``voxel_size`` came from.
    split: the training split (train / val / test animal ids), if known.
    info: free-form provenance recorded with the bundle.
    folder: the folder it was loaded from (None for a bundle built in memory),
      so errors can name its files.
  """

  networks: dict[str, Network]
  normalisation: dict
  bank: bank_lib.TemplateBank | None
  voxel_size: np.ndarray
  voxel_size_source: str
  split: dict | None = None
  info: dict = dataclasses.field(default_factory=dict)
  folder: pathlib.Path | None = None
  # Placer state built from the bank once (candidate masks on the device).
  cache: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def network(self, name: str = "tissue") -> Network:
    if name not in self.networks:
      raise CheckpointError(f"the model bundle has no {name!r} network "
                            f"(it has {', '.join(sorted(self.networks))})")
    return self.networks[name]

  def where(self, name: str) -> str:
    """``<folder>/<name>`` for messages (``name`` alone for an in-memory bundle)."""
    return str(self.folder / name) if self.folder is not None else name

  @property
  def file(self) -> str:
    """Its ``bundle.json`` for messages (:meth:`where`)."""
    return self.where(BUNDLE_FILE)

  @property
  def slice_shape(self) -> tuple[int, int]:
    """(H, W) of the model grid (the bank's slices, else ``info["slice_shape"]``)."""
    if self.bank is None:
      return tuple(int(n) for n in self.info["slice_shape"])
    return tuple(int(n) for n in self.bank.masks.shape[2:])


def normalisation_rule(norm: Any, where: os.PathLike | str) -> dict:
  """The rule of a training run's normalisation record (``train.normalisation_record``).

  Raises:
    CheckpointError: naming ``where`` when no known rule is found.
  """
  if isinstance(norm, Mapping) and "method" in norm:
    rule = {k: v for k, v in norm.items() if k != "per_animal"}
  else:
    raise CheckpointError(f"{where}: no normalisation rule found")
  if rule.get("method") not in NORMALISATION_METHODS:
    raise CheckpointError(f"{where}: unknown normalisation method {rule.get('method')!r}")
  return rule


def voxel_size_of(volumes, config: configs.Config) -> tuple[np.ndarray, str]:
  """The training volumes' common RAS voxel size, else the phantom geometry's."""
  vs = bank_lib.common_voxel_size(volumes)
  if vs is not None:
    return vs, "training volumes"
  return (np.asarray(phantom.voxel_size(config.image_size), np.float64),
          f"phantom geometry of image_size {config.image_size}")


def save_bundle(folder: os.PathLike | str, bundle: Bundle) -> pathlib.Path:
  """Writes ``bundle`` into ``folder`` (created); each file atomically.

  In a multi-host run only process 0 writes (every process holds the same
  bundle); all processes wait for it.
  """
  folder = pathlib.Path(folder)
  if parallel.is_lead():
    folder.mkdir(parents=True, exist_ok=True)
    nets = {}
    for name, net in bundle.networks.items():
      host = jax.device_get(net.params)
      fileio.atomic_write_bytes(folder / f"{name}.msgpack", flax.serialization.to_bytes(host))
      nets[name] = {"config": net.config.to_dict(), "params": f"{name}.msgpack",
                    "info": net.info}
    if bundle.bank is not None:
      bundle.bank.save(folder / TEMPLATES_FILE)
    fileio.write_json(folder / BUNDLE_FILE, {
        "format": FORMAT, "networks": nets, "normalisation": bundle.normalisation,
        "voxel_size": np.asarray(bundle.voxel_size, np.float64),
        "voxel_size_source": bundle.voxel_size_source, "split": bundle.split,
        "templates": TEMPLATES_FILE if bundle.bank is not None else None,
        "info": bundle.info})
  parallel.barrier("rodent_gbp:bundle")
  return folder


def _read_network(folder: pathlib.Path, name: str, entry: Mapping[str, Any]) -> Network:
  where = folder / BUNDLE_FILE
  try:
    config = configs.from_dict(entry["config"])
    path = folder / entry["params"]
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{where}: network {name!r} is not described ({e})") from None
  if not path.is_file():
    raise CheckpointError(f"{path}: params of network {name!r} not found")
  try:
    params = flax.serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several types for damaged bytes.
    raise CheckpointError(f"{path}: corrupt params ({type(e).__name__}: {e})") from None
  expected = jax.eval_shape(lambda: model_lib.init_params(
      model_lib.build_unet(config), jax.random.key(0), (8 * 2**config.depth,) * 2))
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: tuple(np.shape(x)), tree)
  if (jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(expected)
      or shapes(params) != shapes(expected)):
    raise CheckpointError(f"{path}: params do not fit the U-Net of its config "
                          f"(features {config.features}, depth {config.depth})")
  return Network(config=config, params=jax.device_put(params), info=dict(entry.get("info") or {}))


def load_bundle(folder: os.PathLike | str) -> Bundle:
  """Loads and checks a bundle folder written by :func:`save_bundle`.

  Raises:
    CheckpointError: naming the folder or file and the problem.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise CheckpointError(f"{folder}: model folder not found")
  where = folder / BUNDLE_FILE
  if not where.is_file():
    raise CheckpointError(f"{where}: not found; a model folder comes from "
                          "experiments/reproduce.py (<workdir>/model)")
  try:
    meta = fileio.read_json(where)
  except (ValueError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{where}: corrupt ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise CheckpointError(f"{where}: unknown bundle format "
                          f"{meta.get('format') if isinstance(meta, dict) else meta!r}")
  entries = meta.get("networks") or {}
  if "tissue" not in entries and "extractor" not in entries:
    raise CheckpointError(f"{where}: no 'tissue' network")
  networks = {name: _read_network(folder, name, e) for name, e in entries.items()}
  rule = normalisation_rule(meta.get("normalisation"), where)
  info = dict(meta.get("info") or {})
  if "tissue" not in networks:  # an extractor alone: no template bank
    shape = info.get("slice_shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(
        isinstance(n, int) and n > 0 for n in shape)):
      raise CheckpointError(f"{where}: an extractor-only bundle needs info.slice_shape "
                            f"[H, W], got {shape!r}")
    bank = None
  else:
    path = folder / (meta.get("templates") or TEMPLATES_FILE)
    if not path.is_file():
      raise CheckpointError(f"{path}: template bank not found")
    bank = bank_lib.TemplateBank.load(path)
  factor = 2**networks["tissue"].config.depth if bank is not None else 1
  if bank is not None and (bank.masks.shape[2] % factor or bank.masks.shape[3] % factor):
    raise CheckpointError(
        f"{path}: template slices {bank.masks.shape[2:]} do not fit the U-Net of depth "
        f"{networks['tissue'].config.depth} (need multiples of {factor})")
  vs = np.asarray(meta.get("voxel_size") or [], np.float64)
  if vs.shape != (3,) or not np.all(vs > 0):
    raise CheckpointError(f"{where}: voxel_size must be three positive numbers, got "
                          f"{meta.get('voxel_size')!r}")
  return Bundle(networks=networks, normalisation=rule, bank=bank, voxel_size=vs,
                voxel_size_source=str(meta.get("voxel_size_source", "bundle.json")),
                split=meta.get("split"), info=info, folder=folder)


def make_bundle(config: configs.Config, params, train_volumes, *, normalisation: dict,
                normalisation_source: os.PathLike | str, split: dict | None,
                info: dict | None = None) -> Bundle:
  """The model bundle of a trained tissue network: the network, the normalisation
  rule of its training run, the template bank of its training volumes, their
  voxel size, the split.

  Args:
    config, params: the tissue network.
    train_volumes: the training animals' evaluated sessions (the bank's animals).
    normalisation: the run's normalisation record (``data.normalisation_record``),
      read from ``normalisation_source`` (named in errors).
    split: the run's split.
    info: recorded with the network (checkpoint folder, kept epoch, ...).
  """
  bank = bank_lib.build_template_bank(
      model_lib.build_unet(config), params, train_volumes,
      classes=tuple(config.gradient_classes), method=config.saliency_method,
      score=config.saliency_score, batch_size=config.eval_batch_size)
  vs, source = voxel_size_of(train_volumes, config)
  return Bundle(
      networks={"tissue": Network(config=config, params=params, info=dict(info or {}))},
      normalisation=normalisation_rule(normalisation, normalisation_source),
      bank=bank, voxel_size=vs, voxel_size_source=source, split=split)
