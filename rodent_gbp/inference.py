"""Segmenting one user scan with a trained model folder (``rodent-gbp-segment``).

A trained model folder (``<workdir>/checkpoints`` of the main job) holds what
inference needs (DESIGN.md section 3): ``config.json``, the best params,
``normalisation.json`` and the template bank ``templates.npz``.
:func:`segment_scan` takes one NIfTI scan through the same stages as the main
job's test animals:

1. read and validate the file (3D, or one volume / the mean of a 4D series);
2. reorient to RAS+ and cut slices of the chosen plane (coronal by default),
   whatever the file's axis order;
3. the training intensity normalisation (``data.apply_normalisation`` with the
   model folder's rule);
4. resample in-plane to the model's voxel size (linear for the image) and
   pad / crop, centred, to the template bank's slice shape (H, W);
5. match each slice to a bank slice by relative anterior-posterior position
   (identity when the slice counts agree);
6. place the brain mask, remove the background and segment again, by one of
   two placements (``placement=``, flag ``--placement``):

   - ``improved`` (default): ``placement.py``'s placement, as the main job's
     ``gbp_improved`` rows: the log GBP gradient image of the raw slices
     against the reference animal's raw-slice appearance finds one rigid
     displacement for the volume (a scan is one volume), each slice's
     peak-to-sidelobe ratio is its confidence (slices below the threshold
     fall back to the volume's displacement), and every training animal's
     mask at the slice and its neighbours, at five scales, competes on the
     plain intensity; the mask is dilated by one pixel before the network
     runs again. Needs the appearance in ``templates.npz``
     (``placement.save_appearance``);
   - ``paper``: the paper's method (``pipeline.remove_background``: the
     reference mask at the same slice, moved by the argmax of its template's
     correlation with the enhanced GBP image, slice by slice). On the
     phantom it misplaces the mask (brain DSC 0.08 on the reference run, README);

   both jitted once for a fixed batch size (the last batch is padded);
7. undo the padding and the resampling (nearest neighbour for the brain mask
   and labels, linear for the saliency map) and the reorientation, and write
   ``<name>_brainmask.nii.gz``, ``<name>_labels.nii.gz`` and
   ``<name>_saliency.nii.gz`` with the input's shape, affine and header, a QC
   figure ``<name>_qc.png`` and ``<name>_slices.csv`` (per slice:
   displacement and placement confidence; for the improved placement also
   the volume's displacement, whether the slice fell back to it, and the
   chosen template animal, slice offset and scale). Displacements are in
   model voxels, relative to the reference animal's acquisition.

Outputs appear all together or not at all: they are written into a hidden
temporary folder inside the output folder and renamed into place at the end;
on any error the temporary folder is removed.

Model voxel size: ``templates.npz`` may record ``voxel_size`` (RAS mm of the
training volumes); without it the phantom geometry of ``config.image_size``
(``phantom.voxel_size``) is assumed.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
from scipy import ndimage

from rodent_gbp import checkpoint as checkpoint_lib
from rodent_gbp import correlate
from rodent_gbp import data
from rodent_gbp import model as model_lib
from rodent_gbp import phantom
from rodent_gbp import pipeline
from rodent_gbp import placement as placement_lib

OUTPUTS = ("brainmask", "labels", "saliency")
PLACEMENTS = ("improved", "paper")
TEMPLATES_FILE = "templates.npz"
_RAS = nib.orientations.axcodes2ornt("RAS")
# RAS axes of a slice's (H, W) for each plane (data.to_slices' convention).
_INPLANE_AXES = {"coronal": [0, 2], "axial": [0, 1], "sagittal": [1, 2]}


class InferenceError(ValueError):
  """An argument or the output folder is unusable; the message names which."""


# --- reading the scan ----------------------------------------------------------


def _stem(path: pathlib.Path) -> str:
  name = path.name
  for suffix in (".nii.gz", ".nii"):
    if name.endswith(suffix):
      return name[:-len(suffix)]
  return path.stem


def read_scan(path: str | os.PathLike, *, volume: int | None = None,
              average: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
  """Reads a NIfTI scan as one 3D float32 volume, validated.

  Args:
    path: a ``.nii`` or ``.nii.gz`` file.
    volume: index of the volume to take from a 4D series.
    average: take the mean over the 4th axis of a 4D series (the paper averaged
      its b0 images).

  Returns:
    (data (X, Y, Z) float32 in the file's axis order, the nibabel image).

  Raises:
    data.DataError: naming the file and the problem.
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise data.DataError(f"{path}: file not found")
  if not path.is_file():
    raise data.DataError(f"{path}: not a file")
  if path.stat().st_size == 0:
    raise data.DataError(f"{path}: file is empty")
  try:
    img = nib.load(str(path))
  except Exception as e:  # nibabel raises several types for non-NIfTI files.
    raise data.DataError(f"{path}: not a readable NIfTI file ({e})") from None
  if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
    raise data.DataError(f"{path}: not a NIfTI file ({type(img).__name__})")
  if img.get_data_dtype().fields is not None:
    raise data.DataError(f"{path}: unsupported voxel type {img.get_data_dtype()} "
                         "(RGB or structured); need one scalar per voxel")
  try:
    raw = np.asanyarray(img.dataobj)
  except Exception as e:  # EOFError, zlib.error, OSError, ValueError
    raise data.DataError(f"{path}: cannot read the voxel data, the file is truncated "
                         f"or corrupt ({type(e).__name__}: {e})") from None
  if np.iscomplexobj(raw):
    raise data.DataError(f"{path}: complex voxel values are not supported")
  while raw.ndim > 4 and raw.shape[-1] == 1:
    raw = raw[..., 0]
  if raw.ndim < 3 or raw.ndim > 4:
    raise data.DataError(f"{path}: expected a 3D volume or a 4D series, got shape "
                         f"{raw.shape}")
  if 0 in raw.shape:
    raise data.DataError(f"{path}: an axis of shape {raw.shape} is empty")
  n_vol = raw.shape[3] if raw.ndim == 4 else 1
  if volume is not None and not 0 <= volume < n_vol:
    raise data.DataError(f"{path}: --volume {volume} out of range; the file has "
                         f"{n_vol} volume(s), 0..{n_vol - 1}")
  if raw.ndim == 4 and n_vol > 1:
    if volume is None and not average:
      raise data.DataError(f"{path}: a 4D series of {n_vol} volumes; pass --volume N "
                           f"(0..{n_vol - 1}) or --average")
  if raw.ndim == 4:
    raw = raw[..., volume] if volume is not None else raw.mean(axis=3, dtype=np.float64)
  image = np.asarray(raw, np.float32)
  affine = img.affine
  if affine is None or not np.all(np.isfinite(affine)) or abs(
      np.linalg.det(affine[:3, :3])) < 1e-12:
    raise data.DataError(f"{path}: singular or invalid affine (voxel axes have no "
                         "extent or are not independent)")
  bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
  if bad:
    raise data.DataError(f"{path}: {bad} voxels are NaN or inf")
  lo, hi = float(image.min()), float(image.max())
  if lo == hi:
    raise data.DataError(f"{path}: the image is constant ({lo:g}); nothing to segment")
  return image, img


def voxel_sizes_ras(affine: np.ndarray) -> np.ndarray:
  """Voxel edge lengths (3,) in mm along the RAS+ axes of the reoriented volume."""
  sizes = np.sqrt(np.sum(np.asarray(affine, np.float64)[:3, :3] ** 2, axis=0))
  ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), _RAS)
  out = np.empty(3)
  out[ornt[:, 0].astype(int)] = sizes
  return out


def to_volume(image: np.ndarray, affine: np.ndarray, *, plane: str, name: str,
              normalisation: dict) -> data.Volume:
  """Reorients to RAS+, normalises by the training rule and slices ``plane``."""
  ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), _RAS)
  ras = nib.orientations.apply_orientation(image, ornt)
  ras = data.apply_normalisation(ras, normalisation)
  return data.Volume(animal_id=name, image=data.to_slices(ras, plane), label=None,
                     brainmask=None, meta={}, normalisation=dict(normalisation),
                     affine=np.asarray(affine, np.float64),
                     shape=tuple(int(n) for n in image.shape), orientation=ornt,
                     plane=plane)


# --- the model folder -----------------------------------------------------------


@dataclasses.dataclass
class ModelFolder:
  """What inference reads from a trained model folder.

  Attributes:
    config: the run's Config.
    params: best U-Net params.
    normalisation: the intensity rule (``data.apply_normalisation`` params).
    bank: the template bank; ``bank.masks`` is (A, S, H, W).
    voxel_size: (3,) RAS mm of the training volumes.
    voxel_size_source: where ``voxel_size`` came from.
    appearance: (A, S, H, W) raw-slice appearance of the bank animals for the
      improved placement (``placement.save_appearance``), or None.
    appearance_available: (A,) bool, the animals ``appearance`` holds, or None.
  """

  config: Any
  params: Any
  normalisation: dict
  bank: pipeline.TemplateBank
  voxel_size: np.ndarray
  voxel_size_source: str
  appearance: np.ndarray | None = None
  appearance_available: np.ndarray | None = None


def _normalisation_rule(norm: Any, where: pathlib.Path) -> dict:
  """The top-level rule of normalisation.json (older runs store per animal only)."""
  if isinstance(norm, dict) and "method" in norm:
    rule = {k: v for k, v in norm.items() if k != "per_animal"}
  elif isinstance(norm, dict) and norm and all(
      isinstance(v, dict) and "method" in v for v in norm.values()):
    rule = dict(next(iter(norm.values())))
    if rule.get("method") == "robust_max":
      rule.pop("scale", None)
  else:
    raise checkpoint_lib.CheckpointError(
        f"{where / checkpoint_lib.NORMALISATION_FILE}: no normalisation rule found")
  if rule.get("method") not in ("robust_max", "fixed"):
    raise checkpoint_lib.CheckpointError(
        f"{where / checkpoint_lib.NORMALISATION_FILE}: unknown normalisation method "
        f"{rule.get('method')!r}")
  return rule


def load_model_folder(folder: str | os.PathLike) -> ModelFolder:
  """Loads and checks a trained model folder.

  Raises:
    checkpoint.CheckpointError: naming the folder or file and the problem.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise checkpoint_lib.CheckpointError(f"{folder}: model folder not found")
  loaded = checkpoint_lib.load_model(folder)
  config = loaded.config
  rule = _normalisation_rule(loaded.normalisation, folder)
  path = folder / TEMPLATES_FILE
  if not path.is_file():
    raise checkpoint_lib.CheckpointError(
        f"{path}: template bank not found (experiments/reproduce.py writes it)")
  try:
    bank = pipeline.TemplateBank.load(path)
    with np.load(path) as z:
      stored_vs = np.asarray(z["voxel_size"], np.float64) if "voxel_size" in z else None
    app = placement_lib.load_appearance(path)
  except Exception as e:  # zipfile, pickle and key errors of a damaged file.
    raise checkpoint_lib.CheckpointError(
        f"{path}: corrupt template bank ({type(e).__name__}: {e})") from None
  m, g = bank.masks, bank.gradients
  factor = 2**config.depth
  if (m.ndim != 4 or g.shape != m.shape or 0 in m.shape
      or not 0 <= bank.reference < m.shape[0]):
    raise checkpoint_lib.CheckpointError(
        f"{path}: inconsistent template bank (masks {m.shape}, gradients {g.shape}, "
        f"reference {bank.reference})")
  if app is not None and (app[0].shape != m.shape or app[1].shape != m.shape[:1]
                          or not app[1][bank.reference]):
    raise checkpoint_lib.CheckpointError(
        f"{path}: inconsistent appearance (shape {app[0].shape}, masks {m.shape}, "
        "or none for the reference animal)")
  if m.shape[2] % factor or m.shape[3] % factor:
    raise checkpoint_lib.CheckpointError(
        f"{path}: template slices {m.shape[2:]} do not fit the U-Net of depth "
        f"{config.depth} (need multiples of {factor})")
  if stored_vs is not None and stored_vs.shape == (3,) and np.all(stored_vs > 0):
    vs, source = stored_vs, "templates.npz"
  else:
    vs, source = np.asarray(phantom.voxel_size(config.image_size), np.float64), (
        f"phantom geometry of image_size {config.image_size}")
  params = jax.device_put(loaded.params)
  return ModelFolder(config=config, params=params, normalisation=rule, bank=bank,
                     voxel_size=vs, voxel_size_source=source,
                     appearance=None if app is None else app[0],
                     appearance_available=None if app is None else app[1])


# --- geometry: in-plane resampling and padding --------------------------------------


def _axis_map(n_from: int, vs_from: float, n_to: int, vs_to: float) -> tuple[float, float]:
  """(scale, offset): source index = scale * target index + offset.

  The two grids share their centre (the field of view stays where it was), so
  going there and back changes no position.
  """
  scale = vs_to / vs_from
  offset = (0.5 * vs_to - 0.5 * (n_to * vs_to - n_from * vs_from)) / vs_from - 0.5
  return scale, offset


def resample_inplane(slices: np.ndarray, vs_from: tuple[float, float],
                     vs_to: tuple[float, float], shape_to: tuple[int, int], *,
                     order: int) -> np.ndarray:
  """Resamples the (H, W) axes of slices (S, H, W) onto another grid.

  Args:
    slices: (S, H, W).
    vs_from: in-plane voxel size (mm) of ``slices``.
    vs_to: in-plane voxel size (mm) of the result.
    shape_to: (H', W') of the result.
    order: 1 (linear, images) or 0 (nearest neighbour, masks and labels).

  Returns:
    (S, H', W'), the same dtype for ``order=0``, float32 for ``order=1``.
  """
  (h, w), (h2, w2) = slices.shape[1:], tuple(shape_to)
  if (h, w) == (h2, w2) and np.allclose(vs_from, vs_to, rtol=1e-6, atol=0):
    return slices.copy()
  sh, oh = _axis_map(h, vs_from[0], h2, vs_to[0])
  sw, ow = _axis_map(w, vs_from[1], w2, vs_to[1])
  src = slices if order == 0 else slices.astype(np.float32)
  out = ndimage.affine_transform(src, np.array([1.0, sh, sw]), offset=(0.0, oh, ow),
                                 output_shape=(slices.shape[0], h2, w2), order=order,
                                 mode="nearest", prefilter=False)
  return out


def _window(n: int, target: int) -> tuple[slice, slice]:
  """Source and target ranges of a centred pad (n < target) or crop (n > target)."""
  if n <= target:
    start = (target - n) // 2
    return slice(0, n), slice(start, start + n)
  start = (n - target) // 2
  return slice(start, start + target), slice(0, target)


def fit_to(slices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Centred zero-pad / crop of (S, h, w) to (S, H, W)."""
  (sh, th), (sw, tw) = _window(slices.shape[1], shape[0]), _window(slices.shape[2], shape[1])
  out = np.zeros((slices.shape[0], *shape), slices.dtype)
  out[:, th, tw] = slices[:, sh, sw]
  return out


def unfit(slices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Inverse of :func:`fit_to`: (S, H, W) back to (S, h, w); cropped parts are 0."""
  (sh, th), (sw, tw) = _window(shape[0], slices.shape[1]), _window(shape[1], slices.shape[2])
  out = np.zeros((slices.shape[0], *shape), slices.dtype)
  out[:, sh, sw] = slices[:, th, tw]
  return out


def bank_slice_index(n_scan: int, n_bank: int) -> np.ndarray:
  """Bank slice for each scan slice by relative anterior-posterior position.

  Equal counts map slice i to i; otherwise the first and last slices of the
  scan meet the bank's first and last and the rest fall in between.
  """
  if n_scan == n_bank:
    return np.arange(n_scan, dtype=np.int32)
  if n_scan == 1:
    return np.array([(n_bank - 1) // 2], np.int32)
  rel = np.arange(n_scan) / (n_scan - 1)
  return np.round(rel * (n_bank - 1)).astype(np.int32)


# --- the network --------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("model", "options"))
def _segment_batch(params, images, slice_index, bank_masks, bank_gradients, reference,
                   *, model, options):
  out = pipeline.remove_background(params, images, slice_index, bank_masks,
                                   bank_gradients, reference, model=model, options=options)
  return {"placed": out["placed"], "labels": out["labels"], "saliency": out["gradient"],
          "displacement": out["displacement"],
          "confidence": correlate.peak_confidence(out["correlation"])}


def run_model(folder: ModelFolder, slices: np.ndarray, bank_index: np.ndarray, *,
              batch_size: int) -> dict[str, np.ndarray]:
  """GBP removal and segmentation of model-grid slices (S, H, W).

  Batches have a fixed size (the last one padded by repeating its last slice,
  results dropped), so the network compiles once.

  Returns:
    placed (S, H, W) bool, labels (S, H, W) int32, saliency (S, H, W) float32,
    displacement (S, 2) int32 in model voxels, confidence (S,) float32 (peak to
    sidelobe ratio of the correlation, ``correlate.peak_confidence``).
  """
  model = model_lib.build_unet(folder.config)
  options = pipeline.PlacementOptions.from_config(folder.config)
  masks = jnp.asarray(folder.bank.masks)
  grads = jnp.asarray(folder.bank.gradients)
  ref = jnp.asarray(folder.bank.reference, jnp.int32)
  images = slices.astype(np.float32)[..., None]
  outs: dict[str, list[np.ndarray]] = {}
  for i in range(0, len(images), batch_size):
    j = min(i + batch_size, len(images))
    idx = np.minimum(np.arange(i, i + batch_size), j - 1)
    res = _segment_batch(folder.params, images[idx], bank_index[idx], masks, grads, ref,
                         model=model, options=options)
    for k, v in jax.device_get(res).items():
      outs.setdefault(k, []).append(np.asarray(v)[: j - i])
  return {k: np.concatenate(v) for k, v in outs.items()}


def run_improved(folder: ModelFolder, volume: data.Volume, bank_index: np.ndarray, *,
                 batch_size: int, path: pathlib.Path | None = None) -> dict[str, np.ndarray]:
  """The improved placement (``placement.IMPROVED``) of one scan's model-grid slices.

  The scan is one volume, so the per-volume displacement applies as in the
  main job; ``placement.evaluate_improved`` does the work (no labels, no
  truth: no counts, NaN errors).

  Args:
    folder: the model folder, with ``appearance``.
    volume: ``data.Volume`` whose image (S, H, W) is on the model grid.
    bank_index: (S,) bank slice of each slice.
    path: the bank file, for the error message.

  Returns:
    :func:`run_model`'s keys plus volume_displacement (2,), fallback (S,) bool,
    template_animal (S,) bank index, slice_offset (S,), scale (S,).

  Raises:
    checkpoint.CheckpointError: the bank file holds no appearance.
  """
  if folder.appearance is None:
    raise checkpoint_lib.CheckpointError(
        f"{path or TEMPLATES_FILE}: the template bank has no raw-slice appearance, which "
        "the improved placement needs (written by placement.save_appearance; rebuild "
        "the bank with the current code) or pass --placement=paper")
  model = model_lib.build_unet(folder.config)
  options = placement_lib.IMPROVED
  cbank = placement_lib.CandidateBank(folder.bank, appearance=folder.appearance,
                                      available=folder.appearance_available,
                                      scales=options.scales)
  cache: dict = {}
  res = placement_lib.evaluate_improved(model, folder.params, volume, cbank, options,
                                        cache=cache, batch_size=batch_size,
                                        num_classes=folder.config.num_classes,
                                        oracle=False, slice_index=bank_index)
  pl = res["placement"]
  return {"placed": np.asarray(pl["placed"], bool),
          "labels": np.asarray(res["labels"], np.int32),
          "saliency": np.asarray(cache[options.method], np.float32),
          "displacement": np.asarray(pl["displacement"], np.int32),
          "confidence": np.asarray(pl["confidence"], np.float32),
          "volume_displacement": np.asarray(pl["volume_displacement"], np.int32),
          "fallback": np.asarray(pl["fallback"], bool),
          "template_animal": np.asarray(pl["animal"], np.int32),
          "slice_offset": np.asarray(pl["slice_offset"], np.int32),
          "scale": np.asarray(options.scales, np.float64)[np.asarray(pl["scale_index"])]}


# --- outputs ------------------------------------------------------------------------


def like_input(array: np.ndarray, img: nib.Nifti1Image, dtype) -> nib.Nifti1Image:
  """A 3D image with ``img``'s affine and header (qform, sform, units, ...)."""
  header = img.header.copy()
  header.set_data_dtype(dtype)
  header.set_slope_inter(None, None)
  header["cal_min"], header["cal_max"] = 0, 0
  return type(img)(np.asarray(array, dtype), img.affine, header=header)


def qc_figure(path: pathlib.Path, image: np.ndarray, placed: np.ndarray,
              labels: np.ndarray, *, count: int = 4) -> None:
  """Input slices with the placed mask's outline, and the labels (model grid)."""
  from rodent_gbp import figures
  import matplotlib.pyplot as plt

  with_brain = np.flatnonzero(placed.reshape(len(placed), -1).any(-1))
  pool = with_brain if with_brain.size else np.arange(len(placed))
  picks = np.unique(pool[np.linspace(0, len(pool) - 1, min(count, len(pool))).round()
                         .astype(int)])
  fig, axes = plt.subplots(2, len(picks), figsize=(2.6 * len(picks), 5.2), squeeze=False)
  for col, s in enumerate(picks):
    figures.show(axes[0, col], image[s], f"slice {s}: input + mask")
    if placed[s].any():
      axes[0, col].contour(placed[s].T.astype(float), levels=[0.5], colors="r",
                           linewidths=0.8, origin="lower")
    figures.show(axes[1, col], figures.label_rgb(labels[s]), f"slice {s}: labels")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _write_csv(path: pathlib.Path, rows: list[dict[str, Any]]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def output_paths(out_dir: pathlib.Path, name: str) -> dict[str, pathlib.Path]:
  paths = {k: out_dir / f"{name}_{k}.nii.gz" for k in OUTPUTS}
  paths["qc"] = out_dir / f"{name}_qc.png"
  paths["csv"] = out_dir / f"{name}_slices.csv"
  return paths


def _check_outputs(input_path: pathlib.Path, out_dir: pathlib.Path, name: str,
                   overwrite: bool) -> dict[str, pathlib.Path]:
  """Output paths, after checking they can be written and touch nothing they must not."""
  if not name or "/" in name or name in (".", ".."):
    raise InferenceError(f"--name {name!r}: not a usable file name prefix")
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


def segment_scan(input_path: str | os.PathLike, checkpoint_dir: str | os.PathLike,
                 out_dir: str | os.PathLike, *, plane: str = "coronal",
                 volume: int | None = None, average: bool = False,
                 name: str | None = None, overwrite: bool = False, qc: bool = True,
                 batch_size: int | None = None, placement: str = "improved",
                 log: Callable[[str], None] = print) -> dict[str, Any]:
  """Segments one scan with a trained model folder; writes the outputs.

  Args:
    input_path: a NIfTI scan (3D, or 4D with ``volume`` or ``average``).
    checkpoint_dir: a trained model folder (``<workdir>/checkpoints``).
    out_dir: output folder (created if needed).
    plane: slicing plane, "coronal" (default), "axial" or "sagittal".
    volume: volume index of a 4D series.
    average: mean over the volumes of a 4D series.
    name: output file prefix; default the input file's name without ``.nii[.gz]``.
    overwrite: replace existing outputs of the same name.
    qc: write the QC figure.
    batch_size: slices per network call; default ``config.eval_batch_size``.
    placement: "improved" (default, ``placement.py``) or "paper" (the
      paper's per-slice method); see the module docstring.
    log: progress sink.

  Returns:
    dict with ``paths`` (output files), ``slices`` (CSV rows) and the model-grid
    arrays ``placed``, ``labels``, ``image``.

  Raises:
    InferenceError, data.DataError, checkpoint.CheckpointError (all
    ValueErrors): one line naming the file or flag and the problem.
  """
  # --- arguments and outputs, before anything expensive ---
  if not input_path:
    raise InferenceError("--input is required (a NIfTI scan)")
  if not checkpoint_dir:
    raise InferenceError("--checkpoint is required (a trained model folder)")
  if not out_dir:
    raise InferenceError("--out_dir is required")
  if plane not in data.PLANES:
    raise InferenceError(f"--plane {plane!r}: must be one of {', '.join(data.PLANES)}")
  if placement not in PLACEMENTS:
    raise InferenceError(f"--placement {placement!r}: must be one of {', '.join(PLACEMENTS)}")
  if volume is not None and average:
    raise InferenceError("--volume and --average exclude each other; pass one")
  if volume is not None and volume < 0:
    raise InferenceError(f"--volume {volume}: must be >= 0")
  input_path, out_dir = pathlib.Path(input_path), pathlib.Path(out_dir)
  name = _stem(input_path) if name is None else name
  paths = _check_outputs(input_path, out_dir, name, overwrite)

  # --- inputs ---
  image, img = read_scan(input_path, volume=volume, average=average)
  folder = load_model_folder(checkpoint_dir)
  config = folder.config
  vol = to_volume(image, img.affine, plane=plane, name=name,
                  normalisation=folder.normalisation)
  axes = _INPLANE_AXES[plane]
  vs_scan = voxel_sizes_ras(img.affine)[axes]
  vs_model = folder.voxel_size[axes]
  n_slices, h, w = vol.image.shape
  grid = tuple(max(1, int(round(n * a / b))) for n, a, b in zip((h, w), vs_scan, vs_model))
  factor = 2**config.depth
  if min(grid) < factor:
    raise data.DataError(
        f"{input_path}: too small for the network: {h} x {w} voxels of "
        f"{vs_scan[0]:g} x {vs_scan[1]:g} mm in the {plane} plane are {grid[0]} x "
        f"{grid[1]} at the model's {vs_model[0]:g} x {vs_model[1]:g} mm; need at "
        f"least {factor} x {factor}")
  bank_hw = folder.bank.masks.shape[2:]
  log(f"{input_path}: {img.shape} -> {n_slices} {plane} slices of {h} x {w} at "
      f"{vs_scan[0]:g} x {vs_scan[1]:g} mm; model grid {grid[0]} x {grid[1]} at "
      f"{vs_model[0]:g} x {vs_model[1]:g} mm ({folder.voxel_size_source}), "
      f"fitted to {bank_hw[0]} x {bank_hw[1]}")

  # --- the network on the model grid ---
  model_slices = fit_to(resample_inplane(vol.image, vs_scan, vs_model, grid, order=1),
                        bank_hw)
  bank_index = bank_slice_index(n_slices, folder.bank.masks.shape[1])
  if placement == "improved":
    out = run_improved(folder, dataclasses.replace(vol, image=model_slices), bank_index,
                       batch_size=batch_size or config.eval_batch_size,
                       path=pathlib.Path(checkpoint_dir) / TEMPLATES_FILE)
  else:
    out = run_model(folder, model_slices, bank_index,
                    batch_size=batch_size or config.eval_batch_size)

  # --- back to the input grid ---
  def back(x: np.ndarray, order: int) -> np.ndarray:
    return resample_inplane(unfit(x, grid), vs_model, vs_scan, (h, w), order=order)

  native = {"brainmask": back(out["placed"].astype(np.uint8), 0),
            "labels": back(out["labels"].astype(np.uint8), 0),
            "saliency": back(out["saliency"].astype(np.float32), 1)}
  dtypes = {"brainmask": np.uint8, "labels": np.uint8, "saliency": np.float32}
  rows = [{"slice": int(s), "bank_slice": int(bank_index[s]),
           "dy_vox": int(out["displacement"][s, 0]), "dx_vox": int(out["displacement"][s, 1]),
           "dy_mm": float(out["displacement"][s, 0] * vs_model[0]),
           "dx_mm": float(out["displacement"][s, 1] * vs_model[1]),
           "confidence": float(out["confidence"][s]),
           "brain_voxels": int(native["brainmask"][s].sum())} for s in range(n_slices)]
  for s, row in enumerate(rows):
    row["placement"] = placement
    if placement == "improved":
      row |= {"volume_dy_vox": int(out["volume_displacement"][0]),
              "volume_dx_vox": int(out["volume_displacement"][1]),
              "fallback": bool(out["fallback"][s]),
              "template_animal": folder.bank.animal_ids[int(out["template_animal"][s])],
              "slice_offset": int(out["slice_offset"][s]),
              "scale": float(out["scale"][s])}

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
      nib.save(like_input(arr, img, dtypes[key]), tmp / paths[key].name)
    _write_csv(tmp / paths["csv"].name, rows)
    if qc:
      qc_figure(tmp / paths["qc"].name, model_slices, out["placed"], out["labels"])
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
  if placement == "improved":
    d = out["volume_displacement"]
    log(f"improved placement: volume displacement ({d[0]}, {d[1]}) model voxels, "
        f"{int(out['fallback'].sum())} of {n_slices} slices fell back to it")
  log(f"wrote {', '.join(p.name for p in paths.values())} to {out_dir}")
  return {"paths": paths, "slices": rows, "placed": out["placed"], "labels": out["labels"],
          "image": model_slices, "grid": grid, "bank_index": bank_index}
