"""Run comparison: exact pooling of interval pseudo-label metrics, and the side-by-side table."""

import csv
import json
import math

import pytest

from stssl_jax import compare, report_data


def _workdir(tmp_path, name, intervals, shift_rows):
  """A workdir with metrics.jsonl (one record per interval) and shift_eval/shift_eval.csv."""
  d = tmp_path / name
  (d / 'shift_eval').mkdir(parents=True)
  with open(d / 'metrics.jsonl', 'w') as f:
    for step, values in intervals:
      f.write(json.dumps({'step': step, 'train/loss': 1.0, **values}) + '\n')
      f.write(json.dumps({'step': step, 'student/top1': 0.5}) + '\n')  # An eval record.
  with open(d / 'shift_eval' / 'shift_eval.csv', 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=['split', 'model', 'top1', 'balanced_acc', 'loss'])
    w.writeheader()
    w.writerows(shift_rows)
  return str(d)


def _pl(source, recall, accuracy, accuracy_all, precision):
  return {f'train/pl/{source}/recall': recall, f'train/pl/{source}/accuracy': accuracy,
          f'train/pl/{source}/accuracy_all': accuracy_all,
          f'train/pl/{source}/precision': precision}


def test_pooling_weights_accuracy_by_the_accepted_share(tmp_path):
  # Equal-n intervals: 100 samples each. Interval 1 accepts 50 (40 right), interval 2 accepts
  # 25 (10 right), interval 3 accepts none (accuracy undefined), interval 4 accepts 80 (60).
  intervals = [(10, _pl('teacher', 0.5, 0.8, 0.6, 0.7)),
               (20, _pl('teacher', 0.25, 0.4, 0.5, 0.3)),
               (30, _pl('teacher', 0.0, float('nan'), 0.4, float('nan'))),
               (40, _pl('teacher', 0.8, 0.75, 0.7, 0.6))]
  rows = [{'split': 'test', 'model': 'student (image only)', 'top1': 0.6, 'balanced_acc': 0.55,
           'loss': 1.2}]
  series = report_data.read_metrics(_workdir(tmp_path, 'a', intervals, rows) +
                                       '/metrics.jsonl')
  got = report_data.pooled_pl(series, 'teacher')
  assert got['intervals'] == 4
  assert got['recall'] == pytest.approx((50 + 25 + 0 + 80) / 400)
  assert got['accuracy'] == pytest.approx((40 + 10 + 60) / (50 + 25 + 80))
  assert got['accuracy_all'] == pytest.approx((0.6 + 0.5 + 0.4 + 0.7) / 4)
  assert got['precision'] == pytest.approx((0.7 + 0.3 + 0.6) / 3)  # The NaN interval is left out.
  late = report_data.pooled_pl(series, 'teacher', since=25)
  assert late['intervals'] == 2 and late['accuracy'] == pytest.approx(0.75)
  absent = report_data.pooled_pl(series, 'image_only')
  assert absent['intervals'] == 0 and math.isnan(absent['accuracy'])


def test_side_by_side_tables_of_two_runs(tmp_path):
  stssl = _workdir(tmp_path, 'stssl', [(s, {**_pl('teacher', 0.5, 0.9, 0.7, 0.8),
                                            **_pl('image_only', 0.4, 0.7, 0.6, 0.6)})
                                       for s in (50, 100, 150, 200)],
                   [{'split': sp, 'model': m, 'top1': v, 'balanced_acc': v - 0.05, 'loss': 1.0}
                    for sp in ('test', 'heldout')
                    for m, v in (('student (image only)', 0.7), ('teacher, true metadata', 0.8))])
  fixmatch = _workdir(tmp_path, 'fm', [(s, _pl('image_only', 0.45, 0.65, 0.6, 0.55))
                                       for s in (50, 100, 150, 200)],
                      [{'split': sp, 'model': 'fixmatch (image only)', 'top1': 0.6,
                        'balanced_acc': 0.58, 'loss': 1.1} for sp in ('test', 'heldout')])
  out = tmp_path / 'cmp'
  tables = compare.compare({'STSSL': stssl, 'FixMatch': fixmatch}, str(out))
  sources = [(r['run'], r['source'], r['window']) for r in tables['pl']]
  assert sources == [('STSSL', 'teacher', 'whole run'), ('STSSL', 'teacher', 'last quarter'),
                     ('STSSL', 'image_only', 'whole run'), ('STSSL', 'image_only', 'last quarter'),
                     ('FixMatch', 'image_only', 'whole run'),
                     ('FixMatch', 'image_only', 'last quarter')]
  last_quarter = [r for r in tables['pl'] if r['window'] == 'last quarter']
  assert all(r['intervals'] == 1 for r in last_quarter)  # Steps > 150 of 200.
  assert len(tables['eval']) == 6
  regions = {(r['run'], r['model'], r['split']): r['region'] for r in tables['eval']}
  assert regions[('FixMatch', 'fixmatch (image only)', 'heldout')] == 'out of region'
  assert regions[('STSSL', 'teacher, true metadata', 'test')] == 'in region'
  md = (out / 'compare.md').read_text()
  assert '| STSSL | teacher | whole run | 4 | 0.5000 | 0.9000 |' in md
  assert '| FixMatch | fixmatch (image only) | heldout | out of region | 0.6000 | 0.5800 |' in md
  with open(out / 'compare_eval.csv') as f:
    assert len(list(csv.DictReader(f))) == 6
  assert (out / 'compare_eval.png').stat().st_size > 10_000


def test_missing_shift_eval_names_the_file(tmp_path):
  d = tmp_path / 'run'
  d.mkdir()
  (d / 'metrics.jsonl').write_text(json.dumps({'step': 1, **_pl('teacher', 1, 1, 1, 1)}) + '\n')
  with pytest.raises(FileNotFoundError, match='shift_eval.csv is missing'):
    compare.compare({'r': str(d)}, str(tmp_path / 'out'))
