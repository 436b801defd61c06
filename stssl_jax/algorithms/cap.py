"""CAP (METHOD 7.4): class-aware quantile thresholds and the asymmetric loss; multi-label only.

Protocol: `common.BaseAlgorithm`. The pseudo-labeller is the EMA model on the weak view
(`config.pseudo_label_source = 'ema'`; in STSSL the EMA teacher with metadata). Its sigmoid
probabilities go into a FIFO queue of the most recent `cap.queue_length` rows (float32, as the
original), whose per-class quantiles at the labeled prevalence give the thresholds. Settings
live in `config.cap` (queue_length, pos_per, neg_per, gamma_pos, gamma_neg, clip, eps).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from stssl_jax.algorithms import common
from stssl_jax.algorithms.fixmatch import Targets


class State(NamedTuple):
  """queue: float32 [L, C] FIFO of probabilities; rows [0, filled) are valid until it is full.

  pointer: int32 next row to write. filled: int32 number of valid rows (at most L).
  prevalence: [C] labeled-set class prevalence pi.
  """
  queue: jax.Array
  pointer: jax.Array
  filled: jax.Array
  prevalence: jax.Array


def init_state(config, num_classes, lb_prevalence=None) -> State:
  if not config.multilabel:
    raise ValueError('CAP is only designed for multi-label problems (config.multilabel=False)')
  if lb_prevalence is None:
    raise ValueError('CAP needs lb_prevalence, the labeled-set class prevalence [C]')
  queue = jnp.zeros((config.cap.queue_length, num_classes), jnp.float32)
  zero = jnp.zeros((), jnp.int32)
  return State(queue, zero, zero, jnp.asarray(lb_prevalence, common.float_dtype()))


def push(state: State, p) -> State:
  """Writes the rows of p [B, C] at the pointer, wrapping around (FIFO)."""
  size = state.queue.shape[0]
  rows = (state.pointer + jnp.arange(p.shape[0])) % size
  queue = state.queue.at[rows].set(p.astype(jnp.float32))
  return state._replace(queue=queue, pointer=(state.pointer + p.shape[0]) % size,
                        filled=jnp.minimum(state.filled + p.shape[0], size))


def quantiles(state: State, levels):
  """Per-class `v[clamp(floor(n q_c), 0, n-1)]` of the n valid rows sorted ascending.

  Args:
    state: the queue.
    levels: sequence of [C] quantile levels q.
  Returns:
    list of float32 [C] thresholds, one per level (one sort for all of them).
  """
  valid = jnp.arange(state.queue.shape[0])[:, None] < state.filled
  # Invalid rows sort last, so the first n sorted rows are exactly the valid values.
  ordered = jnp.sort(jnp.where(valid, state.queue, jnp.inf), axis=0)
  n = state.filled
  out = []
  for q in levels:
    index = jnp.clip(jnp.floor(n.astype(q.dtype) * q), 0, n - 1).astype(jnp.int32)
    out.append(jnp.take_along_axis(ordered, index[None, :], axis=0)[0])
  return out


def thresholds(state: State, config):
  """(theta, pos, neg) [C]: Q(1 - pi), Q(1 - pos_per pi), Q(neg_per (1 - pi))."""
  pi = state.prevalence
  return tuple(quantiles(state, (1 - pi, 1 - config.cap.pos_per * pi,
                                 config.cap.neg_per * (1 - pi))))


def make_targets(state, weak_logits, config, step, extras=None):
  """Pushes the batch, then `yhat = 1[p >= theta]`, `M = 1[p >= pos] or 1[p <= neg]`."""
  del step, extras
  p = jax.nn.sigmoid(jax.lax.stop_gradient(weak_logits))
  state = push(state, p)
  # float64 probs against the float32 thresholds promoted, as torch compares (quirk Q9).
  theta, pos, neg = (t.astype(p.dtype) for t in thresholds(state, config))
  mask = ((p >= pos) | (p <= neg)).astype(p.dtype)
  targets = Targets((p >= theta).astype(p.dtype), mask)
  return state, targets, {'mask_ratio': mask.mean(), 'threshold_mean': jnp.mean(theta)}


def asl(logits, targets, config):
  """Element-wise ASL [B, C] with `config.cap`'s gamma_pos, gamma_neg, clip and eps."""
  c = config.cap
  return common.asymmetric_loss(logits, targets, c.gamma_pos, c.gamma_neg, c.clip, c.eps)


def loss_terms(lb_logits, labels, strong_logits, targets, state, config, step):
  """`mean ASL(z_l, y) + lambda_u sum(M ASL(z_s, yhat)) / (sum M + 1e-8)`."""
  del state, step
  sup = jnp.mean(asl(lb_logits, labels, config))
  w = targets.weight
  unsup = jnp.sum(asl(strong_logits, targets.label, config) * w) / (jnp.sum(w) + 1e-8)
  return sup + config.lambda_u * unsup, {'sup_loss': sup, 'unsup_loss': unsup}
