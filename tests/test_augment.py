"""Tests for stssl_jax.data.augment: views, every RandAugment op, Cutout and resize."""

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageEnhance
from PIL import ImageOps
import pytest

from stssl_jax.data import augment

SIZE = 32
PAD = 4


def _photo(seed: int, size: int = SIZE) -> np.ndarray:
  """A smooth, photo-like uint8 [size, size, 3] image (gradients + blobs + noise)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  chans = []
  for c in range(3):
    a, b, p = rng.uniform(0.5, 3.0, 3)
    chans.append(0.5 + 0.3 * np.sin(a * 6 * x + p) * np.cos(b * 6 * y) + 0.1 * (c - 1) * x)
  img = np.stack(chans, -1) * 255 + rng.normal(0, 8, (size, size, 3))
  return np.clip(img, 0, 255).astype(np.uint8)


def _pil_ref(img: np.ndarray, fn) -> np.ndarray:
  return np.asarray(fn(Image.fromarray(img)))


def test_normalize_range_and_values():
  x = np.array([[[0, 255, 128]]], np.uint8)
  y = augment.normalize(x)
  assert y.dtype == np.float32
  np.testing.assert_allclose(y, [[[-1.0, 1.0, 128 / 255 * 2 - 1]]], atol=1e-7)
  z = augment.normalize(np.arange(256, dtype=np.uint8).reshape(1, -1, 1).repeat(3, -1))
  assert z.min() == -1.0 and z.max() == 1.0
  assert np.all(np.diff(z[0, :, 0]) > 0)


def test_resize_is_pil_bilinear_and_eval_view():
  img = _photo(0, 64)
  out = augment.resize(img, SIZE)
  assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
  ref = np.asarray(Image.fromarray(img).resize((SIZE, SIZE), Image.BILINEAR))
  np.testing.assert_array_equal(out, ref)
  # Antialiased: a 2x2 checkerboard at 64 averages to flat grey at 32.
  board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, -1)
  assert np.abs(augment.resize(board, SIZE).astype(int) - 128).max() <= 3
  ev = augment.eval_view(img, SIZE)
  assert ev.shape == (SIZE, SIZE, 3) and ev.dtype == np.float32
  np.testing.assert_array_equal(ev, augment.normalize(ref))


def test_weak_equals_numpy_reference():
  img = _photo(1)
  for seed in range(40):
    out = augment.weak(img, np.random.default_rng(seed), PAD)
    # Reference: the same draws, then np.pad(reflect) + crop + flips.
    u = np.random.default_rng(seed).random(4)
    oy, ox = (u[:2] * (2 * PAD + 1)).astype(int)
    ref = np.pad(img, ((PAD, PAD), (PAD, PAD), (0, 0)), mode='reflect')
    ref = ref[oy:oy + SIZE, ox:ox + SIZE]
    if u[2] < 0.5:
      ref = ref[:, ::-1]
    if u[3] < 0.5:
      ref = ref[::-1]
    np.testing.assert_array_equal(out, ref)


def test_weak_covers_all_offsets_and_flips():
  img = _photo(2)
  padded = np.pad(img, ((PAD, PAD), (PAD, PAD), (0, 0)), mode='reflect')
  views = {}
  for oy in range(2 * PAD + 1):
    for ox in range(2 * PAD + 1):
      crop = padded[oy:oy + SIZE, ox:ox + SIZE]
      for h in (0, 1):
        for v in (0, 1):
          c = crop[:, ::-1] if h else crop
          views[(c[::-1] if v else c).tobytes()] = (oy, ox, h, v)
  assert len(views) == (2 * PAD + 1) ** 2 * 4  # The photo has no symmetric crops.
  counts = {}
  for seed in range(5000):
    key = views[augment.weak(img, np.random.default_rng(seed), PAD).tobytes()]
    counts[key] = counts.get(key, 0) + 1
  assert len(counts) == len(views)
  # Uniform: expected 5000 / 324 = 15.4 per view.
  assert 2 <= min(counts.values()) and max(counts.values()) <= 35


def test_views_shapes_determinism_and_difference():
  img = _photo(3)
  for fn in (lambda r: augment.weak(img, r, PAD), lambda r: augment.strong(img, r, PAD)):
    a = fn(np.random.default_rng(7))
    b = fn(np.random.default_rng(7))
    c = fn(np.random.default_rng(8))
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    n = augment.normalize(a)
    assert n.dtype == np.float32 and -1.0 <= n.min() and n.max() <= 1.0
  # Weak and strong of the same record, drawn one after the other as the pipeline does.
  rng = np.random.default_rng(9)
  assert not np.array_equal(augment.weak(img, rng, PAD), augment.strong(img, rng, PAD))


def test_strong_always_has_cutout_and_uses_all_ops():
  img = _photo(4)
  fill = np.array(augment.CUTOUT_FILL, np.uint8)
  n_with_fill = 0
  used = set()
  names = list(augment.RANDAUGMENT_OPS)
  for seed in range(200):
    out = augment.strong(img, np.random.default_rng(seed), PAD)
    n_with_fill += np.all(out == fill, axis=-1).any()
    rng = np.random.default_rng(seed)
    rng.random(4)
    u = rng.random(9)
    used.update(names[int(k * 14)] for k in u[:3])
  assert n_with_fill == 200
  assert used == set(names)


def test_op_table():
  assert list(augment.RANDAUGMENT_OPS) == [
      'AutoContrast', 'Brightness', 'Color', 'Contrast', 'Equalize', 'Identity', 'Posterize',
      'Rotate', 'Sharpness', 'ShearX', 'ShearY', 'Solarize', 'TranslateX', 'TranslateY']
  ranges = {k: (lo, hi) for k, (_, lo, hi) in augment.RANDAUGMENT_OPS.items()}
  assert ranges['Brightness'] == ranges['Color'] == ranges['Contrast'] == (0.05, 0.95)
  assert ranges['Sharpness'] == (0.05, 0.95)
  assert ranges['Posterize'] == (4, 8) and ranges['Rotate'] == (-30, 30)
  assert ranges['ShearX'] == ranges['ShearY'] == (-0.3, 0.3)
  assert ranges['TranslateX'] == ranges['TranslateY'] == (-0.3, 0.3)
  assert ranges['Solarize'] == (0, 256)


def _op(name):
  return augment.RANDAUGMENT_OPS[name][0]


def test_hand_made_ops():
  img = np.zeros((8, 8, 3), np.uint8)
  img[..., 0] = np.arange(64).reshape(8, 8) * 4  # 0..252
  img[..., 1] = 200
  img[..., 2] = 10
  np.testing.assert_array_equal(_op('Identity')(img, 0.3), img)
  sol = _op('Solarize')(img, 100.0)
  np.testing.assert_array_equal(sol, np.where(img >= 100, 255 - img, img))
  assert sol[0, 0, 1] == 55 and sol[0, 0, 2] == 10
  post = _op('Posterize')(img, 5.7)  # int(5.7) = 5 bits kept.
  np.testing.assert_array_equal(post, img & 0b11111000)
  dark = _op('Brightness')(img, 0.5)
  assert np.all(dark <= img) and dark[0, 0, 1] == 100
  ac = _op('AutoContrast')(img, 0.0)
  assert ac[..., 0].min() == 0 and ac[..., 0].max() == 255
  np.testing.assert_array_equal(ac[..., 1:], img[..., 1:])  # Flat channels untouched.
  # TranslateX by v = 0.25 of width 8: output[x] = input[x + 2], black on the right.
  tx = _op('TranslateX')(img, 0.25)
  np.testing.assert_array_equal(tx[:, :6], img[:, 2:])
  assert np.all(tx[:, 6:] == 0)
  ty = _op('TranslateY')(img, -0.25)
  np.testing.assert_array_equal(ty[2:], img[:6])
  assert np.all(ty[:2] == 0)
  # Shear: row y moves by v * y; row 0 is fixed, row 4 shifts by 2 with v = 0.5.
  sx = _op('ShearX')(img, 0.5)
  np.testing.assert_array_equal(sx[0], img[0])
  np.testing.assert_array_equal(sx[4, :6], img[4, 2:])
  # Rotate by 90 degrees counter-clockwise equals np.rot90 on a square image.
  np.testing.assert_array_equal(_op('Rotate')(img, 90.0), np.rot90(img))


@pytest.mark.parametrize('seed', range(4))
def test_ops_match_pil_reference(seed):
  """Every op equals the USB original's PIL call on photo-like and skewed images."""
  rng = np.random.default_rng(seed)
  photo = _photo(10 + seed)
  skewed = rng.choice(rng.choice(256, 5, replace=False), (SIZE, SIZE, 3)).astype(np.uint8)
  flat = np.full((SIZE, SIZE, 3), 77, np.uint8)
  refs = {
      'AutoContrast': lambda p, v: ImageOps.autocontrast(p),
      'Brightness': lambda p, v: ImageEnhance.Brightness(p).enhance(v),
      'Color': lambda p, v: ImageEnhance.Color(p).enhance(v),
      'Contrast': lambda p, v: ImageEnhance.Contrast(p).enhance(v),
      'Equalize': lambda p, v: ImageOps.equalize(p),
      'Identity': lambda p, v: p,
      'Posterize': lambda p, v: ImageOps.posterize(p, max(1, int(v))),
      'Rotate': lambda p, v: p.rotate(v),
      'Sharpness': lambda p, v: ImageEnhance.Sharpness(p).enhance(v),
      'ShearX': lambda p, v: p.transform(p.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
      'ShearY': lambda p, v: p.transform(p.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
      'Solarize': lambda p, v: ImageOps.solarize(p, v),
      'TranslateX': lambda p, v: p.transform(p.size, Image.AFFINE,
                                             (1, 0, v * p.size[0], 0, 1, 0)),
      'TranslateY': lambda p, v: p.transform(p.size, Image.AFFINE,
                                             (1, 0, 0, 0, 1, v * p.size[1])),
  }
  assert set(refs) == set(augment.RANDAUGMENT_OPS)
  for name, (fn, lo, hi) in augment.RANDAUGMENT_OPS.items():
    for img in (photo, skewed, flat):
      for v in (lo, hi - 1e-9, lo + (hi - lo) * rng.random()):
        out = fn(img, v)
        assert out.dtype == np.uint8 and out.shape == img.shape, name
        np.testing.assert_array_equal(out, _pil_ref(img, lambda p: refs[name](p, v)),
                                      err_msg=f'{name} v={v}')


def test_cutout_matches_pil_rectangle():
  rng = np.random.default_rng(0)
  fill = np.array(augment.CUTOUT_FILL, np.uint8)
  for _ in range(300):
    img = _photo(int(rng.integers(100)))
    f, cx, cy = rng.uniform(0, 0.5), rng.uniform(0, SIZE), rng.uniform(0, SIZE)
    out = augment.cutout(img.copy(), f, cx, cy)
    # USB's CutoutAbs with the centre given.
    s = f * SIZE
    x0, y0 = int(max(0, cx - s / 2.0)), int(max(0, cy - s / 2.0))
    ref = Image.fromarray(img)
    ImageDraw.Draw(ref).rectangle((x0, y0, min(SIZE, x0 + s), min(SIZE, y0 + s)),
                                  augment.CUTOUT_FILL)
    np.testing.assert_array_equal(out, np.asarray(ref))
  # A hand-made box: f = 0.25 (side 8) centred at (16, 10) fills x 12..20, y 6..14.
  out = augment.cutout(np.zeros((SIZE, SIZE, 3), np.uint8), 0.25, 16.0, 10.0)
  box = np.all(out == fill, axis=-1)
  ys, xs = np.nonzero(box)
  assert (xs.min(), xs.max(), ys.min(), ys.max()) == (12, 20, 6, 14)
  assert box.sum() == 9 * 9
  assert not augment.cutout(np.zeros((4, 4, 3), np.uint8), 0.0, 1.0, 1.0).any()
