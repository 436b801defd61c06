"""Parity of the whole train step with the original PyTorch code, in float64.

For each fixture in tests/fixtures/parity (copied from shared/fixtures/parity, see its
README): import the original's initial weights, then for steps 0, 1, 2 run our forwards and
our jitted train step on the fixture's inputs and compare the logits, features,
probabilities, mask, pseudo-labels, every loss term, the gradients, the params after AdamW,
the EMA params and (where stored) the AdamW moments, at the fixture README's tolerances.

The backbones' "aux heads" (`*_backbone.head.*`) of the original never receive a gradient
and are frozen there (quirk Q1); our STSSL model has no such layer, so they are not compared.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from stssl_jax import algorithms, optim, steps
from stssl_jax.algorithms import common, fixmatch
from stssl_jax.models import convert, stssl as models
from stssl_jax.train_state import TrainState

FIX = pathlib.Path(__file__).parent / 'fixtures' / 'parity'
FWD = dict(rtol=1e-9, atol=1e-11)
LOSS = dict(rtol=1e-10, atol=1e-12)
GRAD = dict(rtol=1e-8, atol=1e-11)
PARAM = dict(rtol=0, atol=1e-10)

CASES = ['stssl_fixmatch_single', 'stssl_fixmatch_multilabel', 'stssl_fixmatch_nodistill',
         'fixmatch_single', 'fixmatch_multilabel', 'supervised']


def parity_config(z):
  meta = json.loads(str(z['meta/config_json']))
  args = meta['args_effective']
  cut = np.asarray(z.get('meta/p_cutoff', args['p_cutoff']))
  stssl = meta['algorithm'].startswith('stssl_')
  c = ml_collections.ConfigDict({
      'algorithm': meta['algorithm'], 'multilabel': bool(args['multilabel']),
      'threshold': float(cut) if cut.ndim == 0 else tuple(float(v) for v in cut),
      'lambda_u': float(args['ulb_loss_ratio']),
      'distill': args.get('distill_loss_type', 'none') if stssl else 'none',
      'lambda_d': float(args.get('lambda_d', 0.0)),
      'pseudo_label_source': 'online', 'dtype': 'float64',
      'lr': float(args['lr']), 'weight_decay': float(args['weight_decay']),
      # Fixtures run at constant LR: no warm-up and a cosine factor of 0 give f(t) = 1.
      'warmup_steps': 0, 'num_steps': 1000, 'cosine_factor': 0.0, 'wd_quirk': True,
      'ema_momentum': float(args['ema_m']),
      'model': {'variant': 'test', 'num_classes': int(args['num_classes']), 'drop_path': 0.0},
  })
  return c


def nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def batch_of(z, s, stssl):
  if f'input/{s}/x_ulb_w' not in z:  # Supervised: only the labeled rows exist (and are used).
    z = dict(z, **{f'input/{s}/x_ulb_w': z[f'input/{s}/x_lb'],
                   f'input/{s}/x_ulb_s': z[f'input/{s}/x_lb']})
  n_lb, n_ulb = z[f'input/{s}/x_lb'].shape[0], z[f'input/{s}/x_ulb_w'].shape[0]
  meta_lb = z[f'input/{s}/metainfo_lb'] if stssl else np.zeros((n_lb, 4))
  meta_ulb = z[f'input/{s}/metainfo_ulb'] if stssl else np.zeros((n_ulb, 4))
  return {'lb_image': nhwc(z[f'input/{s}/x_lb']), 'lb_label': jnp.asarray(z[f'input/{s}/y_lb']),
          'lb_meta': jnp.asarray(meta_lb), 'ulb_image_weak': nhwc(z[f'input/{s}/x_ulb_w']),
          'ulb_image_strong': nhwc(z[f'input/{s}/x_ulb_s']), 'ulb_meta': jnp.asarray(meta_ulb),
          'ulb_label': jnp.zeros((n_ulb,), jnp.int32)}


def torch_names(params, stssl):
  return convert.to_torch_stssl(params) if stssl else convert.to_torch_vit(params)


def compare_tree(ours, z, prefix, tol, stssl, what, frozen):
  got = torch_names(jax.device_get(ours), stssl)
  want = {k[len(prefix):]: z[k] for k in z if k.startswith(prefix)}
  compared = 0
  for name, value in got.items():
    np.testing.assert_allclose(value, want[name], err_msg=f'{what} {name}', **tol)
    compared += 1
  skipped = set(want) - set(got)
  # Only parameters the original never updates (no gradient, quirk Q1) may be absent here.
  assert skipped <= frozen, f'{what}: not compared {sorted(skipped - frozen)}'
  return compared


def find_adam(opt_state):
  found = [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
           if isinstance(s, optax.ScaleByAdamState)]
  assert len(found) == 1
  return found[0]


@pytest.fixture(scope='module', params=CASES)
def case(request):
  with jax.enable_x64(True):
    yield request.param, dict(np.load(FIX / f'{request.param}.npz'))


def test_train_step_parity(case):
  name, z = case
  with jax.enable_x64(True):
    config = parity_config(z)
    algo = algorithms.get(config.algorithm)
    model = models.build_model(config)
    state_dict = {k[len('param/'):]: v for k, v in z.items() if k.startswith('param/')}
    if algo.stssl:
      params = convert.from_torch_stssl(state_dict, placeholder=config.distill != 'none')
    else:
      params = convert.from_torch_vit(state_dict)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    assert all(x.dtype == jnp.float64 for x in jax.tree_util.tree_leaves(params))
    tx, _ = optim.make_optimizer(config, params, algo.stssl)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       ema_params=jax.tree_util.tree_map(jnp.copy, params),
                       opt_state=tx.init(params), algo_state=algo.base.init_state(config, 0),
                       rng=jax.random.PRNGKey(0))
    kw = dict(model=model, algo=algo, config=config)
    grads_fn = jax.jit(lambda st, b: steps.loss_and_grads(st, b, **kw))
    step_fn = jax.jit(lambda st, b: steps.train_step(st, b, tx=tx, **kw))
    compared = 0
    for s in range(3):
      frozen = set(str(n) for n in z[f'meta/{s}/params_without_grad'])
      batch = batch_of(z, s, algo.stssl)
      out = lambda k: z[f'out/{s}/{k}']
      if algo.uses_unlabeled:
        _check_forward(model, state.params, batch, out, config, algo.stssl)
      else:
        logits, feats = model.apply({'params': state.params}, batch['lb_image'])
        np.testing.assert_allclose(logits, out('logits_lb'), **FWD)
        np.testing.assert_allclose(feats['cls'], out('cls_feat'), **FWD)
      grads, _, metrics = grads_fn(state, batch)
      if algo.stssl:
        pairs = {'teacher/sup_loss': 'loss_sup_teacher', 'teacher/unsup_loss': 'loss_unsup_teacher',
                 'student/sup_loss': 'loss_sup_student', 'student/unsup_loss': 'loss_unsup_student',
                 'teacher/loss': 'loss_teacher_total', 'student/loss': 'loss_student_total',
                 'student/distill_loss': 'loss_distill', 'loss': 'loss_backprop'}
      elif algo.uses_unlabeled:
        pairs = {'sup_loss': 'loss_sup', 'unsup_loss': 'loss_unsup', 'loss': 'loss_backprop'}
      else:
        pairs = {'sup_loss': 'loss_sup', 'loss': 'loss_backprop'}
      for ours, theirs in pairs.items():
        # Quirk Q3: with distillation 'none' the original's losses have shape (1,).
        np.testing.assert_allclose(metrics[ours], np.reshape(out(theirs), ()),
                                   err_msg=f'step {s} {ours}', **LOSS)
      if f'grad/{s}/' + ('joint_head.weight' if algo.stssl else 'head.weight') in z:
        compared += compare_tree(grads, z, f'grad/{s}/', GRAD, algo.stssl, f'grad step {s}',
                                 frozen)
      np.testing.assert_allclose(z[f'meta/{s}/lr'], config.lr)
      state, _ = step_fn(state, batch)
      for tree, prefix in ((state.params, 'param_after'), (state.ema_params, 'ema_after')):
        if any(k.startswith(f'{prefix}/{s}/') for k in z):
          compared += compare_tree(tree, z, f'{prefix}/{s}/', PARAM, algo.stssl,
                                   f'{prefix} step {s}', frozen)
    if any(k.startswith('opt_after/2/') for k in z):
      adam = find_adam(state.opt_state)
      compared += compare_tree(adam.mu, z, 'opt_after/2/exp_avg/', GRAD, algo.stssl, 'exp_avg',
                               frozen)
      compared += compare_tree(adam.nu, z, 'opt_after/2/exp_avg_sq/', GRAD, algo.stssl,
                               'exp_avg_sq', frozen)
      assert int(adam.count) == int(z['opt_after/2/step/joint_head.weight'])
    assert compared > 0


def _check_forward(model, params, batch, out, config, stssl):
  """Logits, features, probabilities, mask and pseudo-labels of one step's inputs."""
  xw, xs, xl = batch['ulb_image_weak'], batch['ulb_image_strong'], batch['lb_image']
  n_lb, n_u = xl.shape[0], xw.shape[0]
  p = {'params': params}
  if stssl:
    x = jnp.concatenate([xl, xw, xs])
    m = jnp.concatenate([batch['lb_meta'], batch['ulb_meta'], batch['ulb_meta']])
    t_logits, t_feats = model.apply(p, x, m, method=models.STSSLModel.teacher)
    s_logits, s_feats = model.apply(p, jnp.concatenate([xl, xs]),
                                    method=models.STSSLModel.student)
    segs = {'lb': slice(0, n_lb), 'ulb_w': slice(n_lb, n_lb + n_u), 'ulb_s': slice(n_lb + n_u, None)}
    for seg, sl in segs.items():
      np.testing.assert_allclose(t_logits[sl], out(f'teacher_logits_{seg}'), **FWD)
      np.testing.assert_allclose(t_feats['meta'][sl], out(f'teacher_meta_feat_{seg}'), **FWD)
    np.testing.assert_allclose(t_feats['meta_embed'], out('metainfo_embed'), **FWD)
    np.testing.assert_allclose(t_feats['cls'], out('teacher_cls_feat'), **FWD)
    np.testing.assert_allclose(s_logits[:n_lb], out('student_logits_lb'), **FWD)
    np.testing.assert_allclose(s_logits[n_lb:], out('student_logits_ulb_s'), **FWD)
    np.testing.assert_allclose(s_feats['meta'][:n_lb], out('student_meta_feat_lb'), **FWD)
    np.testing.assert_allclose(s_feats['meta'][n_lb:], out('student_meta_feat_ulb_s'), **FWD)
    np.testing.assert_allclose(s_feats['cls'], out('student_cls_feat'), **FWD)
    weak = t_logits[n_lb:n_lb + n_u]
  else:
    logits, feats = model.apply(p, jnp.concatenate([xl, xw, xs]))
    for seg, sl in {'lb': slice(0, n_lb), 'ulb_w': slice(n_lb, n_lb + n_u),
                    'ulb_s': slice(n_lb + n_u, None)}.items():
      np.testing.assert_allclose(logits[sl], out(f'logits_{seg}'), **FWD)
    np.testing.assert_allclose(feats['cls'], out('cls_feat'), **FWD)
    weak = logits[n_lb:n_lb + n_u]
  np.testing.assert_allclose(common.probs(weak, config.multilabel), out('probs_ulb_w'), **FWD)
  _, targets, _ = fixmatch.make_targets(fixmatch.State(), weak, config, 0)
  np.testing.assert_array_equal(targets.weight, out('mask'))  # Exact.
  np.testing.assert_array_equal(targets.label, out('pseudo_label'))
