"""Multi-process data parallelism over loopback, and checkpoints across device counts."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from configs import test as test_config
from tests import compare

ROOT = pathlib.Path(__file__).parent.parent
WORKER = ROOT / 'tests' / 'scripts' / 'multihost_worker.py'


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run(pid, nproc, port, ndev, workdir, data_dir, out):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.Popen([sys.executable, str(WORKER), str(pid), str(nproc), str(port),
                           str(ndev), str(workdir), data_dir, str(out)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_equal_one_process_four_devices(prepared, tmp_path):
  port = _free_port()
  procs = [_run(i, 2, port, 2, tmp_path / 'multi', prepared, tmp_path / f'p{i}.npz')
           for i in range(2)]
  single = _run(0, 1, 0, 4, tmp_path / 'single', prepared, tmp_path / 'single.npz')
  for p in procs + [single]:
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-4000:]
  ref = dict(np.load(tmp_path / 'single.npz'))
  for i in range(2):
    got = dict(np.load(tmp_path / f'p{i}.npz'))
    assert got['top1'] == ref['top1']
    compare.assert_params_close(got, ref, atol=1e-6, lr=test_config.get_config().lr, steps=3,
                                what=f'process {i}')  # The worker trains 3 steps.
  # Only process 0 writes logs.
  assert list((tmp_path / 'multi').glob('events.out.tfevents*'))
  assert len(list((tmp_path / 'multi').glob('events.out.tfevents*'))) == 1


def _worker(ndev, workdir, data_dir, steps, out):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  res = subprocess.run([sys.executable, str(ROOT / 'tests' / 'scripts' / 'device_count_worker.py'),
                        str(ndev), str(workdir), data_dir, str(steps), str(out)], env=env,
                       capture_output=True, text=True, timeout=900)
  assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
  return dict(np.load(out))


def test_checkpoint_from_8_devices_restores_on_1_and_2(prepared, tmp_path):
  saved = _worker(8, tmp_path / 'run', prepared, 2, tmp_path / 'saved8.npz')
  for ndev in (1, 2):
    restored = _worker(ndev, tmp_path / 'run', prepared, 0, tmp_path / f'restored{ndev}.npz')
    assert set(restored) == set(saved)
    for k in saved:
      np.testing.assert_array_equal(restored[k], saved[k], err_msg=f'{ndev} devices: {k}')
  # Training continues from the 8-device checkpoint on 2 devices.
  resumed = _worker(2, tmp_path / 'run', prepared, 3, tmp_path / 'resumed2.npz')
  assert int(resumed['.step']) == 3
