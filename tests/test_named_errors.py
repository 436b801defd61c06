"""One test per row of issue 11's table that test_faults.py does not cover (rows 1-3 and 7
are kills, a full disk, NaN and eval errors there): each bad input or re-run names the file,
split or config field, and leaves the workdir or dataset as it was.
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import test as test_config
from data_prep import eurosat
from stssl_jax import checkpoint, train, workdir as workdir_lib
from stssl_jax.data import records

ROOT = pathlib.Path(__file__).parent.parent
SAMPLE = ROOT / 'data' / 'eurosat_sample'
# The run every workdir test starts from: 2 steps, a checkpoint and the final eval at 2.
BASE = {'num_steps': 2, 'checkpoint_every': 2, 'log_every': 2, 'eval_every': 1000}


def _config(prepared, **kw):
  c = test_config.get_config('stssl_fixmatch')
  c.data.data_dir = prepared
  for k, v in {**BASE, **kw}.items():
    node = c
    *parents, leaf = k.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def _main(*args, env=None):
  return subprocess.run([sys.executable, 'main.py', '--config=configs/test.py', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, **(env or {})})


def _base_args(prepared, workdir):
  return [f'--workdir={workdir}', f'--config.data.data_dir={prepared}',
          *[f'--config.{k}={v}' for k, v in BASE.items()]]


def _snapshot(root):
  """{relative path: (sha256, mtime_ns)} of every file under `root`."""
  out = {}
  for p in sorted(pathlib.Path(root).rglob('*')):
    if p.is_file():
      out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mtime_ns)
  return out


@pytest.fixture(scope='module')
def finished_run(prepared, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('named') / 'run'
  final = train.train_and_evaluate(_config(prepared), str(workdir))
  assert final['step'] == 2 and 'student/top1' in final
  return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
  dst = tmp_path / 'run'
  shutil.copytree(finished_run, dst)
  return dst


def test_row4_changed_config_is_named_then_accepted_into_history(prepared, run_copy):
  before = _snapshot(run_copy)
  lr = _config(prepared).lr
  # num_steps is on the allow-list (extending a run); lr is not.
  with pytest.raises(workdir_lib.ConfigChanged, match=re.escape(f'lr: {lr!r} -> {2 * lr!r}')) as e:
    train.train_and_evaluate(_config(prepared, lr=2 * lr, num_steps=4), str(run_copy))
  assert 'num_steps' not in str(e.value) and '--allow_config_change' in str(e.value)
  assert _snapshot(run_copy) == before  # Nothing written.

  final = train.train_and_evaluate(_config(prepared, lr=2 * lr, num_steps=4), str(run_copy),
                                   allow_config_change=True)
  assert final['step'] == 4
  stored = json.loads((run_copy / 'config.json').read_text())
  assert stored['lr'] == 2 * lr and stored['num_steps'] == 4
  rows = [json.loads(l) for l in (run_copy / 'config_history.jsonl').read_text().splitlines()]
  assert len(rows) == 1 and rows[0]['step'] == 2
  assert rows[0]['accepted'] == '--allow_config_change'
  assert rows[0]['changes'] == {'lr': {'old': lr, 'new': 2 * lr},
                                'num_steps': {'old': BASE['num_steps'], 'new': 4}}
  # The accepted config is now the workdir's own: the same command resumes without the flag.
  again = train.train_and_evaluate(_config(prepared, lr=2 * lr, num_steps=4), str(run_copy))
  assert again == final


def test_row5_rerunning_a_finished_command_prints_and_writes_nothing(prepared, finished_run,
                                                                      run_copy):
  before = _snapshot(run_copy)
  out = _main(*_base_args(prepared, run_copy))
  assert out.returncode == 0, out.stderr[-3000:]
  final = json.loads((run_copy / 'final_metrics.json').read_text())
  assert f"  student/top1: {final['student/top1']}" in out.stdout
  assert f"  teacher/top1: {final['teacher/top1']}" in out.stdout
  assert _snapshot(run_copy) == before


def test_row6_flipped_byte_and_truncation_name_file_and_split(prepared, tmp_path, capsys):
  data = tmp_path / 'data'
  shutil.copytree(prepared, data)
  ds = records.dataset_dir(data, 'eurosat')
  test_file = ds / 'stssl_eurosat-test.array_record-00000-of-00001'
  raw = bytearray(test_file.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  test_file.write_bytes(bytes(raw))
  src = records.open_split(data, 'eurosat', 'test')  # Same size: opens; the read fails.
  with pytest.raises(records.CorruptShard, match=r"split 'test'") as e:
    src.__getitems__(list(range(len(src))))
  assert test_file.name in str(e.value) and 'record' in str(e.value)

  train_file = ds / 'stssl_eurosat-train.array_record-00000-of-00001'
  with open(train_file, 'r+b') as f:
    f.truncate(train_file.stat().st_size - 1000)
  with pytest.raises(records.CorruptShard, match=r"split 'train'") as e:
    records.open_split(data, 'eurosat', 'train')
  assert train_file.name in str(e.value)

  # A re-run of data_prep checks what it finds instead of saying 'already prepared'.
  args = ['--images', str(SAMPLE / '2750'), '--coords', str(SAMPLE / 'coords.csv'),
          '--out', str(data)]
  assert eurosat.main(args) == 1
  err = capsys.readouterr().err
  assert 'is damaged' in err and train_file.name in err and test_file.name in err
  assert eurosat.main(args + ['--overwrite']) == 0
  assert records.verify(data, 'eurosat') == []


def test_row8_row12_killed_prep_leaves_no_temp_and_bytes_are_reproducible(tmp_path):
  """SIGKILL after the build, before it is moved into place; the next run removes the stale
  folder. Two runs with different hash seeds then write identical bytes."""
  raw = tmp_path / 'raw'
  for c in ('Forest', 'River', 'SeaLake'):
    (raw / c).mkdir(parents=True)
    for p in sorted((SAMPLE / '2750' / c).iterdir())[:10]:
      shutil.copy(p, raw / c / p.name)

  def prep(out, **env):
    return subprocess.run(
        [sys.executable, '-m', 'data_prep.eurosat', '--images', str(raw), '--coords',
         str(SAMPLE / 'coords.csv'), '--num_labels', '6', '--out', str(out)], cwd=ROOT,
        capture_output=True, text=True, timeout=600, env={**os.environ, **env})

  out = prep(tmp_path / 'a', STSSL_FAULT='prep_built@0:kill', PYTHONHASHSEED='1')
  assert out.returncode == -9, out.stderr[-2000:]
  assert [p.name.split('-')[0] for p in (tmp_path / 'a').iterdir()] == ['.stssl_eurosat.tmp']
  assert not records.is_prepared(tmp_path / 'a', 'eurosat')
  out = prep(tmp_path / 'a', PYTHONHASHSEED='1')
  assert out.returncode == 0, out.stderr[-2000:]
  assert sorted(p.name for p in (tmp_path / 'a').iterdir()) == ['stssl_eurosat']
  out = prep(tmp_path / 'b', PYTHONHASHSEED='2')
  assert out.returncode == 0, out.stderr[-2000:]
  a = records.dataset_dir(tmp_path / 'a', 'eurosat')
  b = records.dataset_dir(tmp_path / 'b', 'eurosat')
  names = sorted(p.name for p in a.iterdir())
  # Info files and the shards of train, test and train_lb_6.
  assert names == sorted(p.name for p in b.iterdir()) and len(names) == 7
  for n in names:
    assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_row9_unknown_config_fields_are_one_line_with_the_closest_names(tmp_path):
  out = _main(f'--workdir={tmp_path / "w"}', '--config.bogus=1', '--config.optim.lr=1',
              '--config.data.imagesize=32')
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-3000:]
  assert "unknown config field 'bogus' (--config.bogus)" in lines[0]
  assert "'optim.lr'" in lines[0] and 'did you mean lr' in lines[0]
  assert "'data.imagesize'" in lines[0] and 'data.image_size' in lines[0]
  out = _main(f'--workdir={tmp_path / "w"}', '--config.lr=fast')
  assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1
  assert 'lr' in out.stderr and 'fast' in out.stderr
  assert not (tmp_path / 'w').exists()


def test_row10_other_image_size_names_the_field_at_restore(prepared, run_copy):
  size = _config(prepared).data.image_size
  change = f'data.image_size: {size} -> {2 * size}'
  with pytest.raises(workdir_lib.ConfigChanged, match=re.escape(change)):
    train.train_and_evaluate(_config(prepared, **{'data.image_size': 2 * size}), str(run_copy))
  with pytest.raises(checkpoint.RestoreMismatch) as e:
    train.train_and_evaluate(_config(prepared, num_steps=4, **{'data.image_size': 2 * size}),
                             str(run_copy), allow_config_change=True)
  msg = str(e.value)
  assert 'config fields that differ' in msg and change in msg
  assert 'checkpoint (' in msg and 'partial_restore' not in msg
  # The refused change was not recorded: the workdir still resumes with its own config.
  assert json.loads((run_copy / 'config.json').read_text())['data']['image_size'] == size
  assert not (run_copy / 'config_history.jsonl').exists()


def test_row11_tfds_reads_our_prepared_data_by_its_name(prepared):
  ds = tfds.data_source('stssl_eurosat', data_dir=prepared, split='test')
  ours = records.open_split(prepared, 'eurosat', 'test')
  assert len(ds) == len(ours) == 60
  for i in (0, 37):
    a, b = records.decode(ds[i]), ours[i]
    assert a['filename'] == b['filename'] and a['label'] == b['label']
    np.testing.assert_array_equal(a['image'], b['image'])


def test_row13_bad_sizes_are_rejected_before_any_folder(prepared, tmp_path):
  workdir = tmp_path / 'w'
  out = _main(f'--workdir={workdir}', f'--config.data.data_dir={prepared}',
              '--config.batch_size=0')
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith('error: config.batch_size')
  assert not workdir.exists()
  with pytest.raises(ValueError, match='config.uratio'):
    train.train_and_evaluate(_config(prepared, uratio=-1), str(workdir))
  assert not workdir.exists()
