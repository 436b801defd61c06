"""Run report: a real tiny run (single-label STSSL) and a hand-written multi-label workdir."""

import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import test as test_config
from stssl_jax import report, report_data, report_plots, train

ROOT = pathlib.Path(__file__).parent.parent
_EUROSAT = ['AnnualCrop', 'Forest', 'HerbaceousVegetation', 'Highway', 'Industrial', 'Pasture',
            'PermanentCrop', 'Residential', 'River', 'SeaLake']


@pytest.fixture(scope='module')
def run_dir(prepared, tmp_path_factory):
  """4 steps of tiny STSSL-FixMatch, logging every 2 and evaluating at steps 2 and 4."""
  c = test_config.get_config('stssl_fixmatch')
  c.data.data_dir = prepared
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every = 4, 2, 2, 4
  workdir = tmp_path_factory.mktemp('run')
  train.train_and_evaluate(c, str(workdir))
  return workdir


def _check_report(index: pathlib.Path, expected: set[str]):
  """index.html links exactly the expected PNGs, each a sane, non-blank image next to it."""
  page = index.read_text()
  linked = set(re.findall(r'<img src="([^"]+)"', page))
  assert linked == expected
  assert {p.name for p in index.parent.glob('*.png')} == expected
  for name in expected:
    with Image.open(index.parent / name) as img:
      w, h = img.size
      assert 400 <= w <= 4000 and 250 <= h <= 6000, (name, img.size)
      pixels = np.asarray(img.convert('L'), np.float64)
    assert pixels.std() > 5, f'{name} looks blank'
  return page


def test_real_run_report(run_dir):
  index = pathlib.Path(report.write_report(str(run_dir)))
  assert index == run_dir / 'report' / 'index.html'
  # by_country: EuroSAT has no country field; the [geo] extra (in [test]) geocodes lat/lon.
  page = _check_report(index, {'losses.png', 'pseudo_labels.png', 'optimization.png',
                               'eval_metrics.png', 'confusion_student.png',
                               'confusion_teacher.png', 'map.png', 'by_country.png'})
  assert 'reverse-geocoded offline' in page
  # Summary, config and package versions are in the page.
  assert 'stssl_fixmatch' in page and 'student (image only)' in page
  assert '&quot;num_steps&quot;: 4' in page
  versions = report_data.package_versions()
  for name in ('python', 'jax', 'flax', 'optax', 'orbax-checkpoint', 'grain',
               'tensorflow-datasets', 'numpy'):
    assert f'<td>{name}</td><td>{versions[name]}</td>' in page
  assert 'the run recorded none' in page
  # Rendering again replaces the previous figures.
  (index.parent / 'stale.png').write_bytes(b'')
  report.write_report(str(run_dir))
  assert not (index.parent / 'stale.png').exists()


def test_tensorboard_shows_pseudo_label_quality(run_dir):
  """The TensorBoard events hold both sources' pseudo-label metrics, equal to metrics.jsonl."""
  from tensorboard.backend.event_processing import event_accumulator as ea
  from tensorboard.util import tensor_util
  (events,) = run_dir.glob('events.out.tfevents*')
  acc = ea.EventAccumulator(str(events), size_guidance={ea.TENSORS: 0})
  acc.Reload()
  series = report_data.read_metrics(str(run_dir / 'metrics.jsonl'))
  for source in ('teacher', 'image_only'):
    for metric in ('precision', 'recall', 'accuracy', 'accuracy_all'):
      tag = f'train/pl/{source}/{metric}'
      logged = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}
      steps, values = series[tag]
      assert sorted(logged) == list(steps) == [2, 4], tag
      np.testing.assert_allclose([logged[s] for s in steps], values, rtol=1e-6, equal_nan=True)
  recall = [float(tensor_util.make_ndarray(e.tensor_proto))
            for e in acc.Tensors('train/pl/teacher/recall')]
  assert all(0.0 <= r <= 1.0 for r in recall)


def test_cli_and_class_names(run_dir, prepared):
  out = subprocess.run([sys.executable, '-m', 'stssl_jax.report', str(run_dir)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=True)
  assert out.stdout.strip() == str(run_dir / 'report' / 'index.html')
  config = json.loads((run_dir / 'config.json').read_text())
  assert report_data.class_names(config, 10) == _EUROSAT
  # Wrong size or unreachable dataset: indices.
  assert report_data.class_names(config, 3) == ['0', '1', '2']
  assert report_data.class_names({'data': {'data_dir': '/nonexistent', 'name': 'x'}}, 2) == ['0', '1']


def test_read_metrics_keeps_the_last_record_of_a_step(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  records = [{'step': 2, 'train/loss': 3.0}, {'step': 4, 'train/loss': 2.0},
             {'step': 4, 'student/top1': 0.5}, {'step': 4, 'train/loss': 1.5},  # Resumed.
             {'step': 6, 'train/loss': 1.0}]
  path.write_text('\n'.join(json.dumps(r) for r in records) + '\n')
  series = report_data.read_metrics(str(path))
  np.testing.assert_array_equal(series['train/loss'][0], [2, 4, 6])
  np.testing.assert_array_equal(series['train/loss'][1], [3.0, 1.5, 1.0])
  np.testing.assert_array_equal(series['student/top1'][0], [4])


_C, _N = 6, 48
_COUNTRIES = np.array(['Austria', 'Finland', 'Portugal'])[np.arange(_N) % 3]
_SEASONS = np.array(['Winter', 'Summer', 'Autumn', 'Spring'])[np.arange(_N) % 4]


def _multilabel_workdir(root: pathlib.Path) -> pathlib.Path:
  """What a BigEarthNet STSSL run leaves, written by hand (the dataset itself is absent)."""
  rng = np.random.default_rng(0)
  (root / 'eval').mkdir(parents=True)
  config = {'algorithm': 'stssl_fixmatch', 'multilabel': True, 'num_steps': 30,
            'f1_threshold': 0.5, 'data': {'name': 'bigearthnet', 'data_dir': str(root / 'none'),
                                          'label_set': 'label', 'label_fraction': 0.01}}
  (root / 'config.json').write_text(json.dumps(config))
  lines = []
  for step in (10, 20, 30):
    lines.append({'step': step, 'train/loss': 2.0 / step, 'train/teacher/loss': 1.0 / step,
                  'train/teacher/sup_loss': 0.6 / step, 'train/teacher/unsup_loss': 0.4 / step,
                  'train/student/loss': 1.0 / step, 'train/student/sup_loss': 0.7 / step,
                  'train/student/unsup_loss': 0.2 / step, 'train/student/distill_loss': 0.1 / step,
                  'train/mask_ratio': 0.8, 'train/lr': 1e-4, 'train/grad_norm': 1.0,
                  'train/pl/teacher/accuracy': 0.9, 'train/pl/image_only/accuracy': 0.85,
                  'train/pl/teacher/precision': 0.7, 'train/pl/image_only/precision': 0.6})
    if step > 10:
      scalars = {f'{b}/{m}': rng.uniform() for b in ('student', 'teacher')
                 for m in ('macro_map', 'micro_map', 'macro_f1', 'micro_f1', 'loss')}
      lines.append({'step': step, **scalars})
      summary = {b: {'macro_map': 0.5, 'micro_map': 0.6, 'macro_f1': 0.4, 'loss': 0.3,
                     'per_class_ap': rng.uniform(size=_C).tolist()}
                 for b in ('student', 'teacher')}
      (root / 'eval' / f'step_{step}.json').write_text(
          json.dumps({'step': step, 'split': 'validation', **summary}))
  (root / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in lines) + '\n')
  (root / 'final_metrics.json').write_text(json.dumps(
      {'student/macro_map': 0.5, 'teacher/macro_map': 0.55, 'best_metric': 0.5,
       'best_step': 20, 'step': 30}))
  label = (rng.uniform(size=(_N, _C)) < 0.3).astype(np.uint8)
  sign = 2.0 * label - 1.0
  for branch, noise in (('student', 2.0), ('teacher', 1.0)):
    logits = 3.0 * sign + noise * rng.normal(size=(_N, _C))
    logits[_COUNTRIES == 'Finland'] = 3.0 * sign[_COUNTRIES == 'Finland']
    np.savez(root / 'eval' / f'predictions_{branch}.npz', step=30, split='validation',
             logits=logits.astype(np.float32), label=label,
             lat=rng.uniform(37, 68, _N).astype(np.float32),
             lon=rng.uniform(-9, 28, _N).astype(np.float32),
             country=_COUNTRIES, season=_SEASONS)
  return root


def test_multilabel_report(tmp_path):
  workdir = _multilabel_workdir(tmp_path / 'ben')
  page = _check_report(pathlib.Path(report.write_report(str(workdir))), {
      'losses.png', 'pseudo_labels.png', 'optimization.png', 'eval_metrics.png',
      'per_class_ap.png', 'map.png', 'by_country.png', 'by_season.png'})
  for name in ('Austria', 'Finland', 'Portugal', 'Spring', 'Winter'):
    assert f'<td>{name}</td>' in page
  assert 'teacher (image + metadata): micro map' in page
  # Seasons in calendar order in the table.
  assert [page.index(f'<td>{s}</td>') for s in ('Spring', 'Summer', 'Autumn', 'Winter')] == \
      sorted(page.index(f'<td>{s}</td>') for s in ('Spring', 'Summer', 'Autumn', 'Winter'))


def test_group_metrics_multilabel(tmp_path):
  workdir = _multilabel_workdir(tmp_path / 'ben')
  with np.load(workdir / 'eval' / 'predictions_student.npz') as z:
    arrays = {k: z[k] for k in z.files}
  rows = {r['group']: r for r in report_data.group_metrics(arrays, 'country', multilabel=True)}
  assert sorted(rows) == ['Austria', 'Finland', 'Portugal']
  assert [r['n'] for r in rows.values()] == [16, 16, 16]
  # Finland's logits separate its labels perfectly: every AP and sample F1 is 1.
  assert rows['Finland']['micro_map'] == rows['Finland']['macro_map'] == 1.0
  assert rows['Finland']['sample_f1'] == 1.0
  assert rows['Austria']['micro_map'] < 1.0


def test_group_metrics_single_label():
  arrays = {'logits': np.eye(3)[[0, 1, 2, 0, 1]] * 5, 'label': np.array([0, 1, 0, 0, 2]),
            'season': np.array(['Winter', 'Spring', 'Spring', 'Winter', 'Summer'])}
  rows = report_data.group_metrics(arrays, 'season', multilabel=False)
  assert [(r['group'], r['n'], r['accuracy']) for r in rows] == [
      ('Spring', 2, 0.5), ('Summer', 1, 0.0), ('Winter', 2, 1.0)]


@pytest.mark.parametrize('max_points', [1000, 10])
def test_map_scatter_and_binned(tmp_path, max_points):
  rng = np.random.default_rng(3)
  points = {'student': {'lat': rng.uniform(40, 60, 200), 'lon': rng.uniform(-5, 25, 200),
                        'correct': rng.uniform(size=200) < 0.7}}
  path = report_plots.sample_map(points, str(tmp_path / 'map.png'), 'map', max_points)
  with Image.open(path) as img:
    assert img.size[0] > 400 and np.asarray(img.convert('L')).std() > 5


def test_report_of_an_empty_workdir(tmp_path):
  """A run that has written nothing yet still gets a page (summary, config, versions)."""
  index = pathlib.Path(report.write_report(str(tmp_path)))
  page = _check_report(index, set())
  assert 'no final_metrics.json yet' in page


def test_small_groups_are_pooled_relative_to_the_split():
  values = np.array(['FR'] * 300 + ['DE'] * 150 + ['UA'] * 2 + ['VA'] * 1 + ['LU'] * 5)
  got = report_data.lump_small_groups(values)  # 1% of 458 -> groups under 5 samples.
  assert sorted(set(got)) == ['DE', 'FR', 'LU', report_data.OTHER]
  assert (got == report_data.OTHER).sum() == 3
  np.testing.assert_array_equal(report_data.lump_small_groups(values, min_n=10) == report_data.OTHER,
                                np.isin(values, ['UA', 'VA', 'LU']))
  assert set(report_data.lump_small_groups(values[:40])) == {'FR'}  # Nothing small: kept.
