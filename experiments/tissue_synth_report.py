r"""Tables of the tissue-from-label-maps runs (``experiments/tissue_synth.py``).

Reads the runs' ``fold<k>/result.json`` and writes ``summary.json`` and
``summary.md`` into ``--out``: per run, the atlas test mice's tissue DSC (WM, GM,
CSF by the tissue table) and brain Dice on their native grid through
``rodent-gbp-segment``, mean +- sd over folds (a fold's value is the mean of its
test mice), beside the all-GM and mixture baselines on the same brains; the
transfer runs' left-out sources; the ``mouse_epi`` test animals' foreground
brain Dice; the validation curve of each run.

  python experiments/tissue_synth_report.py --runs cv_synth=/work/runs/ts/cv_synth,\
cv_real=/work/runs/ts/cv_real --out_dir experiments/results/tissue_synth
"""

from __future__ import annotations

import pathlib

from absl import app
from absl import flags
import nibabel as nib
import numpy as np

from rodent_gbp import cli
from rodent_gbp import data
from rodent_gbp import fileio
from rodent_gbp import metrics
from rodent_gbp import scan
from rodent_gbp import tissue_table
from rodent_gbp.datasets import mouse_t2_atlas

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "name=folder pairs of experiments/tissue_synth.py workdirs.",
                  required=True)
flags.DEFINE_string("out_dir", None, "Where summary.json and summary.md go.", required=True)

flags.DEFINE_string("data_root", str(pathlib.Path(__file__).resolve().parents[2] / "shared" /
                                     "data"), "Folder with mouse-t2-atlas/ (old reading).")

CLASSES = ("wm", "gm", "csf", "brain_dice")
WAYS = ("network", "all_gm", "mixture")


def _stat(values) -> dict:
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if not len(v):
    return {"mean": None, "sd": None, "n": 0}
  return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "n": int(len(v))}


def _fold_means(rows: dict, way: str) -> dict[str, float]:
  return {c: float(np.nanmean([r[way][c] for r in rows.values() if way in r]))
          for c in CLASSES}


def _old_reading(folder: pathlib.Path, records: list[dict]) -> list[dict]:
  """Per fold {mouse: {wm, gm, csf}}: the run's segmentations of the atlas test mice
  scored by the reading of the committed manual-removal cross-validation
  (``mouse_t2_atlas.tissue_lut``: no structure ignored)."""
  root = pathlib.Path(FLAGS.data_root) / "mouse-t2-atlas" / mouse_t2_atlas.LABEL_DIR
  lut = mouse_t2_atlas.tissue_lut()
  out = []
  for r in records:
    rows = {}
    for m in r.get("atlas_test") or {}:
      path = folder / f"fold{r['fold']}" / "segment" / f"{m}_labels.nii.gz"
      if not path.is_file() or not (root / f"{m}.nii.gz").is_file():
        continue
      truth = lut[np.rint(np.asarray(nib.load(root / f"{m}.nii.gz").dataobj)).astype(int)]
      pred = np.asarray(nib.load(path).dataobj).astype(int)
      rows[m] = {c: float(metrics.mask_dice(pred == v, truth == v))
                 for v, c in ((1, "wm"), (2, "gm"), (3, "csf"))}
    if rows:
      out.append(rows)
  return out


def grid_ceiling(pixel_mm: float = 0.25) -> dict:
  """Tissue DSC of the truth itself taken to the model grid and back (nearest both
  ways, as ``rodent-gbp-segment`` does) on every local ``mouse_t2_atlas`` mouse: what
  a perfect network on the model grid scores on the native one."""
  root = pathlib.Path(FLAGS.data_root) / "mouse-t2-atlas" / mouse_t2_atlas.LABEL_DIR
  rows = {}
  for path in sorted(root.glob("*.nii.gz")):
    img = nib.as_closest_canonical(nib.load(path))
    codes = tissue_table.to_tissue("mouse_t2_atlas", np.asarray(img.dataobj))
    vs = nib.affines.voxel_sizes(img.affine)
    sl = data.to_slices(codes)
    h, w = sl.shape[1:]
    grid = tuple(int(round(n * v / pixel_mm)) for n, v in zip((h, w), (vs[0], vs[2])))
    down = scan.resample_inplane(sl, (vs[0], vs[2]), (pixel_mm, pixel_mm), grid, order=0)
    back = scan.resample_inplane(down, (pixel_mm, pixel_mm), (vs[0], vs[2]), (h, w), order=0)
    sc = tissue_table.score(np.where(back == tissue_table.IGNORE, tissue_table.GM, back), sl)
    rows[path.name[:-7]] = {c: sc[c] for c in ("wm", "gm", "csf")}
  return {"pixel_mm": pixel_mm, "mice": len(rows),
          **{c: _stat([r[c] for r in rows.values()]) for c in ("wm", "gm", "csf")}}


def summarise(name: str, folder: pathlib.Path) -> dict:
  folds = sorted(folder.glob("fold*/result.json"))
  records = [fileio.read_json(p) for p in folds]
  out: dict = {"run": name, "folder": str(folder), "folds": [r["fold"] for r in records]}
  if not records:
    return out
  out["mode"], out["without"] = records[0]["mode"], records[0]["without"]
  out["steps"] = [r["history"][-1]["step"] if r["history"] else None for r in records]
  out["kept_epoch"] = [r["kept_epoch"] for r in records]
  out["curves"] = {r["fold"]: [{k: h.get(k) for k in ("epoch", "step", "loss", "val_wm",
                                                      "val_gm", "val_csf", "val_brain")}
                               for h in r["history"]] for r in records}
  for key in ("atlas_test", "dsurqe_test"):
    per_fold = [r[key] for r in records if r.get(key)]
    if not per_fold:
      continue
    table = {}
    for way in WAYS:
      means = [_fold_means(rows, way) for rows in per_fold]
      table[way] = {c: _stat([m[c] for m in means]) for c in CLASSES}
    out[key] = {"table": table, "subjects": sum(len(rows) for rows in per_fold),
                "per_subject": {s: {w: {c: row[w][c] for c in CLASSES} for w in WAYS}
                                for rows in per_fold for s, row in rows.items()}}
  old = _old_reading(folder, records)
  if old:
    out["atlas_test_old_reading"] = {c: _stat([np.mean([m[c] for m in fold.values()])
                                               for fold in old]) for c in ("wm", "gm", "csf")}
  epi = [r["epi_test_foreground_dice"] for r in records if r.get("epi_test_foreground_dice")]
  if epi:
    out["epi_test_foreground_dice"] = {
        "folds": _stat([np.mean(list(d.values())) for d in epi]),
        "per_animal": {a: x for d in epi for a, x in d.items()}}
  return out


def _fmt(s: dict) -> str:
  return "-" if s["mean"] is None else f"{100 * s['mean']:.1f} +- {100 * s['sd']:.1f}"


def markdown(summaries: list[dict]) -> str:
  lines = ["# Tissue from label maps: results", "",
           "DSC in percent, mean +- sd over folds (a fold's value is the mean over its test "
           "subjects), on each scan's native grid, classes by `rodent_gbp/tissue_table.csv` "
           "(ignored structures left out of WM/GM/CSF, counted as brain). `network`: "
           "`rodent-gbp-segment` with the run's model folder (the published skull-stripped "
           "images: their nonzero voxels are the brain); `all_gm` and `mixture` (a plain "
           "3-class Gaussian mixture of the brain's intensities, darkest WM, brightest CSF, "
           "without the N4 correction of the main job's mixture baseline): baselines on "
           "the same true brains.", ""]
  for s in summaries:
    if s["run"] == "grid_ceiling":
      lines += ["## The model grid's ceiling", "",
                f"The truth itself taken to the model grid ({s['pixel_mm']} mm in-plane) and "
                f"back, nearest both ways, on all {s['mice']} local `mouse_t2_atlas` mice "
                "(mean +- sd over mice): WM " + _fmt(s["wm"]) + ", GM " + _fmt(s["gm"])
                + ", CSF " + _fmt(s["csf"]) + ": what a network that is right on the "
                "model grid scores on the native 0.15 mm grid.", ""]
    if "mode" not in s:
      continue
    what = f"mode `{s['mode']}`" + (f", without `{s['without']}`" if s["without"] else "")
    lines += [f"## {s['run']} ({what}; folds {', '.join(map(str, s['folds']))}; steps "
              f"{', '.join(map(str, s['steps']))}; kept epochs "
              f"{', '.join(map(str, s['kept_epoch']))})", ""]
    for key, title in (("atlas_test", "mouse_t2_atlas test mice"),
                       ("dsurqe_test", "DSURQE average")):
      if key not in s:
        continue
      lines += [f"{title} ({s[key]['subjects']} subjects)", "",
                "| way | WM | GM | CSF | brain Dice |", "|---|---|---|---|---|"]
      for way in WAYS:
        t = s[key]["table"][way]
        lines.append(f"| {way} | " + " | ".join(_fmt(t[c]) for c in CLASSES) + " |")
      lines.append("")
    if "atlas_test_old_reading" in s:
      o = s["atlas_test_old_reading"]
      lines += ["The same segmentations scored by the reading of the committed manual-removal "
                "cross-validation (`experiments/results/cv_mouse_t2_atlas/`: no structure "
                "ignored): WM " + _fmt(o["wm"]) + ", GM " + _fmt(o["gm"]) + ", CSF "
                + _fmt(o["csf"]) + ".", ""]
    if "epi_test_foreground_dice" in s:
      e = s["epi_test_foreground_dice"]
      lines += [f"`mouse_epi` test animals, brain Dice of the network's foreground on the raw "
                f"slices: {_fmt(e['folds'])} over folds (per animal: "
                + ", ".join(f"{a.split(':')[-1]} {x:.3f}" for a, x in
                            sorted(e["per_animal"].items())) + ").", ""]
  return "\n".join(lines)


def main(argv):
  cli.begin(argv)
  out = pathlib.Path(FLAGS.out_dir)
  summaries = []
  for pair in FLAGS.runs:
    name, folder = pair.split("=", 1)
    summaries.append(summarise(name, pathlib.Path(folder)))
  out.mkdir(parents=True, exist_ok=True)
  summaries.append({"run": "grid_ceiling", **grid_ceiling()})
  fileio.write_json(out / "summary.json", summaries)
  (out / "summary.md").write_text(markdown(summaries))
  print((out / "summary.md").read_text())


if __name__ == "__main__":
  app.run(main)
