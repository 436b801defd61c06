"""Metadata encoding against the original's golden values, switches and the encoder init."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stssl_jax import metadata
from stssl_jax.models import meta_encoder

_FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'parity' / 'metadata_encoding.npz'


@pytest.fixture(scope='module')
def golden():
  with np.load(_FIXTURE) as data:
    return {k: data[k] for k in data.files}


def _dates(golden):
  return [None if missing else str(d)
          for d, missing in zip(golden['input/date'], golden['input/date_is_missing'])]


def test_encode_matches_original(golden):
  enc = metadata.encode(golden['input/lat'], golden['input/lng'], _dates(golden),
                        missing_date='nan')
  ref = golden['out/enc']
  assert enc.dtype == np.float32 and enc.shape == (13, 4)
  # NaN exactly in the time components of the missing date, nowhere else.
  np.testing.assert_array_equal(np.isnan(enc), np.isnan(ref))
  assert np.isnan(enc[golden['input/date_is_missing'], 2:]).all()
  np.testing.assert_allclose(enc, ref, atol=1e-6, rtol=0)
  # lat/90 and lon/180 are float64 divisions cast to float32: bit-exact.
  np.testing.assert_array_equal(enc[:, :2], ref[:, :2])
  # Day 365 gives theta = 2*pi in float32, whose sine is 1.7484555e-07, not 0.
  i = list(golden['input/date']).index('2017-12-31 00:00:00')
  np.testing.assert_allclose(enc[i, 2], 1.7484555e-07, rtol=1e-6)


def test_day_of_year_matches_original(golden):
  for date, missing, ref in zip(golden['input/date'], golden['input/date_is_missing'],
                                golden['out/day_of_year']):
    if not missing:
      assert metadata.day_of_year(str(date)) == int(ref), date
  assert metadata.day_of_year('2016-12-31 23:59:59') == 366
  assert metadata.day_of_year('2000-1-1') == 1
  assert metadata.day_of_year(b'2017-6-5 00:00:00') == 156


@pytest.mark.parametrize('bad', ['2017/06/05', '17-6-5', '2017-02-30 00:00:00', 'June 5'])
def test_day_of_year_rejects_garbage(bad):
  with pytest.raises(ValueError, match=re.escape(repr(bad))):
    metadata.day_of_year(bad)


@pytest.mark.parametrize('missing', [None, ''])
def test_missing_date_raises_by_default_naming_index(missing):
  with pytest.raises(ValueError, match='Sample 2: missing date'):
    metadata.encode([1.0, 2.0, 3.0], [4.0, 5.0, 6.0], ['2017-1-1', '2017-1-2', missing])


def test_unparsable_date_names_index():
  with pytest.raises(ValueError, match="Sample 1: Cannot parse date 'yesterday'"):
    metadata.encode([0.0, 0.0], [0.0, 0.0], ['2017-1-1', 'yesterday'])


def test_eurosat_dummy_date_constants():
  # METHOD 1.2: on EuroSAT every image has day 1, so (sin, cos) = (0.0172134, 0.9998518).
  enc = metadata.encode([45.0], [-90.0], ['2000-1-1 00:00:00'])
  np.testing.assert_allclose(enc[0], [0.5, -0.5, 0.0172134, 0.9998518], atol=1e-7)


def test_switches():
  lat, lon, dates = [48.1, -33.9], [11.6, 18.4], ['2017-06-15 10:30:00', '2016-02-29']
  out_lat, out_lon, out_dates = metadata.apply_switches(lat, lon, dates, False, False)
  np.testing.assert_array_equal(out_lat, lat)
  np.testing.assert_array_equal(out_lon, lon)
  assert out_dates == dates

  enc = metadata.encode(*metadata.apply_switches(lat, lon, dates, no_loc=True, no_time=False))
  np.testing.assert_array_equal(enc[:, :2], 0.0)
  np.testing.assert_array_equal(enc[:, 2:], metadata.encode(lat, lon, dates)[:, 2:])

  enc = metadata.encode(*metadata.apply_switches(lat, lon, dates, no_loc=False, no_time=True))
  np.testing.assert_array_equal(enc[:, :2], metadata.encode(lat, lon, dates)[:, :2])
  # 2017-01-01 is day 1 for every sample.
  day_one = metadata.encode([0, 0], [0, 0], ['2017-1-1'] * 2)
  np.testing.assert_array_equal(enc[:, 2:], day_one[:, 2:])
  assert dates == ['2017-06-15 10:30:00', '2016-02-29']  # inputs untouched


def test_encoder_shapes_and_torch_init():
  enc = meta_encoder.MetadataEncoder(dim=384)
  m = jnp.ones((3, 4))
  params = enc.init(jax.random.key(0), m)['params']
  shapes = jax.tree.map(jnp.shape, params)
  assert shapes == {'fc1': {'kernel': (4, 384), 'bias': (384,)},
                    'fc2': {'kernel': (384, 384), 'bias': (384,)}}
  # torch nn.Linear default: weight AND bias uniform in +-1/sqrt(fan_in) (0.5 and 0.051).
  for layer, bound in (('fc1', 0.5), ('fc2', 384 ** -0.5)):
    for leaf in params[layer].values():
      assert float(jnp.abs(leaf).max()) <= bound
      assert float(jnp.abs(leaf).max()) > 0.9 * bound  # uses the whole range
  out = enc.apply({'params': params}, m)
  assert out.shape == (3, 384) and out.dtype == jnp.float32
  h = m @ params['fc1']['kernel'] + params['fc1']['bias']
  h = jax.nn.gelu(h, approximate=False)
  np.testing.assert_allclose(out, h @ params['fc2']['kernel'] + params['fc2']['bias'], rtol=1e-5)


def test_data_layer_imports_no_flax():
  """The pipeline and data_prep stand below the models: importing them pulls in no flax."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys; import stssl_jax.data.pipeline, stssl_jax.metadata, data_prep.eurosat, '
          'data_prep.bigearthnet; '
          'bad = sorted(m for m in sys.modules if m == "flax" or m.startswith("flax."));'
          'print(len(bad)); assert not bad, bad[:5]; '
          'assert "stssl_jax.data.pipeline" in sys.modules')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                       cwd=__import__('pathlib').Path(__file__).parent.parent)
  assert out.returncode == 0 and out.stdout.strip() == '0', out.stderr[-2000:]


def test_location_decode_inverts_encode():
  lat, lon = np.array([-89.5, 0.0, 48.1371, 90.0]), np.array([179.9, -180.0, 11.5754, 0.0])
  m = metadata.encode(lat, lon, ['2017-06-01'] * 4)
  assert m.shape == (4, metadata.META_DIM)
  got_lat, got_lon = metadata.decode_location(m)
  np.testing.assert_allclose(got_lat, lat, atol=1e-5)
  np.testing.assert_allclose(got_lon, lon, atol=1e-4)
  moved = metadata.encode_location(m, got_lat + 1.0, got_lon)
  np.testing.assert_array_equal(moved[:, 1:], m[:, 1:])
  np.testing.assert_allclose(moved[:, 0], (lat + 1.0) / 90.0, rtol=1e-6)
