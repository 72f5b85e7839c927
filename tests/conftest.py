"""Test set-up: strict JAX, a persistent compile cache, shared small fixtures.

* dtype promotion "strict" and rank promotion "raise" catch silent upcasts
  and accidental broadcasting in library code.
* The persistent compilation cache makes reruns of the suite cheap.
* One tiny phantom and one smoke-trained model are built once per session and
  shared by every test that needs data or a trained network; the model's
  bundle folder (``<workdir>/model``, as the main job writes it) is
  ``model_dir``. ``synthetic_bundle`` builds a bundle by hand around a few
  synthetic masks, for placer tests with a planted answer.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

# The suite compiles many small programs once each and runs them briefly: XLA's
# CPU backend without its expensive LLVM passes compiles them in about 40 %
# less CPU time (tests/test_guided.py + tests/test_correlate.py from an empty
# compile cache: 87 s of CPU against 145 s). Set before JAX starts its backend;
# subprocesses inherit it through the environment.
FAST_COMPILE_FLAGS = ("--xla_llvm_disable_expensive_passes=true "
                      "--xla_backend_optimization_level=0")
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_FLAGS}".strip()

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
  """A 5-animal phantom at the default geometry, written once per session
  (by ``sources.ensure_phantom``, as the main job writes its phantom)."""
  from rodent_gbp import configs
  from rodent_gbp import sources
  config = configs.override(configs.get_config("smoke"), animals=SMOKE_ANIMALS,
                            phantom_seed=0, image_size=96, phantom="standard")
  return sources.ensure_phantom(tmp_path_factory.mktemp("phantom"), config,
                                log=lambda msg: None)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, phantom_dir):
  """The ``smoke`` config trained once on ``phantom_dir``; shared, read-only."""
  from rodent_gbp import configs
  from rodent_gbp.training import tissue
  workdir = tmp_path_factory.mktemp("smoke_run")
  config = configs.get_config("smoke")
  result = tissue.train_and_evaluate(config, workdir, data_dir=phantom_dir)
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


MODEL_FOLDER = "model"


def segment_model(tmp_path_factory, smoke_run, phantom_dir) -> pathlib.Path:
  """The smoke model's bundle folder ``<workdir>/model``, built once per session.

  Built by the code ``job.run`` writes its
  ``<workdir>/model`` with: ``bundle.make_bundle`` of the training animals
  (tissue network, normalisation, template bank with the reference's
  raw-slice appearance, voxel size), then ``bundle.save_bundle``. The test
  animals are not evaluated here (``test_reproduce`` runs the whole job).
  """
  folder = tmp_path_factory.getbasetemp() / "segment_model" / MODEL_FOLDER
  if (folder / "bundle.json").is_file():
    return folder
  import shutil
  from rodent_gbp import bundle as bundle_lib
  from rodent_gbp import data
  from rodent_gbp import fileio
  shutil.rmtree(folder, ignore_errors=True)
  volumes = [data.load_animal(phantom_dir / a) for a in smoke_run.split["train"]]
  record = pathlib.Path(smoke_run.checkpoint_dir) / "normalisation.json"
  bundle = bundle_lib.make_bundle(
      smoke_run.config, smoke_run.params, volumes, normalisation=fileio.read_json(record),
      normalisation_source=record, split=smoke_run.split,
      info={"checkpoint_dir": str(smoke_run.checkpoint_dir)})
  bundle_lib.save_bundle(folder, bundle)
  return folder


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, smoke_run, phantom_dir) -> pathlib.Path:
  """The smoke model's bundle folder (``<workdir>/model``); tests copy before changing it."""
  return segment_model(tmp_path_factory, smoke_run, phantom_dir)


@pytest.fixture(scope="session")
def smoke_reproduce(tmp_path_factory, phantom_dir, smoke_run):
  """``experiments/reproduce.py`` run once from the smoke checkpoint, with figures.

  Returns (workdir, results.json as a dict); read-only.
  """
  import json
  workdir = tmp_path_factory.mktemp("reproduce")
  run_binary("reproduce", [f"--workdir={workdir}", f"--data_dir={phantom_dir}",
                           f"--checkpoint_dir={smoke_run.checkpoint_dir}", "--config=smoke"])
  return workdir, json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="session")
def smoke_bundle(model_dir):
  """``bundle.load_bundle(model_dir)``: the smoke model as a user gets it; read-only."""
  from rodent_gbp import bundle as bundle_lib
  return bundle_lib.load_bundle(model_dir)


def synthetic_bundle(masks, *, gradients=None, appearance=None, reference: int | None = None,
                     features: int = 2, depth: int = 1, seed: int = 0):
  """A bundle built by hand around a bank of synthetic masks (A, S, H, W).

  The tissue network is an untrained U-Net of ``features`` x ``depth``
  (params from ``seed``); ``gradients`` default to the masks as float32;
  ``appearance`` (A, S, H, W) is given for the reference only. For placer
  tests with a planted answer: the network matters only where the test
  passes no gradient image.
  """
  import numpy as np
  from rodent_gbp import bank as bank_lib
  from rodent_gbp import bundle as bundle_lib
  from rodent_gbp import configs
  from rodent_gbp import model as model_lib
  masks = np.asarray(masks, bool)
  a, _, h, w = masks.shape
  vols = masks.reshape(a, -1).sum(-1)
  ref = bank_lib.median_animal(vols) if reference is None else reference
  available = None
  if appearance is not None:
    appearance = np.asarray(appearance, np.float32)
    available = np.arange(a) == ref
  bank = bank_lib.TemplateBank(
      animal_ids=[f"a{i}" for i in range(a)], masks=masks,
      gradients=(masks.astype(np.float32) if gradients is None
                 else np.asarray(gradients, np.float32)),
      brain_volumes=vols, reference=ref, displacements=np.zeros((a, 2)),
      appearance=appearance, appearance_available=available)
  config = configs.override(configs.get_config("smoke"), features=features, depth=depth,
                            eval_batch_size=4)
  model = model_lib.build_unet(config)
  params = model_lib.init_params(model, jax.random.key(seed), (h, w))
  return bundle_lib.Bundle(
      networks={"tissue": bundle_lib.Network(config=config, params=params)},
      normalisation={"method": "fixed", "scale": 1.0}, bank=bank,
      voxel_size=np.array([0.375, 0.5, 0.375]), voxel_size_source="synthetic")


@pytest.fixture(scope="session")
def scan(phantom_dir) -> pathlib.Path:
  """A test animal's image (the smoke split's test animal, not in the template bank)."""
  from rodent_gbp import configs
  from rodent_gbp import data
  ids = sorted(p.name for p in phantom_dir.iterdir() if p.is_dir())
  test = data.split_animals(ids, configs.get_config("smoke").split_seed)["test"][0]
  return phantom_dir / test / "image.nii.gz"
