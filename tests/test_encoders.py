"""Location/time encodings: each kind's defining property, shapes, and the encoder's params."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from stssl_jax import metadata
from stssl_jax.models import meta_encoder, stssl as models

_DATE = '2017-06-15 00:00:00'
# The kinds whose location features live on the sphere, not on the (lat, lon) rectangle.
_SPHERICAL = ('sphere', 'sph_harmonics')


def _m(lat, lon, date=_DATE):
  """[B, 4] metadata of degree coordinates, all on the same date."""
  lat, lon = np.atleast_1d(lat), np.atleast_1d(lon)
  return jnp.asarray(metadata.encode(lat, lon, [date] * len(lat)))


@pytest.mark.parametrize('kind,params,width', [
    ('linear', {}, 4),
    ('sphere', {}, 5),
    ('multiscale', {}, 4 * 6 + 2),
    ('multiscale', {'num_scales': 3, 'min_freq': 2.0}, 14),
    ('sph_harmonics', {}, 25 + 2),
    ('sph_harmonics', {'degree': 0}, 3),
    ('sph_harmonics', {'degree': 7}, 66),
])
def test_shapes_and_num_features(kind, params, width):
  m = _m([10.0, -45.0, 80.0], [5.0, 120.0, -170.0])
  out = meta_encoder.featurize(m, kind, **params)
  assert out.shape == (3, width) == (3, meta_encoder.num_features(kind, **params))
  assert out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()
  # Time (sin, cos) is the last pair of every kind, untouched.
  np.testing.assert_array_equal(out[:, -2:], m[:, 2:])


def test_linear_is_the_identity():
  m = _m([48.1, -33.9], [11.6, 18.4])
  assert meta_encoder.featurize(m, 'linear') is m


@pytest.mark.parametrize('kind', ['sphere', 'multiscale', 'sph_harmonics'])
def test_continuous_across_antimeridian(kind):
  lat = np.array([-60.0, 0.0, 35.0, 71.0])
  east, west = _m(lat, np.full(4, 179.999)), _m(lat, np.full(4, -179.999))
  gap = np.abs(np.asarray(meta_encoder.featurize(east, kind) - meta_encoder.featurize(west, kind)))
  # 0.002 degrees apart: |d feature| <= max frequency * 3.5e-5 rad (32 for multiscale).
  assert gap.max() < 2e-3, gap.max()
  linear_gap = np.abs(np.asarray(meta_encoder.featurize(east, 'linear') - west))
  assert linear_gap[:, 1].min() > 1.99  # lon/180 jumps from +1 to -1.


def test_multiscale_non_integer_frequency_jumps_at_antimeridian():
  """Continuity across +-180 needs integer longitude frequencies; 1.5 is not one."""
  east, west = _m(0.0, 179.999), _m(0.0, -179.999)
  f = lambda m: np.asarray(meta_encoder.featurize(m, 'multiscale', num_scales=1, min_freq=1.5))
  assert np.abs(f(east) - f(west)).max() > 1.0


def test_sphere_is_unit_norm():
  rng = np.random.default_rng(0)
  m = _m(rng.uniform(-90, 90, 256), rng.uniform(-180, 180, 256))
  xyz = np.asarray(meta_encoder.featurize(m, 'sphere'))[:, :3]
  np.testing.assert_allclose(np.linalg.norm(xyz, axis=-1), 1.0, atol=1e-6)
  # (0, 0) is the x axis, the north pole the z axis.
  np.testing.assert_allclose(meta_encoder.featurize(_m([0.0, 90.0], [0.0, 0.0]), 'sphere')[:, :3],
                             [[1, 0, 0], [0, 0, 1]], atol=1e-6)


@pytest.mark.parametrize('kind', _SPHERICAL)
@pytest.mark.parametrize('pole', [90.0, -90.0])
def test_pole_is_a_single_point(kind, pole):
  lon = np.linspace(-180.0, 180.0, 13)
  out = np.asarray(meta_encoder.featurize(_m(np.full(13, pole), lon), kind))
  np.testing.assert_allclose(out, np.broadcast_to(out[0], out.shape), atol=1e-6)
  # Whereas linear keeps 13 different points there.
  assert len(np.unique(np.asarray(meta_encoder.featurize(_m(np.full(13, pole), lon)))[:, 1])) == 13


@pytest.mark.parametrize('degree', [2, 4])
def test_spherical_harmonics_are_orthonormal(degree):
  """Gram matrix of the SH features under the area measure cos(lat) dlat dlon = identity."""
  n_lat, n_lon = 360, 72  # A uniform lon grid integrates trig polynomials of degree < 72 exactly.
  lat = (np.arange(n_lat) + 0.5) / n_lat * 180.0 - 90.0
  lon = np.arange(n_lon) / n_lon * 360.0 - 180.0
  lat_g, lon_g = (a.ravel() for a in np.meshgrid(lat, lon, indexing='ij'))
  y = np.asarray(meta_encoder.featurize(_m(lat_g, lon_g), 'sph_harmonics', degree=degree),
                 np.float64)[:, :-2]
  area = np.cos(np.radians(lat_g)) * math.radians(180.0 / n_lat) * math.radians(360.0 / n_lon)
  assert area.sum() == pytest.approx(4 * math.pi, rel=1e-5)
  gram = (y * area[:, None]).T @ y
  np.testing.assert_allclose(gram, np.eye((degree + 1) ** 2), atol=2e-4)


def test_spherical_harmonics_low_degrees_in_closed_form():
  rng = np.random.default_rng(1)
  lat, lon = rng.uniform(-90, 90, 64), rng.uniform(-180, 180, 64)
  y = np.asarray(meta_encoder.featurize(_m(lat, lon), 'sph_harmonics', degree=1))
  phi, lam = np.radians(lat), np.radians(lon)
  c0, c1 = math.sqrt(1 / (4 * math.pi)), math.sqrt(3 / (4 * math.pi))
  # Order (l, k): (0, 0), (1, -1), (1, 0), (1, 1): c * (const, y, z, x) on the unit sphere.
  want = np.stack([np.full(64, c0), c1 * np.cos(phi) * np.sin(lam), c1 * np.sin(phi),
                   c1 * np.cos(phi) * np.cos(lam)], axis=-1)
  np.testing.assert_allclose(y[:, :4], want, atol=1e-6)


def test_multiscale_frequencies():
  rng = np.random.default_rng(2)
  lat, lon = rng.uniform(-90, 90, 32), rng.uniform(-180, 180, 32)
  out = np.asarray(meta_encoder.featurize(_m(lat, lon), 'multiscale', num_scales=4, min_freq=1.0))
  f = np.array([1.0, 2.0, 4.0, 8.0])
  a, b = np.radians(lat)[:, None] * f, np.radians(lon)[:, None] * f
  want = np.concatenate([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=-1)
  np.testing.assert_allclose(out[:, :16], want, atol=2e-5)


def test_jit_and_finite_gradients_at_the_poles():
  m = _m([90.0, -90.0, 0.0], [0.0, 45.0, 180.0])
  for kind in meta_encoder.ENCODINGS:
    grad = jax.jit(jax.grad(lambda m, k=kind: meta_encoder.featurize(m, k).sum()))(m)
    assert np.isfinite(np.asarray(grad)).all(), kind


def test_errors():
  m = _m(0.0, 0.0)
  with pytest.raises(ValueError, match="Unknown metadata encoding 'fourier'"):
    meta_encoder.featurize(m, 'fourier')
  with pytest.raises(ValueError, match="unknown \\['scales'\\]"):
    meta_encoder.num_features('multiscale', scales=3)
  with pytest.raises(ValueError, match='shape \\[B, 4\\]'):
    meta_encoder.featurize(m[:, :2], 'sphere')
  with pytest.raises(ValueError, match='Invalid params'):
    meta_encoder.featurize(m, 'sph_harmonics', degree=-1)


@pytest.mark.parametrize('kind,params', [('linear', None), ('sphere', None),
                                         ('multiscale', {'num_scales': 3}),
                                         ('sph_harmonics', {'degree': 2})])
def test_encoder_param_shapes_follow_num_features(kind, params):
  enc = meta_encoder.MetadataEncoder(dim=16, encoding=kind, encoding_params=params)
  m = _m([10.0, 50.0], [0.0, 179.0])
  variables = enc.init(jax.random.key(0), m)
  width = meta_encoder.num_features(kind, **(params or {}))
  assert jax.tree.map(jnp.shape, variables['params']) == {
      'fc1': {'kernel': (width, 16), 'bias': (16,)}, 'fc2': {'kernel': (16, 16), 'bias': (16,)}}
  # fc1 keeps torch's init for its fan-in F.
  assert float(jnp.abs(variables['params']['fc1']['kernel']).max()) <= width ** -0.5
  assert enc.apply(variables, m).shape == (2, 16)


def test_linear_encoder_is_unchanged():
  """The default and 'linear' give the same params and outputs as Dense(4 -> D) on raw m."""
  m = _m([48.1, -33.9, 0.0], [11.6, 18.4, -179.0])
  key = jax.random.key(3)
  default = meta_encoder.MetadataEncoder(dim=32)
  explicit = meta_encoder.MetadataEncoder(dim=32, encoding='linear')
  p0, p1 = default.init(key, m)['params'], explicit.init(key, m)['params']
  jax.tree.map(np.testing.assert_array_equal, p0, p1)
  h = jax.nn.gelu(m @ p0['fc1']['kernel'] + p0['fc1']['bias'], approximate=False)
  np.testing.assert_array_equal(default.apply({'params': p0}, m),
                                explicit.apply({'params': p1}, m))
  np.testing.assert_allclose(default.apply({'params': p0}, m),
                             h @ p0['fc2']['kernel'] + p0['fc2']['bias'], rtol=1e-5)


@pytest.mark.parametrize('kind,field,value,width', [
    ('linear', None, None, 4), ('sphere', None, None, 5),
    ('multiscale', 'meta_num_scales', 2, 10), ('sph_harmonics', 'meta_sh_degree', 1, 6)])
def test_config_selects_the_teachers_encoder(kind, field, value, width):
  """`model.meta_encoding` (and its params) reach the teacher built from a config."""
  config = test_config.get_config('stssl_fixmatch')
  config.model.meta_encoding = kind
  if field:
    config.model[field] = value
  model = models.build_model(config)
  s = config.data.image_size
  x = jnp.zeros((2, s, s, 3))
  # lon 179.9 and -179.9 are 22 km apart: only the non-linear kinds see them as neighbours.
  m = _m([40.0, 40.0], [179.9, -179.9])
  params = model.init(jax.random.key(0), x, m)['params']
  assert params['teacher']['meta_encoder']['fc1']['kernel'].shape == (width, 32)
  (_, feats), _ = model.apply({'params': params}, x, m)
  gap = float(jnp.abs(feats['meta_embed'][0] - feats['meta_embed'][1]).max())
  scale = float(jnp.abs(feats['meta_embed']).max())
  if kind == 'linear':
    assert gap > 0.05 * scale  # lon/180 jumps from +1 to -1.
  else:
    assert gap < 0.01 * scale


def test_config_rejects_unknown_encoding_and_bad_params():
  config = test_config.get_config('stssl_fixmatch')
  config.model.meta_encoding = 'fourier'
  with pytest.raises(ValueError, match='meta_encoding must be one of'):
    models.build_model(config)
  config.model.meta_encoding = 'sph_harmonics'
  config.model.meta_sh_degree = -1
  with pytest.raises(ValueError, match='sph_harmonics'):
    models.build_model(config)
