"""``mouse_epi``: mouse fMRI EPI means with manual brain masks -> the project's layout.

Source files (``../shared/data/README.md``): ``source_images/N_<aa>_<s>.mat``
(one key ``N``: float64 (80, 80, 16|17), the temporal mean of a motion-corrected
EPI series, skull and surroundings present) and
``masks/mask_<aa>_<s>_4D_mcflirted.nii`` (the manual brain mask on the same
grid; its header is the only geometry, so a session without a mask has none).

Conversion of one session:

* image: ``N`` as float32, in the mask's voxel order (checked on the data: the
  mask covers the bright brain in that order, not in the transposed one);
* geometry: the mask's affine with its first three rows divided by ten. The
  headers store voxel sizes x10 (2.5 x 2.5 x 10), a habit that lets human tools
  accept rodent data; divided, 0.25 x 0.25 x 1.0 mm (R-L, S-I, A-P after the
  headers' RSP orientation). The source states no voxel size and the brains come
  out larger than mouse-t2-atlas's (about 15.5 x 10.8 mm in-plane against
  11 x 7.8), so the in-plane size may be smaller: anything that resamples by it
  must tolerate that doubt (``meta.json`` says so under ``voxel_size_note``);
* brain mask: the manual mask (the real truth of this set);
* labels: tissue pseudo-labels inside the mask (``pseudo_labels``), marked as
  such in ``meta.json``.

Layout: ``<root>/<aa>/`` holds the animal's evaluated session (session 1, or the
lowest-numbered session that can be converted) as an ordinary animal folder,
so ``data.load_dataset(root)`` sees one volume per animal and a split by animal
keeps sessions together; a further session ``s`` sits beside it in
``<root>/<aa>/session<s>/`` (the same files; ``data.load_animal`` reads it, and
:func:`session_dirs` lists an animal's sessions). Sessions without a mask in the
set (10_2, 14_2, animal 23) and sessions whose files a local copy lacks are
skipped and listed in the summary.

Slice counts differ (16 for animals 02, 04, 06; 17 for the others); nothing is
resampled here. Volumes of 16 and 17 slices are paired by relative
anterior-posterior position (``scan.bank_slice_index``: first slice to first,
last to last, the rest rounded in between).
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import re
from typing import Any, Callable

import nibabel as nib
import numpy as np
import scipy.io

from rodent_gbp import fileio
from rodent_gbp import nifti
from rodent_gbp.datasets import common, pseudo_labels
from rodent_gbp.datasets.download import FileCheck
from rodent_gbp.datasets.registry import MOUSE_EPI
from rodent_gbp.errors import DataError

_LOG = logging.getLogger(__name__)

CONVERTER_VERSION = 1
VOXEL_SCALE = 0.1
SEED = 0
_IMAGE = re.compile(r"source_images/N_(\d+)_(\d+)\.mat")
_MASK = re.compile(r"masks/mask_(\d+)_(\d+)_4D_mcflirted\.nii")
VOXEL_SIZE_NOTE = (
    "The masks' headers store voxel sizes x10 (2.5 x 2.5 x 10); divided by ten here "
    "(0.25 x 0.25 x 1.0 mm). The source states no voxel size; at 0.25 mm the brains "
    "come out about 15.5 x 10.8 mm in-plane, larger than mouse_t2_atlas's "
    "(about 11 x 7.8 mm), so the in-plane size may be smaller: treat it as uncertain.")


def session_files(paths) -> dict[str, dict[int, dict[str, str]]]:
  """Manifest paths by animal and session: ``{aa: {s: {"image": p, "mask": p}}}``."""
  out: dict[str, dict[int, dict[str, str]]] = {}
  for path in paths:
    for kind, pattern in (("image", _IMAGE), ("mask", _MASK)):
      m = pattern.fullmatch(path)
      if m:
        out.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[kind] = path
  return {a: dict(sorted(s.items())) for a, s in sorted(out.items())}


def read_session(image_path: pathlib.Path, mask_path: pathlib.Path
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads one session.

  Returns:
    (image, mask, affine): image (X, Y, Z) float64 from the ``.mat``'s ``N``;
    mask (X, Y, Z) bool; affine (4, 4) of the mask's header with the first
    three rows divided by ten (mm).

  Raises:
    DataError: unreadable files, no key ``N``, grids that differ, a mask
      that is not 0/1 or is empty (the message names the file).
  """
  try:
    mat = scipy.io.loadmat(str(image_path))
  except Exception as e:  # scipy raises several types for a damaged file.
    raise DataError(f"{image_path}: cannot read as a MATLAB file ({e})") from e
  if "N" not in mat:
    keys = sorted(k for k in mat if not k.startswith("__"))
    raise DataError(f"{image_path}: no key 'N' (keys: {keys})")
  image = np.asarray(mat["N"], np.float64)
  if image.ndim != 3 or not np.all(np.isfinite(image)):
    raise DataError(f"{image_path}: 'N' must be a finite 3D volume, got shape "
                    f"{image.shape}")
  mask, img = nifti.read(mask_path, series=False, dtype=np.float64)
  if mask.shape != image.shape:
    raise DataError(f"{mask_path}: shape {mask.shape} differs from {image_path.name}'s "
                    f"{image.shape}")
  if not np.all(np.isin(mask, (0.0, 1.0))) or not mask.any():
    raise DataError(f"{mask_path}: the brain mask must be 0/1 and not empty")
  affine = np.array(img.affine, np.float64)
  affine[:3] *= VOXEL_SCALE
  return image, mask > 0, affine


def session_dirs(animal_dir: str | pathlib.Path) -> dict[int, pathlib.Path]:
  """An animal's session folders by session number, from its ``meta.json``.

  The evaluated session is the animal folder itself (listed first); a folder
  without a ``sessions`` entry is one session, numbered 1.
  """
  animal_dir = pathlib.Path(animal_dir)
  meta_path = animal_dir / "meta.json"
  meta = fileio.read_json(meta_path) if meta_path.is_file() else {}
  sessions = meta.get("sessions") or {"1": "."}
  return {int(s): animal_dir if rel == "." else animal_dir / rel
          for s, rel in sessions.items()}


def _convert_session(root: pathlib.Path, files: dict[str, str], animal: str,
                     session: int, folder: pathlib.Path) -> dict[str, Any]:
  image, mask, affine = read_session(root / files["image"], root / files["mask"])
  sizes = common.voxel_sizes(affine)
  labels, fit = pseudo_labels.tissue_pseudo_labels(image, mask, spacing=sizes, seed=SEED)
  meta = {
      "dataset": MOUSE_EPI.name, "animal_id": animal, "session": session,
      "source": {"image": files["image"], "mask": files["mask"]},
      "volume_sha256": hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest(),
      "shape": list(image.shape), "orientation": "".join(nib.aff2axcodes(affine)),
      "voxel_size_mm": [round(s, 6) for s in sizes], "voxel_size_note": VOXEL_SIZE_NOTE,
      "brainmask": "manual brain mask of the source (masks/); the real truth of this set",
      "labels": {**pseudo_labels.method_description(), "seed": SEED, "fit": fit,
                 "counts": common.class_counts(labels)},
  }
  common.write_animal(folder, image=image, labels=labels, brainmask=mask,
                      affine=affine, meta=meta)
  return meta


def convert(check: FileCheck, out: pathlib.Path, *,
            log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Converts the sessions a checked copy holds into ``out`` (the project's layout).

  Args:
    check: ``download.verify_copy`` / ``download.fetch`` of ``mouse_epi``.
    out: the dataset folder to fill (created).
    log: one line per session.

  Returns:
    Summary: ``animals`` (ids converted), ``sessions`` {id: [numbers]},
    ``skipped_sessions`` and ``skipped_animals`` ({"id", "session", "reason"}
    rows).
  """
  present = set(check.present)
  listed = session_files(p.path for p in MOUSE_EPI.manifest)
  summary: dict[str, Any] = {"animals": [], "sessions": {}, "skipped_sessions": [],
                             "skipped_animals": []}
  out.mkdir(parents=True, exist_ok=True)
  rows = []
  for animal, sessions in listed.items():
    done: list[int] = []
    reasons = []
    for session, files in sessions.items():
      if "mask" not in files:
        reason = "no mask in the set (no geometry, no truth)"
      elif "image" not in files:
        reason = "no image in the set"
      elif not {files["image"], files["mask"]} <= present:
        lacking = sorted({files["image"], files["mask"]} - present)
        reason = "not in the local copy: " + ", ".join(lacking)
      else:
        reason = None
      if reason:
        summary["skipped_sessions"].append({"id": animal, "session": session,
                                            "reason": reason})
        reasons.append(f"session {session}: {reason}")
        continue
      folder = out / animal if not done else out / animal / f"session{session}"
      meta = _convert_session(check.root, files, animal, session, folder)
      done.append(session)
      counts = meta["labels"]["counts"]
      log(f"{animal}_{session}: {meta['shape']} -> {folder.relative_to(out)} "
          f"(pseudo-labels WM {counts['wm']}, GM {counts['gm']}, CSF {counts['csf']})")
    if not done:
      summary["skipped_animals"].append({"id": animal, "reason": "; ".join(reasons)})
      continue
    _finish_animal(out / animal, done)
    summary["animals"].append(animal)
    summary["sessions"][animal] = done
    rows.append({"animal_id": animal, "sessions": " ".join(map(str, done)),
                 "evaluated_session": done[0]})
  if not rows:
    raise DataError(f"{check.root}: no mouse_epi session has both its image and its "
                    "mask in the copy")
  fileio.write_csv(out / "animals.csv", rows)
  return summary


def _finish_animal(folder: pathlib.Path, sessions: list[int]) -> None:
  """Records the animal's sessions in its top-level ``meta.json``."""
  meta = fileio.read_json(folder / "meta.json")
  first = meta["volume_sha256"]
  meta["evaluated_session"] = sessions[0]
  meta["sessions"] = {str(sessions[0]): "."} | {
      str(s): f"session{s}" for s in sessions[1:]}
  same = []
  for s in sessions[1:]:
    sub = fileio.read_json(folder / f"session{s}" / "meta.json")
    if sub["volume_sha256"] == first:
      same.append(s)
  meta["sessions_with_identical_volume"] = same
  fileio.write_json(folder / "meta.json", meta)
