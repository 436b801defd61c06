"""Fault injection at named points (stssl_jax/faults.py): kills, a full disk, a NaN, an error
in evaluation. After each the workdir resumes, holds no non-finite checkpoint and no temporary
folder, and the final state equals an uninterrupted run bit for bit.

Schedule of every run here: 6 steps, checkpoints at 2/4/6, evaluations at 3 and 6 (not a
multiple of the checkpoint interval, which is what left the between-saves window open), logs
at 2/4/6.
"""

import errno
import json
import os
import pathlib
import subprocess
import sys

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import test as test_config
from stssl_jax import checkpoint, faults, train

ROOT = pathlib.Path(__file__).parent.parent


def _config(prepared, **kw):
  c = test_config.get_config('stssl_fixmatch')
  c.data.data_dir = prepared
  c.num_steps, c.checkpoint_every, c.eval_every, c.log_every = 6, 2, 3, 2
  c.patience = 100
  for k, v in kw.items():
    c[k] = v
  return c


def _state(workdir, step):
  path = pathlib.Path(workdir) / 'checkpoints' / str(step) / 'state'
  return jax.tree_util.tree_leaves(ocp.StandardCheckpointer().restore(path.absolute()))


def _assert_healthy(workdir):
  """No temporary folder, and every checkpoint on disk holds only finite numbers."""
  assert checkpoint.temporaries(str(workdir)) == []
  for step in os.listdir(pathlib.Path(workdir) / 'checkpoints'):
    for leaf in _state(workdir, int(step)):
      if np.issubdtype(np.asarray(leaf).dtype, np.floating):
        assert np.all(np.isfinite(leaf)), f'non-finite checkpoint {step}'


def _assert_equal_to(reference, workdir):
  a, b = _state(reference, 6), _state(workdir, 6)
  assert len(a) == len(b) > 50
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def _assert_logs_once(workdir):
  """metrics.jsonl has each step once; TensorBoard's events hold each (tag, step) once."""
  from tensorboard.backend.event_processing import event_accumulator as ea
  rows = [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').open()]
  train_steps = [r['step'] for r in rows if 'train/loss' in r]
  assert train_steps == [2, 4, 6]
  assert [r['step'] for r in rows if 'student/top1' in r] == [3, 6]
  seen = []
  for events in pathlib.Path(workdir).glob('events.out.tfevents*'):
    acc = ea.EventAccumulator(str(events), size_guidance={ea.TENSORS: 0})
    acc.Reload()
    for tag in ('train/loss', 'student/top1'):
      if tag in acc.Tags()['tensors']:
        seen += [(tag, e.step) for e in acc.Tensors(tag)]
  assert sorted(seen) == sorted([('train/loss', s) for s in (2, 4, 6)] +
                                [('student/top1', s) for s in (3, 6)])


@pytest.fixture(scope='module')
def reference(prepared, tmp_path_factory):
  """An uninterrupted run of the schedule above."""
  workdir = tmp_path_factory.mktemp('faults') / 'reference'
  final = train.train_and_evaluate(_config(prepared), str(workdir))
  assert final['step'] == 6
  return workdir


@pytest.fixture(autouse=True)
def _disarm():
  faults.disarm()
  yield
  faults.disarm()


def _main(workdir, prepared, env=None, args=()):
  return subprocess.run(
      [sys.executable, 'main.py', '--config=configs/test.py', f'--workdir={workdir}',
       f'--config.data.data_dir={prepared}', '--config.num_steps=6',
       '--config.checkpoint_every=2', '--config.eval_every=3', '--config.log_every=2',
       '--config.patience=100', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, **(env or {})})


def test_kill_between_the_two_saves_then_mid_save(prepared, reference, tmp_path):
  """SIGKILL after best/3 was written but before checkpoints/3 existed (the old
  StepAlreadyExistsError), then SIGKILL with the checkpoint of step 4 still in flight."""
  workdir = tmp_path / 'killed'
  out = _main(workdir, prepared, {'STSSL_FAULT': 'after_best_save@3:kill_settled'})
  assert out.returncode == -9, out.stderr[-2000:]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2']
  assert sorted(os.listdir(workdir / 'best')) == ['3']
  out = _main(workdir, prepared, {'STSSL_FAULT': 'after_save@4:kill'})
  assert out.returncode == -9, out.stderr[-2000:]
  final = train.train_and_evaluate(_config(prepared), str(workdir))
  assert final['step'] == 6
  _assert_healthy(workdir)
  _assert_equal_to(reference, workdir)
  _assert_logs_once(workdir)
  ref = json.loads((reference / 'final_metrics.json').read_text())
  assert final['student/top1'] == ref['student/top1'] and final['best_step'] == ref['best_step']


def test_nan_at_a_step_that_is_not_logged(prepared, reference, tmp_path):
  """A poisoned batch at step 3 (logs at 2 and 4): halts naming step 3, saves nothing
  non-finite, keeps the finite checkpoint it names; a resume completes bit-exact."""
  workdir = tmp_path / 'nan'
  faults.arm('batch', 3, 'nan')
  with pytest.raises(FloatingPointError,
                     match=r'first non-finite after step 3;.*newest finite checkpoint: step 2'):
    train.train_and_evaluate(_config(prepared), str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2']
  assert not (workdir / 'best').exists() or os.listdir(workdir / 'best') == []
  _assert_healthy(workdir)
  train.train_and_evaluate(_config(prepared), str(workdir))
  _assert_healthy(workdir)
  _assert_equal_to(reference, workdir)


def test_error_during_eval_leaves_no_temporary(prepared, reference, tmp_path):
  """An exception in evaluation at step 6 while checkpoint 4 may still be saving: the save
  is finished before the error leaves, and the run resumes to the same end."""
  workdir = tmp_path / 'eval'
  faults.arm('eval', 6, 'raise')
  with pytest.raises(RuntimeError, match='injected fault at eval@6'):
    train.train_and_evaluate(_config(prepared), str(workdir))
  _assert_healthy(workdir)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  train.train_and_evaluate(_config(prepared), str(workdir))
  _assert_equal_to(reference, workdir)
  _assert_logs_once(workdir)


def test_disk_full_during_a_save(prepared, reference, tmp_path, monkeypatch):
  """ENOSPC from orbax's writer while checkpoint 4 is written: the error surfaces, the
  half-written step is removed, and a resume (disk freed) ends bit-exact."""
  workdir = tmp_path / 'full'
  write_bytes = epath.Path.write_bytes
  write_text = epath.Path.write_text

  def full(original):
    def write(self, data, *a, **kw):
      if f'{os.sep}checkpoints{os.sep}4' in str(self):
        raise OSError(errno.ENOSPC, 'No space left on device', str(self))
      return original(self, data, *a, **kw)
    return write
  monkeypatch.setattr(epath.Path, 'write_bytes', full(write_bytes))
  monkeypatch.setattr(epath.Path, 'write_text', full(write_text))
  with pytest.raises(Exception) as e:
    train.train_and_evaluate(_config(prepared), str(workdir))
  assert 'No space left' in str(e.value) or 'ENOSPC' in repr(e.value) or 'space' in repr(
      e.value.__cause__), repr(e.value)
  monkeypatch.undo()
  _assert_healthy(workdir)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2']
  train.train_and_evaluate(_config(prepared), str(workdir))
  _assert_equal_to(reference, workdir)
