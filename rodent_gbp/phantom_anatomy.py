"""The phantom's anatomy and its draws: what ``rodent_gbp.phantom`` renders.

Constants of the model (intensities, ranges, brain geometry at size 96), the
kinds of appearance (``Appearance``, ``KINDS``), the per-animal random streams
and truth, and :func:`anatomy`, the noise- and bias-free tissue and labels of
one animal on a grid (module docstring of ``rodent_gbp.phantom``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rodent_gbp import classes
from rodent_gbp.errors import UsageError

VERSION = 1
REF_SIZE = 96
VOXEL_MM = (0.375, 0.5, 0.375)
LABELS = dict(enumerate(classes.SHORT))

# Intensities, arbitrary units (docs/design.md#phantom-and-real-data).
CSF, GM, WM = 1.0, 0.62, 0.45
FAT, BONE, AIR = 0.9, 0.08, 0.0
MUSCLE_RANGE = (0.45, 0.65)
OBJECT_RANGE = (0.5, 1.0)
NOISE_SIGMA = 0.04
BIAS_AMPLITUDE = 0.15
SIZE_FACTOR_RANGE = (0.97, 1.03)
MAX_DISPLACEMENT = 12      # voxels at size 96, each in-plane axis
MAX_SLICE_OFFSET = 1       # slices
MAX_DEFORMATION = 1.0      # voxels, brain outline



@dataclasses.dataclass(frozen=True)
class Appearance:
  """What the scanner makes of the anatomy (see the module docstring).

  Attributes:
    name: the kind (``KINDS``).
    csf, gm, wm: brain tissue intensities.
    soft_tissue: factor on the muscle and fat intensities of the head.
    noise_sigma: Rician noise sigma.
    bias_amplitude: amplitude of the smooth random multiplicative field.
    coil_decay_mm: > 0 multiplies a surface-coil falloff exp(-d / decay), d
      the distance below the reference brain centre (S-I, fixed in the field
      of view), 1 at that centre; constant above ``coil_height_mm`` (the coil,
      resting on the head: nothing above it gains more).
    coil_height_mm: where the coil sits above the reference brain centre.
    brain_texture: amplitude of a smooth multiplicative texture in the brain.
    supersample: in-plane sub-voxels per axis the anatomy is rendered on
      (> 1: partial volume).
    psf_sigma: in-plane Gaussian blur of the object (voxels), the scanner's
      point-spread function.
  """

  name: str
  csf: float = CSF
  gm: float = GM
  wm: float = WM
  soft_tissue: float = 1.0
  noise_sigma: float = NOISE_SIGMA
  bias_amplitude: float = BIAS_AMPLITUDE
  coil_decay_mm: float = 0.0
  coil_height_mm: float = 6.0
  brain_texture: float = 0.0
  supersample: int = 1
  psf_sigma: float = 0.0


#: The phantom's kinds by name; ``standard`` is the main job's.
KINDS = {
    "standard": Appearance("standard"),
    "measured": Appearance("measured", wm=0.85 * GM, soft_tissue=0.54, noise_sigma=0.02,
                           coil_decay_mm=7.2, brain_texture=0.04, supersample=2,
                           psf_sigma=0.7),
}


def appearance(kind: str) -> Appearance:
  """The ``Appearance`` of a kind; ``UsageError`` naming the kinds otherwise."""
  if kind not in KINDS:
    raise UsageError(f"unknown phantom kind {kind!r}; the kinds are {', '.join(KINDS)}")
  return KINDS[kind]


# Brain geometry at size 96, size factor 1 (voxels).
BRAIN_HALF_WIDTH = 20.0
BRAIN_HALF_HEIGHT = 13.5
BRAIN_CENTER_Z = 56.0     # S-I position of the brain centre before displacement
BRAIN_SLICES = 40.0       # A-P length of the modelled brain, in 0.5 mm slices


def generators(seed: int, index: int) -> dict[str, np.random.Generator]:
  # Independent streams per component, so switching one part off (e.g.
  # ``displaced=False``) leaves every other draw unchanged.
  names = ("animal", "acquisition", "surroundings", "objects", "bias", "noise", "texture")
  children = np.random.SeedSequence([seed, index]).spawn(len(names))
  return {n: np.random.default_rng(c) for n, c in zip(names, children)}


def draw_acquisition(seed: int, index: int, size: int = REF_SIZE) -> dict[str, Any]:
  """The per-animal random truth: size factor, displacement, slice offset."""
  g = generators(seed, index)
  size_factor = float(g["animal"].uniform(*SIZE_FACTOR_RANGE))
  d = g["acquisition"].integers(-MAX_DISPLACEMENT, MAX_DISPLACEMENT + 1, size=2)
  offset = int(g["acquisition"].integers(-MAX_SLICE_OFFSET, MAX_SLICE_OFFSET + 1))
  k = size / REF_SIZE
  return dict(size_factor=size_factor,
              displacement_hw=[int(round(float(v) * k)) for v in d],
              slice_offset=offset)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int],
                  terms: int = 6, max_freq: float = 1.5) -> np.ndarray:
  """A smooth random field on the grid, zero mean, scaled to max |f| = 1."""
  axes = [np.linspace(-1.0, 1.0, n).reshape([-1 if i == j else 1 for j in range(3)])
          for i, n in enumerate(shape)]
  f = np.zeros(shape)
  for _ in range(terms):
    w = rng.uniform(-max_freq, max_freq, size=3) * np.pi / 2
    f = f + rng.normal() * np.cos(w[0] * axes[0] + w[1] * axes[1] + w[2] * axes[2]
                                  + rng.uniform(0, 2 * np.pi))
  f = f - f.mean()                          # so a bias field spans both signs
  return f / max(np.abs(f).max(), 1e-12)


def _band(t: np.ndarray, lo: float, hi: float) -> np.ndarray:
  return (t >= lo) & (t <= hi)


def _ellipse(dx, dz, cx, cz, rx, rz, angle=0.0):
  """Voxel centres inside a (rotated) ellipse; all lengths in voxels."""
  px, pz = dx - cx, dz - cz
  c, s = np.cos(angle), np.sin(angle)
  qx, qz = c * px + s * pz, -s * px + c * pz
  return (qx / rx) ** 2 + (qz / rz) ** 2 <= 1.0


def anatomy(seed: int, index: int, *, size: int = REF_SIZE, n_slices: int = 40,
            displaced: bool = True, deformed: bool = True,
            look: Appearance = KINDS["standard"]) -> dict[str, Any]:
  """The noise- and bias-free tissue and labels of an animal on a ``size`` grid.

  What ``make_animal`` renders (on ``size * supersample`` for a supersampled
  kind); keys: tissue, labels (uint8), objects, muscle, brain_center_hw,
  brain_center_hw_undisplaced, slice_offset, deformation_max (voxels).
  """
  g = generators(seed, index)
  acq = draw_acquisition(seed, index, size)
  s = acq["size_factor"]
  dh, dw = acq["displacement_hw"] if displaced else (0, 0)
  offset = acq["slice_offset"] if displaced else 0
  k = size / REF_SIZE
  ks = k * s
  shape = (size, n_slices, size)

  x = np.arange(size, dtype=np.float64)[:, None, None]
  y = np.arange(n_slices, dtype=np.float64)[None, :, None]
  z = np.arange(size, dtype=np.float64)[None, None, :]

  # Anatomical A-P coordinate t in [0, 1] over the modelled brain; the
  # through-plane offset shifts which anatomy each slice cuts.
  t = ((y + offset + 0.5 - n_slices / 2.0) / s) / BRAIN_SLICES + 0.5
  width = 0.70 + 0.30 * np.exp(-((t - 0.58) / 0.30) ** 2)
  height = 0.74 + 0.26 * np.exp(-((t - 0.50) / 0.34) ** 2)
  a = BRAIN_HALF_WIDTH * ks * width
  b = BRAIN_HALF_HEIGHT * ks * height
  cx = size // 2 + dh                       # integer: the midline is one voxel
  cz0 = round(BRAIN_CENTER_Z * k) + dw
  bref = BRAIN_HALF_HEIGHT * ks
  cz = cz0 + 0.6 * (bref - b)               # dorsal surface stays nearly level
  dx = np.broadcast_to(x - cx, shape)
  dz = np.broadcast_to(z - cz, shape)
  r = np.hypot(dx, dz)
  theta = np.arctan2(dz, dx)
  sin_t = np.where(r > 0, dz / np.maximum(r, 1e-9), 0.0)

  # Brain outline: superellipse, flatter ventrally; depth = voxels inside the
  # (deformed) outline measured along the ray from the centre.
  u, v = dx / a, dz / b
  p = np.where(v >= 0, 2.3, 2.9)
  norm = (np.abs(u) ** p + np.abs(v) ** p) ** (1.0 / p)
  r_edge = np.where(norm > 1e-9, r / np.maximum(norm, 1e-9), b)
  ra = g["animal"]
  modes = np.arange(2, 7)
  amp = ra.uniform(0.3, 1.0, size=modes.size) / modes
  deform_max = float(ra.uniform(0.6, 1.0)) * MAX_DEFORMATION
  amp = amp / amp.sum() * deform_max        # sum of amplitudes bounds |d|
  phase = ra.uniform(0, 2 * np.pi, size=modes.size)
  drift = ra.uniform(-np.pi, np.pi, size=modes.size)
  deform = np.zeros(shape)
  if deformed:
    for m, am, ph, dr in zip(modes, amp, phase, drift):
      deform = deform + am * np.cos(m * theta + ph + dr * (t - 0.5) * 2)
  depth = r_edge + deform * k - r
  brain = depth >= 0

  labels = np.zeros(shape, np.uint8)
  labels[brain] = 2                          # GM by default (cortex, deep GM)
  cortex = ks * np.where(sin_t >= 0, 4.0 + 0.8 * sin_t, 4.0 + 1.0 * sin_t)
  wm_width = ks * (2.0 + 0.6 * np.clip((v + 0.45) / 0.6, 0.0, 1.0))
  below_cortex = brain & (depth >= cortex)
  # Corpus callosum (across the midline) and external capsule (lateral).
  cc_band = below_cortex & (depth < cortex + wm_width) & (v > -0.45)
  central = np.abs(u) < 0.3
  wm = cc_band & np.where(central, _band(t, 0.15, 0.85), _band(t, 0.03, 0.97))
  # Internal capsule: oblique ellipses in the middle slices.
  for sgn in (-1.0, 1.0):
    wm |= brain & _band(t, 0.28, 0.75) & _ellipse(
        dx, dz, sgn * 0.40 * a, -0.05 * b, 2.2 * ks, 5.0 * ks, sgn * 0.6)
    # Anterior commissure.
    wm |= brain & _band(t, 0.12, 0.42) & _ellipse(
        dx, dz, sgn * 0.24 * a, -0.42 * b, 1.8 * ks, 1.6 * ks)
  wm |= brain & _band(t, 0.30, 0.40) & (np.abs(dz + 0.42 * b) < 1.0 * ks) & (
      np.abs(u) < 0.24)
  # Forceps minor in the frontal slices.
  wm |= brain & (t < 0.16) & _ellipse(dx, dz, 0.0, 0.15 * b, 0.22 * a, 0.28 * b)
  # Optic tract along the ventro-lateral surface.
  wm |= brain & _band(t, 0.50, 0.82) & (v < -0.35) & (np.abs(u) > 0.30) & (
      np.abs(u) < 0.62) & (depth >= 1.0 * ks) & (depth < 3.2 * ks)
  # Hippocampal alveus: an arc under the callosum in the caudal slices.
  deep = depth - cortex - wm_width
  wm |= brain & (t > 0.55) & (deep >= 2.5 * ks) & (deep < 4.3 * ks) & (
      np.abs(u) > 0.08) & (np.abs(u) < 0.55) & (v > -0.1)
  labels[wm] = 1

  csf = np.zeros(shape, bool)
  # Lateral ventricles: thin crescents under the callosum beside the septum.
  vent_w = ks * (1.2 + 0.6 * np.exp(-((t - 0.4) / 0.12) ** 2))
  csf |= brain & _band(t, 0.18, 0.70) & (deep >= 0) & (deep < vent_w) & (
      np.abs(u) > 0.05) & (np.abs(u) < 0.30)
  # Third ventricle and aqueduct on the midline.
  csf |= brain & _band(t, 0.42, 0.85) & (np.abs(dx) < 0.5) & (v > -0.75) & (v < -0.05)
  csf |= brain & (t > 0.86) & _ellipse(dx, dz, 0.0, -0.2 * b, 1.3 * ks, 1.6 * ks)
  # Longitudinal fissure down to the callosum (deeper where there is none).
  fissure_depth = np.where(_band(t, 0.15, 0.85), cortex, cortex + 3.0 * ks)
  csf |= brain & (np.abs(dx) < 0.5) & (v > 0) & (depth < fissure_depth)
  # Patchy surface CSF (one voxel) and the basal cisterns (up to two).
  gate = np.zeros(shape)
  for m in range(1, 5):
    gate = gate + ra.normal() / m * np.cos(m * theta + ra.uniform(0, 2 * np.pi)
                                           + ra.uniform(-2, 2) * t)
  csf |= brain & (depth < 1.0 * k) & (gate > 0.1)
  csf |= brain & _band(t, 0.40, 0.90) & (depth < 1.8 * ks) & (np.abs(u) < 0.35) & (v < 0)
  labels[csf] = 3

  # --- Surroundings (move with the head) -------------------------------------
  rs = g["surroundings"]
  tissue = np.full(shape, AIR)
  out = -depth                               # voxels outside the brain outline
  skull_t = ks * (rs.uniform(1.3, 1.7) + 1.6 * np.clip(-sin_t, 0.0, 1.0))
  skull = ~brain & (out <= skull_t)
  scalp = ~brain & ~skull & (out <= skull_t + 3.5 * ks) & (sin_t > 0.3)
  # Head outline in reference units around the brain centre.
  hx = dx / ks
  hz = (z - cz0) / ks + np.zeros(shape)
  head_w = 37.0 * (0.93 + 0.07 * width)
  # Head: a wide cranial part (temporal muscles) over a narrower jaw and throat.
  def head_shape(shrink):
    upper = (np.abs(hx / (head_w - shrink)) ** 2.4
             + np.abs((hz + 8.0) / (26.5 - shrink)) ** 2.4) <= 1.0
    lower = (np.abs(hx / (27.0 - shrink)) ** 2.2
             + np.abs((hz + 30.0) / (18.0 - shrink)) ** 2.2) <= 1.0
    return upper | lower
  head = head_shape(0.0) | brain | skull | scalp
  soft = look.soft_tissue
  muscle_range = (MUSCLE_RANGE[0] * soft, MUSCLE_RANGE[1] * soft)
  fat = FAT * soft
  muscle = rs.uniform(*MUSCLE_RANGE, size=5) * soft  # temporal, scalp, masseter, tongue, neck
  texture = 0.04 * smooth_field(rs, shape, terms=8, max_freq=4.0)
  tissue[head] = muscle[0]
  tissue[scalp] = muscle[1]
  fat_gate = smooth_field(rs, shape, terms=5, max_freq=3.0) > -0.2
  # Subcutaneous fat: a one-voxel layer under the skin, patchy.
  inner = head_shape(1.2 / ks)
  tissue[head & ~inner & fat_gate & ~scalp] = fat
  tissue[scalp & (out > skull_t + 2.5 * ks) & fat_gate] = fat
  for sgn in (-1.0, 1.0):
    tissue[head & _ellipse(hx, hz, sgn * 20.0, -30.0, 8.0, 13.0, sgn * 0.5)] = muscle[2]  # masseter
  tissue[head & _ellipse(hx, hz, 0.0, -35.0, 10.0, 8.0)] = muscle[3]   # tongue
  tissue[head & _ellipse(hx, hz, 0.0, -47.0, 14.0, 5.0)] = muscle[4]   # throat, glands
  # Fascia: thin dark curves between muscles (bone-dark in EPI).
  fascia_f = smooth_field(rs, shape, terms=6, max_freq=3.0)
  # A level set of a smooth field, about one voxel wide (|f - c| / |grad f|).
  grad = np.hypot(np.gradient(fascia_f, axis=0), np.gradient(fascia_f, axis=2))
  level = np.abs(fascia_f - rs.uniform(-0.3, 0.3)) < 0.6 * k * grad
  fascia = inner & ~scalp & level & (out > skull_t + 2.0 * ks)
  tissue[fascia] = BONE
  for sgn in (-1.0, 1.0):
    tissue[head & _ellipse(hx, hz, sgn * 25.0, -16.0, 5.0, 3.0, sgn * 0.3)] = fat
    # Mandible: dark cortical bone with bright marrow.
    jaw = _ellipse(hx, hz, sgn * 13.5, -31.0 + 4.0 * t, 3.2, 6.0, sgn * 0.25)
    tissue[head & jaw] = BONE
    tissue[head & _ellipse(hx, hz, sgn * 13.5, -31.0 + 4.0 * t, 1.3, 3.5,
                           sgn * 0.25)] = fat
    # Ear canals in the caudal slices.
    tissue[head & (t > 0.8) & _ellipse(hx, hz, sgn * 29.0, -9.0, 2.5, 2.0)] = AIR
    # Nasal passages in the frontal slices, a septum between them.
    tissue[head & (t < 0.3) & _ellipse(hx, hz, sgn * 2.6, -21.0, 1.8, 4.0)] = AIR
  # Pharynx and trachea (air).
  tissue[head & (t >= 0.3) & _ellipse(hx, hz, 0.0, -22.0 - 5.0 * t, 3.5 - 1.5 * t, 2.0)] = AIR
  tissue[head & (t > 0.5) & _ellipse(hx, hz, 0.0, -43.0, 2.2, 2.0)] = AIR
  is_muscle = head & (tissue >= muscle_range[0]) & (tissue <= muscle_range[1])
  tissue = np.where(is_muscle, np.clip(tissue * (1.0 + texture), *muscle_range), tissue)
  tissue[skull] = BONE
  tissue[brain] = np.choose(labels[brain], [AIR, look.wm, look.gm, look.csf])

  # --- Foreign objects (fixed in the field of view, outside the head) --------
  objects = _place_objects(g["objects"], head, tissue, k)
  return dict(tissue=tissue, labels=labels, objects=objects,
              muscle=[float(m) for m in muscle],
              brain_center_hw=[float(cx), float(cz0)],
              brain_center_hw_undisplaced=[float(size // 2), float(round(BRAIN_CENTER_Z * k))],
              slice_offset=int(offset),
              deformation_max=deform_max * k if deformed else 0.0)


def _place_objects(rng: np.random.Generator, head: np.ndarray, tissue: np.ndarray,
                   k: float) -> list[dict[str, Any]]:
  """Paints coil edges, tubes and fiducial markers into ``tissue`` in place.

  Objects never touch the head (one voxel of air between), have sharp edges
  and intensities in OBJECT_RANGE; positions are in the field of view, so they
  do not move with the animal.
  """
  size, n_slices, _ = head.shape
  near = head.copy()                        # head dilated by one voxel in-plane
  near[1:] |= head[:-1]
  near[:-1] |= head[1:]
  near[:, :, 1:] |= head[:, :, :-1]
  near[:, :, :-1] |= head[:, :, 1:]
  x = np.arange(size)[:, None, None]
  z = np.arange(size)[None, None, :]
  j = np.arange(n_slices)[None, :, None]
  placed = []

  def paint(kind, mask, value, **info):
    if (mask & near).any() or not mask.any():
      return False
    tissue[mask] = value
    near[mask] = True                        # later objects do not overlap it
    placed.append(dict(kind=kind, intensity=float(value), **info))
    return True

  # Surface coil above the head: a bar with the conductors at its ends.
  top = np.nonzero(head.any(axis=(0, 1)))[0]
  z_top = int(top.max()) if top.size else size // 2
  for _ in range(20):
    gap = int(rng.integers(2, 5))
    thick = max(1, int(round(rng.uniform(1.5, 3.0) * k)))
    half = rng.uniform(14, 26) * k
    xc = size / 2 + rng.uniform(-10, 10) * k
    z0 = z_top + gap
    if z0 + thick >= size:
      break
    value = rng.uniform(*OBJECT_RANGE)
    bar = (np.abs(x - xc) <= half) & (z >= z0) & (z < z0 + thick) & (j >= 0)
    rc = 2.0 * k
    ends = (((x - xc + half) ** 2 + (z - z0 - thick / 2) ** 2 <= rc ** 2)
            | ((x - xc - half) ** 2 + (z - z0 - thick / 2) ** 2 <= rc ** 2)) & (j >= 0)
    if paint("coil_edge", bar | ends, value, center_hw=[float(xc), float(z0)],
             half_width=float(half), thickness=thick):
      break

  def disc_mask(cx, cz, radius, j0, j1, drift=(0.0, 0.0)):
    frac = (j - j0) / max(j1 - j0, 1)
    px, pz = cx + drift[0] * frac, cz + drift[1] * frac
    return ((x - px) ** 2 + (z - pz) ** 2 <= radius ** 2) & (j >= j0) & (j < j1)

  n_tubes = int(rng.integers(1, 3))
  n_markers = int(rng.integers(2, 5))
  for kind, count in (("tube", n_tubes), ("fiducial_marker", n_markers)):
    for _ in range(count):
      for _ in range(60):
        if kind == "tube":
          radius = rng.uniform(1.5, 3.5) * k
          j0, j1 = 0, n_slices
          drift = tuple(rng.uniform(-3, 3, size=2) * k)
        else:
          radius = rng.uniform(1.2, 2.5) * k
          length = int(rng.integers(6, 17))
          j0 = int(rng.integers(0, n_slices - length + 1))
          j1 = j0 + length
          drift = (0.0, 0.0)
        cx, cz = rng.uniform(radius + 1, size - radius - 4 * k - 1, size=2)
        value = rng.uniform(*OBJECT_RANGE)
        mask = disc_mask(cx, cz, radius, j0, j1, drift)
        if kind == "tube" and rng.uniform() < 0.5:
          # A tube seen in section: bright wall, darker (still 0.5-1.0) lumen.
          lumen = disc_mask(cx, cz, radius * 0.5, j0, j1, drift)
          if paint(kind, mask, value, center_hw=[float(cx), float(cz)],
                   radius=float(radius), slices=[j0, j1], drift_hw=list(drift)):
            tissue[lumen] = rng.uniform(*OBJECT_RANGE)
            break
        elif paint(kind, mask, value, center_hw=[float(cx), float(cz)],
                   radius=float(radius), slices=[j0, j1], drift_hw=list(drift)):
          break
  return placed
