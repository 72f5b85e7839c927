r"""Builds the shipped model folder whose tissue network learned tissue from label maps.

  python experiments/ship_tissue.py --run runs/ts/shipped/fold0 \
      --base_model <a model folder with the mouse_epi extractor> \
      --results experiments/results/tissue_synth/summary.json \
      --model_dir rodent_gbp/models/mouse \
      --extractor_command "python experiments/ship_model.py ..."

The folder takes:

* ``tissue``: the network of ``--run`` (``experiments/tissue_synth.py --all_train``);
* ``extractor``, normalisation and voxel size: those of ``--base_model`` (the
  brain extractor trained on ``mouse_epi``; refused on another grid);
* a template bank rebuilt with the new tissue network's gradient images from the
  ``mouse_epi`` training animals of ``--split_file`` (the paper's GBP placers use it);
* the placers' brain Dice re-measured on that split's test animals through
  ``rodent-gbp-segment`` (``inference.segment_scan``, the manual masks as truth);
* ``LICENSE`` (GPL-3.0: the tissue network learned from ``mouse_t2_atlas`` and
  DSURQE, both published under it), ``card.json`` and ``MODEL_CARD.md`` naming
  every set behind each network with its licence and citation, the measured
  scores and what was not trained on.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

from absl import app
from absl import flags
import numpy as np

from rodent_gbp import bank as bank_lib
from rodent_gbp import bundle as bundle_lib
from rodent_gbp import cli
from rodent_gbp import data
from rodent_gbp import fileio
from rodent_gbp import inference
from rodent_gbp import tissue_table
from rodent_gbp.datasets import cache
from rodent_gbp.errors import CheckpointError, UsageError
from rodent_gbp.studies import model_card

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("run", None, "The shipped training's fold folder (its model/ holds the "
                    "tissue network).", required=True)
flags.DEFINE_string("base_model", None, "Model folder whose extractor, normalisation and "
                    "voxel size the new folder keeps.", required=True)
flags.DEFINE_string("results", str(REPO / "experiments" / "results" / "tissue_synth" /
                                   "summary.json"), "tissue_synth_report.py's summary.json.")
flags.DEFINE_string("model_dir", None, "The model folder to write (replaced).", required=True)
flags.DEFINE_string("data_root", str(REPO.parent / "shared" / "data"),
                    "Folder with mouse-epi/, mouse-t2-atlas/ and mouse-dsurqe/.")
flags.DEFINE_string("data_cache", None,
                    "Where converted sets are kept (default: the project's cache).")
flags.DEFINE_string("training_command", None, "The command that trained --run, for the "
                    "card, when the run's result.json does not record it.")
flags.DEFINE_string("extractor_command", None, "The command that trained --base_model's "
                    "extractor, for the card.", required=True)
flags.DEFINE_string("split_file", str(REPO / "experiments" / "splits" /
                                      "mouse_epi_shipped.json"),
                    "mouse_epi animals: the bank's (train) and the placers' test animals.")
PLACERS = ("supervised", "gbp", "gbp_improved")


def main(argv):
  cli.begin(argv)
  log = lambda m: print(m, flush=True)  # noqa: E731
  run = pathlib.Path(FLAGS.run)
  trained = bundle_lib.load_bundle(run / "model")
  base = bundle_lib.load_bundle(FLAGS.base_model)
  if not np.allclose(trained.voxel_size, base.voxel_size) or \
      trained.slice_shape != base.slice_shape:
    raise CheckpointError(f"{run / 'model'}: grid differs from {FLAGS.base_model}")
  tissue = trained.networks["tissue"]
  split = fileio.read_json(FLAGS.split_file)
  root = pathlib.Path(FLAGS.data_root)
  epi_dir = cache.prepare("mouse_epi", data_root=root / "mouse-epi",
                          cache_dir=FLAGS.data_cache,
                          resolution="native", log=log)
  vols = [data.load_animal(epi_dir / a) for a in split["train"]]
  log(f"template bank from {len(vols)} mouse_epi training animals")
  cfg = tissue.config
  bank = bank_lib.build_template_bank(tissue.model, tissue.params, vols,
                                      classes=cfg.gradient_classes, method=cfg.saliency_method,
                                      score=cfg.saliency_score)
  out = pathlib.Path(FLAGS.model_dir)
  if out.exists():
    shutil.rmtree(out)
  bundle = bundle_lib.Bundle(
      networks={"tissue": tissue, "extractor": base.networks["extractor"]},
      normalisation=base.normalisation, bank=bank, voxel_size=base.voxel_size,
      voxel_size_source=base.voxel_size_source, split=split,
      info={**base.info, "bank_split": split,
            "tissue_definition": tissue_table.describe()})
  bundle_lib.save_bundle(out, bundle)
  shutil.copyfile(root / "mouse-t2-atlas" / "LICENSE", out / "LICENSE")
  placers = {}
  with tempfile.TemporaryDirectory() as tmp:
    loaded = bundle_lib.load_bundle(out)
    for p in PLACERS:
      placers[p] = {}
      for a in split["test"]:
        rep = inference.segment_scan(epi_dir / a / "image.nii.gz", None, pathlib.Path(tmp) / p,
                                     bundle=loaded, placement=p, qc=False,
                                     truth=epi_dir / a / "brainmask.nii.gz", name=a,
                                     log=lambda _: None)["report"]
        placers[p][a] = rep["truth"]["dice"]
      log(f"{p}: brain Dice " + ", ".join(f"{a} {d:.4f}" for a, d in placers[p].items()))
  results = fileio.read_json(FLAGS.results) if pathlib.Path(FLAGS.results).is_file() else []
  record = fileio.read_json(run / "result.json")
  training_command = record.get("command") or FLAGS.training_command
  if not training_command:
    raise UsageError(f"{run / 'result.json'} records no command: give --training_command")
  card = model_card.card(bundle, placers=placers, results=results,
                         command="python experiments/ship_tissue.py " + " ".join(sys.argv[1:]),
                         history=record["history"], training_command=training_command,
                         extractor_command=FLAGS.extractor_command)
  card["files"] = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
  fileio.write_json(out / "card.json", card)
  (out / "MODEL_CARD.md").write_text(model_card.markdown(card))
  log(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
