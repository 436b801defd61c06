"""The STSSL wrapper (METHOD 5-6), written once for every base algorithm.

The teacher runs the base algorithm with metadata and owns all running statistics; the
student gets the base algorithm's loss terms against the teacher's targets, plus feature
distillation of its placeholder token towards the teacher's metadata token. Which rows the
forwards hold is the train step's business: `[l; s]`, or `[l; l,s; s]` when the base needs
labeled strong views (DeFixMatch); distillation pairs all of them row by row (METHOD 6).
"""

import jax
import jax.numpy as jnp

from stssl_jax.algorithms import common


def step_losses(base, config, step, algo_state, targets, labels, teacher_out, student_out,
                n_lb):
  """Total STSSL loss `L_T + L_S` (METHOD 5, steps 4-6) and the updated algorithm state.

  Args:
    base: base-algorithm module (`common.BaseAlgorithm`).
    config: run config (lambda_u, lambda_d, distill, multilabel, ...).
    step: int32 scalar, 0-based update index.
    algo_state: the base algorithm's State after this step's teacher update.
    targets: the teacher's Targets for the unlabeled rows (detached).
    labels: [B_l] int or [B_l, C] multi-hot ground truth.
    teacher_out: (logits [R, C], feats) of the teacher on the labeled rows then the strong
      unlabeled rows, with metadata.
    student_out: (logits [R, C], feats) of the student on the same rows.
    n_lb: number of labeled rows (B_l, or 2 B_l with labeled strong views).
  Returns:
    (scalar loss, metrics dict with teacher/student terms, State after the optional
    `base.student_targets` update from the student's detached logits).
  """
  (t_logits, t_feats), (s_logits, s_feats) = teacher_out, student_out
  loss_t, terms_t = base.loss_terms(t_logits[:n_lb], labels, t_logits[n_lb:], targets,
                                    algo_state, config, step)
  hooks = common.hooks(base)
  s_targets = targets
  if hooks.student_targets is not None:
    s_detached = jax.lax.stop_gradient(s_logits)
    algo_state, s_targets = hooks.student_targets(algo_state, targets, s_detached[:n_lb],
                                                 s_detached[n_lb:], config, step)
  loss_s, terms_s = base.loss_terms(s_logits[:n_lb], labels, s_logits[n_lb:], s_targets,
                                    algo_state, config, step)
  # Rows are paired: the same labeled (and labeled strong) image and strong view in both.
  distill = common.distill_loss(s_feats['meta'], t_feats['meta'], config.distill)
  if config.distill == 'none' or config.lambda_d == 0:
    distill = jnp.zeros_like(loss_s)
  gate = hooks.distill_gate(config, step) if hooks.distill_gate is not None else 1.0
  loss_s = loss_s + config.lambda_d * gate * distill
  metrics = {f'teacher/{k}': v for k, v in terms_t.items()}
  metrics.update({f'student/{k}': v for k, v in terms_s.items()})
  metrics.update({'teacher/loss': loss_t, 'student/loss': loss_s, 'student/distill_loss': distill})
  return loss_t + loss_s, metrics, algo_state


def losses(base, config, step, algo_state, targets, labels, teacher_out, student_out, n_lb):
  """`step_losses` without the state: (scalar loss, metrics)."""
  loss, metrics, _ = step_losses(base, config, step, algo_state, targets, labels, teacher_out,
                                 student_out, n_lb)
  return loss, metrics
