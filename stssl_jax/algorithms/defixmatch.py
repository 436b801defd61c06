"""DeFixMatch (METHOD 7.3): FixMatch debiased with strongly augmented labeled views.

Protocol: `common.BaseAlgorithm`. The batch also carries `lb_image_strong`; both forwards see
`[x_l; x_l,s; x_s]` (the wrapper hands `lb_logits = [z_l; z_l,s]`, [2 B_l, C]). The "anti"
term scores the labeled strong view against the hard pseudo-labels and fixed-threshold mask
of the pseudo-labeller's **weak labeled** logits (ground truth is not used, quirk Q11); in
STSSL both come from the teacher and the student reuses them.
"""

from typing import NamedTuple

import jax

from stssl_jax.algorithms import common, fixmatch

State = fixmatch.State
init_state = fixmatch.init_state
LAMBDA_U = 0.5  # The released weight of the unlabeled term (METHOD 10), on both datasets.


class Targets(NamedTuple):
  """label, weight: unlabeled pseudo-labels and mask ([B_u] or [B_u, C]).

  lb_label, lb_weight: anti pseudo-labels and mask of the labeled rows ([B_l] or [B_l, C]).
  """
  label: jax.Array
  weight: jax.Array
  lb_label: jax.Array
  lb_weight: jax.Array


def needs(config):
  del config
  return {'weak_lb', 'lb_strong'}


def make_targets(state, weak_logits, config, step, extras=None):
  """FixMatch targets for the unlabeled rows and for the weak labeled rows (extras.weak_lb)."""
  state, ulb, metrics = fixmatch.make_targets(state, weak_logits, config, step)
  _, lb, _ = fixmatch.make_targets(state, extras.weak_lb, config, step)
  metrics['anti_mask_ratio'] = lb.weight.mean()
  return state, Targets(ulb.label, ulb.weight, lb.label, lb.weight), metrics


def loss_terms(lb_logits, labels, strong_logits, targets, state, config, step):
  """`1/2 [L_sup(z_l) + L_sup(z_l,s)] + lambda_u (L_u - L_anti)`; lb_logits is [2 B_l, C]."""
  del state, step
  multilabel = config.multilabel
  z_l, z_ls = lb_logits[:labels.shape[0]], lb_logits[labels.shape[0]:]
  sup_l = common.sup_loss(z_l, labels, multilabel)
  sup_ls = common.sup_loss(z_ls, labels, multilabel)
  sup = (1 / 2) * (sup_l + sup_ls)
  unsup = common.consistency_loss(strong_logits, targets.label, targets.weight, multilabel)
  anti = common.consistency_loss(z_ls, targets.lb_label, targets.lb_weight, multilabel)
  loss = sup + config.lambda_u * (unsup - anti)
  return loss, {'sup_loss': sup, 'sup_loss_lb': sup_l, 'sup_loss_lb_strong': sup_ls,
                'unsup_loss': unsup, 'anti_loss': anti}
