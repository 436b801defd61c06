"""THE record schema: one TFDS/ArrayRecord layout shared by data_prep and the input pipeline.

A prepared dataset lives in `<data_dir>/<name>/<SCHEMA_VERSION>.0.0/` and is a plain TFDS
dataset directory written with `file_format='array_record'` (readable without TensorFlow).
Every record has these features:

  image     Tensor [H, W, C], uint8 (RGB) or uint16 (multispectral); original pixels, full
            resolution (the pipeline resizes).
  label     ClassLabel (single-label) or multi-hot uint8 Tensor [num_classes] (multi-label).
  lat, lon  float32, WGS84 degrees of the patch centre.
  date      Text `YYYY-MM-DD HH:MM:SS`; '' when the dataset has no dates (EuroSAT), in which
            case the pipeline substitutes METHOD 1.2's dummy date.
  filename  Text, path relative to the raw dataset root (e.g. `AnnualCrop/AnnualCrop_1.jpg`).
  index     int64: position within the split, EXCEPT in labeled-subset splits
            `train_lb_{n}`, whose records are copies of `train` records and whose `index` is
            the position of that record in `train` (so labeled ⊂ unlabeled is explicit).

Optional per-dataset fields (Schema.extra_text / extra_multihot), e.g. BigEarthNet's
`country`, `season` (Text) and `label19` (multi-hot uint8 [19], a second nomenclature).
Schema.image_encoding 'bytes' stores the image as raw bytes instead of an int64 list, which
makes uint16 records ~80x faster to serialise (EuroSAT keeps the default, 'none').

Records are written in generation order (TFDS shuffling disabled), so record i of a split
has `index == i` for every split except the labeled subsets, which keep the draw order.

Dataset-level metadata is the TFDS `metadata.json` (a MetadataDict) in the same directory:
class names, per-split class counts, per-band mean/std over the statistics split (`train`),
the schema version, labeled-subset definitions, the source and skipped files. `load_info`
returns it as a plain dict. The writer is `data_prep/writer.py` (atomic: the dataset is built
in a temporary directory next to the output and renamed into place only when complete).

On disk a dataset is named `stssl_<name>` (TFDS_PREFIX), so that TFDS's own catalogue
(which has its own `eurosat` and `bigearthnet`) never captures it:
`tfds.data_source('stssl_eurosat', data_dir=..., split='train')` reads our data, and so does
`open_split(data_dir, 'eurosat', 'train')`. Shards are serialised deterministically (sorted
proto map keys), so identical input gives byte-identical files; each shard's size and SHA-256
are recorded in metadata.json ('files') and checked before a dataset counts as prepared
(`verify`), and a reader names the file and split of a truncated or corrupt shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pathlib
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from stssl_jax import metadata

SCHEMA_VERSION = 1
VERSION = f'{SCHEMA_VERSION}.0.0'  # TFDS version directory of this schema.
TFDS_PREFIX = 'stssl_'  # On-disk (TFDS builder) names: stssl_eurosat, stssl_bigearthnet, ...
FEATURE_KEYS = ('image', 'label', 'lat', 'lon', 'date', 'filename', 'index')
_IMAGE_DTYPES = ('uint8', 'uint16')
_IMAGE_ENCODINGS = ('none', 'bytes', 'zlib')  # tfds.features.Tensor encodings.
# load_info keys whose JSON object keys are numbers (label counts or label fractions).
_NUMBER_KEYED = ('labeled_splits', 'labeled_indices', 'labeled_draw', 'lb_prevalence',
                 'lb_prevalence19')


@dataclasses.dataclass(frozen=True)
class Schema:
  """Per-dataset parameters of the record schema.

  Attributes:
    class_names: class names; label i is class_names[i].
    image_shape: (H, W, C) of every image.
    image_dtype: 'uint8' or 'uint16'.
    multilabel: labels are multi-hot vectors [num_classes] instead of class indices.
    image_encoding: how the image tensor is stored: 'none' (int64 list), 'bytes', 'zlib'.
    extra_text: names of additional Text fields (e.g. ('country', 'season')).
    extra_multihot: (name, class names) of additional multi-hot uint8 fields.
  """
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  image_dtype: str
  multilabel: bool = False
  image_encoding: str = 'none'
  extra_text: tuple[str, ...] = ()
  extra_multihot: tuple[tuple[str, tuple[str, ...]], ...] = ()

  def __post_init__(self):
    if self.image_dtype not in _IMAGE_DTYPES:
      raise ValueError(f'Schema.image_dtype must be one of {_IMAGE_DTYPES}, '
                       f'got {self.image_dtype!r}')
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise ValueError(f'Schema.image_shape must be (H, W, C) > 0, got {self.image_shape}')
    if not self.class_names or len(set(self.class_names)) != len(self.class_names):
      raise ValueError(f'Schema.class_names must be non-empty and unique, got {self.class_names}')
    if self.image_encoding not in _IMAGE_ENCODINGS:
      raise ValueError(f'Schema.image_encoding must be one of {_IMAGE_ENCODINGS}, '
                       f'got {self.image_encoding!r}')
    extra = list(self.extra_text) + [n for n, _ in self.extra_multihot]
    if len(set(extra)) != len(extra) or set(extra) & set(FEATURE_KEYS):
      raise ValueError(f'Schema extra fields {extra} must be unique and not among {FEATURE_KEYS}')

  def keys(self) -> tuple[str, ...]:
    """All record fields: FEATURE_KEYS, then the extra ones."""
    return FEATURE_KEYS + self.extra_text + tuple(n for n, _ in self.extra_multihot)

  def features(self):
    """Returns the tfds FeaturesDict of this schema."""
    f = tfds.features
    if self.multilabel:
      label = f.Tensor(shape=(len(self.class_names),), dtype=np.uint8)
    else:
      label = f.ClassLabel(names=list(self.class_names))
    encoding = {} if self.image_encoding == 'none' else {'encoding': self.image_encoding}
    spec = {
        'image': f.Tensor(shape=tuple(self.image_shape), dtype=np.dtype(self.image_dtype),
                          **encoding),
        'label': label,
        'lat': f.Scalar(dtype=np.float32),
        'lon': f.Scalar(dtype=np.float32),
        'date': f.Text(),
        'filename': f.Text(),
        'index': f.Scalar(dtype=np.int64),
    }
    spec.update({k: f.Text() for k in self.extra_text})
    spec.update({k: f.Tensor(shape=(len(names),), dtype=np.uint8)
                 for k, names in self.extra_multihot})
    return f.FeaturesDict(spec)


def encode(example: Mapping[str, Any], schema: Schema) -> dict[str, Any]:
  """Validates one example and converts it to the stored types.

  Args:
    example: dict with keys schema.keys(); `image` [H, W, C] array, `label` int (or
      multi-hot [num_classes]), `lat`/`lon` degrees, `date` str, `filename` str, `index` int,
      extra Text fields str, extra multi-hot fields [n_names] of 0/1.
    schema: the dataset's Schema.

  Returns:
    dict with image [H, W, C] of schema.image_dtype, label int (or uint8 [num_classes]),
    lat/lon np.float32, date/filename str, index int, and the extra fields (str / uint8 [n]).

  Raises:
    ValueError: naming the example's filename and the offending field.
  """
  name = example.get('filename', '<no filename>')
  missing = [k for k in schema.keys() if k not in example]
  if missing:
    raise ValueError(f'Record {name!r}: missing fields {missing}')
  image = np.asarray(example['image'])
  if image.dtype != np.dtype(schema.image_dtype) or image.shape != tuple(schema.image_shape):
    raise ValueError(f'Record {name!r}: image {image.dtype}{list(image.shape)} does not match '
                     f'the schema {schema.image_dtype}{list(schema.image_shape)}')
  num_classes = len(schema.class_names)
  if schema.multilabel:
    label = np.asarray(example['label'])
    if label.shape != (num_classes,) or not np.isin(label, (0, 1)).all():
      raise ValueError(f'Record {name!r}: label must be multi-hot of length {num_classes}')
    label = label.astype(np.uint8)
  else:
    label = int(example['label'])
    if not 0 <= label < num_classes:
      raise ValueError(f'Record {name!r}: label {label} outside [0, {num_classes})')
  lat, lon = float(example['lat']), float(example['lon'])
  if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
    raise ValueError(f'Record {name!r}: lat/lon ({lat}, {lon}) are not WGS84 degrees')
  date = example['date']
  # The one date grammar is metadata's (METHOD 1.1: lenient, single-digit month/day).
  if not isinstance(date, str) or (date and not metadata.is_date(date)):
    raise ValueError(f"Record {name!r}: date {date!r} is neither '' nor 'YYYY-M-D[ HH:MM:SS]'")
  if not isinstance(name, str) or not name:
    raise ValueError(f'Record {name!r}: filename must be a non-empty string')
  rec = {'image': image, 'label': label, 'lat': np.float32(lat), 'lon': np.float32(lon),
         'date': date, 'filename': name, 'index': int(example['index'])}
  for key in schema.extra_text:
    if not isinstance(example[key], str):
      raise ValueError(f'Record {name!r}: {key} must be a string, got {example[key]!r}')
    rec[key] = example[key]
  for key, names in schema.extra_multihot:
    hot = np.asarray(example[key])
    if hot.shape != (len(names),) or not np.isin(hot, (0, 1)).all():
      raise ValueError(f'Record {name!r}: {key} must be multi-hot of length {len(names)}')
    rec[key] = hot.astype(np.uint8)
  return rec


def decode(raw: Mapping[str, Any]) -> dict[str, Any]:
  """Converts a record as returned by the TFDS data source to plain numpy/python values.

  Args:
    raw: dict from a tfds ArrayRecord data source (Text fields arrive as bytes).

  Returns:
    dict: image [H, W, C] uint8/uint16, label int (or uint8 [num_classes]), lat/lon
    np.float32, date str, filename str, index int; extra fields as str (Text) or uint8 [n].
  """
  def text(v):
    return v.decode('utf-8') if isinstance(v, bytes) else str(v)
  label = raw['label']
  label = int(label) if np.ndim(label) == 0 else np.asarray(label, np.uint8)
  rec = {'image': np.asarray(raw['image']), 'label': label, 'lat': np.float32(raw['lat']),
         'lon': np.float32(raw['lon']), 'date': text(raw['date']),
         'filename': text(raw['filename']), 'index': int(raw['index'])}
  for key, value in raw.items():
    if key not in rec:
      rec[key] = text(value) if isinstance(value, (bytes, str)) else np.asarray(value, np.uint8)
  return rec


class CorruptShard(IOError):
  """A shard file is truncated, altered or unreadable; the message names file and split."""


def tfds_name(name: str) -> str:
  """'eurosat' -> 'stssl_eurosat': the TFDS builder and folder name of our dataset `name`."""
  return name if name.startswith(TFDS_PREFIX) else TFDS_PREFIX + name


def dataset_root(data_dir: str | os.PathLike, name: str) -> pathlib.Path:
  """Returns `<data_dir>/stssl_<name>`, the folder that data_prep installs atomically."""
  return pathlib.Path(data_dir) / tfds_name(name)


def dataset_dir(data_dir: str | os.PathLike, name: str) -> pathlib.Path:
  """Returns `<data_dir>/stssl_<name>/<VERSION>`, the directory holding one prepared dataset."""
  return dataset_root(data_dir, name) / VERSION


def is_prepared(data_dir: str | os.PathLike, name: str) -> bool:
  """True if a complete dataset of this schema version is in place (writes are atomic)."""
  d = dataset_dir(data_dir, name)
  if not (d / 'dataset_info.json').is_file() or not (d / 'metadata.json').is_file():
    return False
  with open(d / 'metadata.json') as f:
    return json.load(f).get('schema_version') == SCHEMA_VERSION


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()


def file_digests(ds_dir: pathlib.Path) -> dict[str, dict[str, Any]]:
  """{shard file name: {'bytes': size, 'sha256': hex}} of every shard in `ds_dir`."""
  return {p.name: {'bytes': p.stat().st_size, 'sha256': _sha256(p)}
          for p in sorted(ds_dir.glob('*.array_record-*'))}


def verify(data_dir: str | os.PathLike, name: str, checksums: bool = True) -> list[str]:
  """Problems of a prepared dataset's shards against the sizes/hashes recorded at write time.

  Args:
    data_dir: root passed to data_prep as --out.
    name: dataset name.
    checksums: also re-hash every shard (reads all bytes; sizes alone catch truncation).
  Returns:
    One message per missing, truncated or altered file (empty: intact).
  """
  d = dataset_dir(data_dir, name)
  with open(d / 'metadata.json') as f:
    files = json.load(f).get('files')
  if files is None:
    return [f'{d}/metadata.json records no shard sizes or checksums (prepared by an older '
            'version)']
  problems = []
  for fname, want in sorted(files.items()):
    path = d / fname
    if not path.is_file():
      problems.append(f'{path}: missing')
    elif path.stat().st_size != want['bytes']:
      problems.append(f'{path}: {path.stat().st_size} bytes, {want["bytes"]} when written '
                      '(truncated or altered)')
    elif checksums and _sha256(path) != want['sha256']:
      problems.append(f'{path}: SHA-256 differs from the one recorded when it was written '
                      '(altered or corrupt)')
  return problems


def _check_dir(data_dir, name) -> pathlib.Path:
  d = dataset_dir(data_dir, name)
  if not (d / 'dataset_info.json').is_file():
    other = sorted(p.name for p in d.parent.iterdir()) if d.parent.is_dir() else []
    hint = f' (found versions {other}; this code reads schema {VERSION})' if other else ''
    if (pathlib.Path(data_dir) / name / VERSION / 'dataset_info.json').is_file():
      hint = (f' ({pathlib.Path(data_dir) / name} is the older layout, whose name collided '
              f'with the TFDS catalogue; prepare it again)')
    raise FileNotFoundError(
        f"No prepared dataset '{name}' in {pathlib.Path(data_dir)}: {d} is missing{hint}. "
        f'Prepare it with `python -m data_prep.{name} --out {data_dir} ...`.')
  return d


def load_info(data_dir: str | os.PathLike, name: str) -> dict[str, Any]:
  """Reads the dataset-level metadata.

  Args:
    data_dir: root passed to data_prep as --out.
    name: dataset name.

  Returns:
    dict with class_names (list), num_classes, splits {split: count}, class_counts
    {split: [C]}, band_mean / band_std (lists [C_bands]), schema_version, labeled_splits
    {key: split name}, labeled_indices {key: [train indices]}, where key is the number of
    labels (int, EuroSAT) or the label fraction (float, BigEarthNet: 0.01 ...), plus every
    other stored metadata field (source, prep, skipped; BigEarthNet adds class_names19,
    band_names, band_mean_original / band_std_original, lb_prevalence {fraction: [C]} ...).
  """
  d = _check_dir(data_dir, name)
  with open(d / 'metadata.json') as f:
    info = json.load(f)
  with open(d / 'dataset_info.json') as f:
    splits = json.load(f)['splits']
  info['splits'] = {s['name']: sum(int(n) for n in s.get('shardLengths', [])) for s in splits}
  info['num_classes'] = len(info['class_names'])
  info.setdefault('labeled_splits', {})
  info.setdefault('labeled_indices', {})
  for key in _NUMBER_KEYED:  # JSON turned the number keys into strings.
    if key in info:
      info[key] = {_number(k): v for k, v in info[key].items()}
  return info


def _number(key: str) -> int | float:
  """'40' -> 40, '0.005' -> 0.005 (a JSON object key back to the number it was)."""
  return int(key) if key.lstrip('-').isdigit() else float(key)


class SplitSource(Sequence):
  """Random-access view of one split: `len(src)`, `src[i]` -> decoded record dict.

  Picklable (for grain worker processes): only (data_dir, name, split) travel; the file
  handle is reopened lazily in each process.
  """

  def __init__(self, data_dir: str | os.PathLike, name: str, split: str):
    self.data_dir, self.name, self.split = str(data_dir), name, split
    self._source = None
    self._len = self._open().__len__()

  def _open(self):
    if self._source is None:
      d = _check_dir(self.data_dir, self.name)
      builder = tfds.builder_from_directory(str(d))
      if self.split not in builder.info.splits:
        raise KeyError(f"Split '{self.split}' not found in {d}; available splits: "
                       f'{sorted(builder.info.splits)}')
      info = builder.info.splits[self.split]
      self._files = [(str(d / p), int(n)) for p, n in zip(info.filenames, info.shard_lengths)]
      # Sizes only (a stat per shard): a truncated shard is named before any read.
      problems = [m for m in verify(self.data_dir, self.name, checksums=False)
                  if 'older version' not in m and
                  any(m.startswith(f + ':') for f, _ in self._files)]
      if problems:
        raise CorruptShard(f'split {self.split!r} of {d}: {"; ".join(problems)}; prepare the '
                           'dataset again (data_prep ... --overwrite)')
      self._source = builder.as_data_source(split=self.split)
    return self._source

  def _file_of(self, i: int) -> str:
    for path, n in self._files:
      if i < n:
        return f'{path} (record {i} of that file)'
      i -= n
    return '<unknown file>'

  def _read(self, keys: list[int]) -> list[Any]:
    source = self._open()
    try:
      return source.__getitems__(keys)
    except Exception as e:  # pylint: disable=broad-except
      for k in keys:  # Find the record that fails, to name its file.
        try:
          source[k]
        except Exception:  # pylint: disable=broad-except
          raise CorruptShard(
              f'cannot read record {k} of split {self.split!r} from {self._file_of(k)}: '
              f'{type(e).__name__}: {e}; the shard is corrupt: prepare the dataset again '
              '(data_prep ... --overwrite)') from None
      raise

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i):
    if isinstance(i, slice):
      return self.__getitems__(range(*i.indices(self._len)))
    i = int(i)
    if not -self._len <= i < self._len:
      raise IndexError(f'index {i} out of range for split {self.split!r} of size {self._len}')
    return decode(self._read([i % self._len])[0])

  def __getitems__(self, keys: Iterable[int]) -> list[dict[str, Any]]:
    return [decode(r) for r in self._read([int(k) for k in keys])]

  def __getstate__(self):
    return {'data_dir': self.data_dir, 'name': self.name, 'split': self.split, '_len': self._len}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._source = None

  def __repr__(self):
    return f'SplitSource({self.data_dir!r}, {self.name!r}, {self.split!r}, len={self._len})'


def open_split(data_dir: str | os.PathLike, name: str, split: str) -> SplitSource:
  """Opens one split for random access.

  Args:
    data_dir: root passed to data_prep as --out.
    name: dataset name, e.g. 'eurosat'.
    split: 'train', 'test', 'train_lb_40', ...

  Returns:
    SplitSource: len() and [i] -> dict(image [H, W, C] uint8/uint16, label int, lat, lon
    np.float32, date str, filename str, index int).

  Raises:
    FileNotFoundError: naming the directory when the dataset is missing.
    KeyError: naming the directory and the available splits when the split is missing.
  """
  return SplitSource(data_dir, name, split)
