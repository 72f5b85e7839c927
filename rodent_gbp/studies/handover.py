"""The shipped model on real scans as a lab hands them over (``experiments/handover.py``).

Each case is a NIfTI file written from a public set the way it comes from a
scanner or a collaborator, then segmented by the ``rodent-gbp-segment``
console script in a subprocess, with no ``--model_dir`` (the model folder
installed with the package) and ``--truth`` where a truth mask exists:

* ``epi_<animal>``: a mouse-epi session-1 mean (the ``.mat``'s ``N``) with
  its mask's header, as stored: voxel sizes x10, RSP. Animals 19-22 are held
  out of the shipped model.
* ``epi_<animal>_resliced``: the same voxels transposed to another axis order
  (the affine follows, so it is the same anatomy).
* ``rat_t2w``: the whole-head rat T2w scan of rat-t2w (no truth).
* ``t2_<mouse>``: a mouse-t2-atlas brain (already skull-stripped T2 at
  0.15 mm), scored against label > 0 and against its ``mask/`` file.

The outputs (``<out>/<case>/``) are checked to be in the input's own
geometry (shape and affine); every report's decisions and scores are
gathered into ``handover.json`` and ``handover.md``.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import subprocess
import sys
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from rodent_gbp import fileio
from rodent_gbp import metrics
from rodent_gbp import nifti
from rodent_gbp.errors import DataError

_LOG = logging.getLogger(__name__)

EPI_ANIMALS = ("19", "20", "21", "22")


def epi_case(epi_root: pathlib.Path, animal: str, folder: pathlib.Path) -> list[dict]:
  """Writes the mouse-epi session-1 scan of ``animal`` twice (as stored; resliced)."""
  import scipy.io
  mat = epi_root / "source_images" / f"N_{animal}_1.mat"
  mask_path = epi_root / "masks" / f"mask_{animal}_1_4D_mcflirted.nii"
  if not mat.is_file() or not mask_path.is_file():
    raise DataError(f"{mat} or {mask_path}: not found")
  image = np.asarray(scipy.io.loadmat(str(mat))["N"], np.float32)
  mask_img = nifti.read(mask_path, dtype=None)[1]
  header = mask_img.header.copy()
  header.set_data_dtype(np.float32)
  stored = nib.Nifti1Image(image, mask_img.affine, header)   # x10 voxel sizes, as stored
  truth = nib.Nifti1Image((np.asarray(mask_img.dataobj) > 0).astype(np.uint8),
                          mask_img.affine)
  cases = []
  for suffix, order in (("", (0, 1, 2)), ("_resliced", (2, 0, 1))):
    name = f"epi_{animal}{suffix}"
    perm = np.eye(4)
    perm[:3, :3] = np.eye(3)[:, list(order)]
    affine = stored.affine @ perm        # voxel (i, j, k) of the new array = old (order)
    img = nib.Nifti1Image(np.transpose(image, order), affine)
    img.header.set_zooms(tuple(np.asarray(stored.header.get_zooms())[list(order)]))
    t = nib.Nifti1Image(np.transpose(np.asarray(truth.dataobj), order), affine)
    nib.save(img, folder / f"{name}.nii.gz")
    nib.save(t, folder / f"{name}_truth.nii.gz")
    cases.append({"case": name, "input": folder / f"{name}.nii.gz",
                  "truth": folder / f"{name}_truth.nii.gz", "set": "mouse_epi",
                  "animal": animal, "held_out": animal in EPI_ANIMALS})
  return cases


def t2_case(t2_root: pathlib.Path, mouse: str, folder: pathlib.Path) -> dict:
  """A mouse-t2-atlas brain with its truth label > 0 (and ``mask/`` kept for a second score)."""
  image = t2_root / "template_after_brain_extraction" / f"{mouse}.nii.gz"
  labels, label = nifti.read(t2_root / "label" / f"{mouse}.nii.gz", series=False)
  truth = folder / f"t2_{mouse}_truth.nii.gz"
  nib.save(nib.Nifti1Image((labels > 0).astype(np.uint8), label.affine),
           truth)
  return {"case": f"t2_{mouse}", "input": image, "truth": truth, "set": "mouse_t2_atlas",
          "animal": mouse, "mask_file": t2_root / "mask" / f"{mouse}.nii.gz"}


def run_case(case: dict, out_root: pathlib.Path, *, extra: Sequence[str] = ()) -> dict:
  """Runs ``rodent-gbp-segment`` on one case; returns its report plus the checks."""
  out = out_root / case["case"]
  shutil.rmtree(out, ignore_errors=True)
  exe = shutil.which("rodent-gbp-segment")
  cmd = ([exe] if exe else [sys.executable, "-c",
                            "from rodent_gbp.cli import segment_main; segment_main()"]) + [
      f"--input={case['input']}", f"--out_dir={out}", f"--name={case['case']}", *extra]
  if case.get("truth"):
    cmd.append(f"--truth={case['truth']}")
  # A persistent compile cache shared by the cases: the same model on the same
  # slice grid compiles once instead of once per subprocess.
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(out_root / ".jax_cache"))
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  (out_root / f"{case['case']}.log").write_text(proc.stdout + proc.stderr)
  row = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in case.items()}
  row["returncode"] = proc.returncode
  if proc.returncode:
    row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return row
  report = fileio.read_json(out / f"{case['case']}_report.json")
  row["report"] = report
  src = nifti.read(case["input"])[1]
  m, mask = nifti.read(out / f"{case['case']}_brainmask.nii.gz", series=False)
  row["same_geometry"] = bool(mask.shape == src.shape[:3]
                              and np.allclose(mask.affine, src.affine, atol=1e-5))
  if case.get("mask_file"):
    m = m > 0
    other = nifti.read(case["mask_file"], series=False)[0] > 0
    row["dice_vs_mask_file"] = metrics.mask_dice(m, other)
  return row


def markdown(rows: list[dict], command: str) -> str:
  """handover.md: one line per case (decisions, brain volume, Dice, HD95)."""
  lines = ["# The shipped model on handed-over scans", "",
           f"`{command}`", "",
           "| case | set | slice axis | voxel scale | placer | brain mm^3 | Dice | HD95 mm | "
           "same geometry | warnings |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if r["returncode"]:
      lines.append(f"| {r['case']} | {r['set']} | error: {r.get('error', '')} |||||||||")
      continue
    rep = r["report"]
    truth = rep.get("truth") or {}
    dice = truth.get("dice")
    dice_s = "" if dice is None else f"{dice:.3f}"
    if "dice_vs_mask_file" in r:
      dice_s += f" (mask/: {r['dice_vs_mask_file']:.3f})"
    hd = truth.get("hd95_mm")
    axis = rep["slice_axis"]
    lines.append(
        f"| {r['case']} | {r['set']} | {axis['axis']} ({axis['plane']}) | "
        f"{rep['voxel_scale']['factor']:g} | {rep['placement']} | "
        f"{rep['brain_volume']['mm3']:.0f} | {dice_s} | "
        f"{'' if hd is None else f'{hd:.2f}'} | {r['same_geometry']} | "
        f"{'; '.join(rep.get('warnings') or []) or 'none'} |")
  return "\n".join(lines) + "\n"


def run(out_dir, *, epi_root=None, rat_path=None, t2_root=None,
        epi_animals: Sequence[str] = EPI_ANIMALS, t2_mice: Sequence[str] | None = None,
        command: str = "", log: Callable[[str], None] = _LOG.info) -> list[dict]:
  """Writes and segments every case of the sets given; returns the rows."""
  out = pathlib.Path(out_dir)
  inputs = out / "inputs"
  inputs.mkdir(parents=True, exist_ok=True)
  cases: list[dict] = []
  if epi_root is not None:
    for a in epi_animals:
      cases += epi_case(pathlib.Path(epi_root), a, inputs)
  if rat_path is not None:
    cases.append({"case": "rat_t2w", "input": pathlib.Path(rat_path), "truth": None,
                  "set": "rat_t2w", "animal": "sub-15"})
  if t2_root is not None:
    root = pathlib.Path(t2_root)
    mice = t2_mice or sorted(p.name[:-len(".nii.gz")] for p in
                             (root / "template_after_brain_extraction").glob("*.nii.gz")
                             if (root / "label" / p.name).is_file())
    cases += [t2_case(root, m, inputs) for m in mice]
  rows = []
  for i, case in enumerate(cases):
    row = run_case(case, out)
    rows.append(row)
    rep = row.get("report", {})
    log(f"[{i + 1}/{len(cases)}] {case['case']}: "
        + (f"error {row.get('error')}" if row["returncode"] else
           f"Dice {(rep.get('truth') or {}).get('dice', float('nan')):.3f}, "
           f"{rep['brain_volume']['mm3']:.0f} mm^3, "
           f"same geometry {row['same_geometry']}"))
  fileio.write_json(out / "handover.json", {"command": command, "cases": rows})
  (out / "handover.md").write_text(markdown(rows, command))
  return rows

