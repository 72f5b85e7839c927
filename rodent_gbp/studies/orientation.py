"""One scan in other axis orders and with lying headers: does the mask follow the brain?

Users hand over scans whose voxel axes come in any order and whose headers
sometimes name the wrong axes. :func:`variants` writes one scan in five
geometries; :func:`run` segments each through ``inference.segment_scan`` and
maps every mask back onto the original voxel grid (exactly, by the known
transform: never through the variant's header, which may lie), where it is
compared with the original's mask and with the truth where there is one.

Variants (``ap``: the header's anterior-posterior voxel axis; ``si``: its
superior-inferior one):

* ``stored``: as given;
* ``order_120``, ``order_201``: the array's axes permuted, the header permuted
  with them (a correct header, another axis order);
* ``labels_swapped``: the same array, the header's ``ap`` and ``si`` directions
  swapped (each axis keeps its voxel size): a header that lies;
* ``isotropic``: resampled linearly to cubic voxels of ``iso_mm`` (0.25 mm,
  the model's pixel; no thick axis left: the header alone names the slice axis);
* ``isotropic_swapped``: that, with the ``ap`` / ``si`` directions swapped (the
  image has to decide the slice axis).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable

import nibabel as nib
import numpy as np
from scipy import ndimage

from rodent_gbp import fileio
from rodent_gbp import inference
from rodent_gbp import metrics
from rodent_gbp import nifti


@dataclasses.dataclass
class Variant:
  """A variant's image, truth (or None), and the map of its masks to the original grid."""

  name: str
  image: nib.Nifti1Image
  truth: nib.Nifti1Image | None
  to_original: Callable[[np.ndarray], np.ndarray]
  compare_with: str = "stored"


def _permuted(image: np.ndarray, affine: np.ndarray, order) -> tuple[np.ndarray, np.ndarray]:
  perm = np.eye(4)
  perm[:3, :3] = np.eye(3)[:, list(order)]
  return np.transpose(image, order), affine @ perm


def _swap_directions(affine: np.ndarray, a: int, b: int) -> np.ndarray:
  """The header's directions of voxel axes ``a`` and ``b`` swapped, sizes kept."""
  vs = nifti.voxel_sizes(affine)
  dirs = affine[:3, :3] / vs
  out = affine.copy()
  out[:3, a], out[:3, b] = dirs[:, b] * vs[a], dirs[:, a] * vs[b]
  return out


def _isotropic(image: np.ndarray, affine: np.ndarray, order: int, size: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(array, affine, step, offset): old index = step * new index + offset."""
  vs = nifti.voxel_sizes(affine)
  step = size / vs
  shape = tuple(max(1, int(round(n / s))) for n, s in zip(image.shape, step))
  offset = 0.5 * step - 0.5
  out = ndimage.affine_transform(image.astype(np.float32 if order else image.dtype), step,
                                 offset=offset, output_shape=shape, order=order,
                                 mode="nearest")
  new = affine.copy()
  new[:3, :3] = affine[:3, :3] * step
  new[:3, 3] = affine[:3, :3] @ offset + affine[:3, 3]
  return out, new, step, offset


def variants(image: np.ndarray, affine: np.ndarray, truth: np.ndarray | None, *,
             iso_mm: float = 0.25) -> list[Variant]:
  """The five variants of a scan (module docstring) and the ``stored`` one."""
  def img(a, aff):
    return nib.Nifti1Image(np.asarray(a), aff)

  def timg(a, aff):
    return None if a is None else nib.Nifti1Image(np.asarray(a).astype(np.uint8), aff)

  ornt = nib.orientations.io_orientation(affine)[:, 0].astype(int)
  ap, si = int(np.flatnonzero(ornt == 1)[0]), int(np.flatnonzero(ornt == 2)[0])
  out = [Variant("stored", img(image, affine), timg(truth, affine), lambda m: m)]
  for order in ((1, 2, 0), (2, 0, 1)):
    a, aff = _permuted(image, affine, order)
    t = None if truth is None else _permuted(truth, affine, order)[0]
    inverse = tuple(int(i) for i in np.argsort(order))
    out.append(Variant("order_" + "".join(map(str, order)), img(a, aff), timg(t, aff),
                       lambda m, inv=inverse: np.transpose(m, inv)))
  swapped = _swap_directions(affine, ap, si)
  out.append(Variant("labels_swapped", img(image, swapped), timg(truth, swapped),
                     lambda m: m))
  size = float(iso_mm)
  iso, iso_aff, step, offset = _isotropic(image, affine, 1, size)
  t = None if truth is None else _isotropic(truth.astype(np.uint8), affine, 0, size)[0]

  def back(m, shape=image.shape):
    return ndimage.affine_transform(m.astype(np.uint8), 1.0 / step, offset=-offset / step,
                                    output_shape=shape, order=0, mode="nearest")

  out.append(Variant("isotropic", img(iso, iso_aff), timg(t, iso_aff), back))
  iso_swapped = _swap_directions(iso_aff, ap, si)
  out.append(Variant("isotropic_swapped", img(iso, iso_swapped), timg(t, iso_swapped), back,
                     compare_with="isotropic"))
  return out


def run(name: str, image: np.ndarray, affine: np.ndarray, truth: np.ndarray | None,
        out_dir: pathlib.Path, *, bundle, log: Callable[[str], None]) -> list[dict[str, Any]]:
  """Segments every variant of one scan; rows of Dice between variants and to truth."""
  out_dir = pathlib.Path(out_dir)
  masks, rows = {}, []
  for v in variants(image, affine, truth):
    folder = out_dir / name / v.name
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(v.image, folder / "input.nii.gz")
    truth_path = None
    if v.truth is not None:
      truth_path = folder / "truth.nii.gz"
      nib.save(v.truth, truth_path)
    res = inference.segment_scan(folder / "input.nii.gz", None, folder, bundle=bundle,
                                 truth=truth_path, name=f"{name}_{v.name}", overwrite=True,
                                 log=log)
    mask = np.asarray(nib.load(res["paths"]["brainmask"]).dataobj) > 0
    masks[v.name] = mask
    back = v.to_original(mask) > 0
    masks[v.name + ":original"] = back
    rep = res["report"]
    row = {"scan": name, "variant": v.name, "shape": list(v.image.shape),
           "voxel_mm": [round(float(x), 4) for x in nifti.voxel_sizes(v.image.affine)],
           "header": "".join(nib.aff2axcodes(v.image.affine)),
           "slice_axis": rep["slice_axis"]["axis"], "plane_reason": rep["slice_axis"]["reason"],
           "image_reading": rep["slice_axis"].get("image", {}).get("reason"),
           "brain_mm3": rep["brain_volume"]["mm3"], "warnings": rep["warnings"],
           "dice_truth": None if rep["truth"] is None else rep["truth"]["dice"],
           "compare_with": v.compare_with,
           "dice_vs_stored_on_original_grid": metrics.mask_dice(back, masks["stored"])}
    if v.compare_with != "stored":
      row["dice_vs_" + v.compare_with] = metrics.mask_dice(mask, masks[v.compare_with])
    rows.append(row)
    log(f"{name} {v.name}: axis {row['slice_axis']}, Dice vs stored "
        f"{row['dice_vs_stored_on_original_grid']:.4f}"
        + ("" if row["dice_truth"] is None else f", vs truth {row['dice_truth']:.4f}"))
  fileio.write_json(out_dir / name / "rows.json", rows)
  return rows


def markdown(rows: list[dict], command: str) -> str:
  lines = ["# One scan in other axis orders and with lying headers", "",
           "Each variant through `rodent-gbp-segment` (`inference.segment_scan`, the model "
           "named below), its mask mapped back to the stored grid by the known transform.", "",
           "| scan | variant | header | voxel mm | slice axis | brain mm^3 | Dice vs truth | "
           "Dice vs stored (stored grid) | Dice vs isotropic |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    truth = "" if r["dice_truth"] is None else f"{r['dice_truth']:.4f}"
    iso = f"{r['dice_vs_isotropic']:.4f}" if "dice_vs_isotropic" in r else ""
    lines.append(f"| {r['scan']} | {r['variant']} | {r['header']} | "
                 f"{'x'.join(f'{v:g}' for v in r['voxel_mm'])} | {r['slice_axis']} | "
                 f"{r['brain_mm3']:.0f} | {truth} | "
                 f"{r['dice_vs_stored_on_original_grid']:.4f} | {iso} |")
  lines += ["", f"Command: `{command}`", ""]
  return "\n".join(lines)
