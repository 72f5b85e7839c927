"""The mouse_epi model folder: the paper's tissue network on pseudo-labels and the extractor.

It was the folder installed with the package up to 0.2.0
(``rodent_gbp/models/mouse_epi``); its extractor lives on in the installed
``rodent_gbp/models/mouse`` (``experiments/ship_tissue.py``), whose tissue network
learned tissue from label maps instead. :func:`build` makes it from the public
mouse-epi set, from a seed, in one call (``experiments/ship_model.py``):

1. the main job (``job.run``, ``default`` config) on the
   split of ``experiments/splits/mouse_epi_shipped.json``: the tissue U-Net
   trained on animals 01-16 (every session) against the set's pseudo-labels,
   selected on 17-18, its template bank, and the paper's tables on 19-22
   (held out of everything);
2. the supervised brain extractor (``rodent_gbp.training.extraction``) trained on the
   same animals and selected on the same validation animals, added to that
   bundle as the ``extractor`` network;
3. the extractor scored on 19-22 (brain Dice, HD95 against the manual masks);
4. the bundle copied to ``model_dir`` with ``MODEL_CARD.md`` (data, animals,
   contrast, resolution, licence and citation, measured Dice, what it was not
   trained on, file sizes) and ``card.json`` (the same numbers).

Step 1 is skipped when ``<workdir>/tissue/results.json`` exists (a finished
main job of this split), so an interrupted build resumes there.
"""

from __future__ import annotations

import logging
import pathlib
import shutil
from typing import Any, Callable

import numpy as np

from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import extractor
from rodent_gbp import fileio
from rodent_gbp import job
from rodent_gbp import metrics
from rodent_gbp import report
from rodent_gbp.errors import UsageError
from rodent_gbp.training import augment as augment_lib
from rodent_gbp.training import extraction

_LOG = logging.getLogger(__name__)

#: The extractor's settings: those of the 5-fold cross-validation
#: (``experiments/results/extraction_cv_mouse_epi``).
EXTRACTOR = {"features": 8, "depth": 3, "epochs": 30, "batch_size": 16}

NOT_TRAINED_ON = (
    "anatomical (T1/T2-weighted) contrast: only temporal means of T2*-weighted "
    "gradient-echo EPI series",
    "rats or any species but mouse",
    "skull-stripped images (the extractor expects skull and surroundings present)",
    "in-plane voxel sizes other than the set's 0.25 mm beyond the augmentation's "
    "x1/1.5..1.5 rescaling",
    "slice planes other than coronal",
    "pathology, lesions or strong motion artefacts",
)


def _sizes(folder: pathlib.Path) -> dict[str, int]:
  return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def extractor_scores(bundle, volumes) -> dict[str, dict[str, float]]:
  """Brain Dice and HD95 (mm) of the bundle's extractor per volume (its truth mask)."""
  out = {}
  for v in volumes:
    mask = extractor.extract(v.image, bundle=bundle)["mask"]
    out[v.animal_id] = {
        "brain_dsc": metrics.mask_dice(mask, v.brainmask),
        "brain_hd95_mm": metrics.hd95(mask, v.brainmask, data.slice_spacing(v))}
  return out


def card_markdown(card: dict[str, Any]) -> str:
  """MODEL_CARD.md of :func:`build`'s ``card``."""
  d, sp = card["data"], card["split"]
  lines = [
      "# rodent_gbp shipped model: mouse_epi", "",
      "The model `rodent-gbp-segment` uses when no `--model_dir` is given.", "",
      "## Data",
      f"- Set: `{d['dataset']}` ({d.get('repository', '')} at commit `{d.get('commit', '')}`, "
      f"manifest sha256 `{d.get('manifest_sha256', '')}`).",
      f"- Licence: {d.get('licence', '')}. Cite: {d.get('citation', '')}",
      "- Contrast: temporal means of motion-corrected T2*-weighted EPI series (mouse fMRI), "
      "skull, muscle and surroundings present.",
      f"- Resolution: {' x '.join(f'{x:g}' for x in card['voxel_size'])} mm (RAS), coronal "
      "slices; the headers store voxel sizes x10 and the source states none, so the "
      "in-plane size is uncertain.",
      f"- Animals: trained on {', '.join(sp['train'])} (every session), selected on "
      f"{', '.join(sp['val'])}; {', '.join(sp['test'])} held out of everything (scores below).",
      f"- Tissue labels: {d.get('labels', '')} (N4 bias correction and a 3-class mixture "
      "inside the manual mask); brain masks: manual.", "",
      "## Networks",
      f"- `tissue`: the paper's U-Net (config `{card['tissue_config']}`), kept at epoch "
      f"{card['tissue_epoch']} of {card['tissue_epochs_run']} "
      f"({card['tissue_train_seconds']:.0f} s of training).",
      f"- `extractor`: a 2-class U-Net (features {card['extractor']['features']}, depth "
      f"{card['extractor']['depth']}) trained {card['extractor']['epochs']} epochs on raw "
      f"slices against the brain masks with on-device augmentation, kept at epoch "
      f"{card['extractor_kept_epoch']} (validation brain Dice "
      f"{card['extractor_val_dsc']:.4f}).", "",
      f"## Measured on the held-out animals {', '.join(sp['test'])} (session 1)", "",
      "| placement | brain Dice (mean) | per animal |", "|---|---|---|"]
  for name, row in card["brain_dsc"].items():
    per = ", ".join(f"{a} {x:.3f}" for a, x in row["per_animal"].items())
    lines.append(f"| `{name}` | {row['mean']:.4f} | {per} |")
  hd = card["extractor_hd95_mm"]
  lines += ["", f"Extractor HD95: mean {np.mean(list(hd.values())):.3f} mm "
            f"({', '.join(f'{a} {x:.2f}' for a, x in hd.items())}).", "",
            "Tissue DSC against the pseudo-labels, true mask applied (WM / GM / CSF): "
            + " / ".join(f"{card['manual_tissue_dsc'][c]:.3f}" for c in ("wm", "gm", "csf"))
            + " (pseudo-labels, not manual truth).", "",
            "## Not trained on"] + [f"- {x}" for x in NOT_TRAINED_ON]
  lines += ["", "## Files", "", "| file | bytes |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in card["files"].items()]
  lines += ["", f"Total {sum(card['files'].values()) / 1e6:.2f} MB.", "",
            f"Made by: `{card['command']}`", ""]
  return "\n".join(lines)


def build(data_root, workdir, model_dir, *, split_file, data_cache=None, seed: int = 0,
          command: str = "", log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Builds the shipped model folder ``model_dir`` (see the module doc); returns the card."""
  workdir, out = pathlib.Path(workdir), pathlib.Path(model_dir)
  split = fileio.read_json(split_file)
  tissue_dir = workdir / "tissue"
  if (tissue_dir / "results.json").is_file():
    log(f"reusing the finished main job in {tissue_dir}")
  else:
    job.run(configs.get_config("default"), tissue_dir, dataset="mouse_epi",
                        data_root=data_root, data_cache=data_cache, split=split_file,
                        seed=seed, log=log)
  results = fileio.read_json(tissue_dir / "results.json")
  if results["split"] != {k: list(split[k]) for k in ("train", "val", "test")}:
    raise UsageError(f"{tissue_dir / 'results.json'}: its split differs from {split_file}; "
                     "use another --workdir")
  data_dir = pathlib.Path(results["data"]["folder"])
  vols = extraction.load_split(data_dir, split, log=log, source=str(split_file))
  config = extraction.extractor_config(seed=seed, **EXTRACTOR)
  options = augment_lib.AugmentOptions()
  result = extraction.train_extractor(vols["train"], vols["val"], config, options=options,
                                      log=log)
  if out.exists():
    shutil.rmtree(out)
  shutil.copytree(tissue_dir / "model", out)
  bundle = extraction.add_to_bundle(out, result, vols["train"], split,
                                    augment=dict(options.__dict__),
                                    provenance=report.provenance(seed))
  scores = extractor_scores(bundle, vols["test"])
  brain = {"supervised": {a: s["brain_dsc"] for a, s in scores.items()}}
  for name in ("gbp", "gbp_improved", "intensity", "oracle"):
    brain[name] = {a: r["brain"][name]["dsc"] for a, r in results["per_animal"].items()
                   if name in r.get("brain", {})}
  training = results["training"]
  card = {
      "data": results["data"], "split": split,
      "voxel_size": [float(x) for x in bundle.voxel_size],
      "tissue_config": results["config"]["name"],
      "tissue_epoch": training.get("best_epoch"),
      "tissue_epochs_run": len(training["history"]),
      "tissue_train_seconds": float(results["timing"]["train_s"]),
      "extractor": dict(EXTRACTOR, seed=seed), "extractor_kept_epoch": result.kept_epoch,
      "extractor_val_dsc": result.best_val_dice,
      "brain_dsc": {k: {"mean": float(np.mean(list(v.values()))), "per_animal": v}
                    for k, v in brain.items() if v},
      "extractor_hd95_mm": {a: s["brain_hd95_mm"] for a, s in scores.items()},
      "manual_tissue_dsc": {c: results["tables"]["manual"][c]["dsc"]
                            for c in ("wm", "gm", "csf")},
      "command": command}
  fileio.write_json(out / "extractor_history.json", {
      "config": config.to_dict(), "history": result.history})
  card["files"] = _sizes(out)  # before the card itself
  fileio.write_json(out / "card.json", card)
  (out / "MODEL_CARD.md").write_text(card_markdown(card))
  log(f"wrote {out}: supervised brain Dice on {', '.join(split['test'])} "
      f"{card['brain_dsc']['supervised']['mean']:.4f}; "
      f"{sum(card['files'].values()) / 1e6:.2f} MB")
  return card

