"""FixMatch (METHOD 4-5): hard pseudo-labels from the weak view, fixed confidence mask.

The base-algorithm protocol every module here follows (STYLE habit 2):
  State                                  NamedTuple of running statistics (jit-friendly).
  init_state(config, num_classes, lb_prevalence=None)
                                         -> State. lb_prevalence: [C] labeled-set class
                                         prevalence (multi-label SoftMatch, UDAL, CAP).
  make_targets(state, weak_logits, config, step, extras=None)
                                         -> (State, Targets, metrics); from the detached
                                         weak unlabeled logits [B_u, C] of the pseudo-
                                         labeller and `common.Extras` (weak labeled logits,
                                         blank-image bias) when `needs` asks for them.
  loss_terms(lb_logits, labels, strong_logits, targets, state, config, step)
                                         -> (scalar loss, {name: scalar}). lb_logits holds
                                         [weak; strong] labeled rows [2 B_l, C] when
                                         `needs` has 'lb_strong', else [B_l, C].
Optional:
  needs(config) -> set of 'weak_lb' | 'bias' | 'lb_strong' (default: none).
  USES_UNLABELED = False                 supervised only.
  student_targets(state, targets, lb_logits, strong_logits, config, step)
                                         -> (State, Targets) for the STSSL student, from its
                                         detached logits (UDAL's student estimate).
  distill_gate(config, step) -> 0/1 scalar multiplying the distillation term (FreeMatch's
                                         supervised warm-up).
The STSSL wrapper (algorithms/stssl.py) calls these once for the teacher's statistics and
twice for the losses (teacher and student logits), so nothing is written twice.
"""

from typing import NamedTuple

import jax

from stssl_jax.algorithms import common


class State(NamedTuple):
  """FixMatch keeps no running statistics."""


class Targets(NamedTuple):
  """Pseudo-labels and their per-row (or per-entry) weights.

  label: int32 [B_u] (single-label) or multi-hot [B_u, C].
  weight: mask [B_u] or [B_u, C] (1 keeps the entry in the consistency loss).
  """
  label: jax.Array
  weight: jax.Array


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
