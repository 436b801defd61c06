"""Tests for stssl_jax.data.pipeline on multi-band, multi-label (BigEarthNet-like) records,
and for the 'original' sampler (METHOD 3.6)."""

import pickle

import grain
import numpy as np
import pytest

from configs import default
from stssl_jax import metadata
from stssl_jax.data import augment_ms
from stssl_jax.data import pipeline
from data_prep import writer
from stssl_jax.data import records
from stssl_jax.data import streams
from stssl_jax.data import transforms
from tests.test_pipeline import _assert_batches_equal, _take  # pylint: disable=unused-import

KEYS = {'lb_image', 'lb_label', 'lb_meta', 'ulb_image_weak', 'ulb_image_strong', 'ulb_meta',
        'ulb_label'}
# METHOD 3.4 statistics of B04, B03, B02, repeated for 12 bands.
MS_MEAN, MS_STD = (590.2357, 614.2168, 429.9430), (675.8875, 582.8795, 572.4164)


def _config(**kw):
  c = default.get_config()
  c.batch_size, c.uratio, c.eval_batch_size = 3, 2, 4
  c.data.prefetch, c.data.num_workers = 0, 0
  c.data.num_labels = 0
  c.data.image_size, c.data.crop_padding = 128, 16
  for k, v in kw.items():
    target = c.data if k in c.data else c
    target[k] = v
  return c




def _ms_info(c):
  return {'band_mean': list(np.resize(MS_MEAN, c)), 'band_std': list(np.resize(MS_STD, c))}


def _ms_records(n, seed, c=3, size=120):
  """uint16 [size, size, c] in 0..3000, multi-hot label [43] and label19 [19]; lat = 40 + i."""
  rng = np.random.default_rng(seed)
  recs = []
  for i in range(n):
    label = (rng.random(43) < 0.1).astype(np.uint8)
    label[i % 43] = 1
    recs.append({'image': rng.integers(0, 3000, (size, size, c), dtype=np.uint16),
                 'label': label, 'label19': (rng.random(19) < 0.3).astype(np.uint8),
                 'lat': np.float32(40 + i), 'lon': np.float32(2 * i),
                 'date': f'2017-{i % 12 + 1:02d}-15 10:30:00', 'filename': f'p{i}',
                 'index': i, 'country': 'Austria', 'season': 'Summer'})
  return recs


def _ms_config(c, **kw):
  return _config(num_channels=c, **kw)


def _row_ids(meta):
  return np.rint(meta[:, 0] * 90 - 40).astype(int)


@pytest.mark.parametrize('c,label_set,n_cls', [(3, 'label', 43), (12, 'label19', 19)])
def test_multiband_multilabel_batches(c, label_set, n_cls):
  lb, ulb = _ms_records(4, 0, c), _ms_records(6, 1, c)
  cfg = _ms_config(c, label_set=label_set)
  b = next(iter(pipeline.train_dataset(cfg, lb, ulb, 0, 1, _ms_info(c))))
  assert set(b) == KEYS
  for k, rows in (('lb_image', 3), ('ulb_image_weak', 6), ('ulb_image_strong', 6)):
    assert b[k].shape == (rows, 128, 128, c) and b[k].dtype == np.float32, k
    assert -2.0 <= b[k].min() and b[k].max() <= 2.0 and b[k].std() > 0.1
  assert not np.array_equal(b['ulb_image_weak'], b['ulb_image_strong'])
  for key, src, rows in (('lb', lb, 3), ('ulb', ulb, 6)):
    labels, ids = b[f'{key}_label'], _row_ids(b[f'{key}_meta'])
    assert labels.shape == (rows, n_cls) and labels.dtype == np.float32
    np.testing.assert_array_equal(labels, np.stack([src[i][label_set] for i in ids]))
    want = metadata.encode([src[i]['lat'] for i in ids], [src[i]['lon'] for i in ids],
                           [src[i]['date'] for i in ids])
    np.testing.assert_allclose(b[f'{key}_meta'], want, atol=1e-6)  # Real dates, no dummy.


def _ms_weak_views(image, c, size, pad):
  """Every possible normalised weak view [S, S, C] of a record, as bytes."""
  v = augment_ms.prepare(image, *_ms_info(c).values(), size).astype(np.float32)
  padded = np.pad(v, ((0, 0), (pad, pad), (pad, pad)), 'reflect')
  views = set()
  for oy in range(2 * pad + 1):
    for ox in range(2 * pad + 1):
      crop = padded[:, oy:oy + size, ox:ox + size]
      for view in (crop, crop[:, ::-1], crop[:, :, ::-1], crop[:, ::-1, ::-1]):
        views.add(augment_ms.normalize(augment_ms.to_hwc(view)).tobytes())
  return views


def test_multiband_weak_views_are_crops_of_the_scaled_record():
  lb, ulb = _ms_records(3, 2), _ms_records(4, 3)
  cfg = _ms_config(3, image_size=16, crop_padding=2, batch_size=3, uratio=1)
  batches = _take(iter(pipeline.train_dataset(cfg, lb, ulb, 0, 1, _ms_info(3))), 2)
  for b in batches:
    for img, i in zip(b['lb_image'], _row_ids(b['lb_meta'])):
      assert img.tobytes() in _ms_weak_views(lb[i]['image'], 3, 16, 2)
    for img, i in zip(b['ulb_image_weak'], _row_ids(b['ulb_meta'])):
      assert img.tobytes() in _ms_weak_views(ulb[i]['image'], 3, 16, 2)


def test_multiband_determinism_state_and_pickling():
  lb, ulb, info = _ms_records(4, 4, 12), _ms_records(5, 5, 12), _ms_info(12)
  cfg = _ms_config(12, image_size=32, crop_padding=4)
  a = _take(iter(pipeline.train_dataset(cfg, lb, ulb, 0, 1, info)), 3)
  it = iter(pipeline.train_dataset(cfg, lb, ulb, 0, 1, info))
  _take(it, 1)
  state = it.get_state()
  fresh = iter(pipeline.train_dataset(cfg, lb, ulb, 0, 1, info))
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 2), a[1:])
  # Worker processes receive the transforms by pickle.
  t = transforms.for_records(cfg, lb[0]['image'], info)
  t2 = pickle.loads(pickle.dumps(t))
  rng = np.random.default_rng(0)
  np.testing.assert_array_equal(t2.strong(t2.prepare(lb[0]['image']), rng),
                                t.strong(t.prepare(lb[0]['image']), np.random.default_rng(0)))


def test_multiband_eval_pad_and_mask():
  src, c = _ms_records(5, 6, 12), 12
  cfg = _ms_config(c, image_size=32, eval_batch_size=4)
  batches = list(pipeline.eval_batches_from_source(cfg, src, 0, 1, _ms_info(c)))
  assert len(batches) == 2
  assert [x['mask'].tolist() for x in batches] == [[True] * 4, [True] + [False] * 3]
  for k, x in enumerate(batches):
    assert x['image'].shape == (4, 32, 32, c) and x['image'].dtype == np.float32
    assert x['label'].shape == (4, 43) and x['label'].dtype == np.float32
    for j in range(4):
      i = 4 * k + j
      if i < len(src):
        want = augment_ms.normalize(augment_ms.to_hwc(
            augment_ms.prepare(src[i]['image'], *_ms_info(c).values(), 32)))
        np.testing.assert_array_equal(x['image'][j], want)
        np.testing.assert_array_equal(x['label'][j], src[i]['label'])
      else:
        assert not x['image'][j].any() and not x['label'][j].any() and not x['meta'][j].any()


def test_num_channels_and_band_statistics_are_checked():
  recs = _ms_records(2, 7, 12)
  with pytest.raises(ValueError, match=r'num_channels=3.*C=12'):
    pipeline.train_dataset(_ms_config(3), recs, recs, 0, 1, _ms_info(12))
  with pytest.raises(ValueError, match=r'num_channels=3.*C=12'):
    next(pipeline.eval_batches_from_source(_ms_config(3), recs, 0, 1, _ms_info(12)))
  with pytest.raises(ValueError, match='band_mean'):
    pipeline.train_dataset(_ms_config(12), recs, recs, 0, 1, _ms_info(3))
  with pytest.raises(ValueError, match='label_set'):
    pipeline.train_dataset(_ms_config(12, label_set='label7'), recs, recs, 0, 1, _ms_info(12))


def test_labeled_split_by_fraction():
  info = {'labeled_splits': {0.005: 'train0.005_lb_43', 0.01: 'train0.01_lb_43'}}
  cfg = _config(label_fraction=0.01)
  assert pipeline.labeled_split(cfg, info) == 'train0.01_lb_43'
  assert pipeline.labeled_split(_config(), info) == 'train'
  with pytest.raises(ValueError, match='label_fraction=0.02'):
    pipeline.labeled_split(_config(label_fraction=0.02), info)
  with pytest.raises(ValueError, match='not both'):
    pipeline.labeled_split(_config(num_labels=40, label_fraction=0.01), info)


def test_prepared_multilabel_dataset_on_disk(tmp_path):
  """uint16 multi-label records written by writer.write_dataset, fraction-keyed subsets."""
  train, val = _ms_records(6, 8, size=24), _ms_records(3, 9, size=24)
  for r in train + val:
    del r['label19'], r['country'], r['season']
  schema = records.Schema(tuple(f'c{k}' for k in range(43)), (24, 24, 3), 'uint16',
                          multilabel=True)
  lab = [dict(train[i]) for i in (0, 3)]  # TFDS split names cannot contain '.'.
  writer.write_dataset(tmp_path, 'ben', {'train': lambda: train, 'val': lambda: val,
                                          'train_lb_f0010': lambda: lab}, schema,
                        metadata={'labeled_splits': {0.01: 'train_lb_f0010'}})
  cfg = _ms_config(3, name='ben', data_dir=str(tmp_path), label_fraction=0.01,
                   image_size=16, crop_padding=2, batch_size=2, eval_batch_size=2,
                   eval_split='val')
  b = next(pipeline.train_iterator(cfg, 0, 1))
  assert b['lb_image'].shape == (2, 16, 16, 3) and b['lb_label'].shape == (2, 43)
  assert set(_row_ids(b['lb_meta'])) <= {0, 3}
  ev = list(pipeline.eval_batches(cfg, 'val'))
  assert len(ev) == 2 and sum(int(x['mask'].sum()) for x in ev) == 3
  assert ev[0]['label'].dtype == np.float32


# ---- The 'original' sampler (METHOD 3.6) -----------------------------------------------


def test_original_sampler_structure_and_random_access():
  n, per_epoch = 4, 10
  ds = streams.OriginalSampler(grain.MapDataset.source(list(range(n))), per_epoch)
  seq = [ds[i] for i in range(3 * per_epoch)]
  for e in range(3):
    rng = np.random.default_rng(e)  # Seeded by the epoch index only.
    perms = [rng.permutation(n) for _ in range(3)]
    assert seq[e * per_epoch:(e + 1) * per_epoch] == np.concatenate(perms)[:per_epoch].tolist()
  fresh = streams.OriginalSampler(grain.MapDataset.source(list(range(n))), per_epoch)
  order = [17, 3, 29, 0, 11, 10]
  assert [fresh[i] for i in order] == [seq[i] for i in order]


def test_original_sampler_in_the_pipeline_ignores_the_seed():
  lb, ulb, info = _ms_records(6, 10, size=24), _ms_records(7, 11, size=24), _ms_info(3)

  def lb_stream(**kw):
    cfg = _ms_config(3, image_size=16, crop_padding=2, num_steps=8, **kw)
    batches = _take(iter(pipeline.train_dataset(cfg, lb, ulb, 0, 1, info)), 8)
    return np.concatenate([_row_ids(x['lb_meta']) for x in batches])
  s0 = lb_stream(sampler='original', sampler_epochs=2, seed=0)
  np.testing.assert_array_equal(lb_stream(sampler='original', sampler_epochs=2, seed=1), s0)
  # 4 steps x 3 labeled rows = 12 per epoch = 2 whole permutations of the 6 records.
  for e in range(2):
    rng = np.random.default_rng(e)
    want = np.concatenate([rng.permutation(6), rng.permutation(6)])
    np.testing.assert_array_equal(s0[12 * e:12 * (e + 1)], want)
  assert not np.array_equal(lb_stream(), s0)  # 'seeded' differs.
  with pytest.raises(ValueError, match='sampler'):
    lb_stream(sampler='torch')
