"""Multi-band (BigEarthNet) transforms on float images in [0, 1] (METHOD 3.4-3.5).

NumPy, one image at a time, any number of bands C, deterministic given a
`np.random.Generator`. The chain is
  record uint16 [H, W, C] -> `scale` -> float32 [C, 120, 120] in [0, 1]
  -> `resize_bilinear` to the network side S (the pipeline caches this as float16)
  -> `weak` / `strong` view -> `normalize` -> the pipeline's [B, S, S, C] batch.
Everything after `scale` is channel-first, as in kornia: per-band constants then
broadcast over whole planes, which NumPy does 10-50x faster than along a short last axis.

`strong` is kornia 0.7.x's `RandAugment(n=3, m=5)` (ops in `kornia_ops`). The op table
and the draw are data (`Policy`, `POLICIES`), so a config picks the kornia version:
  kornia_0_7_0  0.7.0/0.7.1: translate_x listed twice, no translate_y; with replacement;
  kornia_0_7_2  (default, released behaviour) 15 ops, 3 drawn with replacement;
  kornia_0_7_3  the same ops drawn without replacement.
With m = 5 every magnitude is its range's 1/6 point: posterize 0 bits (all black,
[QUIRK], switchable), solarize 1/6, solarize_add +0.0717, saturation/contrast/
brightness/sharpness factor 0.4, rotate +-5 deg, shear +-9 deg, translate +-0.0167 px.
"""

import dataclasses
import functools
from typing import Optional, Sequence

import numpy as np

from stssl_jax.data import augment, kornia_ops as ops

SCALED_SIZE = 120  # METHOD 3.4 step 1: bands are brought to 120 x 120 before scaling.


# ---- Scaling, resizing, views ----------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """Lower tap [n_out] and upper-tap weight float32 [n_out] for align_corners=True."""
  if n_in == 1 or n_out == 1:
    return np.zeros(n_out, np.intp), np.zeros(n_out, np.float32)
  src = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
  lo = np.minimum(np.floor(src).astype(np.intp), n_in - 2)
  return lo, (src - lo).astype(np.float32)


def resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize, align_corners=True, no antialiasing (torch / kornia semantics).

  Output pixel i samples input coordinate i * (n_in - 1) / (n_out - 1), so the four corner
  pixels are copied exactly (METHOD 3.5 eval: 120 -> 128).

  Args:
    img: float [C, H, W].
    size: output side S.

  Returns:
    float32 [C, S, S] (the input as float32 when it already has that size).
  """
  img = np.asarray(img, np.float32)
  _, h, w = img.shape
  if h != size:
    lo, f = _linear_taps(h, size)
    a, b = img.take(lo, axis=1), img.take(np.minimum(lo + 1, h - 1), axis=1)
    img = a + f[:, None] * (b - a)
  if w != size:
    lo, f = _linear_taps(w, size)
    a, b = img.take(lo, axis=2), img.take(np.minimum(lo + 1, w - 1), axis=2)
    img = a + f * (b - a)
  return img


def scale(img: np.ndarray, mean: Sequence[float], std: Sequence[float],
          size: int = SCALED_SIZE) -> np.ndarray:
  """Clip-scaling of METHOD 3.4: v = clip((x - (mu - 2 sigma)) / (4 sigma), 0, 1) per band.

  Args:
    img: [H, W, C] raw band values (the record layout: uint16 digital numbers, or any
      real dtype); resized bilinearly to size x size first when it is not that size.
    mean: [C] per-band mean mu in raw units.
    std: [C] per-band standard deviation sigma in raw units.
    size: side after step 1 (120).

  Returns:
    float32 [C, size, size] in [0, 1]: mu - 2 sigma maps to 0 and mu + 2 sigma to 1.
  """
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  if img.ndim != 3 or img.shape[-1] != mean.shape[0] or mean.shape != std.shape:
    raise ValueError(f'scale: image {list(img.shape)} (H, W, C) does not match '
                     f'{mean.shape[0]} band means and {std.shape[0]} stds')
  x = resize_bilinear(np.moveaxis(img, -1, 0), size)
  inv = (1.0 / (4.0 * std)).astype(np.float32)[:, None, None]
  offset = ((mean - 2.0 * std) / (4.0 * std)).astype(np.float32)[:, None, None]
  return np.clip(x * inv - offset, 0.0, 1.0)


def prepare(img: np.ndarray, mean: Sequence[float], std: Sequence[float],
            size: int) -> np.ndarray:
  """Record image -> what the pipeline caches: `scale`, resized to `size`, float16.

  METHOD 3.5 recommends caching the clip-scaled images as float16; caching them already
  resized to the network side saves the resize in every view (same values up to float16
  rounding, < 2.5e-4).

  Args:
    img: uint16 [H, W, C].
    mean: [C] band means (raw units).
    std: [C] band standard deviations (raw units).
    size: network input side S (128 in the released runs).

  Returns:
    float16 [C, S, S] in [0, 1], read-only.
  """
  out = resize_bilinear(scale(img, mean, std), size).astype(np.float16)
  out.flags.writeable = False
  return out


def normalize(v: np.ndarray) -> np.ndarray:
  """(v - 0.5) / 0.25: the scaled bands have mean 0.5 and std 0.25 (METHOD 3.4 step 4).

  Args:
    v: float, any shape, values in [0, 1].

  Returns:
    float32 of the same shape, in [-2, 2].
  """
  return (np.asarray(v, np.float32) - np.float32(0.5)) * np.float32(4.0)


def to_hwc(v: np.ndarray) -> np.ndarray:
  """float [C, H, W] -> contiguous float32 [H, W, C] (the network layout)."""
  return np.ascontiguousarray(np.moveaxis(v, 0, -1), np.float32)


def weak(v: np.ndarray, rng: np.random.Generator, padding: int = 16,
         size: int = 128) -> np.ndarray:
  """Weak view: resize to S, reflect-pad P, random S x S crop, h and v flips with p = 0.5.

  Done as two gathers with reflect indices (a flip is a reversed index vector), so no
  padded copy is made. Same draws as the EuroSAT weak view.

  Args:
    v: float [C, H, W] in [0, 1] (usually [C, S, S] float16 from the cache).
    rng: one `random(4)` draw: crop offsets (y, x) in 0..2P, then the flips (h, v).
    padding: reflect padding P (16; needs P < S).
    size: output side S (128).

  Returns:
    float32 [C, S, S], a new array.
  """
  if v.shape[1:] != (size, size):
    v = resize_bilinear(v, size)
  rows, cols = augment.crop_flip_indices(size, padding, rng)
  # Gather first: converting the cached float16 crop costs half of converting a copy.
  return v.take(rows, axis=1).take(cols, axis=2).astype(np.float32, copy=False)


# ---- RandAugment policies --------------------------------------------------------------

# Rows (op, low, high) of kornia's `rand_augment.default_policy`. Symmetric ops (rotate,
# shear, translate) take |magnitude| from (0, high) and a random sign.
_OPS_0_7_2 = (
    ('auto_contrast', 0.0, 1.0), ('equalize', 0.0, 1.0), ('invert', 0.0, 1.0),
    ('rotate', -30.0, 30.0), ('posterize', 0.0, 4.0), ('solarize', 0.0, 1.0),
    ('solarize_add', 0.0, 0.43), ('color', 0.1, 1.9), ('contrast', 0.1, 1.9),
    ('brightness', 0.1, 1.9), ('sharpness', 0.1, 1.9), ('shear_x', -0.3, 0.3),
    ('shear_y', -0.3, 0.3), ('translate_x', -0.1, 0.1), ('translate_y', -0.1, 0.1))
_OPS_0_7_0 = _OPS_0_7_2[:-1] + (('translate_x', -0.1, 0.1),)
_SYMMETRIC = frozenset({'rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y'})
# Clean posterize ([QUIRK] off): the usual RandAugment range, 4 + 4 m / 30 -> 4 bits.
_POSTERIZE_CLEAN = ('posterize', 4.0, 8.0)


@dataclasses.dataclass(frozen=True)
class Policy:
  """kornia-style RandAugment(n, m): the ops, how they are drawn, and op settings.

  Attributes:
    ops: rows (op name, low, high). The magnitude is m / 30 * (high - low) + low, or
      m / 30 * high with a random sign for the symmetric ops; then shear * 180 (degrees)
      and int() for posterize bits, as kornia's op wrappers do.
    replace: draw the n ops with replacement (kornia 0.7.0-0.7.2) or without (0.7.3+).
    n: ops per image, each always applied.
    m: magnitude in (0, 30).
    solarize_add_threshold: None draws it from U(0, 1) per image, which is what kornia
      0.7.x does (its SolarizeAdd builds RandomSolarize(thresholds=0.5), a half-width
      around 0.5); METHOD 3.5 reads it as a fixed 0.5.
    saturation: 'hsv' (kornia) or 'luma' (RGB only), see `kornia_ops.saturation`.
  """
  ops: tuple[tuple[str, float, float], ...]
  replace: bool = True
  n: int = 3
  m: int = 5
  solarize_add_threshold: Optional[float] = None
  saturation: str = 'hsv'

  def magnitudes(self) -> list[float]:
    """|magnitude| of every op row, before signs and the shear / posterize mapping."""
    frac = self.m / 30.0
    return [frac * hi if name in _SYMMETRIC else frac * (hi - lo) + lo
            for name, lo, hi in self.ops]


POLICIES = {
    'kornia_0_7_0': Policy(_OPS_0_7_0, replace=True),
    'kornia_0_7_2': Policy(_OPS_0_7_2, replace=True),
    'kornia_0_7_3': Policy(_OPS_0_7_2, replace=False),
}
DEFAULT_POLICY = POLICIES['kornia_0_7_2']


def make_policy(name: str = 'kornia_0_7_2', n: int = 3, posterize_quirk: bool = True,
                solarize_add_threshold: Optional[float] = None,
                saturation: str = 'hsv') -> Policy:
  """Looks up a named policy and applies the switches.

  Args:
    name: a key of POLICIES.
    n: ops per image.
    posterize_quirk: keep kornia 0.7's posterize range (0, 4), i.e. 0 bits = an all-black
      image at m = 5 ([QUIRK], released behaviour); False uses (4, 8), i.e. 4 bits.
    solarize_add_threshold: None for kornia's U(0, 1) draw, or a fixed threshold.
    saturation: 'hsv' (kornia) or 'luma'.

  Returns:
    Policy.
  """
  if name not in POLICIES:
    raise ValueError(f'Unknown RandAugment policy {name!r}; choose from {sorted(POLICIES)}')
  policy = POLICIES[name]
  table = policy.ops if posterize_quirk else tuple(
      _POSTERIZE_CLEAN if op[0] == 'posterize' else op for op in policy.ops)
  if n < 1 or (n > len(table) and not policy.replace):
    raise ValueError(f'RandAugment n={n} must be >= 1 (and <= {len(table)} for {name!r}, '
                     'which draws without replacement)')
  return dataclasses.replace(policy, ops=table, n=n, saturation=saturation,
                             solarize_add_threshold=solarize_add_threshold)


_PLAIN = {'auto_contrast': ops.auto_contrast, 'equalize': ops.equalize, 'invert': ops.invert}
_FACTOR = {'solarize': ops.solarize, 'contrast': ops.contrast,
           'brightness': ops.brightness, 'sharpness': ops.sharpness}
# Signed ops and the map from kornia's magnitude to the op's argument.
_SIGNED = {'rotate': (ops.rotate, 1.0), 'shear_x': (ops.shear_x, 180.0),
           'shear_y': (ops.shear_y, 180.0), 'translate_x': (ops.translate_x, 1.0),
           'translate_y': (ops.translate_y, 1.0)}


def apply_op(img: np.ndarray, name: str, magnitude: float, u: float,
             policy: Policy = DEFAULT_POLICY) -> np.ndarray:
  """Applies one policy op the way kornia 0.7 maps its magnitude.

  Args:
    img: float32 [C, H, W] in [0, 1].
    name: op name (a policy row's first entry).
    magnitude: |magnitude| from `Policy.magnitudes`.
    u: the op's uniform draw in [0, 1): the sign of symmetric ops (negative when u < 0.5)
      or the solarize_add threshold when the policy draws it; unused otherwise.
    policy: supplies solarize_add_threshold and the saturation mode.

  Returns:
    float32 [C, H, W].
  """
  if name in _PLAIN:
    return _PLAIN[name](img)
  if name in _FACTOR:
    return _FACTOR[name](img, magnitude)
  if name in _SIGNED:
    fn, unit = _SIGNED[name]
    # Shear: magnitude * 180 degrees. Translate: kornia 0.7 reads the magnitude as pixels.
    return fn(img, (-magnitude if u < 0.5 else magnitude) * unit)
  if name == 'posterize':
    return ops.posterize(img, int(magnitude))
  if name == 'solarize_add':
    threshold = policy.solarize_add_threshold
    return ops.solarize_add(img, magnitude, u if threshold is None else threshold)
  if name == 'color':
    return ops.saturation(img, magnitude, policy.saturation)
  raise ValueError(f'Unknown RandAugment op {name!r}')


def draw_ops(rng: np.random.Generator, policy: Policy = DEFAULT_POLICY
             ) -> tuple[np.ndarray, np.ndarray]:
  """The random part of RandAugment: which n ops, and one uniform per op.

  Args:
    rng: `integers(0, len(ops), n)` with replacement, else `permutation(len(ops))[:n]`;
      then `random(n)`.
    policy: the Policy.

  Returns:
    (int [n] row indices into policy.ops, in application order; float [n] uniforms that
    give each op its sign or threshold, see `apply_op`).
  """
  k = len(policy.ops)
  idx = rng.integers(0, k, policy.n) if policy.replace else rng.permutation(k)[:policy.n]
  return idx, rng.random(policy.n)


def rand_augment(img: np.ndarray, rng: np.random.Generator,
                 policy: Policy = DEFAULT_POLICY) -> np.ndarray:
  """kornia-style RandAugment(n, m): n ops drawn from the policy (`draw_ops`), all applied.

  Args:
    img: float [C, H, W] in [0, 1].
    rng: source of `draw_ops`.
    policy: the Policy.

  Returns:
    float32 [C, H, W] in [0, 1].
  """
  idx, u = draw_ops(rng, policy)
  mags = policy.magnitudes()
  out = np.asarray(img, np.float32)
  for i, u_i in zip(idx, u):
    out = apply_op(out, policy.ops[i][0], mags[i], u_i, policy)
  return out


def strong(v: np.ndarray, rng: np.random.Generator, padding: int = 16, size: int = 128,
           policy: Policy = DEFAULT_POLICY) -> np.ndarray:
  """Strong view: `weak`, then `rand_augment` (METHOD 3.5); not normalised.

  Args:
    v: float [C, H, W] in [0, 1].
    rng: weak's `random(4)`, then rand_augment's draws.
    padding: reflect padding of the weak part.
    size: output side S.
    policy: the RandAugment Policy.

  Returns:
    float32 [C, S, S] in [0, 1].
  """
  return rand_augment(weak(v, rng, padding, size), rng, policy)
