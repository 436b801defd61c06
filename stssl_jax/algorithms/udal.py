"""UDAL (METHOD 7.6): distribution alignment as logit adjustment, with an alpha schedule.

Protocol: `common.BaseAlgorithm`. Settings live in `config.udal` (ema_p, a_min, k, dist_uniform,
student_pbar, min_prevalence); T_total is `config.num_steps`. Hard labels and the fixed mask
come from the raw weak probabilities; the adjustments `log adj(.)` are added to the logits
before CE/BCE and travel in the Targets, so the STSSL student can swap its own in.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from stssl_jax.algorithms import common, fixmatch


class State(NamedTuple):
  """da: the pseudo-labeller's (teacher's) DistAlign. student_da: the STSSL student's."""
  da: common.DistAlign
  student_da: common.DistAlign


class Targets(NamedTuple):
  """label, weight: as FixMatch. sup_shift, unsup_shift: [C] log adjustments for the logits."""
  label: jax.Array
  weight: jax.Array
  sup_shift: jax.Array
  unsup_shift: jax.Array


def _tracks_target(config):
  return not config.multilabel and not config.udal.dist_uniform


def needs(config):
  return {'weak_lb'} if _tracks_target(config) else set()


def init_state(config, num_classes, lb_prevalence=None) -> State:
  """Multi-label p_data is the fixed labeled prevalence; single-label starts uniform."""
  if config.multilabel and lb_prevalence is None:
    raise ValueError('multi-label UDAL needs lb_prevalence (labeled class prevalence)')
  prior = lb_prevalence if config.multilabel else None
  da = common.dist_align_init(num_classes, config.multilabel, prior)
  return State(da, da)


def alpha(config, step):
  """`1 - (1 - a_min) (t / T_total)^k`."""
  t = jnp.asarray(step, common.float_dtype()) / config.num_steps
  return 1.0 - (1.0 - config.udal.a_min) * t ** config.udal.k


def adjustment(dist, p_data, alpha_t, config):
  """`dist / (g + 1e-9)` with g the p_data^alpha target (normalised, or per class vs 1-p)."""
  p = jnp.maximum(p_data, config.udal.min_prevalence)
  if config.multilabel:
    g = p ** alpha_t / ((1 - p) ** alpha_t + p ** alpha_t)
  else:
    g = p ** alpha_t / jnp.sum(p ** alpha_t)
  return dist / (g + 1e-9)


def _update(da, lb_logits, ulb_logits, config):
  probs = lambda z: common.probs(jax.lax.stop_gradient(z), config.multilabel)
  p_lb = probs(lb_logits) if _tracks_target(config) else None
  return common.dist_align_update(da, probs(ulb_logits), config.udal.ema_p, p_lb)


def make_targets(state, weak_logits, config, step, extras=None):
  """Updates p_model (and p_data), then labels, mask and both log adjustments."""
  da = _update(state.da, extras.weak_lb if extras else None, weak_logits, config)
  _, fm, metrics = fixmatch.make_targets(fixmatch.State(), weak_logits, config, step)
  a = alpha(config, step)
  targets = Targets(fm.label, fm.weight,
                    jnp.log(adjustment(da.p_target, da.p_target, a, config)),
                    jnp.log(adjustment(da.p_model, da.p_target, a, config)))
  metrics['alpha'] = a
  return state._replace(da=da), targets, metrics


def student_targets(state, targets, lb_logits, strong_logits, config, step):
  """Updates the student's own estimate; it replaces the teacher's p_model only when
  `udal.student_pbar = 'student'` (the original reads the teacher's, [QUIRK] METHOD 7.6)."""
  student_da = _update(state.student_da, lb_logits, strong_logits, config)
  state = state._replace(student_da=student_da)
  if config.udal.student_pbar == 'student':
    shift = adjustment(student_da.p_model, state.da.p_target, alpha(config, step), config)
    targets = targets._replace(unsup_shift=jnp.log(shift))
  elif config.udal.student_pbar != 'teacher':
    raise ValueError(f'udal.student_pbar must be teacher or student, got '
                     f'{config.udal.student_pbar!r}')
  return state, targets


def loss_terms(lb_logits, labels, strong_logits, targets, state, config, step):
  """`L_sup(z_l + log adj(p_data), y) + lambda_u L_u(z_s + log adj(pbar), yhat, M)`."""
  del state, step
  multilabel = config.multilabel
  sup = common.sup_loss(lb_logits + targets.sup_shift, labels, multilabel)
  unsup = common.consistency_loss(strong_logits + targets.unsup_shift, targets.label,
                                  targets.weight, multilabel)
  return sup + config.lambda_u * unsup, {'sup_loss': sup, 'unsup_loss': unsup}
