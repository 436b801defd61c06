"""grain input pipeline: mixed labeled + unlabeled training batches, padded eval batches.

Training (METHOD 3.2, 3.5, 3.6). Two independent, infinite streams built as grain
`MapDataset`s, source -> PreparedRecords (image prepared once, memoised) -> sampler
(`streams.EpochShuffle` or `streams.OriginalSampler`, config.data.sampler) -> random_map
(views):
  labeled    split `train_lb_{num_labels}` / the `labeled_splits` entry of
             config.data.label_fraction (the train split when both are 0), weak view;
  unlabeled  split `train` (it includes the labeled images), weak + strong views.
In `_TrainBatches`, element `step` is the step's batch: labeled stream elements
[step * B_l, (step + 1) * B_l) and unlabeled ones [step * B_u, (step + 1) * B_u), never
partial. It becomes an `IterDataset`, with `mp_prefetch` worker processes when
config.data.num_workers > 0.

Images. The record dtype picks the transforms: uint8 RGB -> EuroSAT (`augment`, PIL
resize once, USB RandAugment + Cutout, [-1, 1]); uint16 with any number of bands ->
BigEarthNet (`augment_ms`: clip-scaled with the dataset's band statistics and resized
once, cached as float16; kornia-style RandAugment from config.data.ms_policy; [-2, 2]).
Batches are float32 [B, S, S, C] and C must equal config.data.num_channels.
Labels come from the record field config.data.label_set: int32 [B] class indices, or
float32 [B, num_classes] multi-hot when the field is a vector.

Samplers (METHOD 3.6). 'seeded' (default): every pass over a split is a fresh permutation
seeded by (config.seed, stream, pass). 'original': the released sampler, "epochs" of
num_steps // sampler_epochs steps, each a run of permutations seeded by the epoch index
alone (same order for every run seed and for equal-sized labeled/unlabeled splits).

Determinism. Every random choice is a function of (config.seed, stream, position in the
stream): sampler orders are functions of the element index, and `random_map` hands the
transform a Philox generator keyed by the stream's seed with the element's global stream
index as counter. So batch `step` is the same whatever the worker count, the process count
or a restart, and the iterator state (`get_state()`: the next step, plus per-worker
positions under mp_prefetch) is all a checkpoint needs (`grain.checkpoint.CheckpointSave`).

Multi-host: process p of P yields rows [p * B / P, (p + 1) * B / P) of every global batch,
so concatenating the processes' batches in process order gives the global batch.

Evaluation: a plain Python generator over the split in order, resize (+ clip-scale) and
normalise, padded to the global eval batch with `mask` False on padding rows; nothing is
dropped.
"""

import math
import sys
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from stssl_jax import algorithms, metadata
from stssl_jax.data import records
from stssl_jax.data import streams
from stssl_jax.data import transforms

# Stream ids, folded into the seeds so that the two samplers are independent.
_LABELED, _UNLABELED = 0, 1
SAMPLERS = ('seeded', 'original')
# Text fields of a record that evaluation carries per sample (per-country/season metrics),
# as fixed-width UTF-8 bytes `<field>_utf8` uint8 [B, TEXT_BYTES]: numeric, so they travel
# through the jitted eval gather like the labels, on one host or many.
GROUP_FIELDS = ('country', 'season')
TEXT_BYTES = 32
TEXT_SUFFIX = '_utf8'


def encode_text(values: Sequence[Any]) -> np.ndarray:
  """str or bytes [N] -> uint8 [N, TEXT_BYTES], UTF-8, zero-padded (longer ones cut)."""
  out = np.zeros((len(values), TEXT_BYTES), np.uint8)
  for i, v in enumerate(values):
    b = (v if isinstance(v, bytes) else str(v).encode('utf-8'))[:TEXT_BYTES]
    out[i, :len(b)] = np.frombuffer(b, np.uint8)
  return out


def decode_text(codes: np.ndarray) -> np.ndarray:
  """uint8 [N, TEXT_BYTES] -> str [N] (inverse of `encode_text`)."""
  return np.array([bytes(row).rstrip(b'\0').decode('utf-8', 'replace')
                   for row in np.asarray(codes, np.uint8)], dtype=str)


def dataset_info(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Returns `records.load_info` of the configured dataset (class names, split sizes...)."""
  return records.load_info(config.data.data_dir, config.data.name)


def labeled_split(config: ml_collections.ConfigDict, info: Mapping[str, Any]) -> str:
  """Name of the labeled split.

  config.data.label_fraction > 0 (BigEarthNet): `info['labeled_splits']` keyed by that
  fraction. Else config.data.num_labels > 0 (EuroSAT): keyed by that count. Both 0: the
  train split (all labeled). Setting both is an error.
  """
  n, frac = config.data.num_labels, config.data.label_fraction
  available = info.get('labeled_splits', {})
  if n and frac:
    raise ValueError(f'Set config.data.num_labels ({n}) or config.data.label_fraction '
                     f'({frac}), not both')
  if not n and not frac:
    return config.data.train_split
  key = next((k for k in available if math.isclose(float(k), frac or n)), None)
  if key is None:
    what = f'label_fraction={frac}' if frac else f'num_labels={n}'
    raise ValueError(f'No labeled subset with {what}; the prepared dataset has '
                     f'{sorted(available)}')
  return available[key]


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


def _label_key(config: ml_collections.ConfigDict, record: Mapping[str, Any]) -> str:
  key = config.data.label_set
  if key not in record:
    raise ValueError(f'config.data.label_set={key!r} is not a record field; records have '
                     f'{sorted(record)}')
  return key


class _Prepare:
  """record -> {image: prepared, label (from label_key), lat, lon, date}."""

  def __init__(self, t: transforms.ImageTransforms, label_key: str):
    self.t, self.label_key = t, label_key

  def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
    return {'image': self.t.prepare(self.t.image_of(record)),
            'label': record[self.label_key], 'lat': record['lat'], 'lon': record['lon'],
            'date': record['date']}


def _meta_fields(record: Mapping[str, Any]) -> dict[str, Any]:
  return {'label': record['label'], 'lat': record['lat'], 'lon': record['lon'],
          'date': record['date']}


class WeakView:
  """random_map transform: prepared record -> {weak view, label, lat, lon, date}."""

  def __init__(self, t: transforms.ImageTransforms):
    self.t = t

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {'weak': self.t.weak(record['image'], rng), **_meta_fields(record)}


class WeakStrongView:
  """random_map transform: prepared record -> {weak, strong views, label, ...}.

  The two views' random draws follow each other on the record's generator, so they are
  independent.
  """

  def __init__(self, t: transforms.ImageTransforms):
    self.t = t

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    return {'weak': self.t.weak(record['image'], rng),
            'strong': self.t.strong(record['image'], rng), **_meta_fields(record)}


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
  """int32 [B] class indices, or float32 [B, C] multi-hot for vector labels."""
  labels = np.asarray([r['label'] for r in rows])
  return labels.astype(np.float32 if labels.ndim > 1 else np.int32)


class _TrainBatches(grain.MapDataset):
  """Infinite MapDataset whose element `step` is this process's part of batch `step`."""

  def __init__(self, labeled: grain.MapDataset, unlabeled: grain.MapDataset,
               lb_rows: range, ulb_rows: range, global_lb: int, global_ulb: int,
               meta: MetaEncoder, normalize: Callable[[np.ndarray], np.ndarray]):
    super().__init__([labeled, unlabeled])
    self._lb_rows, self._ulb_rows = lb_rows, ulb_rows
    self._global_lb, self._global_ulb = global_lb, global_ulb
    self._meta, self._normalize = meta, normalize

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
    norm = self._normalize
    extra = ({'lb_image_strong': norm(np.stack([r['strong'] for r in lb]))}
             if 'strong' in lb[0] else {})
    return {**extra,
        'lb_image': norm(np.stack([r['weak'] for r in lb])),
        'lb_label': _labels(lb),
        'lb_meta': self._meta(lb),
        'ulb_image_weak': norm(np.stack([r['weak'] for r in ulb])),
        'ulb_image_strong': norm(np.stack([r['strong'] for r in ulb])),
        'ulb_meta': self._meta(ulb),
        'ulb_label': _labels(ulb),
    }


def _stream(config: ml_collections.ConfigDict, source: Sequence[Mapping[str, Any]],
            t: transforms.ImageTransforms, stream: int, global_batch: int,
            view) -> grain.MapDataset:
  """source -> prepare (memoised) -> sampler, forever -> per-element random view."""
  shuffle_seed, aug_seed = _stream_seeds(config.seed, stream)
  prepared = streams.PreparedRecords(
      grain.MapDataset.source(source), _Prepare(t, _label_key(config, source[0])),
      t.prepared_bytes, config.data.cache_max_bytes)
  sampler = config.data.sampler
  if sampler == 'seeded':
    ordered = streams.EpochShuffle(prepared, shuffle_seed)
  elif sampler == 'original':
    steps_per_epoch = config.num_steps // config.data.sampler_epochs
    if steps_per_epoch < 1:
      raise ValueError(f'num_steps={config.num_steps} < sampler_epochs='
                       f'{config.data.sampler_epochs}')
    ordered = streams.OriginalSampler(prepared, steps_per_epoch * global_batch)
  else:
    raise ValueError(f'config.data.sampler must be one of {SAMPLERS}, got {sampler!r}')
  return ordered.random_map(view, seed=aug_seed)


def train_dataset(config: ml_collections.ConfigDict,
                  labeled_source: Sequence[Mapping[str, Any]],
                  unlabeled_source: Sequence[Mapping[str, Any]],
                  process_index: Optional[int] = None,
                  process_count: Optional[int] = None,
                  info: Optional[Mapping[str, Any]] = None) -> grain.IterDataset:
  """Builds the training IterDataset from two random-access record sources.

  Args:
    config: reads seed, batch_size, uratio, num_steps and data.{image_size, crop_padding,
      num_channels, label_set, randaugment_n, ms_*, sampler, sampler_epochs,
      cache_max_bytes, num_workers, prefetch, no_loc, no_time, dummy_date}.
    labeled_source: sequence of record dicts (records schema) of the labeled split.
    unlabeled_source: sequence of record dicts of the unlabeled pool.
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).
    info: dataset info (`records.load_info`); needed for uint16 images (band stats).

  Returns:
    IterDataset of batch dicts (see `train_iterator`).
  """
  p, n = _process(process_index, process_count)
  b_l = config.batch_size
  b_u = config.uratio * config.batch_size
  t = transforms.for_records(config, unlabeled_source[0]['image'], info)
  # DeFixMatch also trains on strong views of the labeled images (METHOD 7.3).
  lb_strong = 'lb_strong' in algorithms.get(config.algorithm).needs(config)
  labeled = _stream(config, labeled_source, t, _LABELED, b_l,
                    WeakStrongView(t) if lb_strong else WeakView(t))
  unlabeled = _stream(config, unlabeled_source, t, _UNLABELED, b_u, WeakStrongView(t))
  batches = _TrainBatches(labeled, unlabeled, _local_rows(b_l, p, n, 'batch_size'),
                          _local_rows(b_u, p, n, 'uratio * batch_size'), b_l, b_u,
                          MetaEncoder(config), t.normalize)
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
  B_u = uratio * batch_size / process_count rows, S = image_size, C = num_channels:
    lb_image float32 [B_l, S, S, C] (weak view; [-1, 1] EuroSAT, [-2, 2] multi-band),
    lb_label int32 [B_l] (or float32 multi-hot [B_l, num_classes]), lb_meta float32
    [B_l, 4], ulb_image_weak / ulb_image_strong float32 [B_u, S, S, C], ulb_meta float32
    [B_u, 4], ulb_label like lb_label with B_u rows (diagnostics only, never a loss).

  Args:
    config: the run config (data.name, data.data_dir, data.num_labels,
      data.label_fraction, data.train_split, and the fields listed in `train_dataset`).
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
  return iter(train_dataset(config, labeled, unlabeled, process_index, process_count, info))


def _read(source: Sequence[Mapping[str, Any]], indices: Sequence[int]) -> list:
  getitems = getattr(source, '__getitems__', None)
  return list(getitems(indices)) if getitems else [source[i] for i in indices]


def eval_batches_from_source(config: ml_collections.ConfigDict,
                             source: Sequence[Mapping[str, Any]],
                             process_index: Optional[int] = None,
                             process_count: Optional[int] = None,
                             info: Optional[Mapping[str, Any]] = None
                             ) -> Iterator[dict[str, np.ndarray]]:
  """Yields padded, masked eval batches of `source` in order (see `eval_batches`)."""
  p, n = _process(process_index, process_count)
  b = config.eval_batch_size
  rows = _local_rows(b, p, n, 'eval_batch_size')
  total = len(source)
  if not total:
    return
  # Shapes from a real record: a process's slice of the last batch may be all padding.
  first = source[0]
  t = transforms.for_records(config, first['image'], info)
  key = _label_key(config, first)
  label = np.asarray(first[key])
  label_dtype = np.float32 if label.ndim else np.int32
  size, meta = config.data.image_size, MetaEncoder(config)
  text = [f for f in GROUP_FIELDS if f in first]
  for k in range(math.ceil(total / b)):
    recs = _read(source, [k * b + j for j in rows if k * b + j < total])
    batch = {'image': np.zeros((len(rows), size, size, t.channels), np.float32),
             'label': np.zeros((len(rows),) + label.shape, label_dtype),
             'meta': np.zeros((len(rows), metadata.META_DIM), np.float32),
             'mask': np.arange(len(rows)) < len(recs)}
    for f in text:
      batch[f + TEXT_SUFFIX] = np.zeros((len(rows), TEXT_BYTES), np.uint8)
    if recs:
      batch['image'][:len(recs)] = np.stack([t.eval_image(t.image_of(r)) for r in recs])
      batch['label'][:len(recs)] = _labels([{'label': r[key]} for r in recs])
      batch['meta'][:len(recs)] = meta(recs)
      for f in text:
        batch[f + TEXT_SUFFIX][:len(recs)] = encode_text([r[f] for r in recs])
    yield batch


def eval_batches(config: ml_collections.ConfigDict, split: str,
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's part of every eval batch of `split`, in order, once.

  There are ceil(N / eval_batch_size) global batches; process p gets rows
  [p * Be, (p + 1) * Be) of each, Be = eval_batch_size / process_count. Rows past the end
  of the split are padding: zero image, label and meta, `mask` False.

  Args:
    config: reads data.{data_dir, name, image_size, num_channels, label_set, no_loc,
      no_time, dummy_date} and eval_batch_size.
    split: split name, e.g. config.data.eval_split.
    process_index: this process (default jax.process_index()).
    process_count: number of processes (default jax.process_count()).

  Yields:
    dict: image float32 [Be, S, S, C] (resize (+ clip-scale) + normalise), label int32
    [Be] (or float32 multi-hot [Be, num_classes]), meta float32 [Be, 4], mask bool [Be];
    and, where the records have them, country_utf8 / season_utf8 uint8 [Be, TEXT_BYTES]
    (`decode_text`).
  """
  source = records.open_split(config.data.data_dir, config.data.name, split)
  yield from eval_batches_from_source(config, source, process_index, process_count,
                                      dataset_info(config))


def num_eval_batches(config: ml_collections.ConfigDict, split: str) -> int:
  """ceil(N / eval_batch_size): global eval batches of `split` (same on every process)."""
  return math.ceil(dataset_info(config)['splits'][split] / config.eval_batch_size)
