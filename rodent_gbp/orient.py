"""The slice axis read from the image: a brain mask's anatomical axes.

``rodent-gbp-segment`` cuts a scan across its anterior-posterior axis, which the
header names (``scan.choose_plane``) unless one voxel axis is much thicker.
Where neither settles it, the brain mask of a first pass is read here and the
scan is cut again across the axis it names (``inference.axis_from_image``).
"""

from __future__ import annotations

import numpy as np

from rodent_gbp import nifti
from rodent_gbp import scan

# Slice axis from the image, where the header and the voxel sizes leave it open
# (no thick axis): the brain mask's left-right axis is the one it is most
# mirror-symmetric across (flipped about its centroid, Dice with itself). Of
# the two others, anterior-posterior is the one along which the field of view
# cuts the brain (a slab of its A-P extent: the mask's section on a face of the
# volume is CUT_FRACTION of its largest section or more) when exactly one of
# them is cut; when neither is, the one along which it is most spread (sd of
# its voxels, mm; dorsal-ventral is the least). On the
# masks the rule was chosen on (mouse_epi manual masks, mouse_t2_atlas masks,
# DSURQE's labels, the CLI's rat-t2w mask) L-R leads the next symmetry by
# 0.047-0.12, A-P is spread 1.6-2.7x D-V, the face sections of a cut A-P axis
# are 0.25-0.89 of the largest and of the other axes at most 0.18 (tight crops);
# a reading short of these margins, or with two axes cut, is not used.
CUT_FRACTION = 0.2
SYMMETRY_MARGIN = 0.02
SPREAD_RATIO = 1.2


def brain_axes(mask: np.ndarray, voxel_mm) -> dict:
  """The anatomical axes of a brain mask read from its shape (see above).

  Args:
    mask: (X, Y, Z) bool, in any voxel axis order.
    voxel_mm: (3,) voxel sizes.

  Returns:
    ``lr``, ``dv``, ``ap`` (voxel axes), ``symmetry`` and ``spread_mm`` per
    axis, ``confident`` (both margins met) and ``reason``.
  """
  mask = np.asarray(mask, bool)
  pts = np.argwhere(mask)
  if len(pts) < 8:
    return {"lr": None, "dv": None, "ap": None, "symmetry": None, "spread_mm": None,
            "confident": False, "reason": "the brain mask is (nearly) empty"}
  centre = pts.mean(axis=0)
  spread = (pts * np.asarray(voxel_mm, np.float64)).std(axis=0)
  symmetry = []
  for a in range(3):
    flipped = pts.copy()
    flipped[:, a] = np.round(2 * centre[a] - pts[:, a]).astype(int)
    inside = (flipped[:, a] >= 0) & (flipped[:, a] < mask.shape[a])
    symmetry.append(float(mask[tuple(flipped[inside].T)].sum() / len(pts)))
  cut = []
  for a in range(3):
    areas = mask.sum(axis=tuple(b for b in range(3) if b != a))
    if max(areas[0], areas[-1]) >= CUT_FRACTION * areas.max():
      cut.append(a)
  # The field of view cuts a rodent brain along A-P (a slab); a thin slab is
  # nearly symmetric across its cut axis too, so that axis is not L-R.
  free = [a for a in range(3) if a not in cut] if len(cut) == 1 else list(range(3))
  ranked = sorted(free, key=lambda a: -symmetry[a])
  lr = ranked[0]
  lead = symmetry[lr] - symmetry[ranked[1]]
  others = [a for a in range(3) if a != lr]
  reason = (f"the brain mask is most mirror-symmetric across voxel axis {lr} (left-right; "
            f"flip Dice {symmetry[lr]:.3f}, next {symmetry[ranked[1]]:.3f})")
  if len(cut) == 1:
    ap = cut[0]
    dv = [a for a in others if a != ap][0]
    ok = True
    reason += (f" and the field of view cuts it along voxel axis {ap} alone (a slab of its "
               f"anterior-posterior extent): anterior-posterior is voxel axis {ap}")
  else:
    dv = min(others, key=lambda a: spread[a])
    ap = [a for a in others if a != dv][0]
    ratio = float(spread[ap] / max(spread[dv], 1e-9))
    ok = not cut and ratio >= SPREAD_RATIO
    reason += (f" and least spread along voxel axis {dv} (dorsal-ventral; sd "
               f"{spread[dv]:.2f} mm against {spread[ap]:.2f}): anterior-posterior is voxel "
               f"axis {ap}")
    if not ok:
      reason += (f"; not used: the field of view cuts the brain along voxel axes {cut}" if cut
                 else f"; not used: spread ratio {ratio:.2f} < {SPREAD_RATIO:g}")
  if lead < SYMMETRY_MARGIN:
    reason += f"; not used: symmetry lead {lead:.3f} < {SYMMETRY_MARGIN:g}"
  confident = bool(ok and lead >= SYMMETRY_MARGIN)
  return {"lr": lr, "dv": dv, "ap": ap, "symmetry": [round(x, 4) for x in symmetry],
          "spread_mm": [round(float(x), 3) for x in spread], "confident": confident,
          "reason": reason}


def axis_is_open(affine: np.ndarray, plane: str | int = "auto") -> bool:
  """Whether the slice axis rests on the header's orientation alone: ``--plane
  auto`` and no voxel axis :data:`rodent_gbp.scan.THICK_RATIO` times thicker than the others."""
  vs = nifti.voxel_sizes(affine)
  return str(plane) == "auto" and not any(
      vs[k] >= scan.THICK_RATIO * max(vs[j] for j in range(3) if j != k) for k in range(3))
