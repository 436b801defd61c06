"""Region hold-out in data_prep: disjoint from training/test, reproducible, in the region."""

import pathlib

import numpy as np
import pytest

from data_prep import eurosat
from stssl_jax import regions
from stssl_jax.data import records

SAMPLE = pathlib.Path(__file__).parent.parent / 'data' / 'eurosat_sample'
BOX = '35,44,-10,4'  # Iberia and southern France.


def _prep(out, **kw):
  eurosat.prepare(str(SAMPLE / '2750'), str(out), str(SAMPLE / 'coords.csv'), **kw)
  return {s: records.open_split(str(out), 'eurosat', s)
          for s in ('train', 'test', 'heldout', 'train_lb_80')}


def _names(src):
  return [src[i]['filename'] for i in range(len(src))]


@pytest.mark.parametrize('kw', [{'holdout_box': BOX}, {'holdout_countries': ['ES', 'PT']}])
def test_holdout_is_disjoint_reproducible_and_in_region(tmp_path, kw):
  a, b = _prep(tmp_path / 'a', **kw), _prep(tmp_path / 'b', **kw)
  held = _names(a['heldout'])
  assert held == _names(b['heldout']) and len(held) > 10
  rest = set(_names(a['train'])) | set(_names(a['test']))
  assert not rest & set(held)
  assert set(_names(a['train_lb_80'])) <= set(_names(a['train']))
  assert len(rest) + len(held) == 300
  lat = np.array([a['heldout'][i]['lat'] for i in range(len(held))])
  lon = np.array([a['heldout'][i]['lon'] for i in range(len(held))])
  box = regions.parse_box(kw.get('holdout_box')) if 'holdout_box' in kw else None
  assert regions.in_region(lat, lon, box, kw.get('holdout_countries', ())).all()
  train = a['train']
  t_lat = np.array([train[i]['lat'] for i in range(len(train))])
  t_lon = np.array([train[i]['lon'] for i in range(len(train))])
  assert not regions.in_region(t_lat, t_lon, box, kw.get('holdout_countries', ())).any()


def test_country_codes_offline():
  assert regions.country_codes([48.1, 52.62, 40.4], [11.5, -0.2, -3.7]) == ['DE', 'GB', 'ES']


def test_bad_box_is_a_clear_error():
  with pytest.raises(ValueError, match='lat_min<lat_max'):
    regions.parse_box('44,35,-10,4')
