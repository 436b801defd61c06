"""Round-trip tests of the record schema (stssl_jax/data/records.py)."""

import pickle

import numpy as np
import pytest

from data_prep import writer
from stssl_jax.data import records

CLASSES = ('Alpha', 'Beta', 'Gamma')


def _examples(n, shape, dtype, seed, date=''):
  """n deterministic random examples with distinct pixels, labels and coordinates."""
  rng = np.random.default_rng(seed)
  hi = np.iinfo(dtype).max
  return [{
      'image': rng.integers(0, hi, size=shape, endpoint=True).astype(dtype),
      'label': i % len(CLASSES),
      'lat': float(rng.uniform(-90, 90)),
      'lon': float(rng.uniform(-180, 180)),
      'date': date,
      'filename': f'{CLASSES[i % len(CLASSES)]}/{CLASSES[i % len(CLASSES)]}_{i}.x',
      'index': i,
  } for i in range(n)]


@pytest.mark.parametrize('dtype,shape,date', [
    (np.uint8, (8, 6, 3), ''),
    (np.uint16, (5, 5, 13), '2017-6-3 10:30:00'),
])
def test_round_trip_every_field(tmp_path, dtype, shape, date):
  train = _examples(7, shape, dtype, seed=1, date=date)
  test = _examples(4, shape, dtype, seed=2, date=date)
  lab = [dict(train[5]), dict(train[1])]  # Copies; index = position in train.
  schema = records.Schema(CLASSES, shape, np.dtype(dtype).name)
  out = writer.write_dataset(
      tmp_path, 'toy', {'train': lambda: train, 'test': lambda: test, 'train_lb_2': lambda: lab},
      schema, metadata={'labeled_splits': {2: 'train_lb_2'}, 'labeled_indices': {2: [5, 1]},
                        'source': 'synthetic'})
  assert out == tmp_path / 'stssl_toy' / '1.0.0'  # Never TFDS's catalogue name.
  assert records.is_prepared(tmp_path, 'toy')
  assert [p.name for p in tmp_path.iterdir()] == ['stssl_toy']  # Temporary directory removed.

  for split, expected in (('train', train), ('test', test), ('train_lb_2', lab)):
    src = records.open_split(tmp_path, 'toy', split)
    assert len(src) == len(expected)
    for i, ex in enumerate(expected):
      rec = src[i]
      assert set(rec) == set(records.FEATURE_KEYS)
      assert rec['image'].dtype == dtype and rec['image'].shape == shape
      np.testing.assert_array_equal(rec['image'], ex['image'])
      assert rec['label'] == ex['label'] and isinstance(rec['label'], int)
      assert rec['lat'] == np.float32(ex['lat']) and rec['lat'].dtype == np.float32
      assert rec['lon'] == np.float32(ex['lon']) and rec['lon'].dtype == np.float32
      assert rec['date'] == date and rec['filename'] == ex['filename']
      assert rec['index'] == ex['index']
  assert records.open_split(tmp_path, 'toy', 'train_lb_2')[1]['index'] == 1
  assert [r['index'] for r in records.open_split(tmp_path, 'toy', 'test')[-2:]] == [2, 3]

  info = records.load_info(tmp_path, 'toy')
  assert info['class_names'] == list(CLASSES) and info['num_classes'] == 3
  assert info['splits'] == {'train': 7, 'test': 4, 'train_lb_2': 2}
  assert info['class_counts'] == {'train': [3, 2, 2], 'test': [2, 1, 1], 'train_lb_2': [0, 1, 1]}
  assert info['schema_version'] == records.SCHEMA_VERSION == 1
  assert info['labeled_splits'] == {2: 'train_lb_2'} and info['labeled_indices'] == {2: [5, 1]}
  assert info['source'] == 'synthetic'
  pix = np.stack([e['image'] for e in train]).reshape(-1, shape[-1]).astype(np.float64)
  scale = 255.0 if dtype == np.uint8 else 1.0
  np.testing.assert_allclose(info['band_mean'], pix.mean(0) / scale, rtol=1e-12)
  np.testing.assert_allclose(info['band_std'], pix.std(0) / scale, rtol=1e-9)
  assert len(info['band_mean']) == shape[-1]


def test_split_source_pickles_and_batches(tmp_path):
  data = _examples(5, (4, 4, 3), np.uint8, seed=3)
  schema = records.Schema(CLASSES, (4, 4, 3), 'uint8')
  writer.write_dataset(tmp_path, 'toy', {'train': lambda: data}, schema)
  src = records.open_split(tmp_path, 'toy', 'train')
  clone = pickle.loads(pickle.dumps(src))
  assert [r['filename'] for r in clone.__getitems__([4, 0])] == [data[4]['filename'],
                                                                 data[0]['filename']]
  np.testing.assert_array_equal(src[-1]['image'], data[4]['image'])
  with pytest.raises(IndexError, match='out of range'):
    src[5]


def test_multilabel_round_trip(tmp_path):
  data = _examples(3, (2, 2, 3), np.uint16, seed=4)
  hots = [[1, 0, 1], [0, 0, 0], [1, 1, 1]]
  for ex, hot in zip(data, hots):
    ex['label'] = np.array(hot)
  schema = records.Schema(CLASSES, (2, 2, 3), 'uint16', multilabel=True)
  writer.write_dataset(tmp_path, 'multi', {'train': lambda: data}, schema)
  src = records.open_split(tmp_path, 'multi', 'train')
  np.testing.assert_array_equal(np.stack([src[i]['label'] for i in range(3)]), hots)
  assert records.load_info(tmp_path, 'multi')['class_counts'] == {'train': [2, 1, 2]}


def test_missing_dataset_or_split_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    records.open_split(tmp_path, 'nope', 'train')
  with pytest.raises(FileNotFoundError, match='nope'):
    records.load_info(tmp_path, 'nope')
  schema = records.Schema(CLASSES, (2, 2, 3), 'uint8')
  writer.write_dataset(tmp_path, 'toy', {'train': lambda: _examples(2, (2, 2, 3), np.uint8, 0)},
                        schema)
  with pytest.raises(KeyError, match=r"Split 'test' not found in .*toy.*splits: \['train'\]"):
    records.open_split(tmp_path, 'toy', 'test')


def test_existing_dataset_needs_overwrite(tmp_path):
  schema = records.Schema(CLASSES, (2, 2, 3), 'uint8')
  first = _examples(2, (2, 2, 3), np.uint8, 0)
  writer.write_dataset(tmp_path, 'toy', {'train': lambda: first}, schema)
  with pytest.raises(FileExistsError, match='overwrite'):
    writer.write_dataset(tmp_path, 'toy', {'train': lambda: first}, schema)
  second = _examples(3, (2, 2, 3), np.uint8, 1)
  writer.write_dataset(tmp_path, 'toy', {'train': lambda: second}, schema, overwrite=True)
  assert len(records.open_split(tmp_path, 'toy', 'train')) == 3
  assert [p.name for p in tmp_path.iterdir()] == ['stssl_toy']


@pytest.mark.parametrize('field,value,match', [
    ('image', np.zeros((2, 2, 3), np.uint16), r'image uint16\[2, 2, 3\] does not match'),
    ('image', np.zeros((2, 3, 3), np.uint8), 'does not match the schema'),
    ('label', 3, r'label 3 outside \[0, 3\)'),
    ('lat', 91.0, 'not WGS84'),
    ('lon', float('nan'), 'not WGS84'),
    ('date', '2017/01/01', 'date'),
])
def test_encode_rejects_bad_fields_naming_the_record(field, value, match):
  schema = records.Schema(CLASSES, (2, 2, 3), 'uint8')
  ex = _examples(1, (2, 2, 3), np.uint8, 0)[0]
  ex[field] = value
  with pytest.raises(ValueError, match=match) as err:
    records.encode(ex, schema)
  assert 'Alpha/Alpha_0.x' in str(err.value)


def test_failed_write_leaves_nothing_behind(tmp_path):
  schema = records.Schema(CLASSES, (2, 2, 3), 'uint8')
  bad = _examples(2, (2, 2, 3), np.uint8, 0)
  bad[1]['label'] = 7
  with pytest.raises(ValueError, match='label 7'):
    writer.write_dataset(tmp_path, 'toy', {'train': lambda: bad}, schema)
  assert list(tmp_path.iterdir()) == []
  assert not records.is_prepared(tmp_path, 'toy')
