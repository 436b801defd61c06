"""kornia 0.7's RandAugment ops, re-implemented in NumPy for channel-first float images.

Every op maps float32 [C, H, W] in [0, 1] to the same, for any number of bands C, and is
written from what kornia 0.7 computes (METHOD 3.5), not from what the op names suggest:
contrast multiplies, brightness adds, sharpness blends with a 3x3 smoothing, posterize
with 0 bits is all black. Channel-first because per-band constants then broadcast over
whole planes; NumPy is 10-50x slower when a [C] operand broadcasts along a short last axis.

Geometric ops sample bilinearly on the align_corners=True pixel grid with zero fill, like
kornia's `warp_affine` (grid_sample, padding_mode='zeros'). So a 0.0167 px translation
blends 1.67% of each pixel's neighbour in and darkens the leading border column by 1.67%.

Deviations, all at float-rounding level: saturation is the closed form of kornia's HSV
round trip (see `saturation`); posterize skips kornia's inner `/ 255 * 255` round trip.
"""

import functools
import math

import numpy as np


def auto_contrast(img: np.ndarray) -> np.ndarray:
  """kornia `normalize_min_max` per band: (x - min) / (max - min + 1e-6), clipped to [0, 1]."""
  lo = img.min(axis=(1, 2), keepdims=True)
  hi = img.max(axis=(1, 2), keepdims=True)
  return np.clip((img - lo) / (hi - lo + np.float32(1e-6)), 0.0, 1.0)


def equalize(img: np.ndarray) -> np.ndarray:
  """kornia `equalize`: PIL's per-band histogram equalisation of x * 255.

  The histogram is `torch.histc(x * 255, 256, 0, 255)` (bin floor(x * 256), 255 for
  x = 1), the table PIL's, indexed with trunc(x * 255). A band whose step is 0 (one
  dominant value) is left unchanged.
  """
  c = img.shape[0]
  x255 = img * np.float32(255.0)
  offsets = (np.arange(c, dtype=np.intp) * 256)[:, None, None]
  bins = np.minimum((x255 * np.float32(256.0 / 255.0)).astype(np.intp), 255) + offsets
  hist = np.bincount(bins.ravel(), minlength=256 * c).reshape(c, 256)
  last = 255 - (hist[:, ::-1] > 0).argmax(axis=1)
  step = (hist.sum(axis=1) - hist[np.arange(c), last]) // 255
  safe = np.maximum(step, 1)[:, None]
  lut = (np.cumsum(hist, axis=1) + safe // 2) // safe
  # Shift right by one (prepend 0), as PIL's table is built from the counts *below* i.
  lut = np.clip(np.concatenate([np.zeros((c, 1), lut.dtype), lut[:, :-1]], axis=1), 0, 255)
  lut = lut.astype(np.float32) / np.float32(255.0)
  out = lut.ravel().take(x255.astype(np.intp) + offsets)
  keep = step == 0
  if keep.any():
    out[keep] = img[keep]
  return out


def invert(img: np.ndarray) -> np.ndarray:
  """1 - x."""
  return np.float32(1.0) - img


def posterize(img: np.ndarray, bits: int) -> np.ndarray:
  """Keeps the top `bits` bits of trunc(x * 255); bits <= 0 gives all zeros (kornia)."""
  if bits <= 0:
    return np.zeros_like(img)
  if bits >= 8:
    return img.copy()
  mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
  return ((img * np.float32(255.0)).astype(np.uint8) & mask).astype(np.float32) / 255.0


def solarize(img: np.ndarray, threshold: float) -> np.ndarray:
  """Inverts (1 - x) every value >= threshold."""
  return np.where(img < np.float32(threshold), img, np.float32(1.0) - img)


def solarize_add(img: np.ndarray, addition: float, threshold: float) -> np.ndarray:
  """kornia `solarize(x, threshold, addition)`: clip(x + addition, 0, 1), then solarize."""
  return solarize(np.clip(img + np.float32(addition), 0.0, 1.0), threshold)


def saturation(img: np.ndarray, factor: float, mode: str = 'hsv') -> np.ndarray:
  """Saturation change, defined for any number of bands.

  'hsv' is kornia's `adjust_saturation`: RGB -> HSV, S = clip(S * factor, 0, 1), back.
  Hue and V = max_c x stay fixed, so per pixel this is exactly x' = V - f (V - x) with
  f = min(factor, 1 / S), S = (V - min_c x) / V. That form needs no colour model, so for
  C != 3 bands we use it as is: a blend towards the per-pixel maximum over bands.
  'luma' (PIL-like, RGB only) blends with the ITU-R 601 grey, clipped.

  Args:
    img: float32 [C, H, W].
    factor: saturation factor (0.4 in the released runs, i.e. desaturate).
    mode: 'hsv' or 'luma'.

  Returns:
    float32 [C, H, W].
  """
  if mode == 'luma':
    if img.shape[0] != 3:
      raise ValueError(f"saturation mode 'luma' needs RGB, got {img.shape[0]} bands")
    grey = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    return np.clip(grey + np.float32(factor) * (img - grey), 0.0, 1.0)
  if mode != 'hsv':
    raise ValueError(f"saturation mode must be 'hsv' or 'luma', got {mode!r}")
  v = img.max(axis=0)
  f = np.float32(factor)
  if factor > 1.0:
    s = (v - img.min(axis=0)) / (v + np.float32(1e-8))
    f = np.minimum(f, 1.0 / np.maximum(s, np.float32(1e-8)))
  return v - f * (v - img)


def contrast(img: np.ndarray, factor: float) -> np.ndarray:
  """kornia `adjust_contrast`: clip(x * factor, 0, 1) (no blend with the mean)."""
  return np.clip(img * np.float32(factor), 0.0, 1.0)


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
  """kornia `RandomBrightness`: clip(x + (factor - 1), 0, 1)."""
  return np.clip(img + np.float32(factor - 1.0), 0.0, 1.0)


def sharpness(img: np.ndarray, factor: float) -> np.ndarray:
  """kornia 0.7 `sharpness`: blend with the [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 smoothing.

  The smoothed image (valid convolution, clipped to [0, 1]) keeps the original one-pixel
  border; the result is smooth + factor * (x - smooth), clipped unless 0 < factor < 1.
  """
  rows = img[:, :-2] + img[:, 1:-1] + img[:, 2:]
  box = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
  smooth = img.copy()
  smooth[:, 1:-1, 1:-1] = np.clip((box + 4 * img[:, 1:-1, 1:-1]) / np.float32(13.0), 0.0, 1.0)
  out = smooth + np.float32(factor) * (img - smooth)
  return out if 0.0 < factor < 1.0 else np.clip(out, 0.0, 1.0)


# ---- Geometric ops: bilinear sampling, zero fill ---------------------------------------


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  y, x = np.mgrid[0:h, 0:w].astype(np.float64)
  return x, y


def sample_bilinear(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
  """Samples img at pixel coordinates (sx, sy); taps outside the image read 0.

  `grid_sample(mode='bilinear', padding_mode='zeros', align_corners=True)` in pixel units.

  Args:
    img: float32 [C, H, W].
    sx: float [H', W'] x (column) coordinates.
    sy: float [H', W'] y (row) coordinates.

  Returns:
    float32 [C, H', W'].
  """
  c, h, w = img.shape
  # Clipping to [-1, n] keeps far-away samples at zero weight on real pixels; the zero
  # border (1 before, 2 after) makes every tap index valid.
  sx = np.clip(sx, -1.0, w)
  sy = np.clip(sy, -1.0, h)
  x0, y0 = np.floor(sx), np.floor(sy)
  fx = (sx - x0).astype(np.float32).ravel()
  fy = (sy - y0).astype(np.float32).ravel()
  padded = np.zeros((c, h + 3, w + 3), np.float32)
  padded[:, 1:h + 1, 1:w + 1] = img
  flat = padded.reshape(c, -1)
  i00 = ((y0.astype(np.intp) + 1) * (w + 3) + x0.astype(np.intp) + 1).ravel()
  a, b = flat.take(i00, axis=1), flat.take(i00 + 1, axis=1)
  top = a + fx * (b - a)
  a, b = flat.take(i00 + w + 3, axis=1), flat.take(i00 + w + 4, axis=1)
  bottom = a + fx * (b - a)
  return (top + fy * (bottom - top)).reshape(c, *sx.shape)


def _affine(img: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Output pixel p = (x, y) reads input a @ p + b (pixel coordinates)."""
  x, y = _grid(*img.shape[1:])
  return sample_bilinear(img, a[0, 0] * x + a[0, 1] * y + b[0], a[1, 0] * x + a[1, 1] * y + b[1])


def _centre(img: np.ndarray) -> np.ndarray:
  """(x, y) centre of the pixel grid, ((W - 1) / 2, (H - 1) / 2), as kornia's."""
  return np.array([(img.shape[2] - 1) / 2.0, (img.shape[1] - 1) / 2.0])


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
  """Rotation about the grid centre; counter-clockwise on screen for degrees > 0.

  Same convention as OpenCV's and kornia's `get_rotation_matrix2d`.
  """
  t = math.radians(degrees)
  inv = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
  c = _centre(img)
  return _affine(img, inv, c - inv @ c)


def _shift(img: np.ndarray, shift, axis: int) -> np.ndarray:
  """Moves content by `shift` pixels along `axis` (1: down, 2: right); linear, zero fill.

  Output position i reads input i - shift, one value per line across `axis` ([W] for
  axis 1, [H] for axis 2). Two taps instead of the generic sampler's four, because a
  shear moves along one axis only.
  """
  c, h, w = img.shape
  if axis == 2:
    n, stride = w, 1
    src = np.arange(w)[None, :] - np.reshape(shift, (-1, 1))
    padded = np.zeros((c, h, w + 3), np.float32)
    padded[:, :, 1:w + 1] = img
    line = np.arange(h)[:, None] * (w + 3)
  else:
    n, stride = h, w
    src = np.arange(h)[:, None] - np.reshape(shift, (1, -1))
    padded = np.zeros((c, h + 3, w), np.float32)
    padded[:, 1:h + 1] = img
    line = np.arange(w)[None, :]
  src = np.clip(np.broadcast_to(src, (h, w)), -1.0, n)
  i0 = np.floor(src)
  f = (src - i0).astype(np.float32).ravel()
  idx = ((i0.astype(np.intp) + 1) * stride + line).ravel()
  flat = padded.reshape(c, -1)
  lo, hi = flat.take(idx, axis=1), flat.take(idx + stride, axis=1)
  return (lo + f * (hi - lo)).reshape(c, h, w)


def shear_x(img: np.ndarray, degrees: float) -> np.ndarray:
  """kornia shear along x about the centre: output (x, y) reads (x + tan(d) (y - cy), y)."""
  s = math.tan(math.radians(degrees))
  rows = np.arange(img.shape[1]) - _centre(img)[1]
  return _shift(img, -s * rows, axis=2)


def shear_y(img: np.ndarray, degrees: float) -> np.ndarray:
  """kornia shear along y about the centre: output (x, y) reads (x, y + tan(d) (x - cx))."""
  s = math.tan(math.radians(degrees))
  cols = np.arange(img.shape[2]) - _centre(img)[0]
  return _shift(img, -s * cols, axis=1)


def _whole_shift(img: np.ndarray, k: int, axis: int) -> np.ndarray:
  """Content moved by an integer k pixels along `axis`, zero fill."""
  out = np.zeros_like(img)
  n = img.shape[axis]
  if abs(k) < n:
    dst = [slice(None)] * 3
    src = [slice(None)] * 3
    dst[axis] = slice(max(k, 0), n + min(k, 0))
    src[axis] = slice(max(-k, 0), n - max(k, 0))
    out[tuple(dst)] = img[tuple(src)]
  return out


def _translate(img: np.ndarray, pixels: float, axis: int) -> np.ndarray:
  """`_shift` by a scalar, with slices instead of gathers (3x faster)."""
  k = math.floor(pixels)
  f = np.float32(pixels - k)
  lo = _whole_shift(img, k, axis)  # Input i - k, weight 1 - f.
  hi = _whole_shift(img, k + 1, axis)  # Input i - k - 1, weight f.
  return lo + f * (hi - lo)


def translate_x(img: np.ndarray, pixels: float) -> np.ndarray:
  """Content moves right by `pixels` (output x reads input x - pixels)."""
  return _translate(img, pixels, axis=2)


def translate_y(img: np.ndarray, pixels: float) -> np.ndarray:
  """Content moves down by `pixels` (output y reads input y - pixels)."""
  return _translate(img, pixels, axis=1)
