"""Segmenting one user scan with a model bundle (``rodent-gbp-segment``).

:func:`segment_scan` takes one NIfTI scan through the same stages as the main
job's test animals:

1. read and validate the file (``rodent_gbp.scan``); a 4D series is
   segmented on the mean of its volumes (or ``volume``); decide from the
   header, printing each decision and writing it to the report:

   * voxel scale: voxel sizes stored x10 are recognised by the field of view
     (the widest >= ``scan.X10_MIN_FOV_MM`` = 150 mm whose tenth lies in
     ``scan.HEAD_FOV_MM`` = 10-80 mm; a rodent head is about 20-35 mm
     across) and divided by 10; ``voxel_scale`` sets the factor;
   * slice axis: the header's anterior-posterior axis, unless one voxel axis
     is >= ``scan.THICK_RATIO`` = 2x thicker than both others: then that
     axis, with a warning; ``plane`` overrides (a plane name or a voxel axis);
     where only the header named it, the first pass's brain mask is read
     (``orient.brain_axes``) and a confident other reading cuts again;
   * intensity: an offset (minimum negative or above 5% of the robust
     maximum) is subtracted; the bundle's rule (a division by a robust
     maximum) then removes any scanner scale;

   reorient to RAS+, slice the chosen plane, normalise;
2. resample in-plane to the model's voxel size and pad / crop, centred, to
   the bank's slice shape; match each slice to a bank slice by relative
   anterior-posterior position (identity when the slice counts agree);
3. the pipeline with one placer (``placement=``, flag ``--placement``, the
   keys of ``placement.PLACERS``); one raw pass gives the saliency map and
   the placer's input, the mask the placer returns is applied and the
   network segments again;
4. undo the padding and the resampling (nearest neighbour for the brain mask
   and labels, linear for the saliency map) and the reorientation, and write
   ``<name>_brainmask.nii.gz`` (the mask that was applied),
   ``<name>_labels.nii.gz``, ``<name>_saliency.nii.gz`` and
   ``<name>_brain.nii.gz`` (the stored values zero outside the mask, every
   volume of a series) with the input's shape, affine and header; a QC
   figure ``<name>_qc.png`` (mask contours over up to 16 slices, brain area
   per slice); ``<name>_slices.csv`` (per slice: displacement and placement
   confidence; for the search placers also the volume's displacement and
   the chosen template animal, slice offset and scale; displacements in
   model voxels, relative to the reference animal's acquisition); and
   ``<name>_report.json`` (the decisions, resolution in and out, brain volume
   (voxels x |det| of the affine) beside the mouse and rat ranges of
   ``scan.SPECIES_MM3`` with the species it fits and a warning when it is
   empty or fits none (or not the ``species`` given), the placer, CPU
   seconds, and with ``truth`` Dice and HD95 in mm).

An input already skull-stripped (``scan.looks_stripped``) keeps its own brain
as the mask (placement ``stripped``). Refused before any work: stored voxel
sizes that are zero, negative or not finite. Warned: an oblique or sheared affine.

Without a model folder the shipped default (``rodent_gbp.models``) is used.
Safe to run twice and to kill (``rodent_gbp.outputs``): the call holds a lock
on ``<out_dir>/.<name>.lock`` from before any compute to the end (a second run
of the same name is refused with one line naming the outputs); outputs are
written into a hidden temporary folder inside the output folder and renamed
into place at the end, the report last (it lists its files; with
``overwrite`` the outputs of the name this call does not write are removed);
on an error the temporary folder is removed, and what a killed run left is
finished or removed by the next call of the same name.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import time
from typing import Any, Callable

import nibabel as nib
import numpy as np
from scipy import ndimage

from rodent_gbp import bundle as bundle_lib
from rodent_gbp import classes
from rodent_gbp import configs
from rodent_gbp import data
from rodent_gbp import fileio
from rodent_gbp import metrics
from rodent_gbp import models
from rodent_gbp import nifti
from rodent_gbp import orient
from rodent_gbp import outputs
from rodent_gbp import pipeline
from rodent_gbp import placement as placement_lib
from rodent_gbp import scan
from rodent_gbp.errors import DataError, InferenceError, UsageError

_LOG = logging.getLogger(__name__)

OUTPUTS = ("brainmask", "labels", "saliency")
#: ``placement="auto"``: the bundle's supervised extractor where it has one
#: (the best placer measured on held-out mouse-epi animals, README), else
#: ``gbp_improved`` (the best placer a tissue network alone serves).
DEFAULT_PLACEMENT = "auto"


def choose_placement(placement: str, bundle) -> str:
  """Resolves ``"auto"`` for ``bundle`` (see :data:`DEFAULT_PLACEMENT`); other names pass."""
  if placement != "auto":
    return placement
  return "supervised" if "extractor" in bundle.networks else "gbp_improved"
MODEL_PLANE = "coronal"


def output_paths(out_dir: pathlib.Path, name: str) -> dict[str, pathlib.Path]:
  paths = {k: out_dir / f"{name}_{k}.nii.gz" for k in OUTPUTS}
  paths["brain"] = out_dir / f"{name}_brain.nii.gz"
  paths["qc"] = out_dir / f"{name}_qc.png"
  paths["csv"] = out_dir / f"{name}_slices.csv"
  paths["report"] = out_dir / f"{name}_report.json"
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
  existing = [p for p in paths.values() if p.exists()]
  if existing and not overwrite:
    more = (f" (and {', '.join(p.name for p in existing[1:])})" if existing[1:] else "")
    raise InferenceError(f"{existing[0]}: already exists{more}; pass --overwrite to "
                         "replace this scan's outputs")
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
    if isinstance(det, placement_lib.SearchDetails):
      row |= {"volume_dy_vox": int(det.volume_displacement[0]),
              "volume_dx_vox": int(det.volume_displacement[1]),
              "template_animal": bank.animal_ids[int(det.template_animal[s])],
              "slice_offset": int(det.slice_offset[s]),
              "scale": float(det.scale[s])}
    rows.append(row)
  return rows


def _read_truth(path: pathlib.Path, shape, affine: np.ndarray) -> np.ndarray:
  """A truth brain mask on the input's grid (nonzero = brain), checked."""
  series, img = scan.read_series(path)
  if series.ndim == 4 and series.shape[3] == 1:
    series = series[..., 0]
  if series.shape != tuple(shape):
    raise DataError(f"{path}: --truth has shape {series.shape}, the input {tuple(shape)}; "
                    "it must be a mask on the input's grid")
  if not np.allclose(img.affine, affine, rtol=1e-4, atol=1e-4):
    raise DataError(f"{path}: --truth has another affine than the input; it must be a "
                    "mask on the input's grid")
  return series > 0


def check_arguments(input_path, out_dir, *, plane, placement, displacement, volume,
                    average, voxel_scale) -> None:
  """Refuses bad arguments before anything is read (one ``UsageError`` line each)."""
  if not input_path:
    raise UsageError("--input is required (a NIfTI scan)")
  if not out_dir:
    raise UsageError("--out_dir is required")
  if str(plane) not in scan.PLANE_CHOICES:
    raise UsageError(f"--plane {plane!r}: must be one of {', '.join(scan.PLANE_CHOICES)}")
  if placement != "auto" and placement not in placement_lib.PLACERS:
    raise UsageError(f"--placement {placement!r}: must be auto or one of "
                     f"{', '.join(placement_lib.PLACERS)}")
  if displacement is not None and displacement not in configs.DISPLACEMENTS:
    raise UsageError(f"--displacement {displacement!r}: must be one of "
                     f"{', '.join(configs.DISPLACEMENTS)}")
  if volume is not None and average:
    raise UsageError("--volume and --average exclude each other; pass one")
  if volume is not None and volume < 0:
    raise UsageError(f"--volume {volume}: must be >= 0")
  if voxel_scale is not None and not (np.isfinite(voxel_scale) and voxel_scale > 0):
    raise UsageError(f"--voxel_scale {voxel_scale}: must be a positive number (0.1 reads "
                     "voxel sizes stored x10)")


def load_model(model_dir, *, bundle=None, displacement: str | None = None
               ) -> tuple[bundle_lib.Bundle, str, str]:
  """(the bundle to segment with, its folder, where it came from). ``bundle``: an
  already loaded bundle (not changed: a ``displacement`` gives a copy whose tissue
  config says it); else ``model_dir`` or the shipped default."""
  if bundle is not None:
    folder, source = bundle.folder, "given bundle"
  elif model_dir:
    folder, source = model_dir, "--model_dir"
  else:
    folder, source = models.default_model_dir(), "default (shipped)"
  if bundle is None:
    bundle = bundle_lib.load_bundle(folder)
  if displacement is not None and "tissue" in bundle.networks:
    net = bundle.networks["tissue"]
    net = dataclasses.replace(net, config=configs.override(net.config,
                                                           displacement=displacement))
    bundle = dataclasses.replace(bundle, networks={**bundle.networks, "tissue": net})
  return bundle, str(folder), source


@dataclasses.dataclass
class Input:
  """A scan as read: the stored ``series`` (3D or 4D) and its nibabel ``img``, the 3D
  ``image`` segmented, what was ``taken`` from a series, the ``truth`` mask or None."""

  path: pathlib.Path
  series: np.ndarray
  img: nib.Nifti1Image
  image: np.ndarray
  taken: str
  truth: np.ndarray | None


def read_input(input_path: pathlib.Path, *, volume, average, truth) -> Input:
  """Reads and checks the scan (and its truth mask) on the input's own grid."""
  series, img = scan.read_series(input_path)
  scan.check_stored_voxel_sizes(input_path, img)
  image, taken = scan.collapse(series, input_path, volume=volume, average=average)
  truth_mask = None if truth is None else _read_truth(pathlib.Path(truth), image.shape,
                                                      img.affine)
  return Input(input_path, series, img, image, taken, truth_mask)


@dataclasses.dataclass
class ModelGrid:
  """The scan on the model's grid, and every header decision taken to get there."""

  vol: data.Volume
  affine: np.ndarray
  plane: str
  slice_axis: int
  vs_scan: np.ndarray
  vs_model: np.ndarray
  grid: tuple[int, int]
  slices: np.ndarray
  bank_index: np.ndarray
  decisions: dict[str, Any]
  warnings: list[str]


def fit_to_model(inp: Input, bundle, *, plane, voxel_scale, name: str,
                 log: Callable[[str], None]) -> ModelGrid:
  """Voxel scale, slice axis and intensity offset from the header and the image;
  reorient, slice, normalise, resample in-plane to the model's voxel size and fit
  to the bank's slice shape."""
  factor, scale_reason, scale_warning = scan.voxel_scale(inp.image.shape, inp.img.affine,
                                                         voxel_scale)
  affine = scan.scale_affine(inp.img.affine, factor)
  plane, slice_axis, plane_reason, plane_warning = scan.choose_plane(affine, plane)
  image, offset, offset_reason = scan.remove_offset(inp.image)
  warnings = [w for w in (scale_warning, plane_warning, scan.affine_warning(affine)) if w]
  vol = scan.to_volume(image, affine, plane=plane, name=name,
                       normalisation=bundle.normalisation)
  vs_scan = nifti.voxel_sizes_ras(affine)[scan.INPLANE_AXES[plane]]
  # The networks and the bank are trained on coronal slices: whatever plane the
  # scan is cut in, its slices go to the model's coronal in-plane voxel size.
  vs_model = bundle.voxel_size[scan.INPLANE_AXES[MODEL_PLANE]]
  n_slices, h, w = vol.image.shape
  grid = tuple(max(1, int(round(n * a / b))) for n, a, b in zip((h, w), vs_scan, vs_model))
  depth = max(net.config.depth for net in bundle.networks.values())
  if min(grid) < 2**depth:
    raise DataError(
        f"{inp.path}: too small for the network: {h} x {w} voxels of "
        f"{vs_scan[0]:g} x {vs_scan[1]:g} mm in the {plane} plane are {grid[0]} x "
        f"{grid[1]} at the model's {vs_model[0]:g} x {vs_model[1]:g} mm; need at "
        f"least {2**depth} x {2**depth}")
  bank_hw = bundle.slice_shape
  log(f"{inp.path}: {inp.img.shape}, segmenting {inp.taken}")
  log(f"voxel scale {factor:g}: {scale_reason}")
  log(f"slice axis {slice_axis} ({plane}): {plane_reason}")
  log(f"intensity: {offset_reason}")
  log(f"{n_slices} {plane} slices of {h} x {w} at {vs_scan[0]:g} x {vs_scan[1]:g} mm; "
      f"model grid {grid[0]} x {grid[1]} at {vs_model[0]:g} x {vs_model[1]:g} mm "
      f"({bundle.voxel_size_source}), fitted to {bank_hw[0]} x {bank_hw[1]}")
  for warning in warnings:
    log(f"warning: {warning}")
  slices = scan.fit_to(scan.resample_inplane(vol.image, vs_scan, vs_model, grid, order=1),
                       bank_hw)
  decisions = {
      "voxel_scale": {"factor": factor, "mode": "auto" if voxel_scale is None else "given",
                      "reason": scale_reason,
                      "header_voxel_size_mm": nifti.voxel_sizes(inp.img.affine).tolist(),
                      "voxel_size_mm": nifti.voxel_sizes(affine).tolist()},
      "slice_axis": {"axis": slice_axis, "plane": plane, "reason": plane_reason,
                     "slices": n_slices},
      "intensity": {"offset": offset, "reason": offset_reason,
                    "normalisation": bundle.normalisation},
      "resolution": {"input_inplane_mm": [float(v) for v in vs_scan],
                     "model_inplane_mm": [float(v) for v in vs_model],
                     "input_grid": [h, w], "model_grid": list(grid),
                     "fitted_to": list(bank_hw),
                     "resampled": bool(grid != (h, w) or not np.allclose(vs_scan, vs_model)),
                     "slice_thickness_mm": float(nifti.voxel_sizes_ras(affine)[
                         data.plane_axes(plane)[0]])}}
  return ModelGrid(vol, affine, plane, slice_axis, vs_scan, vs_model, grid, slices,
                   scan.bank_slice_index(n_slices, bundle.bank.masks.shape[1]),
                   decisions, warnings)


def place(inp: Input, fit: ModelGrid, bundle, placement: str, *, batch_size,
          species: str | None, log: Callable[[str], None]):
  """(placer name, raw pass, Placement, labels, the stripped-input record) on the model
  grid: an input already skull-stripped (``scan.looks_stripped``) keeps its own brain
  (the nonzero voxels, holes filled) and is segmented inside it; any other input goes
  through the pipeline with ``placement``."""
  stripped, reason = scan.looks_stripped(inp.image, fit.affine, species)
  record = {"detected": stripped, "reason": reason, "brain": None}
  if not stripped:
    raw, removals = pipeline.run(fit.slices, [placement], bundle=bundle,
                                 slice_index=fit.bank_index, batch_size=batch_size)
    return placement, raw, removals[placement].placement, removals[placement].labels, record
  log(f"input already skull-stripped: {reason}")
  brain = np.stack([ndimage.binary_fill_holes(s) for s in
                    scan.file_to_slices(inp.image != 0, fit.vol)])
  record["brain"] = brain       # the mask on the input's own slices, as given
  mask = scan.fit_to(scan.resample_inplane(brain.astype(np.float32), fit.vs_scan,
                                           fit.vs_model, fit.grid, order=0),
                     bundle.slice_shape) > 0.5
  raw = pipeline.raw_pass(fit.slices, bundle=bundle, batch_size=batch_size)
  labels = pipeline.segment_slices(fit.slices * mask, bundle=bundle, batch_size=batch_size)
  return "stripped", raw, placement_lib.Placement(mask=mask), labels, record


def to_input_grid(inp: Input, fit: ModelGrid, placed, labels, gradient, brain=None
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """(outputs on the input's slices, outputs in the file's axes): undo the fit, the
  resampling (nearest for mask and labels, linear for saliency) and the reorientation;
  ``brain`` is the stored series zero outside the mask. ``brain``: a mask already on
  the input's slices (a stripped input's own) instead of the placed one."""
  h, w = fit.vol.image.shape[1:]

  def back(x: np.ndarray, order: int) -> np.ndarray:
    return scan.resample_inplane(scan.unfit(x, fit.grid), fit.vs_model, fit.vs_scan, (h, w),
                                 order=order)

  native = {"brainmask": (back(placed.mask.astype(np.uint8), 0) if brain is None
                         else brain.astype(np.uint8)),
            "labels": back(labels.astype(np.uint8), 0),
            "saliency": back(gradient.astype(np.float32), 1)}
  # Labels lie inside the applied mask on the model grid; clipping after the
  # nearest-neighbour resampling keeps that true on the input grid too.
  native["labels"] = native["labels"] * (native["brainmask"] > 0)
  arrays = {key: np.asanyarray(data.to_nifti(native[key], fit.vol).dataobj) for key in OUTPUTS}
  mask_file = arrays["brainmask"] > 0
  arrays["brain"] = inp.series * (mask_file if inp.series.ndim == 3 else mask_file[..., None])
  return native, arrays


def axis_from_image(fit: ModelGrid, mask_file: np.ndarray, plane,
                    log: Callable[[str], None]) -> int | None:
  """The brain's axes read from the mask (``orient.brain_axes``) go to the report; the
  voxel axis to cut along instead when the slice axis was open (``orient.axis_is_open``)
  and the mask, read with confidence, disagrees (else a warning), or None."""
  axes = orient.brain_axes(mask_file, nifti.voxel_sizes(fit.affine))
  fit.decisions["slice_axis"]["image"] = axes
  if not axes["confident"] or axes["ap"] == fit.slice_axis:
    return None
  if orient.axis_is_open(fit.affine, plane):
    log(f"slice axis from the image: {axes['reason']}; cut again across voxel axis "
        f"{axes['ap']}, not the header's {fit.slice_axis}")
    return axes["ap"]
  fit.warnings.append(f"the brain mask reads anterior-posterior along voxel axis "
                      f"{axes['ap']}, not the slice axis {fit.slice_axis} the voxel sizes "
                      "or --plane chose")
  log(f"warning: {fit.warnings[-1]}")


def score(inp: Input, fit: ModelGrid, mask_file: np.ndarray, truth, species: str | None,
          log: Callable[[str], None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
  """(brain volume record with the species it fits, scores against the truth or
  None); warnings added to ``fit``. Volumes: voxels x |det| of the (scaled) affine."""
  vs_file = nifti.voxel_sizes(fit.affine)
  voxel_mm3 = scan.voxel_volume(fit.affine)
  brain_warning, brain_volume = scan.species_fit(float(mask_file.sum() * voxel_mm3), species)
  if brain_warning:
    fit.warnings.append(brain_warning)
    log(f"warning: {brain_warning}")
  log(f"brain volume {brain_volume['mm3']:.1f} mm^3 ({brain_volume['cm3']:.3g} cm^3)")
  if inp.truth is None:
    return brain_volume, None
  scores = {"path": str(truth), "dice": float(metrics.mask_dice(mask_file, inp.truth)),
            "hd95_mm": metrics.hd95(mask_file, inp.truth, vs_file),
            "truth_volume_mm3": float(inp.truth.sum() * voxel_mm3),
            "note": "on the input's voxel grid and (scaled) voxel sizes; HD95 pools "
                    "both directions' boundary distances"}
  log(f"against {truth}: Dice {scores['dice']:.4f}, HD95 {scores['hd95_mm']:.3f} mm")
  return brain_volume, scores


def write_outputs(paths: dict[str, pathlib.Path], out_dir: pathlib.Path, name: str,
                  inp: Input, fit: ModelGrid, arrays, native, rows, report, *,
                  qc: bool, title: str) -> None:
  """Writes every output into a temporary folder in ``out_dir``, then publishes them
  (``outputs.publish``: renamed into place, the report last; outputs of ``name``
  this call does not write removed). The caller holds the outputs' claim
  (``outputs.claim``). An error while writing removes the temporary folder; one
  while publishing leaves it, report and all, for the next call of the name to
  finish (``outputs.recover``)."""
  dtypes = {"brainmask": np.uint8, "labels": np.uint8, "saliency": np.float32,
            "brain": np.float32}
  tmp = outputs.temporary_folder(out_dir, name)
  try:
    for key in (*OUTPUTS, "brain"):
      nib.save(scan.like_input(arrays[key], inp.img, dtypes[key]), tmp / paths[key].name)
    fileio.write_csv(tmp / paths["csv"].name, rows)
    if qc:
      from rodent_gbp import qc as qc_lib  # matplotlib, loaded only to draw a figure
      qc_lib.segment_figure(
          tmp / paths["qc"].name, fit.vol.image, native["brainmask"], tuple(fit.vs_scan),
          truth=None if inp.truth is None else scan.file_to_slices(inp.truth, fit.vol),
          labels=native["labels"], title=title)
    fileio.write_json(tmp / paths["report"].name, report)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  outputs.publish(tmp, out_dir, [p.name for k, p in paths.items()
                                 if k != "report" and (tmp / p.name).exists()],
                  report=paths["report"].name, names=[p.name for p in paths.values()])


def labels_record(bundle) -> dict[str, Any]:
  """What the values of ``<name>_labels.nii.gz`` mean, for the report: the class of
  each value, that labels lie inside the brain mask, and what the model's tissue
  network learned them from (its bundle record, ``tissue_definition`` and
  ``trained_on``, where the model folder states them)."""
  info = bundle.network("tissue").info
  return {"values": {str(v): t for v, t in enumerate(classes.TITLES)},
          "inside": "the brain mask (brainmask.nii.gz): labels are 0 outside it",
          "trained_on": info.get("trained_on", "not stated by the model folder"),
          "definition": info.get("tissue_definition", "not stated by the model folder")}


def segment_scan(input_path: str | os.PathLike, model_dir: str | os.PathLike | None,
                 out_dir: str | os.PathLike, *, bundle: bundle_lib.Bundle | None = None,
                 plane: str | int = "auto", volume: int | None = None,
                 average: bool = False, voxel_scale: float | None = None,
                 truth: str | os.PathLike | None = None, name: str | None = None,
                 overwrite: bool = False, qc: bool = True, batch_size: int | None = None,
                 placement: str = DEFAULT_PLACEMENT, displacement: str | None = None,
                 species: str | None = None,
                 log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Segments one scan with a model bundle; writes the outputs and a report.

  Read (:func:`read_input`), fit to the model grid (:func:`fit_to_model`: every
  header decision printed and reported), the pipeline with one placer, back to
  the input grid (:func:`to_input_grid`), score (:func:`score`), write
  (:func:`write_outputs`). ``model_dir``: a model folder (None: the shipped
  default); ``bundle``: a loaded bundle instead (never changed, so one bundle
  serves many calls). The other arguments are the console script's flags
  (``rodent_gbp.cli``). Returns ``paths``, ``slices`` (CSV rows), ``report``,
  the model-grid ``mask``, ``labels``, ``image``, ``grid``, ``bank_index`` and
  ``placement``. Raises UsageError, InferenceError, DataError or
  CheckpointError: one line naming the file or flag and the problem (``outputs.Busy``
  when another run holds the lock of the same outputs).
  """
  call = dict(locals())  # the arguments, to run again holding the outputs' claim
  cpu0, wall0 = time.process_time(), time.perf_counter()
  check_arguments(input_path, out_dir, plane=plane, placement=placement,
                  displacement=displacement, volume=volume, average=average,
                  voxel_scale=voxel_scale)
  scan.check_species(species)
  input_path, out_dir = pathlib.Path(input_path), pathlib.Path(out_dir)
  name = scan.stem(input_path) if name is None else name
  if not outputs.held(out_dir, name):
    # The call runs holding the lock of its outputs, from before any compute to
    # the end; taking it also finishes or removes what a killed run left.
    paths = _check_outputs(input_path, out_dir, name, overwrite=True)
    with outputs.claim(out_dir, name, [p.name for p in paths.values()],
                       report=paths["report"].name, log=log):
      return segment_scan(**call)
  paths = _check_outputs(input_path, out_dir, name, overwrite)
  inp = read_input(input_path, volume=volume, average=average, truth=truth)
  bundle, model_folder, model_source = load_model(model_dir, bundle=bundle,
                                                  displacement=displacement)
  placement = choose_placement(placement, bundle)
  placement_lib.check_placer(placement, bundle)
  requested = placement
  for attempt in range(2):  # a second pass when the image re-decides the slice axis
    fit = fit_to_model(inp, bundle, plane=plane, voxel_scale=voxel_scale, name=name, log=log)
    placement, raw, placed, labels, stripped = place(inp, fit, bundle, requested,
                                                     batch_size=batch_size, species=species,
                                                     log=log)
    native, arrays = to_input_grid(inp, fit, placed, labels, raw["gradient"],
                                   stripped.pop("brain"))
    axis = None if attempt else axis_from_image(fit, arrays["brainmask"] > 0, plane, log)
    if axis is None:
      break
    first, plane = fit.decisions["slice_axis"], str(axis)
  if attempt:
    fit.decisions["slice_axis"]["reason"] = (f"the image ({first['image']['reason']}); the "
                                             f"header's choice was: {first['reason']}")
    fit.decisions["slice_axis"]["image"] = first["image"]
  rows = _slice_rows(placed, native["brainmask"], fit.bank_index, fit.vs_model, bundle.bank,
                     placement)
  brain_volume, scores = score(inp, fit, arrays["brainmask"] > 0, truth, species, log)
  report = {"input": str(input_path), "shape": [int(n) for n in inp.series.shape],
            "segmented": inp.taken, "model_dir": model_folder, "model_source": model_source,
            **fit.decisions, "stripped_input": stripped, "brain_volume": brain_volume,
            "placement": placement,
            "displacement": (bundle.network("tissue").config.displacement
                             if placement == "gbp" else None),
            "truth": scores, "warnings": fit.warnings, "labels": labels_record(bundle),
            "outputs": {k: p.name for k, p in paths.items() if qc or k != "qc"},
            "cpu_seconds": time.process_time() - cpu0,
            "wall_seconds": time.perf_counter() - wall0}
  shown = "coronal (the image's A-P)" if attempt else fit.plane  # the header's after a re-cut
  title = (f"{name}: {shown} slices across voxel axis {fit.slice_axis}, {placement}; "
           f"brain {brain_volume['mm3']:.0f} mm$^3$" + ("" if scores is None else
           f"; Dice {scores['dice']:.3f}, HD95 {scores['hd95_mm']:.2f} mm"))
  write_outputs(paths, out_dir, name, inp, fit, arrays, native, rows, report, qc=qc,
                title=title)
  if not qc:
    paths.pop("qc")
  if isinstance(placed.details, placement_lib.SearchDetails):
    d = placed.details.volume_displacement
    log(f"{placement}: volume displacement ({d[0]}, {d[1]}) model voxels")
  log(f"cpu {report['cpu_seconds']:.1f} s, wall {report['wall_seconds']:.1f} s")
  log(f"wrote {', '.join(p.name for p in paths.values())} to {out_dir}")
  return {"paths": paths, "slices": rows, "mask": placed.mask, "labels": labels,
          "image": fit.slices, "grid": fit.grid, "bank_index": fit.bank_index,
          "placement": placed, "report": report}
