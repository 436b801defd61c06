"""Metadata-shift evaluation: exact metadata transforms and the table of a tiny run."""

import csv
import pathlib

import numpy as np
import pytest
from PIL import Image

from configs import test as test_config
from data_prep import eurosat
from stssl_jax import metadata, regions, report, shift_eval, train
from stssl_jax.data import records

SAMPLE = pathlib.Path(__file__).parent.parent / 'data' / 'eurosat_sample'
BOX = '35,44,-10,4'  # Iberia and southern France.


def test_shift_meta_equals_encoding_shifted_raw_values():
  lat, lon, dates = [45.0, -30.0, 89.0], [179.0, -10.0, 0.0], ['2017-03-01', '2017-12-20', '2018-06-30']
  m = metadata.encode(lat, lon, dates)
  got = shift_eval.shift_meta(m, dlat=2.0, dlon=3.0)
  want = metadata.encode([47.0, -28.0, 90.0], [-178.0, -7.0, 3.0], dates)  # Wrapped, clipped.
  np.testing.assert_allclose(got, want, atol=2e-7)
  got = shift_eval.shift_meta(m, days=10)
  want = metadata.encode(lat, lon, ['2017-03-11', '2017-12-30', '2018-07-10'])
  np.testing.assert_allclose(got, want, atol=2e-6)
  got = shift_eval.shift_meta(m, no_loc=True, no_time=True)
  np.testing.assert_array_equal(got[:, :2], 0.0)
  np.testing.assert_array_equal(got[:, 2:], metadata.encode([0], [0], ['2017-01-01'])[:, 2:].repeat(3, 0))


def test_eval_shift_table_of_a_tiny_run(prepared, tmp_path):
  config = test_config.get_config('stssl_fixmatch')
  config.data.data_dir = prepared
  config.num_steps = config.eval_every = 4
  final = train.train_and_evaluate(config, str(tmp_path))
  rows = shift_eval.run(config, str(tmp_path))
  names = [name for name, _, _ in shift_eval.variants(config)]
  assert [r['model'] for r in rows] == names  # One split (no held-out region prepared).
  by = {r['model']: r['top1'] for r in rows}
  assert by['teacher, true metadata'] == pytest.approx(final['teacher/top1'])
  assert by['student (image only)'] == pytest.approx(final['student/top1'])
  with open(tmp_path / 'shift_eval' / 'shift_eval.csv') as f:
    assert len(list(csv.DictReader(f))) == len(names)
  md = (tmp_path / 'shift_eval' / 'shift_eval.md').read_text()
  assert all(n in md for n in names)
  assert (tmp_path / 'shift_eval' / 'shift_eval.png').stat().st_size > 10_000
  by = {r['model']: r['balanced_acc'] for r in rows}
  assert by['student (image only)'] == pytest.approx(final['student/balanced_acc'])
  # The run report picks the table and chart up.
  page = pathlib.Path(report.write_report(str(tmp_path))).read_text()
  assert 'Metadata-shift evaluation' in page and 'teacher, no_loc' in page
  assert (tmp_path / 'report' / 'shift_eval.png').stat().st_size > 10_000


def test_eval_shift_in_and_out_of_a_held_out_region(tmp_path):
  """A run trained without a region is evaluated on it separately; the report maps it."""
  data = tmp_path / 'data'
  eurosat.prepare(str(SAMPLE / '2750'), str(data), str(SAMPLE / 'coords.csv'), holdout_box=BOX)
  info = records.load_info(str(data), 'eurosat')
  config = test_config.get_config('stssl_fixmatch')
  config.data.data_dir = str(data)
  config.num_steps = config.eval_every = 4
  run = tmp_path / 'run'
  train.train_and_evaluate(config, str(run))
  rows = shift_eval.run(config, str(run))
  names = [name for name, _, _ in shift_eval.variants(config)]
  assert [(r['split'], r['model']) for r in rows] == [(s, n) for s in ('test', 'heldout')
                                                      for n in names]
  # The out-of-region row is the held-out samples alone: recomputed from their predictions.
  for branch, name in (('student', 'student (image only)'), ('teacher', 'teacher, true metadata')):
    preds = np.load(run / 'shift_eval' / f'predictions_heldout_{branch}.npz')
    assert len(preds['label']) == info['splits']['heldout'] > 10
    assert regions.region_names(info)['heldout'] == f'out of region: {BOX}'
    lat, lon = preds['lat'], preds['lon']
    assert ((lat >= 35) & (lat <= 44) & (lon >= -10) & (lon <= 4)).all()
    row = next(r for r in rows if r['split'] == 'heldout' and r['model'] == name)
    assert row['top1'] == pytest.approx(np.mean(preds['logits'].argmax(-1) == preds['label']))
  md = (run / 'shift_eval' / 'shift_eval.md').read_text()
  assert f'| heldout | out of region: {BOX} | student (image only) |' in md
  assert '| test | in region | teacher, no_loc |' in md
  # The report maps both splits and tables countries (reverse-geocoded: EuroSAT has none),
  # the held-out ones marked.
  page = pathlib.Path(report.write_report(str(run))).read_text()
  assert f'heldout (out of region: {BOX})' in page
  with Image.open(run / 'report' / 'map.png') as img:
    assert img.size[1] > 0.7 * img.size[0]  # 2 x 2 panels: student and teacher, in and out.
  assert (run / 'report' / 'by_country.png').stat().st_size > 10_000
  assert '(heldout)</td>' in page and 'reverse-geocoded offline' in page


def test_region_names_from_either_dataset_info():
  eurosat_info = {'splits': {'train': 5, 'test': 2, 'heldout': 1},
                  'prep': {'holdout_countries': ['ES', 'PT'], 'holdout_box': ''}}
  assert regions.region_names(eurosat_info) == {
      'train': 'in region', 'test': 'in region', 'heldout': 'out of region: ES, PT'}
  ben_info = {'splits': {'validation': 3, 'heldout': 2},
              'holdout': {'settings': {'countries': ['Finland'], 'seasons': ['Winter'],
                                       'match': 'all'}}}
  assert regions.region_names(ben_info)['heldout'] == 'out of region: Finland and Winter'
  ben_info['holdout']['settings']['match'] = 'any'
  assert regions.region_names(ben_info)['heldout'] == 'out of region: Finland; Winter'
  assert regions.region_names({'splits': {'heldout': 1}})['heldout'] == 'out of region'
