"""NIfTI datasets of rodent MRI: loading, validation, slicing, splits, batches.

Folder layout (docs/design.md#folder-layout): ``<root>/<animal>/image.nii.gz``,
``labels.nii.gz``, ``brainmask.nii.gz`` and optionally ``meta.json`` (``.nii``
also accepted). Volumes are brought to RAS+ (the reorientation of
``nib.as_closest_canonical``) and cut into 2D slices (S, H, W):

* ``coronal`` (default): along A-P, slice j = ``ras[:, j, :]``, (H, W) = (x, z);
* ``axial``: along S-I, slice k = ``ras[:, :, k]``, (H, W) = (x, y);
* ``sagittal``: along R-L, slice i = ``ras[i, :, :]``, (H, W) = (y, z).

``to_nifti`` inverts all of this, so outputs are written in the input's own
orientation, shape and affine.

Intensity normalisation, per volume: ``image / scale`` with ``scale`` the 99th
percentile of the voxels above the volume's mean (the mean separates air from
tissue in a head scan, so the scale is a robust maximum of tissue intensity and
does not depend on how much air the field of view holds). Zero stays zero, so
skull-stripping commutes with it. The rule, not one number, is what carries over
to inference: ``apply_normalisation`` recomputes the scale of a new volume with
the rule recorded in the params dict.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Iterator, Mapping

import nibabel as nib
import numpy as np

from rodent_gbp import nifti
from rodent_gbp.errors import DataError, UsageError

NUM_CLASSES = 4
PLANES = ("coronal", "axial", "sagittal")
# RAS axes -> (S, H, W) for each plane.
_PLANE_AXES = {"coronal": (1, 0, 2), "axial": (2, 0, 1), "sagittal": (0, 1, 2)}
LABEL_PRESETS = {
    # FSL FAST writes 1 CSF, 2 GM, 3 WM.
    "fsl_fast": {0: 0, 1: 3, 2: 2, 3: 1},
    "identity": {0: 0, 1: 1, 2: 2, 3: 3},
}


@dataclasses.dataclass
class Volume:
  """One animal (or scan), sliced.

  Attributes:
    animal_id: folder name (or file stem for ``load_scan``).
    image: (S, H, W) float32, normalised.
    label: (S, H, W) int32 in 0..3, or None.
    brainmask: (S, H, W) bool, or None.
    meta: ``meta.json`` contents (empty if absent) plus ``source`` paths.
    normalisation: params of ``normalise_intensity`` for this volume.
    affine: (4, 4) affine of the input file.
    shape: 3D shape of the input file.
    orientation: (3, 2) nibabel orientation transform input -> RAS+.
    plane: the slicing plane.
  """

  animal_id: str
  image: np.ndarray
  label: np.ndarray | None
  brainmask: np.ndarray | None
  meta: dict[str, Any]
  normalisation: dict[str, Any]
  affine: np.ndarray
  shape: tuple[int, int, int]
  orientation: np.ndarray
  plane: str = "coronal"


# --- intensity normalisation -------------------------------------------------

def normalise_intensity(image: np.ndarray, *, percentile: float = 99.0
                        ) -> tuple[np.ndarray, dict[str, Any]]:
  """Divides a volume by a robust maximum of its tissue intensity.

  Args:
    image: any shape, finite.
    percentile: percentile of the voxels above the mean used as the scale.

  Returns:
    (image / scale as float32, params) with params = {"method": "robust_max",
    "percentile", "scale"}.
  """
  image = np.asarray(image, np.float32)
  above = image[image > image.mean()]
  scale = float(np.percentile(above, percentile)) if above.size else 0.0
  if not np.isfinite(scale) or scale <= 0:
    scale = 1.0                                # constant or empty image
  params = {"method": "robust_max", "percentile": float(percentile), "scale": scale}
  return (image / np.float32(scale)).astype(np.float32), params


def apply_normalisation(image: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
  """Normalises ``image`` by the rule recorded in ``params``.

  ``method == "robust_max"`` recomputes the per-volume scale of ``image`` with
  the recorded percentile (the training rule); ``method == "fixed"`` divides by
  ``params["scale"]`` as it stands.
  """
  method = params.get("method")
  if method == "robust_max":
    return normalise_intensity(image, percentile=params["percentile"])[0]
  if method == "fixed":
    return (np.asarray(image, np.float32) / np.float32(params["scale"])).astype(np.float32)
  raise ValueError(f"unknown normalisation method {method!r}")


# --- geometry ----------------------------------------------------------------

def _check_plane(plane: str) -> None:
  if plane not in _PLANE_AXES:
    raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")


def plane_axes(plane: str = "coronal") -> tuple[int, int, int]:
  """The RAS axes that become (S, H, W) of ``plane``'s slices."""
  _check_plane(plane)
  return _PLANE_AXES[plane]


def to_slices(ras: np.ndarray, plane: str = "coronal") -> np.ndarray:
  """RAS+ volume (X, Y, Z) -> slices (S, H, W) of ``plane``."""
  _check_plane(plane)
  return np.ascontiguousarray(np.transpose(ras, _PLANE_AXES[plane]))


def from_slices(slices: np.ndarray, plane: str = "coronal") -> np.ndarray:
  """Slices (S, H, W) of ``plane`` -> RAS+ volume (X, Y, Z)."""
  _check_plane(plane)
  return np.transpose(slices, np.argsort(_PLANE_AXES[plane]))


def to_nifti(slices: np.ndarray, volume: Volume) -> nib.Nifti1Image:
  """Writes slices back in the input's own orientation, shape and affine.

  Args:
    slices: (S, H, W) or (S, H, W, 1) in ``volume``'s plane, e.g. a label map.
    volume: the ``Volume`` the slices came from.

  Returns:
    A NIfTI image with ``volume.affine`` whose array has ``volume.shape``.
  """
  slices = np.asarray(slices)
  if slices.ndim == 4 and slices.shape[-1] == 1:
    slices = slices[..., 0]
  if slices.shape != volume.image.shape:
    raise ValueError(f"slices of shape {slices.shape} do not match the volume's "
                     f"{volume.image.shape}")
  if slices.dtype == bool:
    slices = slices.astype(np.uint8)
  ras = from_slices(slices, volume.plane)
  inverse = nib.orientations.ornt_transform(nifti.RAS, nib.orientations.io_orientation(
      volume.affine))
  data = np.ascontiguousarray(nib.orientations.apply_orientation(ras, inverse))
  assert data.shape == tuple(volume.shape), (data.shape, volume.shape)
  img = nib.Nifti1Image(data, volume.affine)
  img.set_qform(volume.affine, code=1)
  img.set_sform(volume.affine, code=1)
  return img


# --- loading and validation --------------------------------------------------

def _find(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
  for suffix in (".nii.gz", ".nii"):
    path = folder / f"{stem}{suffix}"
    if path.is_file():
      return path
  return None


def _read(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """A 3D NIfTI volume as stored (``nifti.read``; a trailing singleton 4th axis dropped)."""
  volume, img = nifti.read(path, series=False, dtype=None)
  return volume, img.affine


def _check_same_grid(path, data, affine, ref_path, ref_data, ref_affine) -> None:
  if data.shape != ref_data.shape:
    raise DataError(f"{path}: shape {data.shape} differs from {ref_path.name}'s "
                    f"{ref_data.shape}")
  tol = 1e-3 * float(np.abs(ref_affine[:3, :3]).max())
  if not np.allclose(affine, ref_affine, atol=tol, rtol=0):
    raise DataError(f"{path}: affine differs from {ref_path.name}'s")


def _resolve_label_map(label_map) -> dict[int, int] | None:
  if label_map is None:
    return None
  if isinstance(label_map, str):
    if label_map not in LABEL_PRESETS:
      raise UsageError(f"unknown label_map preset {label_map!r}; "
                       f"presets: {sorted(LABEL_PRESETS)}")
    return LABEL_PRESETS[label_map]
  return {int(k): int(v) for k, v in dict(label_map).items()}


def _to_labels(path: pathlib.Path, data: np.ndarray, label_map) -> np.ndarray:
  values = np.asarray(data, np.float64)
  if not np.all(np.isfinite(values)):
    raise DataError(f"{path}: labels contain NaN or inf")
  if not np.all(values == np.round(values)):
    raise DataError(f"{path}: labels are not integral")
  labels = values.astype(np.int64)
  if label_map is not None:
    mapped = labels.copy()
    for src, dst in label_map.items():
      mapped[labels == src] = dst
    labels = mapped
  bad = (labels < 0) | (labels >= NUM_CLASSES)
  if bad.any():
    found = np.unique(labels[bad])[:5].tolist()
    how = " after label_map" if label_map is not None else ""
    raise DataError(f"{path}: label values {found} outside 0..{NUM_CLASSES - 1}{how}")
  return labels.astype(np.int32)


def _make_volume(path, data, affine, *, plane, animal_id, label, brainmask, meta):
  image = np.asarray(data, np.float32)
  if not np.all(np.isfinite(image)):
    raise DataError(f"{path}: image contains NaN or inf")
  ras, ornt = nifti.reorient_ras(image, affine)
  normalised, params = normalise_intensity(ras)
  def sliced(a):
    return None if a is None else to_slices(nifti.reorient_ras(a, affine)[0], plane)
  return Volume(animal_id=animal_id, image=to_slices(normalised, plane),
                label=sliced(label), brainmask=sliced(brainmask), meta=meta,
                normalisation=params, affine=np.asarray(affine, np.float64),
                shape=tuple(int(n) for n in image.shape), orientation=ornt,
                plane=plane)


def load_animal(animal_dir: str | pathlib.Path, *, plane: str = "coronal",
                label_map: Mapping[int, int] | str | None = None,
                require_labels: bool = True) -> Volume:
  """Loads and validates one animal folder.

  Args:
    animal_dir: folder with ``image``, ``labels``, ``brainmask`` (.nii[.gz]).
    plane: "coronal" (default), "axial" or "sagittal".
    label_map: {user value: our value} applied to the labels before the range
      check, or a preset name ("fsl_fast": 1 CSF, 2 GM, 3 WM -> ours).
      Values not in the map are kept.
    require_labels: if False, a folder without labels loads with
      ``label = brainmask = None`` (a brain mask alone is still read).

  Returns:
    A ``Volume``. Without ``brainmask`` but with labels, the brain mask is
    ``labels > 0`` (recorded in ``meta["brainmask_source"]``).

  Raises:
    DataError: a file is missing or invalid (the message names it).
  """
  _check_plane(plane)
  folder = pathlib.Path(animal_dir)
  if not folder.is_dir():
    raise DataError(f"{folder}: animal folder not found")
  image_path = _find(folder, "image")
  if image_path is None:
    raise DataError(f"{folder / 'image.nii.gz'}: file not found")
  image, affine = _read(image_path)
  meta: dict[str, Any] = {}
  meta_path = folder / "meta.json"
  if meta_path.is_file():
    try:
      meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
      raise DataError(f"{meta_path}: invalid JSON ({e})") from e
  meta["source"] = {"image": str(image_path)}

  label = None
  label_path = _find(folder, "labels")
  if label_path is None and require_labels:
    raise DataError(f"{folder / 'labels.nii.gz'}: file not found")
  if label_path is not None:
    data, aff = _read(label_path)
    _check_same_grid(label_path, data, aff, image_path, image, affine)
    label = _to_labels(label_path, data, _resolve_label_map(label_map))
    meta["source"]["labels"] = str(label_path)

  brainmask = None
  mask_path = _find(folder, "brainmask")
  if mask_path is not None:
    data, aff = _read(mask_path)
    _check_same_grid(mask_path, data, aff, image_path, image, affine)
    values = np.asarray(data, np.float64)
    if not np.all(np.isin(values, (0.0, 1.0))):
      raise DataError(f"{mask_path}: brain mask is not binary (0/1)")
    brainmask = values > 0
    meta["source"]["brainmask"] = str(mask_path)
    meta["brainmask_source"] = "file"
  elif label is not None:
    brainmask = label > 0
    meta["brainmask_source"] = "labels"
  if brainmask is not None and not brainmask.any():
    # Nothing to learn from and no template to place: most likely a wrong file.
    raise DataError(f"{mask_path or label_path}: brain mask is empty (no brain voxels)")

  return _make_volume(image_path, image, affine, plane=plane, animal_id=folder.name,
                      label=label, brainmask=brainmask, meta=meta)


def load_dataset(root: str | pathlib.Path, **kw) -> list[Volume]:
  """Loads every animal folder under ``root`` (those holding an image), sorted by id.

  Keyword arguments go to ``load_animal``.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"{root}: dataset folder not found")
  folders = sorted(p for p in root.iterdir() if p.is_dir() and _find(p, "image"))
  if not folders:
    raise DataError(f"{root}: no animal folders with an image.nii[.gz]")
  return [load_animal(p, **kw) for p in folders]


def other_sessions(volume: Volume, **kw) -> list[Volume]:
  """The further sessions of ``volume``'s animal (none for a one-session folder).

  An animal folder's ``meta.json`` may list its sessions
  (``{"sessions": {"1": ".", "2": "session2"}}``: the evaluated one is the
  folder itself); the others are loaded here with ``load_animal`` (keyword
  arguments go to it) and keep the animal's id, so a split by animal keeps
  them with it.
  """
  sessions = volume.meta.get("sessions") or {}
  image = volume.meta.get("source", {}).get("image")
  if not sessions or image is None:
    return []
  folder = pathlib.Path(image).parent
  out = []
  for number, rel in sorted(sessions.items(), key=lambda kv: int(kv[0])):
    if rel == ".":
      continue
    other = load_animal(folder / rel, **kw)
    out.append(dataclasses.replace(other, animal_id=volume.animal_id))
  return out


# --- splits and batches --------------------------------------------------------

def _round_half_up_fifth(n: int) -> int:
  """round_half_up(0.2 n) in integer arithmetic."""
  return (2 * n + 5) // 10


def split_animals(animal_ids, seed: int) -> dict[str, list[str]]:
  """Splits animals (never slices) into train / val / test (docs/design.md#splits).

  test = round_half_up(0.2 N) animals, val = round_half_up(0.2 (N - test)),
  the rest train; which animals go where is a permutation of the sorted ids
  drawn from ``seed``. 10 animals -> 6 / 2 / 2; 5 -> 3 / 1 / 1. Each list sorted.
  """
  ids = sorted(str(a) for a in animal_ids)
  if len(set(ids)) != len(ids):
    raise DataError("animal ids are not unique")
  n = len(ids)
  n_test = _round_half_up_fifth(n)
  n_val = _round_half_up_fifth(n - n_test)
  order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
  return {"train": sorted(order[n_test + n_val:]),
          "val": sorted(order[n_test:n_test + n_val]),
          "test": sorted(order[:n_test])}


SPLIT_PARTS = ("train", "val", "test")


def check_split(split: Mapping[str, Any], animal_ids, *, source: str = "split") -> dict:
  """A validated split ``{"train", "val", "test"}`` of ``animal_ids``.

  Raises:
    DataError (naming ``source``): a part missing or not a list of ids, an
      unknown part, an id in two parts or twice, an id the dataset lacks, or
      no training animal. Animals of the dataset left out of every part are
      simply not used.
  """
  if not isinstance(split, Mapping):
    raise DataError(f"{source}: a split is a JSON object with keys train, val, test")
  unknown = sorted(set(split) - set(SPLIT_PARTS))
  if unknown:
    raise DataError(f"{source}: unknown keys {unknown} (expected train, val, test)")
  out = {}
  for part in SPLIT_PARTS:
    ids = split.get(part, [])
    if not isinstance(ids, list) or not all(isinstance(a, (str, int)) for a in ids):
      raise DataError(f"{source}: {part!r} must be a list of animal ids")
    out[part] = sorted(str(a) for a in ids)
  seen: dict[str, str] = {}
  for part in SPLIT_PARTS:
    for a in out[part]:
      if a in seen:
        where = part if seen[a] == part else f"{seen[a]} and {part}"
        raise DataError(f"{source}: animal {a!r} is listed twice ({where})")
      seen[a] = part
  known = {str(a) for a in animal_ids}
  missing = sorted(set(seen) - known)
  if missing:
    raise DataError(f"{source}: animals {missing} are not in the dataset (it has "
                    f"{', '.join(sorted(known))})")
  if not out["train"]:
    raise DataError(f"{source}: no training animals")
  return out


def read_split_file(path: str | pathlib.Path, animal_ids) -> dict[str, list[str]]:
  """Reads and checks a split file: JSON ``{"train": [ids], "val": [ids], "test": [ids]}``."""
  path = pathlib.Path(path)
  try:
    raw = json.loads(path.read_text())
  except FileNotFoundError:
    raise DataError(f"{path}: split file not found") from None
  except (ValueError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not a JSON split file ({e})") from None
  return check_split(raw, animal_ids, source=str(path))


def stack_slices(volumes: list[Volume]) -> dict[str, np.ndarray]:
  """Concatenates the slices of labelled volumes.

  Returns:
    image (N, H, W, 1) float32 (normalised), stripped (N, H, W, 1) float32
    (zero outside the brain mask: the paper's skull-stripped training input),
    label (N, H, W) int32, brainmask (N, H, W) bool, animal (N,) int32 (index
    into ``volumes``), slice_index (N,) int32.
  """
  if not volumes:
    raise DataError("no volumes to stack")
  parts: dict[str, list[np.ndarray]] = {k: [] for k in (
      "image", "stripped", "label", "brainmask", "animal", "slice_index")}
  for i, v in enumerate(volumes):
    if v.label is None or v.brainmask is None:
      raise DataError(f"{v.meta.get('source', {}).get('image', v.animal_id)}: "
                      "stack_slices needs labels and a brain mask")
    n = v.image.shape[0]
    image = v.image.astype(np.float32)[..., None]
    parts["image"].append(image)
    parts["stripped"].append(np.where(v.brainmask[..., None], image, np.float32(0)))
    parts["label"].append(v.label.astype(np.int32))
    parts["brainmask"].append(v.brainmask.astype(bool))
    parts["animal"].append(np.full((n,), i, np.int32))
    parts["slice_index"].append(np.arange(n, dtype=np.int32))
  shapes = {p.shape[1:] for p in parts["label"]}
  if len(shapes) != 1:
    raise DataError(f"volumes have different slice shapes {sorted(shapes)}")
  return {k: np.concatenate(v, axis=0) for k, v in parts.items()}


def iterate_batches(arrays: Mapping[str, np.ndarray], batch_size: int, *, seed: int,
                    epoch: int, shuffle: bool = True, drop_remainder: bool = True
                    ) -> Iterator[dict[str, np.ndarray]]:
  """Yields dicts of numpy batches (leading axis ``batch_size``).

  The order is a pure function of ``(seed, epoch)``: a permutation drawn from
  ``SeedSequence([seed, epoch])`` (identity if ``shuffle`` is False).
  """
  lengths = {len(v) for v in arrays.values()}
  if len(lengths) != 1:
    raise ValueError(f"arrays have different lengths {sorted(lengths)}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  n = lengths.pop()
  if shuffle:
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)
  else:
    order = np.arange(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    yield {k: v[idx] for k, v in arrays.items()}


def normalisation_record(volumes) -> dict:
  """What ``normalisation.json`` holds: the rule, and each animal's params.

  The top level is a params dict ``data.apply_normalisation`` accepts (for the
  per-volume ``robust_max`` rule without a fixed ``scale``: inference recomputes
  it per scan, as training did); ``per_animal`` keeps every volume's params.
  """
  rule = dict(volumes[0].normalisation)
  if rule.get("method") == "robust_max":
    rule.pop("scale", None)
  return {**rule, "per_animal": {v.animal_id: dict(v.normalisation) for v in volumes}}


def slice_spacing(volume) -> tuple[float, float, float]:
  """(S, H, W) voxel size in mm of a volume's slices (its RAS sizes in plane order)."""
  vs = nifti.voxel_sizes_ras(volume.affine)
  return tuple(float(vs[a]) for a in plane_axes(volume.plane))
