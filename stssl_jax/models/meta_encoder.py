"""The teacher's metadata encoder E and the featurizers phi it can start with (METHOD 2.3).

`featurize(m, kind)` maps the encoded metadata m [B, META_DIM] (`stssl_jax.metadata`) to the
encoder's input features. The released model feeds m itself ('linear'); the other kinds are
location encodings without its two flaws: lon/180 jumps from +1 to -1 across the antimeridian,
and lat = +-90 is a line in (lat, lon) though the pole is one point. The time components
(sin, cos) are already periodic and pass through unchanged. METHOD 1.4 leaves the paper's
encoding ablations [UNKNOWN]; these are our own options.

A new encoder is a `_Kind` entry here (a featurizer and its parameters); the MLP stays.
"""

import math
from typing import Any, Callable, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from stssl_jax.metadata import META_DIM
from stssl_jax.models import vit

Dtype = Any


def _angles(m: jax.Array) -> tuple[jax.Array, jax.Array]:
  """m [B, 4] -> latitude, longitude [B] in radians (float32 at least)."""
  m = jnp.asarray(m, jnp.promote_types(m.dtype, jnp.float32))
  return m[:, 0] * (jnp.pi / 2), m[:, 1] * jnp.pi


def _linear(m: jax.Array) -> jax.Array:
  # The identity, not a copy or a cast: the released model's fc1 sees the very same values.
  return m


def _sphere(m: jax.Array) -> jax.Array:
  lat, lon = _angles(m)
  xyz = [jnp.cos(lat) * jnp.cos(lon), jnp.cos(lat) * jnp.sin(lon), jnp.sin(lat)]
  return jnp.concatenate([jnp.stack(xyz, axis=-1), m[:, 2:].astype(xyz[0].dtype)], axis=-1)


def _multiscale(m: jax.Array, num_scales: int, min_freq: float) -> jax.Array:
  lat, lon = _angles(m)
  f = jnp.asarray([min_freq * 2.0 ** i for i in range(num_scales)], lat.dtype)  # [K]
  a, b = lat[:, None] * f, lon[:, None] * f  # [B, K]
  return jnp.concatenate([jnp.sin(a), jnp.cos(a), jnp.sin(b), jnp.cos(b),
                          m[:, 2:].astype(a.dtype)], axis=-1)


def _legendre(x: jax.Array, s: jax.Array, degree: int) -> dict[tuple[int, int], jax.Array]:
  """Associated Legendre functions P_l^m(x), 0 <= m <= l <= degree (no Condon-Shortley phase).

  Args:
    x: [B] cos(colatitude) = sin(lat).
    s: [B] sin(colatitude) = cos(lat) >= 0; P_m^m = (2m-1)!! s^m uses it directly, so there is
      no sqrt(1 - x^2) whose gradient blows up at the poles.
    degree: the largest l.

  Returns:
    {(l, m): [B]}.
  """
  p = {}
  pmm = jnp.ones_like(x)
  for m in range(degree + 1):
    if m:
      pmm = pmm * (2 * m - 1) * s
    p[(m, m)] = pmm
    if m < degree:
      p[(m + 1, m)] = (2 * m + 1) * x * pmm
    for l in range(m + 2, degree + 1):
      p[(l, m)] = ((2 * l - 1) * x * p[(l - 1, m)] - (l + m - 1) * p[(l - 2, m)]) / (l - m)
  return p


def _sph_harmonics(m: jax.Array, degree: int) -> jax.Array:
  """Real spherical harmonics Y_l^k, l = 0..degree, k = -l..l in that order, + (sin, cos).

  Y_l^0 = N_l^0 P_l^0, Y_l^k = sqrt(2) N_l^k P_l^k cos(k lon) and Y_l^-k = sqrt(2) N_l^k P_l^k
  sin(k lon) for k > 0, with N_l^k = sqrt((2l+1)/(4 pi) (l-k)!/(l+k)!): orthonormal under the
  area measure cos(lat) dlat dlon. The sign convention (no (-1)^k) does not matter to a Dense.
  """
  lat, lon = _angles(m)
  p = _legendre(jnp.sin(lat), jnp.cos(lat), degree)
  out = []
  for l in range(degree + 1):
    for k in range(-l, l + 1):
      a = abs(k)
      norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - a) / math.factorial(l + a))
      if k == 0:
        out.append(norm * p[(l, 0)])
      else:
        trig = jnp.cos(a * lon) if k > 0 else jnp.sin(a * lon)
        out.append(math.sqrt(2.0) * norm * p[(l, a)] * trig)
  return jnp.concatenate([jnp.stack(out, axis=-1), m[:, 2:].astype(lat.dtype)], axis=-1)


class _Kind(NamedTuple):
  fn: Callable[..., jax.Array]
  num_features: Callable[..., int]
  defaults: dict[str, Any]


# kind -> (featurizer, F as a function of its params, default params).
_KINDS = {
    'linear': _Kind(_linear, lambda: META_DIM, {}),
    'sphere': _Kind(_sphere, lambda: 5, {}),
    'multiscale': _Kind(_multiscale, lambda num_scales, min_freq: 4 * num_scales + 2,
                        {'num_scales': 6, 'min_freq': 1.0}),
    'sph_harmonics': _Kind(_sph_harmonics, lambda degree: (degree + 1) ** 2 + 2, {'degree': 4}),
}
ENCODINGS = tuple(_KINDS)


def _resolve(kind: str, params: Mapping[str, Any]) -> tuple[_Kind, dict[str, Any]]:
  if kind not in _KINDS:
    raise ValueError(f'Unknown metadata encoding {kind!r}; expected one of {ENCODINGS}')
  spec = _KINDS[kind]
  unknown = set(params) - set(spec.defaults)
  if unknown:
    raise ValueError(f'Encoding {kind!r} takes params {sorted(spec.defaults)}, got unknown '
                     f'{sorted(unknown)}')
  full = {**spec.defaults, **params}
  if full.get('degree', 0) < 0 or full.get('num_scales', 1) < 1 or full.get('min_freq', 1) <= 0:
    raise ValueError(f'Invalid params for encoding {kind!r}: {full}')
  return spec, full


def num_features(kind: str = 'linear', **params) -> int:
  """F, the width of `featurize(m, kind, **params)`.

  Args:
    kind: a kind in `ENCODINGS`.
    **params: that kind's params (see `featurize`); missing ones take their defaults.

  Returns:
    linear 4; sphere 5; multiscale 4 * num_scales + 2; sph_harmonics (degree + 1)^2 + 2.
  """
  spec, full = _resolve(kind, params)
  return spec.num_features(**full)


def featurize(m: jax.Array, kind: str = 'linear', **params) -> jax.Array:
  """Location/time features of the metadata vector (pure, jit-able, differentiable).

  Angles are the true ones, lat = m[:, 0] * pi/2 and lon = m[:, 1] * pi in radians; the time
  pair m[:, 2:] = (sin, cos) of the day angle ends every non-linear kind unchanged.

  Args:
    m: [B, 4] `encode` output [lat/90, lon/180, sin(theta), cos(theta)].
    kind: one of `ENCODINGS`:
      'linear': m itself (the released model), F = 4.
      'sphere': the unit-sphere point (cos lat cos lon, cos lat sin lon, sin lat), F = 5.
      'multiscale': sin and cos of f*lat, then of f*lon, for f = min_freq * 2^i,
        i < num_scales (defaults 6 and 1.0: f = 1..32 rad^-1, the finest wavelength 11
        degrees); F = 4 * num_scales + 2. Integer f keep lon periodic across +-180.
      'sph_harmonics': real spherical harmonics of degree <= `degree` (default 4),
        orthonormal on the sphere; F = (degree + 1)^2 + 2.
    **params: the kind's params named above.

  Returns:
    [B, F] features, float32 at least (m itself for 'linear').

  Raises:
    ValueError: unknown kind or param, or m is not [B, 4].
  """
  spec, full = _resolve(kind, params)
  m = jnp.asarray(m)
  if m.ndim != 2 or m.shape[-1] != META_DIM:
    raise ValueError(f'featurize expects m of shape [B, {META_DIM}], got {m.shape}')
  return spec.fn(m, **full)


class MetadataEncoder(nn.Module):
  """E(m) = fc2(GELU(fc1(phi(m)))): Linear(F, dim), exact GELU, Linear(dim, dim) (METHOD 2.3).

  phi = `featurize(., encoding, **encoding_params)`. The released model is 'linear' (phi the
  identity, F = 4), whose params and outputs are exactly the original's. Both layers use
  torch nn.Linear's default init (weight and bias uniform in +-1/sqrt(fan_in)), METHOD 2.5.

  Attributes:
    dim: output and hidden width (the ViT width D).
    dtype: compute dtype (None: follow inputs and params).
    encoding: a kind in `ENCODINGS`.
    encoding_params: keyword arguments of that kind (e.g. {'degree': 4}); None for defaults.
  """
  dim: int
  dtype: Optional[Dtype] = None
  encoding: str = 'linear'
  encoding_params: Optional[Mapping[str, Any]] = None

  @nn.compact
  def __call__(self, m: jax.Array) -> jax.Array:
    """Args: m [B, 4] encoded metadata. Returns: [B, dim] embedding."""
    m = featurize(m, self.encoding, **dict(self.encoding_params or {}))  # [B, F]
    h = vit.torch_dense(self.dim, m.shape[-1], self.dtype, 'fc1')(m)
    h = nn.gelu(h, approximate=False)
    return vit.torch_dense(self.dim, self.dim, self.dtype, 'fc2')(h)
