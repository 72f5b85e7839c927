"""Placing the brain mask: every placer has one signature and returns one :class:`Placement`.

``place(name, slices, *, bundle, slice_index=None, gradient=None)`` runs the
placer ``name`` on raw (not skull-stripped), normalised slices (S, H, W) at
the model's voxel size and slice shape (``bundle.slice_shape``):

* ``gbp``: the paper (section 4.3, Fig. 7). Per slice, the reference
  animal's mask at the same slice index times its gradient image is the
  template (Fig. 7a); the test slice's GBP gradient image, enhanced by Eq. 1,
  is correlated with it (FFT); the argmax moves the reference mask
  (zero-filled). The config's ``displacement`` says whose argmax: each
  slice's own (``slice``, the ``paper`` config's, docs/design.md#displacement-per-slice-or-per-acquisition) or one displacement for the
  acquisition, the argmax of the sum of its slices' correlation maps
  (``volume``, :func:`volume_displacement`).
* ``gbp_improved``: the log GBP gradient image of the raw slices against the
  reference's raw-slice appearance locates one rigid displacement for the
  volume; every training animal's mask at the slice and its neighbours, at
  several scales, then competes on the plain intensity within a few pixels of
  it (``rodent_gbp.search``).
* ``intensity``: the same two-stage search located by the plain intensity
  instead of saliency (a baseline that needs no GBP).
* ``gbp_refined``: ``gbp_improved``'s chosen mask, its contour moved onto the
  GBP image's brain edge (``rodent_gbp.refine``): fits the individual brain,
  still with no raw-image training.
* ``supervised``: the bundle's ``extractor`` network, trained on raw slices
  against brain masks (``rodent_gbp.extractor``); no saliency.

The mask a placer returns is the removal mask: the one applied before the
network segments again and the one written to disk. Evaluators that need the
truth (the ceiling of the paper's placement, the oracle) are in
``rodent_gbp.evaluators``, not here.

``slice_index``: (S,) bank slice of each slice (default 0..S-1; a scan of
another length is matched by relative position, ``scan.bank_slice_index``).
``gradient``: the (S, H, W) gradient image of ``slices`` as the raw pass
computes it (``pipeline.raw_pass``: the tissue config's ``saliency_method``,
``gradient_classes`` and ``saliency_score``; by default the sum of the WM, GM
and CSF guided maps' magnitudes of the probability target) when already
computed, so one saliency pass serves the segmentation and every placer. A
placer whose reading differs from the config's computes its own.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike
import numpy as np

from rodent_gbp import candidates as candidates_lib
from rodent_gbp import configs
from rodent_gbp import correlate
from rodent_gbp import enhance
from rodent_gbp import extractor
from rodent_gbp import guided
from rodent_gbp import parallel
from rodent_gbp import search
from rodent_gbp.errors import CheckpointError, UsageError
from rodent_gbp import refine


@dataclasses.dataclass(frozen=True)
class PaperDetails:
  """The paper's placement, per slice: ``gradient`` (S, H, W) the saliency map,
  ``signal`` its Eq. 1 enhancement, ``template`` the reference mask it was
  correlated with, ``correlation`` the correlation map."""

  gradient: np.ndarray
  signal: np.ndarray
  template: np.ndarray
  correlation: np.ndarray


@dataclasses.dataclass(frozen=True)
class SearchDetails:
  """The search placers (``gbp_improved``, ``intensity``): ``placed`` (S, H, W) the
  chosen candidate before dilation, ``volume_displacement`` (2,) the volume's shift,
  ``located`` (S, 2) each slice's own peak, ``template_animal``, ``slice_offset`` and
  ``scale`` (S,) of the chosen candidate, ``signal`` the located image."""

  placed: np.ndarray
  volume_displacement: np.ndarray
  located: np.ndarray
  template_animal: np.ndarray
  slice_offset: np.ndarray
  scale: np.ndarray
  signal: np.ndarray


@dataclasses.dataclass(frozen=True)
class RefinedDetails(SearchDetails):
  """``gbp_refined``: its start's :class:`SearchDetails`, the ``start`` mask, the
  ``evidence`` image, the contour's ``offset`` per ray and ``contour_radius``."""

  start: np.ndarray = None
  evidence: np.ndarray = None
  offset: np.ndarray = None
  contour_radius: np.ndarray = None


@dataclasses.dataclass(frozen=True)
class ExtractorDetails:
  probability: np.ndarray  # ``supervised``: the extractor's brain probability (S, H, W)


@dataclasses.dataclass
class Placement:
  """A placed brain mask for the slices of one volume.

  Attributes:
    mask: (S, H, W) bool removal mask (applied, then written).
    displacement: (S, 2) int (dy, dx) in model voxels relative to the
      reference animal's acquisition, or None for a placer without one.
    confidence: (S,) float peak-to-sidelobe ratio of the locating
      correlation, or None.
    details: the placer's typed record (:class:`PaperDetails`,
      :class:`SearchDetails`, :class:`RefinedDetails`, :class:`ExtractorDetails`),
      or None.
  """

  mask: np.ndarray
  displacement: np.ndarray | None = None
  confidence: np.ndarray | None = None
  details: PaperDetails | SearchDetails | ExtractorDetails | None = None


# --- the paper's placement ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PaperOptions:
  """The paper's reading; hashable so it can be a static jit argument.

  Attributes:
    method: saliency method of the test image's gradient image
      (guided | vanilla | deconvnet).
    classes: classes whose map magnitudes are summed into the gradient image.
    score: what the saliency target sums (``guided.SCORES``): ``probability``
      (the paper) or ``logit``.
    signal: what the template is correlated with: ``enhanced`` (Eq. 1 of the
      gradient image, the paper), ``gradient`` or ``intensity``.
    template: ``gradient`` (mask x reference gradient image, Fig. 7a),
      ``enhanced`` (mask x Eq. 1 of it) or ``mask``.
    center, width: Eq. 1 parameters.
    displacement: ``slice`` (one argmax per slice) or ``volume`` (one
      displacement per acquisition, :func:`volume_displacement`).
  """

  method: str = "guided"
  classes: tuple[int, ...] = (1, 2, 3)
  score: str = "probability"
  signal: str = "enhanced"
  template: str = "gradient"
  center: float = 2.0
  width: float = 0.5
  displacement: str = "slice"

  @classmethod
  def from_config(cls, config, **changes: Any) -> "PaperOptions":
    base = cls(method=config.saliency_method, classes=tuple(config.gradient_classes),
               score=config.saliency_score, template=config.template, center=config.enhance_center,
               width=config.enhance_width, displacement=config.displacement)
    return dataclasses.replace(base, **changes)


def make_template(mask: jax.Array, gradient: jax.Array, template: str = "gradient", *,
                  center: ArrayLike = 2.0, width: ArrayLike = 0.5) -> jax.Array:
  """The shape template of Fig. 7a from reference mask and gradient image (..., H, W).

  ``template`` is ``gradient`` (mask x gradient), ``enhanced`` (mask x Eq. 1
  of the gradient with ``center`` and ``width``, which may be traced) or
  ``mask``.
  """
  mask = mask.astype(jnp.float32)
  if template == "gradient":
    return mask * gradient
  if template == "enhanced":
    return mask * enhance.enhance_gradient(gradient, center=center, width=width)
  if template == "mask":
    return mask
  raise ValueError(f"unknown template {template!r}; gradient | enhanced | mask")


def place_mask(signal: jax.Array, template: jax.Array, ref_mask: jax.Array):
  """Correlates and moves the mask (Fig. 7).

  Args:
    signal: (B, H, W) enhanced gradient images of the test slices.
    template: (B, H, W) shape templates.
    ref_mask: (B, H, W) reference masks to move.
  Returns:
    correlation (B, H, W), displacement (B, 2) int32 (dy, dx) and the placed
    mask (B, H, W) bool. An empty template gives displacement 0.
  """
  h, w = signal.shape[-2:]
  corr = correlate.cross_correlate(signal, template, mode="same")
  disp = correlate.locate(corr, image_shape=(h, w), template_shape=(h, w), mode="same")
  disp = jnp.round(disp).astype(jnp.int32)
  empty = jnp.sum(template, axis=(-2, -1)) <= 0
  disp = jnp.where(empty[:, None], 0, disp)
  placed = correlate.shift_image(ref_mask.astype(jnp.float32), disp) > 0.5
  return corr, disp, placed


DISPLACEMENTS = configs.DISPLACEMENTS


@functools.partial(jax.jit, static_argnames=("num_volumes",))
def volume_displacement(corr: jax.Array, template_sum: jax.Array, volume: jax.Array, *,
                        num_volumes: int) -> jax.Array:
  """One displacement per acquisition from its slices' correlation maps.

  The test acquisition moved as a whole relative to the reference (paper
  section 4.3), so its slices share one in-plane displacement: the argmax of
  the sum of their 'same'-mode correlation maps, i.e. the 3D correlation of
  the stacked templates with the stacked enhanced gradient images at zero
  slice offset. A slice whose own map peaks elsewhere (an artifact brighter
  than its brain) is outvoted by the others.

  Args:
    corr: (B, H, W) correlation maps (``place_mask``).
    template_sum: (B,) sum of each slice's template; slices with an empty
      template (no reference brain there) are left out of the sum.
    volume: (B,) int32 volume of each slice, in [0, num_volumes).
    num_volumes: number of volumes (static).

  Returns:
    (B, 2) int32: each slice's volume's displacement; 0 for a volume whose
    templates are all empty.
  """
  h, w = corr.shape[-2:]
  valid = template_sum > 0
  total = jax.ops.segment_sum(jnp.where(valid[:, None, None], corr, 0.0), volume,
                              num_segments=num_volumes)
  any_valid = jax.ops.segment_sum(valid.astype(jnp.int32), volume, num_segments=num_volumes) > 0
  disp = correlate.locate(total, image_shape=(h, w), template_shape=(h, w), mode="same")
  disp = jnp.where(any_valid[:, None], jnp.round(disp).astype(jnp.int32), 0)
  return disp[volume]


@functools.partial(jax.jit, static_argnames=("num_volumes",))
def place_volume(corr: jax.Array, template: jax.Array, ref_mask: jax.Array,
                 volume: jax.Array, *, num_volumes: int):
  """:func:`place_mask`'s move with one displacement per volume.

  Args:
    corr, template, ref_mask: (B, H, W) as :func:`place_mask` takes and gives.
    volume, num_volumes: as :func:`volume_displacement`.
  Returns:
    displacement (B, 2) int32 (each slice its volume's) and the placed masks
    (B, H, W) bool.
  """
  disp = volume_displacement(corr, jnp.sum(template, axis=(-2, -1)), volume,
                             num_volumes=num_volumes)
  return disp, correlate.shift_image(ref_mask.astype(jnp.float32), disp) > 0.5


@functools.partial(jax.jit, static_argnames=("model", "options", "have_gradient"))
def paper_batch(params, images: jax.Array, gradient: jax.Array, slice_index: jax.Array,
                bank_masks: jax.Array, bank_gradients: jax.Array, reference: jax.Array, *,
                model, options: PaperOptions, have_gradient: bool) -> dict[str, jax.Array]:
  """The paper's placement of a batch of raw slices (B, H, W).

  ``gradient`` (B, H, W) is used when ``have_gradient`` (else computed here
  from ``images`` with ``options``); ``slice_index`` (B,) picks the
  reference's template slice (clipped to the bank's range).
  """
  s = jnp.clip(slice_index, 0, bank_masks.shape[1] - 1)
  ref_mask = bank_masks[reference, s]
  template = make_template(ref_mask, bank_gradients[reference, s], options.template,
                           center=options.center, width=options.width)
  if options.signal == "intensity":
    g = images
    signal = images
  else:
    g = gradient if have_gradient else guided.gradient_image(
        model, params, images[..., None], classes=options.classes, method=options.method,
        score=options.score)
    if options.signal == "gradient":
      signal = g
    elif options.signal == "enhanced":
      signal = enhance.enhance_gradient(g, center=options.center, width=options.width)
    else:
      raise ValueError(f"unknown signal {options.signal!r}; enhanced | gradient | intensity")
  corr, disp, placed = place_mask(signal, template, ref_mask)
  return {"gradient": g, "signal": signal, "template": template, "correlation": corr,
          "displacement": disp, "placed": placed,
          "confidence": correlate.peak_confidence(corr)}


def place_paper(slices: np.ndarray, *, bundle, options: PaperOptions | None = None,
                slice_index: np.ndarray | None = None, gradient: np.ndarray | None = None,
                batch_size: int | None = None, mesh=None) -> Placement:
  """The paper's placement with ``options`` (default: the bundle config's reading).

  ``slices`` are one volume: with ``options.displacement == "volume"`` they
  share one displacement.
  """
  net = bundle.network("tissue")
  options = PaperOptions.from_config(net.config) if options is None else options
  if options.displacement not in DISPLACEMENTS:
    raise UsageError(f"displacement must be one of {', '.join(DISPLACEMENTS)}, got "
                     f"{options.displacement!r}")
  slices, slice_index = _check(slices, bundle, slice_index)
  mesh = parallel.make_mesh() if mesh is None else mesh
  params, masks, grads, ref = parallel.replicate(
      (net.params, bundle.bank.masks, bundle.bank.gradients,
       np.int32(bundle.bank.reference)), mesh)
  have = gradient is not None and raw_reading(net.config) == (
      options.method, tuple(options.classes), options.score)
  arrays = {"images": slices, "slice_index": slice_index,
            "gradient": np.asarray(gradient, np.float32) if have else slices}
  out = parallel.run_batched(
      lambda images, slice_index, gradient: paper_batch(
          params, images, gradient, slice_index, masks, grads, ref, model=net.model,
          options=options, have_gradient=have),
      arrays, batch_size or net.config.eval_batch_size, mesh)
  if options.displacement == "volume":
    out.update(_place_volume(out["correlation"], out["template"], bundle.bank.masks[
        bundle.bank.reference, np.clip(slice_index, 0, bundle.bank.masks.shape[1] - 1)]))
  return Placement(mask=out["placed"].astype(bool), displacement=out["displacement"],
                   confidence=out["confidence"],
                   details=PaperDetails(gradient=out["gradient"], signal=out["signal"],
                                        template=out["template"],
                                        correlation=out["correlation"]))


def _place_volume(corr: np.ndarray, template: np.ndarray, ref_masks: np.ndarray
                  ) -> dict[str, np.ndarray]:
  """The whole volume's displacement, the reference masks moved by it and the
  confidence of the summed map (every slice the volume's)."""
  n = len(corr)
  disp, placed = place_volume(corr, template, ref_masks, np.zeros(n, np.int32), num_volumes=1)
  psr = correlate.peak_confidence(jnp.sum(jnp.asarray(corr), axis=0))
  return {"displacement": np.asarray(disp), "placed": np.asarray(placed),
          "confidence": np.full(n, float(psr), np.float32)}


# --- the candidate search placers (gbp_improved, intensity) --------------------------

#: The shipped improved reading (``gbp_improved``). Locate: log GBP gradient
#: image of the raw test slice against the reference animal's raw-slice log
#: GBP gradient image (brain plus a 2-pixel ring), zero-mean NCC, one
#: displacement per volume. Choose: every training animal's mask at the slice
#: and +-2 neighbours, 5 scales, scored by zero-mean NCC with the plain
#: intensity (mask plus a 2-pixel ring) within 1 pixel of it; the removal mask
#: is the chosen mask dilated by 1 pixel. The margins, the choice radius and
#: the dilation were chosen on the default run's validation animals (rat02,
#: rat07) by ``experiments/select_improved.py``
#: (``experiments/results/default/selection/``): choice margin 2 and dilation 1
#: won; locating margins 2-8 and choice radii 1-3 tied, and the first of the
#: grid was taken.
IMPROVED = search.ImprovedOptions(signal="log", template="appearance", score="zncc",
                                  margin=2, volume=True, dilate=1, choice="intensity",
                                  choice_margin=2, choice_radius=1)

#: The ``intensity`` placer: the same search, located by the plain intensity.
INTENSITY = dataclasses.replace(IMPROVED, signal="intensity", template="mask", margin=2)


def candidate_bank(bundle) -> candidates_lib.CandidateBank:
  """The bundle's candidate masks, built once and kept in ``bundle.cache``."""
  if "candidates" not in bundle.cache:
    b = bundle.bank
    bundle.cache["candidates"] = candidates_lib.CandidateBank(
        b, appearance=b.appearance, available=b.appearance_available, scales=IMPROVED.scales)
  return bundle.cache["candidates"]


def raw_reading(config) -> tuple[str, tuple[int, ...], str]:
  """(method, classes, score) of the raw pass's gradient image under ``config``."""
  return (config.saliency_method, tuple(config.gradient_classes), config.saliency_score)


def search_signal(slices: np.ndarray, options: search.ImprovedOptions, *, bundle,
                  gradient: np.ndarray | None = None,
                  batch_size: int | None = None) -> np.ndarray:
  """(S, H, W) locating signal of raw slices for ``options.signal``.

  The gradient image is ``options.method``'s over the tissue config's
  ``gradient_classes`` with its ``saliency_score``; a given ``gradient`` (the
  raw pass's) is used when that is the raw pass's reading.
  """
  if options.signal == "intensity":
    return np.asarray(slices, np.float32)
  net = bundle.network("tissue")
  method, classes, score = raw_reading(net.config)
  if gradient is None or options.method != method:
    gradient = parallel.run_batched(
        lambda images: guided.gradient_image(net.model, net.params, images,
                                             method=options.method, classes=classes,
                                             score=score),
        {"images": np.asarray(slices, np.float32)[..., None]},
        batch_size or net.config.eval_batch_size)["out"]
  if options.signal == "log":
    return np.asarray(enhance.log_gradient(gradient))
  if options.signal == "gradient":
    return np.asarray(gradient, np.float32)
  if options.signal == "enhanced":
    return np.asarray(enhance.enhance_gradient(gradient, center=options.center,
                                               width=options.width))
  raise ValueError(f"unknown signal {options.signal!r}; log | enhanced | gradient | intensity")


def place_search(slices: np.ndarray, *, bundle, options: search.ImprovedOptions,
                 slice_index: np.ndarray | None = None, gradient: np.ndarray | None = None,
                 batch_size: int | None = None) -> Placement:
  """The candidate search with ``options`` (``gbp_improved``, ``intensity`` and variants)."""
  slices, slice_index = _check(slices, bundle, slice_index)
  cbank = candidate_bank(bundle)
  if options.template == "appearance" and bundle.bank.appearance is None:
    raise CheckpointError(f"{bundle.where('templates.npz')}: the template bank has no "
                          "raw-slice appearance, which this placement needs; rebuild the "
                          "model with experiments/reproduce.py or use --placement=gbp")
  cands, choice = cbank.for_options(options)
  signal = search_signal(slices, options, bundle=bundle, gradient=gradient,
                         batch_size=batch_size)
  out = search.place_improved(signal, slices, cands, choice, options, slice_index=slice_index)
  mask = np.asarray(candidates_lib.dilate(out["placed"], options.dilate))
  scales = np.asarray((choice if choice is not None else cands).scales)
  return Placement(
      mask=mask, displacement=np.asarray(out["displacement"], np.int32),
      confidence=np.asarray(out["confidence"], np.float32),
      details=SearchDetails(
          placed=np.asarray(out["placed"], bool),
          volume_displacement=np.asarray(out["volume_displacement"], np.int32),
          located=np.asarray(out["located"], np.int32),
          template_animal=np.asarray(out["animal"], np.int32),
          slice_offset=np.asarray(out["slice_offset"], np.int32),
          scale=scales[np.asarray(out["scale_index"])], signal=signal))


# --- the registry ------------------------------------------------------------------


def _check(slices, bundle, slice_index) -> tuple[np.ndarray, np.ndarray]:
  slices = np.asarray(slices, np.float32)
  if slices.ndim != 3 or slices.shape[1:] != bundle.slice_shape:
    raise UsageError(f"placement needs slices (S, H, W) on the model grid "
                     f"{bundle.slice_shape}; got shape {slices.shape}")
  if slice_index is None:
    slice_index = np.arange(len(slices), dtype=np.int32)
  slice_index = np.asarray(slice_index, np.int32)
  if slice_index.shape != (len(slices),):
    raise UsageError(f"slice_index must be ({len(slices)},); got {slice_index.shape}")
  return slices, slice_index


def gbp(slices, *, bundle, slice_index=None, gradient=None) -> Placement:
  """The paper's placement (see the module doc)."""
  return place_paper(slices, bundle=bundle, slice_index=slice_index, gradient=gradient)


def gbp_improved(slices, *, bundle, slice_index=None, gradient=None) -> Placement:
  """The improved GBP placement, :data:`IMPROVED` (see the module doc)."""
  return place_search(slices, bundle=bundle, options=IMPROVED, slice_index=slice_index,
                      gradient=gradient)


def intensity(slices, *, bundle, slice_index=None, gradient=None) -> Placement:
  """The search placement located by intensity, :data:`INTENSITY`; no saliency."""
  return place_search(slices, bundle=bundle, options=INTENSITY, slice_index=slice_index)


def supervised(slices, *, bundle, slice_index=None, gradient=None) -> Placement:
  """The bundle's ``extractor`` network's brain mask (``rodent_gbp.extractor``); no saliency."""
  out = extractor.extract(_check(slices, bundle, slice_index)[0], bundle=bundle)
  return Placement(mask=out["mask"], details=ExtractorDetails(probability=out["probability"]))


def place_refined(slices: np.ndarray, *, bundle, slice_index: np.ndarray | None = None,
                  gradient: np.ndarray | None = None, options=None,
                  start=None):
  """``gbp_improved``'s placement refined with the evidence of ``options``.

  Args:
    slices: (S, H, W) raw normalised slices on the model grid.
    bundle: the model bundle.
    slice_index: (S,) bank slice of each slice.
    gradient: (S, H, W) the raw pass's GBP gradient image (computed when None).
    options: ``refine.RefineOptions`` (default ``refine.REFINED``).
    start: a :class:`Placement` of ``gbp_improved`` already computed on
      these slices (its ``placed`` detail is refined), or None.
  Returns:
    A :class:`Placement` whose mask is the refined mask; displacement and
    confidence are the start's; details add ``start`` (the start's removal
    mask), ``evidence``, ``offset``, ``contour_radius``.
  """
  options = refine.REFINED if options is None else options
  slices, slice_index = _check(slices, bundle, slice_index)
  if gradient is None and options.source != "intensity":
    gradient = search_signal(slices, search.ImprovedOptions(signal="gradient"),
                                       bundle=bundle)
  if gradient is not None and np.shape(gradient) != slices.shape:
    raise UsageError(f"gradient image {np.shape(gradient)} and slices {slices.shape} differ")
  if start is None:
    start = gbp_improved(slices, bundle=bundle, slice_index=slice_index,
                                   gradient=gradient)
  evidence = refine.evidence_image(slices, gradient, options)
  out = refine.refine(start.details.placed, evidence, options)
  details = RefinedDetails(
      **{f.name: getattr(start.details, f.name)
         for f in dataclasses.fields(SearchDetails)},
      start=start.mask, evidence=evidence, offset=out["offset"], contour_radius=out["radius"])
  return Placement(mask=out["mask"].astype(bool), displacement=start.displacement,
                   confidence=start.confidence, details=details)


def gbp_refined(slices, *, bundle, slice_index=None, gradient=None) -> Placement:
  """``gbp_improved``'s chosen mask moved onto the GBP image's brain edge (``refine``)."""
  return place_refined(slices, bundle=bundle, slice_index=slice_index, gradient=gradient)


#: Placer name (the ``--placement`` value and the ``results.json`` key under
#: ``brain``) -> placer.
PLACERS: Mapping[str, Callable[..., Placement]] = {
    "gbp": gbp, "gbp_improved": gbp_improved, "intensity": intensity,
    "supervised": supervised, "gbp_refined": gbp_refined}


def check_placer(name: str, bundle) -> None:
  """Refuses, before any work, a placer the bundle cannot serve.

  Raises:
    UsageError: an unknown name; CheckpointError: a search placer that
    needs the raw-slice appearance the bundle's bank does not hold.
  """
  if name not in PLACERS:
    raise UsageError(f"unknown placement {name!r}; one of {', '.join(PLACERS)}")
  if name == "supervised":
    extractor.check_bundle(bundle)
  if name in ("gbp_improved", "gbp_refined") and bundle.bank.appearance is None:
    raise CheckpointError(f"{bundle.where('templates.npz')}: the template bank has no "
                          f"raw-slice appearance, which {name} needs; rebuild the "
                          "model with experiments/reproduce.py or use --placement=gbp")


def place(name: str, slices: np.ndarray, *, bundle, slice_index: np.ndarray | None = None,
          gradient: np.ndarray | None = None) -> Placement:
  """Runs the placer ``name`` (a key of :data:`PLACERS`).

  Raises:
    UsageError: an unknown name.
  """
  check_placer(name, bundle)
  return PLACERS[name](slices, bundle=bundle, slice_index=slice_index, gradient=gradient)
