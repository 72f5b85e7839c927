"""Guided Backpropagation and related saliency maps (paper section 3.2, Fig. 1).

Springenberg et al.'s guided ReLU passes a gradient backwards only where the
forward input was positive *and* the incoming gradient is positive; Zeiler and
Fergus's deconvnet rule keeps only the sign of the gradient and ignores the
forward input. Both are ``jax.custom_vjp`` activations that replace ``relu``
in the U-Net through its ``activation`` field, so the guided network is
``model.clone(activation=guided_relu)`` applied to the *same* params.

The saliency target for class ``c`` is the sum over pixels of the softmax
probability of ``c`` (docs/design.md#saliency-targets), or with ``score="logit"`` the sum
of its logit (which, unlike the probability, does not saturate where the
network is confident). Images of a batch are independent
(no normalisation layers), so the gradient of the batch sum is the stack of
per-image gradients. All requested classes share one forward pass: one
``jax.vjp``, its pullback applied to one cotangent per class in the same
compiled program (unrolled by default, or ``vmap``-ed with
``pullback_mode="vmap"``). The guided ReLU's forward is the ReLU's, so that
forward pass also gives the segmentation logits
(:func:`gradient_image_and_logits`).

Example::

  maps = saliency(model, params, images, target="all")   # (B, C, H, W)
  g = gradient_image(model, params, images)               # (B, H, W)
  g, logits = gradient_image_and_logits(model, params, images)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from rodent_gbp.configs import SALIENCY_SCORES as SCORES  # what a class target sums

METHODS = ("guided", "deconvnet", "vanilla", "smoothgrad")

Target = Union[int, str, Sequence[Any], Callable[[jax.Array], jax.Array]]


# --------------------------------------------------------------------------
# Activations with modified backward rules.
# --------------------------------------------------------------------------


@jax.custom_vjp
def guided_relu(x: jax.Array) -> jax.Array:
  """ReLU whose backward pass is Guided Backpropagation's (paper Fig. 1).

  Forward ``max(x, 0)``; backward ``g * 1[x > 0] * 1[g > 0]``.
  """
  return jnp.maximum(x, 0)


def _guided_fwd(x):
  return jnp.maximum(x, 0), x


def _guided_bwd(x, g):
  # `where`, not a product with the indicators: a non-finite g where the gate
  # is closed must give 0, as the rule says, not NaN.
  return (jnp.where((x > 0) & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconv_relu(x: jax.Array) -> jax.Array:
  """ReLU with the deconvnet backward rule (Zeiler and Fergus).

  Forward ``max(x, 0)``; backward ``max(g, 0)`` whatever the sign of ``x``.
  """
  return jnp.maximum(x, 0)


def _deconv_fwd(x):
  return jnp.maximum(x, 0), None


def _deconv_bwd(_, g):
  return (jnp.maximum(g, 0),)


deconv_relu.defvjp(_deconv_fwd, _deconv_bwd)

_ACTIVATIONS = {
    "guided": guided_relu,
    "deconvnet": deconv_relu,
    "vanilla": nn.relu,
}


# --------------------------------------------------------------------------
# Targets.
# --------------------------------------------------------------------------


def _normalise_target(target: Target, region: Any, num_classes: int):
  """Turns the user's ``target`` into a hashable spec plus an array ``region``.

  Returns ``(spec, region)`` where spec is ``("classes", classes, argmax,
  squeeze)`` or ``("callable", fn)``; :func:`_split_spec` then moves what can
  be data out of it.
  """
  if isinstance(target, tuple) and target and isinstance(target[0], str):
    kind = target[0]
    if kind == "region":
      if len(target) != 3:
        raise ValueError("target ('region', mask, c) needs a mask and a class")
      if region is not None:
        raise ValueError("give the region either in target or as region=, not both")
      return _normalise_target(target[2], target[1], num_classes)
    if kind == "argmax":
      if len(target) != 2:
        raise ValueError("target ('argmax', c) needs one class (or 'all')")
      spec, region = _normalise_target(target[1], region, num_classes)
      if spec[0] != "classes":
        raise ValueError("('argmax', c) needs a class index, a tuple of them or 'all'")
      return ("classes", spec[1], True, spec[3]), region
    raise ValueError(f"unknown target kind {kind!r}")
  if callable(target):
    if region is not None:
      raise ValueError("a callable target applies its own region; region= must be None")
    return ("callable", target), None
  if isinstance(target, str):
    if target != "all":
      raise ValueError(f"target string must be 'all', got {target!r}")
    return ("classes", tuple(range(num_classes)), False, False), region
  if isinstance(target, (tuple, list)):
    classes = tuple(int(c) for c in target)
    squeeze = False
  else:
    classes = (int(target),)
    squeeze = True
  if not classes:
    raise ValueError("target names no class")
  for c in classes:
    if not 0 <= c < num_classes:
      raise ValueError(f"class {c} out of range for {num_classes} classes")
  return ("classes", classes, False, squeeze), region


def _region_array(region: Any, images_shape) -> jax.Array:
  """A user's (H, W) or (B, H, W) region as a (B, H, W) bool array."""
  region = jnp.asarray(region).astype(bool)
  if region.ndim == 2:
    region = jnp.broadcast_to(region, (images_shape[0], *region.shape))
  if region.ndim != 3:
    raise ValueError(f"region must be (H, W) or (B, H, W), got {region.shape}")
  return region


def _split_spec(spec, region, images_shape):
  """Static part of a spec and the data it selects with.

  The static part is ``("classes", K, squeeze)`` or ``("callable", fn)``; the
  data ``{"classes": (K,) int32, "argmax": () bool, "region": () or
  (B, H, W) bool}`` is traced, so targets that differ only in class, argmax
  masking or region share one compilation.
  """
  if spec[0] != "classes":
    return spec, None
  _, classes, argmax, squeeze = spec
  # A scalar region broadcasts over the output pixels inside.
  region = jnp.asarray(True) if region is None else _region_array(region, images_shape)
  select = {"classes": jnp.asarray(classes, jnp.int32),
            "argmax": jnp.asarray(argmax, bool), "region": region}
  return ("classes", len(classes), squeeze), select


def _hashable(x) -> bool:
  try:
    hash(x)
  except TypeError:
    return False
  return True


@functools.lru_cache(maxsize=256)
def _cached_target(target: Target, num_classes: int, batch: int):
  """(static spec, select, whether the target carries its own region), built once.

  Keyed by the (hashable) target, the number of classes and the batch size
  (a region inside the target is broadcast over the batch). The arrays are
  made eagerly even when the first call is traced inside an outer ``jit``, so
  the cache never holds a tracer.
  """
  with jax.ensure_compile_time_eval():
    spec, region = _normalise_target(target, None, num_classes)
    spec, select = _split_spec(spec, region, (batch,))
  return spec, select, region is not None


def _target_select(target: Target, region: Any, num_classes: int, images_shape):
  """``(static spec, select data)`` for :func:`_saliency_core`.

  A hashable target (an int, "all", a tuple or list of ints, ``("argmax",
  c)``, a callable) is normalised and its selection arrays are made once
  (:func:`_cached_target`): a repeated call with the same target does no spec
  work; only a ``region=`` array, which is data, is converted per call.
  Unhashable targets (``("region", mask, c)`` with an array mask) are
  normalised on every call.
  """
  if isinstance(target, list):
    target = tuple(target)
  if not _hashable(target):
    spec, region = _normalise_target(target, region, num_classes)
    return _split_spec(spec, region, images_shape)
  spec, select, own_region = _cached_target(target, num_classes, images_shape[0])
  if region is None:
    return spec, select
  if spec[0] == "callable":
    raise ValueError("a callable target applies its own region; region= must be None")
  if own_region:
    raise ValueError("give the region either in target or as region=, not both")
  return spec, dict(select, region=_region_array(region, images_shape))


def _class_cotangents(scores: jax.Array, logits: jax.Array, select: dict) -> jax.Array:
  """Cotangents (K, B, H, W, C) of ``sum_pixels w_k * s_{c_k}`` w.r.t. ``scores``.

  ``scores`` (B, H, W, C) are the probabilities or the logits; ``w_k`` is the
  region, times (when ``select["argmax"]``) the pixels where the network
  predicts ``c_k``.
  """
  num_classes = scores.shape[-1]
  classes = select["classes"]
  region = select["region"]
  if region.ndim and region.shape != scores.shape[:3]:
    raise ValueError(f"region of shape {region.shape} does not match the output "
                     f"pixels {scores.shape[:3]}")
  region = jnp.broadcast_to(region, scores.shape[:3])
  onehot = jax.nn.one_hot(classes, num_classes, dtype=scores.dtype)  # (K, C)
  # The argmax mask is a constant of the objective: where the network
  # predicts c_k (no gradient flows through the argmax itself). The argmax
  # of the logits is that of the probabilities.
  pred = jnp.argmax(logits, axis=-1)  # (B, H, W)
  hit = (pred[None] == classes[:, None, None, None]) | ~select["argmax"]
  weight = (hit & region[None]).astype(scores.dtype)  # (K, B, H, W)
  return weight[..., None] * onehot[:, None, None, None, :]


def _maps(model: nn.Module, params, images: jax.Array, spec, select,
          pullback_mode: str = "unroll", score: str = "probability"):
  """Gradient maps of ``model`` (activation already set) and its logits.

  ``spec`` and ``select`` come from :func:`_target_select`; ``pullback_mode``
  says how the K backward passes share the one forward pass (see
  :func:`saliency`); ``score`` is what the target sums.

  Returns:
    ``(maps, logits)``: maps (B, K, H, W) or (B, H, W); logits (B, H, W, C)
    of the forward pass the maps were pulled back through.
  """

  def score_fn(x):
    logits = model.apply({"params": params}, x)
    scores = jax.nn.softmax(logits, axis=-1) if score == "probability" else logits
    return scores, logits

  scores, pullback, logits = jax.vjp(score_fn, images, has_aux=True)
  if spec[0] == "callable":
    fn = spec[1]
    cot = jax.grad(lambda s: jnp.sum(fn(s)))(scores)
    (grad,) = pullback(cot)
    return grad[..., 0], logits
  _, num_maps, squeeze = spec
  cots = _class_cotangents(scores, logits, select)
  # One forward pass for all classes: the pullback (of that one forward
  # pass) is applied to each class's own cotangent; the guided rule is not
  # linear in the cotangent, so they cannot be summed first.
  if num_maps == 1:
    (grad,) = pullback(cots[0])
    grads = grad[None]
  elif pullback_mode == "vmap":
    (grads,) = jax.vmap(pullback)(cots)  # (K, B, H, W, 1)
  elif pullback_mode == "unroll":
    # K backward passes in one program. On CPU this measured ~1.4x faster
    # than the vmapped pullback (benchmarks/saliency_bench.py): the batched
    # conv transposes and max-pool scatters that vmap produces are slower
    # than K plain ones.
    grads = jnp.stack([pullback(cots[k])[0] for k in range(num_maps)])
  else:
    raise ValueError(f"pullback_mode must be 'unroll' or 'vmap', got {pullback_mode!r}")
  grads = jnp.moveaxis(grads[..., 0], 0, 1)  # (B, K, H, W)
  return (grads[:, 0] if squeeze else grads), logits


def _magnitudes(maps: jax.Array) -> jax.Array:
  """(B, K, H, W) -> (B, H, W) sum of |maps|; (B, H, W) -> |maps|."""
  return jnp.abs(maps) if maps.ndim == 3 else jnp.sum(jnp.abs(maps), axis=1)


def _saliency_core(model: nn.Module, params, images: jax.Array, select,
                   rng, noise, *, method: str, spec, samples: int,
                   smooth_base: str, pullback_mode: str = "unroll",
                   score: str = "probability", magnitudes: bool = False,
                   with_logits: bool = False):
  """Maps (or, with ``magnitudes``, the gradient image), plus logits if asked."""
  if method == "smoothgrad":
    if smooth_base not in _ACTIVATIONS:
      raise ValueError(f"smooth_base must be one of {sorted(_ACTIVATIONS)}")
    base = model.clone(activation=_ACTIVATIONS[smooth_base])
    if rng is None:
      rng = jax.random.key(0)
    # Smilkov et al.: noise std is a fraction of each image's intensity range.
    span = (jnp.max(images, axis=(1, 2, 3), keepdims=True)
            - jnp.min(images, axis=(1, 2, 3), keepdims=True))
    sigma = jnp.asarray(noise, images.dtype) * span
    one = lambda x: _maps(base, params, x, spec, select, pullback_mode, score)[0]

    def body(total, key):
      eps = jax.random.normal(key, images.shape, images.dtype) * sigma
      return total + one(images + eps), None

    shape = jax.eval_shape(one, images)
    total, _ = jax.lax.scan(body, jnp.zeros(shape.shape, shape.dtype),
                            jax.random.split(rng, samples))
    maps = total / samples
    # No forward pass of the clean images was made; one more gives the logits.
    logits = model.apply({"params": params}, images) if with_logits else None
  else:
    # Every activation's forward is max(x, 0): these are the ReLU U-Net's logits.
    maps, logits = _maps(model.clone(activation=_ACTIVATIONS[method]), params,
                         images, spec, select, pullback_mode, score)
  if magnitudes:
    maps = _magnitudes(maps)
  return (maps, logits) if with_logits else maps


# Compiled once per (model, method, score, number of maps, outputs, shapes):
# model is a hashable Flax dataclass, the static spec a tuple (or a callable
# target, hashed by identity); class indices, argmax flag, region, rng and
# noise are data.
saliency_jit = jax.jit(
    _saliency_core,
    static_argnames=("model", "method", "spec", "samples", "smooth_base",
                     "pullback_mode", "score", "magnitudes", "with_logits"))


def _check(images, method: str, score: str) -> None:
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if score not in SCORES:
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")
  if images.ndim != 4 or images.shape[-1] != 1:
    raise ValueError(f"images must be (B, H, W, 1), got {images.shape}")


def saliency(model: nn.Module, params, images: jax.Array, *,
             method: str = "guided", target: Target = 1,
             region: jax.Array | None = None, noise: float = 0.15,
             samples: int = 16, rng: jax.Array | None = None,
             smooth_base: str = "vanilla",
             pullback_mode: str = "unroll",
             score: str = "probability") -> jax.Array:
  """Gradient of a class objective w.r.t. the input images.

  The objective for class ``c`` is ``sum_{pixels} s_c(x)``, differentiated
  through the network whose ReLUs follow ``method``'s backward rule, with the
  same ``params`` for every method. ``s`` is the softmax probability
  ``softmax(model(x))[..., c]`` (``score="probability"``, the paper's target,
  docs/design.md#saliency-targets) or the logit ``model(x)[..., c]`` (``score="logit"``).
  ``d p_c / d z_c = p_c (1 - p_c)`` vanishes where the network is confident,
  so the probability target's maps fade over confidently labelled pixels; the
  logit target's do not.

  Args:
    model: the U-Net (any Flax module with an ``activation`` field mapping
      (B, H, W, 1) to logits (B, H, W, C)).
    params: its params.
    images: (B, H, W, 1) float.
    method: "guided" (Guided Backpropagation), "deconvnet", "vanilla"
      (plain gradient) or "smoothgrad" (``smooth_base`` gradients averaged
      over ``samples`` noisy copies, noise std ``noise * (max - min)`` of each
      image).
    target: what to explain:
      * an int ``c``: class ``c``; returns (B, H, W);
      * ``"all"`` or a tuple of ints: one map per class, returns (B, K, H, W)
        from one forward pass;
      * ``("argmax", c)`` (``c`` an int, tuple or "all"): the class sum
        restricted to pixels the network assigns to ``c``;
      * ``("region", mask, c)``: same as ``target=c, region=mask``;
      * a callable ``f(scores (B, H, W, C)) -> (B,)`` or scalar, ``scores``
        the probabilities or the logits (``score``): its sum is the
        objective; returns (B, H, W).
      A hashable target is turned into its selection arrays once and reused
      by later calls (the compiled program is reused too: class indices,
      argmax masking and region are data).
    region: optional (H, W) or (B, H, W) bool mask restricting the pixel sum.
    noise, samples, rng, smooth_base: smoothgrad settings (rng defaults to
      ``jax.random.key(0)``).
    pullback_mode: how several maps share the one forward pass: "unroll"
      (K backward passes in one compiled program; the faster on CPU) or
      "vmap" (one batched backward pass). Same result.
    score: "probability" (default) or "logit": what the target sums.

  Returns:
    d objective / d images with the channel squeezed: (B, H, W), or
    (B, K, H, W) for several classes.

  Example::

    maps = saliency(model, params, images, target="all", score="logit")
  """
  _check(images, method, score)
  spec, select = _target_select(target, region, model.num_classes, images.shape)
  return saliency_jit(model, params, images, select, rng, noise, method=method,
                      spec=spec, samples=samples, smooth_base=smooth_base,
                      pullback_mode=pullback_mode, score=score)


def _gradient_image(model, params, images, classes, method, noise, samples, rng,
                    smooth_base, score, with_logits):
  _check(images, method, score)
  if not isinstance(classes, (int, str, tuple)):
    classes = tuple(int(c) for c in classes)
  spec, select = _target_select(classes, None, model.num_classes, images.shape)
  return saliency_jit(model, params, images, select, rng, noise, method=method,
                      spec=spec, samples=samples, smooth_base=smooth_base,
                      score=score, magnitudes=True, with_logits=with_logits)


def gradient_image(model: nn.Module, params, images: jax.Array, *,
                   classes: int | str | Sequence[int] = (1, 2, 3),
                   method: str = "guided", noise: float = 0.15,
                   samples: int = 16, rng: jax.Array | None = None,
                   smooth_base: str = "vanilla",
                   score: str = "probability") -> jax.Array:
  """The paper's gradient image: ``G = sum_{c in classes} |saliency_c|``.

  docs/design.md#the-gradient-image: by default the tissue classes WM, GM and CSF (1, 2, 3)
  with Guided Backpropagation, all from one forward pass, the sum taken in
  the same compiled program.

  Args:
    model, params, images (B, H, W, 1), method, noise, samples, rng,
      smooth_base, score: as :func:`saliency`.
    classes: a tuple of class indices, a single index, or "all".

  Returns:
    (B, H, W) non-negative float.
  """
  return _gradient_image(model, params, images, classes, method, noise, samples,
                         rng, smooth_base, score, with_logits=False)


def gradient_image_and_logits(model: nn.Module, params, images: jax.Array, *,
                              classes: int | str | Sequence[int] = (1, 2, 3),
                              method: str = "guided", noise: float = 0.15,
                              samples: int = 16, rng: jax.Array | None = None,
                              smooth_base: str = "vanilla",
                              score: str = "probability"
                              ) -> tuple[jax.Array, jax.Array]:
  """:func:`gradient_image` and the network's logits, from one forward pass.

  The guided (and deconvnet) ReLU's forward is ``max(x, 0)``, so the forward
  pass that the saliency is pulled back through (``jax.vjp``) is the plain
  ReLU U-Net's: its logits are the segmentation, and a caller that needs both
  (the removal pipeline) saves a second forward pass. For ``"smoothgrad"``,
  whose forward passes see noisy copies, one extra forward pass of the clean
  images gives the logits.

  Args:
    model, params, images (B, H, W, 1), classes, method, noise, samples, rng,
      smooth_base, score: as :func:`gradient_image`.

  Returns:
    ``(g, logits)``: the gradient image (B, H, W), equal to
    :func:`gradient_image`'s, and ``model.apply({"params": params}, images)``
    (B, H, W, C).

  Example::

    g, logits = gradient_image_and_logits(model, params, images)
    labels = jnp.argmax(logits, axis=-1)
  """
  return _gradient_image(model, params, images, classes, method, noise, samples,
                         rng, smooth_base, score, with_logits=True)
