"""Label maps to synthesise training images from: brains of two atlases in real heads.

The tissue network learns tissue from images synthesised on the device
(:mod:`rodent_gbp.synthesis`) out of label maps built here once, plus the real
images that come with them (docs/design.md#tissue-from-label-maps). Every map is
cut into coronal slices on the model grid (in-plane pixel ``pixel_mm``, the
bundle's slice shape), as ``rodent-gbp-segment`` cuts a scan.

Synthesis label ids (each gets its own random intensity per sample):

* 0: air (:data:`AIR`); 1..5 (:data:`HEAD_IDS`): the surroundings of a
  ``mouse_epi`` head split by intensity into five classes (quantiles of its
  smoothed non-brain voxels, as SynthStrip splits a head); 6 (:data:`GAP`): the
  part of a ``mouse_epi`` brain mask the placed atlas brain does not cover;
* 8 (:data:`BRAIN_UNKNOWN`): brain of unknown tissue (a real ``mouse_epi`` brain);
* 16 + structure (:data:`T2_OFFSET`): ``mouse_t2_atlas`` structures 1..40;
* 64 + index (:data:`DSURQE_OFFSET`): DSURQE structures, in the order of the
  tissue table.

Targets (what the network is taught): 0 background, 1 WM, 2 GM, 3 CSF, 4 brain
of unknown or ignored tissue (:mod:`rodent_gbp.tissue_table`'s codes).

Heads: an atlas brain is placed into each ``mouse_epi`` head by an affine fit of
the masks (centroid and spread along each RAS axis: the head takes the atlas
brain's physical size, so that set's uncertain voxel size does not matter); its
structures replace the head's labels inside the atlas brain. The stored
``zoom`` of a head slice is the in-plane scale that brings the head to that
physical size (the synthesis draws a random zoom around it). A head of known
voxel size (a rat's, :func:`read_scan_head`) keeps its own size instead: the
atlas brain is stretched to its brain, and its zoom is 1.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterable, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from rodent_gbp import data
from rodent_gbp import nifti
from rodent_gbp import scan
from rodent_gbp import tissue_table
from rodent_gbp.errors import DataError

AIR, GAP, BRAIN_UNKNOWN = 0, 6, 8
HEAD_IDS = (1, 2, 3, 4, 5)
T2_OFFSET, DSURQE_OFFSET = 16, 64
NUM_LABELS = 512
# Quantiles of a head's smoothed non-brain voxels that split air and five head classes.
HEAD_QUANTILES = (0.35, 0.55, 0.7, 0.82, 0.92)
# Synthesis groups (rodent_gbp.synthesis): outside, WM, GM, CSF, brain other, head.
G_OUTSIDE, G_WM, G_GM, G_CSF, G_BRAIN, G_HEAD = range(6)
_GROUP_OF_CODE = np.array([G_OUTSIDE, G_WM, G_GM, G_CSF, G_BRAIN], np.int32)


@dataclasses.dataclass
class Brain:
  """One atlas brain in RAS+ (X R-L, Y A-P, Z S-I).

  Attributes:
    name: ``<source>:<subject>``.
    ids: (X, Y, Z) int16 synthesis label ids (0 outside the brain).
    target: (X, Y, Z) uint8 tissue codes.
    image: (X, Y, Z) float32 real image (zero outside the brain), or None.
    voxel_mm: (3,) voxel sizes.
  """

  name: str
  ids: np.ndarray
  target: np.ndarray
  image: np.ndarray | None
  voxel_mm: np.ndarray


@dataclasses.dataclass
class SliceSet:
  """Coronal slices on the model grid, ready for the device.

  Attributes:
    labels: (N, H, W) int16 synthesis ids.
    target: (N, H, W) uint8 tissue codes.
    image: (N, H, W) float32 real image normalised per slice set (zeros without).
    has_image: (N,) bool.
    zoom: (N,) float32 stored pixel size / physical model pixel size.
    subject: (N,) str, ``<source>:<subject>`` of each slice (the head's for a
      composite, ``+`` the brain's).
  """

  labels: np.ndarray
  target: np.ndarray
  image: np.ndarray
  has_image: np.ndarray
  zoom: np.ndarray
  subject: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def arrays(self) -> dict[str, np.ndarray]:
    """What the training step gathers from (no strings)."""
    return {"labels": self.labels, "target": self.target, "image": self.image,
            "has_image": self.has_image, "zoom": self.zoom}

def concat(sets: Sequence[SliceSet]) -> SliceSet:
  """One set of all slices of ``sets`` (in order)."""
  if not sets:
    raise DataError("no label-map slices to concatenate")
  return SliceSet(**{f.name: np.concatenate([getattr(s, f.name) for s in sets])
                     for f in dataclasses.fields(SliceSet)})


def group_of_label() -> np.ndarray:
  """(NUM_LABELS,) int32: the synthesis group of every id (module docstring)."""
  groups = np.full(NUM_LABELS, G_HEAD, np.int32)
  groups[AIR] = G_OUTSIDE
  groups[BRAIN_UNKNOWN] = G_BRAIN
  t2 = tissue_table.lut("mouse_t2_atlas")
  groups[T2_OFFSET + 1:T2_OFFSET + len(t2)] = _GROUP_OF_CODE[t2[1:]]
  ds = dsurqe_codes()
  groups[DSURQE_OFFSET:DSURQE_OFFSET + len(ds)] = _GROUP_OF_CODE[ds]
  return groups


def dsurqe_codes() -> np.ndarray:
  """Tissue codes of DSURQE's structures in table order (index = id - DSURQE_OFFSET)."""
  rows = [r for r in tissue_table.load_table() if r["source"] == "dsurqe"]
  codes = np.array([tissue_table.CODES[r["tissue"]] for r in rows], np.int32)
  if DSURQE_OFFSET + len(codes) > NUM_LABELS:
    raise DataError(f"{len(codes)} DSURQE structures do not fit in {NUM_LABELS} ids")
  return codes


def dsurqe_ids(labels: np.ndarray) -> np.ndarray:
  """DSURQE structure values -> synthesis ids (0 stays 0)."""
  rows = [r for r in tissue_table.load_table() if r["source"] == "dsurqe"]
  values = np.array([int(r["label"]) for r in rows])
  lut = np.zeros(int(max(values.max(), labels.max())) + 1, np.int16)
  lut[values] = DSURQE_OFFSET + np.arange(len(values))
  return lut[labels.astype(np.int64)]


# --- brains ----------------------------------------------------------------------------


def t2_brain(image: np.ndarray, structures: np.ndarray, affine: np.ndarray,
             subject: str) -> Brain:
  """A ``mouse_t2_atlas`` mouse (``mouse_t2_atlas.read_mouse``'s RAS+ arrays)."""
  target = tissue_table.to_tissue("mouse_t2_atlas", structures).astype(np.uint8)
  ids = np.where(structures > 0, T2_OFFSET + structures, AIR).astype(np.int16)
  return Brain(f"mouse_t2_atlas:{subject}", ids, target,
               np.where(structures > 0, image, 0).astype(np.float32),
               nifti.voxel_sizes(affine))


def dsurqe_brain(image: np.ndarray, structures: np.ndarray, affine: np.ndarray) -> Brain:
  """The DSURQE average (RAS+); outside its labels is not brain."""
  target = tissue_table.to_tissue("dsurqe", structures).astype(np.uint8)
  ids = dsurqe_ids(structures)
  return Brain("dsurqe:average", ids, target,
               np.where(structures > 0, image, 0).astype(np.float32),
               nifti.voxel_sizes(affine))


def _inplane(slices: np.ndarray, vs: Sequence[float], pixel_mm: float,
             shape: tuple[int, int], order: int) -> np.ndarray:
  h, w = slices.shape[1:]
  grid = tuple(max(1, int(round(n * v / pixel_mm))) for n, v in zip((h, w), vs))
  return scan.fit_to(scan.resample_inplane(slices, tuple(vs), (pixel_mm, pixel_mm), grid,
                                           order=order), shape)


def brain_slices(brain: Brain, *, pixel_mm: float, shape: tuple[int, int],
                 step_mm: float = 0.3) -> SliceSet:
  """The brain's coronal slices (one every ``step_mm``) on the model grid, alone
  (air around it), its real image beside them."""
  ap = brain.voxel_mm[1]
  keep = np.arange(0, brain.ids.shape[1], max(1, int(round(step_mm / ap))))
  keep = keep[(brain.target[:, keep, :] > 0).any(axis=(0, 2))]
  vs = (brain.voxel_mm[0], brain.voxel_mm[2])
  ids = _inplane(data.to_slices(brain.ids)[keep], vs, pixel_mm, shape, 0)
  target = _inplane(data.to_slices(brain.target)[keep], vs, pixel_mm, shape, 0)
  if brain.image is not None:
    image = _inplane(data.to_slices(data.normalise_intensity(brain.image)[0])[keep], vs,
                     pixel_mm, shape, 1)
  else:
    image = np.zeros(ids.shape, np.float32)
  n = len(keep)
  return SliceSet(ids.astype(np.int16), target.astype(np.uint8), image.astype(np.float32),
                  np.full(n, brain.image is not None), np.ones(n, np.float32),
                  np.full(n, brain.name))


# --- heads ------------------------------------------------------------------------------


@dataclasses.dataclass
class Head:
  """A real head in RAS+: image, brain mask, voxel sizes.

  ``size_known``: the voxel sizes are trusted (a rat head of its own size), so
  a composite keeps the head's size (zoom 1) and the placed atlas brain is
  scaled to the head's brain; otherwise (``mouse_epi``, whose voxel size is
  treated as unknown) the head is zoomed to the atlas brain's physical size.
  """

  name: str
  image: np.ndarray
  mask: np.ndarray
  voxel_mm: np.ndarray
  size_known: bool = False


def read_head(folder: pathlib.Path, name: str) -> Head:
  """A converted ``mouse_epi`` session folder (``image.nii.gz``, ``brainmask.nii.gz``)."""
  arrays = []
  for stem in ("image", "brainmask"):
    path = folder / f"{stem}.nii.gz"
    if not path.is_file():
      raise DataError(f"{path}: missing ({folder} is not a converted mouse_epi session)")
    img = nib.as_closest_canonical(nib.load(path))
    arrays.append(np.asarray(img.dataobj, np.float32))
  return Head(name, arrays[0], arrays[1] > 0, nifti.voxel_sizes(img.affine))


def read_scan_head(image_path: str | pathlib.Path, mask_path: str | pathlib.Path, name: str,
                   *, ap_range: tuple[int, int] | None = None) -> Head:
  """A whole-head scan of trusted voxel size and its brain mask (two NIfTI files
  on one grid), in RAS+, as a :class:`Head` with ``size_known``. ``ap_range``:
  (first, stop) coronal slices (RAS A-P voxel index) to keep, where the mask is
  trusted."""
  imgs = [nib.as_closest_canonical(nib.load(str(p))) for p in (image_path, mask_path)]
  if imgs[0].shape[:3] != imgs[1].shape[:3] or not np.allclose(imgs[0].affine, imgs[1].affine,
                                                                atol=1e-3):
    raise DataError(f"{mask_path}: not on the grid of {image_path} "
                    f"({imgs[1].shape[:3]} against {imgs[0].shape[:3]})")
  image = np.asarray(imgs[0].dataobj, np.float32)
  image = image if image.ndim == 3 else image[..., 0]
  mask = np.asarray(imgs[1].dataobj) > 0
  if ap_range is not None:
    first, stop = ap_range
    if not 0 <= first < stop <= image.shape[1]:
      raise DataError(f"{image_path}: coronal slices {first}..{stop - 1} are not within its "
                      f"{image.shape[1]}")
    image, mask = image[:, first:stop], mask[:, first:stop]
  if not mask.any():
    raise DataError(f"{mask_path}: the brain mask is empty")
  return Head(name, image, mask, nifti.voxel_sizes(imgs[0].affine), size_known=True)


def read_heads(data_dir: pathlib.Path, animals: Iterable[str], *, sessions: bool = True
               ) -> list[Head]:
  """Session 1 of each animal of a converted ``mouse_epi`` folder and, with
  ``sessions``, its ``session2`` where there is one (named ``mouse_epi:<a>_2``)."""
  data_dir = pathlib.Path(data_dir)
  out = []
  for a in animals:
    out.append(read_head(data_dir / a, f"mouse_epi:{a}"))
    if sessions and (data_dir / a / "session2").is_dir():
      out.append(read_head(data_dir / a / "session2", f"mouse_epi:{a}_2"))
  return out


def head_classes(head: Head) -> np.ndarray:
  """(X, Y, Z) int16: air (0) and the head classes 1..5 outside the brain by
  quantiles (:data:`HEAD_QUANTILES`) of the in-plane smoothed image; the brain 0."""
  smooth = ndimage.gaussian_filter(head.image, sigma=(1.0, 0.0, 1.0))
  outside = ~head.mask
  cuts = np.quantile(smooth[outside], HEAD_QUANTILES)
  classes = np.searchsorted(cuts, smooth, side="right").astype(np.int16)
  return np.where(outside, classes, 0).astype(np.int16)


def fit_masks(moving: np.ndarray, moving_mm: np.ndarray, fixed: np.ndarray,
              fixed_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(scale (3,), shift (3,)) with fixed position (mm) = scale * (moving position
  - moving centroid) + fixed centroid, for the masks' centroids and standard
  deviations along each axis to agree (an axis-aligned affine fit of two masks)."""
  stats = []
  for mask, vs in ((moving, moving_mm), (fixed, fixed_mm)):
    pts = np.argwhere(mask) * vs
    if len(pts) < 8:
      raise DataError("a brain mask of fewer than 8 voxels cannot be fitted")
    stats.append((pts.mean(axis=0), pts.std(axis=0)))
  (cm, sm), (cf, sf) = stats
  scale = sf / sm
  return scale, cf - scale * cm


def place_brain(head: Head, brain: Brain, *, ap_shift: float = 0.0, gap_is_brain: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids, target, scale (3,) per RAS axis) on the head's grid: the head's classes
  outside, the atlas brain's structures where the fitted brain lies, :data:`GAP`
  in the head's mask beyond it. ``ap_shift``: a shift (in head slices) of the
  positions sampled along A-P, so that several heads see other atlas slices.
  ``gap_is_brain``: :data:`GAP` gets target 4 (brain of unknown tissue, as the
  head's manual mask says) instead of 0 (background)."""
  scale, shift = fit_masks(head.mask, head.voxel_mm, brain.target > 0, brain.voxel_mm)
  grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in head.mask.shape],
                              indexing="ij"), axis=0)
  grid[1] += ap_shift
  mm = grid * head.voxel_mm[:, None, None, None]
  at = (scale[:, None, None, None] * mm + shift[:, None, None, None]) / \
      brain.voxel_mm[:, None, None, None]
  ids = ndimage.map_coordinates(brain.ids, at, order=0, mode="constant", cval=0)
  target = ndimage.map_coordinates(brain.target, at, order=0, mode="constant", cval=0)
  labels = head_classes(head)
  labels = np.where(head.mask, GAP, labels)
  labels = np.where(target > 0, ids, labels).astype(np.int16)
  if gap_is_brain:  # the head's manual mask counts as brain (of unknown tissue) too
    target = np.where(labels == GAP, tissue_table.IGNORE, target)
  return labels, target.astype(np.uint8), scale


def _plane_mm(voxel_mm: np.ndarray, plane: str) -> tuple[float, float]:
  """In-plane voxel sizes (H, W) of ``plane``'s slices of a RAS+ volume."""
  return tuple(float(voxel_mm[a]) for a in data.plane_axes(plane)[1:])


def head_slices(head: Head, labels: np.ndarray, target: np.ndarray, scale: np.ndarray, *,
                pixel_mm: float, shape: tuple[int, int], subject: str,
                plane: str = "coronal") -> SliceSet:
  """A composite head's slices of ``plane`` on the model grid (no real image);
  their zoom is the mean of ``scale`` (:func:`place_brain`) over the plane's axes,
  or 1 for a head whose size is known (``Head.size_known``)."""
  vs = _plane_mm(head.voxel_mm, plane)
  zoom = 1.0 if head.size_known else float(
      np.mean(np.asarray(scale, np.float64)[list(data.plane_axes(plane)[1:])]))
  ids = _inplane(data.to_slices(labels, plane), vs, pixel_mm, shape, 0)
  tg = _inplane(data.to_slices(target, plane), vs, pixel_mm, shape, 0)
  n = len(ids)
  return SliceSet(ids.astype(np.int16), tg.astype(np.uint8), np.zeros(ids.shape, np.float32),
                  np.zeros(n, bool), np.full(n, zoom, np.float32), np.full(n, subject))


def real_head_slices(head: Head, *, pixel_mm: float, shape: tuple[int, int],
                     plane: str = "coronal") -> SliceSet:
  """A real ``mouse_epi`` head's slices of ``plane``: its image, the brain as
  tissue unknown (code 4), labels from its intensity classes (so it can be
  synthesised too). Slices across a thick voxel axis's neighbours (axial,
  sagittal of ``mouse_epi``) are resampled linearly from the thick voxels."""
  vs = _plane_mm(head.voxel_mm, plane)
  labels = np.where(head.mask, BRAIN_UNKNOWN, head_classes(head)).astype(np.int16)
  target = np.where(head.mask, tissue_table.IGNORE, 0).astype(np.uint8)
  ids = _inplane(data.to_slices(labels, plane), vs, pixel_mm, shape, 0)
  tg = _inplane(data.to_slices(target, plane), vs, pixel_mm, shape, 0)
  image = _inplane(data.to_slices(data.normalise_intensity(head.image)[0], plane), vs,
                   pixel_mm, shape, 1)
  n = len(ids)
  return SliceSet(ids.astype(np.int16), tg.astype(np.uint8), image.astype(np.float32),
                  np.ones(n, bool), np.ones(n, np.float32), np.full(n, head.name))


def composite_heads(heads: Iterable[Head], brains: Sequence[Brain], *, copies: int,
                    pixel_mm: float, shape: tuple[int, int], seed: int,
                    planes: Sequence[str] = ("coronal",), gap_is_brain: bool = False
                    ) -> SliceSet:
  """``copies`` composites of every head, each with an atlas brain drawn from
  ``brains`` and a random A-P shift (seeded), cut into slices of each of
  ``planes``."""
  rng = np.random.default_rng(seed)
  out = []
  for head in heads:
    for _ in range(copies):
      brain = brains[int(rng.integers(len(brains)))]
      labels, target, scale = place_brain(head, brain, ap_shift=float(rng.uniform(-0.5, 0.5)),
                                          gap_is_brain=gap_is_brain)
      out += [head_slices(head, labels, target, scale, pixel_mm=pixel_mm, shape=shape,
                          subject=f"{head.name}+{brain.name}", plane=plane)
              for plane in planes]
  if not out:
    raise DataError("no heads to place atlas brains into")
  return concat(out)
