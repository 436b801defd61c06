"""CDMAD (METHOD 7.5): classifier debiasing with the logits of a blank image.

Protocol: `common.BaseAlgorithm`; the loss is FixMatch's with soft targets. From step
`cdmad.debias_start` on, the bias b [1, C] is the pseudo-labeller's logits for an all-ones
image (in normalised input space), computed without gradient and in training mode from the
online params (`extra_inputs`, as the original's get_bias); before that b = 0. Targets are
`prob(sg[z_w] - b)` and the fixed-threshold mask is applied to them. At evaluation the same b,
from the EMA weights in eval mode, is subtracted from the evaluated logits (`eval_logits`).
The train and eval steps call these two hooks without knowing what they compute.

STSSL: b is the teacher's output on the blank image without its metadata token, read from
the teacher backbone's untrained aux head (`cdmad.bias_head = 'quirk'`, released) or from
the trained joint head ('joint_head'); the model builds the aux head only in the first case.
"""

import jax
import jax.numpy as jnp

from stssl_jax.algorithms import common, fixmatch
from stssl_jax.algorithms.fixmatch import Targets, loss_terms  # pylint: disable=unused-import

State = fixmatch.State
init_state = fixmatch.init_state
BIAS_HEADS = ('quirk', 'joint_head')


def blank_bias(forward, like):
  """b [1, C]: the logits of an all-ones image shaped like `like` [B, H, W, C], no gradient.

  `forward(x) -> (logits, feats)` runs the pseudo-labeller's branch on images alone (the STSSL
  teacher without its metadata token). With the aux head (`bias_head = 'quirk'`) b is read
  from it, else from the branch's own (joint) head.
  """
  logits, feats = forward(jnp.ones((1,) + like.shape[1:], like.dtype))
  return jax.lax.stop_gradient(feats.get('aux_logits', logits))


def extra_inputs(forward, like, config):
  """`common.Extras` fields for `make_targets`: {'bias': b [1, C]} (`blank_bias`)."""
  del config
  return {'bias': blank_bias(forward, like)}


def eval_logits(logits, forward, like, config, num_updates):
  """Evaluated logits [B, C] debiased by b of the evaluated params (`debias_eval`)."""
  return debias_eval(logits, blank_bias(forward, like), config, num_updates)


def aux_head(config):
  """STSSL: the bias is read from the teacher backbone's own (untrained) head."""
  if config.cdmad.bias_head not in BIAS_HEADS:
    raise ValueError(f'cdmad.bias_head must be one of {BIAS_HEADS}, got '
                     f'{config.cdmad.bias_head!r}')
  return config.cdmad.bias_head == 'quirk'


def bias_active(config, step):
  """Whether the bias applies at update `step` (0-based)."""
  return step >= config.cdmad.debias_start


def make_targets(state, weak_logits, config, step, extras=None):
  """Soft targets `prob(z_w - b)` [B_u, C] and the fixed-threshold mask on them."""
  weak_logits = jax.lax.stop_gradient(weak_logits)
  bias = jnp.where(bias_active(config, step), jax.lax.stop_gradient(extras.bias), 0.0)
  t = common.probs(weak_logits - bias, config.multilabel)
  targets = Targets(t, common.fixed_mask(t, fixmatch.threshold_of(config), config.multilabel))
  return state, targets, {'mask_ratio': targets.weight.mean(),
                          'bias_abs_mean': jnp.mean(jnp.abs(bias))}


def debias_eval(logits, bias, config, num_updates):
  """Evaluation logits [B, C] minus b [1, C] once the bias is on.

  The original evaluates after the update with index `num_updates - 1` and gates the bias
  with that index, so the first evaluation at step == debias_start still has b = 0.
  """
  return logits - jnp.where(bias_active(config, num_updates - 1), bias, 0.0)
