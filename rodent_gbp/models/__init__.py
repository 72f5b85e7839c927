"""Model folders installed with the package.

``rodent-gbp-segment`` without ``--model_dir`` uses :data:`DEFAULT`, the
bundle folder ``rodent_gbp/models/mouse/`` (a brain extractor trained on the
mouse_epi set and a tissue network trained on atlas label maps with synthesised
contrasts; its ``MODEL_CARD.md`` names the data and licences: the folder is
GPL-3.0, see its ``LICENSE``; ``rodent_gbp/bundle.py`` describes the folder). It is package
data (setup.cfg), so an installed package finds it through
``importlib.resources``; a checkout without it raises a clear error.
"""

from __future__ import annotations

import importlib.resources
import pathlib

from rodent_gbp.errors import CheckpointError

DEFAULT = "mouse"


def model_dir(name: str = DEFAULT) -> pathlib.Path:
  """The path of the shipped model folder ``name`` (it may not exist)."""
  return pathlib.Path(str(importlib.resources.files(__name__) / name))


def default_model_dir() -> pathlib.Path:
  """The shipped default model folder.

  Raises:
    CheckpointError: the folder (its ``bundle.json``) is not installed.
  """
  folder = model_dir(DEFAULT)
  if not (folder / "bundle.json").is_file():
    raise CheckpointError(
        f"{folder}: no --model_dir given and the default model folder is not "
        "installed (no bundle.json there); pass --model_dir FOLDER, a model folder "
        "such as the main job's <workdir>/model")
  return folder
