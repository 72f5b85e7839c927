"""The saliency target (``config.saliency_score``) wherever a gradient image is made.

``probability`` (the paper's) must give exactly the gradient image the code
computed before the choice existed (``guided.gradient_image`` with its
defaults); ``logit`` must change it, in the raw pass, the paper's placer, the
improved placer's locating signal and the template bank.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_bundle
from rodent_gbp import bank as bank_lib
from rodent_gbp import configs
from rodent_gbp import correlate
from rodent_gbp import enhance
from rodent_gbp import guided
from rodent_gbp import parallel
from rodent_gbp import pipeline
from rodent_gbp import placement
from rodent_gbp.errors import UsageError


def _bundle(score: str = "probability"):
  yy, xx = np.mgrid[:16, :16]
  disc = (yy - 8) ** 2 + (xx - 8) ** 2 < 20
  masks = np.broadcast_to(disc, (3, 2, 16, 16)).copy()
  b = synthetic_bundle(masks, appearance=np.ones((3, 2, 16, 16), np.float32), seed=3)
  net = b.network("tissue")
  cfg = configs.override(net.config, saliency_score=score)
  return dataclasses.replace(b, networks={"tissue": dataclasses.replace(net, config=cfg)})


def _slices():
  rng = np.random.default_rng(0)
  return rng.uniform(0, 1, (2, 16, 16)).astype(np.float32)


def _reference(bundle, score="probability"):
  """The gradient image as the code computed it before: defaults of guided."""
  net = bundle.network("tissue")
  kw = {} if score == "probability" else {"score": score}
  return np.asarray(guided.gradient_image(net.model, net.params, _slices()[..., None], **kw))


def test_config_field_default_load_and_validation():
  assert configs.get_config("default").saliency_score == "probability"
  assert set(configs.SALIENCY_SCORES) == set(guided.SCORES)
  d = configs.get_config("smoke").to_dict()
  d.pop("saliency_score")  # a config stored before the field existed
  assert configs.from_dict(d).saliency_score == "probability"
  assert configs.from_dict({**d, "saliency_score": "logit"}).saliency_score == "logit"
  with pytest.raises(UsageError, match="saliency_score must be one of probability, logit"):
    configs.override(configs.get_config("smoke"), saliency_score="logits")
  with pytest.raises(UsageError, match="saliency_score"):
    configs.from_dict({**d, "saliency_score": "prob"})


@functools.partial(jax.jit, static_argnames=("model",))
def _old_raw_pass_batch(params, images, *, model):
  """``pipeline.raw_pass_batch`` as it was before the score was a setting."""
  g, logits = guided.gradient_image_and_logits(model, params, images)
  return {"labels": jnp.argmax(logits, axis=-1).astype(jnp.int32), "gradient": g}


@functools.partial(jax.jit, static_argnames=("model", "options"))
def _old_paper_batch(params, images, slice_index, bank_masks, bank_gradients, reference, *,
                     model, options):
  """``placement.paper_batch`` (signal ``enhanced``, gradient computed) as it was."""
  s = jnp.clip(slice_index, 0, bank_masks.shape[1] - 1)
  ref_mask = bank_masks[reference, s]
  template = placement.make_template(ref_mask, bank_gradients[reference, s], options.template,
                                     center=options.center, width=options.width)
  g = guided.gradient_image(model, params, images[..., None], classes=options.classes,
                            method=options.method)
  signal = enhance.enhance_gradient(g, center=options.center, width=options.width)
  corr, disp, placed = placement.place_mask(signal, template, ref_mask)
  return {"gradient": g, "signal": signal, "template": template, "correlation": corr,
          "displacement": disp, "placed": placed,
          "confidence": correlate.peak_confidence(corr)}


def _old(fn, bundle, arrays, **kw):
  net = bundle.network("tissue")
  return parallel.run_batched(lambda **a: fn(net.params, **a, model=net.model, **kw),
                              arrays, net.config.eval_batch_size)


def test_probability_reproduces_and_logit_changes_the_raw_pass():
  b = _bundle()
  prob = pipeline.raw_pass(_slices(), bundle=b)["gradient"]
  old = _old(_old_raw_pass_batch, b, {"images": _slices()[..., None]})["gradient"]
  np.testing.assert_array_equal(prob, old)
  logit = pipeline.raw_pass(_slices(), bundle=_bundle("logit"))["gradient"]
  np.testing.assert_allclose(logit, _reference(_bundle(), "logit"), rtol=1e-5, atol=1e-7)
  assert not np.allclose(logit, prob)


def test_probability_reproduces_and_logit_changes_the_placers_gradient_image():
  for score in ("probability", "logit"):
    b = _bundle(score)
    got = placement.place("gbp", _slices(), bundle=b).details.gradient
    ref = _reference(b, score)
    if score == "probability":
      np.testing.assert_array_equal(got, _old(
          lambda params, model, images, slice_index: _old_paper_batch(
              params, images, slice_index, b.bank.masks, b.bank.gradients,
              np.int32(b.bank.reference), model=model, options=placement.PaperOptions()),
          b, {"images": _slices(), "slice_index": np.arange(2, dtype=np.int32)})["gradient"])
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
      prob = got
    else:
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
      assert not np.allclose(got, prob)
    # The improved placer locates with the log of the same gradient image.
    sig = placement.search_signal(_slices(), placement.IMPROVED, bundle=b)
    np.testing.assert_allclose(sig, np.asarray(enhance.log_gradient(ref)), rtol=1e-5,
                               atol=1e-6)
  # The options follow the config; a given raw-pass gradient is reused only
  # when it is of the options' reading.
  b = _bundle("logit")
  assert placement.PaperOptions.from_config(b.network("tissue").config).score == "logit"
  planted = np.zeros((2, 16, 16), np.float32)
  got = placement.place("gbp", _slices(), bundle=b, gradient=planted).details.gradient
  np.testing.assert_array_equal(got, planted)
  opts = placement.PaperOptions(score="probability")
  got = placement.place_paper(_slices(), bundle=b, options=opts,
                              gradient=planted).details.gradient
  np.testing.assert_allclose(got, _reference(b), rtol=1e-5, atol=1e-7)


def test_template_bank_gradient_follows_the_score():
  b = _bundle()
  net = b.network("tissue")
  x = _slices()[..., None]
  prob = np.asarray(bank_lib.unit_gradient_image(net.params, x, model=net.model))
  np.testing.assert_array_equal(prob, np.asarray(bank_lib.unit_gradient_image(
      net.params, x, model=net.model, score="probability")))
  logit = np.asarray(bank_lib.unit_gradient_image(net.params, x, model=net.model,
                                                  score="logit"))
  assert not np.allclose(logit, prob)
  np.testing.assert_allclose(logit, np.asarray(bank_lib.scale_to_unit(
      _reference(b, "logit"))), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="score must be one of"):
    bank_lib.build_template_bank(net.model, net.params, [], score="odds")
