"""SoftMatch (METHOD 7.2): truncated-Gaussian weights on distribution-aligned confidences.

Protocol: `common.BaseAlgorithm`; the loss is FixMatch's with a real-valued weight in place of the
mask. Settings live in `config.softmatch` (ema_p, n_sigma, dist_align, dist_uniform,
per_class). Distribution alignment feeds only the weights; pseudo-labels come from the raw
weak logits. In STSSL all of it is the teacher's.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from stssl_jax.algorithms import common
from stssl_jax.algorithms.fixmatch import Targets, loss_terms  # pylint: disable=unused-import


class State(NamedTuple):
  """da: common.DistAlign. mu, var: () single-label, [C] multi-label Gaussian EMAs."""
  da: common.DistAlign
  mu: jax.Array
  var: jax.Array


def _tracks_target(config):
  """Single-label p_target is an EMA of labeled probs unless dist_uniform (type 'model')."""
  return not config.multilabel and not config.softmatch.dist_uniform


def needs(config):
  return {'weak_lb'} if config.softmatch.dist_align and _tracks_target(config) else set()


def init_state(config, num_classes, lb_prevalence=None) -> State:
  """mu = 1/C, var = 1 (single-label scalars) or 0.5 / 1 per class (multi-label).

  Multi-label DA aligns to the fixed labeled prevalence `lb_prevalence` [C].
  """
  if config.softmatch.per_class:
    raise NotImplementedError('softmatch.per_class is not implemented (off in every run)')
  dtype = common.float_dtype()
  if config.multilabel:
    if lb_prevalence is None and config.softmatch.dist_align:
      raise ValueError('multi-label SoftMatch needs lb_prevalence (labeled class prevalence)')
    da = common.dist_align_init(num_classes, True, lb_prevalence)
    return State(da, jnp.full((num_classes,), 0.5, dtype), jnp.ones((num_classes,), dtype))
  da = common.dist_align_init(num_classes, False)
  return State(da, jnp.asarray(1.0 / num_classes, dtype), jnp.asarray(1.0, dtype))


def gaussian_weight(conf, mu, var, n_sigma):
  """`exp(-(min(conf - mu, 0))^2 / (2 var / n_sigma^2))`: 1 above the mean, decaying below."""
  return jnp.exp(-(jnp.minimum(conf - mu, 0.0) ** 2) / (2 * var / (n_sigma ** 2)))


def make_targets(state, weak_logits, config, step, extras=None):
  """Aligns the weak probs, updates mu/var (unbiased variance), weights, hard labels."""
  del step
  sm, multilabel = config.softmatch, config.multilabel
  weak_logits = jax.lax.stop_gradient(weak_logits)
  p = common.probs(weak_logits, multilabel)
  da = state.da
  if sm.dist_align:
    p_lb = None
    if _tracks_target(config):
      p_lb = common.probs(jax.lax.stop_gradient(extras.weak_lb), multilabel)
    da = common.dist_align_update(da, p, sm.ema_p, p_lb)
    p = common.dist_align(p, da, multilabel)
  conf = jnp.maximum(p, 1 - p) if multilabel else jnp.max(p, axis=-1)
  mu = common.ema_update(state.mu, jnp.mean(conf, axis=0), sm.ema_p)
  var = common.ema_update(state.var, jnp.var(conf, axis=0, ddof=1), sm.ema_p)
  weight = gaussian_weight(conf, mu, var, sm.n_sigma)
  targets = Targets(common.hard_labels(weak_logits, multilabel), weight)
  return State(da, mu, var), targets, {'mask_ratio': weight.mean(), 'weight_mu': jnp.mean(mu)}
