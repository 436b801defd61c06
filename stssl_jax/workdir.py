"""What a workdir remembers between processes: its config, its logs, whether it is finished.

  config.json            the config the run trains with (updated when a change is accepted)
  config_history.jsonl   one row per accepted change: step, fields, old and new values
  metrics.jsonl          one row per logged step (the source of truth for the logs)
  events.out.tfevents.*  TensorBoard's copy of metrics.jsonl
  final_metrics.json     written once the run is finished; its presence ends the run

A resumed run restarts from its newest checkpoint, so the steps logged after that
checkpoint by the killed process are logged again. `reset_logs` drops them from
metrics.jsonl and rebuilds TensorBoard's events from what is left, so every step appears
once in both.
"""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any

from stssl_jax import atomic
from stssl_jax.config_util import flatten

# Fields that may change when a workdir is resumed: they extend the run or change only how
# it is evaluated, logged, checkpointed or fed, never what a step computes.
RESUMABLE_CHANGES = (
    'num_steps', 'max_steps_this_run', 'patience', 'eval_every', 'eval_batch_size',
    'eval_teacher', 'log_every', 'checkpoint_every', 'keep_checkpoints', 'f1_threshold',
    'data.data_dir', 'data.num_workers', 'data.prefetch', 'data.cache_max_bytes',
    'data.test_split', 'eval_shift.*')


class ConfigChanged(ValueError):
  """A resumed workdir was started with a config that differs where it matters."""


def config_dict(config) -> dict[str, Any]:
  """The config as plain JSON values (tuples become lists, as in config.json)."""
  return json.loads(config.to_json_best_effort())


def _allowed(field: str) -> bool:
  return any(field == a or (a.endswith('.*') and field.startswith(a[:-1]))
             for a in RESUMABLE_CHANGES)


def diff(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """{field: (old, new)} of the flattened configs where they differ ('<absent>' if one lacks it)."""
  a, b = flatten(old), flatten(new)
  return {k: (a.get(k, '<absent>'), b.get(k, '<absent>'))
          for k in sorted(set(a) | set(b)) if a.get(k, '<absent>') != b.get(k, '<absent>')}


def _defaults() -> dict[str, Any]:
  from configs import default  # pylint: disable=g-import-not-at-top
  return flatten(config_dict(default.get_config()))


def _drop_new_defaults(changes: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
  """Without fields that a newer version added with their default value: a workdir started
  before a field existed resumes unchanged."""
  if not any(o == '<absent>' for o, _ in changes.values()):
    return changes
  defaults = _defaults()
  return {k: (o, n) for k, (o, n) in changes.items()
          if not (o == '<absent>' and k in defaults and defaults[k] == n)}


def _fmt(changes: dict[str, tuple[Any, Any]]) -> str:
  return ', '.join(f'{k}: {o!r} -> {n!r}' for k, (o, n) in changes.items())


def stored_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def guard_config(workdir: str, config, step: int, allow_change: bool = False,
                 write: bool = True) -> dict[str, tuple[Any, Any]]:
  """Checks `config` against the workdir's config.json; records the first or accepted one.

  Args:
    workdir: the run's directory.
    config: the config this process was started with.
    step: the step the run resumes from (recorded in the history).
    allow_change: accept changes outside RESUMABLE_CHANGES (--allow_config_change).
    write: this process writes the workdir's files (process 0).
  Returns:
    The accepted changes {field: (old, new)}.
  Raises:
    ConfigChanged: one line listing each changed field, old and new, unless accepted.
  """
  new = config_dict(config)
  old = stored_config(workdir)
  changes = _drop_new_defaults(diff(old, new)) if old is not None else {}
  blocked = {k: v for k, v in changes.items() if not _allowed(k)}
  if blocked and not allow_change:
    raise ConfigChanged(
        f'{workdir} was trained with another config: {_fmt(blocked)}. Use the original '
        'values, a new --workdir, or pass --allow_config_change to continue with the new ones '
        '(recorded in config_history.jsonl)')
  if write and (old is None or changes):
    atomic.write_text(os.path.join(workdir, 'config.json'), json.dumps(new, indent=2))
    if changes:
      row = {'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'step': step,
             'accepted': '--allow_config_change' if blocked else 'resumable fields',
             'changes': {k: {'old': o, 'new': n} for k, (o, n) in changes.items()}}
      with open(os.path.join(workdir, 'config_history.jsonl'), 'a') as f:
        f.write(json.dumps(row) + '\n')
  return changes


def shape_fields(workdir: str, config) -> str:
  """The stored-vs-current config differences that can change array shapes, as one string."""
  old = stored_config(workdir)
  if old is None:
    return 'no config.json in the workdir to compare with'
  changes = {k: v for k, v in diff(old, config_dict(config)).items()
             if k.startswith(('model.', 'data.image_size', 'data.num_channels', 'algorithm',
                              'multilabel', 'cap.', 'data.label_set'))}
  return (f'config fields that differ from the checkpoint\'s run: {_fmt(changes)}' if changes
          else 'no model-shaping config field differs from config.json')


def finished(workdir: str, config) -> dict | None:
  """The final metrics of a run that is already complete for `config`, else None."""
  path = os.path.join(workdir, 'final_metrics.json')
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    final = json.load(f)
  if final.get('stopped_early') or int(final.get('step', -1)) >= config.num_steps:
    return final
  return None


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.isfile(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          break  # A row cut by a kill mid-write: it and anything after it are dropped.
  return rows


def event_files(workdir: str) -> list[str]:
  return glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))


def reset_logs(workdir: str, step: int, writer, old_events: list[str]) -> int:
  """Keeps the logged rows of steps <= `step` and rebuilds TensorBoard's events from them.

  Args:
    workdir: the run's directory.
    step: the step the run resumes from; rows after it will be logged again.
    writer: the clu metric writer of this process (its event file is the new one).
    old_events: `event_files(workdir)` listed before `writer` was made.
  Returns:
    The number of rows kept.
  """
  rows = [r for r in read_metrics(workdir) if int(r.get('step', 0)) <= step]
  atomic.write_text(os.path.join(workdir, 'metrics.jsonl'),
                    ''.join(json.dumps(r) + '\n' for r in rows))
  for r in rows:
    writer.write_scalars(int(r['step']), {k: v for k, v in r.items() if k != 'step'})
  writer.flush()
  # Only after the replay is on disk: a kill before this leaves duplicates, not gaps, and
  # the next resume removes them.
  for path in old_events:
    os.remove(path)
  return len(rows)


def append_metrics(workdir: str, step: int, scalars: dict) -> None:
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write(json.dumps({'step': step, **scalars}) + '\n')
