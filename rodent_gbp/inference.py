"""Segmenting one user scan with a model bundle (``rodent-gbp-segment``).

:func:`segment_scan` takes one NIfTI scan through the same stages as the main
job's test animals:

1. read and validate the file, reorient to RAS+, slice the chosen plane,
   normalise by the bundle's rule (``rodent_gbp.scan``);
2. resample in-plane to the model's voxel size and pad / crop, centred, to
   the bank's slice shape; match each slice to a bank slice by relative
   anterior-posterior position (identity when the slice counts agree);
3. the pipeline with one placer (``placement=``, flag ``--placement``):
   ``gbp_improved`` (default), ``gbp`` (the paper) or ``intensity``
   (``rodent_gbp.placement``); one raw pass gives the saliency map and the
   placer's input, the mask the placer returns is applied and the network
   segments again;
4. undo the padding and the resampling (nearest neighbour for the brain mask
   and labels, linear for the saliency map) and the reorientation, and write
   ``<name>_brainmask.nii.gz`` (the mask that was applied),
   ``<name>_labels.nii.gz`` and ``<name>_saliency.nii.gz`` with the input's
   shape, affine and header, a QC figure ``<name>_qc.png`` and
   ``<name>_slices.csv`` (per slice: displacement and placement confidence;
   for the search placers also the volume's displacement and the chosen
   template animal, slice offset and scale). Displacements are in model
   voxels, relative to the reference animal's acquisition.

Outputs appear all together or not at all: they are written into a hidden
temporary folder inside the output folder and renamed into place at the end;
on any error the temporary folder is removed.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable

import nibabel as nib
import numpy as np

from rodent_gbp import bundle as bundle_lib
from rodent_gbp import data
from rodent_gbp import fileio
from rodent_gbp import pipeline
from rodent_gbp import placement as placement_lib
from rodent_gbp import scan
from rodent_gbp.errors import DataError, InferenceError, UsageError

OUTPUTS = ("brainmask", "labels", "saliency")
DEFAULT_PLACEMENT = "gbp_improved"


def output_paths(out_dir: pathlib.Path, name: str) -> dict[str, pathlib.Path]:
  paths = {k: out_dir / f"{name}_{k}.nii.gz" for k in OUTPUTS}
  paths["qc"] = out_dir / f"{name}_qc.png"
  paths["csv"] = out_dir / f"{name}_slices.csv"
  return paths


def _check_outputs(input_path: pathlib.Path, out_dir: pathlib.Path, name: str,
                   overwrite: bool) -> dict[str, pathlib.Path]:
  """Output paths, after checking they can be written and touch nothing they must not."""
  if not name or "/" in name or name in (".", ".."):
    raise UsageError(f"--name {name!r}: not a usable file name prefix")
  if out_dir.exists() and not out_dir.is_dir():
    raise InferenceError(f"{out_dir}: output folder is a file, not a folder")
  parent = out_dir
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise InferenceError(f"{out_dir}: output folder cannot be created ({parent} is "
                         "not a folder)")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise InferenceError(f"{out_dir}: output folder is not writable")
  paths = output_paths(out_dir, name)
  source = input_path.resolve()
  for p in paths.values():
    if p.resolve() == source:
      raise InferenceError(f"{p}: output would overwrite the input scan")
    if p.exists() and not overwrite:
      raise InferenceError(f"{p}: already exists; pass --overwrite to replace it")
  return paths


def _slice_rows(placed: placement_lib.Placement, native_mask: np.ndarray,
                bank_index: np.ndarray, vs_model, bank, name: str) -> list[dict[str, Any]]:
  n = len(native_mask)
  d = placed.displacement if placed.displacement is not None else np.zeros((n, 2), int)
  rows = []
  for s in range(n):
    row = {"slice": s, "bank_slice": int(bank_index[s]), "placement": name,
           "dy_vox": int(d[s, 0]), "dx_vox": int(d[s, 1]),
           "dy_mm": float(d[s, 0] * vs_model[0]), "dx_mm": float(d[s, 1] * vs_model[1]),
           "confidence": (float(placed.confidence[s]) if placed.confidence is not None
                          else float("nan")),
           "brain_voxels": int(native_mask[s].sum())}
    det = placed.details
    if "volume_displacement" in det:
      row |= {"volume_dy_vox": int(det["volume_displacement"][0]),
              "volume_dx_vox": int(det["volume_displacement"][1]),
              "template_animal": bank.animal_ids[int(det["template_animal"][s])],
              "slice_offset": int(det["slice_offset"][s]),
              "scale": float(det["scale"][s])}
    rows.append(row)
  return rows


def segment_scan(input_path: str | os.PathLike, checkpoint_dir: str | os.PathLike,
                 out_dir: str | os.PathLike, *, plane: str = "coronal",
                 volume: int | None = None, average: bool = False,
                 name: str | None = None, overwrite: bool = False, qc: bool = True,
                 batch_size: int | None = None, placement: str = DEFAULT_PLACEMENT,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Segments one scan with a model bundle; writes the outputs.

  Args:
    input_path: a NIfTI scan (3D, or 4D with ``volume`` or ``average``).
    checkpoint_dir: a model bundle folder (``<workdir>/model`` of the main job).
    out_dir: output folder (created if needed).
    plane: slicing plane, "coronal" (default), "axial" or "sagittal".
    volume: volume index of a 4D series.
    average: mean over the volumes of a 4D series.
    name: output file prefix; default the input file's name without ``.nii[.gz]``.
    overwrite: replace existing outputs of the same name.
    qc: write the QC figure.
    batch_size: slices per network call; default ``config.eval_batch_size``.
    placement: a placer name of ``placement.PLACERS``.
    log: progress sink.

  Returns:
    dict with ``paths`` (output files), ``slices`` (CSV rows), the model-grid
    arrays ``mask`` (the removal mask), ``labels``, ``image``, and ``placement``.

  Raises:
    UsageError, InferenceError, DataError, CheckpointError: one line naming
    the file or flag and the problem.
  """
  # --- arguments and outputs, before anything expensive ---
  if not input_path:
    raise UsageError("--input is required (a NIfTI scan)")
  if not checkpoint_dir:
    raise UsageError("--checkpoint is required (a model folder)")
  if not out_dir:
    raise UsageError("--out_dir is required")
  if plane not in data.PLANES:
    raise UsageError(f"--plane {plane!r}: must be one of {', '.join(data.PLANES)}")
  if placement not in placement_lib.PLACERS:
    raise UsageError(f"--placement {placement!r}: must be one of "
                     f"{', '.join(placement_lib.PLACERS)}")
  if volume is not None and average:
    raise UsageError("--volume and --average exclude each other; pass one")
  if volume is not None and volume < 0:
    raise UsageError(f"--volume {volume}: must be >= 0")
  input_path, out_dir = pathlib.Path(input_path), pathlib.Path(out_dir)
  name = scan.stem(input_path) if name is None else name
  paths = _check_outputs(input_path, out_dir, name, overwrite)

  # --- inputs ---
  image, img = scan.read_scan(input_path, volume=volume, average=average)
  bundle = bundle_lib.load_bundle(checkpoint_dir)
  placement_lib.check_placer(placement, bundle)
  config = bundle.network("tissue").config
  vol = scan.to_volume(image, img.affine, plane=plane, name=name,
                       normalisation=bundle.normalisation)
  axes = scan.INPLANE_AXES[plane]
  vs_scan = data.voxel_sizes_ras(img.affine)[axes]
  vs_model = bundle.voxel_size[axes]
  n_slices, h, w = vol.image.shape
  grid = tuple(max(1, int(round(n * a / b))) for n, a, b in zip((h, w), vs_scan, vs_model))
  factor = 2**config.depth
  if min(grid) < factor:
    raise DataError(
        f"{input_path}: too small for the network: {h} x {w} voxels of "
        f"{vs_scan[0]:g} x {vs_scan[1]:g} mm in the {plane} plane are {grid[0]} x "
        f"{grid[1]} at the model's {vs_model[0]:g} x {vs_model[1]:g} mm; need at "
        f"least {factor} x {factor}")
  bank_hw = bundle.slice_shape
  log(f"{input_path}: {img.shape} -> {n_slices} {plane} slices of {h} x {w} at "
      f"{vs_scan[0]:g} x {vs_scan[1]:g} mm; model grid {grid[0]} x {grid[1]} at "
      f"{vs_model[0]:g} x {vs_model[1]:g} mm ({bundle.voxel_size_source}), "
      f"fitted to {bank_hw[0]} x {bank_hw[1]}")

  # --- the pipeline on the model grid ---
  model_slices = scan.fit_to(scan.resample_inplane(vol.image, vs_scan, vs_model, grid,
                                                   order=1), bank_hw)
  bank_index = scan.bank_slice_index(n_slices, bundle.bank.masks.shape[1])
  raw, removals = pipeline.run(model_slices, [placement], bundle=bundle,
                               slice_index=bank_index, batch_size=batch_size)
  placed = removals[placement].placement
  labels = removals[placement].labels

  # --- back to the input grid ---
  def back(x: np.ndarray, order: int) -> np.ndarray:
    return scan.resample_inplane(scan.unfit(x, grid), vs_model, vs_scan, (h, w), order=order)

  native = {"brainmask": back(placed.mask.astype(np.uint8), 0),
            "labels": back(labels.astype(np.uint8), 0),
            "saliency": back(raw["gradient"].astype(np.float32), 1)}
  # Labels lie inside the applied mask on the model grid; clipping after the
  # nearest-neighbour resampling keeps that true on the input grid too.
  native["labels"] = native["labels"] * (native["brainmask"] > 0)
  dtypes = {"brainmask": np.uint8, "labels": np.uint8, "saliency": np.float32}
  rows = _slice_rows(placed, native["brainmask"], bank_index, vs_model, bundle.bank,
                     placement)

  # --- write everything into a temporary folder, then rename into place ---
  created = not out_dir.exists()
  try:
    out_dir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise InferenceError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir))
  try:
    for key in OUTPUTS:
      arr = np.asanyarray(data.to_nifti(native[key], vol).dataobj)
      nib.save(scan.like_input(arr, img, dtypes[key]), tmp / paths[key].name)
    fileio.write_csv(tmp / paths["csv"].name, rows)
    if qc:
      from rodent_gbp import qc as qc_lib
      qc_lib.scan_figure(tmp / paths["qc"].name, model_slices, placed.mask, labels)
    for key, p in paths.items():
      if (tmp / p.name).exists():
        os.replace(tmp / p.name, p)
  except BaseException:
    if created:
      shutil.rmtree(out_dir, ignore_errors=True)
    raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if not qc:
    paths.pop("qc")
  if "volume_displacement" in placed.details:
    d = placed.details["volume_displacement"]
    log(f"{placement}: volume displacement ({d[0]}, {d[1]}) model voxels")
  log(f"wrote {', '.join(p.name for p in paths.values())} to {out_dir}")
  return {"paths": paths, "slices": rows, "mask": placed.mask, "labels": labels,
          "image": model_slices, "grid": grid, "bank_index": bank_index,
          "placement": placed}
