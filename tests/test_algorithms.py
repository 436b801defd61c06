"""Golden numbers for the shared SSL maths, FixMatch targets/losses and the LR schedule.

Two sources: values worked out by hand in the test, and the original PyTorch criterions
(tests/fixtures/parity/criterions.npz, float64).
"""

import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stssl_jax import optim
from stssl_jax.algorithms import common, fixmatch, stssl

FIX = pathlib.Path(__file__).parent / 'fixtures' / 'parity'


@pytest.fixture(scope='module')
def crit():
  with jax.enable_x64(True):
    yield dict(np.load(FIX / 'criterions.npz'))


def _cfg(**kw):
  d = dict(multilabel=False, threshold=0.95, lambda_u=1.0, distill='mse', lambda_d=0.5)
  d.update(kw)
  return ml_collections.ConfigDict(d)


def test_hand_made_single_label_fixmatch():
  # Row 0: logits (log 8, 0, 0) -> p = (0.8, 0.1, 0.1): confident, label 0.
  # Row 1: logits (0, log 3, 0) -> p = (0.2, 0.6, 0.2): below tau 0.7, label 1.
  weak = jnp.array([[math.log(8), 0.0, 0.0], [0.0, math.log(3), 0.0]])
  _, t, m = fixmatch.make_targets(fixmatch.State(), weak, _cfg(threshold=0.7), 0)
  np.testing.assert_array_equal(t.label, [0, 1])
  np.testing.assert_array_equal(t.weight, [1.0, 0.0])
  assert float(m['mask_ratio']) == 0.5
  # Strong logits (0,0,0) for both rows: CE = log 3 on row 0 only, averaged over B_u = 2.
  strong = jnp.zeros((2, 3))
  lb = jnp.array([[math.log(8), 0.0, 0.0]])  # CE against label 0 = -log 0.8.
  loss, terms = fixmatch.loss_terms(lb, jnp.array([0]), strong, t, None, _cfg(lambda_u=2.0), 0)
  np.testing.assert_allclose(terms['sup_loss'], -math.log(0.8), rtol=1e-6)
  np.testing.assert_allclose(terms['unsup_loss'], math.log(3) / 2, rtol=1e-6)
  np.testing.assert_allclose(loss, -math.log(0.8) + 2 * math.log(3) / 2, rtol=1e-6)


def test_hand_made_multilabel_pair_threshold():
  # METHOD 4: with (0.05, 0.7), p = 0.6 gives pseudo-label 1 but mask 0.
  p = jnp.array([[0.6, 0.02, 0.75, 0.05, 0.5]])
  logits = jnp.log(p / (1 - p))
  cfg = _cfg(multilabel=True, threshold=(0.05, 0.7))
  _, t, _ = fixmatch.make_targets(fixmatch.State(), logits, cfg, 0)
  np.testing.assert_array_equal(t.label, [[1, 0, 1, 0, 1]])  # 1[z >= 0]; p = 0.5 -> 1.
  np.testing.assert_array_equal(t.weight, [[0, 1, 1, 1, 0]])  # Inclusive at 0.05.
  # Scalar tau 0.7 means max(p, 1-p) >= 0.7.
  _, t2, _ = fixmatch.make_targets(fixmatch.State(), logits, _cfg(multilabel=True,
                                                                    threshold=0.7), 0)
  np.testing.assert_array_equal(t2.weight, [[0, 1, 1, 1, 0]])
  # Masked BCE averages over all B*C entries: zero logits give log 2 per kept entry.
  loss = common.consistency_loss(jnp.zeros((1, 5)), t.label, t.weight, True)
  np.testing.assert_allclose(loss, 3 * math.log(2) / 5, rtol=1e-6)


def test_criterions_match_original(crit):
  with jax.enable_x64(True):
    z = jnp.asarray(crit['input/logits'])
    cases = {
        'ce_hard_mean': lambda z: common.sup_loss(z, jnp.asarray(crit['input/y_hard']), False),
        'ce_soft_mean': lambda z: common.sup_loss(z, jnp.asarray(crit['input/y_soft']), False),
        'bce_mean': lambda z: common.sup_loss(z, jnp.asarray(crit['input/y_multihot']), True),
        'consistency_ce_hard_mask': lambda z: common.consistency_loss(
            z, jnp.asarray(crit['input/y_hard']), jnp.asarray(crit['input/mask_row']), False),
        'consistency_ce_soft_mask': lambda z: common.consistency_loss(
            z, jnp.asarray(crit['input/y_soft']), jnp.asarray(crit['input/mask_row']), False),
        'consistency_bce_mask': lambda z: common.consistency_loss(
            z, jnp.asarray(crit['input/y_multihot']), jnp.asarray(crit['input/mask_elem']), True),
    }
    for name, fn in cases.items():
      val, grad = jax.value_and_grad(fn)(z)
      np.testing.assert_allclose(val, crit[f'out/{name}'], rtol=1e-10, atol=1e-12, err_msg=name)
      np.testing.assert_allclose(grad, crit[f'grad/{name}/logits'], rtol=1e-8, atol=1e-11,
                                 err_msg=name)


@pytest.mark.parametrize('kind', ['mse', 'mae', 'cos'])
def test_distillation_matches_original(crit, kind):
  with jax.enable_x64(True):
    s = jnp.concatenate([crit['input/student_feat_lb'], crit['input/student_feat_ulb']])
    t = jnp.concatenate([crit['input/teacher_feat_lb'], crit['input/teacher_feat_ulb']])
    val, (gs, gt) = jax.value_and_grad(
        lambda s, t: common.distill_loss(s, t, kind), argnums=(0, 1))(s, t)
    np.testing.assert_allclose(val, crit[f'out/distill_{kind}'], rtol=1e-10, atol=1e-12)
    want = np.concatenate([crit[f'grad/distill_{kind}/student_feat_lb'],
                           crit[f'grad/distill_{kind}/student_feat_ulb']])
    np.testing.assert_allclose(gs, want, rtol=1e-8, atol=1e-11)
    np.testing.assert_array_equal(gt, np.zeros_like(gt))  # Teacher side is detached.


def test_stssl_wrapper_shares_targets_and_distils():
  """The student is scored against the teacher's targets; distillation adds lambda_d*mse."""
  cfg = _cfg(threshold=0.5, lambda_u=1.0, distill='mse', lambda_d=0.5)
  t = fixmatch.Targets(label=jnp.array([2]), weight=jnp.array([1.0]))
  t_logits = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(4)]])  # rows [lb; strong]
  s_logits = jnp.zeros((2, 3))
  t_feats = {'meta': jnp.ones((2, 4))}
  s_feats = {'meta': jnp.zeros((2, 4))}
  loss, m = stssl.losses(fixmatch, cfg, 0, fixmatch.State(), t, jnp.array([1]),
                         (t_logits, t_feats), (s_logits, s_feats), n_lb=1)
  log3 = math.log(3)
  np.testing.assert_allclose(m['teacher/sup_loss'], log3, rtol=1e-6)
  np.testing.assert_allclose(m['teacher/unsup_loss'], -math.log(4 / 6), rtol=1e-6)
  np.testing.assert_allclose(m['student/unsup_loss'], log3, rtol=1e-6)
  np.testing.assert_allclose(m['student/distill_loss'], 1.0, rtol=1e-6)
  want = (log3 - math.log(4 / 6)) + (2 * log3 + 0.5 * 1.0)
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  cfg.distill = 'none'
  loss_nd, _ = stssl.losses(fixmatch, cfg, 0, fixmatch.State(), t, jnp.array([1]),
                            (t_logits, t_feats), (s_logits, s_feats), n_lb=1)
  np.testing.assert_allclose(loss_nd, want - 0.5, rtol=1e-6)


@pytest.mark.parametrize('w,t', [(0, 64000), (5120, 204800), (10, 100)])
def test_lr_schedule_matches_original(w, t):
  z = np.load(FIX / 'lr_schedule.npz')
  sched = optim.lr_schedule(1.0, w, t)
  got = np.array([sched(s) for s in z[f'W{w}_T{t}/step']])
  np.testing.assert_allclose(got, z[f'W{w}_T{t}/lr_factor'], atol=2e-7)
  got_updates = np.array([sched(s) for s in range(30)])
  np.testing.assert_allclose(got_updates, z[f'W{w}_T{t}/lr_of_update_0_to_29'], atol=2e-7)


def test_decay_mask_differs_between_stssl_and_plain():
  params = {'cls': jnp.zeros((1, 1, 4)), 'pos_embed': jnp.zeros((1, 5, 4)),
            'head': {'kernel': jnp.zeros((4, 3)), 'bias': jnp.zeros((3,))},
            'norm': {'scale': jnp.zeros((4,))}}
  stssl_mask = optim.decay_mask(params, exclude_tokens=False)
  plain_mask = optim.decay_mask(params, exclude_tokens=True)
  assert stssl_mask['cls'] and stssl_mask['pos_embed'] and stssl_mask['head']['kernel']
  assert not stssl_mask['head']['bias'] and not stssl_mask['norm']['scale']
  assert not plain_mask['cls'] and not plain_mask['pos_embed'] and plain_mask['head']['kernel']
