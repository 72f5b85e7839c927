"""``mouse_t2_atlas``: in-vivo mouse T2 with structure labels -> the project's layout.

Source files (``../shared/data/README.md``), per mouse ``<id>.nii.gz`` in
``template_after_brain_extraction/`` (T2, skull-stripped), ``label/`` (40
structures, float32) and ``mask/`` (not used: one voxel wider than the stripped
image). 112 x 128 x 80 voxels of 0.15 mm, RAS.

* Animal id: the file name without ``.nii.gz`` (``tg4510_tp3_1_20130520_WT``);
  its genotype (WT / UT / TT, the last field) goes into ``meta.json`` and the
  root's ``animals.csv``.
* Tissue from structures (one reading of the structure list, stated in
  ``meta.json``): WM = {2, 4, 6, 20, 24, 26, 40} (external capsule / corpus
  callosum, anterior commissure, internal capsule, fimbria, both hemispheres),
  CSF = {10} (ventricles), GM = every other label > 0.
* Brain truth: label > 0 (``brainmask.nii.gz``).
* Resolution ``"native"``: the 0.15 mm grid as it is (RAS). ``"fine"``: the
  paper's slice selection (every third coronal slice, 0.45 mm apart) at the
  native 0.15 mm in-plane grid (112 x 80), where the white-matter tracts are
  4-6 voxels thick instead of 2-3. ``"paper"`` (the
  default): near the paper's 0.375 x 0.375 x 0.5 mm grid, 0.3 mm in-plane and
  every third coronal slice (0.45 mm apart): coronal (A-P) slices 1, 4, ..., 127
  of 128 are kept (43 slices, centred in the field of view; no averaging across
  slices), and each kept slice is reduced by 2 x 2 blocks in R-L and S-I (112 x 80
  -> 56 x 40). Image: the block mean (partial volume at the brain's edge, as an
  acquisition at 0.3 mm would have). Labels: the block's most frequent class,
  ties broken toward the rarer class (WM > CSF > GM > background), so 2-voxel
  tracts and thin ventricles survive; the brain truth is then labels > 0, so
  image, labels and brain mask agree on one grid.
"""

from __future__ import annotations

import logging
import pathlib
import re
from typing import Any, Callable

import nibabel as nib
import numpy as np

from rodent_gbp import fileio
from rodent_gbp import nifti
from rodent_gbp.datasets import common
from rodent_gbp.datasets.download import FileCheck
from rodent_gbp.datasets.registry import MOUSE_T2_ATLAS
from rodent_gbp.errors import DataError

_LOG = logging.getLogger(__name__)

CONVERTER_VERSION = 1
RESOLUTIONS = ("paper", "fine", "native")
WM_LABELS = (2, 4, 6, 20, 24, 26, 40)
CSF_LABELS = (10,)
MAX_LABEL = 40
IMAGE_DIR, LABEL_DIR = "template_after_brain_extraction", "label"
TISSUE_RULE = ("WM = structures {2, 4, 6, 20, 24, 26, 40} (external capsule / corpus "
               "callosum, anterior commissure, internal capsule, fimbria, both "
               "hemispheres); CSF = {10} (ventricles); GM = every other label > 0; "
               "brain = label > 0 (mask/ is one voxel too wide and is not used)")
# Paper grid: in-plane block (R-L, S-I) and coronal (A-P) step and first slice.
PAPER_BLOCK = 2
PAPER_STEP, PAPER_FIRST = 3, 1
# Tie-break at a block vote: higher wins (WM > CSF > GM > background).
_PRIORITY = np.array([0, 3, 1, 2])
_ID = re.compile(rf"{IMAGE_DIR}/(.+)\.nii\.gz")


def tissue_lut() -> np.ndarray:
  """Lookup table (MAX_LABEL + 1,) uint8: structure label -> 0 BG, 1 WM, 2 GM, 3 CSF."""
  lut = np.full(MAX_LABEL + 1, 2, np.uint8)
  lut[0] = 0
  lut[list(WM_LABELS)] = 1
  lut[list(CSF_LABELS)] = 3
  return lut


def genotype(animal_id: str) -> str:
  """WT, UT or TT: the last field of the mouse's file name."""
  g = animal_id.rsplit("_", 1)[-1]
  if g not in ("WT", "UT", "TT"):
    raise DataError(f"{animal_id}: no genotype (WT / UT / TT) at the end of the name")
  return g


def read_mouse(image_path: pathlib.Path, label_path: pathlib.Path
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads one mouse in RAS+ (``nib.as_closest_canonical``).

  Returns:
    (image, structures, affine): image (X, Y, Z) float32; structures (X, Y, Z)
    int16 labels 0..40; affine (4, 4) of the RAS+ grid.

  Raises:
    DataError: unreadable files, grids that differ, labels that are not
      integers in 0..40 (the message names the file).
  """
  arrays = []
  for path in (image_path, label_path):
    img = nib.as_closest_canonical(nifti.read(path, series=False, dtype=None)[1])
    arrays.append((np.asarray(img.dataobj, np.float64), img.affine))
  (image, affine), (labels, label_affine) = arrays
  if image.shape != labels.shape or not np.allclose(affine, label_affine, atol=1e-4):
    raise DataError(f"{label_path}: grid differs from {image_path}")
  if not np.all(np.isfinite(image)):
    raise DataError(f"{image_path}: image contains NaN or inf")
  if (not np.all(labels == np.round(labels)) or labels.min() < 0
      or labels.max() > MAX_LABEL):
    raise DataError(f"{label_path}: labels must be integers in 0..{MAX_LABEL}")
  return image.astype(np.float32), labels.astype(np.int16), np.asarray(affine, np.float64)


def to_paper_grid(image: np.ndarray, tissue: np.ndarray, affine: np.ndarray, *,
                  block: int = PAPER_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reduces a RAS+ volume to the paper-like grid (module docstring); ``block``
  1 keeps the native in-plane grid (``"fine"``).

  Args:
    image: (X, Y, Z) float32 on the native grid.
    tissue: (X, Y, Z) uint8 classes 0..3.
    affine: (4, 4) RAS+ affine of the native grid.

  Returns:
    (image, tissue, affine) with shape (X // b, len(range(1, Y, 3)), Z // b).
  """
  b = block
  x, z = (image.shape[0] // b) * b, (image.shape[2] // b) * b
  keep = np.arange(PAPER_FIRST, image.shape[1], PAPER_STEP)
  img = image[:x, keep, :z].astype(np.float64)
  img = img.reshape(x // b, b, len(keep), z // b, b).mean(axis=(1, 4))
  onehot = tissue[:x, keep, :z, None] == np.arange(4)
  votes = onehot.reshape(x // b, b, len(keep), z // b, b, 4).sum(axis=(1, 4))
  reduced = np.argmax(votes * 8 + _PRIORITY, axis=-1).astype(np.uint8)
  # New voxel (i, j, k) has its centre at native (b i + (b - 1) / 2, 3 j + 1, ...).
  step = np.array([[b, 0, 0, (b - 1) / 2], [0, PAPER_STEP, 0, PAPER_FIRST],
                   [0, 0, b, (b - 1) / 2], [0, 0, 0, 1]], np.float64)
  return img.astype(np.float32), reduced, affine @ step


def convert(check: FileCheck, out: pathlib.Path, *, resolution: str = "paper",
            log: Callable[[str], None] = _LOG.info) -> dict[str, Any]:
  """Converts the mice a checked copy holds into ``out`` (the project's layout).

  Args:
    check: ``download.verify_copy`` / ``download.fetch`` of ``mouse_t2_atlas``.
    out: the dataset folder to fill (created).
    resolution: ``"paper"``, ``"fine"`` or ``"native"`` (module docstring).
    log: one line per mouse.

  Returns:
    Summary: ``animals`` (ids converted), ``genotypes`` {id: WT|UT|TT},
    ``skipped_animals`` ({"id", "reason"} rows), ``voxel_size_mm``.
  """
  if resolution not in RESOLUTIONS:
    raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
  present = set(check.present)
  lut = tissue_lut()
  ids = sorted(m.group(1) for p in MOUSE_T2_ATLAS.manifest
               if (m := _ID.fullmatch(p.path)))
  summary: dict[str, Any] = {"animals": [], "genotypes": {}, "skipped_animals": [],
                             "resolution": resolution}
  rows = []
  out.mkdir(parents=True, exist_ok=True)
  for animal in ids:
    files = {"image": f"{IMAGE_DIR}/{animal}.nii.gz", "labels": f"{LABEL_DIR}/{animal}.nii.gz"}
    lacking = sorted(set(files.values()) - present)
    if lacking:
      summary["skipped_animals"].append({"id": animal, "reason": "not in the local copy: "
                                         + ", ".join(lacking)})
      continue
    image, structures, affine = read_mouse(check.root / files["image"],
                                           check.root / files["labels"])
    tissue = lut[structures]
    if resolution != "native":
      image, tissue, affine = to_paper_grid(image, tissue, affine,
                                            block=PAPER_BLOCK if resolution == "paper" else 1)
    brain = tissue > 0
    sizes = common.voxel_sizes(affine)
    meta = {
        "dataset": MOUSE_T2_ATLAS.name, "animal_id": animal, "genotype": genotype(animal),
        "source": files, "resolution": resolution, "shape": list(image.shape),
        "orientation": "".join(nib.aff2axcodes(affine)),
        "voxel_size_mm": [round(s, 6) for s in sizes],
        "labels": {"kind": "tissue classes from the source's manual-atlas structure "
                   "labels", "rule": TISSUE_RULE, "counts": common.class_counts(tissue)},
        "brainmask": "label > 0",
    }
    common.write_animal(out / animal, image=image, labels=tissue, brainmask=brain,
                        affine=affine, meta=meta)
    counts = meta["labels"]["counts"]
    log(f"{animal}: {meta['shape']} at {' x '.join(f'{s:.3g}' for s in sizes)} mm "
        f"(WM {counts['wm']}, GM {counts['gm']}, CSF {counts['csf']})")
    summary["animals"].append(animal)
    summary["genotypes"][animal] = meta["genotype"]
    summary["voxel_size_mm"] = meta["voxel_size_mm"]
    rows.append({"animal_id": animal, "genotype": meta["genotype"], **{
        f"{k}_voxels": v for k, v in counts.items()}})
  if not rows:
    raise DataError(f"{check.root}: no mouse_t2_atlas mouse has both its image and its "
                    "labels in the copy")
  fileio.write_csv(out / "animals.csv", rows)
  return summary
