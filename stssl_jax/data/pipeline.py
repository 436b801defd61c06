"""grain input pipeline: mixed labeled + unlabeled training batches, padded eval batches.

Training (METHOD 3.2, 3.6). Two independent, infinite, shuffled streams built as grain
`MapDataset`s, source -> ResizedRecords (resize once, memoised) -> EpochShuffle (shuffle +
infinite repeat) -> random_map (views):
  labeled    split `train_lb_{num_labels}` (`train` when num_labels == 0), weak view;
  unlabeled  split `train` (it includes the labeled images), weak + strong views.
Every epoch is a fresh permutation seeded by (stream seed, epoch), so each record appears
exactly once per pass over its split. In `_TrainBatches`, element `step` is the step's
batch: labeled stream elements [step * B_l, (step + 1) * B_l) and unlabeled ones
[step * B_u, (step + 1) * B_u), never partial. It becomes an `IterDataset`, with
`mp_prefetch` worker processes when config.data.num_workers > 0.

Determinism. Every random choice is a function of (config.seed, stream, position in the
stream): shuffles are seeded per stream and epoch, and `random_map` hands the transform a
Philox generator keyed by the stream's seed with the element's global stream index as
counter. So batch `step` is the same whatever the worker count, the process count or a
restart, and the iterator state (`get_state()`: the next step, plus per-worker positions
under mp_prefetch) is all a checkpoint needs (`grain.checkpoint.CheckpointSave(it)`).

Multi-host: process p of P yields rows [p * B / P, (p + 1) * B / P) of every global batch,
so concatenating the processes' batches in process order gives the global batch.

Evaluation: a plain Python generator over the split in order, resize + normalise, padded
to the global eval batch with `mask` False on padding rows; nothing is dropped.

Only the RGB uint8 (EuroSAT) transforms of METHOD 3.2 are implemented here.
"""

import math
import sys
from typing import Any, Iterator, Mapping, Optional, Sequence

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from stssl_jax import metadata
from stssl_jax.data import augment
from stssl_jax.data import records

# Stream ids, folded into the seeds so that the two samplers are independent.
_LABELED, _UNLABELED = 0, 1


def dataset_info(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Returns `records.load_info` of the configured dataset (class names, split sizes...)."""
  return records.load_info(config.data.data_dir, config.data.name)


def labeled_split(config: ml_collections.ConfigDict, info: Mapping[str, Any]) -> str:
  """Name of the labeled split: `train_lb_{num_labels}`, or the train split for 0."""
  n = config.data.num_labels
  if n == 0:
    return config.data.train_split
  if n not in info.get('labeled_splits', {}):
    raise ValueError(f'No labeled subset with num_labels={n}; the prepared dataset has '
                     f'{sorted(info.get("labeled_splits", {}))}')
  return info['labeled_splits'][n]


def _process(process_index: Optional[int], process_count: Optional[int]) -> tuple[int, int]:
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if not 0 <= index < count:
    raise ValueError(f'process_index {index} outside [0, {count})')
  return index, count


def _local_rows(global_batch: int, process_index: int, process_count: int,
                what: str) -> range:
  """Rows of the global batch that this process yields."""
  if global_batch % process_count:
    raise ValueError(f'{what} {global_batch} is not divisible by process_count '
                     f'{process_count}')
  local = global_batch // process_count
  return range(process_index * local, (process_index + 1) * local)


def _stream_seeds(seed: int, stream: int) -> tuple[int, int]:
  """(shuffle seed, augmentation seed) of one stream, both in [0, 2**32)."""
  shuffle_seed, aug_seed = np.random.SeedSequence([seed, stream]).generate_state(2)
  return int(shuffle_seed), int(aug_seed)


def _checked_image(record: Mapping[str, Any]) -> np.ndarray:
  image = np.asarray(record['image'])
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'The EuroSAT transforms need uint8 [H, W, 3] images, got '
                     f'{image.dtype}{list(image.shape)} ({record.get("filename", "?")})')
  return image


def _meta_fields(record: Mapping[str, Any]) -> dict[str, Any]:
  return {'label': record['label'], 'lat': record['lat'], 'lon': record['lon'],
          'date': record['date']}


class ResizedRecords(grain.MapDataset):
  """record -> {image uint8 [S, S, 3] (resized, read-only), label, lat, lon, date}.

  Memoised per process when the whole split fits in `max_cache_bytes`: reading and
  decoding a record costs ~130 us and resizing ~40 us, more than the strong view itself,
  while EuroSAT's 21,600 training images take 66 MB at 32 px. METHOD 3.2 recommends
  resizing once. Each worker process fills its own cache during the first epoch.
  """

  def __init__(self, parent: grain.MapDataset, size: int,
               max_cache_bytes: int = 1 << 30):
    super().__init__(parent)
    self._size = size
    self._cached = len(parent) * size * size * 3 <= max_cache_bytes
    self._cache: dict[int, dict[str, Any]] = {}

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f'ResizedRecords(size={self._size}, cached={self._cached})'

  def _resized(self, record: Mapping[str, Any]) -> dict[str, Any]:
    image = augment.resize(_checked_image(record), self._size)
    return {'image': image, **_meta_fields(record)}

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._getitems([index])[0]

  def _getitems(self, indices: Sequence[int]):
    indices = [i % len(self._parent) for i in indices]
    missing = sorted({i for i in indices if i not in self._cache})
    read = self._parent._getitems(missing)  # pylint: disable=protected-access
    fresh = dict(zip(missing, map(self._resized, read)))
    if self._cached:
      self._cache.update(fresh)
      return [self._cache[i] for i in indices]
    return [fresh[i] for i in indices]

  def __getstate__(self):
    # Worker processes start with an empty cache instead of a pickled copy.
    return {**self.__dict__, '_cache': {}}


class EpochShuffle(grain.MapDataset):
  """Infinite MapDataset: a fresh seeded permutation of the parent for every epoch.

  Element i is parent[perm_e[i mod N]] with e = i // N and perm_e =
  default_rng([seed, e]).permutation(N). Same contract as grain's `shuffle().repeat()`,
  but grain's per-index `index_shuffle` costs 0.2-4 ms per element on the tiny labeled
  splits (N = 10..80), while one permutation per epoch is microseconds.
  """

  _MAX_CACHED_EPOCHS = 4

  def __init__(self, parent: grain.MapDataset, seed: int):
    super().__init__(parent)
    if not len(parent):
      raise ValueError('Cannot shuffle an empty split')
    self._seed = seed
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f'EpochShuffle(seed={self._seed})'

  def _permutation(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self._seed, epoch]).permutation(len(self._parent))
      # Readers move forward through epochs; keep only the most recent few.
      while len(self._perms) >= self._MAX_CACHED_EPOCHS:
        self._perms.pop(min(self._perms))
      self._perms[epoch] = perm
    return perm

  def _source_index(self, index: int) -> int:
    epoch, position = divmod(index, len(self._parent))
    return int(self._permutation(epoch)[position])

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._source_index(index)]

  def _getitems(self, indices: Sequence[int]):
    source_indices = [self._source_index(i) for i in indices]
    return self._parent._getitems(source_indices)  # pylint: disable=protected-access

  def __getstate__(self):
    # Workers rebuild their own cache.
    return {**self.__dict__, '_perms': {}}


class WeakView:
  """random_map transform: resized record -> {weak uint8 [S, S, 3], label, lat, lon, date}."""

  def __init__(self, padding: int):
    self.padding = padding

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {'weak': augment.weak(record['image'], rng, self.padding), **_meta_fields(record)}


class WeakStrongView:
  """random_map transform: resized record -> {weak, strong uint8 [S, S, 3], label, ...}.

  The two views' random draws follow each other on the record's generator, so they are
  independent.
  """

  def __init__(self, padding: int, n_ops: int):
    self.padding, self.n_ops = padding, n_ops

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {'weak': augment.weak(record['image'], rng, self.padding),
            'strong': augment.strong(record['image'], rng, self.padding, self.n_ops),
            **_meta_fields(record)}


class MetaEncoder:
  """Rows' lat/lon/date -> float32 [B, 4], with the METHOD 1.4 switches and dummy date."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.no_loc, self.no_time = config.data.no_loc, config.data.no_time
    self.dummy_date = config.data.dummy_date

  def __call__(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
    lat, lon, dates = metadata.apply_switches(
        [r['lat'] for r in rows], [r['lon'] for r in rows],
        [r['date'] or self.dummy_date for r in rows], self.no_loc, self.no_time)
    return metadata.encode(lat, lon, dates)


def _labels(rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
  """int32 [B] class indices (or [B, C] multi-hot)."""
  return np.asarray([r['label'] for r in rows]).astype(np.int32)


class _TrainBatches(grain.MapDataset):
  """Infinite MapDataset whose element `step` is this process's part of batch `step`."""

  def __init__(self, labeled: grain.MapDataset, unlabeled: grain.MapDataset,
               lb_rows: range, ulb_rows: range, global_lb: int, global_ulb: int,
               meta: MetaEncoder):
    super().__init__([labeled, unlabeled])
    self._lb_rows, self._ulb_rows = lb_rows, ulb_rows
    self._global_lb, self._global_ulb = global_lb, global_ulb
    self._meta = meta

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f'_TrainBatches(lb_rows={self._lb_rows}, ulb_rows={self._ulb_rows})'

  def __getitem__(self, step):
    if isinstance(step, slice):
      return self.slice(step)
    labeled, unlabeled = self._parents
    # pylint: disable=protected-access  # _getitems reads a whole batch from the source.
    lb = labeled._getitems([step * self._global_lb + j for j in self._lb_rows])
    ulb = unlabeled._getitems([step * self._global_ulb + j for j in self._ulb_rows])
    # pylint: enable=protected-access
    return {
        'lb_image': augment.normalize(np.stack([r['weak'] for r in lb])),
        'lb_label': _labels(lb),
        'lb_meta': self._meta(lb),
        'ulb_image_weak': augment.normalize(np.stack([r['weak'] for r in ulb])),
        'ulb_image_strong': augment.normalize(np.stack([r['strong'] for r in ulb])),
        'ulb_meta': self._meta(ulb),
        'ulb_label': _labels(ulb),
    }


def _stream(source: Sequence[Mapping[str, Any]], size: int, seed: int, stream: int,
            view) -> grain.MapDataset:
  """source -> resize (memoised) -> per-epoch shuffle, forever -> per-element random view."""
  shuffle_seed, aug_seed = _stream_seeds(seed, stream)
  resized = ResizedRecords(grain.MapDataset.source(source), size)
  return EpochShuffle(resized, shuffle_seed).random_map(view, seed=aug_seed)


def train_dataset(config: ml_collections.ConfigDict,
                  labeled_source: Sequence[Mapping[str, Any]],
                  unlabeled_source: Sequence[Mapping[str, Any]],
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> grain.IterDataset:
  """Builds the training IterDataset from two random-access record sources.

  Args:
    config: reads seed, batch_size, uratio and data.{image_size, crop_padding,
      randaugment_n, num_workers, prefetch, no_loc, no_time, dummy_date}.
    labeled_source: sequence of record dicts (records schema) of the labeled split.
    unlabeled_source: sequence of record dicts of the unlabeled pool.
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).

  Returns:
    IterDataset of batch dicts (see `train_iterator`).
  """
  p, n = _process(process_index, process_count)
  b_l = config.batch_size
  b_u = config.uratio * config.batch_size
  size, pad = config.data.image_size, config.data.crop_padding
  labeled = _stream(labeled_source, size, config.seed, _LABELED, WeakView(pad))
  unlabeled = _stream(unlabeled_source, size, config.seed, _UNLABELED,
                      WeakStrongView(pad, config.data.randaugment_n))
  batches = _TrainBatches(labeled, unlabeled, _local_rows(b_l, p, n, 'batch_size'),
                          _local_rows(b_u, p, n, 'uratio * batch_size'), b_l, b_u,
                          MetaEncoder(config))
  prefetch = config.data.prefetch
  # One reader thread per process overlaps batch making with training; grain's default
  # (16 threads, 500 elements) would compute hundreds of batches ahead.
  ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=1 if prefetch else 0,
                                                 prefetch_buffer_size=prefetch))
  if config.data.num_workers > 0:
    # grain 0.2.18's mp_prefetch reads an absl flag and raises UnparsedFlagAccessError
    # outside absl.app (tests, notebooks); marking the flags parsed keeps their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.num_workers, per_worker_buffer_size=max(1, prefetch)))
  return ds


def train_iterator(config: ml_collections.ConfigDict,
                   process_index: Optional[int] = None,
                   process_count: Optional[int] = None) -> grain.DatasetIterator:
  """Infinite iterator of this process's training batches.

  Each element is a dict of numpy arrays, with B_l = batch_size / process_count and
  B_u = uratio * batch_size / process_count rows:
    lb_image float32 [B_l, S, S, 3] (weak view, in [-1, 1]), lb_label int32 [B_l],
    lb_meta float32 [B_l, 4], ulb_image_weak / ulb_image_strong float32 [B_u, S, S, 3],
    ulb_meta float32 [B_u, 4], ulb_label int32 [B_u] (diagnostics only, never a loss).

  Args:
    config: the run config (data.name, data.data_dir, data.num_labels, data.train_split,
      and the fields listed in `train_dataset`).
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).

  Returns:
    grain DatasetIterator; `get_state()` / `set_state()` (or
    `grain.checkpoint.CheckpointSave/CheckpointRestore` with orbax) resume exactly.
  """
  info = dataset_info(config)
  data = config.data
  labeled = records.open_split(data.data_dir, data.name, labeled_split(config, info))
  unlabeled = records.open_split(data.data_dir, data.name, data.train_split)
  return iter(train_dataset(config, labeled, unlabeled, process_index, process_count))


def _read(source: Sequence[Mapping[str, Any]], indices: Sequence[int]) -> list:
  getitems = getattr(source, '__getitems__', None)
  return list(getitems(indices)) if getitems else [source[i] for i in indices]


def eval_batches_from_source(config: ml_collections.ConfigDict,
                             source: Sequence[Mapping[str, Any]],
                             process_index: Optional[int] = None,
                             process_count: Optional[int] = None
                             ) -> Iterator[dict[str, np.ndarray]]:
  """Yields padded, masked eval batches of `source` in order (see `eval_batches`)."""
  p, n = _process(process_index, process_count)
  b = config.eval_batch_size
  rows = _local_rows(b, p, n, 'eval_batch_size')
  size = config.data.image_size
  meta = MetaEncoder(config)
  total = len(source)
  # Label shape from a real record: a process's slice of the last batch may be all padding.
  label_shape = np.shape(source[0]['label']) if total else ()
  for k in range(math.ceil(total / b)):
    recs = _read(source, [k * b + j for j in rows if k * b + j < total])
    image = np.zeros((len(rows), size, size, 3), np.float32)
    label = np.zeros((len(rows),) + label_shape, np.int32)
    meta_rows = np.zeros((len(rows), 4), np.float32)
    if recs:
      image[:len(recs)] = np.stack([augment.eval_view(_checked_image(r), size) for r in recs])
      label[:len(recs)] = _labels(recs)
      meta_rows[:len(recs)] = meta(recs)
    yield {'image': image, 'label': label, 'meta': meta_rows,
           'mask': np.arange(len(rows)) < len(recs)}


def eval_batches(config: ml_collections.ConfigDict, split: str,
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's part of every eval batch of `split`, in order, once.

  There are ceil(N / eval_batch_size) global batches; process p gets rows
  [p * Be, (p + 1) * Be) of each, Be = eval_batch_size / process_count. Rows past the end
  of the split are padding: zero image, label and meta, `mask` False.

  Args:
    config: reads data.{data_dir, name, image_size, no_loc, no_time, dummy_date} and
      eval_batch_size.
    split: split name, e.g. config.data.eval_split.
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).

  Yields:
    dict: image float32 [Be, S, S, 3] (resize + normalise), label int32 [Be],
    meta float32 [Be, 4], mask bool [Be].
  """
  source = records.open_split(config.data.data_dir, config.data.name, split)
  yield from eval_batches_from_source(config, source, process_index, process_count)


def num_eval_batches(config: ml_collections.ConfigDict, split: str) -> int:
  """ceil(N / eval_batch_size): global eval batches of `split` (same on every process)."""
  return math.ceil(dataset_info(config)['splits'][split] / config.eval_batch_size)
