"""Pure train and eval steps. `train.py` jits them once over the device mesh.

Batch keys (STYLE habit 7), global shapes:
  lb_image [B_l, S, S, 3], lb_label [B_l] (or [B_l, C]), lb_meta [B_l, 4],
  ulb_image_weak / ulb_image_strong [B_u, S, S, 3], ulb_meta [B_u, 4],
  ulb_label [B_u] (true labels: diagnostics only, never in a loss).
Eval batch keys: image [B, S, S, 3], label [B], meta [B, 4], mask [B] bool.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from stssl_jax import metrics as metrics_lib
from stssl_jax.algorithms import stssl as stssl_wrapper
from stssl_jax.models.stssl import STSSLModel
from stssl_jax.train_state import TrainState


def _forward(model, params, x, meta, rng, train, branch):
  """(logits, feats) of one branch: 'teacher' (needs meta), 'student' or 'plain'."""
  rngs = {'dropout': rng} if train else {}
  variables = {'params': params}
  if branch == 'teacher':
    return model.apply(variables, x, meta, train=train, rngs=rngs, method=STSSLModel.teacher)
  if branch == 'student':
    return model.apply(variables, x, train=train, rngs=rngs, method=STSSLModel.student)
  return model.apply(variables, x, train=train, rngs=rngs)


def _pseudo_label_quality(targets, true_labels, multilabel):
  """Accuracy of the accepted pseudo-labels and the mask ratio (single-label)."""
  if multilabel:
    return {}
  w = targets.weight
  correct = (targets.label == true_labels).astype(w.dtype)
  return {'pl_acc_masked': jnp.sum(correct * w) / jnp.maximum(jnp.sum(w), 1.0),
          'pl_acc_all': jnp.mean(correct)}


def loss_and_grads(state: TrainState, batch, *, model, algo, config):
  """Forwards, pseudo-labels, losses and gradients of one step (no update yet).

  Args:
    state: TrainState.
    batch: dict of global arrays (module docstring).
    model: PlainViT or STSSLModel.
    algo: algorithms.Algorithm.
    config: run config.
  Returns:
    (grads like state.params, new algorithm state, metrics dict of scalars).
  """
  rng = jax.random.fold_in(state.rng, state.step)
  k_weak, k_t, k_s = jax.random.split(rng, 3)
  base, multilabel = algo.base, config.multilabel
  n_lb = batch['lb_image'].shape[0]
  labels = batch['lb_label']
  algo_state, targets, metrics = state.algo_state, None, {}

  if algo.uses_unlabeled:
    # The weak view only feeds pseudo-labels and statistics, so it runs outside the
    # differentiated function (METHOD 4: all of it is computed from detached outputs).
    pl_params = state.ema_params if config.pseudo_label_source == 'ema' else state.params
    branch = 'teacher' if algo.stssl else 'plain'
    weak_logits, _ = _forward(model, pl_params, batch['ulb_image_weak'], batch['ulb_meta'],
                              k_weak, True, branch)
    weak_logits = jax.lax.stop_gradient(weak_logits)
    algo_state, targets, metrics = base.make_targets(algo_state, weak_logits, config, state.step)
    metrics.update(_pseudo_label_quality(targets, batch['ulb_label'], multilabel))
    x = jnp.concatenate([batch['lb_image'], batch['ulb_image_strong']])
    meta = jnp.concatenate([batch['lb_meta'], batch['ulb_meta']])
  else:
    x, meta = batch['lb_image'], batch['lb_meta']

  def loss_fn(params):
    if algo.stssl:
      t_out = _forward(model, params, x, meta, k_t, True, 'teacher')
      s_out = _forward(model, params, x, None, k_s, True, 'student')
      return stssl_wrapper.losses(base, config, state.step, algo_state, targets, labels,
                                  t_out, s_out, n_lb)
    logits, _ = _forward(model, params, x, None, k_t, True, 'plain')
    loss, terms = base.loss_terms(logits[:n_lb], labels, logits[n_lb:], targets, algo_state,
                                  config, state.step)
    return loss, terms

  (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics.update(terms)
  metrics['loss'] = loss
  return grads, algo_state, metrics


def train_step(state: TrainState, batch, *, model, algo, config, tx):
  """One optimizer update: forwards, losses, AdamW, EMA and the algorithm-state update.

  Args:
    state: TrainState (donated by the caller).
    batch: dict of global arrays (module docstring).
    model: PlainViT or STSSLModel.
    algo: algorithms.Algorithm.
    config: run config.
    tx: optax GradientTransformation.
  Returns:
    (new TrainState, metrics dict of scalars).
  """
  grads, algo_state, metrics = loss_and_grads(state, batch, model=model, algo=algo,
                                              config=config)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.ema_params, step_size=1.0 - config.ema_momentum)
  metrics['grad_norm'] = optax.tree.norm(grads)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                            opt_state=opt_state, algo_state=algo_state)
  return new_state, metrics


def eval_step(params, batch, *, model, config, branch):
  """Sufficient statistics of one padded eval batch (summed over valid rows).

  Args:
    params: EMA params.
    batch: eval batch dict (module docstring); rows with mask False are padding.
    model: the model.
    config: run config.
    branch: 'student' or 'plain' (image only) or 'teacher' (with metadata).
  Returns:
    dict: confusion [C, C] counts, loss_sum scalar, count scalar.
  """
  logits, _ = _forward(model, params, batch['image'], batch['meta'], None, False, branch)
  del config
  return {'confusion': metrics_lib.confusion_update(logits, batch['label'], batch['mask']),
          'loss_sum': metrics_lib.ce_sum(logits, batch['label'], batch['mask']),
          'count': jnp.sum(batch['mask'].astype(jnp.float32))}


def make_train_step(**kw):
  return functools.partial(train_step, **kw)
