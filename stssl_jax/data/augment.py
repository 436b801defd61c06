"""EuroSAT image transforms: resize, normalise, weak and strong views (METHOD 3.2-3.3).

All functions are plain NumPy + PIL and deterministic given a `np.random.Generator`, so
that the data pipeline can seed them per record and per epoch position.

- `resize` is done once per record read; weak and strong views start from its output.
- `weak`: reflect-pad, random crop, horizontal and vertical flips. Done as one NumPy
  gather with precomputed reflect indices instead of padding a copy of the image.
- `strong`: `weak`, then USB RandAugment(n, 5) (the magnitude is ignored: every op draws
  its value uniformly from its range), then Cutout, which is always applied.

The RandAugment ops act on a PIL image exactly like the USB original (ImageOps,
ImageEnhance, `Image.transform` affine with nearest sampling and black fill); their table
is `RANDAUGMENT_OPS`. Cutout is done in NumPy but fills the same pixels as USB's
`ImageDraw.rectangle` (float corners truncated, both corners inclusive).
"""

import functools
from typing import Callable

import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps

CUTOUT_FILL = (125, 123, 114)  # USB's Cutout colour (RGB).
CUTOUT_MAX_FRACTION = 0.5  # Cutout side s = f * image side, f ~ U(0, 0.5).


def resize(img: np.ndarray, size: int) -> np.ndarray:
  """Resizes an image with PIL bilinear (antialiased when downscaling).

  Args:
    img: uint8 [H, W, 3].
    size: output side S.

  Returns:
    uint8 [S, S, 3] (the input itself when it already has that size).
  """
  if img.shape[0] == size and img.shape[1] == size:
    return img
  return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def normalize(img: np.ndarray) -> np.ndarray:
  """Maps uint8 pixels to float32 in [-1, 1]: `(x / 255 - 0.5) / 0.5`.

  Args:
    img: uint8 [..., 3].

  Returns:
    float32 with the same shape.
  """
  return img.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)


@functools.lru_cache(maxsize=None)
def _reflect_indices(size: int, padding: int) -> np.ndarray:
  """Indices into a side of length `size` for positions -padding .. size+padding-1.

  Reflect padding (no edge repeat, like `np.pad(mode='reflect')`), so that cropping the
  padded image equals gathering the original at these indices.

  Returns:
    int64 [size + 2 * padding].
  """
  idx = np.abs(np.arange(-padding, size + padding))
  return np.where(idx >= size, 2 * (size - 1) - idx, idx)


def weak(img: np.ndarray, rng: np.random.Generator, padding: int) -> np.ndarray:
  """Weak view: reflect-pad, random crop of the original size, random h/v flips.

  Args:
    img: uint8 [S, S, 3].
    rng: source of the crop offsets and the two flips (4 draws).
    padding: reflect padding P in pixels on every side (needs P < S).

  Returns:
    uint8 [S, S, 3], a new array.
  """
  size = img.shape[0]
  idx = _reflect_indices(size, padding)
  oy, ox = rng.integers(0, 2 * padding + 1, size=2)
  hflip, vflip = rng.random(2) < 0.5
  rows = idx[oy:oy + size]
  cols = idx[ox:ox + size]
  # Flipping the crop is reversing its index vectors, so the whole view is one gather.
  if vflip:
    rows = rows[::-1]
  if hflip:
    cols = cols[::-1]
  return img[rows[:, None], cols[None, :]]


# ---- RandAugment ops: (PIL image, value) -> PIL image, as in USB ------------------------


def auto_contrast(img: Image.Image, _: float) -> Image.Image:
  return ImageOps.autocontrast(img)


def brightness(img: Image.Image, v: float) -> Image.Image:
  return ImageEnhance.Brightness(img).enhance(v)


def color(img: Image.Image, v: float) -> Image.Image:
  return ImageEnhance.Color(img).enhance(v)


def contrast(img: Image.Image, v: float) -> Image.Image:
  return ImageEnhance.Contrast(img).enhance(v)


def equalize(img: Image.Image, _: float) -> Image.Image:
  return ImageOps.equalize(img)


def identity(img: Image.Image, _: float) -> Image.Image:
  return img


def posterize(img: Image.Image, v: float) -> Image.Image:
  return ImageOps.posterize(img, max(1, int(v)))


def rotate(img: Image.Image, v: float) -> Image.Image:
  """Counter-clockwise by `v` degrees about the centre, nearest, black fill."""
  return img.rotate(v)


def sharpness(img: Image.Image, v: float) -> Image.Image:
  return ImageEnhance.Sharpness(img).enhance(v)


def shear_x(img: Image.Image, v: float) -> Image.Image:
  """Output pixel (x, y) reads input (x + v * y, y)."""
  return img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0))


def shear_y(img: Image.Image, v: float) -> Image.Image:
  """Output pixel (x, y) reads input (x, y + v * x)."""
  return img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0))


def solarize(img: Image.Image, v: float) -> Image.Image:
  """Inverts every channel value >= v."""
  return ImageOps.solarize(img, v)


def translate_x(img: Image.Image, v: float) -> Image.Image:
  """Output pixel (x, y) reads input (x + v * W, y): content moves left for v > 0."""
  return img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0))


def translate_y(img: Image.Image, v: float) -> Image.Image:
  """Output pixel (x, y) reads input (x, y + v * H): content moves up for v > 0."""
  return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1]))


Op = Callable[[Image.Image, float], Image.Image]

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
    rng: source of every random choice (weak's 4 draws, then op indices, op values and
      the Cutout fraction and centre).
    padding: reflect padding of the weak part.
    n_ops: RandAugment ops per image (3 in the released runs).

  Returns:
    uint8 [S, S, 3], a new array.
  """
  pil = Image.fromarray(weak(img, rng, padding))
  ops = rng.integers(0, len(_OP_LIST), size=n_ops)
  # One call draws every uniform value: n op values, then cutout f, cx, cy.
  u = rng.random(n_ops + 3)
  for k, op_index in enumerate(ops):
    fn, low, high = _OP_LIST[op_index]
    pil = fn(pil, low + (high - low) * u[k])
  # np.array (not asarray) gives a writable copy for the in-place Cutout.
  out = np.array(pil)
  h, w = out.shape[:2]
  return cutout(out, CUTOUT_MAX_FRACTION * u[n_ops], u[n_ops + 1] * w, u[n_ops + 2] * h)


def eval_view(img: np.ndarray, size: int) -> np.ndarray:
  """Evaluation transform: resize, then normalise.

  Args:
    img: uint8 [H, W, 3].
    size: output side S.

  Returns:
    float32 [S, S, 3] in [-1, 1].
  """
  return normalize(resize(img, size))
