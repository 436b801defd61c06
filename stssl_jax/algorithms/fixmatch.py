"""FixMatch (METHOD 4-5): hard pseudo-labels from the weak view, fixed confidence mask.

Follows `common.BaseAlgorithm`; its `Targets` is `common.Targets`.
"""

from typing import NamedTuple

import jax

from stssl_jax.algorithms import common


class State(NamedTuple):
  """FixMatch keeps no running statistics."""


Targets = common.Targets


def threshold_of(config):
  """Scalar tau from `(tau,)` (or a bare number), or a (neg, pos) pair for multi-label."""
  t = config.threshold
  if not isinstance(t, (tuple, list)):
    return float(t)
  if len(t) == 1:
    return float(t[0])
  if len(t) == 2 and config.multilabel:
    return (float(t[0]), float(t[1]))
  raise ValueError(f'config.threshold must be (tau,) or, for multi-label, (tau_neg, tau_pos); '
                   f'got {t!r}')


def init_state(config, num_classes, lb_prevalence=None) -> State:
  del config, num_classes, lb_prevalence
  return State()


def make_targets(state, weak_logits, config, step, extras=None):
  """Hard pseudo-labels and the fixed-threshold mask from weak-view logits [B_u, C]."""
  del step, extras
  weak_logits = jax.lax.stop_gradient(weak_logits)
  p = common.probs(weak_logits, config.multilabel)
  targets = Targets(
      label=common.hard_labels(weak_logits, config.multilabel),
      weight=common.fixed_mask(p, threshold_of(config), config.multilabel))
  return state, targets, {'mask_ratio': targets.weight.mean()}


def loss_terms(lb_logits, labels, strong_logits, targets, state, config, step):
  """`L_sup(z_l, y) + lambda_u * L_u(z_s, yhat, M)`; returns (loss, {sup, unsup})."""
  del state, step
  sup = common.sup_loss(lb_logits, labels, config.multilabel)
  unsup = common.consistency_loss(strong_logits, targets.label, targets.weight, config.multilabel)
  return sup + config.lambda_u * unsup, {'sup_loss': sup, 'unsup_loss': unsup}
