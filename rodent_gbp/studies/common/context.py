"""A model bundle with the dataset it was trained on: what every study opens first.

``load_context`` is the studies' one way to a trained model: the bundle
(``bundle.load_bundle``), its split, and the volumes of its dataset.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping, Sequence

from rodent_gbp import bundle as bundle_lib
from rodent_gbp.errors import CheckpointError, DataError, UsageError
from rodent_gbp import data




@dataclasses.dataclass
class Context:
  """A model bundle, its dataset and its split.

  Attributes:
    bundle: the model bundle (networks, normalisation, template bank).
    volumes: animal id -> ``data.Volume`` of the dataset.
    split: train / val / test animal ids (``bundle.split``).
    model_dir: the bundle folder.
    data_dir: the dataset folder.
  """

  bundle: bundle_lib.Bundle
  volumes: dict
  split: dict
  model_dir: pathlib.Path
  data_dir: pathlib.Path

  @property
  def config(self):
    """The tissue network's ``configs.Config``."""
    return self.bundle.network("tissue").config

  @property
  def batch_size(self) -> int:
    return self.config.eval_batch_size

  @property
  def test(self) -> list:
    return [self.volumes[a] for a in self.split["test"]]


def default_data_dir(model_dir) -> pathlib.Path:
  """``<model_dir>/../data``: where the main job writes the phantom beside ``model``."""
  return pathlib.Path(model_dir).resolve().parent / "data"


def load_context(model_dir, data_dir=None, *, max_test_animals: int | None = None,
                 animals: str | Sequence[str] | None = None) -> Context:
  """Opens a model bundle (``bundle.load_bundle``) and the dataset it was trained on.

  Args:
    model_dir: a bundle folder (``<workdir>/model`` of the main job).
    data_dir: dataset folder; None: :func:`default_data_dir`.
    max_test_animals: keep only the first test animals (quick runs).
    animals: which animals to load: None, the whole dataset (the split's test
      animals must be in it); ``"test"``, the split's test animals only; or a
      sequence of animal ids, exactly those.

  Raises:
    CheckpointError: the bundle is missing or damaged, or records no split.
    DataError: the dataset folder is missing or lacks an animal asked for.
  """

  model_dir = pathlib.Path(model_dir)
  bundle = bundle_lib.load_bundle(model_dir)
  data_dir = default_data_dir(model_dir) if data_dir is None else pathlib.Path(data_dir)
  split = bundle.split
  if not isinstance(split, Mapping) or not split.get("test"):
    raise CheckpointError(f"{model_dir / bundle_lib.BUNDLE_FILE}: no training split with "
                          "test animals recorded")
  split = {k: list(v) for k, v in split.items()}
  if max_test_animals:
    split["test"] = split["test"][:max_test_animals]
  if not data_dir.is_dir():
    raise DataError(f"{data_dir}: dataset folder not found (pass --data_dir)")
  if animals is None:
    volumes = {v.animal_id: v for v in data.load_dataset(data_dir)}
    missing = [a for a in split["test"] if a not in volumes]
  else:
    wanted = split["test"] if animals == "test" else list(animals)
    missing = [a for a in wanted if not (data_dir / a).is_dir()]
    volumes = {} if missing else {a: data.load_animal(data_dir / a) for a in wanted}
  if missing:
    raise DataError(f"{data_dir}: animals {missing} of the model's split are missing"
                    if animals in (None, "test") else f"{data_dir}: no animal folders {missing}")
  return Context(bundle=bundle, volumes=volumes, split=split, model_dir=model_dir,
                 data_dir=data_dir)


def floats(values: Sequence[Any], what: str) -> list[float]:
  """``values`` (numbers or their text, e.g. from a list flag) as floats.

  Raises:
    UsageError: naming ``what`` and the value that is not a number.
  """
  out = []
  for x in values:
    try:
      out.append(float(x))
    except (TypeError, ValueError):
      raise UsageError(f"{what}: {x!r} is not a number") from None
  return out
