"""Test set-up: strict JAX, a persistent compile cache, shared small fixtures.

* dtype promotion "strict" and rank promotion "raise" catch silent upcasts
  and accidental broadcasting in library code.
* The persistent compilation cache makes reruns of the suite cheap.
* One tiny phantom and one smoke-trained model are built once per session and
  shared by every test that needs data or a trained network.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

from absl import logging as _absl_logging  # noqa: F401  its flags exist before any binary's
import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
_CACHE = pathlib.Path(
    os.environ.get("RODENT_GBP_JAX_CACHE",
                   pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# Small phantom shared by the suite: 5 animals -> 3 train, 1 val, 1 test.
SMOKE_ANIMALS = 5


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> pathlib.Path:
  """A 5-animal phantom at the default geometry, written once per session."""
  from rodent_gbp import phantom
  root = tmp_path_factory.mktemp("phantom")
  phantom.write_phantom(root, animals=SMOKE_ANIMALS, seed=0, size=96)
  return root


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, phantom_dir):
  """The ``smoke`` config trained once on ``phantom_dir``; shared, read-only."""
  from rodent_gbp import configs, train
  workdir = tmp_path_factory.mktemp("smoke_run")
  config = configs.get_config("smoke")
  result = train.train_and_evaluate(config, workdir, data_dir=phantom_dir)
  return result


REPO = pathlib.Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def imported_binary(script: str):
  """Imports ``experiments/<script>.py`` fresh; removes its absl flags on exit."""
  import importlib.util
  import sys
  from absl import flags

  FLAGS = flags.FLAGS
  before = set(FLAGS)
  name = f"_binary_{script}"
  spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{script}.py")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    yield module
  finally:
    for flag in set(FLAGS) - before:
      delattr(FLAGS, flag)
    sys.modules.pop(name, None)


def run_binary(script: str, argv: list[str]):
  """Runs ``experiments/<script>.py``'s ``main`` in-process with ``argv``.

  Each binary defines its absl flags at import; several binaries share names
  (``--seed``, ``--workdir``). The module is imported fresh under a private
  name, its flags are parsed from ``argv``, ``main`` runs, and the flags it
  defined are removed again, so binaries can be tested one after another in
  one process. Returns ``main``'s return value.
  """
  from absl import flags

  with imported_binary(script) as module:
    rest = flags.FLAGS([script, *argv])
    return module.main(rest)


@pytest.fixture
def binary():
  """``binary(script, argv)`` runs an experiment binary in-process."""
  return run_binary


def segment_model(tmp_path_factory, smoke_run, phantom_dir) -> pathlib.Path:
  """A model folder (smoke checkpoints + templates.npz), built once per session.

  Built as the main job builds it: ``pipeline.build_template_bank`` of the
  training animals, then ``placement.save_appearance`` of the bank's
  raw-slice appearance.
  """
  folder = tmp_path_factory.getbasetemp() / "segment_model" / "checkpoints"
  if (folder / "templates.npz").is_file():
    return folder
  import shutil
  from rodent_gbp import data
  from rodent_gbp import model as model_lib
  from rodent_gbp import pipeline
  from rodent_gbp import placement
  shutil.rmtree(folder.parent, ignore_errors=True)
  shutil.copytree(smoke_run.checkpoint_dir, folder)
  config = smoke_run.config
  volumes = {a: data.load_animal(phantom_dir / a) for a in smoke_run.split["train"]}
  model = model_lib.build_unet(config)
  bank = pipeline.build_template_bank(
      model, smoke_run.params, list(volumes.values()),
      options=pipeline.PlacementOptions.from_config(config),
      batch_size=config.eval_batch_size)
  bank.save(folder / "templates.npz")
  appearance, available = placement.bank_appearance(
      model, smoke_run.params, bank, volumes, batch_size=config.eval_batch_size)
  placement.save_appearance(folder / "templates.npz", appearance, available)
  return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, smoke_run, phantom_dir) -> pathlib.Path:
  """A model folder as the main job writes it (smoke model); tests copy before changing it."""
  return segment_model(tmp_path_factory, smoke_run, phantom_dir)


@pytest.fixture(scope="session")
def scan(phantom_dir) -> pathlib.Path:
  """A test animal's image (not in the template bank)."""
  return phantom_dir / "rat04" / "image.nii.gz"
