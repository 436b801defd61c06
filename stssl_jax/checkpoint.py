"""Orbax checkpoints: TrainState, grain iterator and run progress saved in one step.

Layout under the workdir:
  checkpoints/<step>/{state, data, progress}   latest `keep` steps, for resuming.
  best/<step>/{params, progress}               EMA params of the best evaluation so far.

`checkpoints/` is the one source of truth for resuming. Orbax writes each step to a
temporary directory and renames it when complete, so a kill at any moment leaves the
previous checkpoint intact; leftover temporaries are removed when a manager opens. The two
managers are written in the order best, then resume, and `save_best` is idempotent: a
resumed run re-reaches the same evaluations bit for bit (train.py), so a best step that a
killed attempt already wrote (equal or later than the one being saved) is kept, not saved
again. That is what makes a kill between the two saves harmless.
"""

import os
import pathlib
import shutil
from typing import Any, Optional

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

_TMP_MARK = '.orbax-checkpoint-tmp'



def _key_path(path) -> str:
  """'params/student/head/kernel' for a tree path; the same for attribute and dict keys.

  The saved metadata is a nested dict (DictKey) where the live state is a dataclass (GetAttrKey),
  so `keystr` would differ for the very same leaf.
  """
  parts = []
  for entry in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return '/'.join(parts)

class RestoreMismatch(ValueError):
  """The checkpoint's arrays do not fit the state built from the current config."""


class Checkpointer:
  """Saves and restores the run; `restore` accepts state on any device mesh."""

  def __init__(self, workdir: str, keep: int = 2, read_only: bool = False):
    """read_only: for readers beside a live run (shift eval, reports), which must neither
    create folders nor remove the run's in-flight temporaries."""
    workdir = os.path.abspath(workdir)
    self.dirs = [os.path.join(workdir, 'checkpoints'), os.path.join(workdir, 'best')]
    opts = (dict(read_only=True, create=False) if read_only else
            dict(create=True, cleanup_tmp_directories=True))
    self.latest = ocp.CheckpointManager(
        self.dirs[0], options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts),
        item_names=('state', 'data', 'progress'))
    self.best = ocp.CheckpointManager(
        self.dirs[1], options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts),
        item_names=('params', 'progress'))

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save(self, step: int, state, data_iter, progress: dict):
    """Saves state, the data iterator position and progress (best metric, ...) at `step`.

    Asynchronous: the arrays are copied to host, then written in the background.
    """
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        progress=ocp.args.JsonSave(progress)), force=True)

  def save_best(self, step: int, ema_params, progress: dict) -> bool:
    """Saves the best EMA params at `step` unless this or a later best step is on disk.

    Returns:
      True if a save was issued.
    """
    have = self.best.latest_step()
    if have is not None and have >= step:
      logging.info('best/%d already written by an earlier attempt of this run; kept', have)
      return False
    self.best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(ema_params), progress=ocp.args.JsonSave(progress)),
        force=True)
    return True

  def restore(self, abstract_state, data_iter, step: Optional[int] = None):
    """Restores (state, progress) in place of `abstract_state`; `data_iter` is reset too.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with the target shardings, so the
        arrays land on the current mesh whatever mesh wrote them.
      data_iter: grain iterator whose position is overwritten.
      step: step to restore (default: latest).
    Returns:
      (state, progress dict).
    Raises:
      RestoreMismatch: naming the leaves whose shapes or structure differ.
    """
    step = self.latest.latest_step() if step is None else step
    mismatch = self.mismatch(abstract_state, step)
    if mismatch:
      raise RestoreMismatch(mismatch)
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter),
        progress=ocp.args.JsonRestore()))
    return out['state'], dict(out['progress'])

  def mismatch(self, abstract_state, step: int, limit: int = 6) -> str:
    """'' if checkpoint `step` has the leaves and shapes of `abstract_state`, else a summary."""
    path = pathlib.Path(self.dirs[0]) / str(step) / 'state'
    saved = ocp.StandardCheckpointer().metadata(path)
    saved = getattr(saved, 'item_metadata', saved)
    flat_saved = {_key_path(k): v for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    flat_now = {_key_path(k): v for k, v in
                jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    lines = [f'{k}: checkpoint {tuple(flat_saved[k].shape)}, now {tuple(v.shape)}'
             for k, v in flat_now.items()
             if k in flat_saved and tuple(flat_saved[k].shape) != tuple(v.shape)]
    lines += [f'{k}: not in the checkpoint' for k in flat_now if k not in flat_saved]
    lines += [f'{k}: only in the checkpoint' for k in flat_saved if k not in flat_now]
    if not lines:
      return ''
    more = f' (and {len(lines) - limit} more)' if len(lines) > limit else ''
    return f'{len(lines)} state leaves differ from {path}: ' + '; '.join(lines[:limit]) + more

  def restore_best(self, abstract_params) -> tuple[Any, dict]:
    step = self.best.latest_step()
    if step is None:
      raise FileNotFoundError('no best checkpoint has been written yet')
    out = self.best.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract_params), progress=ocp.args.JsonRestore()))
    return out['params'], dict(out['progress'])

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()

  def finish_or_clean(self) -> Optional[BaseException]:
    """After an error: lets in-flight saves finish; if they fail, removes their temporaries.

    Returns:
      The save error, if one happened (the caller re-raises its own error first).
    """
    error = None
    for manager in (self.latest, self.best):
      try:
        manager.wait_until_finished()
      except BaseException as e:  # pylint: disable=broad-except
        error = error or e
      try:
        manager.close()
      except BaseException as e:  # pylint: disable=broad-except
        error = error or e
    for d in self.dirs:
      remove_temporaries(d)
    return error


def remove_temporaries(directory: str) -> list[str]:
  """Deletes unfinished orbax step folders (`<step>.orbax-checkpoint-tmp-*`) in `directory`."""
  removed = []
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if _TMP_MARK in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
        removed.append(name)
  return removed


def temporaries(workdir: str) -> list[str]:
  """Unfinished checkpoint folders under a workdir (tests and bench/soak.py)."""
  out = []
  for sub in ('checkpoints', 'best'):
    d = os.path.join(workdir, sub)
    if os.path.isdir(d):
      out += [os.path.join(sub, n) for n in os.listdir(d) if _TMP_MARK in n]
  return out


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (a matching pytree)."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
