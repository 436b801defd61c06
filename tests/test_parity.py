"""Parity of the whole train step with the original PyTorch code, in float64.

For each fixture in tests/fixtures/parity (copied from shared/fixtures/parity, see its
README): import the original's initial weights, then for steps 0, 1, 2 run our forwards and
our jitted train step on the fixture's inputs and compare every `out/<s>/` key (logits,
features, tokens, probabilities, masks/weights, pseudo-labels, thresholds, adjustments, every
loss term and `log/` value), the running algorithm state before and after the step
(`state_before/<s>`, `state_after/<s>`), the gradients, the params after AdamW, the EMA params
and (where stored) the AdamW moments, at the fixture README's tolerances. A test fails when
an `out/` key is left uncompared, except the few listed in NOT_COMPARED with the reason.

Parameters the original never updates (quirk Q1: the backbones' aux heads, the unused student
of st_supervised) are absent from our model unless an algorithm needs them (the teacher's aux
head for STSSL-CDMAD, whose gradient must then be exactly zero).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from stssl_jax import algorithms, optim, pl_quality, steps
from stssl_jax.algorithms import cap, common, udal
from stssl_jax.models import convert, stssl as models
from stssl_jax.train_state import TrainState

FIX = pathlib.Path(__file__).parent / 'fixtures' / 'parity'
FWD = dict(rtol=1e-9, atol=1e-11)
LOSS = dict(rtol=1e-10, atol=1e-12)
GRAD = dict(rtol=1e-8, atol=1e-11)
PARAM = dict(rtol=0, atol=1e-10)

CASES = ['stssl_fixmatch_single', 'stssl_fixmatch_multilabel', 'stssl_fixmatch_nodistill',
         'fixmatch_single', 'fixmatch_multilabel', 'supervised',
         'stssl_freematch', 'stssl_freematch_multilabel', 'stssl_softmatch',
         'stssl_softmatch_multilabel', 'stssl_defixmatch', 'stssl_defixmatch_multilabel',
         'stssl_cap', 'stssl_cdmad', 'stssl_cdmad_multilabel', 'stssl_udal',
         'stssl_udal_multilabel', 'st_supervised']

# `out/` keys not compared, with the reason.
NOT_COMPARED = {
    # The fixture glue recorded FreeMatch's fairness term only for the single-label
    # `entropy_loss`: for multi-label these hold 0 / False although the totals include the
    # term. It is checked through the totals and the value derived from them instead.
    'stssl_freematch_multilabel': {'loss_ent_teacher', 'loss_ent_student', 'ent_loss_computed'},
}

# Looser parameter tolerance for (case, step), with the reason.
PARAM_TOL = {
    # Step 2's gradient holds the original's rounding noise amplified 1e12 times: a class
    # whose masked strong predictions are all positive has b = 1 exactly, and the fairness
    # term's (1 - a) log(1 - b + 1e-12) scales d b / d A, which cancels to noise (quirk Q6).
    # Step 1's noise is reproduced bit for bit (torch's division backward); step 2's depends
    # on the order of torch's float sum over the batch, which XLA does not follow. Forwards,
    # masks, losses and state still match at step 2; only the update after it drifts.
    ('stssl_freematch_multilabel', 2): dict(rtol=0, atol=1e-6),
}

SEGMENT_INPUTS = {'lb': ('x_lb', 'metainfo_lb'), 'lb_s': ('x_lb_s', 'metainfo_lb'),
                  'ulb_w': ('x_ulb_w', 'metainfo_ulb'), 'ulb_s': ('x_ulb_s', 'metainfo_ulb')}


def parity_config(z):
  """The run config of a fixture, from `meta/config_json` (settings differ from the runs)."""
  meta = json.loads(str(z['meta/config_json']))
  args = meta['args_effective']
  name = meta['algorithm']
  cut = np.asarray(z.get('meta/p_cutoff', args['p_cutoff']))
  stssl = name.startswith('stssl_')
  c = default.get_config()
  c.algorithm, c.multilabel = name, bool(args['multilabel'])
  c.threshold = (float(cut),) if cut.ndim == 0 else tuple(float(v) for v in cut)
  c.lambda_u = float(args['ulb_loss_ratio'])
  c.distill = args.get('distill_loss_type', 'none') if stssl else 'none'
  c.lambda_d = float(args.get('lambda_d', 0.0))
  c.dtype = 'float64'
  c.lr, c.weight_decay = float(args['lr']), float(args['weight_decay'])
  # Fixtures run at constant LR: no warm-up and a cosine factor of 0 give f(t) = 1. T_total
  # is the original's num_train_iter (UDAL's alpha schedule reads it).
  c.warmup_steps, c.num_steps, c.cosine_factor = 0, int(args['num_train_iter']), 0.0
  c.ema_momentum = float(args['ema_m'])
  c.data.image_size = 16
  c.model.variant, c.model.num_classes, c.model.drop_path = 'test', int(args['num_classes']), 0.0
  get = lambda k, default_value: args.get(k, default_value)
  c.freematch.update(ema_p=float(get('ema_p', 0.999)),
                     lambda_e=float(get('ent_loss_ratio', 0.01)),
                     sup_warmup_steps=int(get('sup_warmup_iters', 0)),
                     use_quantile=bool(get('use_quantile', False)),
                     clip_thresh=bool(get('clip_thresh', False)))
  c.softmatch.update(ema_p=float(get('ema_p', 0.999)), n_sigma=float(get('n_sigma', 2)),
                     dist_align=bool(get('dist_align', True)),
                     dist_uniform=bool(get('dist_uniform', False)))
  c.udal.update(ema_p=float(get('ema_p', 0.999)), a_min=float(get('a_min', 0.5)),
                k=float(get('k', 2)), dist_uniform=bool(get('dist_uniform', False)))
  c.cap.update(pos_per=float(get('pos_per', 1.0)), neg_per=float(get('neg_per', 1.0)),
               gamma_pos=float(get('gamma_pos', 1)), gamma_neg=float(get('gamma_neg', 4)),
               clip=float(get('clip', 0.05)), eps=float(get('eps', 1e-8)))
  c.cdmad.debias_start = int(get('debias_start_iter', 2000))
  if get('pseudolabel_from_ema', False):
    c.pseudo_label_source = 'ema'
  return c


def nhwc(x):
  return jnp.asarray(np.transpose(x, (0, 2, 3, 1)))


def batch_of(z, s, uses_meta):
  """Our batch dict from the fixture's `input/<s>/` (supervised fixtures: labeled rows only)."""
  inp = lambda k, fallback=None: z.get(f'input/{s}/{k}', fallback)
  x_lb = inp('x_lb')
  x_w, x_s = inp('x_ulb_w', x_lb), inp('x_ulb_s', x_lb)
  meta_lb = inp('metainfo_lb') if uses_meta else np.zeros((len(x_lb), 4))
  meta_ulb = inp('metainfo_ulb', meta_lb) if uses_meta else np.zeros((len(x_w), 4))
  batch = {'lb_image': nhwc(x_lb), 'lb_label': jnp.asarray(inp('y_lb')),
           'lb_meta': jnp.asarray(meta_lb), 'ulb_image_weak': nhwc(x_w),
           'ulb_image_strong': nhwc(x_s), 'ulb_meta': jnp.asarray(meta_ulb),
           # The fixtures carry no true labels of the unlabeled rows; these zeros (int [B] or
           # multi-hot [B, C], like y_lb) feed only the pseudo-label diagnostics.
           'ulb_label': jnp.zeros((len(x_w),) + np.shape(inp('y_lb'))[1:],
                                  np.asarray(inp('y_lb')).dtype)}
  if inp('x_lb_s') is not None:
    batch['lb_image_strong'] = nhwc(inp('x_lb_s'))
  return batch


def compare_tree(ours, z, prefix, tol, algo, what, frozen, zero_if_absent=False):
  got = jax.device_get(ours)
  got = convert.to_torch_stssl(got) if algo.uses_meta else convert.to_torch_vit(got)
  want = {k[len(prefix):]: z[k] for k in z if k.startswith(prefix)}
  compared = 0
  for name, value in got.items():
    if name not in want and zero_if_absent and name in frozen:
      np.testing.assert_array_equal(value, 0, err_msg=f'{what} {name}')  # Never trained.
      continue
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


class Out:
  """`out/<s>/` of a fixture; records which keys were compared."""

  def __init__(self, z, s):
    self.z, self.prefix, self.seen = z, f'out/{s}/', set()
    self.keys = {k[len(self.prefix):] for k in z if k.startswith(self.prefix)}

  def __contains__(self, key):
    return key in self.keys

  def __call__(self, key):
    self.seen.add(key)
    return self.z[self.prefix + key]

  def close(self, key, value, tol=FWD):
    np.testing.assert_allclose(value, np.reshape(self(key), np.shape(value)), err_msg=key, **tol)

  def exact(self, key, value):
    np.testing.assert_array_equal(value, self(key), err_msg=key)


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
    if algo.uses_meta:
      params = convert.from_torch_stssl(state_dict, placeholder=model.placeholder,
                                        aux_head=model.aux_head, student=model.with_student)
    else:
      params = convert.from_torch_vit(state_dict)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    assert all(x.dtype == jnp.float64 for x in jax.tree_util.tree_leaves(params))
    prevalence = z['input/lb_table'].mean(0) if 'input/lb_table' in z else None
    tx, schedule = optim.make_optimizer(config, params, algo.uses_meta)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       ema_params=jax.tree_util.tree_map(jnp.copy, params),
                       opt_state=tx.init(params),
                       algo_state=algo.base.init_state(config, config.model.num_classes,
                                                       prevalence),
                       rng=jax.random.PRNGKey(0))
    kw = dict(model=model, algo=algo, config=config)
    grads_fn = jax.jit(lambda st, b: steps.loss_and_grads(st, b, **kw))
    step_fn = jax.jit(lambda st, b: steps.train_step(st, b, tx=tx, **kw))
    compared = 0
    for s in range(3):
      frozen = set(str(n) for n in z[f'meta/{s}/params_without_grad'])
      batch = batch_of(z, s, algo.uses_meta)
      out = Out(z, s)
      compare_state(z, f'state_before/{s}/', state.algo_state, algo)
      logits = check_forward(model, state, z, s, out, algo, config)
      check_targets(model, state, batch, logits, out, algo, config, s)
      grads, _, metrics = grads_fn(state, batch)
      check_losses(metrics, out, algo, config, s, name)
      if any(k.startswith(f'grad/{s}/') for k in z):
        compared += compare_tree(grads, z, f'grad/{s}/', GRAD, algo, f'grad step {s}', frozen,
                                 zero_if_absent=True)
      # Our schedule gives each update the LR the original's optimizer held (both groups).
      np.testing.assert_allclose(z[f'meta/{s}/lr'], float(schedule(s)), rtol=1e-12)
      state, _ = step_fn(state, batch)
      compare_state(z, f'state_after/{s}/', state.algo_state, algo)
      for tree, prefix in ((state.params, 'param_after'), (state.ema_params, 'ema_after')):
        if any(k.startswith(f'{prefix}/{s}/') for k in z):
          compared += compare_tree(tree, z, f'{prefix}/{s}/', PARAM_TOL.get((name, s), PARAM),
                                   algo, f'{prefix} step {s}', frozen)
      left = out.keys - out.seen - NOT_COMPARED.get(name, set())
      assert not left, f'step {s}: out/ keys not compared: {sorted(left)}'
    if any(k.startswith('opt_after/2/') for k in z):
      adam = find_adam(state.opt_state)
      compared += compare_tree(adam.mu, z, 'opt_after/2/exp_avg/', GRAD, algo, 'exp_avg', frozen)
      compared += compare_tree(adam.nu, z, 'opt_after/2/exp_avg_sq/', GRAD, algo, 'exp_avg_sq',
                               frozen)
      assert int(adam.count) == int(z['opt_after/2/step/joint_head.weight'])
    assert compared > 0


def _segments(algo, config):
  """Row segments of the teacher's and the student's differentiated forwards (README 4.4)."""
  lb = ['lb', 'lb_s'] if 'lb_strong' in algo.needs(config) else ['lb']
  if not algo.uses_unlabeled:
    return lb, []
  weak = [] if config.pseudo_label_source == 'ema' else ['ulb_w']
  return lb + weak + ['ulb_s'], (lb + ['ulb_s'] if algo.stssl else [])


def check_forward(model, state, z, s, out, algo, config):
  """Logits, features and tokens of every segment; returns {'teacher/lb': logits, ...}."""
  inp = lambda k: z[f'input/{s}/{k}']
  p = {'params': state.params}
  t_segs, s_segs = _segments(algo, config)

  def rows(segs, col):
    parts = [jnp.asarray(inp(SEGMENT_INPUTS[g][col])) for g in segs]
    bounds = np.cumsum([0] + [len(x) for x in parts])
    return jnp.concatenate(parts), list(zip(segs, bounds[:-1], bounds[1:]))

  x, spans = rows(t_segs, 0)
  x = jnp.transpose(x, (0, 2, 3, 1))
  result = {}
  if not algo.uses_meta:
    logits, feats = model.apply(p, x, return_tokens=True)
    for g, a, b in spans:
      out.close(f'logits_{g}', logits[a:b])
      result[f'teacher/{g}'] = logits[a:b]
    out.close('cls_feat', feats['cls'])
    return result
  meta, _ = rows(t_segs, 1)
  logits, feats = model.apply(p, x, meta, return_tokens=True, method=models.STSSLModel.teacher)
  for g, a, b in spans:
    out.close(f'teacher_logits_{g}', logits[a:b])
    out.close(f'teacher_meta_feat_{g}', feats['meta'][a:b])
    result[f'teacher/{g}'] = logits[a:b]
  out.close('teacher_cls_feat', feats['cls'])
  out.close('metainfo_embed', feats['meta_embed'])
  if 'teacher_tokens' in out:
    out.close('teacher_tokens', feats['tokens'])
  if s_segs:
    x, spans = rows(s_segs, 0)
    logits, feats = model.apply(p, jnp.transpose(x, (0, 2, 3, 1)), return_tokens=True,
                                method=models.STSSLModel.student)
    for g, a, b in spans:
      out.close(f'student_logits_{g}', logits[a:b])
      out.close(f'student_meta_feat_{g}', feats['meta'][a:b])
      result[f'student/{g}'] = logits[a:b]
    out.close('student_cls_feat', feats['cls'])
    if 'student_tokens' in out:
      out.close('student_tokens', feats['tokens'])
  return result


def check_targets(model, state, batch, logits, out, algo, config, s):
  """Probabilities, masks/weights, pseudo-labels and the algorithm's intermediate values.

  Runs `base.make_targets` on our own (already compared) weak logits, as the train step does.
  """
  if not algo.uses_unlabeled:
    return
  ml, base = config.multilabel, algo.base
  prob = lambda x: common.probs(x, ml)
  name = base.__name__.split('.')[-1]
  extras = common.Extras()
  if name == 'cap':  # The EMA teacher on the weak view (README 5, stssl_cap).
    ema_logits, feats = model.apply({'params': state.ema_params}, batch['ulb_image_weak'],
                                    batch['ulb_meta'], return_tokens=True,
                                    method=models.STSSLModel.teacher)
    out.close('ema_teacher_logits_ulb_w', ema_logits)
    out.close('ema_teacher_meta_feat_ulb_w', feats['meta'])
    out.close('ema_teacher_tokens_ulb_w', feats['tokens'])
    weak = ema_logits
  else:
    weak = logits['teacher/ulb_w']
  if 'weak_lb' in algo.needs(config):
    extras = extras._replace(weak_lb=logits['teacher/lb'])
  forward = steps.image_forward(model, state.params, state.rng, True, algo.train_branch)
  extras = extras._replace(**algo.extra_inputs(forward, batch['lb_image'], config))
  new_state, targets, metrics = base.make_targets(state.algo_state, weak, config, state.step,
                                                  extras)
  if 'probs_ulb_w' in out:
    out.close('probs_ulb_w', prob(weak))
  if 'mask' in out and name == 'softmatch':  # Real-valued weights.
    out.close('mask', targets.weight)
  elif 'mask' in out:
    out.exact('mask', targets.weight)
  if 'pseudo_label' in out:
    out.exact('pseudo_label', targets.label)
  if 'probs_lb' in out:
    out.close('probs_lb', prob(logits['teacher/lb']))
  if name == 'softmatch':
    out.close('probs_ulb_w_aligned', common.dist_align(prob(weak), new_state.da, ml))
  elif name == 'defixmatch':
    out.exact('mask_lb', targets.lb_weight)
    out.exact('anti_pseudo_label', targets.lb_label)
  elif name == 'cap':
    out.close('probs_ulb_w_ema', prob(weak))
    for key, value in zip(('thre_vec', 'pos_thre', 'neg_thre'), cap.thresholds(new_state, config)):
      assert value.dtype == jnp.float32
      out.exact(key, value)  # float32 values of the queue (quirk Q9).
    out.close('pos_label_freq', new_state.prevalence)
    for role in ('teacher', 'student'):
      out.close(f'asl_elem_unsup_{role}', cap.asl(logits[f'{role}/ulb_s'], targets.label, config))
  elif name == 'cdmad':
    out.close('bias', jnp.where(s >= config.cdmad.debias_start, extras.bias, 0.0))
    out.close('debiased_probs_ulb_w', targets.label)
  elif name == 'udal':
    out.close('student_probs_ulb_s', prob(logits['student/ulb_s']))
    out.close('student_probs_lb', prob(logits['student/lb']))
    out.close('alpha_factor', udal.alpha(config, s))
    out.close('p_data_adjusted', jnp.exp(targets.sup_shift))
    out.close('p_model_adjusted', jnp.exp(targets.unsup_shift))
    _, s_targets = udal.student_targets(new_state, targets, logits['student/lb'],
                                        logits['student/ulb_s'], config, state.step)
    out.close('p_student_adjusted', jnp.exp(s_targets.unsup_shift))
  if 'log/util_ratio' in out:  # A float32 mean in the original (quirk Q16).
    out.close('log/util_ratio', metrics['mask_ratio'], dict(rtol=1e-6, atol=0))


# Our metric (term) -> fixture keys, `{r}` the role and `{p}` its log prefix.
_TERMS = {'sup_loss': ('loss_sup_{r}', 'log/{p}sup_loss'),
          'unsup_loss': ('loss_unsup_{r}', 'log/{p}unsup_loss'),
          'ent_loss': ('loss_ent_{r}',), 'ent_hist_mean': ('ent_hist_mean_{r}',),
          'ent_loss_computed': ('ent_loss_computed',),
          'anti_loss': ('loss_anti_{r}',), 'sup_loss_lb': ('loss_sup_{r}_lb',),
          'sup_loss_lb_strong': ('loss_sup_{r}_lb_s',),
          'loss': ('loss_{r}_total', 'log/{p}total_loss'),
          'distill_loss': ('loss_distill', 'log/student_distill_loss')}


def check_losses(metrics, out, algo, config, s, case_name):
  """Every loss term (and the FreeMatch warm-up flag) against `out/` and `out/log/`."""
  for key, value in metrics.items():
    if key.startswith(pl_quality.PREFIX):
      continue  # Pseudo-label diagnostics, not loss terms (tests/test_pl_quality.py).
    role, term = key.split('/') if '/' in key else ('', key)
    if term not in _TERMS:
      continue
    if not role and algo.stssl:  # The sum L_T + L_S.
      names = ('loss_backprop',) if term == 'loss' else ()
    elif not role:  # Plain algorithms: one model, no role in the fixture's names.
      names = {'sup_loss': ('loss_sup', 'log/sup_loss'),
               'unsup_loss': ('loss_unsup', 'log/unsup_loss'),
               'loss': ('loss_teacher_total', 'loss_backprop', 'log/total_loss')}.get(term, ())
    else:
      names = [n.format(r=role, p='' if role == 'teacher' else 'student_')
               for n in _TERMS[term]]
    if term == 'ent_hist_mean' and not bool(metrics[f'{role}/ent_loss_computed']):
      continue  # Not recorded when the term is not computed.
    for n in names:
      if n in out and n not in NOT_COMPARED.get(case_name, ()):
        # Quirk Q3: with distillation 'none' the original's losses have shape (1,).
        out.close(n, value, LOSS)
  if 'supervised_warmup_active' in out:
    assert bool(out('supervised_warmup_active')) == (s < config.freematch.sup_warmup_steps)
  if case_name == 'stssl_freematch_multilabel' and s >= config.freematch.sup_warmup_steps:
    for role in ('teacher', 'student'):  # The fairness term, derived from the totals.
      rest = metrics[f'{role}/sup_loss'] + config.lambda_u * metrics[f'{role}/unsup_loss']
      total = out(f'loss_{role}_total') - (config.lambda_d * out('loss_distill')
                                             if role == 'student' else 0.0)
      np.testing.assert_allclose(metrics[f'{role}/ent_loss'],
                                 (total - rest) / config.freematch.lambda_e, rtol=1e-8)


def compare_state(z, prefix, algo_state, algo):
  """The original's hook attributes (`state_before/<s>` or `state_after/<s>`) vs ours."""
  keys = {k[len(prefix):] for k in z if k.startswith(prefix)}
  name = algo.base.__name__.split('.')[-1]
  ours = {}
  if name == 'freematch':
    ours = {'MaskingHook.p_model': algo_state.p_model,
            'MaskingHook.label_hist': algo_state.label_hist,
            'MaskingHook.time_p': algo_state.time_p}
  elif name in ('softmatch', 'udal'):
    das = {'DistAlignHook': algo_state.da}
    if name == 'softmatch':
      ours = {'MaskingHook.prob_max_mu_t': algo_state.mu,
              'MaskingHook.prob_max_var_t': algo_state.var}
    else:
      das['StudentDistAlignHook'] = algo_state.student_da
    for hook, da in das.items():
      ours[f'{hook}.p_target'] = da.p_target
      # Absent before the first batch: the original's p_model is None until then.
      assert (f'{hook}.p_model' in keys) == bool(da.started), (prefix, hook)
      if da.started:
        ours[f'{hook}.p_model'] = da.p_model
  elif name == 'cap':
    n = int(algo_state.filled)
    np.testing.assert_array_equal(algo_state.queue[:n],
                                  z[prefix + 'PseudoLabelingHook.probs_queue.filled'])
    assert int(algo_state.pointer) == int(z[prefix + 'PseudoLabelingHook.probs_queue.pointer'])
    keys -= {'PseudoLabelingHook.probs_queue.filled', 'PseudoLabelingHook.probs_queue.pointer'}
  assert keys == set(ours), (prefix, sorted(keys), sorted(ours))
  for key, value in ours.items():
    np.testing.assert_allclose(value, z[prefix + key], err_msg=prefix + key, **FWD)
