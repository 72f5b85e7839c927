"""The model card of the shipped folder whose tissue network learned from label maps.

``card`` gathers what the card states (sources and licences of every set behind
each network, the tissue definition, measured scores, the validation curve, what
was not trained on); ``markdown`` writes ``MODEL_CARD.md`` from it
(``experiments/ship_tissue.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rodent_gbp import classes
from rodent_gbp import tissue_table

SOURCES = {
    "mouse_epi": {
        "what": "temporal means of mouse EPI series with manual brain masks (sidneyp/"
                "skull-stripper); no tissue labels",
        "licence": "MIT",
        "cite": "Pontes-Filho S., Dahl A. G., Nichele S., Mello G. B. M. (2021). A deep "
                "learning-based tool for automatic brain extraction from functional magnetic "
                "resonance images of rodents. IntelliSys 2021, LNNS 296, 549-558."},
    "mouse_t2_atlas": {
        "what": "18 in-vivo mouse T2 images (skull-stripped) with 40 manual structure labels "
                "(dama-lab/mouse-brain-atlas, rTg4510/rTg4510_in_vivo_LR)",
        "licence": "GPL-3.0",
        "cite": "Ma D. et al. (2014). Automatic structural parcellation of mouse brain MRI "
                "using multi-atlas label fusion. PLoS ONE 9(1): e86576; Ma D. et al. (2019), "
                "Frontiers in Neuroscience 13:11."},
    "dsurqe": {
        "what": "the DSURQE ex-vivo mouse average and its 336 structure labels with tissue "
                "types, resampled to the Allen CCFv3 at 0.2 mm "
                "(abeaucha/MouseHumanTranscriptomicSimilarity, AMBA/data/imaging)",
        "licence": "GPL-3.0 (the repository's licence; the upstream atlas's own terms were "
                   "not checked beyond it)",
        "cite": "Dorr A. E. et al. (2008) NeuroImage 42:60-69; Steadman P. E. et al. (2014) "
                "Autism Research 7:124-137; Ullmann J. F. P. et al. (2013) NeuroImage "
                "78:196-203; Richards K. et al. (2011) NeuroImage 54:2181-2196; Qiu L. R. et "
                "al. (2018) Nature Communications 9:2615; resampling: Beauchamp A. et al. "
                "(2022) eLife 11:e79418."},
}

NETWORK_SOURCES = {
    "extractor": ("mouse_epi",),
    "tissue": ("mouse_t2_atlas", "dsurqe", "mouse_epi"),
}

NOT_TRAINED_ON = (
    "rats: no rat label map or image (the tissue network saw mouse brains only; the "
    "extractor mouse EPI only)",
    "T1-weighted, diffusion or other contrasts as real images: only as synthesised "
    "contrasts of the label maps (the tissue network); the extractor saw EPI only",
    "tissue truth of any contrast but T2 (in-vivo and ex-vivo mouse T2 atlases)",
    "white matter finer than the 0.25 mm model grid (thin tracts are 1-2 pixels there)",
    "pathology, lesions or strong motion artefacts",
)


# What of a report's run the card keeps: its tables, not per-subject rows or curves.
_RUN_KEYS = ("run", "mode", "without", "folds", "steps", "kept_epoch", "atlas_test",
             "dsurqe_test", "epi_test_foreground_dice")
# Runs that trained nothing: said so beside their numbers.
_NOTES = {"model_only": "an existing model folder, no training; its mouse_epi row includes "
                        "animals it was trained on"}


def card(bundle, *, placers: dict[str, dict[str, float]], results: Sequence[dict],
         command: str, history: Sequence[dict], training_command: str,
         extractor_command: str) -> dict[str, Any]:
  """What MODEL_CARD.md states (JSON-ready). ``command``: the one that built the
  folder; ``training_command``: the one that trained its tissue network;
  ``extractor_command``: the one that trained its extractor."""
  tissue = bundle.networks["tissue"]
  extractor = bundle.networks["extractor"]
  return {
      "licence": "GPL-3.0 (LICENSE): the tissue network learned from GPL-3.0 data; the "
                 "project's code stays Apache-2.0",
      "sources": SOURCES, "network_sources": NETWORK_SOURCES,
      "labels": {str(v): t for v, t in enumerate(classes.TITLES)},
      "tissue_definition": tissue_table.describe(),
      "tissue_table": str(tissue_table.table_path().name),
      "tissue_table_sha256": tissue_table.table_sha256(),
      "tissue": {"config": tissue.config.to_dict(), "info": tissue.info},
      "extractor": {"config": extractor.config.to_dict(), "info": extractor.info,
                    "split": bundle.info.get("extractor_split") or {}},
      "voxel_size": [float(x) for x in bundle.voxel_size],
      "slice_shape": list(bundle.slice_shape),
      "placers_brain_dice": {p: {"mean": float(np.mean(list(v.values()))), "per_animal": v}
                             for p, v in placers.items()},
      "bank_split": bundle.split,
      "results": [_table_only(r) for r in results if "mode" in r],
      "validation_curve": [{k: h.get(k) for k in ("epoch", "step", "val_wm", "val_gm",
                                                  "val_csf", "val_brain")} for h in history],
      "not_trained_on": list(NOT_TRAINED_ON),
      "command": command,
      "training_command": training_command,
      "extractor_command": extractor_command,
      "seed": int(tissue.config.seed),
      "extractor_seed": int(extractor.config.seed),
  }


def _table_only(run: dict) -> dict:
  out = {k: run[k] for k in _RUN_KEYS if k in run}
  for key in ("atlas_test", "dsurqe_test"):
    if key in out:
      out[key] = {k: v for k, v in out[key].items() if k != "per_subject"}
  if "epi_test_foreground_dice" in out:
    out["epi_test_foreground_dice"] = {"folds": out["epi_test_foreground_dice"]["folds"]}
  return out


def _pct(s: dict | None) -> str:
  if not s or s.get("mean") is None:
    return "-"
  return f"{100 * s['mean']:.1f} +- {100 * s['sd']:.1f}"


def _results_lines(results: Sequence[dict]) -> list[str]:
  lines = []
  for r in results:
    if "atlas_test" not in r and "dsurqe_test" not in r:
      continue
    what = f"`{r['run']}`: mode {r['mode']}" + (f", trained without {r['without']}"
                                                if r.get("without") else "")
    note = f" ({_NOTES[r['mode']]})" if r["mode"] in _NOTES else ""
    lines += [f"- {what}, folds {', '.join(map(str, r['folds']))}{note}:"]
    for key, title in (("atlas_test", "mouse_t2_atlas test mice"), ("dsurqe_test", "DSURQE")):
      if key in r:
        t = r[key]["table"]
        lines.append(f"  - {title} ({r[key]['subjects']}): WM / GM / CSF / brain "
                     + " / ".join(_pct(t["network"][c]) for c in ("wm", "gm", "csf",
                                                                  "brain_dice"))
                     + "; all-GM WM / GM / CSF "
                     + " / ".join(_pct(t["all_gm"][c]) for c in ("wm", "gm", "csf"))
                     + "; mixture " + " / ".join(_pct(t["mixture"][c]) for c in
                                                 ("wm", "gm", "csf")))
    if "epi_test_foreground_dice" in r:
      lines.append("  - mouse_epi test animals, foreground brain Dice of the tissue network "
                   "on raw slices: " + _pct(r["epi_test_foreground_dice"]["folds"]))
  return lines


def markdown(c: dict[str, Any]) -> str:
  """MODEL_CARD.md of :func:`card`'s record."""
  t_info = c["tissue"]["info"]
  split = t_info.get("split", {})
  lines = [
      "# rodent_gbp shipped model: mouse", "",
      "The model `rodent-gbp-segment` uses when no `--model_dir` is given.", "",
      "## Licence", "",
      f"This folder is licensed {c['licence']}. Cite the sets below when you use it.", "",
      "## Outputs", "",
      "`<name>_brainmask.nii.gz`: the extractor's brain mask. `<name>_labels.nii.gz`: "
      + ", ".join(f"{v} {t}" for v, t in c["labels"].items())
      + "; 0 outside the brain mask. Tissue definition: " + c["tissue_definition"], "",
      "## Networks and the data behind them", "",
      "| network | learned from | licence | cite |", "|---|---|---|---|"]
  for net, names in c["network_sources"].items():
    for n in names:
      s = c["sources"][n]
      lines.append(f"| `{net}` | `{n}`: {s['what']} | {s['licence']} | {s['cite']} |")
  ex = c["extractor"]
  lines += [
      "",
      f"- `extractor`: 2-class U-Net (features {ex['config']['features']}, depth "
      f"{ex['config']['depth']}) on raw `mouse_epi` slices against the manual masks "
      f"(animals {', '.join(ex['split'].get('train', []))}, selected on "
      f"{', '.join(ex['split'].get('val', []))}; kept "
      f"epoch {ex['info'].get('epoch')}); unchanged from the earlier shipped model.",
      f"- `tissue`: 4-class U-Net (features {c['tissue']['config']['features']}, depth "
      f"{c['tissue']['config']['depth']}) trained on images synthesised from label maps "
      "(`rodent_gbp.training.tissue_synth`; docs/design.md#tissue-from-label-maps) "
      "plus the real images of the sets: atlas mice "
      f"{', '.join(split.get('mouse_t2_atlas', {}).get('train', []))}; DSURQE; mouse_epi "
      f"heads {', '.join(split.get('mouse_epi', {}).get('train', []))}. Selected on atlas "
      f"mice {', '.join(split.get('mouse_t2_atlas', {}).get('val', []))} and mouse_epi "
      f"{', '.join(split.get('mouse_epi', {}).get('val', []))}; kept epoch "
      f"{t_info.get('epoch')}.",
      f"- Grid: {' x '.join(f'{x:g}' for x in c['voxel_size'])} mm, slices "
      f"{c['slice_shape'][0]} x {c['slice_shape'][1]}; template bank rebuilt with this "
      f"tissue network from mouse_epi {', '.join(c['bank_split']['train'])}.", "",
      "## Measured", "",
      "Brain Dice of the placers through `rodent-gbp-segment` on mouse_epi "
      f"{', '.join(c['bank_split']['test'])} (held out of both networks):", "",
      "| placement | mean | per animal |", "|---|---|---|"]
  for p, row in c["placers_brain_dice"].items():
    lines.append(f"| `{p}` | {row['mean']:.4f} | "
                 + ", ".join(f"{a} {x:.3f}" for a, x in row["per_animal"].items()) + " |")
  lines += ["", "Tissue DSC in percent, mean +- sd over folds, by the tissue table, of "
            "networks trained the same way on folds that held the tested subjects out "
            "(`experiments/results/tissue_synth/`):", ""]
  lines += _results_lines(c["results"]) or ["- (no results recorded)"]
  lines += ["", "Validation curve of this network (epoch: WM / GM / CSF of the validation "
            "atlas mice, mouse_epi foreground brain Dice):", ""]
  for h in c["validation_curve"]:
    vals = [h.get(k) for k in ("val_wm", "val_gm", "val_csf", "val_brain")]
    lines.append(f"- {h['epoch'] + 1} (step {h['step']}): "
                 + " / ".join("-" if v is None else f"{v:.3f}" for v in vals))
  lines += ["", "## Not trained on", ""] + [f"- {x}" for x in c["not_trained_on"]]
  lines += ["", "## Files", "", "| file | bytes |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in c.get("files", {}).items()]
  lines += ["", f"Tissue network trained by: `{c['training_command']}` (seed {c['seed']}).",
            f"Extractor trained by: `{c.get('extractor_command') or 'not recorded'}` (seed "
            f"{c['extractor_seed']}).",
            f"Folder made by: `{c['command']}`", ""]
  return "\n".join(lines)
