"""Orbax checkpoints: TrainState, grain iterator and run progress saved in one step.

Layout under the workdir:
  checkpoints/<step>/{state, data, progress}   latest `keep` steps, for resuming.
  best/<step>/{params, progress}               EMA params of the best evaluation so far.
Orbax writes each step to a temporary directory and renames it when complete, so a kill at
any moment leaves the previous checkpoint intact.
"""

import os
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores the run; `restore` accepts state on any device mesh."""

  def __init__(self, workdir: str, keep: int = 2):
    workdir = os.path.abspath(workdir)
    self.latest = ocp.CheckpointManager(
        os.path.join(workdir, 'checkpoints'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'data', 'progress'))
    self.best = ocp.CheckpointManager(
        os.path.join(workdir, 'best'),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        item_names=('params', 'progress'))

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def save(self, step: int, state, data_iter, progress: dict, force: bool = False):
    """Saves state, the data iterator position and progress (best metric, ...) at `step`."""
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),
        progress=ocp.args.JsonSave(progress)), force=force)

  def save_best(self, step: int, ema_params, progress: dict):
    self.best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(ema_params), progress=ocp.args.JsonSave(progress)),
        force=True)

  def restore(self, abstract_state, data_iter, step: Optional[int] = None):
    """Restores (state, progress) in place of `abstract_state`; `data_iter` is reset too.

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct with the target shardings, so the
        arrays land on the current mesh whatever mesh wrote them.
      data_iter: grain iterator whose position is overwritten.
      step: step to restore (default: latest).
    Returns:
      (state, progress dict).
    """
    step = self.latest.latest_step() if step is None else step
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iter),
        progress=ocp.args.JsonRestore()))
    return out['state'], dict(out['progress'])

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


def abstract_like(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (a matching pytree)."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
