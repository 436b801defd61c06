"""Side-by-side comparison of finished runs (e.g. STSSL-FixMatch against FixMatch).

  python -m stssl_jax.compare OUT_DIR NAME=WORKDIR [NAME=WORKDIR ...]

Reads, from each workdir, what training and `--mode=eval_shift` left there:
- metrics.jsonl: the pseudo-label quality of every logging interval
  (`train/pl/<source>/<metric>`), pooled over the whole run and over its last quarter;
- shift_eval/shift_eval.csv: every model row on every split (evaluation split = in region,
  `heldout*` = out of region).
Writes OUT_DIR/compare.md, compare_pl.csv, compare_eval.csv and compare_eval.png.

Pooling (`report_data.pooled_pl`): every interval logs `log_every` steps of the same unlabeled batch size, so the number
of samples n is the same in each. Recall and accuracy_all are means over n, pooled exactly by
averaging intervals; accuracy is over the accepted samples (n * recall of them), pooled exactly
by weighting each interval's accuracy with its recall. Macro precision has per-class
denominators that the log does not keep; its interval values are averaged (marked approximate).
"""

import csv
import os
import sys

from stssl_jax import atomic, report_data, report_plots

PL_METRICS = report_data.PL_METRICS


def _sources(series: dict) -> list[str]:
  found = {k.split('/')[2] for k in series if k.startswith('train/pl/')}
  return [s for s in ('teacher', 'image_only') if s in found] + sorted(found - {'teacher',
                                                                               'image_only'})


def _read_shift(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'shift_eval', 'shift_eval.csv')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path} is missing: run `python main.py --mode=eval_shift '
                            f'--workdir={workdir} --config=...` first')
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def compare(runs: dict[str, str], out_dir: str) -> dict:
  """Writes the comparison of `runs` ({name: workdir}) to out_dir; returns its two tables.

  Returns:
    {'pl': rows {run, source, window, intervals, recall, accuracy, accuracy_all, precision},
     'eval': rows {run, model, split, region, <metric columns of shift_eval.csv>}}.
  """
  pl_rows, eval_rows = [], []
  for name, workdir in runs.items():
    series = report_data.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
    if not any(k.startswith('train/pl/') for k in series):
      raise ValueError(f'{workdir}/metrics.jsonl has no train/pl/ entries (no pseudo-labels '
                       'logged: a supervised run, or not trained yet)')
    last = max(int(s[-1]) for k, (s, _) in series.items() if k.startswith('train/pl/'))
    for source in _sources(series):
      for window, since in (('whole run', 0), ('last quarter', int(0.75 * last) + 1)):
        pl_rows.append({'run': name, 'source': source, 'window': window,
                        **report_data.pooled_pl(series, source, since)})
    for r in _read_shift(workdir):
      region = 'out of region' if r['split'].startswith('heldout') else 'in region'
      eval_rows.append({'run': name, 'model': r['model'], 'split': r['split'],
                        'region': region,
                        **{k: float(v) for k, v in r.items() if k not in ('split', 'model')}})
  _write(pl_rows, eval_rows, out_dir)
  return {'pl': pl_rows, 'eval': eval_rows}


def _write(pl_rows, eval_rows, out_dir):
  os.makedirs(out_dir, exist_ok=True)
  for rows, name in ((pl_rows, 'compare_pl.csv'), (eval_rows, 'compare_eval.csv')):
    atomic.write_csv(os.path.join(out_dir, name), rows)
  metrics = [k for k in eval_rows[0] if k not in ('run', 'model', 'split', 'region')]
  lines = ['# Run comparison', '',
           '## Pseudo-label quality during training', '',
           'recall = share of unlabeled samples accepted by the mask; accuracy = of the '
           'accepted pseudo-labels; accuracy_all = of every pseudo-label, mask ignored; '
           'precision = macro over classes (interval mean, approximate). `teacher` = the '
           'pseudo-labels STSSL trained on; `image_only` = what an image-only model proposed '
           '(for STSSL the student, used for nothing).', '',
           '| run | source | window | intervals | ' + ' | '.join(PL_METRICS) + ' |',
           '|---|---|---|---|' + '---|' * len(PL_METRICS)]
  lines += [f'| {r["run"]} | {r["source"]} | {r["window"]} | {r["intervals"]} | ' +
            ' | '.join(f'{r[m]:.4f}' for m in PL_METRICS) + ' |' for r in pl_rows]
  lines += ['', '## Evaluation (EMA weights; from each run\'s shift_eval)', '',
            '| run | model | split | region | ' + ' | '.join(metrics) + ' |',
            '|---|---|---|---|' + '---|' * len(metrics)]
  lines += [f'| {r["run"]} | {r["model"]} | {r["split"]} | {r["region"]} | ' +
            ' | '.join(f'{r[m]:.4f}' for m in metrics) + ' |' for r in eval_rows]
  atomic.write_text(os.path.join(out_dir, 'compare.md'), '\n'.join(lines) + '\n')
  # The chart keeps the deployable image-only models and the teacher with its true metadata;
  # the removed/shifted-metadata rows stay in compare.md (16 groups of bars read badly).
  chart = [{'split': f'{r["split"]} ({r["region"]})', 'model': f'{r["run"]}: {r["model"]}',
            metrics[0]: r[metrics[0]]} for r in eval_rows
           if r['model'].endswith('(image only)') or r['model'] == 'teacher, true metadata']
  report_plots.model_bars(chart, metrics[0], os.path.join(out_dir, 'compare_eval.png'),
                          'Runs side by side, in and out of the held-out region (every '
                          'metadata variant: compare.md)')


def main(argv: list[str]) -> int:
  if len(argv) < 2 or not all('=' in a for a in argv[1:]):
    print('usage: python -m stssl_jax.compare OUT_DIR NAME=WORKDIR [NAME=WORKDIR ...]',
          file=sys.stderr)
    return 2
  runs = dict(a.split('=', 1) for a in argv[1:])
  compare(runs, argv[0])
  print(open(os.path.join(argv[0], 'compare.md')).read())
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
