r"""Brain extraction from label maps: cross-validation on mouse_epi by animal.

For each fold k of ``experiments/folds/mouse_epi.json``, the brain extractor
(``rodent_gbp.training.extractor_synth``) is trained in two stages:

1. ``synth``: images synthesised from whole-head label maps only (the fold's
   ``mouse_epi`` training heads split by intensity, every ``mouse_t2_atlas``
   mouse and DSURQE placed into them; coronal, axial and sagittal slices;
   mouse and rat sizes); no real image of any set, no validation (the last
   step is kept): the fold's test animals' real EPI is a contrast never seen;
2. ``finetune``: from the synth params, half real training heads (their real
   image used ``--p_real`` of the time), half synthesised slices; the epoch is
   kept by the fold's validation animals' brain Dice.

Both are tested as the committed extraction CV was
(``experiments/results/extraction_cv_mouse_epi``): session 1 of the fold's test
animals, ``extractor.extract`` (8-orientation average, post-processing),
brain Dice and HD95 against the manual masks, QC figures. Atlas mice are no
test here, so all of them give brains. A fold whose ``result.json`` exists is
skipped; ``summary.json`` / ``summary.md`` are written over the folds done.

Example (fold 0, a few steps)::

  python experiments/extractor_synth.py --workdir /tmp/es --folds 0 \
      --synth_steps 20 --finetune_steps 10
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
import sys

from absl import app
from absl import flags
import nibabel as nib
import numpy as np

from rodent_gbp import bundle as bundle_lib
from rodent_gbp import cli
from rodent_gbp import data
from rodent_gbp import extractor
from rodent_gbp import fileio
from rodent_gbp import inference
from rodent_gbp import metrics
from rodent_gbp import model as model_lib
from rodent_gbp import models
from rodent_gbp.datasets import cache
from rodent_gbp.datasets import label_maps
from rodent_gbp.datasets import mouse_dsurqe
from rodent_gbp.datasets import mouse_t2_atlas
from rodent_gbp.studies import extraction_cv
from rodent_gbp.training import extraction
from rodent_gbp.training import extractor_synth

FLAGS = flags.FLAGS
REPO = pathlib.Path(__file__).resolve().parents[1]
flags.DEFINE_string("data_root", str(REPO.parent / "shared" / "data"),
                    "Folder with mouse-epi/, mouse-t2-atlas/ and mouse-dsurqe/.")
flags.DEFINE_string("data_cache", None,
                    "Where converted sets are kept (default: the project's cache).")
flags.DEFINE_string("workdir", None, "Where the folds' runs and the summary go.",
                    required=True)
flags.DEFINE_list("folds", ["0", "1", "2", "3", "4"], "Folds to run.")
flags.DEFINE_integer("synth_steps", 9000, "Steps of the synthesis-only stage.")
flags.DEFINE_integer("finetune_steps", 2500, "Steps of the fine-tune with real images "
                     "(0: no fine-tune).")
flags.DEFINE_float("p_real", 0.9, "Fine-tune: probability a slice with a real image uses it.")
flags.DEFINE_integer("features", 8, "U-Net base features.")
flags.DEFINE_integer("batch_size", 16, "Batch size.")
flags.DEFINE_integer("copies", 2, "Composite heads per mouse_epi training session.")
flags.DEFINE_integer("thin", 3, "Keep every n-th axial and sagittal slice.")
flags.DEFINE_integer("seed", 0, "Seed (init, batches, synthesis, composites).")
flags.DEFINE_string("base_model", str(REPO / "rodent_gbp" / "models" / "mouse"),
                    "Model folder whose tissue network and bank the fold bundles keep.")
flags.DEFINE_string("baseline", str(REPO / "experiments" / "results" /
                                    "extraction_cv_mouse_epi" / "per_animal.csv"),
                    "The committed extraction CV's per-animal CSV (shown beside).")
flags.DEFINE_bool("figures", True, "Write QC figures of the test animals.")
flags.DEFINE_string("rat_head", "", "A whole-head rat scan of trusted voxel size to add "
                    "as a label map (its own size, atlas brains stretched to its brain); "
                    "empty: none. It is then no test for the transfer.")
flags.DEFINE_string("rat_head_mask", "", "The rat head's brain mask (NIfTI on its grid); "
                    "empty: made with the installed model through rodent-gbp-segment into "
                    "<workdir>/rat_head (look at its QC figure).")
flags.DEFINE_list("rat_head_slices", ["2", "24"], "First and stop coronal slice (RAS A-P "
                  "voxel index) of the rat head where its mask is trusted.")
flags.DEFINE_integer("rat_copies", 8, "Composite heads made of the rat head.")
flags.DEFINE_enum("without", "", ["", "dsurqe", "mouse_t2_atlas"],
                  "Leave one atlas out of the label maps (a transfer run: DSURQE's image "
                  "then tests a source the network never saw in any form).")
flags.DEFINE_bool("retransfer", False, "Run the other labs' scans again through "
                  "rodent-gbp-segment for folds already done (after a change of the "
                  "prediction or its post-processing); their training is not repeated.")
flags.DEFINE_string("rat", str(REPO.parent / "shared" / "data" / "rat-t2w" / "sub-15_T2w.nii.gz"),
                    "The rat-t2w scan, segmented with each stage's model (no truth: brain "
                    "volume and QC); empty: skipped.")

PIXEL_MM = 0.25
SHAPE = (80, 80)
STAGES = ("synth", "finetune")


def _brains(root: pathlib.Path) -> list[label_maps.Brain]:
  """Every ``mouse_t2_atlas`` mouse and DSURQE, less ``--without``."""
  mice = fileio.read_json(REPO / "experiments" / "folds" / "mouse_t2_atlas.json")["animals"]
  if FLAGS.without == "mouse_t2_atlas":
    mice = []
  base = root / "mouse-t2-atlas"
  out = []
  for m in mice:
    image, structures, affine = mouse_t2_atlas.read_mouse(
        base / mouse_t2_atlas.IMAGE_DIR / f"{m}.nii.gz",
        base / mouse_t2_atlas.LABEL_DIR / f"{m}.nii.gz")
    out.append(label_maps.t2_brain(image, structures, affine, m))
  if FLAGS.without != "dsurqe":
    image, structures, affine = mouse_dsurqe.read_dsurqe(root / "mouse-dsurqe")[:3]
    out.append(label_maps.dsurqe_brain(image, structures, affine))
  return out


def _keep(s: label_maps.SliceSet, plane: str) -> label_maps.SliceSet:
  """Drops slices of air only; keeps every ``--thin``-th axial / sagittal slice."""
  keep = (s.labels > 0).any(axis=(1, 2))
  if plane != "coronal":
    keep &= np.arange(len(s)) % FLAGS.thin == 0
  return label_maps.SliceSet(**{f.name: getattr(s, f.name)[keep]
                                for f in dataclasses.fields(label_maps.SliceSet)})


def training_slices(heads, brains, k: int, rat_heads=()) -> label_maps.SliceSet:
  """Real and composite ``mouse_epi`` heads at mouse and (by scale) rat size,
  then composites of ``rat_heads`` at their own size."""
  parts, rats = [], []
  for plane in data.PLANES:
    parts += [_keep(label_maps.real_head_slices(h, pixel_mm=PIXEL_MM, shape=SHAPE,
                                                plane=plane), plane) for h in heads]
    parts.append(_keep(label_maps.composite_heads(
        heads, brains, copies=FLAGS.copies, pixel_mm=PIXEL_MM, shape=SHAPE,
        seed=FLAGS.seed + k, planes=(plane,), gap_is_brain=True), plane))
    if rat_heads:
      rats.append(_keep(label_maps.composite_heads(
          rat_heads, brains, copies=FLAGS.rat_copies, pixel_mm=PIXEL_MM, shape=SHAPE,
          seed=FLAGS.seed + k, planes=(plane,), gap_is_brain=True), plane))
  return label_maps.concat([extractor_synth.with_rat_sizes(label_maps.concat(parts))] + rats)


def rat_heads(work: pathlib.Path, log) -> list[label_maps.Head]:
  """``--rat_head`` as a label-map head (none without it); its mask made with the
  installed model where ``--rat_head_mask`` is not given."""
  if not FLAGS.rat_head:
    return []
  mask = FLAGS.rat_head_mask
  if not mask:
    out = work / "rat_head"
    mask = out / "rat_head_brainmask.nii.gz"
    if not mask.is_file():
      inference.segment_scan(FLAGS.rat_head, None, out, name="rat_head", overwrite=True,
                             log=log)
  first, stop = (int(x) for x in FLAGS.rat_head_slices)
  head = label_maps.read_scan_head(FLAGS.rat_head, mask, "rat_t2w:head",
                                   ap_range=(first, stop))
  log(f"rat head {FLAGS.rat_head}: mask {mask}, coronal slices {first}..{stop - 1}, "
      f"{int(head.mask.sum() * np.prod(head.voxel_mm))} mm^3 of brain")
  return [head]


def _epochs(steps: int, n: int) -> int:
  return max(1, math.ceil(steps / (n // FLAGS.batch_size)))


def test(result, volumes, fold_dir: pathlib.Path, stage: str) -> dict:
  model = model_lib.build_unet(result.config)
  animals = {}
  for v in volumes:
    out = extractor.extract_with(result.params, v.image, model=model)
    animals[v.animal_id] = {
        "brain_dsc": metrics.mask_dice(out["mask"], v.brainmask),
        "brain_hd95_mm": metrics.hd95(out["mask"], v.brainmask, data.slice_spacing(v))}
    if FLAGS.figures:
      extraction_cv.qc_figure(fold_dir / "figures" / f"{stage}_qc_{v.animal_id}.png", v,
                              out["mask"])
  return animals


def run_fold(k: int, root: pathlib.Path, epi_dir: pathlib.Path, brains, work: pathlib.Path,
             log) -> dict:
  """Fold ``k`` of the fold file into ``<work>/fold<k>``."""
  split = fileio.read_json(REPO / "experiments" / "folds" / "mouse_epi.json")["folds"][k]
  fold_dir = work / f"fold{k}"
  heads = label_maps.read_heads(epi_dir, split["train"])
  slices = training_slices(heads, brains, k, rat_heads(work, log))
  vols = extraction.load_split(epi_dir, split, log=log, source="mouse_epi")
  log(f"fold {k}: {len(slices)} label-map slices from {len(heads)} heads and "
      f"{len(brains)} atlas brains (all three planes, mouse and rat sizes)")
  n_rat = int(np.char.startswith(slices.subject.astype(str), "rat_t2w:").sum())
  if n_rat:
    log(f"fold {k}: {n_rat} of them from the rat head ({FLAGS.rat_head})")
  record = {"fold": k, "split": split, "training_slices": len(slices),
            "rat_head": FLAGS.rat_head or None, "rat_head_slices": n_rat,
            "without": FLAGS.without or None,
            "command": "python experiments/extractor_synth.py " + " ".join(sys.argv[1:])}
  config = extractor_synth.synth_extractor_config(
      features=FLAGS.features, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
      epochs=_epochs(FLAGS.synth_steps, len(slices)))
  result = extractor_synth.train(slices, [], config, extractor_synth.OPTIONS,
                                 checkpoint_dir=fold_dir / "synth" / "checkpoints",
                                 split=split, resume=True, log=log)
  stages = {"synth": (result, extractor_synth.OPTIONS)}
  if FLAGS.finetune_steps > 0:
    options = dataclasses.replace(extractor_synth.OPTIONS, p_real=FLAGS.p_real)
    ft_slices = extractor_synth.finetune_slices(slices, seed=FLAGS.seed + k)
    ft_config = dataclasses.replace(config, epochs=_epochs(FLAGS.finetune_steps,
                                                           len(ft_slices)))
    log(f"fine-tune: {len(ft_slices)} slices, {int(ft_slices.has_image.sum())} with a real "
        "image")
    ft = extractor_synth.train(ft_slices, vols["val"], ft_config, options,
                               init_params=result.params,
                               checkpoint_dir=fold_dir / "finetune" / "checkpoints",
                               split=split, resume=True, log=log)
    stages["finetune"] = (ft, options)
  for stage, (res, options) in stages.items():
    bundle = bundle_lib.load_bundle(FLAGS.base_model)
    bundle.networks[extractor.NETWORK] = res.network(
        trained_on=f"label maps, stage {stage} (rodent_gbp.training.extractor_synth)",
        split=split)
    bundle_lib.save_bundle(fold_dir / stage / "model", bundle)
    animals = test(res, vols["test"], fold_dir, stage)
    record[stage] = {
        "config": res.config.to_dict(), "options": dataclasses.asdict(options),
        "steps": int(res.history[-1]["step"]) if res.history else 0,
        "kept_epoch": res.kept_epoch, "val_brain_dsc": res.best_val_dice,
        "train_seconds": float(sum(h["seconds"] for h in res.history)),
        "history": res.history, "per_animal": animals}
    log(f"fold {k} {stage}: test brain Dice " + ", ".join(
        f"{a} {m['brain_dsc']:.4f}" for a, m in animals.items()))
  fileio.write_json(fold_dir / "result.json", record)
  return record


def transfer(folders: dict, work: pathlib.Path, root: pathlib.Path, log) -> dict:
  """``folders`` (label -> (model folder, output folder)) through ``rodent-gbp-segment`` on scans of
  other contrasts: DSURQE's in-skull ex-vivo average (truth: its labels > 0; its
  label map trained as a placed brain, its image was never seen) and rat-t2w (no
  truth: brain volume and the QC figure)."""
  inputs = work / "transfer_inputs"
  if not (inputs / "dsurqe.nii.gz").is_file():
    inputs.mkdir(parents=True, exist_ok=True)
    image, structures, affine = mouse_dsurqe.read_dsurqe(root / "mouse-dsurqe")[:3]
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), inputs / "dsurqe.nii.gz")
    nib.save(nib.Nifti1Image((structures > 0).astype(np.uint8), affine),
             inputs / "dsurqe_truth.nii.gz")
  cases = [("dsurqe", inputs / "dsurqe.nii.gz", inputs / "dsurqe_truth.nii.gz")]
  if FLAGS.rat:
    cases.append(("rat_t2w", pathlib.Path(FLAGS.rat), None))
  out = {}
  for label, (folder, out_dir) in folders.items():
    bundle = bundle_lib.load_bundle(folder)
    for name, path, truth in cases:
      res = inference.segment_scan(path, None, out_dir,
                                   bundle=bundle, truth=truth, name=name, overwrite=True,
                                   log=lambda m: None)
      rep = res["report"]
      out.setdefault(label, {})[name] = {
          "brain_mm3": rep["brain_volume"]["mm3"],
          "dice": None if rep["truth"] is None else rep["truth"]["dice"],
          "hd95_mm": None if rep["truth"] is None else rep["truth"]["hd95_mm"]}
      log(f"{folder} {name}: {out[label][name]}")
  return out


def _baseline() -> dict[str, float]:
  path = pathlib.Path(FLAGS.baseline)
  if not path.is_file():
    return {}
  with path.open() as f:
    return {r["animal"]: float(r["brain_dsc"]) for r in csv.DictReader(f)}


def summarise(work: pathlib.Path) -> dict:
  """Mean +- sd over the test animals of the folds done, beside the baseline."""
  base = _baseline()
  folds = sorted(int(p.parent.name[4:]) for p in work.glob("fold*/result.json"))
  rows, out = [], {"folds": folds, "stages": {}, "commands": {}, "rat_head": None,
                   "without": None}
  for k in folds:
    rec = fileio.read_json(work / f"fold{k}" / "result.json")
    out["commands"][str(k)] = rec.get("command")
    out["rat_head"] = out["rat_head"] or rec.get("rat_head")
    out["without"] = out["without"] or rec.get("without")
    for stage in STAGES:
      for a, m in rec.get(stage, {}).get("per_animal", {}).items():
        rows.append({"fold": k, "stage": stage, "animal": a, **m,
                     "committed_cv_dsc": base.get(a, float("nan"))})
  for stage in STAGES:
    sel = [r for r in rows if r["stage"] == stage]
    if not sel:
      continue
    d = np.array([r["brain_dsc"] for r in sel])
    h = np.array([r["brain_hd95_mm"] for r in sel])
    b = np.array([r["committed_cv_dsc"] for r in sel])
    out["stages"][stage] = {"animals": len(sel), "dsc_mean": float(d.mean()),
                            "dsc_sd": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
                            "dsc_min": float(d.min()), "hd95_mean": float(h.mean()),
                            "hd95_sd": float(h.std(ddof=1)) if len(h) > 1 else 0.0,
                            "committed_cv_dsc_mean": float(np.nanmean(b))}
  out["per_animal"] = rows
  out["transfer"] = {f"fold{k}": fileio.read_json(work / f"fold{k}" / "result.json").get(
      "transfer", {}) for k in folds}
  if (work / "transfer_installed.json").is_file():
    out["transfer"]["installed"] = fileio.read_json(work / "transfer_installed.json")
  return out


def markdown(summary: dict, command: str) -> str:
  lines = ["# Brain extraction from label maps: mouse_epi CV test animals", "",
           f"Folds done: {', '.join(map(str, summary['folds']))} ({len(summary['folds'])} of 5, "
           "`experiments/folds/mouse_epi.json`); session 1 of each fold's test animals, "
           "native 0.25 mm grid, `extractor.extract` (8-orientation average, "
           "`extractor.postprocess`).", "",
           "| stage | animals | brain DSC % mean +- sd | worst | HD95 mm | committed "
           "extraction CV, same animals |", "|---|---|---|---|---|---|"]
  for stage, s in summary["stages"].items():
    lines.append(f"| {stage} | {s['animals']} | {100 * s['dsc_mean']:.1f} +- "
                 f"{100 * s['dsc_sd']:.1f} | {100 * s['dsc_min']:.1f} | "
                 f"{s['hd95_mean']:.2f} +- {s['hd95_sd']:.2f} | "
                 f"{100 * s['committed_cv_dsc_mean']:.1f} |")
  lines += ["", "| fold | animal | stage | brain DSC % | HD95 mm | committed CV |",
            "|---|---|---|---|---|---|"]
  for r in summary["per_animal"]:
    lines.append(f"| {r['fold']} | {r['animal']} | {r['stage']} | "
                 f"{100 * r['brain_dsc']:.1f} | {r['brain_hd95_mm']:.2f} | "
                 f"{100 * r['committed_cv_dsc']:.1f} |")
  lines.append("")
  if summary.get("rat_head"):
    lines += [f"The rat scan was a label map of this training (`--rat_head "
              f"{summary['rat_head']}`, its mask the installed extractor's): its volume here "
              "is no test.", ""]
  if summary.get("without"):
    lines += [f"Trained without `{summary['without']}` in the label maps.", ""]
  lines += ["Other contrasts through `rodent-gbp-segment` (DSURQE: in-skull ex-vivo "
            "average, truth its labels > 0; rat-t2w: no truth, brain volume only; a rat "
            "brain is about 1,200-3,200 mm^3):", "",
            "| model | stage | DSURQE brain Dice | DSURQE HD95 mm | rat-t2w brain mm^3 |",
            "|---|---|---|---|---|"]
  for model, stages in summary.get("transfer", {}).items():
    for stage, cases in stages.items():
      d, r = cases.get("dsurqe", {}), cases.get("rat_t2w", {})
      lines.append(f"| {model} | {stage} | {d.get('dice', float('nan')):.4f} | "
                   f"{d.get('hd95_mm', float('nan')):.2f} | "
                   f"{r.get('brain_mm3', float('nan')):.0f} |")
  lines += [""] + [f"Fold {k} trained by: `{c}`" for k, c in summary.get("commands", {}).items()]
  lines += ["", f"Summary written by: `{command}`", ""]
  return "\n".join(lines)


def main(argv):
  cli.begin(argv)

  def log(line: str) -> None:
    print(line, flush=True)

  root = pathlib.Path(FLAGS.data_root)
  work = pathlib.Path(FLAGS.workdir)
  epi_dir = cache.prepare("mouse_epi", data_root=root / "mouse-epi",
                          cache_dir=FLAGS.data_cache, resolution="native", log=log)
  brains = _brains(root)
  for k in FLAGS.folds:
    if (work / f"fold{k}" / "result.json").is_file():
      log(f"fold {k}: done ({work / f'fold{k}' / 'result.json'}), skipped")
      continue
    run_fold(int(k), root, epi_dir, brains, work, log)
  for k in FLAGS.folds:
    path = work / f"fold{k}" / "result.json"
    rec = fileio.read_json(path)
    if "transfer" not in rec or FLAGS.retransfer:
      fold = work / f"fold{k}"
      rec["transfer"] = transfer({st: (fold / st / "model", fold / st / "transfer")
                                  for st in STAGES if (fold / st / "model").is_dir()},
                                 work, root, log)
      fileio.write_json(path, rec)
  if not (work / "transfer_installed.json").is_file() or FLAGS.retransfer:
    fileio.write_json(work / "transfer_installed.json", transfer(
        {"mouse_epi_extractor": (models.default_model_dir(), work / "installed_transfer")},
        work, root, log))
  summary = summarise(work)
  fileio.write_json(work / "summary.json", summary)
  command = "python experiments/extractor_synth.py " + " ".join(sys.argv[1:])
  (work / "summary.md").write_text(markdown(summary, command))
  log(json.dumps(summary["stages"], indent=1))


if __name__ == "__main__":
  app.run(main)
