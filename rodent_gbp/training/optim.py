"""The optimiser of training and the stop on a non-finite step.

* :func:`learning_rate_fn`: Keras' time-based decay ``lr_t = lr0 / (1 + decay * t)``.
* :func:`make_optimizer`: SGD with momentum (``paper``, ``default``) or Adam on
  that schedule; when ``config.clip_grad_norm`` > 0 the gradient is first
  clipped to that global norm (``optax.clip_by_global_norm``, :func:`clip_first`;
  ``default`` clips, ``paper`` does not).
* :func:`check_finite`: the end-of-epoch check of the per-step losses and
  gradient norms that ``train.train_and_evaluate`` gathers; the first
  non-finite step raises :class:`~rodent_gbp.errors.TrainingError`.
"""

from __future__ import annotations

import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rodent_gbp import configs
from rodent_gbp.errors import TrainingError


def learning_rate_fn(config: configs.Config) -> Callable[[jax.Array], jax.Array]:
  """Time-based decay ``lr_t = lr0 / (1 + decay * t)``, t = update count.

  The first update uses t = 0 (optax evaluates the schedule before counting),
  as Keras' SGD ``decay`` argument does.
  """
  lr0, decay = config.learning_rate, config.decay

  def schedule(t: jax.Array) -> jax.Array:
    return lr0 / (1.0 + decay * jnp.asarray(t, jnp.float32))

  return schedule


def make_optimizer(config: configs.Config) -> optax.GradientTransformation:
  """SGD with momentum (``paper``/``default``) or Adam, on the decayed lr;
  gradients first clipped to global norm ``config.clip_grad_norm`` when > 0
  (:func:`clip_first`).

  The state is the optimiser's own with or without clipping, so a checkpoint
  saved without clipping (e.g. before ``default`` clipped) resumes with it,
  and the other way round.
  """
  lr = learning_rate_fn(config)
  if config.optimizer == "sgd":
    opt = optax.sgd(lr, momentum=config.momentum or None, nesterov=config.nesterov)
  elif config.optimizer == "adam":
    opt = optax.adam(lr)
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use 'sgd' or 'adam'")
  return clip_first(opt, config.clip_grad_norm) if config.clip_grad_norm > 0 else opt


def clip_first(opt: optax.GradientTransformation, max_norm: float
               ) -> optax.GradientTransformation:
  """``optax.chain(optax.clip_by_global_norm(max_norm), opt)`` keeping ``opt``'s state.

  The clip is stateless (``EmptyState``); ``chain`` would still wrap the state
  in a tuple with it, a different pytree than ``opt``'s, which a checkpoint
  of ``opt`` could not be restored into.
  """
  clip = optax.clip_by_global_norm(max_norm)

  def update(grads, state, params=None):
    grads, _ = clip.update(grads, clip.init(grads), params)
    return opt.update(grads, state, params)

  return optax.GradientTransformation(opt.init, update)


def check_finite(losses_, grad_norms, *, config: configs.Config, epoch: int,
                 first_step: int, checkpoint_dir: str | pathlib.Path) -> None:
  """Raises ``TrainingError`` at the first step whose loss or gradient norm is
  not finite.

  Args:
    losses_, grad_norms: (steps,) per-step values of one epoch, in order.
    config: the run's config (the advice names its settings).
    epoch: the epoch, counted from 0 (the message counts from 1).
    first_step: updates applied before the epoch's first one (the message
      counts steps from 1, so its first step is ``first_step + 1``).
    checkpoint_dir: where the earlier epochs' checkpoints are.
  """
  losses_, grad_norms = np.asarray(losses_), np.asarray(grad_norms)
  bad = ~(np.isfinite(losses_) & np.isfinite(grad_norms))
  if not bad.any():
    return
  i = int(np.argmax(bad))
  what = "loss" if not np.isfinite(losses_[i]) else "gradient"
  advice = [f"lower the learning rate (--learning_rate, now {config.learning_rate:g})"]
  if config.clip_grad_norm <= 0:
    advice.append("clip gradients (config field clip_grad_norm > 0, --clip_grad_norm "
                  f"of experiments/train.py; default clips at "
                  f"{configs.get_config('default').clip_grad_norm:g})")
  if config.name != "default":
    advice.append("train with the default config")
  raise TrainingError(
      f"non-finite {what} at epoch {epoch + 1}, step {first_step + i + 1} "
      f"(config {config.name!r}): training stopped; {', '.join(advice[:-1])}"
      f"{', or ' if len(advice) > 1 else ''}{advice[-1]}. "
      + (f"The checkpoints of the earlier epochs in {checkpoint_dir} are kept; this epoch "
         "is not validated or saved." if epoch > 0 else
         f"No epoch was completed, so {checkpoint_dir} holds no checkpoint."))
