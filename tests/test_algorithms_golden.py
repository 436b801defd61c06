"""Golden numbers for FreeMatch, SoftMatch, DeFixMatch, CAP, CDMAD and UDAL (METHOD 7).

Each test feeds hand-made logits (usually logs of chosen probabilities) and checks the
thresholds, weights, targets and loss terms against values worked out here from METHOD's
formulas with plain NumPy. The last tests compare the remaining cases of the original's
criterions (tests/fixtures/parity/criterions.npz): ASL, FreeMatch's entropy losses and BCE with
ignored (-1) entries, values and gradients.
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from stssl_jax import algorithms
from stssl_jax.algorithms import (cap, cdmad, common, defixmatch, freematch, softmatch, stssl,
                                  udal)

FIX = pathlib.Path(__file__).parent / 'fixtures' / 'parity'
TOL = dict(rtol=1e-12, atol=1e-14)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def cfg(multilabel=False, **kw):
  c = default.get_config()
  c.multilabel = multilabel
  for k, v in kw.items():
    parent, _, leaf = k.rpartition('__')
    (c[parent] if parent else c)[leaf] = v
  return c


def logit(p):
  p = np.asarray(p, np.float64)
  return jnp.asarray(np.log(p / (1 - p)))


def test_freematch_single_label_thresholds_and_fairness():
  c = cfg(freematch__ema_p=0.5, lambda_u=1.0, freematch__lambda_e=0.1,
          freematch__sup_warmup_steps=1)
  p = np.array([[0.9, 0.05, 0.05], [0.36, 0.33, 0.31], [0.05, 0.05, 0.9]])
  state = freematch.init_state(c, 3)
  np.testing.assert_allclose([state.time_p, *state.p_model, *state.label_hist], 1 / 3)
  state, t, _ = freematch.make_targets(state, jnp.log(p), c, 1)
  # EMA (m = 0.5) of the batch statistics, updated before the mask.
  tau = 0.5 / 3 + 0.5 * np.mean([0.9, 0.36, 0.9])  # 0.52667
  pbar = 0.5 / 3 + 0.5 * p.mean(0)  # (0.385, 0.23833, 0.37667)
  h = 0.5 / 3 + 0.5 * np.array([2, 0, 1]) / 3  # argmax 0, 0, 2
  np.testing.assert_allclose(state.time_p, tau, **TOL)
  np.testing.assert_allclose(state.p_model, pbar, **TOL)
  np.testing.assert_allclose(state.label_hist, h, **TOL)
  # M_n = 1[max P >= tau pbar[k] / max pbar]: 0.9 >= 0.527, 0.36 < 0.527, 0.9 >= 0.515.
  np.testing.assert_array_equal(t.weight, [1, 0, 1])
  np.testing.assert_array_equal(t.label, [0, 0, 2])
  # Fairness on the kept rows 0 and 2 of the strong logits.
  strong = np.log(np.array([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6]]))
  q = np.exp(strong)[[0, 2]]
  hs = np.array([0.5, 0.0, 0.5])  # argmax of the kept rows: 0 and 2
  a = pbar / h
  a /= a.sum()
  b = q.mean(0) * np.where(hs > 0, 1 / np.where(hs > 0, hs, 1), 0)  # inv(0) = 0
  b /= b.sum()
  fair = np.sum(a * np.log(b + 1e-12))
  loss, terms = freematch.loss_terms(jnp.log(p[:1]), jnp.array([0]), jnp.asarray(strong), t,
                                     state, c, 1)
  np.testing.assert_allclose(terms['ent_loss'], fair, **TOL)
  np.testing.assert_allclose(terms['ent_hist_mean'], 1 / 3, **TOL)
  unsup = (-np.log(0.6) - np.log(0.6)) / 3
  np.testing.assert_allclose(terms['unsup_loss'], unsup, **TOL)
  np.testing.assert_allclose(loss, -np.log(0.9) + unsup + 0.1 * fair, **TOL)
  # During the supervised warm-up only L_sup counts, and STSSL drops distillation too.
  warm, _ = freematch.loss_terms(jnp.log(p[:1]), jnp.array([0]), jnp.asarray(strong), t,
                                 state, c, 0)
  np.testing.assert_allclose(warm, -np.log(0.9), **TOL)
  assert float(freematch.distill_gate(c, 0)) == 0 and float(freematch.distill_gate(c, 1)) == 1


def test_freematch_multilabel_thresholds_and_fairness():
  c = cfg(True, freematch__ema_p=0.5, freematch__lambda_e=0.1, freematch__sup_warmup_steps=0)
  p = np.array([[0.9, 0.3], [0.6, 0.2], [0.8, 0.45]])
  state, t, _ = freematch.make_targets(freematch.init_state(c, 2), logit(p), c, 0)
  conf = np.maximum(p, 1 - p)
  tau = 0.25 + 0.5 * conf.mean(0)
  pbar = 0.25 + 0.5 * p.mean(0)
  h = 0.25 + 0.5 * (p >= 0.5).mean(0)
  np.testing.assert_allclose(state.time_p, tau, **TOL)
  np.testing.assert_allclose(state.p_model, pbar, **TOL)
  np.testing.assert_allclose(state.label_hist, h, **TOL)
  scale = np.maximum(pbar, 1 - pbar)
  r = np.where(p >= 0.5, pbar / scale, (1 - pbar) / scale)
  mask = conf >= tau * r
  np.testing.assert_array_equal(mask, [[1, 1], [0, 1], [1, 0]])  # 0.6 < 0.8667; 0.55 < 0.64
  np.testing.assert_array_equal(t.weight, mask)
  np.testing.assert_array_equal(t.label, p >= 0.5)
  strong = np.array([[0.7, 0.4], [0.2, 0.1], [0.4, 0.6]])
  s = mask.sum(0)
  hs = ((strong >= 0.5) * mask).sum(0) / s  # class 0: rows 0, 2 -> 1/2; class 1: rows 0, 1 -> 0
  a = (pbar / h) / (pbar / h + (1 - pbar) / (1 - h))
  big_a = (strong * mask).sum(0) / s * np.array([2.0, 0.0])
  big_b = ((1 - strong) * mask).sum(0) / s * (1 / (1 - hs))
  b = big_a / (big_a + big_b)
  fair = np.sum(a * np.log(b + 1e-12) + (1 - a) * np.log(1 - b + 1e-12))
  _, terms = freematch.loss_terms(logit([[0.5, 0.5]]), jnp.ones((1, 2)), logit(strong), t,
                                  state, c, 0)
  np.testing.assert_allclose(terms['ent_loss'], fair, rtol=1e-12)
  # A class without any masked entry: the original divides 0 by 0 ([QUIRK], default 'nan');
  # 'drop' leaves it out of the sum.
  empty = t._replace(weight=t.weight.at[:, 1].set(0))
  _, nan_terms = freematch.loss_terms(logit([[0.5, 0.5]]), jnp.ones((1, 2)), logit(strong),
                                      empty, state, c, 0)
  assert np.isnan(nan_terms['ent_loss'])
  c.freematch.empty_class = 'drop'
  loss, drop_terms = freematch.loss_terms(logit([[0.5, 0.5]]), jnp.ones((1, 2)),
                                          logit(strong), empty, state, c, 0)
  b0 = big_a[0] / (big_a[0] + big_b[0])
  np.testing.assert_allclose(drop_terms['ent_loss'], a[0] * np.log(b0 + 1e-12)
                             + (1 - a[0]) * np.log(1 - b0 + 1e-12), rtol=1e-12)
  grads = jax.grad(lambda z: freematch.loss_terms(logit([[0.5, 0.5]]), jnp.ones((1, 2)), z,
                                                  empty, state, c, 0)[0])(logit(strong))
  assert np.isfinite(loss) and np.all(np.isfinite(grads))


def test_softmatch_alignment_and_gaussian_weights():
  c = cfg(softmatch__ema_p=0.5, softmatch__n_sigma=2.0)
  p = np.array([[0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.4, 0.35, 0.25]])
  p_lb = np.array([[0.5, 0.25, 0.25]])
  extras = common.Extras(weak_lb=jnp.log(p_lb))
  assert softmatch.needs(c) == {'weak_lb'}
  state, t, _ = softmatch.make_targets(softmatch.init_state(c, 3), jnp.log(p), c, 0, extras)
  pbar = p.mean(0)  # The first batch sets p_model, no EMA mixing.
  pt = 0.5 / 3 + 0.5 * p_lb[0]  # EMA of the labeled probabilities, initialised uniform.
  np.testing.assert_allclose(state.da.p_model, pbar, **TOL)
  np.testing.assert_allclose(state.da.p_target, pt, **TOL)
  aligned = p * (pt + 1e-6) / (pbar + 1e-6)
  aligned /= aligned.sum(1, keepdims=True)
  conf = aligned.max(1)
  mu = 0.5 / 3 + 0.5 * conf.mean()
  var = 0.5 * 1.0 + 0.5 * conf.var(ddof=1)  # Unbiased batch variance.
  np.testing.assert_allclose(state.mu, mu, **TOL)
  np.testing.assert_allclose(state.var, var, **TOL)
  w = np.exp(-np.minimum(conf - mu, 0) ** 2 / (2 * var / 4))
  np.testing.assert_allclose(t.weight, w, **TOL)
  assert w[0] == 1.0 and w[1] < 1.0 and w[2] < 1.0  # Weight 1 above the mean only.
  # Hard labels from the raw logits; the aligned argmax would be (0, 2, 1).
  np.testing.assert_array_equal(t.label, [0, 0, 0])
  assert list(np.argmax(aligned, 1)) == [0, 2, 1]
  # Multi-label: fixed prior (labeled prevalence), per-class mu/var.
  cm = cfg(True, softmatch__ema_p=0.5)
  prior = np.array([0.3, 0.6])
  pm = np.array([[0.8, 0.4], [0.3, 0.9]])
  sm, tm, _ = softmatch.make_targets(softmatch.init_state(cm, 2, prior), logit(pm), cm, 0)
  pbar = pm.mean(0)
  pos = pm * (prior + 1e-6) / (pbar + 1e-6)
  neg = (1 - pm) * (1 - prior + 1e-6) / (1 - pbar + 1e-6)
  al = pos / (pos + neg)
  conf = np.maximum(al, 1 - al)
  mu, var = 0.25 + 0.5 * conf.mean(0), 0.5 + 0.5 * conf.var(0, ddof=1)
  np.testing.assert_allclose(sm.mu, mu, **TOL)
  np.testing.assert_allclose(tm.weight, np.exp(-np.minimum(conf - mu, 0) ** 2 / (var / 2)),
                             **TOL)


def test_defixmatch_anti_term():
  c = cfg(threshold=(0.6,), lambda_u=0.5)
  weak_ulb = jnp.log(jnp.array([[0.7, 0.3], [0.55, 0.45]]))
  weak_lb = jnp.log(jnp.array([[0.2, 0.8], [0.5, 0.5]]))
  _, t, _ = defixmatch.make_targets(defixmatch.State(), weak_ulb, c, 0,
                                    common.Extras(weak_lb=weak_lb))
  np.testing.assert_array_equal(t.lb_label, [1, 0])  # From the weak labeled logits, not y.
  np.testing.assert_array_equal(t.lb_weight, [1, 0])
  np.testing.assert_array_equal(t.weight, [1, 0])
  z_l = jnp.log(jnp.array([[0.5, 0.5], [0.5, 0.5]]))
  z_ls = jnp.log(jnp.array([[0.25, 0.75], [0.9, 0.1]]))
  strong = jnp.log(jnp.array([[0.4, 0.6], [0.5, 0.5]]))
  y = jnp.array([0, 0])
  loss, terms = defixmatch.loss_terms(jnp.concatenate([z_l, z_ls]), y, strong, t, None, c, 0)
  sup = 0.5 * (math.log(2) + (-math.log(0.25) - math.log(0.9)) / 2)
  unsup, anti = -math.log(0.4) / 2, -math.log(0.75) / 2
  np.testing.assert_allclose(terms['sup_loss'], sup, **TOL)
  np.testing.assert_allclose(terms['anti_loss'], anti, **TOL)
  np.testing.assert_allclose(loss, sup + 0.5 * (unsup - anti), **TOL)


def test_cap_class_aware_quantiles_and_asl():
  c = cfg(True, cap__queue_length=5, cap__pos_per=0.5, cap__neg_per=0.5)
  prior = np.array([0.25, 0.5])
  state = cap.init_state(c, 2, prior)
  p1 = np.array([[0.1, 0.9], [0.4, 0.2], [0.7, 0.6]])
  state, _, _ = cap.make_targets(state, logit(p1), c, 0)
  p2 = np.array([[0.3, 0.5], [0.8, 0.1], [0.2, 0.7]])
  state, t, _ = cap.make_targets(state, logit(p2), c, 1)
  # FIFO of 5 rows: p1's first row was overwritten by p2's last, pointer wrapped to 1.
  assert int(state.pointer) == 1 and int(state.filled) == 5
  queue = np.concatenate([p2[2:], p1[1:], p2[:2]])
  np.testing.assert_allclose(state.queue, queue.astype(np.float32))
  srt = np.sort(queue.astype(np.float32), axis=0)
  q = lambda level: srt[np.clip(np.floor(5 * level), 0, 4).astype(int), [0, 1]]
  theta, pos, neg = q(1 - prior), q(1 - 0.5 * prior), q(0.5 * (1 - prior))
  got = cap.thresholds(state, c)
  for g, w in zip(got, (theta, pos, neg)):
    np.testing.assert_array_equal(g, w)
  # Sorted columns (0.2, 0.3, 0.4, 0.7, 0.8) and (0.1, 0.2, 0.5, 0.6, 0.7): theta = (0.7, 0.5),
  # pos = (0.8, 0.6), neg = (0.3, 0.2).
  for g, w in zip(got, ([0.7, 0.5], [0.8, 0.6], [0.3, 0.2])):
    np.testing.assert_allclose(g, w, rtol=1e-7)
  np.testing.assert_array_equal(t.label, p2 >= theta)
  np.testing.assert_array_equal(t.weight, (p2 >= pos) | (p2 <= neg))
  # ASL on one positive and one negative entry: gamma+ 1, gamma- 4, clip 0.05.
  z = logit([[0.8, 0.3]])
  y = jnp.array([[1.0, 0.0]])
  pn = min(1 - 0.3 + 0.05, 1)
  want = np.array([[-math.log(0.8) * (1 - 0.8) ** 1, -math.log(pn) * (1 - pn) ** 4]])
  np.testing.assert_allclose(cap.asl(z, y, c), want, **TOL)
  loss, terms = cap.loss_terms(z, y, z, cap.Targets(y, jnp.array([[1.0, 0.0]])), state, c, 0)
  np.testing.assert_allclose(terms['sup_loss'], want.mean(), **TOL)
  np.testing.assert_allclose(terms['unsup_loss'], want[0, 0] / (1 + 1e-8), **TOL)
  np.testing.assert_allclose(loss, want.mean() + want[0, 0] / (1 + 1e-8), **TOL)
  with pytest.raises(ValueError, match='multi-label'):
    cap.init_state(cfg(False), 2, prior)


def test_cdmad_bias_subtraction_and_soft_targets():
  c = cfg(threshold=(0.6,), cdmad__debias_start=2)
  weak = jnp.log(jnp.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]))
  bias = jnp.log(jnp.array([[2.0, 1.0, 1.0]]))  # The blank image favours class 0.
  extras = common.Extras(bias=bias)
  _, before, _ = cdmad.make_targets(cdmad.State(), weak, c, 1, extras)
  np.testing.assert_allclose(before.label, [[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]], **TOL)  # b = 0
  _, t, _ = cdmad.make_targets(cdmad.State(), weak, c, 2, extras)
  soft = np.array([[0.25, 0.3, 0.2], [0.1, 0.2, 0.6]])
  soft /= soft.sum(1, keepdims=True)
  np.testing.assert_allclose(t.label, soft, **TOL)
  np.testing.assert_array_equal(t.weight, [0, 1])  # On the debiased targets: max 0.4, 0.67.
  strong = jnp.zeros((2, 3))
  _, terms = cdmad.loss_terms(jnp.zeros((1, 3)), jnp.array([0]), strong, t, None, c, 2)
  np.testing.assert_allclose(terms['unsup_loss'], math.log(3) / 2, **TOL)  # Soft CE.
  # Evaluation: the first evaluation after `debias_start` updates still has b = 0.
  logits = jnp.zeros((1, 3))
  np.testing.assert_allclose(cdmad.debias_eval(logits, bias, c, 2), 0.0)
  np.testing.assert_allclose(cdmad.debias_eval(logits, bias, c, 3), -bias)


def test_udal_logit_adjustment_and_alpha_schedule():
  c = cfg(threshold=(0.6,), udal__ema_p=0.5, udal__a_min=0.5, udal__k=2.0, num_steps=4)
  np.testing.assert_allclose([udal.alpha(c, t) for t in range(5)],
                             [1.0, 0.96875, 0.875, 0.71875, 0.5], **TOL)
  weak = jnp.log(jnp.array([[0.7, 0.2, 0.1], [0.3, 0.4, 0.3]]))
  weak_lb = jnp.log(jnp.array([[0.6, 0.3, 0.1]]))
  state, t, _ = udal.make_targets(udal.init_state(c, 3), weak, c, 2,
                                  common.Extras(weak_lb=weak_lb))
  p_data = 0.5 / 3 + 0.5 * np.array([0.6, 0.3, 0.1])
  p_model = np.array([0.5, 0.3, 0.2])
  g = p_data ** 0.875 / np.sum(p_data ** 0.875)
  np.testing.assert_allclose(state.da.p_target, p_data, **TOL)
  np.testing.assert_allclose(t.sup_shift, np.log(p_data / (g + 1e-9)), **TOL)
  np.testing.assert_allclose(t.unsup_shift, np.log(p_model / (g + 1e-9)), **TOL)
  np.testing.assert_array_equal(t.weight, [1, 0])
  z_l = jnp.zeros((1, 3))
  _, terms = udal.loss_terms(z_l, jnp.array([0]), jnp.zeros((2, 3)), t, state, c, 2)
  adj = np.log(p_data / (g + 1e-9))
  np.testing.assert_allclose(terms['sup_loss'], -(adj[0] - np.log(np.exp(adj).sum())), **TOL)
  # STSSL student: its own estimate is kept; its adjustment replaces the teacher's only with
  # udal.student_pbar = 'student' ([QUIRK] METHOD 7.6).
  s_strong = jnp.log(jnp.array([[0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]))
  s_state, s_t = udal.student_targets(state, t, weak_lb, s_strong, c, 2)
  np.testing.assert_allclose(s_state.student_da.p_model, [0.1, 0.1, 0.8], **TOL)
  np.testing.assert_array_equal(s_t.unsup_shift, t.unsup_shift)
  c.udal.student_pbar = 'student'
  _, s_t = udal.student_targets(state, t, weak_lb, s_strong, c, 2)
  np.testing.assert_allclose(s_t.unsup_shift, np.log(np.array([0.1, 0.1, 0.8]) / (g + 1e-9)),
                             **TOL)
  # Multi-label: fixed labeled prevalence, g = pt^a / (pt^a + (1 - pt)^a).
  cm = cfg(True, threshold=(0.6,), udal__ema_p=0.5, num_steps=4)
  prior = np.array([0.2, 0.5])
  _, tm, _ = udal.make_targets(udal.init_state(cm, 2, prior), logit([[0.9, 0.5]]), cm, 2)
  gm = prior ** 0.875 / (prior ** 0.875 + (1 - prior) ** 0.875)
  np.testing.assert_allclose(tm.sup_shift, np.log(prior / (gm + 1e-9)), **TOL)
  np.testing.assert_allclose(tm.unsup_shift, np.log(np.array([0.9, 0.5]) / (gm + 1e-9)), **TOL)


def test_stssl_wrapper_gates_distillation_and_uses_student_targets():
  """FreeMatch warm-up turns distillation off; UDAL's student hook feeds the student only."""
  c = cfg(freematch__sup_warmup_steps=1, lambda_d=0.5, distill='mse')
  t = freematch.Targets(jnp.array([0]), jnp.array([1.0]))
  state = freematch.init_state(c, 2)
  logits = (jnp.zeros((2, 2)), {'meta': jnp.ones((2, 4))})
  student = (jnp.zeros((2, 2)), {'meta': jnp.zeros((2, 4))})
  args = (state, t, jnp.array([0]), logits, student, 1)
  _, m0, _ = stssl.step_losses(freematch, c, 0, *args)
  _, m1, _ = stssl.step_losses(freematch, c, 1, *args)
  np.testing.assert_allclose(m0['student/distill_loss'], 1.0)  # Logged, but not added:
  np.testing.assert_allclose(m0['student/loss'], math.log(2), **TOL)
  np.testing.assert_allclose(m1['student/loss'] - m1['student/distill_loss'] * 0.5,
                             m1['student/sup_loss'] + m1['student/unsup_loss']
                             + c.freematch.lambda_e * m1['student/ent_loss'], **TOL)


def _crit():
  return dict(np.load(FIX / 'criterions.npz'))


@pytest.mark.parametrize('case', ['asl_mean', 'asl_none', 'freematch_entropy_loss',
                                  'freematch_binary_entropy_loss', 'bce_mean_ignore'])
def test_remaining_criterions_match_original(case):
  z = _crit()
  inp = lambda k: jnp.asarray(z[f'input/{k}'])
  c = cfg(True)
  fns = {
      'asl_mean': lambda x: jnp.mean(cap.asl(x, inp('y_multihot'), c)),
      'asl_none': lambda x: cap.asl(x, inp('y_multihot'), c),
      'freematch_entropy_loss': lambda x: freematch.fairness_loss(
          inp('mask_row'), x, inp('fm_p_model'), inp('fm_label_hist'), False)[0],
      'freematch_binary_entropy_loss': lambda x: freematch.fairness_loss(
          inp('mask_elem_fm'), x, inp('fm_p_model_ml'), inp('fm_label_hist_ml'), True)[0],
      'bce_mean_ignore': lambda x: common.sup_loss(x, inp('y_multihot_with_ignore'), True),
  }
  fn = fns[case]
  value = fn(inp('logits'))
  grad = jax.grad(lambda x: jnp.sum(fn(x)))(inp('logits'))
  np.testing.assert_allclose(value, z[f'out/{case}'], rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(grad, z[f'grad/{case}/logits'], rtol=1e-8, atol=1e-11)


def test_registry_resolves_every_algorithm():
  for name in algorithms.names():
    algo = algorithms.get(name)
    assert algo.stssl == name.startswith('stssl_')
  st = algorithms.get('st_supervised')
  assert st.teacher_only and st.uses_meta and st.eval_branch == 'teacher'
  assert not st.uses_unlabeled
  assert algorithms.get('stssl_udal').eval_branch == 'student'
  assert algorithms.get('cdmad').eval_branch == 'plain'
  assert algorithms.get('stssl_defixmatch').needs(cfg()) == {'weak_lb', 'lb_strong'}
  assert algorithms.get('stssl_softmatch').needs(cfg(True)) == set()  # Fixed prior.
  with pytest.raises(ValueError, match='st_supervised'):
    algorithms.get('stssl_supervised')
  with pytest.raises(ValueError, match='known'):
    algorithms.get('mixmatch')
