"""The model card names every set behind each network, with its licence and citation."""

import json

import numpy as np

from rodent_gbp import bundle as bundle_lib
from rodent_gbp import classes
from rodent_gbp import models
from rodent_gbp import tissue_table
from rodent_gbp.studies import model_card
from rodent_gbp.training import extraction
from rodent_gbp.training import tissue_synth


def _card():
  split = {"train": ["01", "02"], "val": ["03"], "test": ["04"]}
  bundle = bundle_lib.Bundle(
      networks={"tissue": bundle_lib.Network(tissue_synth.synth_config(), {}, {
                    "epoch": 7, "split": {"mouse_t2_atlas": {"train": ["m1"], "val": ["m2"]},
                                          "mouse_epi": split}}),
                "extractor": bundle_lib.Network(extraction.extractor_config(), {},
                                                {"epoch": 3})},
      normalisation={"method": "robust_max", "percentile": 99.0}, bank=None,
      voxel_size=np.array([0.25, 1.0, 0.25]), voxel_size_source="training volumes",
      split=split, info={"slice_shape": [80, 80], "extractor_split": split})
  results = [{"run": "cv", "mode": "synth", "without": "", "folds": [0, 1],
              "atlas_test": {"subjects": 2, "table": {
                  w: {c: {"mean": 0.5, "sd": 0.1, "n": 2} for c in ("wm", "gm", "csf",
                                                                   "brain_dice")}
                  for w in ("network", "all_gm", "mixture")}}}]
  history = [{"epoch": 0, "step": 10, "val_wm": 0.1, "val_gm": 0.8, "val_csf": 0.2,
              "val_brain": 0.9}]
  return model_card.card(bundle, placers={"supervised": {"04": 0.975}}, results=results,
                         command="cmd", history=history,
                         training_command="python experiments/tissue_synth.py --seed 0",
                         extractor_command="python experiments/ship_model.py --seed 0")


def test_card_names_every_source_with_licence_and_citation():
  text = model_card.markdown(_card())
  for net, names in model_card.NETWORK_SOURCES.items():
    for n in names:
      src = model_card.SOURCES[n]
      row = [line for line in text.splitlines() if line.startswith(f"| `{net}` | `{n}`")]
      assert len(row) == 1, (net, n)
      assert src["licence"] in row[0] and src["cite"] in row[0]
  assert "GPL-3.0" in text.split("## Networks")[0]          # the folder's licence, up front
  for value, title in enumerate(classes.TITLES):
    assert f"{value} {title}" in text
  assert tissue_table.describe() in text
  assert "| `supervised` | 0.9750 | 04 0.975 |" in text
  assert "50.0 +- 10.0" in text                              # the CV table's numbers
  assert "1 (step 10): 0.100 / 0.800 / 0.200 / 0.900" in text
  assert "trained by: `python experiments/tissue_synth.py --seed 0` (seed 0)." in text
  assert "Extractor trained by: `python experiments/ship_model.py --seed 0` (seed 0)." in text


def test_installed_folder_carries_the_licence_of_its_data():
  """The installed folder: a GPL-3.0 LICENSE (its tissue network learned from GPL-3.0
  sets), a card naming each network's sets, the label values, seed and commands."""
  folder = models.default_model_dir()
  assert (folder / "LICENSE").read_text().lstrip().startswith("GNU GENERAL PUBLIC LICENSE")
  card = json.loads((folder / "card.json").read_text())
  gpl = [n for n in card["network_sources"]["tissue"]
         if card["sources"][n]["licence"].startswith("GPL-3.0")]
  assert gpl and card["licence"].startswith("GPL-3.0")
  text = (folder / "MODEL_CARD.md").read_text()
  for names in card["network_sources"].values():
    for n in names:
      assert card["sources"][n]["cite"] in text and f"`{n}`" in text
  assert "0 Background, 1 White matter, 2 Gray matter, 3 CSF" in text
  assert f"seed {card['seed']}" in text and "tissue_synth.py" in card["training_command"]
  assert "ship_model.py" in card["extractor_command"] and card["extractor_command"] in text
