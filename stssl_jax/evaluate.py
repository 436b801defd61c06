"""Evaluation: the device mesh, the jitted eval function, whole-split metrics and predictions.

Used by the trainer (periodic and final evaluation), the metadata-shift evaluation and the
report's inputs (WORKDIR/eval/predictions_<branch>.npz); it imports neither of them.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from stssl_jax import atomic, metadata, metrics as metrics_lib, steps
from stssl_jax import metrics_multilabel as metrics_ml
from stssl_jax.data import pipeline


def make_mesh(devices=None) -> Mesh:
  """1-D ('data',) mesh over every device of every process (STYLE habit 5)."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ('data',))


def global_batch(local: dict, sharding) -> dict:
  """Assembles per-process numpy batches into one global array per key."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}


def make_eval_fn(model, algo, config, out_sharding):
  """jitted (params, batch, branch, gather, num_updates) -> stats [and gathered rows]."""
  def eval_impl(params, batch, branch, gather, num_updates):
    # One forward serves both the on-device statistics and the gathered logits.
    logits = steps.eval_logits(params, batch, model=model, algo=algo, config=config,
                               branch=branch, num_updates=num_updates)
    out = {} if config.multilabel else steps.eval_stats(logits, batch)
    if gather:
      out.update(logits=logits, label=batch['label'], mask=batch['mask'], meta=batch['meta'])
      out.update({k: v for k, v in batch.items() if k.endswith(pipeline.TEXT_SUFFIX)})
    return out
  return jax.jit(eval_impl, static_argnums=(2, 3), out_shardings=out_sharding)


def evaluate(params, eval_fn, config, split, branch, sharding, collect=False, num_updates=0,
             meta_fn=None):
  """Metrics of `params` on a whole split (padded batches, nothing dropped).

  Single-label accumulates confusion counts on device; multi-label gathers the valid rows'
  logits to the host, since AP needs every score. With `collect`, also returns the valid
  rows' logits, labels, lat/lon (decoded from the metadata) and, where the records have
  them, country/season (str [N]) for reports.

  Returns:
    (summary dict, arrays dict or None).
  """
  gather = config.multilabel or collect
  acc, rows = None, {'logits': [], 'label': [], 'meta': []}
  for batch in pipeline.eval_batches(config, split):
    if meta_fn is not None:  # Metadata-shift evaluation (shift_eval.py).
      batch = dict(batch, meta=meta_fn(batch['meta']))
    if not collect:  # Text fields only serve the collected per-sample predictions.
      batch = {k: v for k, v in batch.items() if not k.endswith(pipeline.TEXT_SUFFIX)}
    out = eval_fn(params, global_batch(batch, sharding), branch, gather, num_updates)
    if gather:
      keep = np.asarray(jax.device_get(out['mask']))
      for k in out:
        if k in ('logits', 'label', 'meta') or k.endswith(pipeline.TEXT_SUFFIX):
          rows.setdefault(k, []).append(np.asarray(jax.device_get(out[k]))[keep])
    if not config.multilabel:
      stats = {k: out[k] for k in ('confusion', 'loss_sum', 'count')}
      acc = stats if acc is None else jax.tree_util.tree_map(jnp.add, acc, stats)
  arrays = None
  if gather:
    arrays = {k: np.concatenate(v) for k, v in rows.items()}
    meta = arrays.pop('meta')
    arrays['lat'], arrays['lon'] = metadata.decode_location(meta)
    for k in [k for k in arrays if k.endswith(pipeline.TEXT_SUFFIX)]:
      arrays[k[:-len(pipeline.TEXT_SUFFIX)]] = pipeline.decode_text(arrays.pop(k))
  if config.multilabel:
    summary = metrics_ml.summarize(arrays['logits'], arrays['label'], config.f1_threshold)
  else:
    acc = jax.device_get(acc)
    summary = metrics_lib.summarize(acc['confusion'], acc['loss_sum'], acc['count'])
  return summary, (arrays if collect else None)


def scalars(prefix, summary):
  return {f'{prefix}/{k}': float(v) for k, v in summary.items() if np.ndim(v) == 0}


def evaluate_all(state, eval_fn, config, image_branch, algo, sharding, workdir, step):
  """EMA model without metadata, and (STSSL) the EMA teacher with metadata, separately.

  Scalars are returned for TensorBoard; the full summaries, confusion matrices included, go
  to WORKDIR/eval/step_<step>.json, and the per-sample predictions of the latest evaluation
  (logits, labels, lat/lon) to WORKDIR/eval/predictions_<branch>.npz for the run report.
  """
  split = config.data.eval_split
  branches = [image_branch] + (['teacher'] if algo.stssl and config.eval_teacher else [])
  full, out = {}, {}
  main = jax.process_index() == 0
  os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
  for branch in branches:
    summary, arrays = evaluate(state.ema_params, eval_fn, config, split, branch, sharding,
                               collect=True, num_updates=state.step)
    out.update(scalars(branch, summary))
    full[branch] = {k: np.asarray(v).tolist() for k, v in summary.items()}
    if arrays is not None and main:
      save_predictions(os.path.join(workdir, 'eval', f'predictions_{branch}.npz'), step=step,
                       split=split, **arrays)
  if main:
    atomic.write_text(os.path.join(workdir, 'eval', f'step_{step}.json'),
                      json.dumps({'step': step, 'split': split, **full}))
  return out


def save_predictions(path, **arrays):
  """np.savez of `arrays` to `path`, atomically (a reader never sees a partial file)."""
  return atomic.write_npz(path, **arrays)
