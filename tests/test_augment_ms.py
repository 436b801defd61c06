"""Tests for stssl_jax.data.augment_ms and kornia_ops: scaling, resize, views, every op."""

import colorsys
import math

import numpy as np
from PIL import Image
from PIL import ImageOps
import pytest

from stssl_jax.data import augment_ms
from stssl_jax.data import kornia_ops as ops

# METHOD 3.4: (mu, sigma) of B04, B03, B02 in raw digital numbers.
MEAN = (590.2357, 614.2168, 429.9430)
STD = (675.8875, 582.8795, 572.4164)
K072 = augment_ms.POLICIES['kornia_0_7_2']


def _bands(seed, c, size=120):
  """uint16 [size, size, c] with realistic values (smooth field + noise, 0..3000)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / size
  field = np.stack([np.sin((b + 1) * 3 * x) * np.cos(2 * y + b) for b in range(c)], -1)
  return np.clip(900 + 800 * field + rng.normal(0, 150, field.shape), 0, 3000).astype(np.uint16)


def _stats(c):
  return np.resize(MEAN, c), np.resize(STD, c)


def _prepared(seed, c, size=128):
  return augment_ms.prepare(_bands(seed, c), *_stats(c), size)


def _random_image(seed, c, size=16):
  """float32 [c, size, size] in [0.1, 0.9]."""
  rng = np.random.default_rng(seed)
  return rng.uniform(0.1, 0.9, (c, size, size)).astype(np.float32)


def test_scale_maps_method_clip_range_to_unit_interval():
  lo = [m - 2 * s for m, s in zip(MEAN, STD)]
  hi = [m + 2 * s for m, s in zip(MEAN, STD)]
  np.testing.assert_allclose(lo, [-761.5393, -551.5422, -714.8898], atol=1e-3)  # METHOD 3.4.
  # Rows 0-39 at mu - 2 sigma, 40-79 at mu, 80-119 at mu + 2 sigma (float input).
  x = np.repeat(np.array([lo, MEAN, hi])[:, None, :], 40, axis=0).repeat(120, axis=1)
  v = augment_ms.scale(x, MEAN, STD)  # [120, 120, 3] -> [3, 120, 120].
  assert v.shape == (3, 120, 120) and v.dtype == np.float32
  np.testing.assert_allclose(v[:, :40], 0.0, atol=1e-6)
  np.testing.assert_allclose(v[:, 40:80], 0.5, atol=1e-6)
  np.testing.assert_allclose(v[:, 80:], 1.0, atol=1e-6)
  raw = np.zeros((120, 120, 3), np.uint16)
  raw[0, 0] = (0, 1000, 3000)
  u = augment_ms.scale(raw, MEAN, STD)
  np.testing.assert_allclose(u[:, 0, 0], [761.5393 / (4 * STD[0]),
                                           (1000 + 551.5422) / (4 * STD[1]), 1.0], atol=1e-6)


def test_scale_resizes_to_120_first_and_checks_bands():
  small = np.full((60, 60, 3), 590, np.uint16)
  v = augment_ms.scale(small, MEAN, STD)
  assert v.shape == (3, 120, 120)
  with pytest.raises(ValueError, match='3 band means'):
    augment_ms.scale(np.zeros((120, 120, 12), np.uint16), MEAN, STD)


def _resize_reference(img, size):
  """Naive per-pixel bilinear, align_corners=True: input coord i * (n - 1) / (size - 1)."""
  c, h, w = img.shape
  out = np.zeros((c, size, size))
  for i in range(size):
    for j in range(size):
      y, x = i * (h - 1) / (size - 1), j * (w - 1) / (size - 1)
      y0, x0 = min(int(y), h - 2), min(int(x), w - 2)
      fy, fx = y - y0, x - x0
      out[:, i, j] = ((1 - fy) * (1 - fx) * img[:, y0, x0] + (1 - fy) * fx * img[:, y0, x0 + 1]
                      + fy * (1 - fx) * img[:, y0 + 1, x0] + fy * fx * img[:, y0 + 1, x0 + 1])
  return out


@pytest.mark.parametrize('h,w,size', [(5, 7, 9), (12, 12, 13), (7, 5, 4)])
def test_resize_bilinear_align_corners_matches_reference(h, w, size):
  img = np.random.default_rng(h).random((2, h, w)).astype(np.float32)
  out = augment_ms.resize_bilinear(img, size)
  assert out.shape == (2, size, size) and out.dtype == np.float32
  np.testing.assert_allclose(out, _resize_reference(img, size), atol=1e-6)
  if h == w:  # Corners are copied exactly.
    for a, b in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
      assert np.array_equal(out[:, a, b], img[:, a, b])


def test_resize_120_to_128_corners_and_constant():
  img = _bands(0, 3).astype(np.float32).transpose(2, 0, 1)
  out = augment_ms.resize_bilinear(img, 128)
  for a, b in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
    np.testing.assert_array_equal(out[:, a, b], img[:, a, b])
  np.testing.assert_allclose(out[:, ::127, ::127], _resize_reference(img, 128)[:, ::127, ::127],
                             rtol=1e-6)
  flat = augment_ms.resize_bilinear(np.full((1, 120, 120), 0.3, np.float32), 128)
  np.testing.assert_allclose(flat, 0.3, atol=1e-7)


@pytest.mark.parametrize('c', [3, 12])
def test_prepare_normalize_and_layout(c):
  v = _prepared(0, c)
  assert v.shape == (c, 128, 128) and v.dtype == np.float16 and not v.flags.writeable
  assert 0.0 <= v.min() and v.max() <= 1.0
  ref = augment_ms.resize_bilinear(augment_ms.scale(_bands(0, c), *_stats(c)), 128)
  np.testing.assert_allclose(v, ref, atol=2.5e-4)  # float16 rounding only.
  n = augment_ms.normalize(np.array([0.0, 0.25, 0.5, 1.0], np.float16))
  assert n.dtype == np.float32
  np.testing.assert_array_equal(n, [-2.0, -1.0, 0.0, 2.0])
  hwc = augment_ms.to_hwc(v)
  assert hwc.shape == (128, 128, c) and hwc.flags.c_contiguous
  np.testing.assert_array_equal(hwc[5, 7], v[:, 5, 7])


def test_weak_equals_numpy_reference():
  v = _prepared(1, 3, size=32)
  for seed in range(20):
    out = augment_ms.weak(v, np.random.default_rng(seed), padding=4, size=32)
    u = np.random.default_rng(seed).random(4)
    oy, ox = (u[:2] * 9).astype(int)
    ref = np.pad(v.astype(np.float32), ((0, 0), (4, 4), (4, 4)), mode='reflect')
    ref = ref[:, oy:oy + 32, ox:ox + 32]
    if u[2] < 0.5:
      ref = ref[:, :, ::-1]
    if u[3] < 0.5:
      ref = ref[:, ::-1]
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize('c', [3, 12])
def test_views_shapes_ranges_determinism(c):
  v = _prepared(2, c)
  for seed in range(6):
    w = augment_ms.weak(v, np.random.default_rng(seed))
    s = augment_ms.strong(v, np.random.default_rng(seed))
    for x in (w, s):
      assert x.shape == (c, 128, 128) and x.dtype == np.float32
      assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(s, augment_ms.strong(v, np.random.default_rng(seed)))
    # Same first draws, so the strong view is RandAugment applied to this very weak view.
    assert not np.array_equal(w, s)
  assert not np.array_equal(augment_ms.strong(v, np.random.default_rng(0)),
                            augment_ms.strong(v, np.random.default_rng(1)))


def test_policy_magnitudes_match_method():
  mags = dict(zip([op[0] for op in K072.ops], K072.magnitudes()))
  want = {'rotate': 5.0, 'posterize': 4 / 6, 'solarize': 1 / 6, 'solarize_add': 0.43 / 6,
          'color': 0.4, 'contrast': 0.4, 'brightness': 0.4, 'sharpness': 0.4,
          'shear_x': 0.05, 'shear_y': 0.05, 'translate_x': 0.1 / 6, 'translate_y': 0.1 / 6}
  for name, value in want.items():
    assert mags[name] == pytest.approx(value), name
  assert len(K072.ops) == 15 and K072.replace
  names_070 = [op[0] for op in augment_ms.POLICIES['kornia_0_7_0'].ops]
  assert names_070.count('translate_x') == 2 and 'translate_y' not in names_070
  clean = augment_ms.make_policy(posterize_quirk=False)
  assert int(dict(zip([o[0] for o in clean.ops], clean.magnitudes()))['posterize']) == 4
  with pytest.raises(ValueError, match='kornia_0_7_2'):
    augment_ms.make_policy('kornia_9')


def test_draws_with_and_without_replacement():
  def dup(policy):
    return [len(set(augment_ms.draw_ops(np.random.default_rng(s), policy)[0])) < 3
            for s in range(200)]
  assert 20 < sum(dup(K072)) < 60  # P(duplicate among 3 of 15) = 0.19.
  assert not any(dup(augment_ms.POLICIES['kornia_0_7_3']))
  idx = np.concatenate([augment_ms.draw_ops(np.random.default_rng(s))[0] for s in range(200)])
  assert set(idx) == set(range(15))


def _apply(img, name, u=0.7, policy=K072):
  mags = dict(zip([op[0] for op in policy.ops], policy.magnitudes()))
  return augment_ms.apply_op(img, name, mags[name], u, policy)


def test_intensity_ops_do_what_method_says():
  x = np.array([[[0.0, 0.1, 0.3, 0.45, 0.5, 0.9, 0.98, 1.0]]], np.float32)  # [1, 1, 8].
  np.testing.assert_array_equal(_apply(x, 'posterize'), 0.0)  # 0 bits: all black.
  np.testing.assert_allclose(ops.posterize(x, 4), [[[0, 16, 64, 112, 112, 224, 240, 240]]]
                             / np.float32(255), atol=1e-7)  # trunc(255 x) & 0xF0.
  np.testing.assert_allclose(_apply(x, 'brightness'), [[[0, 0, 0, 0, 0, 0.3, 0.38, 0.4]]],
                             atol=1e-6)  # -0.6, clipped at 0.
  np.testing.assert_allclose(_apply(x, 'contrast'), 0.4 * x, atol=1e-7)
  np.testing.assert_allclose(_apply(x, 'solarize'), [[[0, 0.1, 0.7, 0.55, 0.5, 0.1, 0.02, 0]]],
                             atol=1e-6)  # Values >= 1/6 inverted.
  np.testing.assert_allclose(_apply(x, 'invert'), 1 - x)
  fixed = augment_ms.make_policy(solarize_add_threshold=0.5)
  add = 0.43 / 6
  np.testing.assert_allclose(_apply(x, 'solarize_add', policy=fixed),
                             [[[add, 0.1 + add, 0.3 + add, 1 - 0.45 - add, 1 - 0.5 - add,
                                1 - 0.9 - add, 0.0, 0.0]]], atol=1e-6)
  # Drawn threshold (kornia 0.7): u = 0.2 inverts from 0.2 on.
  np.testing.assert_allclose(_apply(x, 'solarize_add', u=0.2)[0, 0, :3],
                             [add, 0.1 + add, 1 - 0.3 - add], atol=1e-6)


def test_auto_contrast_and_equalize():
  x = np.stack([np.linspace(0.2, 0.6, 64), np.full(64, 0.3), np.linspace(0, 1, 64)])
  out = _apply(x.reshape(3, 8, 8).astype(np.float32), 'auto_contrast').reshape(3, 64)
  np.testing.assert_allclose(out[0], np.linspace(0, 1, 64), atol=1e-5)
  np.testing.assert_array_equal(out[1], 0.0)  # A constant band goes to 0 (kornia's eps).
  # Two-valued band, 128x128: step = 8192 // 255 = 32, lut = (before + 16) // 32.
  two = np.where(np.arange(128 * 128) < 8192, 0.2, 0.6).astype(np.float32).reshape(1, 128, 128)
  np.testing.assert_array_equal(np.unique(ops.equalize(two)), [0.0, 1.0])
  # On uint8-exact values kornia's equalize is PIL's, band by band (any number of bands).
  rng = np.random.default_rng(0)
  k = np.clip(rng.normal(90, 30, (12, 40, 40)), 0, 255).astype(np.uint8)
  out = _apply(k.astype(np.float32) / np.float32(255), 'equalize')
  for b in range(12):
    ref = np.asarray(ImageOps.equalize(Image.fromarray(k[b])))
    np.testing.assert_array_equal(np.rint(out[b] * 255).astype(np.uint8), ref)


def test_saturation_is_kornia_hsv_and_generalises_to_bands():
  px = np.array([0.8, 0.4, 0.2], np.float32).reshape(3, 1, 1)
  for factor in (0.4, 2.0):
    h, s, v = colorsys.rgb_to_hsv(0.8, 0.4, 0.2)
    want = colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v)
    np.testing.assert_allclose(ops.saturation(px, factor).ravel(), want, atol=1e-6)
  np.testing.assert_allclose(_apply(px, 'color').ravel(), [0.8, 0.64, 0.56], atol=1e-6)
  bands = _random_image(0, 12, 4)
  vmax = bands.max(axis=0)
  np.testing.assert_allclose(_apply(bands, 'color'), vmax - 0.4 * (vmax - bands), atol=1e-6)
  grey = 0.299 * 0.8 + 0.587 * 0.4 + 0.114 * 0.2
  np.testing.assert_allclose(ops.saturation(px, 0.4, 'luma').ravel(),
                             grey + 0.4 * (px.ravel() - grey), atol=1e-6)


def test_sharpness_on_an_impulse():
  x = np.zeros((2, 5, 5), np.float32)
  x[:, 2, 2] = 1.0
  out = _apply(x, 'sharpness')
  np.testing.assert_allclose(out[:, 2, 2], 5 / 13 + 0.4 * (1 - 5 / 13), atol=1e-6)
  np.testing.assert_allclose(out[:, 1, 1], 0.6 / 13, atol=1e-6)
  np.testing.assert_array_equal(out[:, 0], 0.0)  # The border keeps the input.
  flat = np.full((1, 6, 6), 0.37, np.float32)
  np.testing.assert_allclose(ops.sharpness(flat, 0.4), flat, atol=1e-6)


def _sample_reference(img, sx, sy):
  """Naive bilinear with zero padding (grid_sample zeros, align_corners=True)."""
  c, h, w = img.shape
  out = np.zeros((c,) + sx.shape)
  for idx in np.ndindex(sx.shape):
    x, y = sx[idx], sy[idx]
    x0, y0 = math.floor(x), math.floor(y)
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
      for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
        if 0 <= yy < h and 0 <= xx < w:
          out[(slice(None),) + idx] += wy * wx * img[:, yy, xx]
  return out


def test_geometric_ops_match_bilinear_zero_padding_reference():
  img = _random_image(3, 2, 9)
  y, x = np.mgrid[0:9, 0:9].astype(np.float64)
  t9 = math.tan(math.radians(9))
  cases = [(ops.shear_x(img, 9), x + t9 * (y - 4), y),
           (ops.shear_y(img, -9), x, y - t9 * (x - 4)),
           (ops.translate_x(img, 0.0167), x - 0.0167, y),
           (ops.translate_y(img, -2.5), x, y + 2.5),
           (ops.translate_x(img, 12.0), x - 12.0, y)]  # Moved out entirely: zeros.
  a = math.radians(30)
  cases.append((ops.rotate(img, 30), math.cos(a) * (x - 4) - math.sin(a) * (y - 4) + 4,
                math.sin(a) * (x - 4) + math.cos(a) * (y - 4) + 4))
  for out, sx, sy in cases:
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, _sample_reference(img, sx, sy), atol=1e-6)
  far = ops.sample_bilinear(img, x + 50, y - 50)
  np.testing.assert_array_equal(far, 0.0)


def test_rotate_and_translate_near_identities():
  img = _random_image(4, 3, 16)
  np.testing.assert_array_equal(ops.rotate(img, 0), img)
  np.testing.assert_allclose(ops.rotate(img, 90), np.rot90(img, 1, axes=(1, 2)), atol=1e-6)
  for name in ('rotate', 'shear_x', 'shear_y'):  # +-5 deg / +-9 deg by the sign draw.
    assert not np.allclose(_apply(img, name, u=0.1), _apply(img, name, u=0.9))
  # +0.0167 px: 1.67% of the left neighbour mixed in; the first column loses 1.67% to zero.
  out = _apply(img, 'translate_x', u=0.9)
  f = np.float32(0.1 / 6)
  np.testing.assert_allclose(out[:, :, 1:], (1 - f) * img[:, :, 1:] + f * img[:, :, :-1],
                             atol=1e-6)
  np.testing.assert_allclose(out[:, :, 0], (1 - f) * img[:, :, 0], atol=1e-6)
  assert np.abs(_apply(img, 'translate_y', u=0.1) - img).max() < 0.02
