"""Tests for stssl_jax.data.pipeline: training batches, sampling, state, sharding, eval."""

import math
import pathlib
import subprocess
import sys

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from stssl_jax import metadata
from stssl_jax.data import augment
from stssl_jax.data import pipeline
from data_prep import writer
from stssl_jax.data import records
from stssl_jax.data import streams
from stssl_jax.data import transforms

ROOT = pathlib.Path(__file__).parent.parent
SAMPLE = ROOT / 'data' / 'eurosat_sample'
KEYS = {'lb_image', 'lb_label', 'lb_meta', 'ulb_image_weak', 'ulb_image_strong', 'ulb_meta',
        'ulb_label'}
# METHOD 1.2: EuroSAT's dummy date 2000-01-01 gives constant time components.
DUMMY_SIN_COS = (0.0172134, 0.9998518)


def _records(n, seed):
  """n records with noise images [64, 64, 3] and label == position (an id to track)."""
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), 'label': i,
           'lat': np.float32(40 + i), 'lon': np.float32(-10 + 2 * i), 'date': '',
           'filename': f'r{i}.jpg', 'index': i} for i in range(n)]


LB = _records(6, 0)
ULB = _records(12, 1)


def _config(**kw):
  c = default.get_config()
  c.batch_size, c.uratio, c.eval_batch_size = 3, 2, 4
  c.data.prefetch, c.data.num_workers = 0, 0
  for k, v in kw.items():
    target = c.data if k in c.data else c
    target[k] = v
  return c


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    assert set(x) == set(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _to_uint8(x):
  return np.rint((x / 2 + 0.5) * 255).astype(np.uint8)


def _weak_views(image, size=32, pad=4):
  """Every possible weak view of a record (crop offsets x flips), as bytes."""
  padded = np.pad(augment.resize(image, size), ((pad, pad), (pad, pad), (0, 0)), 'reflect')
  views = set()
  for oy in range(2 * pad + 1):
    for ox in range(2 * pad + 1):
      c = padded[oy:oy + size, ox:ox + size]
      views.update(v.tobytes() for v in (c, c[::-1], c[:, ::-1], c[::-1, ::-1]))
  return views


def test_batch_keys_shapes_dtypes_and_content():
  it = iter(pipeline.train_dataset(_config(), LB, ULB, 0, 1))
  b = next(it)
  assert set(b) == KEYS
  for k, shape in (('lb_image', (3, 32, 32, 3)), ('ulb_image_weak', (6, 32, 32, 3)),
                   ('ulb_image_strong', (6, 32, 32, 3))):
    assert b[k].shape == shape and b[k].dtype == np.float32, k
    assert -1.0 <= b[k].min() and b[k].max() <= 1.0
  assert b['lb_label'].shape == (3,) and b['lb_label'].dtype == np.int32
  assert b['ulb_label'].shape == (6,) and b['ulb_label'].dtype == np.int32
  assert b['lb_meta'].shape == (3, 4) and b['ulb_meta'].shape == (6, 4)
  assert b['lb_meta'].dtype == b['ulb_meta'].dtype == np.float32
  # Meta of each row is its record's (lat/90, lon/180) with the dummy date.
  for meta, labels, src in ((b['lb_meta'], b['lb_label'], LB),
                            (b['ulb_meta'], b['ulb_label'], ULB)):
    for m, i in zip(meta, labels):
      np.testing.assert_allclose(m, [src[i]['lat'] / 90, src[i]['lon'] / 180,
                                     *DUMMY_SIN_COS], atol=1e-6)
  # Every image row is a weak view of the record its label names.
  for img, i in zip(b['lb_image'], b['lb_label']):
    assert _to_uint8(img).tobytes() in _weak_views(LB[i]['image'])
  fill = np.array(augment.CUTOUT_FILL, np.uint8)
  for weak, strong, i in zip(b['ulb_image_weak'], b['ulb_image_strong'], b['ulb_label']):
    assert _to_uint8(weak).tobytes() in _weak_views(ULB[i]['image'])
    assert np.all(_to_uint8(strong) == fill, axis=-1).any()  # Cutout is always applied.
    assert not np.array_equal(weak, strong)


@pytest.mark.parametrize('n_lb,b_l', [(6, 3), (5, 4)])
def test_samplers_cover_their_sets_every_epoch(n_lb, b_l):
  lb = _records(n_lb, 2)
  c = _config(batch_size=b_l, uratio=2)
  it = iter(pipeline.train_dataset(c, lb, ULB, 0, 1))
  steps = 4 * math.lcm(n_lb, b_l) // b_l  # A whole number of labeled epochs (>= 4).
  batches = _take(it, steps)
  lb_stream = np.concatenate([x['lb_label'] for x in batches])
  ulb_stream = np.concatenate([x['ulb_label'] for x in batches])
  # Each epoch of each stream is a permutation of its set.
  orders = []
  for e in range(len(lb_stream) // n_lb):
    block = lb_stream[e * n_lb:(e + 1) * n_lb]
    assert sorted(block) == list(range(n_lb))
    orders.append(tuple(block))
  assert len(set(orders)) > 1  # Reshuffled between epochs.
  for e in range(len(ulb_stream) // len(ULB)):
    assert sorted(ulb_stream[e * len(ULB):(e + 1) * len(ULB)]) == list(range(len(ULB)))
  counts = np.bincount(lb_stream, minlength=n_lb)
  assert np.all(counts == len(lb_stream) // n_lb)


def test_uratio_mixing_and_independent_samplers():
  c = _config(batch_size=2, uratio=5)
  # Same records in both streams: the two samplers must still order them differently.
  b = _take(iter(pipeline.train_dataset(c, ULB, ULB, 0, 1)), 6)
  assert b[0]['lb_image'].shape[0] == 2 and b[0]['ulb_image_weak'].shape[0] == 10
  assert b[0]['ulb_image_strong'].shape[0] == 10 and b[0]['ulb_meta'].shape == (10, 4)
  lb = np.concatenate([x['lb_label'] for x in b])[:12]
  ulb = np.concatenate([x['ulb_label'] for x in b])[:12]
  assert sorted(lb) == sorted(ulb) == list(range(12))
  assert not np.array_equal(lb, ulb)


def test_determinism_and_seed():
  a = _take(iter(pipeline.train_dataset(_config(prefetch=2), LB, ULB, 0, 1)), 3)
  b = _take(iter(pipeline.train_dataset(_config(prefetch=0), LB, ULB, 0, 1)), 3)
  _assert_batches_equal(a, b)
  c = _take(iter(pipeline.train_dataset(_config(seed=1), LB, ULB, 0, 1)), 3)
  assert not np.array_equal(a[0]['ulb_label'], c[0]['ulb_label'])
  assert not np.array_equal(a[0]['lb_image'], c[0]['lb_image'])


def test_state_round_trip_in_process():
  c = _config(prefetch=2)
  it = iter(pipeline.train_dataset(c, LB, ULB, 0, 1))
  _take(it, 3)
  state = it.get_state()
  after = _take(it, 3)
  fresh = iter(pipeline.train_dataset(c, LB, ULB, 0, 1))
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 3), after)


def test_orbax_round_trip_with_and_without_workers(tmp_path):
  """Save with orbax mid-stream, keep going, restore into a fresh iterator: same batches.

  The iterator advances before the (possibly asynchronous) save is awaited, as in a
  training loop. With one mp_prefetch worker the batches also equal the in-process ones.
  """
  ref = _take(iter(pipeline.train_dataset(_config(), LB, ULB, 0, 1)), 6)
  for workers in (0, 1):
    c = _config(num_workers=workers, prefetch=2)
    path = tmp_path / f'w{workers}'
    it = iter(pipeline.train_dataset(c, LB, ULB, 0, 1))
    try:
      _assert_batches_equal(_take(it, 3), ref[:3])
      with ocp.CheckpointManager(path, item_names=('data',)) as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        _assert_batches_equal(_take(it, 2), ref[3:5])
        mngr.wait_until_finished()
    finally:
      it.close()
    fresh = iter(pipeline.train_dataset(c, LB, ULB, 0, 1))
    try:
      with ocp.CheckpointManager(path, item_names=('data',)) as mngr:
        mngr.restore(3, args=ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(fresh)))
      _assert_batches_equal(_take(fresh, 3), ref[3:6])
    finally:
      fresh.close()


def test_process_sharding_concatenates_to_global_batch():
  c = _config(batch_size=4, uratio=3)
  whole = _take(iter(pipeline.train_dataset(c, LB, ULB, 0, 1)), 3)
  parts = [_take(iter(pipeline.train_dataset(c, LB, ULB, p, 2)), 3) for p in range(2)]
  assert parts[0][0]['lb_image'].shape[0] == 2 and parts[0][0]['ulb_image_weak'].shape[0] == 6
  for step in range(3):
    for k in KEYS:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][k], parts[1][step][k]]), whole[step][k], err_msg=k)
  with pytest.raises(ValueError, match='divisible'):
    pipeline.train_dataset(_config(batch_size=3), LB, ULB, 0, 2)


class _CountingList(list):
  """A list source that counts reads."""
  reads = 0

  def __getitem__(self, i):
    self.reads += 1
    return super().__getitem__(i)


@pytest.mark.parametrize('max_bytes,reads', [(1 << 30, 6), (0, 18), (2 * 32 * 32 * 3, 14)])
def test_prepared_records_memoise_within_budget(max_bytes, reads):
  """Reads: 6 when all fit, 18 with no cache, 2 + 3 * 4 when only 2 records fit."""
  src = _CountingList(LB)
  t = transforms.for_records(_config(), LB[0]['image'])

  def prepare(r):
    return {'image': t.prepare(r['image']), 'label': r['label'], 'lat': r['lat'],
            'date': r['date']}
  ds = streams.PreparedRecords(grain.MapDataset.source(src), prepare, t.prepared_bytes,
                               max_cache_bytes=max_bytes)
  for _ in range(3):
    out = [ds[i] for i in range(6)]
  assert src.reads == reads
  for i, r in enumerate(out):
    np.testing.assert_array_equal(r['image'], augment.resize(LB[i]['image'], 32))
    assert r['label'] == i and r['lat'] == LB[i]['lat'] and r['date'] == ''
  assert not out[0]['image'].flags.writeable  # Views cannot corrupt the cache.


@pytest.mark.parametrize('n,b', [(13, 4), (8, 4), (3, 4)])
def test_eval_batches_pad_and_mask(n, b):
  src = _records(n, 5)
  c = _config(eval_batch_size=b)
  batches = list(pipeline.eval_batches_from_source(c, src, 0, 1))
  assert len(batches) == math.ceil(n / b)
  seen = []
  for x in batches:
    assert x['image'].shape == (b, 32, 32, 3) and x['image'].dtype == np.float32
    assert x['label'].dtype == np.int32 and x['meta'].shape == (b, 4)
    assert x['mask'].dtype == bool
    for img, lab, m, keep in zip(x['image'], x['label'], x['meta'], x['mask']):
      if keep:
        seen.append(int(lab))
        np.testing.assert_array_equal(img, augment.eval_view(src[lab]['image'], 32))
        np.testing.assert_allclose(m, metadata.encode([src[lab]['lat']], [src[lab]['lon']],
                                                      ['2000-1-1 00:00:00'])[0])
      else:
        assert not img.any() and lab == 0 and not m.any()
  assert sum(int(x['mask'].sum()) for x in batches) == n
  assert seen == list(range(n))  # In order, each record exactly once.
  # Padding only at the end of the last batch.
  assert all(x['mask'].all() for x in batches[:-1])


def test_eval_batches_across_processes():
  src = _records(9, 6)
  c = _config(eval_batch_size=8)
  whole = list(pipeline.eval_batches_from_source(c, src, 0, 1))
  parts = [list(pipeline.eval_batches_from_source(c, src, p, 2)) for p in range(2)]
  assert len(whole) == len(parts[0]) == len(parts[1]) == 2
  # Process 1's half of the last batch is all padding.
  assert not parts[1][1]['mask'].any() and parts[1][1]['label'].shape == (4,)
  for k in range(2):
    for key in whole[k]:
      np.testing.assert_array_equal(
          np.concatenate([parts[0][k][key], parts[1][k][key]]), whole[k][key])


def test_meta_switches():
  c = _config(no_loc=True, no_time=True)
  b = next(iter(pipeline.train_dataset(c, LB, ULB, 0, 1)))
  want = metadata.encode([0.0], [0.0], [metadata.NO_TIME_DATE])[0]
  np.testing.assert_array_equal(b['lb_meta'], np.tile(want, (3, 1)))
  assert want[0] == 0 and want[2] != np.float32(DUMMY_SIN_COS[0])


def _check_prepared(c, n_train, n_lb):
  """train_iterator / eval_batches / num_eval_batches over an on-disk prepared dataset."""
  info = pipeline.dataset_info(c)
  assert info['splits']['train'] == n_train
  it = pipeline.train_iterator(c, 0, 1)
  try:
    batches = _take(it, 2)
    state = it.get_state()
    nxt = next(it)
  finally:
    it.close()
  assert set(batches[0]) == KEYS
  s = c.data.image_size
  assert batches[0]['lb_image'].shape == (c.batch_size, s, s, 3)
  assert batches[0]['ulb_image_strong'].shape == (c.batch_size * c.uratio, s, s, 3)
  lb_labels = {int(r['label']) for r in records.open_split(
      c.data.data_dir, c.data.name, pipeline.labeled_split(c, info))}
  assert set(np.concatenate([x['lb_label'] for x in batches]).tolist()) <= lb_labels
  assert len(records.open_split(c.data.data_dir, c.data.name, pipeline.labeled_split(c, info))
             ) == n_lb
  fresh = pipeline.train_iterator(c, 0, 1)
  fresh.set_state(state)
  _assert_batches_equal([next(fresh)], [nxt])
  fresh.close()
  ev = list(pipeline.eval_batches(c, c.data.eval_split))
  assert len(ev) == pipeline.num_eval_batches(c, c.data.eval_split)
  assert sum(int(x['mask'].sum()) for x in ev) == info['splits'][c.data.eval_split]


def test_prepared_dataset_on_disk(tmp_path):
  """train_iterator with mp_prefetch over a SplitSource written by writer.write_dataset."""
  train, test = _records(10, 7), _records(5, 8)
  for r in train + test:
    r['label'] %= 3
  lab = [dict(train[i]) for i in (1, 4, 7)]
  schema = records.Schema(('A', 'B', 'C'), (64, 64, 3), 'uint8')
  writer.write_dataset(tmp_path, 'toy', {'train': lambda: train, 'test': lambda: test,
                                          'train_lb_3': lambda: lab}, schema,
                        metadata={'labeled_splits': {3: 'train_lb_3'}})
  c = _config(name='toy', data_dir=str(tmp_path), num_labels=3, num_workers=1, prefetch=1,
              batch_size=2, eval_batch_size=4)
  _check_prepared(c, 10, 3)
  with pytest.raises(ValueError, match='num_labels=7'):
    pipeline.train_iterator(_config(name='toy', data_dir=str(tmp_path), num_labels=7), 0, 1)


@pytest.fixture(scope='module')
def eurosat_sample(tmp_path_factory):
  if not (SAMPLE / '2750').is_dir():
    pytest.skip(f'{SAMPLE} is missing: the real-sample pipeline test cannot run')
  out = tmp_path_factory.mktemp('prepared') / 'eurosat_sample'
  subprocess.run([sys.executable, '-m', 'data_prep.eurosat', '--images', str(SAMPLE / '2750'),
                  '--coords', str(SAMPLE / 'coords.csv'), '--out', str(out)],
                 check=True, cwd=ROOT, capture_output=True, timeout=600)
  return str(out)


def test_real_eurosat_sample(eurosat_sample):
  info = records.load_info(eurosat_sample, 'eurosat')
  n_lb = min(info['labeled_splits'])
  c = _config(name='eurosat', data_dir=eurosat_sample, num_labels=n_lb, batch_size=4)
  _check_prepared(c, info['splits']['train'], n_lb)

