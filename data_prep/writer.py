"""The dataset writer: records of the one schema (`stssl_jax.data.records`) to a TFDS
ArrayRecord dataset, atomically, deterministically, with band statistics and file digests.

Only data_prep writes datasets; the library only reads them (`records.open_split`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import shutil
import tempfile
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from stssl_jax import faults
from stssl_jax.data import records


_SERIALIZERS: dict[int, Any] = {}


def serialize(features, example: Mapping[str, Any]) -> bytes:
  """`features.serialize_example`, with proto map keys in sorted order.

  TFDS serialises the tf.train.Example feature map in hash order, which changes from one
  process to the next, so two runs over the same input gave different shard bytes.
  """
  ser = _SERIALIZERS.get(id(features))
  if ser is None:
    ser = _SERIALIZERS[id(features)] = example_serializer.ExampleSerializer(
        features.get_serialized_info())
  return ser.get_tf_example(features.encode_example(example)).SerializeToString(
      deterministic=True)


@contextlib.contextmanager
def deterministic_serialization():
  """Within it, TFDS builders serialise records as `serialize` does (sorted map keys)."""
  cls = example_serializer.ExampleSerializer
  original = cls.serialize_example
  cls.serialize_example = lambda self, example: self.get_tf_example(example).SerializeToString(
      deterministic=True)
  try:
    yield
  finally:
    cls.serialize_example = original


def make_temp_dir(root: pathlib.Path, name: str) -> pathlib.Path:
  """A build folder `.stssl_<name>.tmp-<pid>-*` in `root`, after removing stale ones.

  A killed data_prep cannot clean up after itself; the next run removes every build folder
  of `name` whose process is gone (the pid in the name), so none is left behind for long.
  """
  prefix = f'.{records.tfds_name(name)}.tmp-'
  for old in root.glob(prefix + '*'):
    pid = old.name[len(prefix):].split('-', 1)[0]
    if not (pid.isdigit() and _alive(int(pid))):
      shutil.rmtree(old, ignore_errors=True)
  return pathlib.Path(tempfile.mkdtemp(prefix=f'{prefix}{os.getpid()}-', dir=root))


def _alive(pid: int) -> bool:
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class _StatsTap:
  """Counts classes per split and accumulates exact per-band pixel sums for one split."""

  def __init__(self, schema: records.Schema, stats_split: str):
    self.schema, self.stats_split = schema, stats_split
    self.class_counts: dict[str, list[int]] = {}
    channels = schema.image_shape[2]
    # Python ints: exact sums of squares, no overflow even for uint16 at BigEarthNet scale.
    self._sum, self._sumsq, self._n = [0] * channels, [0] * channels, 0

  def tap(self, split: str, examples: Iterable[Mapping[str, Any]]) -> Iterator[tuple[int, dict]]:
    """Yields (key, encoded example), with key = position, while collecting statistics."""
    counts = np.zeros(len(self.schema.class_names), np.int64)
    for i, example in enumerate(examples):
      example = dict(example)
      example.setdefault('index', i)
      rec = records.encode(example, self.schema)
      if self.schema.multilabel:
        counts += rec['label']
      else:
        counts[rec['label']] += 1
      if split == self.stats_split:
        pixels = rec['image'].reshape(-1, rec['image'].shape[-1]).astype(np.int64)
        # Per-image int64 sums are exact (< 2^63 for any uint16 patch below 2^31 pixels).
        self._sum = [a + int(b) for a, b in zip(self._sum, pixels.sum(0))]
        self._sumsq = [a + int(b) for a, b in zip(self._sumsq, (pixels * pixels).sum(0))]
        self._n += pixels.shape[0]
      yield i, rec
    self.class_counts[split] = counts.tolist()

  def band_stats(self) -> tuple[list[float], list[float]]:
    """Returns per-band (mean, std), divided by 255 for uint8 images, raw units for uint16."""
    if not self._n:
      raise ValueError(f'Band statistics split {self.stats_split!r} is empty or was not written')
    return band_stats(self._sum, self._sumsq, self._n, self.schema.image_dtype)


def band_stats(sums: Sequence[int], sumsqs: Sequence[int], n: int, image_dtype: str
               ) -> tuple[list[float], list[float]]:
  """Per-band (mean [C], std [C]) from exact integer pixel sums.

  Args:
    sums: [C] Python-int sums of the pixel values of each band.
    sumsqs: [C] Python-int sums of their squares.
    n: pixels per band.
    image_dtype: 'uint8' (statistics divided by 255) or 'uint16' (raw units).

  Returns:
    (mean [C], std [C]) as lists of floats (population std).
  """
  scale = 255.0 if image_dtype == 'uint8' else 1.0
  mean = [s / n / scale for s in sums]
  # Exact integer numerator n * sum(x^2) - sum(x)^2: no cancellation in float.
  std = [math.sqrt((n * q - s * s) / (n * n)) / scale for s, q in zip(sums, sumsqs)]
  return mean, std


def schema_metadata(schema: records.Schema, class_counts: Mapping[str, Sequence[int]],
                    band_mean: Sequence[float], band_std: Sequence[float],
                    stats_split: str) -> dict[str, Any]:
  """The metadata.json fields that every prepared dataset has (see load_info)."""
  return {
      'schema_version': records.SCHEMA_VERSION,
      'class_names': list(schema.class_names),
      'multilabel': schema.multilabel,
      'image_shape': list(schema.image_shape),
      'image_dtype': schema.image_dtype,
      'class_counts': {k: list(v) for k, v in class_counts.items()},
      'band_mean': list(band_mean),
      'band_std': list(band_std),
      'band_stats_split': stats_split,
      'band_stats_units': '[0, 1] (pixel / 255)' if schema.image_dtype == 'uint8' else 'raw DN',
  }


def install(built: pathlib.Path, data_dir: str | os.PathLike, name: str) -> None:
  """Moves a complete `built` (= <tmp>/stssl_<name>) to `dataset_root` with renames only.

  An existing dataset is moved aside into `built`'s parent first and restored if the final
  rename fails, so `records.dataset_root(data_dir, name)` is never a half-written dataset.
  """
  final = records.dataset_root(data_dir, name)
  old = built.parent / 'old' if final.exists() else None
  if old:
    os.rename(final, old)
  try:
    os.rename(built, final)
  except BaseException:
    if old:
      os.rename(old, final)
    raise


def _builder_cls(name: str, schema: records.Schema, split_fns, tap: _StatsTap, description: str):
  """Creates an unregistered GeneratorBasedBuilder class named `name` for one write."""

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(records.VERSION)
    # Nothing is downloaded, so there is no checksums file next to the code. Without this,
    # tfds 4.9.10 looks for one via `importlib_resources`, a package it only declares for
    # Python < 3.9, and fails with ModuleNotFoundError.
    code_path = None

    def _info(self):
      # Keys are positions; no shuffling keeps generation order on disk.
      return tfds.core.DatasetInfo(builder=self, description=description,
                                   features=schema.features(), disable_shuffling=True,
                                   metadata=tfds.core.MetadataDict())

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in split_fns}

    def _generate_examples(self, split):
      return tap.tap(split, split_fns[split]())

  _Builder.name = name
  return _Builder


def write_dataset(
    data_dir: str | os.PathLike,
    name: str,
    splits: Mapping[str, Callable[[], Iterable[Mapping[str, Any]]]],
    schema: records.Schema,
    metadata: Mapping[str, Any] | None = None,
    stats_split: str = 'train',
    overwrite: bool = False,
    description: str = '',
) -> pathlib.Path:
  """Writes a dataset of this schema atomically into `<data_dir>/<name>/<VERSION>`.

  Args:
    data_dir: root directory (shared by several datasets).
    name: dataset (builder) name, e.g. 'eurosat'.
    splits: split name -> zero-argument callable returning the split's examples (dicts as
      accepted by `encode`; a missing `index` defaults to the position in the split).
    schema: the dataset's records.Schema.
    metadata: extra JSON-serialisable metadata (e.g. source, labeled_splits, skipped).
    stats_split: split over which per-band mean/std are computed.
    overwrite: replace an existing dataset; otherwise an existing one is an error.
    description: free text stored in dataset_info.json.

  Returns:
    The dataset directory.
  """
  if stats_split not in splits:
    raise ValueError(f'stats_split {stats_split!r} is not among the splits {list(splits)}')
  root = pathlib.Path(data_dir)
  final = records.dataset_root(root, name)
  if final.exists() and not overwrite:
    raise FileExistsError(f'{final} already exists; pass overwrite=True to replace it')
  root.mkdir(parents=True, exist_ok=True)
  tmp = make_temp_dir(root, name)
  try:
    tap = _StatsTap(schema, stats_split)
    builder = _builder_cls(records.tfds_name(name), schema, splits, tap, description)(
        data_dir=str(tmp), file_format='array_record')
    with deterministic_serialization():
      builder.download_and_prepare(download_dir=str(tmp / 'downloads'))
    band_mean, band_std = tap.band_stats()
    info = dict(metadata or {})
    info.update(schema_metadata(schema, tap.class_counts, band_mean, band_std, stats_split))
    built = pathlib.Path(builder.data_dir)
    info['files'] = records.file_digests(built)
    with open(built / 'metadata.json', 'w') as f:
      json.dump(info, f, indent=1)
    faults.point('prep_built', 0)
    install(tmp / records.tfds_name(name), root, name)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return records.dataset_dir(root, name)
