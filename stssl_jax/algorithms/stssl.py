"""The STSSL wrapper (METHOD 5-6), written once for every base algorithm.

The teacher runs the base algorithm with metadata and owns all running statistics; the
student gets the base algorithm's loss terms against the teacher's targets, plus feature
distillation of its placeholder token towards the teacher's metadata token.
"""

import jax.numpy as jnp

from stssl_jax.algorithms import common


def losses(base, config, step, algo_state, targets, labels, teacher_out, student_out, n_lb):
  """Total STSSL loss `L_T + L_S` (METHOD 5, steps 4-6).

  Args:
    base: base-algorithm module (protocol in fixmatch.py).
    config: run config (lambda_u, lambda_d, distill, multilabel, ...).
    step: int32 scalar, 0-based update index.
    algo_state: the base algorithm's State after this step's update.
    targets: the teacher's Targets for the unlabeled rows (detached).
    labels: [B_l] int or [B_l, C] multi-hot ground truth.
    teacher_out: (logits [B_l + B_u, C], feats) of the teacher on [x_l; x_s] with metadata.
    student_out: (logits [B_l + B_u, C], feats) of the student on [x_l; x_s].
    n_lb: B_l.
  Returns:
    (scalar loss, metrics dict with teacher/student terms).
  """
  (t_logits, t_feats), (s_logits, s_feats) = teacher_out, student_out
  loss_t, terms_t = base.loss_terms(t_logits[:n_lb], labels, t_logits[n_lb:], targets,
                                    algo_state, config, step)
  loss_s, terms_s = base.loss_terms(s_logits[:n_lb], labels, s_logits[n_lb:], targets,
                                    algo_state, config, step)
  # Rows are paired: the same labeled image and the same strong view in both networks.
  distill = common.distill_loss(s_feats['meta'], t_feats['meta'], config.distill)
  if config.distill == 'none' or config.lambda_d == 0:
    distill = jnp.zeros_like(loss_s)
  loss_s = loss_s + config.lambda_d * distill
  metrics = {f'teacher/{k}': v for k, v in terms_t.items()}
  metrics.update({f'student/{k}': v for k, v in terms_s.items()})
  metrics.update({'teacher/loss': loss_t, 'student/loss': loss_s, 'student/distill_loss': distill})
  return loss_t + loss_s, metrics
