"""Pure train and eval steps. `train.py` jits them once over the device mesh.

Batch keys (STYLE habit 7), global shapes:
  lb_image [B_l, S, S, 3], lb_label [B_l] (or [B_l, C]), lb_meta [B_l, 4],
  lb_image_strong [B_l, S, S, 3] (only for algorithms that need 'lb_strong': DeFixMatch),
  ulb_image_weak / ulb_image_strong [B_u, S, S, 3], ulb_meta [B_u, 4],
  ulb_label [B_u] (optional; true labels: diagnostics only, never in a loss).

Rows of the differentiated forwards: labeled `[x_l]` (or `[x_l; x_l,s]`), then the strong
unlabeled views; the STSSL teacher sees them with metadata, the student without. The
pseudo-labeller's weak forward (and any extra forward of the algorithm) runs outside the gradient.
Eval batch keys: image [B, S, S, 3], label [B], meta [B, 4], mask [B] bool.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from stssl_jax import algorithms, metrics as metrics_lib, pl_quality
from stssl_jax.algorithms import common, stssl as stssl_wrapper
from stssl_jax.models.stssl import STSSLModel
from stssl_jax.train_state import TrainState


def _forward(model, params, x, meta, rng, train, branch):
  """(logits, feats) of one branch: 'teacher' (meta, or None for no token), 'student', 'plain'."""
  rngs = {'dropout': rng} if train else {}
  variables = {'params': params}
  if branch == 'teacher':
    return model.apply(variables, x, meta, train=train, rngs=rngs, method=STSSLModel.teacher)
  if branch == 'student':
    return model.apply(variables, x, train=train, rngs=rngs, method=STSSLModel.student)
  return model.apply(variables, x, train=train, rngs=rngs)


def image_forward(model, params, rng, train, branch):
  """forward(x) -> (logits, feats) of `branch` on images alone (the teacher without its
  metadata token): what an algorithm's extra forwards run (`common.BaseAlgorithm`)."""
  return lambda x: _forward(model, params, x, None, rng, train, branch)


def _pl_counts(targets, true_labels, config):
  """`pl_quality.counts` of the unlabeled pseudo-labels in `targets`."""
  return pl_quality.counts(targets.label, targets.weight, true_labels, config.model.num_classes,
                           config.multilabel)


def _image_only_counts(state, params, x, n_lb, extras, true_labels, rng, train, *, model, algo,
                       config):
  """Counts of what the image-only student would have proposed on the weak view (STSSL).

  The student branch of the pseudo-labeller's params, on the weak unlabeled rows, through the same
  rule and algorithm state (the new state and the targets are thrown away). Extras that come
  from other forwards (the teacher's weak labeled logits, `extra_inputs`) are the
  pseudo-labeller's, so only the image model differs. No gradient; feeds nothing else.
  """
  def run(_):
    logits, _ = _forward(model, params, x[n_lb:], None, rng, train, 'student')
    _, targets, _ = algo.base.make_targets(state.algo_state, jax.lax.stop_gradient(logits),
                                           config, state.step, extras)
    return _pl_counts(targets, true_labels, config)

  every = config.image_only_pl_every
  if every == 1:
    return run(None)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, jax.eval_shape(run, None))
  # Skipped steps add zero counts, so the pooled ratios cover exactly the steps that ran.
  return jax.lax.cond(state.step % every == 0, run, lambda _: zeros, None)


def make_targets(state: TrainState, batch, rng, *, model, algo, config):
  """The pseudo-labeller's weak forward and `base.make_targets`, outside any gradient.

  The weak view only feeds pseudo-labels and statistics (METHOD 4: all of it is computed from
  detached outputs). The pseudo-labeller is the online teacher (or plain model), or its EMA
  with `pseudo_label_source = 'ema'` (CAP), which runs with drop-path on under
  `pseudo_label_ema_train_mode` ([QUIRK] METHOD 7.4). Rows `[x_l; x_w]` when the base needs
  the weak labeled logits; the original reads those from its differentiated pass instead, so
  with drop-path on they draw their own stochastic depth here (same distribution; exact when
  drop-path is off, as in the parity fixtures).

  Pseudo-label quality (pl_quality.py) is emitted as counts `pl_counts/<source>/...`: source
  'teacher' (STSSL) or 'image_only' (plain models) for the pseudo-labels used, and for STSSL
  'image_only' for the student's own proposal (`image_only_pl_every`).

  Returns:
    (new algorithm state, Targets, metrics dict of scalars and pl_counts arrays).
  """
  needs = algo.needs(config)
  ema = config.pseudo_label_source == 'ema'
  params = state.ema_params if ema else state.params
  train = config.pseudo_label_ema_train_mode if ema else True
  branch = algo.train_branch
  x, meta = batch['ulb_image_weak'], batch['ulb_meta']
  n_lb = batch['lb_image'].shape[0] if 'weak_lb' in needs else 0
  if n_lb:
    x = jnp.concatenate([batch['lb_image'], x])
    meta = jnp.concatenate([batch['lb_meta'], meta])
  k_weak, k_extra = rng, jax.random.fold_in(rng, 1)
  logits, _ = _forward(model, params, x, meta, k_weak, train, branch)
  logits = jax.lax.stop_gradient(logits)
  # Extra forwards use the online params in training mode (CDMAD: as the original's get_bias).
  extra = algo.extra_inputs(image_forward(model, state.params, k_extra, True, branch), x,
                            config)
  extras = common.Extras(weak_lb=logits[:n_lb] if n_lb else None, **extra)
  algo_state, targets, metrics = algo.base.make_targets(state.algo_state, logits[n_lb:], config,
                                                        state.step, extras)
  if 'ulb_label' not in batch:  # A truly unlabeled pool: no pseudo-label diagnostics.
    return algo_state, targets, metrics
  source = 'teacher' if algo.uses_meta else 'image_only'
  metrics.update(pl_quality.flatten(source, _pl_counts(targets, batch['ulb_label'], config)))
  if algo.stssl and config.image_only_pl_every > 0:
    counts = _image_only_counts(state, params, x, n_lb, extras, batch['ulb_label'],
                                jax.random.fold_in(rng, 2), train, model=model, algo=algo,
                                config=config)
    metrics.update(pl_quality.flatten('image_only', counts))
  return algo_state, targets, metrics


def _labeled_rows(batch, algo, config):
  """(images, meta) of the labeled rows: [x_l] or, with labeled strong views, [x_l; x_l,s]."""
  if not algo.needs_lb_strong(config):
    return batch['lb_image'], batch['lb_meta']
  if 'lb_image_strong' not in batch:
    raise KeyError(f'{config.algorithm} needs labeled strong views: batch["lb_image_strong"]')
  return (jnp.concatenate([batch['lb_image'], batch['lb_image_strong']]),
          jnp.concatenate([batch['lb_meta'], batch['lb_meta']]))


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
  base = algo.base
  labels = batch['lb_label']
  algo_state, targets, metrics = state.algo_state, None, {}
  x, meta = _labeled_rows(batch, algo, config)
  n_lb = x.shape[0]
  if algo.uses_unlabeled:
    algo_state, targets, metrics = make_targets(state, batch, k_weak, model=model, algo=algo,
                                                config=config)
    x = jnp.concatenate([x, batch['ulb_image_strong']])
    meta = jnp.concatenate([meta, batch['ulb_meta']])

  def loss_fn(params):
    if algo.stssl:
      t_out = _forward(model, params, x, meta, k_t, True, 'teacher')
      s_out = _forward(model, params, x, None, k_s, True, 'student')
      loss, terms, new_state = stssl_wrapper.step_losses(
          base, config, state.step, algo_state, targets, labels, t_out, s_out, n_lb)
      return loss, (terms, new_state)
    logits, _ = _forward(model, params, x, meta, k_t, True, algo.train_branch)
    loss, terms = base.loss_terms(logits[:n_lb], labels, logits[n_lb:], targets, algo_state,
                                  config, state.step)
    return loss, (terms, algo_state)

  (loss, (terms, algo_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  metrics.update(terms)
  metrics['loss'] = loss
  return grads, algo_state, metrics


def _all_finite(tree) -> jax.Array:
  """bool scalar: every element of every leaf is finite."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


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
  finite = jnp.isfinite(metrics['loss']) & _all_finite(params)
  first_bad = jnp.where((state.first_nonfinite < 0) & ~finite, state.step + 1,
                        state.first_nonfinite)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                            opt_state=opt_state, algo_state=algo_state,
                            first_nonfinite=first_bad)
  return new_state, metrics


def eval_logits(params, batch, *, model, algo, config, branch, num_updates=None):
  """Logits [B, C] of `branch` on an eval batch, in eval mode (drop-path off).

  The algorithm's `eval_logits` hook may adjust them from extra forwards of the same params
  in eval mode, through the pseudo-labeller's branch whichever branch is evaluated (CDMAD
  subtracts its blank-image bias, gated by the updates done; METHOD 7.5: STSSL-CDMAD takes
  the teacher-derived bias for the student too, as the original does).
  """
  logits, _ = _forward(model, params, batch['image'], batch['meta'], None, False, branch)
  step = num_updates if num_updates is not None else jnp.iinfo(jnp.int32).max
  return algo.eval_logits(logits, image_forward(model, params, None, False, algo.train_branch),
                          batch['image'], config, step)


def eval_stats(logits, batch):
  """Sufficient statistics of one padded eval batch from its logits [B, C] (valid rows only).

  Returns:
    dict: confusion [C, C] counts, loss_sum scalar, count scalar.
  """
  return {'confusion': metrics_lib.confusion_update(logits, batch['label'], batch['mask']),
          'loss_sum': metrics_lib.ce_sum(logits, batch['label'], batch['mask']),
          'count': jnp.sum(batch['mask'].astype(jnp.float32))}


def eval_step(params, batch, *, model, config, branch, algo=None, num_updates=None):
  """`eval_stats` of `eval_logits` on one batch.

  Args:
    params: EMA params.
    batch: eval batch dict (module docstring); rows with mask False are padding.
    model: the model.
    config: run config.
    branch: 'student' or 'plain' (image only) or 'teacher' (with metadata).
    algo: algorithms.Algorithm (default: from config.algorithm).
    num_updates: int32 scalar, updates done so far (CDMAD's bias gate; None: bias on).
  Returns:
    dict: confusion [C, C] counts, loss_sum scalar, count scalar.
  """
  algo = algo or algorithms.get(config.algorithm)
  return eval_stats(eval_logits(params, batch, model=model, algo=algo, config=config,
                                branch=branch, num_updates=num_updates), batch)


def make_train_step(**kw):
  return functools.partial(train_step, **kw)
