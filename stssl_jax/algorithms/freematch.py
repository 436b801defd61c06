"""FreeMatch (METHOD 7.1): self-adaptive thresholds, a fairness term, supervised warm-up.

Protocol: `common.BaseAlgorithm`. Settings live in `config.freematch` (ema_p, lambda_e,
sup_warmup_steps, use_quantile, clip_thresh, empty_class). The statistics update every step,
before the mask, also during warm-up; in STSSL they come from the teacher only and the
student's fairness term reads them.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from stssl_jax.algorithms import common
from stssl_jax.algorithms.fixmatch import Targets


class State(NamedTuple):
  """time_p: () single-label, [C] multi-label. p_model, label_hist: [C]."""
  time_p: jax.Array
  p_model: jax.Array
  label_hist: jax.Array


def init_state(config, num_classes, lb_prevalence=None) -> State:
  """Single-label: everything 1/C. Multi-label: 0.5 per class."""
  del lb_prevalence
  if config.freematch.use_quantile and config.multilabel:
    raise ValueError('freematch.use_quantile is single-label only (as in the original)')
  full = lambda v: jnp.full((num_classes,), v, common.float_dtype())
  if config.multilabel:
    return State(full(0.5), full(0.5), full(0.5))
  p = full(1.0 / num_classes)
  return State(jnp.mean(p), p, p)


def make_targets(state, weak_logits, config, step, extras=None):
  """Updates the statistics from weak probs P [B_u, C], then masks with them."""
  del step, extras
  fm, multilabel = config.freematch, config.multilabel
  weak_logits = jax.lax.stop_gradient(weak_logits)
  p = common.probs(weak_logits, multilabel)
  if multilabel:
    conf, hist = jnp.maximum(p, 1 - p), jnp.mean((p >= 0.5).astype(p.dtype), axis=0)
    batch_tau = jnp.mean(conf, axis=0)
  else:
    conf, k = jnp.max(p, axis=-1), jnp.argmax(p, axis=-1)
    counts = jnp.sum(jax.nn.one_hot(k, p.shape[-1], dtype=p.dtype), axis=0)
    hist = counts / jnp.sum(counts)
    batch_tau = jnp.quantile(conf, 0.8) if fm.use_quantile else jnp.mean(conf)
  time_p = common.ema_update(state.time_p, batch_tau, fm.ema_p)
  if fm.clip_thresh:
    time_p = jnp.clip(time_p, 0.0, 0.95)
  state = State(time_p, common.ema_update(state.p_model, jnp.mean(p, axis=0), fm.ema_p),
                common.ema_update(state.label_hist, hist, fm.ema_p))
  if multilabel:
    scale = jnp.maximum(state.p_model, 1 - state.p_model)
    mod = jnp.where(p >= 0.5, state.p_model / scale, (1 - state.p_model) / scale)
    mask = conf >= state.time_p * mod
  else:
    mod = state.p_model / jnp.max(state.p_model)
    mask = conf >= state.time_p * mod[k]
  targets = Targets(common.hard_labels(weak_logits, multilabel), mask.astype(p.dtype))
  return state, targets, {'mask_ratio': targets.weight.mean(), 'time_p': jnp.mean(time_p)}


def fairness_loss(mask, strong_logits, p_model, label_hist, multilabel: bool,
                  empty_class: str = 'nan'):
  """The fairness term `L_fair` (a negative cross-entropy, minimised) and the mean of hs.

  Args:
    mask: [B_u] (single-label) or [B_u, C] mask of the teacher.
    strong_logits: [B_u, C] strong-view logits (teacher's or student's).
    p_model, label_hist: [C] the teacher's pbar and h.
    multilabel: task type.
    empty_class: multi-label classes with no masked entry: 'nan' (the original's 0/0) or
      'drop' (left out of the sum).
  Returns:
    (scalar loss, scalar mean of the strong-view histogram hs). Finite (0-weighted) when the
    mask is empty; the caller adds it only when `sum(mask) > 0`.
  """
  inv = lambda x: jax.lax.stop_gradient(common.inv_or_zero(x))  # The original detaches these.
  div = common.safe_div
  if not multilabel:
    q = jax.nn.softmax(strong_logits, axis=-1)
    w, n = mask[:, None], jnp.sum(mask)
    onehot = jax.nn.one_hot(jnp.argmax(q, -1), q.shape[-1], dtype=q.dtype)
    hs = div(jnp.sum(onehot * w, axis=0), n)
    a = p_model * inv(label_hist)
    a = a / jnp.sum(a)
    b = div(jnp.sum(q * w, axis=0), n) * inv(hs)
    b = div(b, jnp.sum(b))
    return jnp.sum(a * jnp.log(b + 1e-12)), jnp.mean(hs)
  q = jax.nn.sigmoid(strong_logits)
  s = jnp.sum(mask, axis=0)
  hs = div(jnp.sum((q >= 0.5).astype(q.dtype) * mask, axis=0), s)
  a1, a0 = p_model * inv(label_hist), (1 - p_model) * inv(1 - label_hist)
  a = a1 / (a1 + a0)
  big_a = div(jnp.sum(q * mask, axis=0), s) * inv(hs)
  big_b = div(jnp.sum((1 - q) * mask, axis=0), s) * inv(1 - hs)
  b = common.torch_ratio(big_a, jnp.where(big_a + big_b == 0, 1.0, big_a + big_b))
  # The barrier keeps XLA from folding (1 - b) + 1e-12 into 1.000000000001 - b, which moves
  # the dominant log(1e-12) of a class with b = 1 by 1e-4 (quirk Q6).
  not_b = jax.lax.optimization_barrier(1 - b)
  per_class = a * jnp.log(b + 1e-12) + (1 - a) * jnp.log(not_b + 1e-12)
  per_class = jnp.where(s > 0, per_class, 0.0)
  loss, hs_mean = jnp.sum(per_class), jnp.mean(hs)
  if empty_class == 'nan':
    # The original divides 0 by 0 for such a class ([QUIRK] METHOD 7.1); the NaN is a
    # constant here, so it cannot leak NaN gradients through the warm-up switch.
    nan = jnp.where(jnp.any(s == 0), jnp.nan, 0.0).astype(loss.dtype)
    loss, hs_mean = loss + nan, hs_mean + nan
  elif empty_class != 'drop':
    raise ValueError(f'freematch.empty_class must be nan or drop, got {empty_class!r}')
  return loss, hs_mean


def in_warmup(config, step):
  return step < config.freematch.sup_warmup_steps


def distill_gate(config, step):
  """STSSL: no distillation during the supervised warm-up (METHOD 7.1)."""
  return jnp.where(in_warmup(config, step), 0.0, 1.0)


def loss_terms(lb_logits, labels, strong_logits, targets, state, config, step):
  """`L_sup + lambda_u L_u + lambda_e L_fair`, or `L_sup` only during warm-up."""
  multilabel = config.multilabel
  sup = common.sup_loss(lb_logits, labels, multilabel)
  unsup = common.consistency_loss(strong_logits, targets.label, targets.weight, multilabel)
  ent, hs_mean = fairness_loss(targets.weight, strong_logits, state.p_model, state.label_hist,
                               multilabel, config.freematch.empty_class)
  computed = jnp.sum(targets.weight) > 0
  ent = jnp.where(computed, ent, 0.0)
  full = sup + config.lambda_u * unsup + config.freematch.lambda_e * ent
  loss = jnp.where(in_warmup(config, step), sup, full)
  return loss, {'sup_loss': sup, 'unsup_loss': unsup, 'ent_loss': ent,
                'ent_hist_mean': hs_mean, 'ent_loss_computed': computed.astype(sup.dtype)}
