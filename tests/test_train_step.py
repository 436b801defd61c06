"""One jitted train step: what it changes, the EMA rule, and data parallelism."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from stssl_jax import algorithms, evaluate, steps, train
from stssl_jax.models import stssl as models

ROOT = pathlib.Path(__file__).parent.parent


def synthetic_batch(config, seed=0):
  """A global batch with the pipeline's keys, shapes and dtypes."""
  r = np.random.default_rng(seed)
  s, b_l = config.data.image_size, config.batch_size
  b_u = b_l * config.uratio
  img = lambda n: r.uniform(-1, 1, (n, s, s, 3)).astype(np.float32)
  meta = lambda n: r.uniform(-1, 1, (n, 4)).astype(np.float32)
  return {'lb_image': img(b_l), 'lb_label': r.integers(0, 10, b_l).astype(np.int32),
          'lb_meta': meta(b_l), 'ulb_image_weak': img(b_u), 'ulb_image_strong': img(b_u),
          'ulb_meta': meta(b_u), 'ulb_label': r.integers(0, 10, b_u).astype(np.int32),
          'lb_image_strong': img(b_l)}


def build(config, devices=None):
  mesh = evaluate.make_mesh(devices)
  algo = algorithms.get(config.algorithm)
  model = models.build_model(config)
  state, tx, _ = train.create_state(config, model, algo, jax.random.PRNGKey(config.seed), mesh)
  step = jax.jit(steps.make_train_step(model=model, algo=algo, config=config, tx=tx))
  return state, step, mesh


@pytest.fixture(scope='module')
def stssl_run():
  config = test_config.get_config('stssl_fixmatch')
  config.warmup_steps = 1  # Update 0 has LR 0 (METHOD 8), update 1 has the full LR.
  state0, step, _ = build(config)
  batch = synthetic_batch(config)
  s0 = jax.device_get(state0)
  state1, m1 = step(state0, batch)
  state2, m2 = step(state1, synthetic_batch(config, seed=1))
  return config, s0, jax.device_get(state1), jax.device_get(state2), m1, m2


def _leaves(tree):
  return jax.tree_util.tree_leaves(tree)


def test_first_update_has_zero_lr(stssl_run):
  _, s0, s1, _, m1, _ = stssl_run
  # LR 0 on update 0: neither Adam nor the LR-scaled weight decay may move anything.
  for a, b in zip(_leaves(s0.params), _leaves(s1.params)):
    np.testing.assert_array_equal(a, b)
  assert int(s1.step) == 1 and np.isfinite(m1['loss']) and m1['grad_norm'] > 0


def test_second_update_changes_params_and_ema(stssl_run):
  config, _, s1, s2, _, m2 = stssl_run
  moved = [not np.array_equal(a, b) for a, b in zip(_leaves(s1.params), _leaves(s2.params))]
  assert all(moved), 'every parameter gets a gradient (teacher, encoder, student, tokens)'
  m = config.ema_momentum
  for e1, p2, e2 in zip(_leaves(s1.ema_params), _leaves(s2.params), _leaves(s2.ema_params)):
    np.testing.assert_allclose(e2, m * e1 + (1 - m) * p2, rtol=1e-6, atol=1e-7)
  assert not np.array_equal(_leaves(s2.ema_params)[0], _leaves(s2.params)[0])
  for k in ('teacher/sup_loss', 'teacher/unsup_loss', 'student/sup_loss',
            'student/distill_loss', 'mask_ratio', 'pl_counts/teacher/correct',
            'pl_counts/image_only/correct'):
    assert np.isfinite(m2[k]), k
  # Total is the sum of teacher and student totals (METHOD 5 step 6).
  np.testing.assert_allclose(m2['loss'], m2['teacher/loss'] + m2['student/loss'], rtol=1e-5)


def test_teacher_and_student_gradients_do_not_cross():
  """Student terms reach the teacher only through stop-gradient targets (METHOD 5)."""
  config = test_config.get_config('stssl_fixmatch')
  config.lambda_u = 0.0  # Leaves L_T = L_sup(teacher) and L_S = L_sup(student) + distill.
  state, _, _ = build(config)
  model = models.build_model(config)
  batch = synthetic_batch(config)

  def student_only(params):
    logits, f = model.apply({'params': params}, batch['lb_image'], train=False,
                            method=models.STSSLModel.student)
    return jnp.sum(logits) + jnp.sum(f['meta'])
  g = jax.grad(student_only)(state.params)
  assert all(np.all(x == 0) for x in _leaves(g['teacher']))
  assert any(np.any(x != 0) for x in _leaves(g['student']))


@pytest.mark.parametrize('name', ['supervised', 'fixmatch', 'freematch', 'softmatch',
                                  'defixmatch', 'cdmad', 'udal'])
def test_baselines_step(name):
  config = test_config.get_config(name)
  config.warmup_steps = 0
  state, step, _ = build(config)
  before = jax.device_get(state.params)
  state, m = step(state, synthetic_batch(config))
  assert np.isfinite(m['loss'])
  assert any(not np.array_equal(a, b) for a, b in zip(_leaves(before),
                                                       _leaves(jax.device_get(state.params))))
  if name == 'supervised':  # EMA momentum 0: the EMA is the raw weights.
    for a, b in zip(_leaves(state.params), _leaves(state.ema_params)):
      np.testing.assert_array_equal(a, b)


DP_SCRIPT = r'''
import os, sys
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from configs import test as test_config
from tests.test_train_step import build, synthetic_batch
assert len(jax.devices()) == 8, jax.devices()
config = test_config.get_config(sys.argv[2])
config.warmup_steps = 0
config.model.depth = 1  # Sharding is what is tested: one block compiles twice as fast.
# FreeMatch: leave the supervised warm-up after step 0 and move the statistics visibly.
config.freematch.sup_warmup_steps, config.freematch.ema_p = 1, 0.9
results = []
for devices in (jax.devices()[:1], jax.devices()):
  state, step, mesh = build(config, devices)
  sh = NamedSharding(mesh, P('data'))
  for s in range(2):
    batch = {k: jax.device_put(v, sh) for k, v in synthetic_batch(config, s).items()}
    state, m = step(state, batch)
  leaf = jax.tree_util.tree_leaves(state.params)[0]
  results.append((jax.device_get(state), jax.device_get(m), len(leaf.sharding.device_set)))
(a, ma, na), (b, mb, nb) = results
assert na == 1 and nb == 8, (na, nb)
from tests import compare
flat = lambda t: {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(t)}
for k in ma:
  np.testing.assert_allclose(ma[k], mb[k], rtol=1e-6, atol=1e-6, err_msg=k)
worst, kbias = compare.assert_params_close(flat(a), flat(b), 1e-6, config.lr, 2)
print('MAXDIFF', worst, 'KBIAS', kbias)
'''


@pytest.mark.parametrize('name', ['stssl_fixmatch', 'stssl_freematch'])
def test_data_parallel_8_devices_equals_1(name, tmp_path):
  """Same state (FreeMatch: also its thresholds, from global-batch statistics) on 8 devices."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  script = tmp_path / 'dp.py'
  script.write_text(DP_SCRIPT)
  out = subprocess.run([sys.executable, str(script), str(ROOT), name], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert 'MAXDIFF' in out.stdout


def test_init_from_pretrained_npz_fills_both_backbones(tmp_path):
  """A timm-style checkpoint (1000-way head) initialises teacher and student backbones."""
  from stssl_jax.models import convert  # pylint: disable=g-import-not-at-top
  config = test_config.get_config('stssl_fixmatch')
  state, _, _ = build(config)
  src_model = models.PlainViT(variant='test', num_classes=1000)
  src = src_model.init(jax.random.PRNGKey(7), jnp.zeros((1, 16, 16, 3)))['params']
  path = tmp_path / 'vit_test_im1k.npz'
  np.savez(path, **{('module.' + k): v for k, v in convert.to_torch_vit(jax.device_get(src)).items()})
  new = train._init_from(state, str(path))
  for branch in ('teacher', 'student'):
    for a, b in zip(_leaves(src['backbone']), _leaves(new.params[branch]['backbone'])):
      np.testing.assert_array_equal(a, b)
    # Heads are skipped (1000 != 10 classes) and keep their fresh init.
    np.testing.assert_array_equal(new.params[branch]['head']['kernel'],
                                  state.params[branch]['head']['kernel'])
  for a, b in zip(_leaves(new.params), _leaves(new.ema_params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('bias_head', ['quirk', 'joint_head'])
def test_cdmad_eval_subtracts_the_teachers_blank_image_bias(bias_head):
  """STSSL-CDMAD evaluates the student minus the teacher's blank-image logits (METHOD 7.5)."""
  config = test_config.get_config('stssl_cdmad')
  config.cdmad.debias_start, config.cdmad.bias_head = 3, bias_head
  config.warmup_steps = 0
  state, _, _ = build(config)
  model, algo = models.build_model(config), algorithms.get(config.algorithm)
  assert model.aux_head == (bias_head == 'quirk')
  b = synthetic_batch(config)
  batch = {'image': b['lb_image'], 'label': b['lb_label'], 'meta': b['lb_meta'],
           'mask': np.ones(len(b['lb_label']), bool)}
  p = state.ema_params
  raw, _ = model.apply({'params': p}, batch['image'], method=models.STSSLModel.student)
  t_logits, t_feats = model.apply({'params': p}, jnp.ones((1, 16, 16, 3)), None,
                                  method=models.STSSLModel.teacher)
  bias = t_feats['aux_logits'] if bias_head == 'quirk' else t_logits
  logits = lambda n: steps.eval_logits(p, batch, model=model, algo=algo, config=config,
                                       branch='student', num_updates=n)
  np.testing.assert_allclose(logits(3), raw, rtol=1e-6)  # Update index 2 < 3: no bias yet.
  np.testing.assert_allclose(logits(4), raw - bias, rtol=1e-5, atol=1e-6)
  # The aux head is frozen: no update, no weight decay (quirk Q1); everything else moves.
  if bias_head == 'quirk':
    state, step, _ = build(config)
    new, _ = step(state, b)
    for x, y in zip(_leaves(state.params['teacher']['aux_head']),
                    _leaves(new.params['teacher']['aux_head'])):
      np.testing.assert_array_equal(x, y)
    assert not np.array_equal(state.params['teacher']['head']['kernel'],
                              new.params['teacher']['head']['kernel'])


def test_unlabeled_pool_without_true_labels_trains_identically():
  """`ulb_label` feeds only the pseudo-label diagnostics: without it the step runs and its
  losses and new params are the same bit for bit; only the pl_counts metrics are absent."""
  config = test_config.get_config('stssl_fixmatch')
  config.warmup_steps, config.image_only_pl_every = 0, 0
  algo = algorithms.get(config.algorithm)
  model = models.build_model(config)
  params = jax.jit(lambda k: model.init(k, *models.init_inputs(config), train=False)['params'])(
      jax.random.PRNGKey(3))
  state, tx, _ = train.state_from_params(config, params, algo)
  # The state built from given params starts from exactly them, EMA included.
  for a, b in zip(_leaves(params), _leaves(state.ema_params)):
    np.testing.assert_array_equal(a, b)
  assert int(state.step) == 0 and int(state.first_nonfinite) == -1
  step = jax.jit(steps.make_train_step(model=model, algo=algo, config=config, tx=tx))
  batch = synthetic_batch(config)
  with_labels, m1 = step(state, batch)
  without, m2 = step(state, {k: v for k, v in batch.items() if k != 'ulb_label'})
  assert any(k.startswith('pl_counts/') for k in m1)
  assert {k for k in m1 if not k.startswith('pl_counts/')} == set(m2)
  for k in m2:
    np.testing.assert_array_equal(m1[k], m2[k], err_msg=k)
  moved = [not np.array_equal(a, b) for a, b in zip(_leaves(params), _leaves(without.params))]
  assert sum(moved) > len(moved) // 2
  for a, b in zip(_leaves(with_labels), _leaves(without)):
    np.testing.assert_array_equal(a, b)
