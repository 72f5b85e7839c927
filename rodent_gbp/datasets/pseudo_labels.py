"""Tissue pseudo-labels inside a manual brain mask (for sets without tissue labels).

The paper's tissue labels came from SPM segment; for a set that has only brain
masks (``mouse_epi``) the same role is played here by two well-kept
implementations, in SPM's order (bias correction, then a mixture model):

1. **Bias-field correction**: SimpleITK's ``N4BiasFieldCorrectionImageFilter``
   fitted inside the mask with one thread (N4's multi-threaded sums are not
   bit-reproducible), on the image shrunk by 2 along axes of >= 32 voxels (the
   usual N4 speed-up; the field is smooth), two fitting levels from an 8-point
   B-spline lattice (16 at the second level). Measured on session 01_1 (EPI with a
   surface coil): with two levels from N4's default 4 points the field ranged
   only 0.67..1.52 inside the brain and the classes followed the distance from
   the coil (a bright "CSF" rim over the cortex, a dark "WM" core); 8 points
   and N4's default four levels from 4 points both remove that profile (field
   0.39..2.5) and give the same classes; the former is twice as fast. The log
   bias field is evaluated on the full grid and divided out.
2. **3-class mixture**: scikit-learn's ``GaussianMixture`` on the corrected
   intensities inside the mask (divided by their median), fixed seed, several
   initialisations, one BLAS/OpenMP thread.
3. **Class order**: components sorted by mean intensity, darkest first, become
   1 WM, 2 GM, 3 CSF. That is the order of a T2- or T2*-weighted contrast such
   as EPI (free water brightest, myelinated white matter darkest); on
   ``mouse_t2_atlas`` (T2, structure labels) the class means follow it
   (``tests/test_datasets.py`` checks it there). A T1-weighted set would need
   the reverse.

The results are pseudo-labels: anything reporting tissue DSC against them must
say so; the brain mask stays the real truth. Outside the mask the labels are 0.

Measured on the 22 converted ``mouse_epi`` animals (session 1), the rule does not
give anatomical tissue: the classes take 11 / 25 / 64 % of the brain (WM / GM /
CSF; anatomically CSF is a few per cent). Looked at on slices, the brightest
component is the bulk of the tissue (gray matter), the middle one traces the
external capsule and corpus callosum (white matter), and the darkest one holds
edge, vessel and signal-dropout voxels; the ventricles are not a component of
their own at this resolution and contrast. Treat tissue scores on this set as
agreement with this classifier, not with anatomy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rodent_gbp import classes
from rodent_gbp.errors import UsageError

METHOD_VERSION = 3
_N4_ITERATIONS = (50, 50)     # two fitting levels
_N4_CONTROL_POINTS = 8
_SHRINK_MIN_AXIS = 32
_GMM_INITS = 5



def _data_extra(name: str):
  """The optional conversion dependency ``name`` (the ``[data]`` extra), or a clear error."""
  import importlib
  try:
    return importlib.import_module(name)
  except ImportError:
    raise UsageError(f"{name} is needed to convert public sets and make pseudo-labels; "
                     "install the data extra: pip install -e \".[data]\"") from None


def n4_log_bias_field(image: np.ndarray, mask: np.ndarray, spacing) -> np.ndarray:
  """The log of the multiplicative bias field N4 fits inside ``mask`` (step 1).

  ``image`` (X, Y, Z) and ``mask`` (X, Y, Z) bool on one grid, ``spacing`` the
  voxel edge lengths (mm, array order). Intensities <= 0 are raised to 1e-3 of
  the maximum for N4's logarithm. Returns the (X, Y, Z) float64 log field on
  the full grid (its offset is arbitrary: use ratios).
  """
  sitk = _data_extra("SimpleITK")
  image = np.asarray(image, np.float64)
  mask = np.asarray(mask, bool)
  if image.shape != mask.shape or image.ndim != 3:
    raise ValueError(f"image {image.shape} and mask {mask.shape} must be one 3D grid")
  # SimpleITK arrays are (Z, Y, X); spacing is (x, y, z).
  img = sitk.GetImageFromArray(np.ascontiguousarray(
      positive_floor(image).transpose(2, 1, 0), np.float32))
  # Rounded: N4's B-spline lattice is laid over the physical extent, and a spacing
  # off by 1e-16 (an affine's column norms) moved 8 % of one session's labels.
  img.SetSpacing([round(float(s), 6) for s in spacing])
  msk = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0), np.uint8))
  msk.CopyInformation(img)
  shrink = [2 if n >= _SHRINK_MIN_AXIS else 1 for n in img.GetSize()]
  n4 = sitk.N4BiasFieldCorrectionImageFilter()
  n4.SetNumberOfThreads(1)
  n4.SetMaximumNumberOfIterations(list(_N4_ITERATIONS))
  n4.SetNumberOfControlPoints([_N4_CONTROL_POINTS] * 3)
  n4.Execute(sitk.Shrink(img, shrink), sitk.Shrink(msk, shrink))
  log_bias = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img)).transpose(2, 1, 0)
  return log_bias.astype(np.float64)


def positive_floor(image: np.ndarray) -> np.ndarray:
  """``image`` with values <= 0 raised to 1e-3 of its maximum (1 if none is positive)."""
  positive = image[image > 0]
  return np.maximum(image, 1e-3 * float(positive.max()) if positive.size else 1.0)


def method_description() -> dict[str, Any]:
  """How the pseudo-labels are made, with the library versions (for meta.json)."""
  sitk, sklearn = _data_extra("SimpleITK"), _data_extra("sklearn")
  return {
      "kind": "pseudo-labels (automated, not manual tissue labels)",
      "method_version": METHOD_VERSION,
      "bias_correction": (f"SimpleITK {sitk.Version.VersionString()} "
                          "N4BiasFieldCorrectionImageFilter inside the manual brain mask, "
                          f"iterations {list(_N4_ITERATIONS)} (two levels), "
                          f"{_N4_CONTROL_POINTS} control points per axis, shrink 2 "
                          f"along axes of >= {_SHRINK_MIN_AXIS} voxels, 1 thread, voxel "
                          "spacing of the converted image; log bias field evaluated on "
                          "the full grid"),
      "mixture": (f"scikit-learn {sklearn.__version__} GaussianMixture(n_components=3, "
                  f"covariance_type='full', n_init={_GMM_INITS}, random_state=seed) on the "
                  "corrected intensities inside the mask divided by their median, "
                  "1 thread"),
      "class_order": ("components sorted by mean corrected intensity: darkest -> 1 WM, "
                      "middle -> 2 GM, brightest -> 3 CSF (T2/T2*-weighted contrast: "
                      "EPI); 0 outside the manual brain mask"),
  }


def tissue_pseudo_labels(image: np.ndarray, mask: np.ndarray, *, spacing=(1.0, 1.0, 1.0),
                         seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
  """Classifies the voxels inside ``mask`` into WM / GM / CSF.

  Args:
    image: (X, Y, Z) intensities, finite (values <= 0 are raised to a small
      positive floor for N4's logarithm).
    mask: (X, Y, Z) bool, the manual brain mask (at least 3 voxels).
    spacing: voxel edge lengths (3,) in mm, array order.
    seed: the mixture's ``random_state``.

  Returns:
    (labels, fit): labels (X, Y, Z) uint8 (0 outside the mask, 1 WM, 2 GM,
    3 CSF); fit: per class (by name) the mixture's mean and sd of the
    normalised corrected intensity, its weight and its voxel count.
  """
  GaussianMixture = _data_extra("sklearn.mixture").GaussianMixture
  from threadpoolctl import threadpool_limits
  image = np.asarray(image, np.float64)
  mask = np.asarray(mask, bool)
  if image.shape != mask.shape or image.ndim != 3:
    raise ValueError(f"image {image.shape} and mask {mask.shape} must be one 3D grid")
  if mask.sum() < 3:
    raise ValueError("the mask needs at least 3 voxels for a 3-class mixture")
  corrected = positive_floor(image) / np.exp(n4_log_bias_field(image, mask, spacing))
  values = corrected[mask]
  values = values / np.median(values)
  with threadpool_limits(limits=1):
    gmm = GaussianMixture(n_components=3, covariance_type="full", n_init=_GMM_INITS,
                          random_state=seed).fit(values[:, None])
    component = gmm.predict(values[:, None])
  order = np.argsort(gmm.means_[:, 0])            # darkest first
  rank = np.empty(3, np.int64)
  rank[order] = np.arange(3)
  labels = np.zeros(image.shape, np.uint8)
  labels[mask] = (rank[component] + 1).astype(np.uint8)   # 1 WM, 2 GM, 3 CSF
  fit = {}
  for name, k in zip(classes.TISSUE.values(), order):
    fit[name] = {"mean": float(gmm.means_[k, 0]),
                 "sd": float(np.sqrt(gmm.covariances_[k, 0, 0])),
                 "weight": float(gmm.weights_[k]),
                 "voxels": int(np.sum(component == k))}
  return labels, fit
