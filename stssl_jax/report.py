"""Static HTML report of a training run: `write_report(workdir)` -> WORKDIR/report/index.html.

Reads what `train.train_and_evaluate` leaves in the workdir (config.json, metrics.jsonl,
final_metrics.json, eval/step_<N>.json, eval/predictions_<branch>.npz, and versions.json if the
run recorded one) and writes PNGs next to index.html, linked relatively, so the folder opens
from disk or can be copied anywhere. Works on a run in progress: missing parts are skipped.
What the numbers are comes from `report_data.py`; this module only lays them out.

    python -m stssl_jax.report WORKDIR
"""

import csv
import datetime
import glob
import html
import json
import os
import shutil
import sys
from typing import Any, Optional

import numpy as np

from stssl_jax import atomic, report_data as analysis
from stssl_jax import report_plots as plots

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 1.5em auto;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f8f8f8; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
"""


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f'{v:.4f}'
  return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
  head = ''.join(f'<th>{html.escape(h)}</th>' for h in header)
  body = ''.join('<tr>' + ''.join(f'<td>{_fmt(v)}</td>' for v in row) + '</tr>' for row in rows)
  return f'<table><tr>{head}</tr>{body}</table>'


def _group_table(tables: dict[str, list[dict]], field: str) -> str:
  """One row per group: n, then each metric of each branch."""
  first = next(iter(tables.values()))
  metrics = [k for k in first[0] if k not in ('group', 'n')]
  header = [field, 'n'] + [f'{plots.branch_label(b)}: {m.replace("_", " ")}'
                           for b in tables for m in metrics]
  rows = [[r['group'], r['n']] + [tables[b][i][m] for b in tables for m in metrics]
          for i, r in enumerate(first)]
  return _table(header, rows)


def _summary(config: dict, final: Optional[dict], last_eval: dict, branches: list[str]) -> str:
  data = config.get('data', {})
  labels = data.get('label_fraction') or data.get('num_labels') or 'all'
  rows = [['algorithm', config.get('algorithm', '?')],
          ['dataset', f'{data.get("name", "?")} ({data.get("data_dir", "?")})'],
          ['labels (count or fraction)', labels],
          ['task', 'multi-label' if config.get('multilabel') else 'single-label']]
  if final:
    rows += [['steps done / planned', f'{final.get("step")} / {config.get("num_steps", "?")}'],
             ['best selection metric', f'{_fmt(final.get("best_metric"))} at step '
              f'{final.get("best_step")}']]
  else:
    rows.append(['status', 'no final_metrics.json yet (run in progress or stopped)'])
  out = _table(['run', ''], rows)
  source = final if final else {f'{b}/{k}': v for b in branches
                                for k, v in last_eval.get(b, {}).items() if np.ndim(v) == 0}
  metrics = sorted({k.split('/', 1)[1] for k in source if k.split('/')[0] in branches},
                   key=plots.metric_order)
  if metrics:
    what = 'final evaluation' if final else f'latest evaluation (step {last_eval.get("step")})'
    out += f'<p>Metrics of the {what}:</p>' + _table(
        ['metric'] + [plots.branch_label(b) for b in branches],
        [[plots.PRETTY.get(m, m)] + [source.get(f'{b}/{m}', '') for b in branches]
         for m in metrics])
  return out


def _pooled_pl_table(series: dict) -> Optional[str]:
  """Pseudo-label quality per source pooled over the whole run and its last quarter."""
  sources = sorted({k.split('/')[2] for k in series if k.startswith('train/pl/')},
                   key=lambda s: (s != 'teacher', s))
  if not sources:
    return None
  last = max(int(series[k][0][-1]) for k in series if k.startswith('train/pl/'))
  rows = []
  for window, since in (('whole run', 0), ('last quarter', int(0.75 * last) + 1)):
    for src in sources:
      pooled = analysis.pooled_pl(series, src, since)
      rows.append([window, plots.pl_source_label(src, 'teacher' in sources),
                   pooled['intervals']] +
                  [pooled[m] for m in analysis.PL_METRICS])
  return ('<p>Pooled over the logging intervals (accuracy weighted by the accepted share; '
          'precision an interval mean):</p>' +
          _table(['window', 'source', 'intervals'] + list(analysis.PL_METRICS), rows))


def _page(*, workdir, config, final, last_eval, branches, sections, versions,
          versions_recorded, rendered) -> str:
  """The whole index.html; sections are (heading, [(png, caption, table html or None)])."""
  parts = [f'<!doctype html><html><head><meta charset="utf-8"><title>Run report: '
           f'{html.escape(os.path.basename(workdir))}</title><style>{_CSS}</style></head><body>',
           f'<h1>Run report</h1><p class="meta">{html.escape(workdir)} &middot; rendered '
           f'{html.escape(rendered)}</p>']
  toc = ['Summary'] + [h for h, _ in sections] + ['Configuration', 'Software']
  parts.append('<p>' + ' &middot; '.join(
      f'<a href="#{h.lower().replace(" ", "-")}">{h}</a>' for h in toc) + '</p>')
  parts.append('<h2 id="summary">Summary</h2>' + _summary(config, final, last_eval, branches))
  for heading, items in sections:
    parts.append(f'<h2 id="{heading.lower().replace(" ", "-")}">{html.escape(heading)}</h2>')
    for png, caption, table in items:
      parts.append(f'<figure><img src="{png}" alt="{html.escape(caption)}">'
                   f'<figcaption>{html.escape(caption)}</figcaption>{table or ""}</figure>')
  parts.append('<h2 id="configuration">Configuration</h2><details open><summary>config.json'
               f'</summary><pre>{html.escape(json.dumps(config, indent=2))}</pre></details>')
  note = ('recorded by the run (versions.json)' if versions_recorded else
          'of the environment that rendered this report; the run recorded none')
  parts.append(f'<h2 id="software">Software</h2><p>Versions {note}.</p>'
               + _table(['package', 'version'], [[k, v] for k, v in versions.items()]))
  parts.append('</body></html>')
  return '\n'.join(parts)


def _class_items(last: dict, branches: list[str], multilabel: bool, names: list[str],
                 out: str) -> list[tuple]:
  """Confusion matrices (single-label) or per-class AP bars (multi-label) of one evaluation."""
  step = last.get('step')
  if multilabel:
    ap = {b: np.asarray(last[b]['per_class_ap']) for b in branches}
    plots.per_class_ap(ap, names, os.path.join(out, 'per_class_ap.png'),
                       f'Per-class average precision, step {step}')
    return [('per_class_ap.png', 'Average precision of each class (step-wise, as reported).',
             None)]
  items = []
  for b in branches:
    plots.confusion(last[b]['confusion'], names, os.path.join(out, f'confusion_{b}.png'),
                    f'{plots.branch_label(b)}: confusion matrix, step {step} '
                    f'(top-1 {last[b].get("top1", float("nan")):.3f})')
    items.append((f'confusion_{b}.png', 'Rows are the true class, normalised to 1.', None))
  return items


def _prediction_items(preds: dict, heldout: dict, multilabel: bool, threshold: float,
                      regions: dict, out: str) -> list[tuple]:
  """The map of evaluation samples and, where predictions carry them, per-country/season.

  preds: {branch: arrays} of the latest evaluation (eval split); heldout: {split: {branch:
  arrays}} of the shift evaluation's unshifted models on held-out-region splits.
  """
  def point(arrays, label):
    s = analysis.sample_scores(arrays, multilabel, threshold)
    return {'lat': arrays['lat'], 'lon': arrays['lon'], 'label': label,
            **({'score': s} if multilabel else {'correct': s > 0.5})}

  def step_of(arrays):
    return int(arrays.get('step', -1))

  points = {b: point(a, f'{plots.branch_label(b)}, {a.get("split", "eval")} split, step '
                        f'{step_of(a)}') for b, a in preds.items()}
  for split, by_branch in heldout.items():
    for b, a in by_branch.items():
      points[f'{b}@{split}'] = point(a, f'{plots.branch_label(b)}, {split} split, step '
                                        f'{step_of(a)}\n{regions.get(split, "out of region")}')
  plots.sample_map(points, os.path.join(out, 'map.png'),
                   'Samples by location, coloured by correct or wrong',
                   ncols=max(len(preds), min(len(points), 2)))
  if max(len(p['lat']) for p in points.values()) > plots.MAP_MAX_POINTS:
    legend = 'Hexagonal cells coloured by the mean score of their samples'
  else:
    legend = 'Dots coloured by their score' if multilabel else ('Green dots: correct; red '
                                                                'crosses: wrong')
  score = f'per-sample F1 of the labels with logit > {threshold}' if multilabel else 'accuracy'
  rows_note = (' The first row is the latest evaluation of the evaluation split; below it, '
               'what --mode=eval_shift evaluated (its checkpoint, usually the best) on ' +
               ', '.join(f'{s} ({regions.get(s, "out of region")})' for s in heldout) + '.'
               if heldout else '')
  items = [('map.png', f'Longitude/latitude in degrees with equal aspect (no basemap). '
            f'{legend}. Score: {score}.{rows_note}', None)]
  key = 'micro_map' if multilabel else 'accuracy'
  # Per group: the eval split's rows, then each held-out split's, marked as such.
  sets = [('', {b: analysis.with_countries(a) for b, a in preds.items()})]
  sets += [(f' ({split})', {b: analysis.with_countries(a) for b, a in by_branch.items()})
           for split, by_branch in heldout.items()]
  for field in ('country', 'season'):
    have = [b for b in preds if all(field in arrays.get(b, {}) for _, arrays in sets)]
    if not have:
      continue
    tables = {b: [] for b in have}
    for suffix, arrays in sets:
      for b in have:
        lumped = dict(arrays[b], **{field: analysis.lump_small_groups(arrays[b][field])})
        tables[b] += [dict(r, group=r['group'] + suffix)
                      for r in analysis.group_metrics(lumped, field, multilabel, threshold)]
    rows = tables[have[0]]
    by_group = {b: {r['group']: r[key] for r in tables[b]} for b in have}
    plots.group_bars([r['group'] for r in rows],
                     {b: np.array([by_group[b].get(r['group'], np.nan) for r in rows])
                      for b in have},
                     [r['n'] for r in rows], os.path.join(out, f'by_{field}.png'),
                     f'{plots.PRETTY[key]} per {field}', plots.PRETTY[key])
    geocoded = field == 'country' and sets[0][1][have[0]].get('country_geocoded', False)
    items.append((f'by_{field}.png', f'Metrics per {field}' + (
        ' (ISO code of the nearest populated place, reverse-geocoded offline from lat/lon: '
        'the records have no country)' if geocoded else '') + (
        '; macro mAP averages the classes present in the group.' if multilabel else '.') + (
        ' Groups marked with a split name are out of region.' if len(sets) > 1 else '') + (
        f' Groups of fewer than 1% of a split\'s samples (at most {analysis.MIN_GROUP}) are '
        f'pooled as "{analysis.OTHER}".'
        if any(r['group'].startswith(analysis.OTHER) for r in rows) else ''),
                  _group_table(tables, field)))
  return items


def _shift_eval_items(workdir: str, out: str) -> list[tuple]:
  """The `--mode=eval_shift` chart and table, when that mode has been run on `workdir`."""
  src = os.path.join(workdir, 'shift_eval')
  png, table = os.path.join(src, 'shift_eval.png'), os.path.join(src, 'shift_eval.csv')
  if not (os.path.isfile(png) and os.path.isfile(table)):
    return []
  shutil.copyfile(png, os.path.join(out, 'shift_eval.png'))
  with open(table, newline='') as f:
    rows = list(csv.DictReader(f))
  header = list(rows[0]) if rows else []
  body = [[r[h] if h in ('split', 'model') else f'{float(r[h]):.4f}' for h in header]
          for r in rows]
  return [('shift_eval.png', 'From WORKDIR/shift_eval (python main.py --mode=eval_shift): the '
           'EMA weights on the evaluation split (in region) and on any held-out split (out '
           'of region); the teacher also with its metadata removed or shifted.',
           _table(header, body))]


def write_report(workdir: str) -> str:
  """Renders the report of the run in `workdir`.

  Args:
    workdir: a training workdir (see the module docstring for what is read).

  Returns:
    Path of WORKDIR/report/index.html. Every PNG it links lies next to it; PNGs of a previous
    rendering are removed first.
  """
  run = analysis.load_run(workdir)
  out = os.path.join(workdir, 'report')
  os.makedirs(out, exist_ok=True)
  for old in glob.glob(os.path.join(out, '*.png')):
    os.remove(old)
  config, series, evals, preds = run['config'], run['series'], run['evals'], run['predictions']
  last = evals[max(evals)] if evals else {}
  branches = [k for k, v in last.items() if isinstance(v, dict)] or sorted(preds)
  multilabel = bool(config.get('multilabel', any('per_class_ap' in last[b] for b in branches)))
  sections = []  # (heading, [(png, caption, html table or None)]).

  items = []
  for name, title, caption, panels in plots.training_figures(series):
    plots.curves(panels, os.path.join(out, name), title)
    items.append((name, caption, _pooled_pl_table(series) if name == 'pseudo_labels.png'
                  else None))
  if items:
    sections.append(('Training', items))
  panels = plots.eval_panels(series, branches, 'macro_map' if multilabel else 'top1')
  if panels:
    plots.curves(panels, os.path.join(out, 'eval_metrics.png'),
                 'Evaluation metrics (EMA weights)', (run['final'] or {}).get('best_step'), 3)
    sections.append(('Evaluation over training', [
        ('eval_metrics.png', f'On the {last.get("split", "evaluation")} split; the dotted '
         'line marks the checkpoint selected as best.', None)]))
  items = []
  if branches and last:
    num_classes = len(last[branches[0]]['per_class_ap' if multilabel else 'confusion'])
    names = analysis.class_names(config, num_classes)
    items += _class_items(last, branches, multilabel, names, out)
  if preds:
    items += _prediction_items(preds, run['heldout'], multilabel,
                               float(config.get('f1_threshold', 0.5)),
                               analysis.heldout_regions(config, run['heldout']), out)
  if items:
    sections.append(('Latest evaluation', items))

  shift = _shift_eval_items(workdir, out)
  if shift:
    sections.append(('Metadata-shift evaluation', shift))

  versions, recorded = run['versions'], True
  if not versions:
    versions, recorded = analysis.package_versions(), False
  page = _page(workdir=os.path.abspath(workdir), config=config, final=run['final'],
               last_eval=last, branches=branches, sections=sections, versions=versions,
               versions_recorded=recorded,
               rendered=datetime.datetime.now().isoformat(timespec='seconds'))
  return atomic.write_text(os.path.join(out, 'index.html'), page)


def main(argv: list[str]) -> int:
  if len(argv) != 1:
    print('usage: python -m stssl_jax.report WORKDIR', file=sys.stderr)
    return 2
  print(write_report(argv[0]))
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
