"""Supervised baseline (METHOD 7.7): labeled data only; protocol: `common.BaseAlgorithm`."""

from typing import NamedTuple

from stssl_jax.algorithms import common

USES_UNLABELED = False


class State(NamedTuple):
  """No running statistics."""


def init_state(config, num_classes, lb_prevalence=None) -> State:
  del config, num_classes, lb_prevalence
  return State()


def loss_terms(lb_logits, labels, strong_logits, targets, state, config, step):
  """Mean CE (or BCE) on the labeled batch; strong logits and targets are unused."""
  del strong_logits, targets, state, step
  sup = common.sup_loss(lb_logits, labels, config.multilabel)
  return sup, {'sup_loss': sup}
