"""EuroSAT image transforms: resize, normalise, weak and strong views (METHOD 3.2-3.3).

All functions are plain NumPy + PIL and deterministic given a `np.random.Generator`, so
that the data pipeline can seed them per record and per epoch position.

- `resize` is done once per record read; weak and strong views start from its output.
- `weak`: reflect-pad, random crop, horizontal and vertical flips. Done as two NumPy
  gathers with precomputed reflect indices instead of padding a copy of the image.
- `strong`: `weak`, then USB RandAugment(n, 5) (the magnitude is ignored: every op draws
  its value uniformly from its range), then Cutout, which is always applied.

The RandAugment ops (`RANDAUGMENT_OPS`) take and return uint8 arrays and give the same
pixels as the USB original's PIL calls (ImageOps, ImageEnhance, `Image.rotate`,
`Image.transform` affine; nearest sampling, black fill). Cutout is done in NumPy but fills
the same pixels as USB's `ImageDraw.rectangle` (float corners truncated, both inclusive).
Random draws use NumPy instead of Python's `random`, so views match USB in distribution,
not sample by sample.
"""

import functools
from typing import Callable

import numpy as np
from PIL import Image
from PIL import ImageEnhance

CUTOUT_FILL = (125, 123, 114)  # USB's Cutout colour (RGB).
CUTOUT_MAX_FRACTION = 0.5  # Cutout side s = f * image side, f ~ U(0, 0.5).


def _to_pil(img: np.ndarray) -> Image.Image:
  """uint8 [H, W, 3] -> RGB PIL image; cheaper than Image.fromarray (~2 us of 7)."""
  return Image.frombuffer('RGB', (img.shape[1], img.shape[0]), np.ascontiguousarray(img),
                          'raw', 'RGB', 0, 1)


def _from_pil(pil: Image.Image) -> np.ndarray:
  """RGB PIL image -> read-only uint8 [H, W, 3]; ~2x faster than np.asarray(pil)."""
  return np.frombuffer(pil.tobytes(), np.uint8).reshape(pil.size[1], pil.size[0], 3)


def resize(img: np.ndarray, size: int) -> np.ndarray:
  """Resizes an image with PIL bilinear (antialiased when downscaling).

  Args:
    img: uint8 [H, W, 3].
    size: output side S.

  Returns:
    uint8 [S, S, 3], read-only (the input itself when it already has that size).
  """
  if img.shape[0] == size and img.shape[1] == size:
    return img
  return _from_pil(_to_pil(img).resize((size, size), Image.BILINEAR))


def normalize(img: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels to float32 in [-1, 1]: `(x / 255 - 0.5) / 0.5`.

  Args:
    img: uint8 [..., 3].

  Returns:
    float32 with the same shape.
  """
  # Same float32 operations as torchvision's ToTensor + Normalize(0.5, 0.5); * 2 is
  # bit-identical to / 0.5.
  return (img.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) * np.float32(2.0)


@functools.lru_cache(maxsize=None)
def _reflect_indices(size: int, padding: int) -> np.ndarray:
  """Indices into a side of length `size` for positions -padding .. size+padding-1.

  Reflect padding (no edge repeat, like `np.pad(mode='reflect')`), so that cropping the
  padded image equals gathering the original at these indices.

  Returns:
    int64 [size + 2 * padding] (cached: read only).
  """
  idx = np.abs(np.arange(-padding, size + padding))
  return np.where(idx >= size, 2 * (size - 1) - idx, idx)


def crop_flip_indices(size: int, padding: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
  """(rows [S], cols [S]) of the weak view's reflect-pad, random crop and h/v flips.

  One `rng.random(4)` draw: crop offsets (y, x) in 0..2P, then the flips (h, v) with p = 0.5.
  A flip of the crop is a reversed index vector, so the view is just two gathers.
  """
  idx = _reflect_indices(size, padding)
  u = rng.random(4)
  oy, ox = (u[:2] * (2 * padding + 1)).astype(np.intp)
  rows, cols = idx[oy:oy + size], idx[ox:ox + size]
  if u[2] < 0.5:
    cols = cols[::-1]
  if u[3] < 0.5:
    rows = rows[::-1]
  return rows, cols


def weak(img: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
  """Weak view: reflect-pad, random crop of the original size, random h/v flips.

  Args:
    img: uint8 [S, S, 3].
    rng: source of the crop offsets (y, x) and the flips (h, v): one `random(4)` draw.
    padding: reflect padding P in pixels on every side (needs P < S).

  Returns:
    uint8 [S, S, 3], a new array.
  """
  rows, cols = crop_flip_indices(img.shape[0], padding, rng)
  return img.take(rows, axis=0).take(cols, axis=1)


# ---- RandAugment ops: (uint8 [H, W, 3], value) -> uint8 [H, W, 3], as in USB ---------
# The lookup-table ops (AutoContrast, Equalize, Posterize, Solarize) and the blends
# (Brightness, Color, Contrast) are NumPy versions of PIL's ImageOps / ImageEnhance with
# identical output (tested against PIL), because `Image.point` with a Python list costs
# ~40 us and ImageStat ~30 us per call. Sharpness and the geometric ops run PIL itself
# on the array (plus ~7 us of conversions each).


_CHANNEL_OFFSETS = np.arange(3, dtype=np.intp) * 256
_IDENTITY_LUT = np.arange(256)


def _apply_channel_luts(
    img: np.ndarray, luts: np.ndarray, flat_index: np.ndarray | None = None
) -> np.ndarray:
  """out[..., c] = luts[c, img[..., c]]; luts [3, 256] with values in 0..255.

  `flat_index` is `img + _CHANNEL_OFFSETS` when the caller already has it.
  """
  if flat_index is None:
    flat_index = img + _CHANNEL_OFFSETS
  return luts.astype(np.uint8).ravel().take(flat_index)


def auto_contrast(img: np.ndarray, _: float) -> np.ndarray:
  """`ImageOps.autocontrast`: per channel, stretch [min, max] to [0, 255]."""
  # Channel-major copy: reducing over a strided [N, 3] axis is ~7x slower.
  channels = np.ascontiguousarray(img.reshape(-1, 3).T)
  lo = channels.min(axis=1).astype(np.float64)[:, None]
  hi = channels.max(axis=1).astype(np.float64)[:, None]
  # PIL: scale = 255 / (hi - lo), offset = -lo * scale, lut = clip(int(ix * scale + offset));
  # the same float64 operations in the same order give the same table.
  with np.errstate(divide='ignore', invalid='ignore'):
    scale = 255.0 / (hi - lo)
    offset = -lo * scale
    luts = np.clip(np.trunc(_IDENTITY_LUT * scale + offset), 0, 255)
  luts = np.where(hi > lo, luts, _IDENTITY_LUT)
  return _apply_channel_luts(img, luts)


def equalize(img: np.ndarray, _: float) -> np.ndarray:
  """`ImageOps.equalize`: per-channel histogram equalisation with PIL's integer maths."""
  flat_index = img + _CHANNEL_OFFSETS
  hist = np.bincount(flat_index.ravel(), minlength=768).reshape(3, 256)
  present = hist > 0
  last = 255 - present[:, ::-1].argmax(axis=1)
  # PIL: step = (sum(hist) - hist[last nonzero]) // 255, identity when step is 0 or only
  # one value is present; else lut[i] = (step // 2 + sum(hist[:i])) // step, clipped.
  step = (hist.sum(axis=1) - hist[np.arange(3), last]) // 255
  valid = (step > 0) & (present.sum(axis=1) > 1)
  step = np.where(valid, step, 1)[:, None]
  before = np.cumsum(hist, axis=1) - hist
  luts = np.minimum((step // 2 + before) // step, 255)
  luts = np.where(valid[:, None], luts, _IDENTITY_LUT)
  return _apply_channel_luts(img, luts, flat_index)


def identity(img: np.ndarray, _: float) -> np.ndarray:
  return img


def posterize(img: np.ndarray, v: float) -> np.ndarray:
  """`ImageOps.posterize(int(v))`: keeps the top int(v) bits of every channel."""
  bits = max(1, int(v))
  return img & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(img: np.ndarray, v: float) -> np.ndarray:
  """`ImageOps.solarize(v)`: inverts every channel value >= v."""
  return np.where(img >= v, 255 - img, img)


def _blend(degenerate: np.ndarray, img: np.ndarray, factor: float) -> np.ndarray:
  """`Image.blend(degenerate, img, factor)`: clip(d + f * (i - d)) in float32, truncated.

  This is what every ImageEnhance class returns, with its own degenerate image.
  """
  d = np.asarray(degenerate, np.float32)
  out = d + np.float32(factor) * (img.astype(np.float32) - d)
  return np.clip(out, 0, 255).astype(np.uint8)


def _grey(img: np.ndarray) -> np.ndarray:
  """PIL's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point): uint8 [H, W]."""
  c = img.astype(np.uint32)
  return ((c[..., 0] * 19595 + c[..., 1] * 38470 + c[..., 2] * 7471 + 0x8000) >> 16
          ).astype(np.uint8)


def brightness(img: np.ndarray, v: float) -> np.ndarray:
  """`ImageEnhance.Brightness(v)`: blend with black; v < 1 darkens."""
  return _blend(np.float32(0), img, v)


def color(img: np.ndarray, v: float) -> np.ndarray:
  """`ImageEnhance.Color(v)`: blend with the grey (L) image; v < 1 desaturates."""
  return _blend(_grey(img)[..., None], img, v)


def contrast(img: np.ndarray, v: float) -> np.ndarray:
  """`ImageEnhance.Contrast(v)`: blend with the rounded mean grey level; v < 1 flattens."""
  grey = _grey(img)
  mean = int(np.bincount(grey.ravel(), minlength=256) @ _IDENTITY_LUT / grey.size + 0.5)
  return _blend(np.float32(mean), img, v)


def rotate(img: np.ndarray, v: float) -> np.ndarray:
  """`Image.rotate(v)`: counter-clockwise about the centre, nearest, black fill."""
  return _from_pil(_to_pil(img).rotate(v))


def sharpness(img: np.ndarray, v: float) -> np.ndarray:
  """`ImageEnhance.Sharpness(v)`: blend with PIL's smoothed image; v < 1 blurs."""
  return _from_pil(ImageEnhance.Sharpness(_to_pil(img)).enhance(v))


def _affine(img: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
  """Output pixel (x, y) reads input (a x + b y + c, d x + e y + f); nearest, black fill."""
  pil = _to_pil(img)
  return _from_pil(pil.transform(pil.size, Image.AFFINE, coeffs))


def shear_x(img: np.ndarray, v: float) -> np.ndarray:
  """Output pixel (x, y) reads input (x + v * y, y)."""
  return _affine(img, (1, v, 0, 0, 1, 0))


def shear_y(img: np.ndarray, v: float) -> np.ndarray:
  """Output pixel (x, y) reads input (x, y + v * x)."""
  return _affine(img, (1, 0, 0, v, 1, 0))


def translate_x(img: np.ndarray, v: float) -> np.ndarray:
  """Output pixel (x, y) reads input (x + v * W, y): content moves left for v > 0."""
  return _affine(img, (1, 0, v * img.shape[1], 0, 1, 0))


def translate_y(img: np.ndarray, v: float) -> np.ndarray:
  """Output pixel (x, y) reads input (x, y + v * H): content moves up for v > 0."""
  return _affine(img, (1, 0, 0, 0, 1, v * img.shape[0]))


Op = Callable[[np.ndarray, float], np.ndarray]

# Name -> (op, low, high); the value is drawn from U(low, high) (METHOD 3.3). The order is
# USB's, so that an op index means the same op as there.
RANDAUGMENT_OPS: dict[str, tuple[Op, float, float]] = {
    'AutoContrast': (auto_contrast, 0.0, 1.0),
    'Brightness': (brightness, 0.05, 0.95),
    'Color': (color, 0.05, 0.95),
    'Contrast': (contrast, 0.05, 0.95),
    'Equalize': (equalize, 0.0, 1.0),
    'Identity': (identity, 0.0, 1.0),
    'Posterize': (posterize, 4.0, 8.0),
    'Rotate': (rotate, -30.0, 30.0),
    'Sharpness': (sharpness, 0.05, 0.95),
    'ShearX': (shear_x, -0.3, 0.3),
    'ShearY': (shear_y, -0.3, 0.3),
    'Solarize': (solarize, 0.0, 256.0),
    'TranslateX': (translate_x, -0.3, 0.3),
    'TranslateY': (translate_y, -0.3, 0.3),
}
_OP_LIST = tuple(RANDAUGMENT_OPS.values())


def cutout(img: np.ndarray, fraction: float, cx: float, cy: float) -> np.ndarray:
  """Fills a square of side `fraction * W` centred near (cx, cy) with `CUTOUT_FILL`, in place.

  The box follows USB: x0 = int(max(0, cx - s/2)), x1 = min(W, x0 + s), and the pixels
  x0..int(x1) (both inclusive, clipped to the image) are filled, likewise for y. So even a
  tiny f > 0 fills one pixel; f == 0 fills nothing (USB returns the image unchanged).

  Args:
    img: uint8 [H, W, 3], modified in place.
    fraction: f in [0, 0.5].
    cx: box centre x in [0, W).
    cy: box centre y in [0, H).

  Returns:
    `img`.
  """
  if fraction <= 0.0:
    return img
  h, w = img.shape[:2]
  s = fraction * w
  x0 = int(max(0.0, cx - s / 2.0))
  y0 = int(max(0.0, cy - s / 2.0))
  x1 = int(min(w, x0 + s))
  y1 = int(min(h, y0 + s))
  img[y0:y1 + 1, x0:x1 + 1] = CUTOUT_FILL
  return img


def strong(
    img: np.ndarray, rng: np.random.Generator, padding: int, n_ops: int = 3
) -> np.ndarray:
  """Strong view: `weak`, then RandAugment(n_ops) with replacement, then Cutout.

  Args:
    img: uint8 [S, S, 3].
    rng: source of every random choice: weak's `random(4)`, then one
      `random(2 * n_ops + 3)` for op choices, op values, Cutout fraction and centre.
    padding: reflect padding of the weak part.
    n_ops: RandAugment ops per image (3 in the released runs).

  Returns:
    uint8 [S, S, 3], a new array.
  """
  out = weak(img, rng, padding)
  # One draw for the rest: n op choices, n op values, then Cutout's f, cx and cy.
  u = rng.random(2 * n_ops + 3)
  for k in range(n_ops):
    fn, low, high = _OP_LIST[int(u[k] * len(_OP_LIST))]
    out = fn(out, low + (high - low) * u[n_ops + k])
  # PIL-based ops return read-only views of PIL buffers; Cutout writes in place.
  if not out.flags.writeable:
    out = out.copy()
  h, w = out.shape[:2]
  f, cx, cy = u[2 * n_ops:]
  return cutout(out, CUTOUT_MAX_FRACTION * f, cx * w, cy * h)


def eval_view(img: np.ndarray, size: int) -> np.ndarray:
  """Evaluation transform: resize, then normalise.

  Args:
    img: uint8 [H, W, 3].
    size: output side S.

  Returns:
    float32 [S, S, 3] in [-1, 1].
  """
  return normalize(resize(img, size))
