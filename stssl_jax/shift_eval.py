"""Metadata-shift evaluation of a trained run (the paper's robustness argument, METHOD 0/9).

  python main.py --config=configs/eurosat.py:stssl_fixmatch,40 --mode=eval_shift --workdir=W

Evaluates the run's EMA weights (best checkpoint if there is one, else the latest):
- the student (image only; metadata cannot matter),
- the teacher with the true metadata, without location (no_loc), without time (no_time),
  without both, with coordinates moved by (shift_lat, shift_lon) degrees, and with dates
  moved by shift_days,
on the evaluation split and on every held-out-region split the prepared dataset has
(`heldout*`, written by data_prep's region hold-out). Writes WORKDIR/shift_eval/
{shift_eval.csv, shift_eval.md, shift_eval.png} and returns the rows.

The shifts act on the encoded 4-vector m = [lat/90, lon/180, sin t, cos t] exactly as if the
raw lat/lon/date had been changed before encoding (METHOD 1.1).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec as P

from stssl_jax import algorithms, atomic, checkpoint, evaluate, metadata, regions, report_plots
from stssl_jax.data import pipeline
from stssl_jax.models import stssl as models

NO_TIME = metadata.encode([0.0], [0.0], [metadata.NO_TIME_DATE])[0, 2:]


def shift_meta(m: np.ndarray, *, no_loc=False, no_time=False, dlat=0.0, dlon=0.0,
               days=0) -> np.ndarray:
  """Transforms encoded metadata [B, 4] as if lat/lon/date had been changed first."""
  m = np.array(m, np.float32, copy=True)
  lat, lon = metadata.decode_location(m)
  m = metadata.encode_location(m, np.clip(lat + dlat, -90.0, 90.0),
                               (lon + dlon + 180.0) % 360.0 - 180.0)
  if days:
    theta = np.arctan2(m[:, 2], m[:, 3]) + 2 * np.pi * days / 365.0
    m[:, 2], m[:, 3] = np.sin(theta), np.cos(theta)
  if no_loc:
    m[:, :2] = 0.0
  if no_time:
    m[:, 2:] = NO_TIME
  return m


def variants(config, stssl=True):
  """(name, branch, shift kwargs) rows; `shift_*` fields come from config.eval_shift.

  A plain (image-only) run has one row: its model on every split.
  """
  if not stssl:
    return [(f'{config.algorithm} (image only)', 'plain', {})]
  s = config.eval_shift
  rows = [('student (image only)', 'student', {}), ('teacher, true metadata', 'teacher', {}),
          ('teacher, no_loc', 'teacher', {'no_loc': True}),
          ('teacher, no_time', 'teacher', {'no_time': True}),
          ('teacher, no metadata', 'teacher', {'no_loc': True, 'no_time': True}),
          (f'teacher, location +({s.shift_lat:g}, {s.shift_lon:g}) deg', 'teacher',
           {'dlat': s.shift_lat, 'dlon': s.shift_lon}),
          (f'teacher, date +{s.shift_days:d} days', 'teacher', {'days': s.shift_days})]
  return rows


def _load_params(config, workdir, model, algo):
  """(EMA params, description, number of updates) of the best checkpoint, else the latest."""
  args = models.init_inputs(config, algo)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args)['params'])
  ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  try:
    if ckpt.best.latest_step() is not None:
      params, progress = ckpt.restore_best(abstract)
      best = int(progress.get('best_step', 0))
      return params, f'best checkpoint (step {best})', best
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {workdir}: train first')
    out = ckpt.latest.restore(step, args=checkpoint.ocp.args.Composite(
        state=checkpoint.ocp.args.StandardRestore()))
    return out['state']['ema_params'], f'latest checkpoint (step {step})', step
  finally:
    ckpt.close()


def run(config, workdir: str) -> list[dict]:
  """Evaluates every variant on every split; writes CSV, Markdown and a bar chart."""
  algo = algorithms.get(config.algorithm)
  model = models.build_model(config)
  params, source, step = _load_params(config, workdir, model, algo)
  mesh = evaluate.make_mesh()
  repl, data_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  params = jax.device_put(params, repl)
  eval_fn = evaluate.make_eval_fn(model, algo, config, repl)
  info = pipeline.dataset_info(config)
  splits = [config.data.eval_split] + sorted(s for s in info['splits'] if s.startswith('heldout'))
  key = 'macro_map' if config.multilabel else 'top1'
  # A second metric that class-frequency shifts between regions do not move by themselves.
  second = 'micro_map' if config.multilabel else 'balanced_acc'
  out_dir = os.path.join(workdir, 'shift_eval')
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  for split in splits:
    for name, branch, shift in variants(config, algo.stssl):
      # Per-sample predictions of the unshifted models feed the report's maps and
      # per-country tables, out of region included.
      summary, arrays = evaluate.evaluate(params, eval_fn, config, split, branch, data_sh,
                                       collect=not shift, num_updates=jnp.int32(step),
                                       meta_fn=lambda m, shift=shift: shift_meta(m, **shift))
      if arrays is not None and jax.process_index() == 0:
        evaluate.save_predictions(os.path.join(out_dir, f'predictions_{split}_{branch}.npz'),
                                  step=step, split=split, **arrays)
      rows.append({'split': split, 'model': name, key: summary[key],
                   second: summary[second], 'loss': summary['loss']})
  _write(rows, key, second, out_dir, source, regions.region_names(info))
  return rows


def _write(rows, key, second, out_dir, source, names=None):
  os.makedirs(out_dir, exist_ok=True)
  atomic.write_csv(os.path.join(out_dir, 'shift_eval.csv'), rows)
  names = names or {}
  where = lambda s: names.get(s, 'out of region' if s.startswith('heldout') else 'in region')
  lines = [f'Metadata-shift evaluation ({source}); metrics: {key}, {second}.', '',
           f'| split | region | model | {key} | {second} | loss |', '|---|---|---|---|---|---|']
  lines += [f'| {r["split"]} | {where(r["split"])} | {r["model"]} | {r[key]:.4f} | '
            f'{r[second]:.4f} | {r["loss"]:.4f} |' for r in rows]
  atomic.write_text(os.path.join(out_dir, 'shift_eval.md'), '\n'.join(lines) + '\n')
  title = ('EMA student vs EMA teacher under metadata shifts'
           if len({r['model'] for r in rows}) > 1 else 'EMA model in and out of the held-out region')
  many = len({r['split'] for r in rows}) > 1
  chart = [dict(r, split=r['split'] + (f' ({where(r["split"])})' if many else ''))
           for r in rows]
  report_plots.model_bars(chart, key, os.path.join(out_dir, 'shift_eval.png'), title)

