"""Parallel, resumable conversion of many raw items into one TFDS ArrayRecord dataset.

For datasets too large to write in one pass through a TFDS builder (BigEarthNet: 590k patch
folders), the work is cut into shard tasks of consecutive items of one split:

1. `run_tasks`: worker processes read their shard's items, encode and serialise each record
   with the dataset's records.Schema and write `<work>/<split>-<k>.array_record`. A JSON
   sidecar with the shard's statistics (record names, labels, exact band sums, skipped
   items) is written last, atomically (temp file + rename): it is the done-marker. A killed
   run restarts with the same work directory and redoes only shards without a sidecar.
2. `load_summaries` + `assemble`: the finished shard files become the TFDS splits' shards
   via hard links (no copy), labeled-subset splits are written as verbatim copies of
   selected `train` records, `tfds.folder_dataset.write_metadata` writes the TFDS metadata,
   `metadata.json` is added, and the dataset is renamed into place (writer.install).

Indices: a worker gives its records `index = task.start + position among the shard's good
records`, where task.start is the shard's first position in the split list. That is the
final position unless items were skipped (--skip_bad) in an earlier shard; only then are the
later shards rewritten with shifted indices during assembly.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
from typing import Any, Callable, Mapping, Sequence

from array_record.python import array_record_data_source
from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from data_prep import common
from stssl_jax import atomic
from data_prep import writer as ds_writer
from stssl_jax.data import records

_WRITER_OPTIONS = 'group_size:1'  # What TFDS uses: one record per chunk, fast random access.


class BadItem(Exception):
  """An unusable raw item; `file` names the offending file, `reason` says what is wrong."""

  def __init__(self, file: str, reason: str):
    super().__init__(f'{file}: {reason}')
    self.file, self.reason = str(file), reason


@dataclasses.dataclass(frozen=True)
class Task:
  """One shard: consecutive items of one split.

  Attributes:
    split: split name.
    shard: shard number within the split.
    start: position of the first item in the split's item list.
    items: picklable per-item inputs handed to the reader.
  """
  split: str
  shard: int
  start: int
  items: tuple


def make_tasks(splits: Mapping[str, Sequence[Any]], shard_size: int) -> list[Task]:
  """Cuts each split's items into shards of `shard_size` (the last one may be shorter)."""
  if shard_size < 1:
    raise common.PrepError(f'--shard_size {shard_size}: must be >= 1')
  return [Task(split, k, start, tuple(items[start:start + shard_size]))
          for split, items in splits.items()
          for k, start in enumerate(range(0, len(items), shard_size))]


def _paths(work: pathlib.Path, task: Task) -> tuple[pathlib.Path, pathlib.Path]:
  stem = f'{task.split}-{task.shard:05d}'
  return work / f'{stem}.array_record', work / f'{stem}.json'


def _write_json(path: pathlib.Path, obj: Any) -> None:
  """Writes JSON atomically: readers see the old file, no file, or the complete new one."""
  atomic.write_json(os.fspath(path), obj)


def _run_task(args) -> tuple[Task, int]:
  """Converts one shard (in a worker process); returns (task, records written)."""
  task, reader, schema, skip_bad, work, stats = args
  data_path, done_path = _paths(work, task)
  features = schema.features()
  bad = common.BadFiles(skip=skip_bad)
  channels = schema.image_shape[2]
  sums, sumsqs, pixels = [0] * channels, [0] * channels, 0
  names, labels, side = [], [], {}
  extras = {k: [] for k, _ in schema.extra_multihot}
  tmp = data_path.with_name(data_path.name + '.tmp')
  writer = array_record_module.ArrayRecordWriter(os.fspath(tmp), _WRITER_OPTIONS)
  try:
    for item in task.items:
      try:
        example = reader(item)
      except BadItem as e:
        bad.add(e.file, e.reason)  # Raises PrepError unless --skip_bad.
        continue
      for key in [k for k in example if k.startswith('_')]:  # Side info, not stored.
        side.setdefault(key[1:], []).append(example.pop(key))
      example['index'] = task.start + len(names)
      rec = records.encode(example, schema)
      writer.write(ds_writer.serialize(features, rec))
      names.append(rec['filename'])
      labels.append(np.flatnonzero(rec['label']).tolist() if schema.multilabel
                    else rec['label'])
      for key in extras:
        extras[key].append(np.flatnonzero(rec[key]).tolist())
      if stats:
        # Per-image int64 sums are exact; Python ints accumulate without overflow.
        pix = rec['image'].reshape(-1, channels).astype(np.int64)
        sums = [a + int(b) for a, b in zip(sums, pix.sum(0))]
        sumsqs = [a + int(b) for a, b in zip(sumsqs, (pix * pix).sum(0))]
        pixels += pix.shape[0]
  finally:
    writer.close()
  os.replace(tmp, data_path)
  _write_json(done_path, {
      'n': len(names), 'names': names, 'labels': labels, 'extras': extras, 'side': side,
      'sums': [str(s) for s in sums], 'sumsqs': [str(s) for s in sumsqs], 'pixels': pixels,
      'bad': bad.items})
  return task, len(names)


def run_tasks(tasks: Sequence[Task], reader: Callable[[Any], dict], schema: records.Schema,
              work: pathlib.Path, workers: int = 1, skip_bad: bool = False,
              stats_split: str = 'train') -> int:
  """Converts every task whose done-marker is missing; returns how many shards were built.

  Args:
    tasks: the shards (make_tasks).
    reader: picklable callable item -> example dict as for records.encode (without `index`;
      keys starting with '_' are side information kept in the summary, not stored);
      raises BadItem for an unusable item.
    schema: the record schema.
    work: work directory (created if missing).
    workers: processes; 1 runs in this process. Workers are spawned, not forked, because
      the caller may have started threads (JAX, TFDS) that fork would copy mid-state.
    skip_bad: skip items whose reader raises BadItem (recorded in the summary).
    stats_split: split whose band sums are accumulated.

  Raises:
    common.PrepError: naming the file of the first bad item when not skip_bad.
  """
  work.mkdir(parents=True, exist_ok=True)
  pending = [t for t in tasks if not _paths(work, t)[1].is_file()]
  args = [(t, reader, schema, skip_bad, work, t.split == stats_split) for t in pending]
  done_items = sum(len(t.items) for t in tasks) - sum(len(t.items) for t in pending)
  with tqdm.tqdm(total=sum(len(t.items) for t in tasks), initial=done_items, unit='patch',
                 desc='Converting', smoothing=0.05) as bar:
    if workers <= 1 or len(pending) <= 1:
      for a in args:
        bar.update(len(_run_task(a)[0].items))
    else:
      ctx = multiprocessing.get_context('spawn')
      with ctx.Pool(min(workers, len(pending))) as pool:
        for task, _ in pool.imap_unordered(_run_task, args):
          bar.update(len(task.items))
  return len(pending)


@dataclasses.dataclass
class SplitSummary:
  """What the shards of one split hold, in record order.

  Attributes:
    names: [N] record filenames.
    labels: [N] label (int) or active class indices (multi-label).
    extras: extra multi-hot field -> [N] active class indices.
    side: side-information key -> [N] values.
    sums, sumsqs, pixels: exact band sums (only for the statistics split).
    bad: (file, reason) of the skipped items.
    shards: (shard file, records, list position of its first record) per non-empty shard.
  """
  names: list = dataclasses.field(default_factory=list)
  labels: list = dataclasses.field(default_factory=list)
  extras: dict = dataclasses.field(default_factory=dict)
  side: dict = dataclasses.field(default_factory=dict)
  sums: list = dataclasses.field(default_factory=list)
  sumsqs: list = dataclasses.field(default_factory=list)
  pixels: int = 0
  bad: list = dataclasses.field(default_factory=list)
  shards: list = dataclasses.field(default_factory=list)


def load_summaries(tasks: Sequence[Task], work: pathlib.Path) -> dict[str, SplitSummary]:
  """Reads the done-markers of all tasks (all must exist) into per-split summaries."""
  out: dict[str, SplitSummary] = {}
  for task in tasks:  # make_tasks order: split by split, shards in order.
    data_path, done_path = _paths(work, task)
    with open(done_path) as f:
      s = json.load(f)
    summary = out.setdefault(task.split, SplitSummary())
    if s['n']:
      summary.shards.append((data_path, s['n'], task.start))
    summary.names += s['names']
    summary.labels += s['labels']
    for key, values in s['extras'].items():
      summary.extras.setdefault(key, []).extend(values)
    for key, values in s['side'].items():
      summary.side.setdefault(key, []).extend(values)
    sums, sumsqs = [int(v) for v in s['sums']], [int(v) for v in s['sumsqs']]
    summary.sums = [a + b for a, b in zip(summary.sums, sums)] if summary.sums else sums
    summary.sumsqs = ([a + b for a, b in zip(summary.sumsqs, sumsqs)] if summary.sumsqs
                      else sumsqs)
    summary.pixels += s['pixels']
    summary.bad += [tuple(b) for b in s['bad']]
  return out


def _shard_name(name: str, split: str, k: int, n: int) -> str:
  return f'{name}-{split}.array_record-{k:05d}-of-{n:05d}'


def _reindex(src: pathlib.Path, dst: pathlib.Path, shift: int, features) -> None:
  """Copies a shard file, subtracting `shift` from every record's index."""
  source = array_record_data_source.ArrayRecordDataSource([os.fspath(src)])
  writer = array_record_module.ArrayRecordWriter(os.fspath(dst), _WRITER_OPTIONS)
  try:
    for i in range(len(source)):
      example = dict(features.deserialize_example_np(source[i]))
      example['index'] -= shift
      writer.write(ds_writer.serialize(features, example))
  finally:
    writer.close()


def assemble(out: str | os.PathLike, name: str, schema: records.Schema,
             summaries: Mapping[str, SplitSummary], labeled: Mapping[str, Sequence[int]],
             metadata: Mapping[str, Any], shard_size: int, description: str = '',
             stats_split: str = 'train') -> pathlib.Path:
  """Builds `<out>/<name>/<VERSION>` from finished shards (see the module docstring).

  Args:
    out: data_dir.
    name: dataset name.
    schema: the record schema the shards were written with.
    summaries: load_summaries output; every split must hold at least one record.
    labeled: labeled split name -> positions in `train` (written in this order; records are
      byte copies of the train records, whose `index` is already the train position).
    metadata: dataset-specific metadata.json fields (the schema fields are added here).
    shard_size: records per shard of the labeled splits.
    description: dataset_info.json description.
    stats_split: split whose band sums give band_mean / band_std.

  Returns:
    The dataset directory.
  """
  for split, s in summaries.items():
    if not s.names:
      raise common.PrepError(f'split {split!r} has no usable record')
  root = pathlib.Path(out)
  tmp = ds_writer.make_temp_dir(root, name)
  try:
    ds_dir = tmp / records.tfds_name(name) / records.VERSION
    ds_dir.mkdir(parents=True)
    features = schema.features()
    split_infos = []
    for split, s in summaries.items():
      position, lengths = 0, []
      for k, (path, n, start) in enumerate(s.shards):
        dst = ds_dir / _shard_name(records.tfds_name(name), split, k, len(s.shards))
        if start == position:
          try:
            os.link(path, dst)  # Same file system (the work dir is under `out`): no copy.
          except OSError:  # File systems without hard links.
            shutil.copyfile(path, dst)
        else:
          _reindex(path, dst, start - position, features)
        position += n
        lengths.append(n)
      split_infos.append((split, lengths))
    n_train = len(summaries['train'].shards)
    source = array_record_data_source.ArrayRecordDataSource(
        [os.fspath(ds_dir / _shard_name(records.tfds_name(name), 'train', k, n_train))
         for k in range(n_train)])
    for split, indices in labeled.items():
      chunks = [list(indices[i:i + shard_size]) for i in range(0, len(indices), shard_size)]
      for k, chunk in enumerate(tqdm.tqdm(chunks, desc=f'Writing {split}', unit='shard')):
        writer = array_record_module.ArrayRecordWriter(
            os.fspath(ds_dir / _shard_name(records.tfds_name(name), split, k, len(chunks))),
            _WRITER_OPTIONS)
        for raw in source.__getitems__(chunk):
          writer.write(raw)
        writer.close()
      split_infos.append((split, [len(c) for c in chunks]))
    infos = []
    for split, lengths in split_infos:
      files = sorted(ds_dir.glob(f'{records.tfds_name(name)}-{split}.array_record-*'))
      infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths,
                                       num_bytes=sum(f.stat().st_size for f in files)))
    tfds.folder_dataset.write_metadata(data_dir=ds_dir, features=features, split_infos=infos,
                                       check_data=False, description=description,
                                       disable_shuffling=True)
    stats = summaries[stats_split]
    band_mean, band_std = ds_writer.band_stats(stats.sums, stats.sumsqs, stats.pixels,
                                             schema.image_dtype)
    info = dict(metadata)
    info.update(ds_writer.schema_metadata(schema, metadata.get('class_counts', {}), band_mean,
                                        band_std, stats_split))
    info['files'] = records.file_digests(ds_dir)
    with open(ds_dir / 'metadata.json', 'w') as f:
      json.dump(info, f, indent=1)
    ds_writer.install(tmp / records.tfds_name(name), root, name)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return records.dataset_dir(root, name)
