"""End to end on the bundled real EuroSAT sample: exact resume, config errors, the demo."""

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
from stssl_jax import train

ROOT = pathlib.Path(__file__).parent.parent
SAMPLE = ROOT / 'data' / 'eurosat_sample'


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared') / 'eurosat_sample'
  subprocess.run([sys.executable, '-m', 'data_prep.eurosat', '--images', str(SAMPLE / '2750'),
                  '--coords', str(SAMPLE / 'coords.csv'), '--out', str(out)],
                 check=True, cwd=ROOT, capture_output=True, timeout=600)
  return str(out)


def _config(prepared, **kw):
  c = test_config.get_config('stssl_fixmatch')
  c.data.data_dir = prepared
  c.num_steps, c.checkpoint_every, c.eval_every, c.log_every = 4, 2, 4, 2
  for k, v in kw.items():
    c[k] = v
  return c


def _state_arrays(workdir, step):
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state'
  return ocp.StandardCheckpointer().restore(path.absolute())


def test_exact_resume_is_bit_identical(prepared, tmp_path):
  """2 steps, stop, resume to 4 == 4 uninterrupted steps: params, EMA, Adam, data order."""
  full = train.train_and_evaluate(_config(prepared), str(tmp_path / 'full'))
  first = train.train_and_evaluate(_config(prepared, max_steps_this_run=2),
                                   str(tmp_path / 'split'))
  assert first['step'] == 2
  assert sorted(os.listdir(tmp_path / 'split' / 'checkpoints')) == ['2']
  resumed = train.train_and_evaluate(_config(prepared), str(tmp_path / 'split'))
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
  with pytest.raises(FloatingPointError, match='loss is nan at step 2'):
    train.train_and_evaluate(config, str(tmp_path / 'nan'))
