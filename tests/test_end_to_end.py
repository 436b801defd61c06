"""End to end on the bundled real EuroSAT sample: exact resume, config errors, the demo, and a
short smoke run of every algorithm in STSSL form (CAP on synthetic multi-label batches)."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import test as test_config
from stssl_jax import algorithms, evaluate, steps, train
from stssl_jax.data import pipeline
from stssl_jax.models import stssl as models

ROOT = pathlib.Path(__file__).parent.parent


def _config(prepared, **kw):
  c = test_config.get_config('stssl_fixmatch')
  c.data.data_dir = prepared
  c.num_steps, c.checkpoint_every, c.eval_every, c.log_every = 4, 2, 4, 2
  for k, v in kw.items():
    c[k] = v
  return c


# Settings under which each algorithm's statistics move within a few steps.
_FAST = {'freematch': dict(sup_warmup_steps=1, ema_p=0.9), 'softmatch': dict(ema_p=0.9),
         'udal': dict(ema_p=0.9), 'cdmad': dict(debias_start=1)}


def _algo_config(prepared, algorithm, **kw):
  c = _config(prepared, algorithm=algorithm, **kw)
  base = algorithm.replace('stssl_', '')
  if base in _FAST:
    c[base].update(_FAST[base])
  if algorithm == 'st_supervised':
    c.ema_momentum = 0.0
  return c


def _state_arrays(workdir, step):
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state'
  return ocp.StandardCheckpointer().restore(path.absolute())


@pytest.mark.parametrize('algorithm', ['stssl_fixmatch', 'stssl_freematch'])
def test_exact_resume_is_bit_identical(prepared, tmp_path, algorithm):
  """2 steps, stop, resume to 4 == 4 uninterrupted steps: params, EMA, Adam, data order and
  the algorithm's running statistics (FreeMatch's thresholds)."""
  full = train.train_and_evaluate(_algo_config(prepared, algorithm), str(tmp_path / 'full'))
  first = train.train_and_evaluate(_algo_config(prepared, algorithm, max_steps_this_run=2),
                                   str(tmp_path / 'split'))
  assert first['step'] == 2
  assert sorted(os.listdir(tmp_path / 'split' / 'checkpoints')) == ['2']
  resumed = train.train_and_evaluate(_algo_config(prepared, algorithm), str(tmp_path / 'split'))
  assert resumed['step'] == 4
  a, b = _state_arrays(tmp_path / 'full', 4), _state_arrays(tmp_path / 'split', 4)
  la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
  assert len(la) == len(lb) > 50
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)
  assert full['student/top1'] == resumed['student/top1']
  assert full['teacher/loss'] == resumed['teacher/loss']
  events = list((tmp_path / 'split').glob('events.out.tfevents*'))
  assert events, 'TensorBoard event files are written to the workdir'


def _main(args, timeout=600):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def test_unknown_config_key_is_a_clear_error(tmp_path):
  out = _main(['--config=configs/test.py', f'--workdir={tmp_path}',
               '--config.no_such_field=1'])
  assert out.returncode != 0
  assert 'no_such_field' in out.stderr


def test_demo_command_prints_metrics_and_leaves_artifacts(prepared, tmp_path):
  """The README demo (shortened with an override): metrics, TensorBoard and a checkpoint."""
  workdir = tmp_path / 'demo'
  out = _main(['--config=configs/eurosat.py:demo', f'--workdir={workdir}',
               f'--config.data.data_dir={prepared}', '--config.num_steps=6',
               '--config.eval_every=6', '--config.log_every=3'])
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'student/top1' in out.stdout and 'teacher/top1' in out.stdout
  assert list(workdir.glob('events.out.tfevents*'))
  assert (workdir / 'checkpoints' / '6').is_dir()
  assert (workdir / 'best').is_dir()
  conf = json.loads((workdir / 'eval' / 'step_6.json').read_text())['student']['confusion']
  np.testing.assert_allclose(np.sum(conf, axis=1), 1.0, atol=1e-9)  # Row-normalised, 10x10.
  assert np.shape(conf) == (10, 10)


def test_nan_loss_stops_with_the_step(prepared, tmp_path):
  config = _config(prepared, lr=float('nan'), warmup_steps=0)
  # A NaN learning rate makes the params non-finite in the first update.
  with pytest.raises(FloatingPointError,
                     match='first non-finite after step 1;.*checkpoint: none'):
    train.train_and_evaluate(config, str(tmp_path / 'nan'))
  assert not list((tmp_path / 'nan' / 'checkpoints').glob('*'))


def _run_steps(config, batches, lb_prevalence=None):
  """Initial state, then one jitted train step per batch; returns (state0, state, metrics)."""
  algo = algorithms.get(config.algorithm)
  model = models.build_model(config)
  mesh = evaluate.make_mesh(jax.devices()[:1])
  state, tx, _ = train.create_state(config, model, algo, jax.random.PRNGKey(0), mesh,
                                    lb_prevalence)
  state0 = jax.device_get(state)
  step = jax.jit(steps.make_train_step(model=model, algo=algo, config=config, tx=tx))
  history = []
  for batch in batches:
    state, m = step(state, batch)
    history.append(jax.device_get(m))
  for m in history:
    for k, v in m.items():
      assert np.all(np.isfinite(v)), (config.algorithm, k, v)
  return state0, jax.device_get(state), history


@pytest.mark.parametrize('algorithm', ['stssl_freematch', 'stssl_softmatch', 'stssl_defixmatch',
                                       'stssl_cdmad', 'stssl_udal', 'st_supervised'])
def test_smoke_every_algorithm_on_eurosat(prepared, algorithm):
  """3 steps on real EuroSAT batches: finite losses, statistics moving as intended."""
  config = _algo_config(prepared, algorithm, warmup_steps=0)
  it = pipeline.train_iterator(config)
  batches = [next(it) for _ in range(3)]
  for b in batches:
    if 'lb_image_strong' not in b:
      # Stand-in until the pipeline emits labeled strong views: a flipped weak view.
      b['lb_image_strong'] = np.ascontiguousarray(b['lb_image'][:, :, ::-1])
  s0, s, history = _run_steps(config, batches)
  a0, a = s0.algo_state, s.algo_state
  if algorithm == 'stssl_freematch':
    # Teacher confidences exceed 1/C, so the self-adaptive threshold rises from 0.1.
    assert float(a0.time_p) == pytest.approx(0.1) and float(a.time_p) > 0.1
    np.testing.assert_allclose([a.p_model.sum(), a.label_hist.sum()], 1.0, rtol=1e-5)
    assert 'teacher/ent_loss' in history[-1]
  elif algorithm == 'stssl_softmatch':
    assert bool(a.da.started) and float(a.mu) > float(a0.mu) and float(a.var) < 1.0
    assert all(0 < m['mask_ratio'] <= 1 for m in history)
  elif algorithm == 'stssl_defixmatch':
    assert all(m['teacher/anti_loss'] >= 0 for m in history)
    assert history[-1]['teacher/sup_loss_lb_strong'] > 0
  elif algorithm == 'stssl_cdmad':
    assert history[0]['bias_abs_mean'] == 0 and history[1]['bias_abs_mean'] > 0
  elif algorithm == 'stssl_udal':
    assert [round(float(m['alpha']), 6) for m in history] == [1.0, 0.96875, 0.875]
    assert bool(a.student_da.started)
    assert not np.allclose(a.da.p_target, 0.1)  # p_data tracks the labeled predictions.
  else:  # st_supervised: the teacher alone, no student.
    assert 'student' not in s.params and 'teacher' in s.params


def test_smoke_cap_on_synthetic_multilabel_batches():
  """STSSL-CAP (multi-label only): EMA pseudo-labeller, queue filling, quantile thresholds."""
  config = test_config.get_config('stssl_cap')
  config.multilabel, config.model.num_classes = True, 6
  config.pseudo_label_source, config.warmup_steps = 'ema', 0
  r = np.random.default_rng(0)
  b_l, b_u, size = config.batch_size, config.batch_size * config.uratio, 16
  prevalence = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
  batches = []
  for _ in range(3):
    img = lambda n: r.uniform(-1, 1, (n, size, size, 3)).astype(np.float32)
    meta = lambda n: r.uniform(-1, 1, (n, 4)).astype(np.float32)
    batches.append({'lb_image': img(b_l),
                    'lb_label': (r.random((b_l, 6)) < prevalence).astype(np.float32),
                    'lb_meta': meta(b_l), 'ulb_image_weak': img(b_u),
                    'ulb_image_strong': img(b_u), 'ulb_meta': meta(b_u),
                    'ulb_label': np.zeros((b_u, 6), np.float32)})
  _, s, history = _run_steps(config, batches, prevalence)
  assert int(s.algo_state.filled) == int(s.algo_state.pointer) == 3 * b_u
  # pos_per = neg_per = 1 (released): pos = neg = theta, so the mask is all ones.
  assert all(m['mask_ratio'] == 1.0 for m in history)
  assert 0 < history[-1]['threshold_mean'] < 1
  assert history[-1]['teacher/unsup_loss'] > 0


@pytest.mark.parametrize('algorithm,branch', [('st_supervised', 'teacher'),
                                              ('stssl_cdmad', 'student')])
def test_train_and_evaluate_teacher_only_and_debiased_eval(prepared, tmp_path, algorithm, branch):
  """st_supervised is evaluated as the teacher with metadata; CDMAD evaluates debiased."""
  config = _algo_config(prepared, algorithm, num_steps=2, eval_every=2, checkpoint_every=2)
  final = train.train_and_evaluate(config, str(tmp_path / algorithm))
  assert np.isfinite(final[f'{branch}/top1']) and np.isfinite(final[f'{branch}/loss'])
  if algorithm == 'st_supervised':
    assert not any(k.startswith('student/') for k in final)
