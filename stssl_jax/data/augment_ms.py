"""Multi-band (BigEarthNet) image transforms on float images in [0, 1] (METHOD 3.4-3.5).

NumPy, one image [H, W, C] at a time, any number of bands C, deterministic given a
`np.random.Generator`. The pipeline is
  record uint16 -> `scale` (clip-scaling to [0, 1]) -> `resize_bilinear` to the network
  size (cached once as float16 by the pipeline) -> `weak` / `strong` view -> `normalize`.

`strong` is kornia 0.7.x's `RandAugment(n=3, m=5)` re-implemented: the op table and the
draw (with or without replacement) are data (`Policy`, `POLICIES`), so a config picks the
kornia version. Every op is written from what kornia computes, not from what its names
suggest (METHOD 3.5): with m = 5 the magnitude fraction is 1/6, which gives posterize
0 bits (all black), brightness -0.6, contrast x0.4, shear +-9 deg and translation
+-0.0167 *pixels*. Geometric ops sample bilinearly (align_corners=True pixel grid) with
zero fill, like kornia's `warp_affine`; so a 0.0167 px shift mixes 1.67% of each pixel's
neighbour in and darkens one border column/row by 1.67%.

Deviations from kornia, all at float-rounding level: HSV saturation is computed in closed
form (see `saturation`); posterize/equalize truncate x * 255 in float32 like kornia, but
kornia's extra `/ 255 * 255` round trip inside posterize is not reproduced.
"""

import dataclasses
import functools
import math
from typing import Optional, Sequence

import numpy as np

from stssl_jax.data import augment

SCALED_SIZE = 120  # METHOD 3.4 step 1: bands are brought to 120 x 120 before scaling.


# ---- Scaling, resizing, normalisation -----------------------------------------------


@functools.lru_cache(maxsize=None)
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """Lower tap index [n_out] and weight of the upper tap [n_out, 1] (align_corners=True)."""
  if n_out == 1 or n_in == 1:
    src = np.zeros(n_out)
  else:
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
  lo = np.minimum(np.floor(src).astype(np.intp), n_in - 2) if n_in > 1 else np.zeros(n_out, np.intp)
  frac = (src - lo).astype(np.float32)
  return lo, frac[:, None]


def resize_bilinear(img: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize with align_corners=True and no antialiasing (torch/kornia semantics).

  Output pixel i samples input coordinate i * (n_in - 1) / (n_out - 1), so the four corner
  pixels are copied exactly (METHOD 3.5 eval: 120 -> 128).

  Args:
    img: float [H, W, C].
    size: output side S.

  Returns:
    float32 [S, S, C] (the input itself, as float32, when it already has that size).
  """
  img = np.asarray(img, np.float32)
  h, w = img.shape[:2]
  if h == size and w == size:
    return img
  if h > 1:
    lo, f = _linear_taps(h, size)
    img = img[lo] + f[:, :, None] * (img[lo + 1] - img[lo])
  else:
    img = np.repeat(img, size, axis=0)
  if w > 1:
    lo, f = _linear_taps(w, size)
    img = img[:, lo] + f[None] * (img[:, lo + 1] - img[:, lo])
  else:
    img = np.repeat(img, size, axis=1)
  return img


def scale(img: np.ndarray, mean: Sequence[float], std: Sequence[float],
          size: int = SCALED_SIZE) -> np.ndarray:
  """Clip-scaling of METHOD 3.4: v = clip((x - (mu - 2 sigma)) / (4 sigma), 0, 1) per band.

  Args:
    img: [H, W, C] raw band values (uint16 digital numbers, or any real dtype); resized
      bilinearly to size x size first when it is not that size (step 1).
    mean: [C] per-band mean mu in raw units.
    std: [C] per-band standard deviation sigma in raw units.
    size: side after step 1 (120).

  Returns:
    float32 [size, size, C] in [0, 1]; mu - 2 sigma maps to 0 and mu + 2 sigma to 1.
  """
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  if img.shape[-1] != mean.shape[0] or mean.shape != std.shape:
    raise ValueError(f'scale: image has {img.shape[-1]} bands but mean/std have '
                     f'{mean.shape[0]}/{std.shape[0]}')
  x = resize_bilinear(img, size) if img.shape[:2] != (size, size) else img.astype(np.float32)
  inv = (1.0 / (4.0 * std)).astype(np.float32)
  offset = ((mean - 2.0 * std) / (4.0 * std)).astype(np.float32)
  return np.clip(x * inv - offset, 0.0, 1.0)


def prepare(img: np.ndarray, mean: Sequence[float], std: Sequence[float],
            size: int) -> np.ndarray:
  """Record image -> what the pipeline caches: `scale` at 120, resized to `size`, float16.

  Args:
    img: uint16 [H, W, C].
    mean: [C] band means (raw units).
    std: [C] band standard deviations (raw units).
    size: network input side S (128 in the released runs).

  Returns:
    float16 [S, S, C] in [0, 1], read-only.
  """
  out = resize_bilinear(scale(img, mean, std), size).astype(np.float16)
  out.flags.writeable = False
  return out


def normalize(v: np.ndarray) -> np.ndarray:
  """(v - 0.5) / 0.25: scaled space has mean 0.5 and std 0.25 per band (METHOD 3.4 step 4).

  Args:
    v: float [..., C] in [0, 1].

  Returns:
    float32 of the same shape, in [-2, 2].
  """
  return (np.asarray(v, np.float32) - np.float32(0.5)) * np.float32(4.0)


def weak(v: np.ndarray, rng: np.random.Generator, padding: int = 16,
         size: int = 128) -> np.ndarray:
  """Weak view: resize to `size`, reflect-pad, random size x size crop, h/v flips (p=0.5).

  Args:
    v: float [H, W, C] in [0, 1] (usually already `size`, from the cache).
    rng: one `random(4)` draw (crop offsets y, x; flips h, v), as the EuroSAT weak view.
    padding: reflect padding P (16).
    size: output side S (128).

  Returns:
    float32 [S, S, C], a new array.
  """
  return augment.weak(resize_bilinear(v, size), rng, padding)


# ---- RandAugment ops: float32 [H, W, C] in [0, 1] -> same ---------------------------


def auto_contrast(img: np.ndarray) -> np.ndarray:
  """kornia `normalize_min_max` per band: (x - min) / (max - min + 1e-6), clipped."""
  lo = img.min(axis=(0, 1))
  hi = img.max(axis=(0, 1))
  return np.clip((img - lo) / (hi - lo + np.float32(1e-6)), 0.0, 1.0)


def equalize(img: np.ndarray) -> np.ndarray:
  """kornia `equalize`: PIL's per-band histogram equalisation on x * 255.

  The histogram is `torch.histc(x * 255, 256, 0, 255)` (bin = floor(x * 256), 255 for
  x = 1); the table is indexed with trunc(x * 255); a band whose step is 0 is unchanged.
  """
  h, w, c = img.shape
  x255 = img * np.float32(255.0)
  offsets = np.arange(c, dtype=np.intp) * 256
  bins = np.minimum((x255 * np.float32(256.0 / 255.0)).astype(np.intp), 255) + offsets
  hist = np.bincount(bins.ravel(), minlength=256 * c).reshape(c, 256)
  last = 255 - (hist[:, ::-1] > 0).argmax(axis=1)
  step = (hist.sum(axis=1) - hist[np.arange(c), last]) // 255
  safe = np.maximum(step, 1)[:, None]
  lut = (np.cumsum(hist, axis=1) + safe // 2) // safe
  lut = np.clip(np.concatenate([np.zeros((c, 1), lut.dtype), lut[:, :-1]], axis=1), 0, 255)
  out = lut.astype(np.float32).ravel().take(x255.astype(np.intp) + offsets) / np.float32(255.0)
  return np.where(step > 0, out, img)


def invert(img: np.ndarray) -> np.ndarray:
  """1 - x."""
  return np.float32(1.0) - img


def posterize(img: np.ndarray, bits: int) -> np.ndarray:
  """Keeps the top `bits` bits of trunc(x * 255); bits == 0 gives all zeros (kornia)."""
  if bits <= 0:
    return np.zeros_like(img)
  if bits >= 8:
    return img.copy()
  mask = (0xFF << (8 - bits)) & 0xFF
  return ((img * np.float32(255.0)).astype(np.uint8) & mask).astype(np.float32) / 255.0


def solarize(img: np.ndarray, threshold: float) -> np.ndarray:
  """Inverts (1 - x) every value >= threshold."""
  return np.where(img < np.float32(threshold), img, np.float32(1.0) - img)


def solarize_add(img: np.ndarray, addition: float, threshold: float) -> np.ndarray:
  """kornia `solarize(x, threshold, addition)`: clip(x + addition, 0, 1), then solarize."""
  return solarize(np.clip(img + np.float32(addition), 0.0, 1.0), threshold)


def saturation(img: np.ndarray, factor: float, mode: str = 'hsv') -> np.ndarray:
  """Saturation change, defined for any number of bands.

  'hsv' (kornia's `adjust_saturation`): RGB -> HSV, S *= factor clipped to [0, 1], back.
  With hue and value V = max_c(x) fixed, that is exactly x' = V - f (V - x) per pixel with
  f = min(factor, 1 / S), S = (V - min_c x) / V. Written this way it needs no colour
  model, so for C != 3 bands it is the same blend towards the per-pixel band maximum.
  'luma' (PIL / torchvision style, RGB only): blend with the ITU-R 601 grey, clipped.

  Args:
    img: float32 [H, W, C].
    factor: saturation factor (0.4 in the released runs: desaturate).
    mode: 'hsv' or 'luma'.

  Returns:
    float32 [H, W, C].
  """
  if mode == 'luma':
    if img.shape[-1] != 3:
      raise ValueError(f"saturation mode 'luma' needs RGB, got {img.shape[-1]} bands")
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(grey[..., None] + np.float32(factor) * (img - grey[..., None]), 0.0, 1.0)
  if mode != 'hsv':
    raise ValueError(f"saturation mode must be 'hsv' or 'luma', got {mode!r}")
  v = img.max(axis=-1, keepdims=True)
  f = np.float32(factor)
  if factor > 1.0:
    s = (v - img.min(axis=-1, keepdims=True)) / (v + np.float32(1e-8))
    f = np.minimum(f, 1.0 / np.maximum(s, np.float32(1e-8)))
  return v - f * (v - img)


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
  """kornia `adjust_contrast`: clip(x * factor, 0, 1) (no mean blend)."""
  return np.clip(img * np.float32(factor), 0.0, 1.0)


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
  """kornia `RandomBrightness`: clip(x + (factor - 1), 0, 1)."""
  return np.clip(img + np.float32(factor - 1.0), 0.0, 1.0)


def sharpness(img: np.ndarray, factor: float) -> np.ndarray:
  """kornia 0.7 `sharpness`: blend with a 3x3 smoothing ([[1,1,1],[1,5,1],[1,1,1]] / 13).

  The smoothed image (valid convolution, clipped) keeps the original one-pixel border;
  the result is smooth + factor * (x - smooth), clipped unless 0 < factor < 1.
  """
  rows = img[:-2] + img[1:-1] + img[2:]
  box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
  smooth = img.copy()
  smooth[1:-1, 1:-1] = np.clip((box + 4 * img[1:-1, 1:-1]) / np.float32(13.0), 0.0, 1.0)
  out = smooth + np.float32(factor) * (img - smooth)
  return out if 0.0 < factor < 1.0 else np.clip(out, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  return x, y


def _sample(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
  """Bilinear sampling at pixel coordinates (sx, sy) [H, W]; taps outside the image are 0.

  This is `grid_sample(mode='bilinear', padding_mode='zeros', align_corners=True)`.
  """
  h, w, c = img.shape
  # Clipping to [-1, n] keeps far-out samples at zero weight on real pixels; the zero
  # border (1 before, 2 after) makes every tap index valid.
  sx = np.clip(sx, -1.0, w)
  sy = np.clip(sy, -1.0, h)
  x0, y0 = np.floor(sx), np.floor(sy)
  fx = (sx - x0).astype(np.float32)[..., None]
  fy = (sy - y0).astype(np.float32)[..., None]
  padded = np.zeros((h + 3, w + 3, c), np.float32)
  padded[1:h + 1, 1:w + 1] = img
  flat = padded.reshape(-1, c)
  i00 = (y0.astype(np.intp) + 1) * (w + 3) + x0.astype(np.intp) + 1
  top = flat.take(i00, axis=0) * (1 - fx) + flat.take(i00 + 1, axis=0) * fx
  bottom = flat.take(i00 + w + 3, axis=0) * (1 - fx) + flat.take(i00 + w + 4, axis=0) * fx
  return top * (1 - fy) + bottom * fy


def _affine(img: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Output pixel p = (x, y) reads input a @ p + b (pixel coordinates)."""
  x, y = _grid(*img.shape[:2])
  return _sample(img, a[0, 0] * x + a[0, 1] * y + b[0], a[1, 0] * x + a[1, 1] * y + b[1])


def _centre(img: np.ndarray) -> np.ndarray:
  return np.array([(img.shape[1] - 1) / 2.0, (img.shape[0] - 1) / 2.0])


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
  """Rotation about ((W-1)/2, (H-1)/2); bilinear, zero fill.

  Counter-clockwise on screen for degrees > 0, as OpenCV's and kornia's
  `get_rotation_matrix2d`.
  """
  t = math.radians(degrees)
  inv = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
  c = _centre(img)
  return _affine(img, inv, c - inv @ c)


def shear_x(img: np.ndarray, degrees: float) -> np.ndarray:
  """kornia shear along x about the centre: output (x, y) reads (x + tan(d) (y - cy), y)."""
  s = math.tan(math.radians(degrees))
  c = _centre(img)
  return _affine(img, np.array([[1.0, s], [0.0, 1.0]]), np.array([-s * c[1], 0.0]))


def shear_y(img: np.ndarray, degrees: float) -> np.ndarray:
  """kornia shear along y about the centre: output (x, y) reads (x, y + tan(d) (x - cx))."""
  s = math.tan(math.radians(degrees))
  c = _centre(img)
  return _affine(img, np.array([[1.0, 0.0], [s, 1.0]]), np.array([0.0, -s * c[0]]))


def translate_x(img: np.ndarray, pixels: float) -> np.ndarray:
  """Content moves right by `pixels` (output x reads input x - pixels); bilinear, zero fill."""
  return _affine(img, np.eye(2), np.array([-pixels, 0.0]))


def translate_y(img: np.ndarray, pixels: float) -> np.ndarray:
  """Content moves down by `pixels` (output y reads input y - pixels); bilinear, zero fill."""
  return _affine(img, np.eye(2), np.array([0.0, -pixels]))


# ---- Policies --------------------------------------------------------------------------

# Rows (op, low, high) of kornia's `rand_augment.default_policy`. Symmetric ops (rotate,
# shear, translate) take |magnitude| from (0, high) and a random sign.
_OPS_0_7_2 = (
    ('auto_contrast', 0.0, 1.0), ('equalize', 0.0, 1.0), ('invert', 0.0, 1.0),
    ('rotate', -30.0, 30.0), ('posterize', 0.0, 4.0), ('solarize', 0.0, 1.0),
    ('solarize_add', 0.0, 0.43), ('color', 0.1, 1.9), ('contrast', 0.1, 1.9),
    ('brightness', 0.1, 1.9), ('sharpness', 0.1, 1.9), ('shear_x', -0.3, 0.3),
    ('shear_y', -0.3, 0.3), ('translate_x', -0.1, 0.1), ('translate_y', -0.1, 0.1))
# 0.7.0 and 0.7.1 list translate_x twice and have no translate_y.
_OPS_0_7_0 = _OPS_0_7_2[:-1] + (('translate_x', -0.1, 0.1),)
_SYMMETRIC = frozenset({'rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y'})
_FACTOR_OPS = {'contrast': contrast, 'brightness': brightness, 'sharpness': sharpness}
_SHEARS = {'shear_x': shear_x, 'shear_y': shear_y}
_TRANSLATIONS = {'translate_x': translate_x, 'translate_y': translate_y}
# Clean posterize ([QUIRK] off): the usual RandAugment range, 4 + 4 m / 30 -> 4 bits.
_POSTERIZE_CLEAN = ('posterize', 4.0, 8.0)


@dataclasses.dataclass(frozen=True)
class Policy:
  """A kornia-style RandAugment(n, m): which ops, how they are drawn, op settings.

  Attributes:
    ops: rows (op name, low, high); the magnitude is m / 30 * (high - low) + low, or
      m / 30 * high with a random sign for the symmetric ops.
    replace: draw the n ops with replacement (kornia 0.7.0-0.7.2) or not (0.7.3+).
    n: ops per image.
    m: magnitude in (0, 30).
    solarize_add_threshold: threshold of solarize_add; None draws it from U(0, 1) per
      image, which is what kornia 0.7.x does (RandomSolarize(thresholds=0.5) is a
      half-width around 0.5). METHOD 3.5 reads it as a fixed 0.5.
    saturation: 'hsv' (kornia) or 'luma' (RGB only), see `saturation`.
  """
  ops: tuple[tuple[str, float, float], ...]
  replace: bool = True
  n: int = 3
  m: int = 5
  solarize_add_threshold: Optional[float] = None
  saturation: str = 'hsv'

  def magnitudes(self) -> list[float]:
    """|magnitude| of every op row, as kornia computes it (before signs and op mapping)."""
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
                solarize_add_threshold: Optional[float] = None) -> Policy:
  """Looks up a named policy and applies the switches.

  Args:
    name: a key of POLICIES.
    n: ops per image.
    posterize_quirk: keep kornia 0.7's posterize range (0, 4), i.e. 0 bits = all black
      at m = 5 ([QUIRK], released behaviour); False uses (4, 8), i.e. 4 bits.
    solarize_add_threshold: None for kornia's U(0, 1) draw, or a fixed threshold.

  Returns:
    Policy.
  """
  if name not in POLICIES:
    raise ValueError(f'Unknown RandAugment policy {name!r}; choose from {sorted(POLICIES)}')
  policy = POLICIES[name]
  ops = policy.ops if posterize_quirk else tuple(
      _POSTERIZE_CLEAN if op[0] == 'posterize' else op for op in policy.ops)
  if n < 1 or (n > len(ops) and not policy.replace):
    raise ValueError(f'RandAugment n={n} must be >= 1 (and <= {len(ops)} for policy {name!r}, '
                     'which draws without replacement)')
  return dataclasses.replace(policy, ops=ops, n=n,
                             solarize_add_threshold=solarize_add_threshold)


def apply_op(img: np.ndarray, name: str, magnitude: float, u: float,
             policy: Policy = DEFAULT_POLICY) -> np.ndarray:
  """Applies one policy op with kornia's magnitude mapping.

  Args:
    img: float32 [H, W, C] in [0, 1].
    name: op name (a policy row's first entry).
    magnitude: |magnitude| from `Policy.magnitudes`.
    u: the op's uniform draw in [0, 1): the sign (negative when u < 0.5) of symmetric ops,
      the solarize_add threshold when the policy draws it; unused otherwise.
    policy: supplies solarize_add_threshold and the saturation mode.

  Returns:
    float32 [H, W, C].
  """
  signed = -magnitude if u < 0.5 else magnitude
  if name == 'auto_contrast':
    return auto_contrast(img)
  if name == 'equalize':
    return equalize(img)
  if name == 'invert':
    return invert(img)
  if name == 'posterize':
    return posterize(img, int(magnitude))  # kornia: magnitude.long().
  if name == 'solarize':
    return solarize(img, magnitude)
  if name == 'solarize_add':
    threshold = policy.solarize_add_threshold
    return solarize_add(img, magnitude, u if threshold is None else threshold)
  if name == 'color':
    return saturation(img, magnitude, policy.saturation)
  if name in _FACTOR_OPS:
    return _FACTOR_OPS[name](img, magnitude)
  if name == 'rotate':
    return rotate(img, signed)
  if name in _SHEARS:
    return _SHEARS[name](img, signed * 180.0)  # kornia: magnitude * 180, in degrees.
  if name in _TRANSLATIONS:
    return _TRANSLATIONS[name](img, signed)  # kornia 0.7: the magnitude is in pixels.
  raise ValueError(f'Unknown RandAugment op {name!r}')


def rand_augment(img: np.ndarray, rng: np.random.Generator,
                 policy: Policy = DEFAULT_POLICY) -> np.ndarray:
  """kornia-style RandAugment(n, m): n ops drawn from the policy, each always applied.

  Args:
    img: float [H, W, C] in [0, 1].
    rng: op choice (`integers(len, size=n)` with replacement, else `permutation(len)[:n]`),
      then one `random(n)` for the ops' signs / thresholds.
    policy: the Policy.

  Returns:
    float32 [H, W, C] in [0, 1].
  """
  k = len(policy.ops)
  idx = rng.integers(0, k, policy.n) if policy.replace else rng.permutation(k)[:policy.n]
  u = rng.random(policy.n)
  mags = policy.magnitudes()
  out = np.asarray(img, np.float32)
  for j, i in enumerate(idx):
    out = apply_op(out, policy.ops[i][0], mags[i], u[j], policy)
  return out


def strong(v: np.ndarray, rng: np.random.Generator, padding: int = 16, size: int = 128,
           policy: Policy = DEFAULT_POLICY) -> np.ndarray:
  """Strong view: `weak`, then `rand_augment` (METHOD 3.5); not normalised.

  Args:
    v: float [H, W, C] in [0, 1].
    rng: weak's `random(4)`, then rand_augment's draws.
    padding: reflect padding of the weak part.
    size: output side S.
    policy: the RandAugment Policy.

  Returns:
    float32 [S, S, C] in [0, 1].
  """
  return rand_augment(weak(v, rng, padding, size), rng, policy)
