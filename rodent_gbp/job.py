"""The main job: the paper's experiment end to end (``experiments/reproduce.py``).

:func:`run` calls, in order: resolve the data (``sources.resolve_data``: the
phantom unless given), train the tissue network or load a checkpoint
(:func:`load_or_train`), make the model bundle (``bundle.make_bundle``:
params, normalisation, template bank) into ``<workdir>/model``, evaluate every
test animal (no removal, manual removal with the true brain mask, each
placer's removal; ``evaluation.evaluate_volume``), and write the results
(``results``: ``results.json``, ``tables.md``, ``per_slice.csv``,
``placement.md``, NIfTI outputs of every placer, figures).
"""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Any, Callable

from rodent_gbp import bundle as bundle_lib
from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import evaluation
from rodent_gbp import fileio
from rodent_gbp import improved
from rodent_gbp import parallel
from rodent_gbp import report
from rodent_gbp import results as results_lib
from rodent_gbp import sources
from rodent_gbp.errors import DataError, UsageError
from rodent_gbp.training import checkpoint as checkpoint_lib
from rodent_gbp.training import tissue

_LOG = logging.getLogger(__name__)


def load_or_train(config, workdir: pathlib.Path, data_dir, checkpoint, volumes, log,
                   split=None):
  """(config, params, split, checkpoint folder, training history): trains the
  tissue network into ``<workdir>/checkpoints``, or loads ``checkpoint``."""
  if checkpoint is None:
    result = tissue.train_and_evaluate(config, workdir, data_dir=data_dir, split=split,
                                      log=log)
    return (config, result.params, result.split, pathlib.Path(result.checkpoint_dir),
            result.history)
  ckpt_dir = pathlib.Path(checkpoint)
  loaded = checkpoint_lib.load_model(ckpt_dir)
  stored = loaded.extras.get("split")
  if split is not None and stored is not None and data.check_split(
      stored, volumes, source=str(ckpt_dir)) != split:
    raise UsageError(f"--split_file gives a split other than the one {ckpt_dir} was "
                     f"trained on ({stored}); leave it out to use the checkpoint's")
  split = split or stored or data.split_animals(sorted(volumes), loaded.config.split_seed)
  meta = checkpoint_lib.read_meta(ckpt_dir, "latest") or loaded.extras.get("meta") or {}
  run_config = configs.override(loaded.config, displacement=config.displacement)
  return run_config, loaded.params, split, ckpt_dir, meta.get("history", [])


def _bundle(config, params, train_volumes, ckpt_dir: pathlib.Path, split, training: dict
            ) -> bundle_lib.Bundle:
  record_path = ckpt_dir / checkpoint_lib.NORMALISATION_FILE
  info = {"checkpoint_dir": str(ckpt_dir)} | {
      k: training[k] for k in ("kept", "best_epoch", "epochs_completed") if k in training}
  return bundle_lib.make_bundle(config, params, train_volumes,
                                normalisation=fileio.read_json(record_path),
                                normalisation_source=record_path, split=split, info=info)


def run(config: configs.Config, workdir, *, data_dir=None, dataset=None, data_root=None,
        data_cache=None, resolution: str = "paper",
        split: dict | str | pathlib.Path | None = None, checkpoint_dir=None,
        seed: int | None = None, figures: bool = True,
        log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Runs the paper's experiment; returns the ``results.json`` content.

  Args:
    config: the run's configuration (``configs.get_config``); with
      ``checkpoint_dir`` the checkpoint's own config is used (the caller refuses
      a conflicting pair) but for ``displacement``, which only the
      evaluation reads and which comes from ``config``.
    workdir: output folder (created).
    data_dir, dataset, data_root, data_cache, resolution: the data
      (``sources.resolve_data``); none of them: the phantom in ``<workdir>/data``.
    split: ``{"train", "val", "test"}`` animal ids, or the path of a JSON split
      file holding them, instead of the split drawn from ``config.split_seed``.
    checkpoint_dir: a training checkpoint folder; None trains one into
      ``<workdir>/checkpoints``.
    seed: overrides ``config.seed`` (init, data order) when given.
    figures: write the paper's figures (PNG).
    log: progress sink.
  """
  clock, timing = time.time(), {}
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config = configs.override(config, seed=config.seed if seed is None else seed)
  data_dir, is_phantom = sources.resolve_data(
      workdir, config, data_dir=data_dir, dataset=dataset, data_root=data_root,
      data_cache=data_cache, resolution=resolution, log=log)
  volumes = {v.animal_id: v for v in data.load_dataset(data_dir)}
  if split is not None:
    split = (data.read_split_file(split, volumes) if isinstance(split, (str, pathlib.Path))
             else data.check_split(split, volumes))
  source = sources.data_record(data_dir, phantom=is_phantom)
  removal = not source["skull_stripped"]
  timing["data_s"], t0 = time.time() - clock, time.time()

  run_seed = config.seed
  config, params, split, ckpt_dir, history = load_or_train(
      config, workdir, data_dir, checkpoint_dir, volumes, log, split)
  config = configs.override(config, seed=run_seed)
  timing["train_s"], t0 = time.time() - t0, time.time()
  missing = [a for a in split["train"] + split["test"] if a not in volumes]
  if missing:
    raise DataError(f"{data_dir}: animals {missing} of the checkpoint's split are missing")
  training = tissue.training_summary(history, config)
  bundle = _bundle(config, params, [volumes[a] for a in split["train"]], ckpt_dir, split,
                   training)
  bundle_lib.save_bundle(workdir / "model", bundle)
  bank = bundle.bank
  log(f"model bundle: {workdir / 'model'}; template bank of {len(bank.animal_ids)} training "
      f"animals, reference {bank.animal_ids[bank.reference]} (median brain volume)")
  timing["template_bank_s"], t0 = time.time() - t0, time.time()

  evals = []
  for a in split["test"]:
    evals.append(evaluation.evaluate_volume(volumes[a], bundle=bundle, removal=removal,
                                            batch_size=config.eval_batch_size))
    evals[-1].counts |= results_lib.baseline_counts(
        volumes[a], num_classes=config.num_classes, mixture="pseudo" not in source["labels"])
    log(f"evaluated test animal {a}")
  timing["evaluate_s"], t0 = time.time() - t0, time.time()

  results: dict[str, Any] = {
      "config": config.to_dict(), "provenance": report.provenance(config.seed),
      "data": source, "split": split, "reference_animal": bank.animal_ids[bank.reference],
      "training": training}
  if not removal:
    results["absent"] = results_lib.SKULL_STRIPPED_NOTE
    log(results_lib.SKULL_STRIPPED_NOTE)
  results |= results_lib.summarise(evals, bank)
  results["lognormal"] = results_lib.lognormal_verdict(evals, seed=config.seed)
  timing["lognormal_s"], t0 = time.time() - t0, time.time()
  if removal:
    results["ablation"] = improved.ablation(
        [volumes[a] for a in split["test"]], bundle=bundle,
        gradients={e.animal_id: e.gradient for e in evals}, log=log)
    timing["ablation_s"] = time.time() - t0
  timing["total_s"] = time.time() - clock
  results["timing"] = timing
  if parallel.is_lead():  # every process computed; process 0 writes
    results_lib.write_outputs(workdir, results, evals, volumes,
                              animals=sources.animal_columns(data_dir), log=log)
    if figures:
      t0 = time.time()
      results_lib.write_figures(workdir / "figures", evals, volumes, bundle, removal=removal)
      log(f"wrote figures to {workdir / 'figures'} ({time.time() - t0:.1f} s)")
    log(report.tables_markdown(results))
  return results
