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

import csv
import os

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec as P

from stssl_jax import algorithms, checkpoint, metadata, train
from stssl_jax.data import pipeline
from stssl_jax.models import stssl as models

NO_TIME = metadata.encode([0.0], [0.0], [metadata.NO_TIME_DATE])[0, 2:]


def shift_meta(m: np.ndarray, *, no_loc=False, no_time=False, dlat=0.0, dlon=0.0,
               days=0) -> np.ndarray:
  """Transforms encoded metadata [B, 4] as if lat/lon/date had been changed first."""
  m = np.array(m, np.float32, copy=True)
  lat = np.clip(m[:, 0].astype(np.float64) * 90.0 + dlat, -90.0, 90.0)
  lon = (m[:, 1].astype(np.float64) * 180.0 + dlon + 180.0) % 360.0 - 180.0
  m[:, 0], m[:, 1] = lat / 90.0, lon / 180.0
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
  s = config.data.image_size
  x = jnp.zeros((1, s, s, config.data.num_channels), jnp.float32)
  args = (x, jnp.zeros((1, 4), jnp.float32)) if algo.uses_meta else (x,)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args)['params'])
  ckpt = checkpoint.Checkpointer(workdir)
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
  mesh = train.make_mesh()
  repl, data_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  params = jax.device_put(params, repl)
  eval_fn = train.make_eval_fn(model, algo, config, repl)
  info = pipeline.dataset_info(config)
  splits = [config.data.eval_split] + sorted(s for s in info['splits'] if s.startswith('heldout'))
  key = 'macro_map' if config.multilabel else 'top1'
  # A second metric that class-frequency shifts between regions do not move by themselves.
  second = 'micro_map' if config.multilabel else 'balanced_acc'
  rows = []
  for split in splits:
    for name, branch, shift in variants(config, algo.stssl):
      summary, _ = train.evaluate(params, eval_fn, config, split, branch, data_sh,
                                  num_updates=jnp.int32(step),
                                  meta_fn=lambda m, shift=shift: shift_meta(m, **shift))
      rows.append({'split': split, 'model': name, key: summary[key],
                   second: summary[second], 'loss': summary['loss']})
  _write(rows, key, second, os.path.join(workdir, 'shift_eval'), source)
  return rows


def _write(rows, key, second, out_dir, source):
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'shift_eval.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  lines = [f'Metadata-shift evaluation ({source}); metrics: {key}, {second}.', '',
           f'| split | model | {key} | {second} | loss |', '|---|---|---|---|---|']
  lines += [f'| {r["split"]} | {r["model"]} | {r[key]:.4f} | {r[second]:.4f} | '
            f'{r["loss"]:.4f} |' for r in rows]
  with open(os.path.join(out_dir, 'shift_eval.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  title = ('EMA student vs EMA teacher under metadata shifts'
           if len({r['model'] for r in rows}) > 1 else 'EMA model in and out of the held-out region')
  many = len({r['split'] for r in rows}) > 1
  chart = [dict(r, split=r['split'] + ((' (out of region)' if r['split'].startswith('heldout')
                                        else ' (in region)') if many else '')) for r in rows]
  bar_chart(chart, key, os.path.join(out_dir, 'shift_eval.png'), title)


def bar_chart(rows: list[dict], key: str, path: str, title: str) -> str:
  """Grouped bars of rows[key]: one group per 'model', one bar (and legend entry) per 'split'."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  splits = list(dict.fromkeys(r['split'] for r in rows))
  models_ = list(dict.fromkeys(r['model'] for r in rows))
  fig, ax = plt.subplots(figsize=(max(10, 0.9 * len(models_) + 3), 4.8))
  width = 0.8 / len(splits)
  for i, split in enumerate(splits):
    vals = [next((r[key] for r in rows if r['split'] == split and r['model'] == m), np.nan)
            for m in models_]
    ax.bar(np.arange(len(models_)) + i * width, vals, width, label=split)
  ax.set_xticks(np.arange(len(models_)) + width * (len(splits) - 1) / 2)
  ax.set_xticklabels(models_, rotation=25, ha='right', fontsize=8)
  ax.set_ylabel(key)
  ax.set_title(title)
  ax.legend(title='split')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
